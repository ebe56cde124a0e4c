"""Closed-form parameter shapes vs the real modules; FSDP2 shard sizes vs torch.chunk; the paper's totals."""
import math
from collections import Counter

import pytest
import torch

import evaclip
from evaclip.plan.memory import state_bytes
from evaclip.plan.params import model_params, shard_numel


# The planner covers CLIP text towers; configs with a Hugging Face text encoder are refused (tested below).
CLIP_TEXT_MODELS = [n for n in evaclip.list_models() if not evaclip.get_model_config(n).text_cfg.is_hf]


@pytest.mark.parametrize("name", CLIP_TEXT_MODELS)
def test_shapes_match_the_model(name):
    cfg = evaclip.get_model_config(name)
    model = evaclip.create_model(name, device="meta")
    p = model_params(cfg)
    mine = Counter(p.vision.block * p.vision.blocks + p.vision.other + p.text.block * p.text.blocks
                   + p.text.other + p.extra)
    assert mine == Counter(tuple(t.shape) for t in model.parameters())
    assert p.vision.per_block == sum(t.numel() for t in model.visual.blocks[0].parameters())
    assert p.root == sum(t.numel() for n, t in model.named_parameters() if ".blocks." not in n
                         and ".resblocks." not in n)


@pytest.mark.parametrize("shape", [(1,), (7,), (1, 1, 64), (15360, 5120), (359, 3), (361, 2), (49408, 1280)])
@pytest.mark.parametrize("world", [1, 3, 360, 384])
def test_shard_numel_is_the_first_chunk(shape, world):
    # FSDP2 shards on dim 0 like torch.chunk; rank 0 holds the first (largest) chunk.
    assert shard_numel(shape, world) == torch.empty(shape, device="meta").chunk(world, dim=0)[0].numel()


def test_eva_clip_18b_totals_match_the_paper():
    p = model_params(evaclip.get_model_config("EVA-CLIP-18B"))
    assert p.total == pytest.approx(18.33e9, rel=1e-3)
    state = 16 * p.total  # 16 bytes/param of model state
    assert state == pytest.approx(293e9, rel=1e-2)
    assert state / 360 == pytest.approx(0.81e9, rel=1e-2)
    # The flat ZeRO-3 partition is what the paper's 0.81 GB is; FSDP2's per-parameter dim-0 shards pad
    # each parameter to ceil(rows / 360) rows, a few percent more.
    fsdp = state_bytes(p, "fsdp", 360)
    flat = state_bytes(p, "zero2", 360)
    assert fsdp.params + fsdp.grads + fsdp.optimizer == 16 * p.sharded(360)
    assert 1.0 < 16 * p.sharded(360) / state * 360 < 1.1
    assert flat.optimizer == 8 * math.ceil(p.total / 360)


def test_hf_text_towers_are_refused_clearly():
    hf = [n for n in evaclip.list_models() if evaclip.get_model_config(n).text_cfg.is_hf]
    assert hf, "the demo configs use the MiniLM text tower"
    with pytest.raises(evaclip.ConfigError):
        model_params(evaclip.get_model_config(hf[0]))
