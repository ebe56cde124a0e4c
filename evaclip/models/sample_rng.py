"""Randomness that belongs to a sample, not to a process: patch-dropout and DropPath draws keyed per sample.

A training step sets one 63-bit key per sample of the batch (the trainer derives it from the run's seed and the
sample's global position, :mod:`evaclip.data.order`) with :func:`per_sample`; while it is set, the model's
random choices for that sample are a counter-based hash of (key, salt, index), computed on the tensors' device.
A sample is therefore dropped and masked the same way on 1 or 64 processes, in any micro-batch, and again when
gradient checkpointing recomputes a block. Without keys (evaluation, tests that feed tensors) the model draws
from torch's global RNG as usual.

The hash is splitmix64 (the same mixer as :mod:`evaclip.data.rng`), in wrapping int64 arithmetic; the test
compares it with a uint64 numpy reference.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch

_KEYS: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("evaclip_sample_keys", default=None)

_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)  # splitmix64's constants as signed int64
_M1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_M2 = 0x94D049BB133111EB - (1 << 64)

# Salts, so that two kinds of draw never share numbers.
PATCH_DROPOUT, DROP_PATH, MIM_MASK = 1, 2, 3


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's step on int64 tensors (elementwise, wrapping)."""
    x = x + _GOLDEN
    x = (x ^ _shr(x, 30)) * _M1
    x = (x ^ _shr(x, 27)) * _M2
    return x ^ _shr(x, 31)


def sample_keys(seed: int, positions: torch.Tensor | list[int]) -> torch.Tensor:
    """One key per sample from the run's seed and the samples' global positions (int64, >= 0)."""
    positions = torch.as_tensor(positions, dtype=torch.int64)
    return _shr(mix(mix(torch.full_like(positions, int(seed))) ^ positions), 1)


def frame_keys(keys: torch.Tensor, frame_counts: list[int]) -> torch.Tensor:
    """Sample keys -> one key per frame of a batch with clips (frame 0 keeps its sample's key, so an image, a
    clip of one frame, draws as it would alone)."""
    counts = torch.as_tensor(frame_counts, dtype=torch.int64, device=keys.device)
    owner = torch.repeat_interleave(keys, counts)
    starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    index = torch.arange(owner.shape[0], device=keys.device) - starts
    return torch.where(index == 0, owner, _shr(mix(owner ^ (index << 40)), 1))


@contextlib.contextmanager
def per_sample(keys: torch.Tensor | None) -> Iterator[None]:
    """Key the model's per-sample randomness with ``keys`` (one per sample of every forward inside)."""
    token = _KEYS.set(keys)
    try:
        yield
    finally:
        _KEYS.reset(token)


def current() -> torch.Tensor | None:
    """The keys set by :func:`per_sample`, or None."""
    return _KEYS.get()


def uniform(batch: int, salt: int, n: int, device: torch.device) -> torch.Tensor | None:
    """(batch, n) uniforms in [0, 1) keyed by the current samples and ``salt``, or None without keys."""
    keys = _KEYS.get()
    if keys is None:
        return None
    if keys.shape[0] != batch:
        raise ValueError(f"{keys.shape[0]} sample keys are set for a batch of {batch}; set one key per sample")
    keys = keys.to(device=device, dtype=torch.int64)
    h = mix(mix(keys ^ salt).unsqueeze(1) ^ torch.arange(n, device=device, dtype=torch.int64))
    return _shr(h, 11).to(torch.float64).mul_(2.0 ** -53).to(torch.float32)


def sub_keys(keys: torch.Tensor | None, salt: int) -> list[int] | None:
    """Plain integer seeds per sample for host-side draws (e.g. numpy MIM masks), or None without keys."""
    if keys is None:
        return None
    return _shr(mix(keys.to(torch.int64).cpu() ^ salt), 1).tolist()
