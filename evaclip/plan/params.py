"""Closed-form parameter shapes of an EVA-CLIP config, per tower and per FSDP unit.

Derived from the config alone (no model is built), so the planner is an independent check on the model code:
``tests/plan`` compares these shapes with the real modules and the sharded sizes with FSDP2's shards.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from evaclip.errors import ConfigError
from evaclip.models.config import CLIPConfig, TextConfig, VisionConfig

Shape = tuple[int, ...]


def shard_numel(shape: Shape, world: int) -> int:
    """Elements one rank stores of a tensor sharded on dim 0 as FSDP2 does: ``ceil(dim0 / world)`` rows.

    FSDP2 pads every rank's shard to that chunk size, so this is each rank's allocation, not just rank 0's.
    """
    rows = shape[0] if shape else 1
    rest = math.prod(shape[1:]) if len(shape) > 1 else 1
    return -(-rows // world) * rest


@dataclass(frozen=True)
class TowerParams:
    """One tower: ``blocks`` repeated units with parameters ``block``, plus the rest (``other``)."""

    block: tuple[Shape, ...]
    blocks: int
    other: tuple[Shape, ...]  # embeddings, final norm, projection head: FSDP's root unit holds them

    @property
    def per_block(self) -> int:
        return sum(math.prod(s) for s in self.block)

    @property
    def total(self) -> int:
        return self.per_block * self.blocks + sum(math.prod(s) for s in self.other)

    def sharded(self, world: int) -> int:
        """Elements per rank with one FSDP2 unit per block (each parameter sharded on dim 0, padded)."""
        return (self.blocks * sum(shard_numel(s, world) for s in self.block)
                + sum(shard_numel(s, world) for s in self.other))


@dataclass(frozen=True)
class ModelParams:
    vision: TowerParams
    text: TowerParams
    extra: tuple[Shape, ...]  # logit_scale

    @property
    def total(self) -> int:
        return self.vision.total + self.text.total + sum(math.prod(s) for s in self.extra)

    @property
    def root(self) -> int:
        """Parameters outside the transformer blocks (the FSDP root unit)."""
        return sum(math.prod(s) for s in self.vision.other + self.text.other + self.extra)

    @property
    def largest_block(self) -> int:
        return max(self.vision.per_block, self.text.per_block)

    def sharded(self, world: int) -> int:
        """Parameter elements each of ``world`` ranks stores under FSDP2 full sharding (padding included)."""
        return (self.vision.sharded(world) + self.text.sharded(world)
                + sum(shard_numel(s, world) for s in self.extra))


def _norm(width: int, kind: str) -> list[Shape]:
    return [(width,)] if kind == "rmsnorm" else [(width,), (width,)]  # RMSNorm: weight; LayerNorm: + bias


def _linear(out: int, inp: int, bias: bool = True) -> list[Shape]:
    return [(out, inp), (out,)] if bias else [(out, inp)]


def vision_params(cfg: VisionConfig, embed_dim: int) -> TowerParams:
    W, H, norm = cfg.width, cfg.mlp_hidden, cfg.norm_type
    block: list[Shape] = _norm(W, norm) + _norm(W, norm)  # norm1, norm2
    block += 3 * _linear(W, W, bias=False) if cfg.subln else _linear(3 * W, W, bias=False)
    if cfg.qkv_bias:
        block += [(W,), (W,)]  # learned q and v biases (k has none)
    if cfg.subln:
        block += _norm(W, norm)  # inner_attn_ln
    block += _linear(W, W)  # attention output projection
    if cfg.naiveswiglu:
        block += _linear(H, W) + _linear(H, W) + _linear(W, H)
        block += _norm(H, norm) if cfg.subln else []
    else:
        block += _linear(H, W) + _linear(W, H)
        block += _norm(H, "layernorm") if cfg.subln else []  # the official Mlp's sub-LN is always a LayerNorm
    if cfg.ls_init_value:
        block += [(W,), (W,)]  # gamma_1, gamma_2
    other: list[Shape] = [(W, 3, cfg.patch_size, cfg.patch_size), (W,)]  # patch embedding conv
    other += [(1, 1, W), (1, cfg.num_patches + 1, W)]  # cls token, absolute position embedding
    other += _norm(W, norm)  # `norm`, or `fc_norm` under global average pooling
    other += _linear(embed_dim, W, bias=cfg.qkv_bias)  # projection head
    return TowerParams(block=tuple(block), blocks=cfg.layers, other=tuple(other))


def text_params(cfg: TextConfig, embed_dim: int) -> TowerParams:
    if cfg.is_hf:
        raise ConfigError("the planner covers CLIP text towers only, not Hugging Face text encoders")
    W, H = cfg.width, int(cfg.width * cfg.mlp_ratio)
    block = _norm(W, "layernorm") * 2 + _linear(3 * W, W) + _linear(W, W) + _linear(H, W) + _linear(W, H)
    if cfg.ls_init_value is not None:
        block += [(W,), (W,)]
    other: list[Shape] = [(cfg.vocab_size, W), (cfg.context_length, W)]  # token and position embeddings
    other += _norm(W, "layernorm") + [(W, embed_dim)]  # ln_final, text_projection
    return TowerParams(block=tuple(block), blocks=cfg.layers, other=tuple(other))


def model_params(cfg: CLIPConfig) -> ModelParams:
    """Closed-form parameter shapes of an EVA-CLIP model."""
    return ModelParams(vision=vision_params(cfg.vision_cfg, cfg.embed_dim),
                       text=text_params(cfg.text_cfg, cfg.embed_dim), extra=((1,),))
