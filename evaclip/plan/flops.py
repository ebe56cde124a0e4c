"""Analytic FLOPs of an EVA-CLIP model, and the flop-counter formulas PyTorch lacks for CPU attention.

Convention (the one ``torch.utils.flop_counter`` uses): a multiply-add is 2 FLOPs; only matrix products are
counted: the patch-embedding convolution, every linear layer, the projection heads, and both attention
matmuls (scores ``q k^T`` and ``softmax(.) v``: ``2 * 2 * N^2 * width`` per layer). Norms, activations,
softmax, RoPE, biases and residual adds are elementwise and not counted (well under 1% at these sizes).
Causal text attention is counted as full attention, as the flop counter and the paper's GFLOPs do. The
contrastive loss (``2 * embed_dim * global_batch`` per sample) is not part of the model and is left out.

Training FLOPs are ``3 x forward`` (backward costs twice the forward); with activation recomputation the
hardware does ``4 x forward``. MFU is defined on the ``3 x`` model FLOPs, so recomputation lowers the MFU a
run reaches but not the FLOPs it needs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

from evaclip.errors import ConfigError
from evaclip.models.config import CLIPConfig, TextConfig, VisionConfig


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
    """Forward FLOPs of the EVA vision tower for one image."""
    W, H = cfg.width, cfg.mlp_hidden
    n = vision_tokens(cfg, patch_dropout)
    mlp = (3 if cfg.naiveswiglu else 2) * W * H
    patch_embed = 2 * cfg.num_patches * (3 * cfg.patch_size**2) * W  # every patch is embedded, then dropped
    head = 2 * W * embed_dim  # on the pooled token only
    return patch_embed + cfg.layers * _block_flops(n, W, mlp) + head


def text_forward_flops(cfg: TextConfig, embed_dim: int) -> int:
    """Forward FLOPs of the CLIP text tower for one caption padded to ``context_length`` tokens."""
    if cfg.is_hf:
        raise ConfigError("the planner counts CLIP text towers only; Hugging Face text towers are not supported")
    W, L = cfg.width, cfg.context_length
    mlp = 2 * W * int(W * cfg.mlp_ratio)
    return cfg.layers * _block_flops(L, W, mlp) + 2 * W * embed_dim


@dataclass(frozen=True)
class Flops:
    """FLOPs per image-text pair."""

    vision: int
    text: int

    @property
    def forward(self) -> int:
        return self.vision + self.text

    def training(self, recompute: bool = False) -> int:
        """Forward + backward (3x forward), plus one more forward when activations are recomputed."""
        return (4 if recompute else 3) * self.forward


def model_flops(cfg: CLIPConfig, patch_dropout: float = 0.0) -> Flops:
    """Forward FLOPs per image-text pair, split by tower, at a given training patch dropout."""
    return Flops(vision=vision_forward_flops(cfg.vision_cfg, cfg.embed_dim, patch_dropout),
                 text=text_forward_flops(cfg.text_cfg, cfg.embed_dim))


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
