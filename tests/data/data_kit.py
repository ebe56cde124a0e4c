"""Helpers for the data tests: real PNG/JPEG bytes made with PIL, real tar shards, tiny transform and tokenizer."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from evaclip.data import DataConfig

CTX = 24  # context length of the test tokenizer


def image_bytes(index: int, fmt: str = "PNG", size: tuple[int, int] = (12, 10), mode: str = "RGB") -> bytes:
    """A real image whose top-left pixel's red value encodes `index` (mod 256)."""
    arr = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    arr[..., 0] = index % 256
    arr[..., 1] = (index * 7) % 256
    image = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A real tar file with the given (name, bytes) members, in order."""
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def sample_members(key: str, index: int, fmt: str = "PNG") -> list[tuple[str, bytes]]:
    ext = "png" if fmt == "PNG" else "jpg"
    return [(f"{key}.{ext}", image_bytes(index, fmt)), (f"{key}.txt", f"caption {key}".encode())]


def make_shards(root: Path, prefix: str, num_shards: int, per_shard: int) -> tuple[str, list[str]]:
    """Shards `root/{prefix}-000.tar`...; returns (brace pattern, all keys in order). Key: `{prefix}{shard}_{i}`."""
    root.mkdir(parents=True, exist_ok=True)
    keys = []
    for s in range(num_shards):
        members = []
        for i in range(per_shard):
            key = f"{prefix}{s:03d}_{i:03d}"
            keys.append(key)
            members += sample_members(key, s * per_shard + i, "PNG" if i % 2 else "JPEG")
        write_tar(root / f"{prefix}-{s:03d}.tar", members)
    return str(root / f"{prefix}-{{000..{num_shards - 1:03d}}}.tar"), keys


def to_rgb(image: Image.Image) -> Image.Image:
    """The library's to_rgb when it exists (written by another helper), else Pillow's convert."""
    try:
        from evaclip.transforms import to_rgb as real
    except ImportError:
        return image.convert("RGB")
    return real(image)


def transform(image: Image.Image) -> torch.Tensor:
    """Resize to 8x8 and add a random offset, so that augmentation randomness shows in the output."""
    arr = np.asarray(image.convert("RGB").resize((8, 8)), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1) + torch.rand(1)


def tokenizer(texts: list[str]) -> torch.Tensor:
    """Character codes, padded/cut to CTX: reversible, so tests can read captions back."""
    out = torch.zeros(len(texts), CTX, dtype=torch.long)
    for row, text in enumerate(texts):
        codes = [ord(c) for c in text[:CTX]]
        out[row, :len(codes)] = torch.tensor(codes, dtype=torch.long)
    return out


def untokenize(tokens: torch.Tensor) -> list[str]:
    return ["".join(chr(int(c)) for c in row if int(c) != 0) for row in tokens]


def config(sources, **kw) -> DataConfig:
    """Small-batch test config; `sources` as DataConfig takes it (spec string, DataSource list, dicts)."""
    kw.setdefault("batch_size", 4)
    kw.setdefault("num_workers", 0)
    kw.setdefault("context_length", CTX)
    kw.setdefault("interleave", 2)
    kw.setdefault("shuffle_window", 3)
    kw.setdefault("timeout_s", 60.0 if kw["num_workers"] > 0 else 0.0)
    return DataConfig(sources=sources, **kw)


def loader(cfg: DataConfig, rank: int = 0, world_size: int = 1):
    from evaclip.data import make_loader

    return make_loader(cfg, rank, world_size, transform=transform, tokenizer=tokenizer, to_rgb=to_rgb)


def take(loader_, n: int) -> list:
    """The first n batches of an iteration (the loader keeps its position for the next call)."""
    out = []
    for batch in loader_:
        out.append(batch)
        if len(out) == n:
            break
    return out


def keys_of(batches) -> list[str]:
    return [k for _, _, info in batches for k in info["keys"]]
