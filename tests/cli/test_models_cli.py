"""``evaclip models``: the table's parameter counts and GFLOPs against independent counts and formulas."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import evaclip
from evaclip.cli.main import main


def table_rows(text: str) -> dict[str, list[str]]:
    lines = text.strip().splitlines()
    assert lines[0].split()[0] == "model" and set(lines[1].replace(" ", "")) == {"-"}
    return {line.split()[0]: line.split()[1:] for line in lines[2:]}


def millions(cell: str) -> float:
    return float(cell.replace(",", "")) * 1e6


def analytic_gflops(name: str) -> tuple[float, float]:
    """Forward FLOPs from the shapes: 2 per multiply-add of every matmul, convolution and attention product."""
    cfg = evaclip.get_model_config(name)
    v, t, E = cfg.vision_cfg, cfg.text_cfg, cfg.embed_dim
    W, p = v.width, v.patch_size
    H = int(W * v.mlp_ratio)
    N = (v.image_size // p) ** 2
    T = N + 1
    mlp = (3 if v.naiveswiglu else 2) * 2 * T * W * H
    block = 2 * T * W * 3 * W + 2 * T * W * W + 2 * 2 * T * T * W + mlp
    image = 2 * N * W * 3 * p * p + v.layers * block + 2 * W * E  # patch conv, blocks, head on the cls token
    C, Wt = t.context_length, t.width
    tblock = 2 * C * Wt * 3 * Wt + 2 * C * Wt * Wt + 2 * 2 * C * C * Wt + 2 * 2 * C * Wt * 4 * Wt
    text = t.layers * tblock + 2 * Wt * E  # blocks, projection of the end-of-text token
    return image / 1e9, text / 1e9


def test_table_numbers(capsys):
    names = ["evaclip-tiny", "evaclip-tiny-18b", "evaclip-small", "EVA-CLIP-18B", "EVA-CLIP-8B"]
    assert main(["models", *names]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert list(rows) == names
    for name in names:
        image_size, vision, text, total, gf_image, gf_text = rows[name]
        model = evaclip.create_model(name, device="meta")
        assert int(image_size) == model.visual.image_size
        for cell, module in ((vision, model.visual), (text, model.text), (total, model)):
            assert millions(cell) == pytest.approx(sum(p.numel() for p in module.parameters()), abs=5e3)
        want_image, want_text = analytic_gflops(name)
        assert float(gf_image.replace(",", "")) == pytest.approx(want_image, rel=1e-3)
        assert float(gf_text.replace(",", "")) == pytest.approx(want_text, rel=1e-3)
    assert rows["EVA-CLIP-18B"][1:4] == ["17,630.49", "694.99", "18,325.48"]
    assert rows["EVA-CLIP-8B"][1:4] == ["7,526.09", "694.66", "8,220.75"]


def test_all_configs_fast_and_listed(capsys):
    start = time.process_time()
    assert main(["models"]) == 0
    cpu = time.process_time() - start
    rows = table_rows(capsys.readouterr().out)
    assert list(rows) == evaclip.list_models()
    # Every config has image and text FLOPs, Hugging Face text towers included.
    for name, r in rows.items():
        assert r[4] != "-" and r[5] != "-", name
    assert cpu < 20, f"`evaclip models` took {cpu:.1f} s of CPU"


def test_no_flops_and_json_path(tmp_path, capsys):
    path = tmp_path / "mine.json"
    evaclip.get_model_config("evaclip-tiny").save(path)
    assert main(["models", "--no-flops", str(path)]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows[str(path)][4:] == ["-", "-"]


def test_unknown_model_in_process(capsys):
    assert main(["models", "EVA-CLIP-99B"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "EVA-CLIP-99B" in err and "unknown model" in err


def test_unknown_model_exit_code_in_a_real_process():
    exe = Path(sys.executable).parent / "evaclip"
    assert exe.exists(), "the evaclip console script is not installed in this environment"
    proc = subprocess.run([str(exe), "models", "no-such-model"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-model" in lines[0] and "Traceback" not in proc.stderr
    assert proc.stdout == ""
