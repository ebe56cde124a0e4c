"""GPU check of the planner's activation model (a script, not a test: it needs CUDA).

Builds a scaled-down EVA-CLIP-18B-layout model in bf16 on one GPU and measures, per image-text pair (the
difference between two batch sizes, so weights and workspaces cancel):
- ``saved``: ``memory_allocated`` after forward minus before (what autograd keeps for backward);
- ``peak``: ``max_memory_allocated`` during forward + backward minus the memory before forward (gradients
  of the weights preallocated, so only activations and their gradients count);
with and without activation checkpointing, at patch dropout 0 and 0.5, and prints them next to the
planner's ``model_activations`` as JSON lines. Usage: ``python tests/plan/gpu_memory_check.py``.
"""
from __future__ import annotations

import json
import sys

import torch

from evaclip.models.factory import create_model
from evaclip.plan.memory import model_activations

CONFIG = {  # the 18B block layout at 1/5 of its width and 1/6 of its depth
    "embed_dim": 512,
    "vision_cfg": {"image_size": 224, "patch_size": 14, "width": 1024, "layers": 8, "head_width": 128,
                   "mlp_ratio": 5, "qkv_bias": False, "postnorm": True, "use_rms_norm": True},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 4},
}


def measure(model, batch: int, checkpointing: bool) -> tuple[int, int]:
    model.set_grad_checkpointing(checkpointing)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()  # the inputs count: the patch-embedding conv keeps the images
    images = torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
    tokens = torch.randint(0, 49408, (batch, 77), device="cuda")
    img, txt, scale = model(images, tokens)
    saved = torch.cuda.memory_allocated() - before
    (img.float() @ txt.float().T * scale).logsumexp(-1).mean().backward()
    torch.cuda.synchronize()
    return saved, torch.cuda.max_memory_allocated() - before


def main() -> int:
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    model = create_model(CONFIG, device="cuda", precision="bf16").train()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    small, large = 16, 48
    for checkpointing in (False, True):
        for patch_dropout in (0.0, 0.5):
            model.visual.patch_dropout = patch_dropout
            measure(model, small, checkpointing)  # warm-up: kernels' workspaces
            s1, p1 = measure(model, small, checkpointing)
            s2, p2 = measure(model, large, checkpointing)
            saved, peak = (s2 - s1) / (large - small), (p2 - p1) / (large - small)
            est = model_activations(model.cfg, patch_dropout, checkpointing, b=2)
            print(json.dumps({"checkpointing": checkpointing, "patch_dropout": patch_dropout,
                              "saved_measured": saved, "saved_planned": est.saved,
                              "saved_ratio": round(saved / est.saved, 3),
                              "peak_measured": peak, "peak_planned": est.peak,
                              "peak_ratio": round(peak / est.peak, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
