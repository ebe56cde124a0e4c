"""The training-facing model interface: gradient checkpointing, weight-decay exclusions, layer ids for
layer-wise learning-rate decay, and the logit scale."""
from __future__ import annotations

import math

import pytest
import torch

import evaclip


def _loss(model, images, tokens):
    img, txt, scale = model(images, tokens)
    logits = scale * img @ txt.T
    labels = torch.arange(len(images))
    return (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2


@pytest.mark.parametrize("name", ["evaclip-tiny", "evaclip-tiny-18b"])
def test_gradient_checkpointing_gives_the_same_loss_and_grads(name):
    cfg = evaclip.get_model_config(name)
    cfg.text_cfg.vocab_size = 600
    torch.manual_seed(0)
    model = evaclip.create_model(cfg).double().train()
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    tokens = torch.randint(1, 598, (3, 10))
    tokens[:, -1] = 599

    def run(enable: bool):
        model.zero_grad(set_to_none=True)
        model.set_grad_checkpointing(enable)
        loss = _loss(model, images, tokens)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss_a, grads_a = run(False)
    loss_b, grads_b = run(True)
    assert model.visual.grad_checkpointing and model.text.grad_checkpointing
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-12, atol=1e-12)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == sum(1 for _ in model.parameters())
    for n in grads_a:
        torch.testing.assert_close(grads_b[n], grads_a[n], rtol=1e-10, atol=1e-12, msg=n)


def test_gradient_checkpointing_actually_recomputes():
    """With checkpointing on, each block runs twice per step (forward + recompute in backward)."""
    cfg = evaclip.get_model_config("evaclip-tiny")
    cfg.text_cfg.vocab_size = 600
    model = evaclip.create_model(cfg).train()
    counts = {"v": 0, "t": 0}

    def counting(block, key):
        forward = block.forward

        def wrapped(*args, **kwargs):
            counts[key] += 1
            return forward(*args, **kwargs)
        block.forward = wrapped  # (forward hooks do not fire during checkpoint recomputation)

    counting(model.visual.blocks[0], "v")
    counting(model.text.transformer.resblocks[0], "t")
    tokens = torch.randint(1, 598, (2, 8))
    tokens[:, -1] = 599
    model.set_grad_checkpointing(True)
    _loss(model, torch.randn(2, 3, 32, 32), tokens).backward()
    assert counts == {"v": 2, "t": 2}
    model.set_grad_checkpointing(False)
    _loss(model, torch.randn(2, 3, 32, 32), tokens).backward()
    assert counts == {"v": 3, "t": 3}


def test_no_weight_decay_names():
    model = evaclip.create_model("evaclip-tiny", device="meta")
    assert model.visual.no_weight_decay() == {"pos_embed", "cls_token"}
    assert model.text.no_weight_decay() == {"positional_embedding"}
    names = model.no_weight_decay()
    assert names == {"logit_scale", "visual.pos_embed", "visual.cls_token", "text.positional_embedding"}
    params = dict(model.named_parameters())
    assert names <= set(params)  # every name is a real parameter


@pytest.mark.parametrize("name", ["evaclip-tiny", "evaclip-tiny-18b", "EVA-CLIP-18B"])
def test_layer_ids(name):
    model = evaclip.create_model(name, device="meta")
    vis, txt = model.visual, model.text
    L, Lt = vis.num_layers, txt.num_layers
    expected_vision = {"patch_embed.proj.weight": 0, "patch_embed.proj.bias": 0, "cls_token": 0, "pos_embed": 0,
                       "blocks.0.norm1.weight": 1, "blocks.0.attn.proj.weight": 1, "blocks.1.mlp.fc2.bias": 2,
                       f"blocks.{L - 1}.norm2.weight": L, "norm.weight": L + 1, "head.weight": L + 1}
    for n, want in expected_vision.items():
        assert vis.layer_id(n) == want, n
    expected_text = {"token_embedding.weight": 0, "positional_embedding": 0,
                     "transformer.resblocks.0.ln_1.weight": 1, f"transformer.resblocks.{Lt - 1}.mlp.c_proj.bias": Lt,
                     "ln_final.weight": Lt + 1, "text_projection": Lt + 1}
    for n, want in expected_text.items():
        assert txt.layer_id(n) == want, n
    # every real parameter gets an id in [0, L+1], and block k's parameters get k+1
    for tower, depth, marker in ((vis, L, "blocks."), (txt, Lt, "transformer.resblocks.")):
        for n, _ in tower.named_parameters():
            lid = tower.layer_id(n)
            assert 0 <= lid <= depth + 1
            if n.startswith(marker):
                assert lid == int(n[len(marker):].split(".")[0]) + 1, n
    assert vis.layer_id("blocks.10.attn.qkv.weight") == 11  # two-digit block numbers


def test_logit_scale_init_clamp_and_fixed_temperature():
    model = evaclip.create_model("evaclip-tiny", device="meta")
    assert model.logit_scale.shape == (1,) and model.logit_scale.requires_grad
    cfg = evaclip.get_model_config("evaclip-tiny")
    cfg.text_cfg.vocab_size = 600
    m = evaclip.create_model(cfg)
    assert m.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    with torch.no_grad():
        m.logit_scale.fill_(7.0)
    m.clamp_logit_scale()
    assert m.logit_scale.item() == pytest.approx(math.log(100))
    with torch.no_grad():
        m.logit_scale.fill_(-1.0)
    m.clamp_logit_scale()
    assert m.logit_scale.item() == 0.0
    with torch.no_grad():
        m.logit_scale.fill_(1.5)
    m.clamp_logit_scale()
    assert m.logit_scale.item() == 1.5  # inside [0, ln 100]: untouched
    cfg.learn_logit_scale, cfg.init_logit_scale = False, math.log(100)
    fixed = evaclip.create_model(cfg)
    assert not fixed.logit_scale.requires_grad and fixed.logit_scale.exp().item() == pytest.approx(100)


@pytest.mark.parametrize("name", ["evaclip-tiny", "evaclip-tiny-18b"])
def test_init_weights_after_meta_and_to_empty_sets_every_parameter(name):
    """The sharded-training path: build on meta, allocate with to_empty (garbage memory), then init_weights()."""
    model = evaclip.create_model(name, device="meta").to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))  # what uninitialised memory may hold
    model.init_weights()
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    assert bad == [], f"not initialised: {bad}"
    for blk in model.visual.blocks:
        if blk.attn.q_bias is not None:  # the official init leaves q/v biases at zero
            assert torch.count_nonzero(blk.attn.q_bias) == 0 and torch.count_nonzero(blk.attn.v_bias) == 0
        assert torch.all(blk.norm1.weight == 1)
    conv = model.visual.patch_embed.proj.weight
    fan_in = conv[0].numel()
    assert conv.abs().max() <= fan_in**-0.5 and conv.std() > 0  # torch's default conv init, as the official code
