"""The EVA vision transformer: one configurable implementation for EVA01, EVA02, bigE, 8B and 18B."""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from evaclip.models.config import VisionConfig
from evaclip.models.init import conv_default_, trunc_normal_
from evaclip.models.layers import Block, RMSNorm, VisionRope, init_scale_for_depth, make_norm, patch_dropout

_BLOCK = re.compile(r"blocks\.(\d+)\.")


class PatchEmbed(nn.Module):
    def __init__(self, image_size: int, patch_size: int, width: int):
        super().__init__()
        self.image_size = image_size
        self.patch_size = (patch_size, patch_size)
        self.num_patches = (image_size // patch_size) ** 2
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class EVAVisionTransformer(nn.Module):
    """patch embed -> [cls] + patches + abs pos -> (patch dropout) -> blocks -> norm(cls) -> head.

    ``forward`` returns the CLIP image embedding (B, embed_dim). ``forward_features`` exposes the token
    sequence for masked image modeling, which replaces masked patch embeddings by a mask token.
    """

    checkpoint_prefix = "visual."  # its keys in a whole-CLIP state dict

    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.image_size = cfg.image_size
        self.num_layers = cfg.layers
        self.embed_dim = cfg.width
        self.output_dim = embed_dim
        self.patch_dropout = cfg.patch_dropout
        self.grad_checkpointing = False
        norm, eps = cfg.norm_type, 1e-6

        self.patch_embed = PatchEmbed(cfg.image_size, cfg.patch_size, cfg.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, cfg.width))
        self.rope = None
        if cfg.rope:
            self.rope = VisionRope(cfg.width // cfg.heads, cfg.pt_hw_seq_len,
                                   cfg.grid_size if cfg.intp_freq else None)
        rate = cfg.drop_path_rate or 0.0  # stochastic depth grows linearly with depth, as in the official code
        dpr = [rate * i / (cfg.layers - 1) if cfg.layers > 1 else 0.0 for i in range(cfg.layers)]
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.heads, cfg.mlp_hidden, qkv_bias=cfg.qkv_bias, postnorm=cfg.postnorm, norm=norm,
                  eps=eps, subln=cfg.subln, swiglu=cfg.naiveswiglu, drop_path=dpr[i],
                  ls_init_value=cfg.ls_init_value, index=i)
            for i in range(cfg.layers))
        if cfg.global_average_pool:
            self.norm, self.fc_norm = nn.Identity(), make_norm(norm, cfg.width, eps)
        else:
            self.norm, self.fc_norm = make_norm(norm, cfg.width, eps), None
        self.head = nn.Linear(cfg.width, embed_dim, bias=cfg.qkv_bias)
        if not self.pos_embed.is_meta:
            self.init_weights()

    # ---- initialisation (the official EVA init) -------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        trunc_normal_(self.pos_embed)
        trunc_normal_(self.cls_token)
        # The official init touches only Linear and LayerNorm; the rest keeps PyTorch's defaults, which are
        # set explicitly here so that a model built on the meta device and materialised with to_empty()
        # gets the same distribution of weights.
        conv_default_(self.patch_embed.proj)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, RMSNorm)):
                nn.init.ones_(m.weight)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for i, blk in enumerate(self.blocks, start=1):
            blk.attn.proj.weight.mul_(init_scale_for_depth(i))
            out = blk.mlp.w3 if self.cfg.naiveswiglu else blk.mlp.fc2
            out.weight.mul_(init_scale_for_depth(i))
            if blk.attn.q_bias is not None:
                nn.init.zeros_(blk.attn.q_bias)
                nn.init.zeros_(blk.attn.v_bias)
            if blk.gamma_1 is not None:
                nn.init.constant_(blk.gamma_1, self.cfg.ls_init_value)
                nn.init.constant_(blk.gamma_2, self.cfg.ls_init_value)
        if isinstance(self.head, nn.Linear):
            self.head.weight.mul_(0.001)  # a near-zero head: the CLIP projection starts small
        self.init_buffers()

    def init_buffers(self) -> None:
        """Recompute non-persistent buffers (RoPE tables), e.g. after ``to_empty`` from the meta device."""
        if self.rope is not None:
            fresh = VisionRope(self.cfg.width // self.cfg.heads, self.cfg.pt_hw_seq_len,
                               self.cfg.grid_size if self.cfg.intp_freq else None)
            device = self.pos_embed.device
            self.rope.freqs_cos = fresh.freqs_cos.to(device)
            self.rope.freqs_sin = fresh.freqs_sin.to(device)

    # ---- the shared model interface (timm-style) -------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def layer_id(self, name: str) -> int:
        """Layer index for layer-wise LR decay: embeddings 0, block k -> k+1, the rest num_layers+1."""
        if name.startswith(("patch_embed", "pos_embed", "cls_token", "mask_token")):
            return 0
        m = _BLOCK.match(name)
        return int(m.group(1)) + 1 if m else self.num_layers + 1

    # ---- forward --------------------------------------------------------------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embeddings (B, N, W), before the cls token and position embedding are added."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}x{self.image_size} images, got "
                             f"{tuple(images.shape[-2:])}; resize them with the model's transform")
        return self.patch_embed(images)

    def forward_features(self, x: torch.Tensor, *, patches_embedded: bool = False,
                         return_all_tokens: bool = False) -> torch.Tensor:
        """Run the trunk. ``x`` is images, or patch embeddings when ``patches_embedded`` (for MIM).

        Returns the normalised pooled feature (B, W), or all tokens after the final norm (B, 1+N, W) when
        ``return_all_tokens`` (patch dropout is then not applied, since every token is wanted).
        """
        if not patches_embedded:
            x = self.embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        keep = None
        if self.training and self.patch_dropout > 0 and not return_all_tokens:
            x, keep = patch_dropout(x, self.patch_dropout)
        # RoPE tables once per forward, for the positions that survived patch dropout; every block uses them.
        rope = self.rope.tables(keep) if self.rope is not None else None
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, rope, use_reentrant=False)
            else:
                x = blk(x, rope)
        if return_all_tokens:
            return self.norm(x)  # Identity when global_average_pool
        if self.fc_norm is not None:  # the official mean includes the cls token
            return self.fc_norm(x.mean(1))
        return self.norm(x[:, 0])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(images))


def interpolate_pos_embed(pos_embed: torch.Tensor, new_grid: int) -> torch.Tensor:
    """Bicubically resize a (1, 1+g*g, W) position embedding to (1, 1+new_grid^2, W); the cls entry is kept."""
    cls, grid = pos_embed[:, :1], pos_embed[:, 1:]
    old = int(round(grid.shape[1] ** 0.5))
    if old * old != grid.shape[1]:
        raise ValueError(f"position embedding has {grid.shape[1]} patch entries, not a square grid")
    if old == new_grid:
        return pos_embed
    dtype = grid.dtype
    grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, -1).to(dtype)
    return torch.cat((cls, grid), dim=1)
