"""Analytic FLOPs vs torch.utils.flop_counter on small models, and the paper's per-pair numbers."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import evaclip
from evaclip.plan.flops import model_flops, register_cpu_attention_flops, vision_tokens


def test_cpu_attention_formula_counts_both_matmuls():
    register_cpu_attention_flops()
    register_cpu_attention_flops()  # idempotent
    B, h, N, d = 2, 3, 10, 8
    q = torch.randn(B, h, N, d, requires_grad=True)
    with FlopCounterMode(display=False) as fc:
        out = F.scaled_dot_product_attention(q, q, q)
    assert fc.get_total_flops() == 2 * (2 * B * h * N * N * d)  # q k^T and attn v
    with FlopCounterMode(display=False) as fc:
        out.sum().backward()
    assert fc.get_total_flops() == 5 * (2 * B * h * N * N * d)  # recomputed scores + 4 gradient matmuls


def _attention_and_patch_flops(cfg, patch_dropout):
    """Per pair: attention matmul FLOPs of both towers and the patch-embedding conv, written out directly."""
    v, t = cfg.vision_cfg, cfg.text_cfg
    n = vision_tokens(v, patch_dropout)
    attention = v.layers * 4 * n * n * v.width + t.layers * 4 * t.context_length**2 * t.width
    patch = 2 * (v.image_size // v.patch_size) ** 2 * 3 * v.patch_size**2 * v.width
    return attention, patch


@pytest.mark.parametrize("name", ["evaclip-tiny", "evaclip-small", "evaclip-tiny-18b"])
def test_counted_flops_agree_with_flop_counter(name):
    register_cpu_attention_flops()
    torch.manual_seed(0)
    model = evaclip.create_model(name).train()
    cfg, B = model.cfg, 2
    s = cfg.vision_cfg.image_size
    images = torch.randn(B, 3, s, s)
    tokens = torch.randint(0, cfg.text_cfg.vocab_size, (B, cfg.text_cfg.context_length))
    for patch_dropout in (0.0, 0.5):
        model.visual.patch_dropout = patch_dropout
        with FlopCounterMode(display=False) as fc:
            img, txt, scale = model(images, tokens)
        counted_forward = fc.get_total_flops() / B
        with FlopCounterMode(display=False) as fc:
            (img @ txt.T * scale).sum().backward()
        counted_backward = (fc.get_total_flops() - 2 * B * B * cfg.embed_dim * 3) / B  # minus the logits matmul
        flops = model_flops(cfg, patch_dropout)
        assert counted_forward == pytest.approx(flops.forward, rel=0.01)
        # Backward is 2x forward for every matmul, except: flash attention recomputes the scores (2.5x),
        # and the patch-embedding conv computes no gradient for the images (1x).
        attention, patch = _attention_and_patch_flops(cfg, patch_dropout)
        expected_backward = 2 * (flops.forward - attention - patch) + 2.5 * attention + patch
        assert counted_backward == pytest.approx(expected_backward, rel=0.01)
        assert flops.training() == 3 * flops.forward and flops.training(recompute=True) == 4 * flops.forward


def test_eva_clip_18b_flops_match_the_paper():
    cfg = evaclip.get_model_config("EVA-CLIP-18B")
    assert model_flops(cfg).forward == pytest.approx(9.22e12, rel=0.01)
    assert model_flops(cfg, 0.5).forward == pytest.approx(4.66e12, rel=0.01)
    # ~ 2 x params x tokens: the matmul-dominated closed form an independent reader would use.
    v = cfg.vision_cfg
    per_block = 4 * v.width**2 + 2 * v.width * v.mlp_hidden
    rough = 2 * 257 * per_block * v.layers
    assert model_flops(cfg).vision == pytest.approx(rough, rel=0.02)


def test_patch_dropout_keeps_what_the_model_keeps():
    cfg = evaclip.get_model_config("EVA-CLIP-18B").vision_cfg
    assert vision_tokens(cfg, 0.0) == 257 and vision_tokens(cfg, 0.5) == 129
    with pytest.raises(evaclip.ConfigError):
        vision_tokens(cfg, 1.0)
