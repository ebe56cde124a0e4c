"""The CLIP text transformer (causal, end-of-text pooling) with OpenAI/open_clip parameter names."""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from evaclip.models import init
from evaclip.models.config import TextConfig
from evaclip.models.layers import LayerNorm, QuickGELU

_BLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.")


class TextAttention(nn.Module):
    """Self-attention with ``nn.MultiheadAttention``'s parameter names (in_proj_weight/bias, out_proj)."""

    def __init__(self, width: int, heads: int, causal: bool):
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(B, L, 3, self.heads, -1)
        # Unbind before transposing: backward then stacks the gradients in the linear's layout (no extra copy).
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        x = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out_proj(x.transpose(1, 2).reshape(B, L, C))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(init * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, causal: bool, quick_gelu: bool,
                 ls_init_value: float | None):
        super().__init__()
        self.ln_1 = LayerNorm(width)  # eps 1e-5, torch's default, as in CLIP
        self.attn = TextAttention(width, heads, causal)
        self.ls_1 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.ln_2 = LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, hidden))
        self.mlp.add_module("gelu", QuickGELU() if quick_gelu else nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(hidden, width))
        self.ls_2 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls_1(self.attn(self.ln_1(x)))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    def __init__(self, cfg: TextConfig, quick_gelu: bool):
        super().__init__()
        self.width = cfg.width
        self.layers = cfg.layers
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.attn_mask, quick_gelu, cfg.ls_init_value)
            for _ in range(cfg.layers))


class TextTransformer(nn.Module):
    """token + position embedding -> causal pre-LN blocks -> ln_final -> the EOT token -> text_projection.

    The end-of-text token has the highest id (49407) in the CLIP vocabulary, so ``argmax`` finds it.
    Sequences may be shorter than ``context_length`` (the first positions are used).
    """

    checkpoint_prefix = "text."  # its keys in a whole-CLIP state dict

    def __init__(self, cfg: TextConfig, embed_dim: int, quick_gelu: bool = False):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.context_length = cfg.context_length
        self.vocab_size = cfg.vocab_size
        self.num_layers = cfg.layers
        self.output_dim = embed_dim
        self.grad_checkpointing = False
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg, quick_gelu)
        self.ln_final = LayerNorm(cfg.width)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, embed_dim))
        if not self.positional_embedding.is_meta:
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """CLIP's init: scaled normals for the projections, so the residual stream does not grow with depth."""
        w, n = self.cfg.width, self.cfg.layers
        init.normal_(self.token_embedding.weight, std=0.02)
        init.normal_(self.positional_embedding, std=0.01)
        proj_std, attn_std, fc_std = w**-0.5 * (2 * n) ** -0.5, w**-0.5, (2 * w) ** -0.5
        for blk in self.transformer.resblocks:
            init.normal_(blk.attn.in_proj_weight, std=attn_std)
            nn.init.zeros_(blk.attn.in_proj_bias)
            init.normal_(blk.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(blk.attn.out_proj.bias)
            init.normal_(blk.mlp.c_fc.weight, std=fc_std)
            nn.init.zeros_(blk.mlp.c_fc.bias)
            init.normal_(blk.mlp.c_proj.weight, std=proj_std)
            nn.init.zeros_(blk.mlp.c_proj.bias)
            for ln in (blk.ln_1, blk.ln_2):
                nn.init.ones_(ln.weight)
                nn.init.zeros_(ln.bias)
        nn.init.ones_(self.ln_final.weight)
        nn.init.zeros_(self.ln_final.bias)
        self.reset_projection()

    @torch.no_grad()
    def reset_projection(self) -> None:
        init.normal_(self.text_projection, std=self.cfg.width**-0.5)

    def init_buffers(self) -> None:
        """No non-persistent buffers: the causal mask is SDPA's ``is_causal``."""

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        return {"positional_embedding"}

    def layer_id(self, name: str) -> int:
        """Layer index for layer-wise LR decay: embeddings 0, block k -> k+1, the rest num_layers+1."""
        if name.startswith(("token_embedding", "positional_embedding")):
            return 0
        m = _BLOCK.match(name)
        return int(m.group(1)) + 1 if m else self.num_layers + 1

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        if text.ndim != 2 or text.shape[1] > self.context_length:
            raise ValueError(f"expected token ids of shape (batch, <= {self.context_length}), got {tuple(text.shape)}")
        x = self.token_embedding(text) + self.positional_embedding[: text.shape[1]]
        for blk in self.transformer.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]
        return pooled @ self.text_projection
