"""Building blocks of the EVA vision transformer.

Module and parameter names follow the official code (`norm1`, `attn.qkv`, `attn.q_bias`, `mlp.w1`, ...) so that
official state dicts load without renaming. Attention always runs through ``F.scaled_dot_product_attention``,
which picks the flash / memory-efficient kernel on GPU (the official code used xformers for the same purpose).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from evaclip.models import sample_rng


class LayerNorm(nn.LayerNorm):
    """LayerNorm whose output has the input's dtype (under autocast, layer_norm itself returns fp32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class RMSNorm(nn.Module):
    """T5-style RMSNorm as in EVA-CLIP-8B/18B: no mean, no bias, variance computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    return LayerNorm(dim, eps=eps)


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU used by OpenAI's CLIP weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample during training.

    Under :func:`evaclip.models.sample_rng.per_sample` the draw for a sample is keyed by its key, this module's
    ``salt`` (the block) and the branch, so it does not depend on the process or on recomputation.
    """

    def __init__(self, p: float, salt: int = 0):
        super().__init__()
        self.p, self.salt = p, salt

    def forward(self, x: torch.Tensor, branch: int = 0) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        u = sample_rng.uniform(x.shape[0], sample_rng.DROP_PATH + 16 * (2 * self.salt + branch), 1, x.device)
        if u is None:
            mask = x.new_empty(shape).bernoulli_(keep)
        else:
            mask = (u < keep).to(x.dtype).reshape(shape)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class VisionRope(nn.Module):
    """2D rotary position embedding for the patch grid (EVA02's ``VisionRotaryEmbeddingFast``).

    Per axis, head_dim/4 frequencies ``10000^(-2i/(head_dim/2))`` are each used for one pair of channels; the
    row angle fills the first half of the head and the column angle the second half. Positions are
    ``arange(grid)/grid * pt_seq_len`` so a model fine-tuned at a larger grid (``intp_freq``) sees positions on
    the grid it was pre-trained on. The tables are buffers rebuilt from the config, never loaded.
    """

    def __init__(self, head_dim: int, pt_seq_len: int, ft_seq_len: int | None = None):
        super().__init__()
        ft_seq_len = ft_seq_len or pt_seq_len
        half = head_dim // 2
        freqs = 1.0 / (10000 ** (torch.arange(0, half, 2)[: half // 2].float() / half))
        t = torch.arange(ft_seq_len) / ft_seq_len * pt_seq_len
        angle = torch.einsum("i,f->if", t, freqs).repeat_interleave(2, dim=-1)  # (grid, head_dim/2)
        rows = angle[:, None, :].expand(ft_seq_len, ft_seq_len, half)
        cols = angle[None, :, :].expand(ft_seq_len, ft_seq_len, half)
        table = torch.cat((rows, cols), dim=-1).reshape(ft_seq_len * ft_seq_len, head_dim)
        self.register_buffer("freqs_cos", table.cos(), persistent=False)
        self.register_buffer("freqs_sin", table.sin(), persistent=False)

    def tables(self, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The (cos, sin) tables of this forward pass: (N, head_dim), or (B, 1, N_kept, head_dim) for the
        patches that patch dropout kept (``keep``: (B, N_kept) indices). Computed once per forward and passed
        to every block, since all blocks rotate the same positions."""
        cos, sin = self.freqs_cos, self.freqs_sin
        if keep is not None:  # after patch dropout each sample has its own subset of positions
            cos = cos[keep].unsqueeze(1)
            sin = sin[keep].unsqueeze(1)
        return cos, sin


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate ``x`` of shape (B, heads, N_patches, head_dim) by the tables of :meth:`VisionRope.tables`."""
    cos, sin = rope
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Map each interleaved channel pair (x0, x1) to (-x1, x0)."""
    x = x.unflatten(-1, (-1, 2))
    return torch.stack((-x[..., 1], x[..., 0]), dim=-1).flatten(-2)


class Attention(nn.Module):
    """Multi-head self-attention of the EVA ViT.

    Two parameter layouts, as in the official code: a fused bias-free ``qkv`` projection (EVA01, bigE, 8B,
    18B), or separate ``q_proj/k_proj/v_proj`` with a norm on the attention output (``subln``, EVA02). With
    ``qkv_bias`` there are learned q and v biases; the k bias is always zero (a k bias would only add a
    per-query constant to the logits, which softmax ignores).
    """

    def __init__(self, dim: int, heads: int, qkv_bias: bool, subln: bool, norm: str, eps: float):
        super().__init__()
        self.heads = heads
        self.subln = subln
        if subln:
            self.q_proj = nn.Linear(dim, dim, bias=False)
            self.k_proj = nn.Linear(dim, dim, bias=False)
            self.v_proj = nn.Linear(dim, dim, bias=False)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.inner_attn_ln = make_norm(norm, dim, eps) if subln else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``rope``: the tower's (cos, sin) tables for this forward pass, or None for a model without RoPE."""
        B, N, C = x.shape
        if self.subln:
            q = F.linear(x, self.q_proj.weight, self.q_bias)
            k = F.linear(x, self.k_proj.weight)
            v = F.linear(x, self.v_proj.weight, self.v_bias)
            q, k, v = (t.view(B, N, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        else:
            bias = None
            if self.q_bias is not None:
                bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
            # Split on the (B, N, 3, H, D) view, then transpose each: backward stacks the three gradients
            # straight into the linear's (B, N, 3C) layout (one copy fewer than unbinding a permuted view).
            qkv = F.linear(x, self.qkv.weight, bias).view(B, N, 3, self.heads, -1)
            q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        if rope is not None:  # rotate patch tokens only; the cls token (index 0) has no position
            q = torch.cat((q[:, :, :1], apply_rope(q[:, :, 1:], rope)), dim=2).type_as(v)
            k = torch.cat((k[:, :, :1], apply_rope(k[:, :, 1:], rope)), dim=2).type_as(v)
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj(self.inner_attn_ln(x))


class Mlp(nn.Module):
    """fc1 -> GELU -> (sub-LN) -> fc2."""

    def __init__(self, dim: int, hidden: int, subln: bool):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        # Quirk kept for weight compatibility: the official Mlp is not given the block's norm layer, so its
        # sub-LN is a plain nn.LayerNorm with torch's default eps (1e-5), whatever the model's norm is.
        self.ffn_ln = LayerNorm(hidden) if subln else nn.Identity()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.ffn_ln(self.act(self.fc1(x))))


class SwiGLU(nn.Module):
    """w3(sub-LN(SiLU(w1 x) * w2 x)), all projections with bias (EVA02)."""

    def __init__(self, dim: int, hidden: int, subln: bool, norm: str, eps: float):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.act = nn.SiLU()
        self.ffn_ln = make_norm(norm, hidden, eps) if subln else nn.Identity()
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(self.ffn_ln(self.act(self.w1(x)) * self.w2(x)))


class Block(nn.Module):
    """A transformer block, pre-norm ``x + f(norm(x))`` or res-post-norm ``x + norm(f(x))``.

    Res-post-norm (EVA-CLIP-18B, bigE) never normalises the residual stream itself, which keeps very deep
    models stable.
    """

    def __init__(self, dim: int, heads: int, mlp_hidden: int, *, qkv_bias: bool, postnorm: bool, norm: str,
                 eps: float, subln: bool, swiglu: bool, drop_path: float,
                 ls_init_value: float | None, index: int = 0):
        super().__init__()
        self.postnorm = postnorm
        self.norm1 = make_norm(norm, dim, eps)
        self.attn = Attention(dim, heads, qkv_bias, subln, norm, eps)
        self.norm2 = make_norm(norm, dim, eps)
        self.mlp = SwiGLU(dim, mlp_hidden, subln, norm, eps) if swiglu else Mlp(dim, mlp_hidden, subln)
        self.drop_path = DropPath(drop_path, salt=index) if drop_path > 0 else None
        if ls_init_value:
            self.gamma_1 = nn.Parameter(ls_init_value * torch.ones(dim))
            self.gamma_2 = nn.Parameter(ls_init_value * torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if self.postnorm:
            a = self.norm1(self.attn(x, rope))
        else:
            a = self.attn(self.norm1(x), rope)
        x = x + self._drop(a if self.gamma_1 is None else self.gamma_1 * a, 0)
        m = self.norm2(self.mlp(x)) if self.postnorm else self.mlp(self.norm2(x))
        return x + self._drop(m if self.gamma_2 is None else self.gamma_2 * m, 1)

    def _drop(self, branch_out: torch.Tensor, branch: int) -> torch.Tensor:
        return branch_out if self.drop_path is None else self.drop_path(branch_out, branch)


def patch_dropout(x: torch.Tensor, prob: float, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep a random subset of ``max(1, int(N * (1 - prob)))`` patch tokens per sample; the cls token stays.

    Returns the shortened sequence and the kept patch indices (B, N_kept), which RoPE needs. As in the
    official code, the kept tokens come in random order (top-k of Gaussian noise); attention is permutation-
    equivariant, so only the cls output matters and it is unaffected by the order.
    """
    cls, patches = x[:, :1], x[:, 1:]
    B, N, _ = patches.shape
    n_keep = max(1, int(N * (1.0 - prob)))
    # Keyed per sample during training (sample_rng): the same tokens are dropped on any number of processes.
    noise = sample_rng.uniform(B, sample_rng.PATCH_DROPOUT, N, x.device)
    if noise is None:
        noise = torch.randn(B, N, device=x.device, generator=generator)
    keep = noise.topk(n_keep, dim=-1).indices
    patches = torch.gather(patches, 1, keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
    return torch.cat((cls, patches), dim=1), keep


def init_scale_for_depth(layer_index: int) -> float:
    """EVA's ``fix_init_weight``: output projections of block i (1-based) are divided by sqrt(2 i)."""
    return 1.0 / math.sqrt(2.0 * layer_index)
