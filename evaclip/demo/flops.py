"""Training compute of the demo's stages, in FLOPs per sample (a multiply-add = 2 FLOPs; matmuls only).

Conventions, shared with :mod:`evaclip.plan.flops`: training a tower costs 3x its forward; captions count as
padded to ``context_length``. The frozen Hugging Face text encoder runs forward only (1x) and its projection
trains (3x). The feature cache makes a repeated caption free in practice; the count charges it every time,
so compute does not depend on the cache. MIM = 3x the student's forward (all patches, plus ``lm_head``) +
1x the frozen teacher's vision forward.
"""
from __future__ import annotations

import json
from pathlib import Path

from evaclip.models import get_model_config
from evaclip.models.config import CLIPConfig, TextConfig
from evaclip.plan.flops import text_forward_flops, vision_forward_flops, vision_tokens


def _hf_text_forward(cfg: TextConfig, embed_dim: int) -> tuple[int, int]:
    """(encoder forward, projection forward) FLOPs of a BERT-style HF tower for one caption."""
    from evaclip.models.hf_text import resolve_hf_dir
    hf = json.loads((Path(resolve_hf_dir(cfg.hf_model_name)) / "config.json").read_text())
    width, layers, hidden = hf["hidden_size"], hf["num_hidden_layers"], hf["intermediate_size"]
    tokens = cfg.context_length
    per_layer = 2 * tokens * (4 * width * width + 2 * width * hidden) + 2 * 2 * tokens * tokens * width
    if cfg.proj == "linear":
        proj = 2 * width * embed_dim
    else:  # Linear(width, hidden) -> GELU -> Linear(hidden, embed_dim), hidden as in HFTextEncoder
        hidden_proj = (width + embed_dim) // 2
        proj = 2 * width * hidden_proj + 2 * hidden_proj * embed_dim
    return layers * per_layer, proj


def clip_train_flops(model: str | CLIPConfig, patch_dropout: float = 0.0, frozen_text: bool = True) -> int:
    """Training FLOPs of one image-text pair of contrastive training; ``frozen_text=False`` leaves out the
    frozen text encoder's forward (a fixed, cacheable feature extractor shared by every model)."""
    cfg = get_model_config(model)
    vision = 3 * vision_forward_flops(cfg.vision_cfg, cfg.embed_dim, patch_dropout)
    if cfg.text_cfg.is_hf:
        encoder, proj = _hf_text_forward(cfg.text_cfg, cfg.embed_dim)
        if cfg.text_cfg.hf_freeze:
            text = (encoder if frozen_text else 0) + 3 * proj
        else:
            text = 3 * (encoder + proj)
    else:
        text = 3 * text_forward_flops(cfg.text_cfg, cfg.embed_dim)
    return vision + text


def mim_train_flops(student: str | CLIPConfig, teacher: str | CLIPConfig) -> int:
    """Training FLOPs of one image of masked image modeling (student trained, teacher forward only)."""
    s, t = get_model_config(student), get_model_config(teacher)
    tokens = vision_tokens(s.vision_cfg)
    lm_head = 2 * tokens * s.vision_cfg.width * t.embed_dim
    # the student's forward without the CLIP head, on every token (masked ones hold the mask token)
    student_fwd = vision_forward_flops(s.vision_cfg, 0) + lm_head
    # the teacher projects every token (not only the pooled one) to give per-patch targets
    teacher_fwd = vision_forward_flops(t.vision_cfg, 0) + 2 * vision_tokens(t.vision_cfg) * t.vision_cfg.width * t.embed_dim
    return 3 * student_fwd + teacher_fwd
