"""Smoke tests of the benchmark scripts: each core function runs once on a micro config and its arithmetic
(rates, ratios, MFU) is consistent. No timing assertions: speed is what the scripts report, not what tests
check."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks import common, data_pipeline, gpu_mfu, inference, train_step  # noqa: E402
from evaclip.models.factory import create_model, get_model_config  # noqa: E402
from evaclip.models.flops import model_flops  # noqa: E402

FAKE_CEILING = common.Ceiling(per_wall_s=50e9, per_cpu_s=40e9)


@pytest.fixture
def fixed_ceiling(monkeypatch):
    """A known ceiling, so the MFU arithmetic can be checked exactly (and no time is spent measuring it)."""
    for module in (train_step, inference):
        monkeypatch.setattr(module, "matmul_ceiling", lambda *a, **k: FAKE_CEILING)


def test_open_clip_reference_has_the_same_matrices():
    ref = common.open_clip_model(get_model_config("evaclip-small"))
    ours = create_model("evaclip-small")
    # Same matrices. Per vision block EVA has q and v biases where open_clip has a q, k, v bias (one width
    # fewer); open_clip's ln_pre (2 widths) is balanced by EVA's patch-embedding and head biases.
    v = get_model_config("evaclip-small").vision_cfg
    assert common.param_count(ref) - common.param_count(ours) == v.layers * v.width
    assert type(ref).__module__ == "_openclip_ref.model"
    assert "torchvision" not in sys.modules or hasattr(sys.modules["torchvision"], "__file__")
    batch = common.random_batch(get_model_config("evaclip-small"), 2)
    img, txt, scale = ref(batch.images, batch.tokens)
    assert img.shape == txt.shape == (2, 256)


def test_train_step_reports_consistent_figures(fixed_ceiling):
    out = train_step.run("evaclip-tiny", batch_size=4, repeats=1, rounds=1, threads=1, verbose=False)
    flops = 3 * model_flops(get_model_config("evaclip-tiny")).forward
    assert out["flops_per_sample"] == flops
    for label in ("evaclip", "open_clip"):
        r = out[label]
        assert r["samples_per_s"] == pytest.approx(4 / r["step_s"])
        assert r["mfu"] == pytest.approx(r["samples_per_s"] * flops / FAKE_CEILING.per_wall_s)
        assert r["mfu_cpu"] == pytest.approx(r["samples_per_cpu_s"] * flops / FAKE_CEILING.per_cpu_s)
    assert out["ratio"] == pytest.approx(out["evaclip"]["samples_per_s"] / out["open_clip"]["samples_per_s"])


def test_train_step_closure_trains_the_model():
    cfg = get_model_config("evaclip-tiny")
    torch.manual_seed(0)
    model = create_model(cfg)
    before = model.visual.blocks[0].attn.proj.weight.detach().clone()
    step = train_step.make_step(model, common.random_batch(cfg, 4), lr=1e-2)
    losses = [float(step().detach()) for _ in range(3)]
    assert not torch.equal(before, model.visual.blocks[0].attn.proj.weight)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none) ran


def test_inference_reports_both_towers(fixed_ceiling):
    out = inference.run("evaclip-tiny", batch_size=4, repeats=1, rounds=1, threads=1, verbose=False)
    f = model_flops(get_model_config("evaclip-tiny"))
    for tower, per_item in (("image", f.vision), ("text", f.text)):
        r = out[f"evaclip.{tower}"]
        assert r["mfu"] == pytest.approx(r["items_per_s"] * per_item / FAKE_CEILING.per_wall_s)
        assert out[f"ratio.{tower}"] > 0


def test_data_pipeline_reads_the_sample_shard():
    rate = data_pipeline.pipeline_rate([str(data_pipeline.SAMPLE)], image_size=32, batch=8, batches=1, context=16)
    assert rate > 0


def test_gpu_script_runs_on_cpu_with_tiny(monkeypatch):
    """The FSDP2 step of benchmarks/gpu_mfu.py, on CPU with a one-rank gloo group (the GPU run uses NCCL)."""
    import torch.distributed as dist

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(gpu_mfu.free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        model = gpu_mfu.build("evaclip-tiny", torch.device("cpu"), "fp32", compile_blocks=False)
        images, tokens = gpu_mfu.make_batch("evaclip-tiny", 2, torch.device("cpu"))
        before = [p.detach().full_tensor().clone() for p in list(model.parameters())[:3]]
        times = gpu_mfu.time_steps(model, images, tokens, warmup=0, steps=1, device=torch.device("cpu"))
        after = [p.detach().full_tensor() for p in list(model.parameters())[:3]]
    finally:
        dist.destroy_process_group()
    assert len(times) == 1 and times[0] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # the FSDP2 step updated the weights
