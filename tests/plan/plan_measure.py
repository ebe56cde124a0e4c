"""Measurements the planner's formulas are checked against (test helpers, not part of evaclip).

Two independent ways to see activation memory on CPU:
- ``saved_bytes``: the storages autograd saves for backward (``saved_tensors_hooks``), each storage once,
  parameters excluded. Exact for plain forward; blind inside non-reentrant checkpointing, whose own hooks
  take over and whose block inputs are kept by closure.
- ``retained_bytes``: the profiler's CPU allocation log: bytes allocated and not freed during the forward
  (what stays alive for backward), minus the output, plus the float input the first layer keeps.
Per-sample values are differences between two batch sizes, which cancel batch-independent constants (RoPE
tables, checkpoint RNG states).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile


def saved_bytes(model: torch.nn.Module, fn: Callable[[], torch.Tensor]) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def retained_bytes(fn: Callable[[], torch.Tensor], inp: torch.Tensor) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    net = sum(e.cpu_memory_usage for e in prof.events() if e.cpu_parent is None)
    return net - out.nbytes + (inp.nbytes if inp.is_floating_point() else 0)


def per_sample(measure: Callable[[torch.Tensor], int], make: Callable[[int], torch.Tensor],
               small: int = 2, large: int = 6) -> float:
    return (measure(make(large)) - measure(make(small))) / (large - small)
