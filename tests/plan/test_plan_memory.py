"""Activation and model-state bytes: the analytic formulas vs measurements on CPU and vs closed forms."""
import math

import pytest
import torch
from plan_measure import per_sample, retained_bytes, saved_bytes

import evaclip
from evaclip.plan.memory import (SCHEMES, loss_bytes, model_activations, state_bytes, text_activations,
                                 vision_activations, vision_block_bytes_per_token)
from evaclip.plan.params import model_params
from evaclip.plan.planner import max_micro_batch


def _model(name, dtype):
    torch.manual_seed(0)
    return evaclip.create_model(name).to(dtype).train()


# evaclip-tiny: EVA02 layout (sub-LN, RoPE, SwiGLU, LayerNorm); evaclip-tiny-18b: res-post-norm + RMSNorm;
# evaclip-small: EVA01 layout (pre-norm LayerNorm, q/v biases, GELU).
CASES = [("evaclip-tiny", torch.float32), ("evaclip-tiny-18b", torch.float32), ("evaclip-small", torch.float32),
         ("evaclip-tiny", torch.bfloat16), ("evaclip-tiny-18b", torch.bfloat16)]


@pytest.mark.parametrize("name,dtype", CASES)
def test_activation_formula_matches_measurement(name, dtype):
    model = _model(name, dtype)
    cfg, b = model.cfg, torch.finfo(dtype).bits // 8
    s, L = cfg.vision_cfg.image_size, cfg.text_cfg.context_length

    def images(B):
        return torch.randn(B, 3, s, s, dtype=dtype)

    def tokens(B):
        return torch.randint(0, cfg.text_cfg.vocab_size, (B, L))

    for patch_dropout in (0.0, 0.5):
        model.visual.patch_dropout = patch_dropout
        model.set_grad_checkpointing(False)
        vis = per_sample(lambda x: saved_bytes(model, lambda: model.visual(x)), images)
        assert vis == pytest.approx(vision_activations(cfg.vision_cfg, patch_dropout, False, b).saved, rel=0.05)
        model.set_grad_checkpointing(True)
        vis = per_sample(lambda x: retained_bytes(lambda: model.visual(x), x), images)
        assert vis == pytest.approx(vision_activations(cfg.vision_cfg, patch_dropout, True, b).saved, rel=0.05)
    model.set_grad_checkpointing(False)
    txt = per_sample(lambda x: saved_bytes(model, lambda: model.text(x)), tokens)
    assert txt == pytest.approx(text_activations(cfg.text_cfg, False, b).saved, rel=0.05)
    model.set_grad_checkpointing(True)
    txt = per_sample(lambda x: retained_bytes(lambda: model.text(x), x), tokens)
    assert txt == pytest.approx(text_activations(cfg.text_cfg, True, b).saved, rel=0.05)


def test_one_block_per_token_is_exact():
    # A single res-post-norm RMSNorm block (the 18B layout) in fp32: every saved tensor is accounted for.
    model = _model("evaclip-tiny-18b", torch.float32)
    cfg = model.cfg.vision_cfg
    n = cfg.num_patches + 1
    x = torch.randn(3, n, cfg.width, requires_grad=True)
    measured = saved_bytes(model, lambda: model.visual.blocks[0](x))
    assert measured == 3 * n * vision_block_bytes_per_token(cfg, b=4)


def test_checkpointing_and_patch_dropout_shrink_activations_as_expected():
    cfg = evaclip.get_model_config("EVA-CLIP-18B")
    full = model_activations(cfg, 0.0, False)
    ckpt = model_activations(cfg, 0.0, True)
    both = model_activations(cfg, 0.5, True)
    v = cfg.vision_cfg
    # Checkpointed vision tower: one bf16 residual per block (plus the last output) per token.
    assert vision_activations(v, 0.0, True).saved == pytest.approx((v.layers + 1) * 2 * 257 * v.width, rel=0.02)
    assert ckpt.saved < full.saved / 20
    assert both.saved == pytest.approx(ckpt.saved * (129 + 6) / (257 + 6), rel=0.1)  # tokens, text aside
    assert ckpt.peak > ckpt.saved  # one block is recomputed in backward


def test_state_bytes_per_scheme_closed_form():
    p = model_params(evaclip.get_model_config("EVA-CLIP-18B"))
    P, N = p.total, 360
    flat = math.ceil(P / N)
    expect = {"ddp": (4 * P, 4 * P, 8 * P), "zero1": (4 * P, 4 * P, 8 * flat), "zero2": (4 * P, 4 * flat, 8 * flat)}
    for scheme, (params, grads, optim) in expect.items():
        s = state_bytes(p, scheme, N, "adamw")
        assert (s.params, s.grads, s.optimizer, s.compute) == (params, grads, optim, 2 * P)
    fsdp = state_bytes(p, "fsdp", N)
    assert fsdp.params + fsdp.grads + fsdp.optimizer == pytest.approx(16 * P / N, rel=0.07)
    totals = [state_bytes(p, s, N).total for s in SCHEMES]
    assert totals == sorted(totals, reverse=True)  # each scheme shards more than the one before
    with pytest.raises(evaclip.ConfigError):
        state_bytes(p, "zero4", N)
    with pytest.raises(evaclip.ConfigError):
        state_bytes(p, "fsdp", N, optimizer="sgd")


def test_max_micro_batch_is_the_largest_that_fits():
    cfg = evaclip.get_model_config("evaclip-small")
    p = model_params(cfg)
    act = model_activations(cfg, 0.0, True)
    for gpus, usable in [(1, 2e8), (8, 1e9), (64, 3e8)]:
        state = state_bytes(p, "fsdp", gpus)
        best = max_micro_batch(usable, gpus, state, act, cfg.embed_dim)

        def need(m):
            return state.total + m * act.peak + loss_bytes(m, m * gpus, cfg.embed_dim)

        brute = max([m for m in range(1, 5000) if need(m) <= usable], default=0)
        assert best == brute
