"""The paper's set-ups through the planner: what fits where, FLOPs and days."""
import itertools

import pytest

import evaclip
from evaclip.plan.memory import SCHEMES
from evaclip.plan.planner import PlanRequest, make_plan

A100_40GB = dict(gpu_memory_gib=40, peak_tflops=312, mfu=0.4)


def _plan(model, gpus, batch, samples, **kw):
    return make_plan(PlanRequest(model, gpus, global_batch=batch, patch_dropout=0.5, grad_checkpointing=True,
                                 samples=samples, **A100_40GB, **kw))


@pytest.mark.parametrize("model,gpus,batch", [("EVA-CLIP-18B", 360, 108_000), ("EVA-CLIP-8B", 384, 178_000)])
def test_paper_setup_fits_only_with_full_sharding_checkpointing_and_patch_dropout(model, gpus, batch):
    plan = _plan(model, gpus, batch, None)
    for scheme, ck, pd in itertools.product(SCHEMES, (False, True), (0.0, 0.5)):
        row = plan.scheme(scheme, ck, pd)
        expected = scheme == "fsdp" and ck and pd == 0.5
        assert row.fits is expected, (scheme, ck, pd, row.batch_bytes / 1e9)
        # the largest micro-batch is consistent with the verdict
        assert (row.max_micro_batch >= plan.request.micro_batch) is expected
    assert plan.scheme("fsdp").fits  # the requested settings are those of the paper
    # Headroom: the paper's batch is near the largest that fits (they chose it to fill the GPUs).
    assert plan.request.micro_batch <= plan.scheme("fsdp").max_micro_batch < 1.25 * plan.request.micro_batch


def test_paper_18b_numbers():
    plan = _plan("EVA-CLIP-18B", 360, 108_000, 6e9)
    assert plan.params == pytest.approx(18.33e9, rel=0.001)
    assert plan.flops_full.forward == pytest.approx(9.22e12, rel=0.01)
    assert plan.flops.forward == pytest.approx(4.66e12, rel=0.01)
    assert plan.model_state_total == pytest.approx(293e9, rel=0.01)
    assert plan.model_state_total / 360 == pytest.approx(0.81e9, rel=0.01)
    # 6B samples x 3 x 4.66 TFLOP at 360 x 312 TFLOP/s x 0.4: about 22 days.
    assert plan.days == pytest.approx(6e9 * 3 * 4.66e12 / (360 * 312e12 * 0.4) / 86400, rel=0.01)
    assert 21 < plan.days < 23
    assert plan.step_seconds == pytest.approx(plan.days * 86400 / (6e9 / 108_000), rel=1e-9)


def test_doubling_the_batch_does_not_fit_and_is_not_accumulated():
    plan = _plan("EVA-CLIP-18B", 360, 216_000, None)
    assert plan.request.micro_batch == 600
    assert not any(row.fits for row in plan.schemes)


def test_more_memory_or_gpus_fit_more():
    small = _plan("EVA-CLIP-18B", 360, 108_000, None).scheme("fsdp").max_micro_batch
    big_gpu = make_plan(PlanRequest("EVA-CLIP-18B", 360, 80, 108_000, 0.5, True)).scheme("fsdp").max_micro_batch
    assert big_gpu > 2 * small


@pytest.mark.parametrize("bad", [dict(gpus=0), dict(gpu_memory_gib=0), dict(global_batch=0),
                                 dict(patch_dropout=1.0), dict(peak_tflops=312), dict(mfu=0.4),
                                 dict(peak_tflops=312, mfu=1.5), dict(samples=1e9), dict(optimizer="sgd"),
                                 dict(reserve_gb=100), dict(model="no-such-model"),
                                 # NaN fails every comparison, so each bound must also refuse it
                                 dict(gpu_memory_gib=float("nan")), dict(gpu_memory_gib=float("inf")),
                                 dict(patch_dropout=float("nan")), dict(reserve_gb=float("nan")),
                                 dict(peak_tflops=float("nan"), mfu=0.4), dict(peak_tflops=312, mfu=float("nan")),
                                 dict(peak_tflops=312, mfu=0.4, samples=float("nan"))])
def test_bad_requests_raise_config_errors(bad):
    args = dict(model="EVA-CLIP-18B", gpus=8, gpu_memory_gib=80) | bad
    with pytest.raises(evaclip.ConfigError):
        make_plan(PlanRequest(**args))
