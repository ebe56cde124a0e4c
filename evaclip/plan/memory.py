"""Bytes per GPU: model state under DDP / ZeRO-1 / ZeRO-2 / FSDP, and activations per sample.

Model state convention (bf16 mixed precision with fp32 master weights, as the paper's DeepSpeed bf16 runs):
16 bytes per parameter = fp32 master weights 4 + fp32 gradients 4 + two fp32 optimizer moments 8 (Adam's and
LAMB's moments are the same size; LAMB's trust ratios are per tensor and negligible). On top of that, compute
runs on bf16 weights: a full bf16 copy (2 bytes/param) under DDP and ZeRO-1/2; under FSDP only the units in
use are gathered: the root unit (embeddings, heads) plus two blocks (the one computing and the one
prefetched), and one block's gradient is unsharded for the reduce-scatter (bf16, then fp32: 6 bytes/param).

Activation convention: what autograd keeps for backward, per sample, in the compute dtype (``dtype_bytes``,
2 for bf16), counted tensor by tensor for the EVA block below (``*_block_bytes_per_token``); norm statistics
are fp32. With activation checkpointing each block keeps only its input (``dtype_bytes * tokens * width``)
and recomputes the rest in backward, so the peak adds back one block's full activations. Either way the
backward pass holds a few residual-sized gradients on top (``transient``; an estimate, not measured here).

Worked example, the EVA-CLIP-18B block (res-post-norm, RMSNorm, fused bias-free qkv, GELU MLP) in bf16, per
token, W = width, H = MLP hidden, h = heads: qkv input 2W + q/k/v 6W + SDPA output 2W + fp32 log-sum-exp 4h +
norm1 8W + MLP input 2W + fc1 output and GELU output 4H + norm2 8W + fp32 rsqrt 2 x 4
= 28 W + 4 H + 4 h + 8 bytes = 245,928 bytes at W=5120, H=25600, h=40; x 257 tokens x 48 blocks = 3.03 GB
per image without checkpointing. With checkpointing: 2 W per token per block = 126 MB per image.
``tests/plan`` checks these formulas against the bytes autograd actually saves, for each block layout, in
fp32 and bf16 (they agree to within 1%).
"""
from __future__ import annotations

from dataclasses import dataclass

from evaclip.errors import ConfigError
from evaclip.models.config import CLIPConfig, TextConfig, VisionConfig
from evaclip.models.flops import vision_tokens
from evaclip.plan.params import ModelParams

SCHEMES: dict[str, str] = {"ddp": "DDP", "zero1": "ZeRO-1", "zero2": "ZeRO-2", "fsdp": "FSDP full shard"}
MASTER_BYTES, GRAD_BYTES, COMPUTE_BYTES = 4, 4, 2
OPTIMIZER_BYTES = {"adamw": 8, "lamb": 8}  # two fp32 moments each


# ---- activations -----------------------------------------------------------------------------------------
def _norm_bytes(kind: str, width: int, b: int, input_saved: bool) -> int:
    """Per token, what a norm keeps for backward. ``input_saved``: its input is already kept by another op.

    LayerNorm keeps its input and fp32 mean + rstd. evaclip's RMSNorm keeps an fp32 copy of its input (the
    input itself in fp32), the input in the compute dtype (for ``x * rsqrt``), the normalised value (for
    ``weight * x``), and an fp32 rsqrt.
    """
    own_input = 0 if input_saved else b * width
    if kind == "layernorm":
        return own_input + 8
    fp32_copy = 0 if b == 4 else 4 * width  # in fp32, ``x.float()`` is the input itself
    return own_input + fp32_copy + b * width + 4


def vision_block_bytes_per_token(cfg: VisionConfig, b: int = 2) -> int:
    """Bytes one EVA block keeps for backward per token (no checkpointing), in compute dtype of ``b`` bytes.

    Attention: the qkv input (after norm1 in pre-norm blocks, the block input in res-post-norm ones), q/k/v
    (one storage; RoPE makes new q and k), the SDPA output (whose layout lets the output projection read it
    without a copy, unless RoPE made q contiguous) and its fp32 log-sum-exp per head, sub-LN's output.
    MLP: its input, the hidden pre- and post-activation (SwiGLU: w1, SiLU, w2 outputs and their product),
    sub-LN's output. Res-post-norm adds the two norms on the branch outputs.
    """
    W, H, norm = cfg.width, cfg.mlp_hidden, cfg.norm_type
    attn = b * W  # input of the qkv projection
    if not cfg.postnorm:
        attn += _norm_bytes(norm, W, b, input_saved=False)  # norm1 on the block input
    attn += 3 * b * W + 4 * cfg.heads  # q, k, v for SDPA + its log-sum-exp
    attn += b * W  # SDPA output, read in place by the output projection
    if cfg.rope:
        # Rotated q and k are new tensors (with fused qkv the unrotated storage stays alive through v); the
        # SDPA output is then laid out head-major, so the projection input is a copy.
        attn += (0 if cfg.subln else 2 * b * W) + b * W
    if cfg.subln:
        attn += _norm_bytes(norm, W, b, input_saved=True) + b * W  # inner_attn_ln and its output
    if cfg.postnorm:
        attn += _norm_bytes(norm, W, b, input_saved=False)  # norm1 on the attention output
    mlp = b * W  # MLP input
    if not cfg.postnorm:
        mlp += _norm_bytes(norm, W, b, input_saved=False)
    mlp += (4 if cfg.naiveswiglu else 2) * b * H
    if cfg.subln:
        sub_kind = norm if cfg.naiveswiglu else "layernorm"
        mlp += _norm_bytes(sub_kind, H, b, input_saved=True) + b * H
    if cfg.postnorm:
        mlp += _norm_bytes(norm, W, b, input_saved=False)
    gammas = 2 * b * W if cfg.ls_init_value else 0
    return attn + mlp + gammas


def text_block_bytes_per_token(cfg: TextConfig, b: int = 2) -> int:
    """Bytes one pre-LN CLIP text block keeps per token: as the EVA block, with LayerNorm and a GELU MLP."""
    W, H = cfg.width, int(cfg.width * cfg.mlp_ratio)
    ln = _norm_bytes("layernorm", W, b, input_saved=False)
    gammas = 2 * b * W if cfg.ls_init_value is not None else 0
    return 2 * ln + b * W + 3 * b * W + 4 * cfg.heads + b * W + b * W + 2 * b * H + gammas


@dataclass(frozen=True)
class Activations:
    """Bytes per sample (one image-text pair)."""

    saved: int  # kept from forward to backward
    transient: int  # extra at the peak of backward (a recomputed block, gradient buffers)

    @property
    def peak(self) -> int:
        return self.saved + self.transient


def _tower(tokens: int, layers: int, width: int, block_per_token: int, b: int, checkpointing: bool,
           extra: int, keeps_last_output: bool = True) -> Activations:
    last = b * tokens * width if keeps_last_output else 0  # kept by the pooling's norm / indexing
    if checkpointing:
        saved = layers * b * tokens * width + last + extra  # each block keeps only its input
        transient = tokens * (block_per_token + 2 * b * width)  # one block recomputed, with its gradients
    else:
        saved = layers * tokens * block_per_token + last + extra
        transient = tokens * 2 * b * width  # gradients of a block's output and input
    return Activations(saved, transient)


def vision_activations(cfg: VisionConfig, patch_dropout: float = 0.0, checkpointing: bool = False,
                       b: int = 2) -> Activations:
    """Activation bytes of the EVA vision tower per image during training."""
    n, W = vision_tokens(cfg, patch_dropout), cfg.width
    extra = 3 * cfg.image_size**2 * b  # the image, kept by the patch-embedding conv for its weight gradient
    if patch_dropout:
        # The gather that drops patches keeps its full input and the kept indices (int64).
        extra += b * (cfg.num_patches + 1) * W + 8 * (n - 1)
        if cfg.rope:
            # RoPE's cos/sin gathered at the kept positions: built once per forward and shared by every block
            # (kept for backward, and by the checkpointed blocks as their input).
            extra += 2 * b * (n - 1) * cfg.head_width
    gap = cfg.global_average_pool
    extra += _norm_bytes(cfg.norm_type, W, b, input_saved=not gap) + b * W  # pooled-token norm, head input
    return _tower(n, cfg.layers, W, vision_block_bytes_per_token(cfg, b), b, checkpointing, extra,
                  keeps_last_output=not gap)


def text_activations(cfg: TextConfig, checkpointing: bool = False, b: int = 2) -> Activations:
    """Activation bytes of the CLIP text tower per caption (padded to ``context_length``)."""
    L = cfg.context_length
    extra = 8 * L + b * cfg.width  # ln_final statistics (its input is the last output), the pooled token
    return _tower(L, cfg.layers, cfg.width, text_block_bytes_per_token(cfg, b), b, checkpointing, extra)


def model_activations(cfg: CLIPConfig, patch_dropout: float = 0.0, checkpointing: bool = False,
                      b: int = 2) -> Activations:
    """Per image-text pair. The towers run one after the other, so only the larger transient counts."""
    v = vision_activations(cfg.vision_cfg, patch_dropout, checkpointing, b)
    t = text_activations(cfg.text_cfg, checkpointing, b)
    return Activations(saved=v.saved + t.saved, transient=max(v.transient, t.transient))


def loss_bytes(local_batch: int, global_batch: int, embed_dim: int, b: int = 2) -> int:
    """The contrastive loss on one GPU: gathered features of both towers and their gradients (compute
    dtype), and the local x global fp32 logits of both directions, their log-softmax and gradients."""
    return 2 * 2 * global_batch * embed_dim * b + 6 * 4 * local_batch * global_batch


# ---- model state -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StateBytes:
    """Bytes per GPU for the model state under one data-parallel scheme."""

    params: int  # fp32 master weights
    grads: int  # fp32 gradients
    optimizer: int  # optimizer moments
    compute: int  # bf16 weights used by forward/backward (FSDP: gathered units + unsharded gradients)

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.compute


def state_bytes(params: ModelParams, scheme: str, world: int, optimizer: str = "lamb") -> StateBytes:
    """Per-GPU model state. ZeRO-1 shards optimizer states, ZeRO-2 also gradients, FSDP also weights.

    ZeRO shards are flat (``P / world``); FSDP2 shards each parameter on dim 0, padded to ``ceil(rows /
    world)`` rows per rank, which costs a few percent more at hundreds of ranks.
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown parallel scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if optimizer not in OPTIMIZER_BYTES:
        raise ConfigError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZER_BYTES)}")
    if world < 1:
        raise ConfigError(f"the number of GPUs must be >= 1, got {world}")
    P, opt = params.total, OPTIMIZER_BYTES[optimizer]
    flat = -(-P // world)
    if scheme == "fsdp":
        shard = params.sharded(world)
        compute = COMPUTE_BYTES * (params.root + 2 * params.largest_block) + 6 * params.largest_block
        return StateBytes(MASTER_BYTES * shard, GRAD_BYTES * shard, opt * shard, compute)
    grads = GRAD_BYTES * (flat if scheme == "zero2" else P)
    optim = opt * (P if scheme == "ddp" else flat)
    return StateBytes(MASTER_BYTES * P, grads, optim, COMPUTE_BYTES * P)
