"""Helpers of the search tests: models, images, brute-force search through the public API, CLI processes."""
from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

import evaclip

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "cyan", "magenta", "gray",
          "pink"]
QUERIES = ["a red circle", "a blue square", "green", "a photo of a dog", "yellow and black stripes", "white",
           "an orange triangle", "abstract art", "a purple star", "cyan", "a small gray dot", "pink sky"]


def make_checkpoint(folder: Path, seed: int) -> tuple[str, str]:
    from safetensors.torch import save_file
    torch.manual_seed(seed)
    model = evaclip.create_model("evaclip-tiny")
    config = folder / "tiny.json"
    config.write_text(json.dumps(evaclip.get_model_config("evaclip-tiny").to_dict()))
    weights = folder / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return str(config), str(weights)


def draw(i: int, size: tuple[int, int] | None = None) -> Image.Image:
    """Image i of a set of distinct pictures: background, a shape and stripes that vary with i."""
    w, h = size or (40 + 3 * (i % 7), 36 + 2 * (i % 5))
    im = Image.new("RGB", (w, h), COLORS[i % len(COLORS)])
    d = ImageDraw.Draw(im)
    fg = COLORS[(i * 5 + 3) % len(COLORS)]
    if i % 3 == 0:
        d.ellipse((4, 4, w // 2 + i % 9, h // 2 + i % 7), fill=fg)
    elif i % 3 == 1:
        d.rectangle((w // 3, h // 4, w - 3, h - 2 - i % 5), fill=fg)
    else:
        d.polygon([(2, h - 2), (w // 2, 2 + i % 6), (w - 2, h - 2)], fill=fg)
    for s in range(i % 4):
        d.line((0, 5 + 7 * s, w, 9 + 7 * s), fill=COLORS[(i + s + 1) % len(COLORS)], width=2)
    return im


def make_images(root: Path, n: int, start: int = 0) -> Path:
    """n PNG/JPEG images under root (a third in a subfolder), named by index."""
    (root / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        folder = root / "sub" if i % 3 == 0 else root
        ext = "jpg" if i % 4 == 0 else "png"
        draw(i).save(folder / f"img{i:03d}.{ext}", quality=95)
    return root


def brute_force(config: str, weights: str, root: Path, paths: list[str], queries: list[str]) -> np.ndarray:
    """Cosine similarities [queries, paths] computed with evaclip's public API only."""
    model, _, preprocess = evaclip.create_model_and_transforms(config, pretrained=weights)
    model.eval()
    tokenizer = evaclip.get_tokenizer(config)
    with torch.no_grad():
        pixels = torch.stack([preprocess(Image.open(root / p)) for p in paths])
        image = model.encode_image(pixels, normalize=True)
        text = model.encode_text(tokenizer(queries), normalize=True)
    return (text @ image.T).numpy()


def assert_same_ranking(results: list[dict], paths: list[str], sims: np.ndarray, k: int) -> None:
    """`results` is the exact top-k of one row of brute-force similarities (ties within 1e-5 may swap)."""
    best = np.sort(sims)[::-1][:k]
    assert len(results) == min(k, len(paths))
    by_path = dict(zip(paths, sims))
    for rank, r in enumerate(results):
        assert abs(r["score"] - best[rank]) < 1e-5, (rank, r, best)
        assert abs(by_path[r["path"]] - r["score"]) < 1e-5, (rank, r["path"], by_path[r["path"]], r["score"])
    assert len({r["path"] for r in results}) == len(results)


def image_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp") and p.is_file())


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore", EVACLIP_DIST_TIMEOUT_S="120")
    return out


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "evaclip.cli.main", *args]


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    from proc_kit import run_bounded
    return run_bounded(cli(*args), env=env(), timeout=timeout)


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 2, one line on stderr (besides warnings and progress) naming every fragment, no traceback."""
    lines = [line for line in proc.stderr.splitlines()
             if line.strip() and "warning:" not in line.lower() and not line.startswith("indexing")]
    context = f"rc={proc.returncode} stderr={proc.stderr[-2000:]!r}"
    assert proc.returncode == 2, context
    assert "Traceback" not in proc.stderr, context
    assert len(lines) == 1, context
    for f in fragments:
        assert f.lower() in lines[0].lower(), f"{f!r} not in {lines[0]!r}"
    return lines[0]


class Server:
    """`evaclip serve` as a real process on 127.0.0.1 and a free port; stopped on exit."""

    def __init__(self, *args: str, timeout: float = 120):
        self.proc = subprocess.Popen(cli("serve", *args, "--port", "0"), env=env(), text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            line = self.proc.stdout.readline()
            match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
            if match:
                self.url = f"http://127.0.0.1:{match.group(1)}"
                return
            if not line and self.proc.poll() is not None:
                break
        self.stop()
        raise AssertionError(f"evaclip serve did not start: {line!r} {self.proc.stderr.read()[-2000:]}")

    def stop(self) -> None:
        from proc_kit import kill_group
        if self.proc.poll() is None:
            kill_group(self.proc)
        self.proc.wait(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
