"""evaclip's real FSDP2 wrapping on meta-device models under a fake process group vs the planner's bytes."""
import math

import pytest

import evaclip
from evaclip.plan.memory import state_bytes
from evaclip.plan.params import model_params
from evaclip.plan.simulate import run_in_subprocess, simulate_fsdp


@pytest.mark.parametrize("model,world", [("EVA-CLIP-18B", 360), ("EVA-CLIP-8B", 384)])
def test_simulated_fsdp_shards_match_the_planner(model, world):
    sim = run_in_subprocess(model, world, rank=0)
    cfg = evaclip.get_model_config(model)
    p = model_params(cfg)
    planned = state_bytes(p, "fsdp", world).params  # fp32 master weights per GPU
    assert sim.local_bytes == pytest.approx(planned, rel=0.01)
    assert sim.allocated_numel is None or sim.allocated_numel * 4 == pytest.approx(planned, rel=0.01)
    assert sim.full_numel == p.total
    assert sim.sharded_params == sim.total_params  # nothing left replicated
    assert sim.fsdp_units == cfg.vision_cfg.layers + cfg.text_cfg.layers + 1  # one per block + the root
    # Per-parameter dim-0 shards are padded; a flat ZeRO-3 partition would hold P / world.
    assert sim.local_numel > math.ceil(p.total / world)
    assert sim.seconds < 30


def test_last_rank_allocates_as_much_as_rank_zero():
    # At 7 ranks the 64-wide tensors split 10/10/.../4: the last rank's views are smaller, its storage is not.
    sim = run_in_subprocess("evaclip-tiny-18b", 7, rank=6)
    planned = model_params(evaclip.get_model_config("evaclip-tiny-18b")).sharded(7)
    assert sim.local_numel < planned
    if sim.allocated_numel is not None:
        assert sim.allocated_numel == planned


def test_bad_rank_is_a_config_error():
    with pytest.raises(evaclip.ConfigError, match="rank"):
        simulate_fsdp("evaclip-tiny", 4, rank=4)  # checked before any process group is created
