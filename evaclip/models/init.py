"""Random parameter initialisation, optionally keyed by parameter name so that it does not depend on how the
model is built or sharded.

The model classes initialise themselves through the functions here (``trunc_normal_``, ``normal_``,
``linear_default_``, ``conv_default_``). Outside :func:`keyed_by_name` they draw from torch's global RNG, as
``torch.nn.init`` does. Inside it, every parameter of the given model draws its whole value from its own
generator, seeded by (seed, the parameter's name): a single process, DDP and FSDP2 (where each rank holds a
shard, a DTensor) then start from bit-identical weights. Under FSDP2 each rank draws one full parameter at a
time on the CPU and keeps its own shard, so no process ever holds the full model (only its largest parameter,
briefly). Chosen over block-by-block initialisation because it needs no cooperation from the wrapping and is
independent of the order in which modules are initialised. The price: every rank draws every parameter once
on its CPU (for 18B, minutes at start-up; weights that a checkpoint then replaces are drawn too).
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import math
from typing import Callable, Iterator

import torch
from torch import nn

_KEYED: contextvars.ContextVar[tuple[int, dict[int, str]] | None] = contextvars.ContextVar(
    "evaclip_keyed_init", default=None)


@contextlib.contextmanager
def keyed_by_name(model: nn.Module, seed: int) -> Iterator[None]:
    """Initialise the parameters of ``model`` from generators keyed by (``seed``, parameter name)."""
    token = _KEYED.set((int(seed), {id(p): name for name, p in model.named_parameters()}))
    try:
        yield
    finally:
        _KEYED.reset(token)


def _generator(seed: int, name: str) -> torch.Generator:
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


@torch.no_grad()
def _fill(t: torch.Tensor, draw: Callable[[torch.Tensor, torch.Generator | None], object]) -> torch.Tensor:
    keyed = _KEYED.get()
    name = keyed[1].get(id(t)) if keyed is not None else None
    if name is None:
        draw(t, None)
        return t
    full = torch.empty(t.shape, dtype=torch.float32)  # the global shape, also for a DTensor shard
    draw(full, _generator(keyed[0], name))
    full = full.to(t.dtype)
    if hasattr(t, "device_mesh"):  # an FSDP2 DTensor: keep this rank's shard of the full value
        from torch.distributed.tensor import distribute_tensor
        t.copy_(distribute_tensor(full.to(t.device_mesh.device_type), t.device_mesh, t.placements,
                                  src_data_rank=None))
    else:
        t.copy_(full)
    return t


def trunc_normal_(t: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    """timm's trunc_normal_: truncated at absolute +-2 (not +-2 std); for std=.02 no truncation in practice."""
    return _fill(t, lambda x, g: nn.init.trunc_normal_(x, mean=0.0, std=std, a=-2.0, b=2.0, generator=g))


def normal_(t: torch.Tensor, std: float) -> torch.Tensor:
    return _fill(t, lambda x, g: nn.init.normal_(x, mean=0.0, std=std, generator=g))


def _default_bound(weight: torch.Tensor) -> float:
    fan_in = weight.shape[1] * (math.prod(weight.shape[2:]) if weight.dim() > 2 else 1)
    return 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0


def _default_(module: nn.Module) -> None:
    """PyTorch's own ``reset_parameters`` of Linear and ConvNd (kaiming-uniform with a=sqrt(5), uniform bias)."""
    _fill(module.weight, lambda x, g: nn.init.kaiming_uniform_(x, a=math.sqrt(5), generator=g))
    if module.bias is not None:
        bound = _default_bound(module.weight)
        _fill(module.bias, lambda x, g: nn.init.uniform_(x, -bound, bound, generator=g))


def linear_default_(linear: nn.Linear) -> None:
    _default_(linear)


def conv_default_(conv: nn.Conv2d) -> None:
    _default_(conv)
