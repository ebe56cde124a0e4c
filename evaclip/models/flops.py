"""FLOPs per sample of every tower evaclip builds (EVA ViT, CLIP text, Hugging Face text), and the flop-counter
formulas PyTorch lacks for CPU attention. The trainer's MFU, ``evaclip plan``, ``evaclip models`` and the demo's
compute matching all count with this module, so they cannot disagree.

Convention (the one ``torch.utils.flop_counter`` uses): a multiply-add is 2 FLOPs; only matrix products are
counted: the patch-embedding convolution, every linear layer, the projection heads, and both attention
matmuls (scores ``q k^T`` and ``softmax(.) v``: ``2 * 2 * N^2 * width`` per layer). Norms, activations,
softmax, RoPE, biases, embedding lookups and residual adds are elementwise and not counted (well under 1% at
these sizes). Captions count as padded to ``context_length``; causal text attention is counted as full
attention, as the flop counter and the paper's GFLOPs do. The contrastive loss (``2 * embed_dim *
global_batch`` per sample) is not part of the model and is left out.

Training FLOPs are ``3 x forward`` (backward costs twice the forward); with activation recomputation the
hardware does ``4 x forward``. MFU is defined on the ``3 x`` model FLOPs, so recomputation lowers the MFU a
run reaches but not the FLOPs it needs. A frozen Hugging Face encoder (``hf_freeze``) runs forward only (1x,
under ``no_grad``, so never recomputed) and only its projection trains (3x); its feature cache makes a
repeated caption free in practice, but the count charges it every time, so compute does not depend on the
cache.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

from evaclip.errors import ConfigError
from evaclip.models.config import CLIPConfig, TextConfig, VisionConfig
from evaclip.models.hf_text import resolve_hf_dir


def vision_tokens(cfg: VisionConfig, patch_dropout: float = 0.0) -> int:
    """Sequence length through the vision blocks: cls + the patches kept by patch dropout (as the model keeps)."""
    if not 0.0 <= patch_dropout < 1.0:
        raise ConfigError(f"patch dropout must be in [0, 1), got {patch_dropout}")
    kept = cfg.num_patches if patch_dropout == 0 else max(1, int(cfg.num_patches * (1.0 - patch_dropout)))
    return 1 + kept


def _block_flops(tokens: int, width: int, mlp_weights: int) -> int:
    projections = 2 * tokens * (4 * width * width + mlp_weights)  # q, k, v, out + the MLP matrices
    attention = 2 * 2 * tokens * tokens * width  # q k^T and attn v, summed over heads
    return projections + attention


def vision_forward_flops(cfg: VisionConfig, embed_dim: int, patch_dropout: float = 0.0) -> int:
    """Forward FLOPs of the EVA vision tower for one image (``embed_dim=0``: without the CLIP head)."""
    W, H = cfg.width, cfg.mlp_hidden
    n = vision_tokens(cfg, patch_dropout)
    mlp = (3 if cfg.naiveswiglu else 2) * W * H
    patch_embed = 2 * cfg.num_patches * (3 * cfg.patch_size**2) * W  # every patch is embedded, then dropped
    head = 2 * W * embed_dim  # on the pooled token only
    return patch_embed + cfg.layers * _block_flops(n, W, mlp) + head


def clip_text_forward_flops(cfg: TextConfig, embed_dim: int) -> int:
    """Forward FLOPs of the CLIP text tower for one caption."""
    W, L = cfg.width, cfg.context_length
    mlp = 2 * W * int(W * cfg.mlp_ratio)
    return cfg.layers * _block_flops(L, W, mlp) + 2 * W * embed_dim


def hf_text_forward_flops(cfg: TextConfig, embed_dim: int) -> tuple[int, int]:
    """(encoder, projection) forward FLOPs of a BERT-style Hugging Face text tower for one caption, sized by
    the local model's ``config.json``."""
    path = Path(resolve_hf_dir(cfg.hf_model_name)) / "config.json"
    try:
        hf = json.loads(path.read_text())
        width, layers, hidden = hf["hidden_size"], hf["num_hidden_layers"], hf["intermediate_size"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"cannot count the FLOPs of {cfg.hf_model_name}: {path} gives no BERT-style "
                          f"hidden_size, num_hidden_layers and intermediate_size ({type(e).__name__}: {e})") from None
    encoder = layers * _block_flops(cfg.context_length, width, 2 * width * hidden)
    if cfg.pooler_type == "cls_pooler":  # the model's own pooler (a dense layer on the first token)
        encoder += 2 * width * width
    if cfg.proj == "linear":
        proj = 2 * width * embed_dim
    else:  # Linear(width, hidden) -> GELU -> Linear(hidden, embed_dim), hidden as in HFTextEncoder
        hidden_proj = (width + embed_dim) // 2
        proj = 2 * width * hidden_proj + 2 * hidden_proj * embed_dim
    return encoder, proj


@dataclass(frozen=True)
class Flops:
    """Forward FLOPs per image-text pair: ``vision`` and ``text`` train, ``frozen_text`` (a frozen Hugging Face
    encoder) only runs forward."""

    vision: int
    text: int
    frozen_text: int = 0

    @property
    def forward(self) -> int:
        return self.vision + self.text + self.frozen_text

    def training(self, recompute: bool = False, include_frozen: bool = True) -> int:
        """Forward + backward (3x forward) of what trains, plus one more forward when activations are
        recomputed, plus the frozen encoder's forward unless ``include_frozen=False``."""
        return (4 if recompute else 3) * (self.vision + self.text) + (self.frozen_text if include_frozen else 0)


def text_flops(cfg: TextConfig, embed_dim: int) -> tuple[int, int]:
    """(trained, frozen) forward FLOPs of a text tower for one caption."""
    if not cfg.is_hf:
        return clip_text_forward_flops(cfg, embed_dim), 0
    encoder, proj = hf_text_forward_flops(cfg, embed_dim)
    return (proj, encoder) if cfg.hf_freeze else (encoder + proj, 0)


def model_flops(cfg: CLIPConfig, patch_dropout: float = 0.0) -> Flops:
    """Forward FLOPs per image-text pair, split by tower, at a given training patch dropout."""
    text, frozen = text_flops(cfg.text_cfg, cfg.embed_dim)
    return Flops(vision=vision_forward_flops(cfg.vision_cfg, cfg.embed_dim, patch_dropout), text=text,
                 frozen_text=frozen)


def mim_training_flops(student: VisionConfig, teacher: VisionConfig, teacher_dim: int) -> int:
    """Training FLOPs of one image of masked image modeling: 3x the student's forward (every token, masked
    ones holding the mask token, through ``lm_head``) + 1x the frozen teacher's vision forward, which projects
    every token (not only the pooled one) to give per-patch targets. The teacher sees the student's patch
    grid (``MIMTeacher`` rebuilds it at that grid)."""
    teacher = dataclasses.replace(teacher, image_size=student.grid_size * teacher.patch_size)
    lm_head = 2 * vision_tokens(student) * student.width * teacher_dim
    student_forward = vision_forward_flops(student, 0) + lm_head
    teacher_forward = vision_forward_flops(teacher, 0) + 2 * vision_tokens(teacher) * teacher.width * teacher_dim
    return 3 * student_forward + teacher_forward


# ---- flop counter: CPU attention --------------------------------------------------------------------------
# ``torch.utils.flop_counter`` knows the CUDA flash / efficient / cuDNN attention ops, but not the op that
# ``F.scaled_dot_product_attention`` dispatches to on CPU, so on CPU attention would silently count 0.
_CPU_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_CPU_FLASH_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _cpu_flash_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                             **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def register_cpu_attention_flops() -> None:
    """Teach ``FlopCounterMode`` the CPU flash-attention ops (idempotent; a no-op if torch learns them)."""
    from torch.utils.flop_counter import flop_registry
    if _CPU_FLASH not in flop_registry:
        register_flop_formula(_CPU_FLASH)(_cpu_flash_flop)
    if _CPU_FLASH_BACKWARD not in flop_registry:
        register_flop_formula(_CPU_FLASH_BACKWARD)(_cpu_flash_backward_flop)
