"""Data-parallel wrapping: DDP, or FSDP2 (``fully_shard`` per transformer block, then the root).

Below both the trainer and the planner, so that :mod:`evaclip.plan.simulate` applies exactly the trainer's
wrapping to EVA-CLIP-18B on the meta device under a fake 360-rank process group and reads back the per-rank
bytes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from evaclip.errors import ConfigError

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class FSDPConfig:
    param_dtype: str = "bf16"  # dtype of the gathered weights used in forward/backward
    reduce_dtype: str = "fp32"  # gradients are reduce-scattered in fp32 for accuracy
    reshard_after_forward: bool = True  # ZeRO-3: free gathered weights after each block's forward


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of both towers: the units that FSDP shards and activation checkpointing wraps."""
    blocks: list[nn.Module] = []
    visual = getattr(model, "visual", None)
    if visual is not None and hasattr(visual, "blocks"):
        blocks += list(visual.blocks)
    elif hasattr(model, "blocks"):  # a bare vision tower (e.g. a MIM student)
        blocks += list(model.blocks)
    text = getattr(model, "text", None)
    if text is not None and hasattr(text, "transformer") and hasattr(text.transformer, "resblocks"):
        blocks += list(text.transformer.resblocks)
    if text is not None and hasattr(text, "encoder_layers"):
        blocks += list(text.encoder_layers())
    return blocks


def apply_fsdp(model: nn.Module, mesh=None, cfg: FSDPConfig | None = None) -> nn.Module:
    """Shard ``model`` in place with FSDP2: one ``fully_shard`` unit per block, then one for the rest.

    Per-block units mean only one block's full weights are alive at a time (plus prefetch), which is what
    lets an 18B model train on 40 GB GPUs. The root unit holds embeddings, norms, heads and logit_scale.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    cfg = cfg or FSDPConfig()
    for name in (cfg.param_dtype, cfg.reduce_dtype):
        if name not in _DTYPES:
            raise ConfigError(f"unknown FSDP dtype {name!r}; choose one of {', '.join(_DTYPES)}")
    mp = MixedPrecisionPolicy(param_dtype=_DTYPES[cfg.param_dtype], reduce_dtype=_DTYPES[cfg.reduce_dtype])
    blocks = transformer_blocks(model)
    for i, block in enumerate(blocks):
        # The last block's weights are needed again at once by backward: keep them gathered.
        reshard = cfg.reshard_after_forward and i < len(blocks) - 1
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=cfg.reshard_after_forward)
    return model


def apply_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside DDP / torch.compile wrappers (FSDP2 shards in place and keeps the model itself)."""
    from torch.nn.parallel import DistributedDataParallel

    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model
