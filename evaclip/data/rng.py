"""Counter-based randomness for the data pipeline.

Every random choice in the sample stream (which source, which shard, which interleaved shard, the order inside
a shuffle window, the augmentation of a sample) is a pure function of integers such as (seed, source, worker,
counter). Restoring a handful of counters therefore restores the stream exactly, with nothing to replay.
"""
from __future__ import annotations

import numpy as np

_MASK = (1 << 64) - 1

# Purposes, so that two kinds of choice never share a random stream.
MIX, DRAW, EPOCH, SLOT, WINDOW, AUGMENT = range(6)

BLOCK = 1024  # choices are drawn this many at a time, then indexed by counter


def mix_seed(*values: int) -> int:
    """Hash integers into a 63-bit seed (splitmix64 steps): nearby inputs give unrelated seeds."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK)) & _MASK
        h = (h + 0x9E3779B97F4A7C15) & _MASK
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK
        h ^= h >> 31
    return h >> 1


def rng(*values: int) -> np.random.Generator:
    return np.random.default_rng(mix_seed(*values))


class BlockChoices:
    """choice(n) for a counter n: drawn in blocks of BLOCK from rng(*key, n // BLOCK), so any n is O(1) to reach."""

    def __init__(self, key: tuple[int, ...], num_options: int, weights: list[float] | None = None):
        self.key = key
        self.num_options = num_options
        self.p = None if weights is None else np.asarray(weights, dtype=np.float64) / float(sum(weights))
        self._block_id = -1
        self._block: np.ndarray | None = None

    def __call__(self, n: int) -> int:
        if self.num_options == 1:
            return 0
        block_id = n // BLOCK
        if block_id != self._block_id:
            self._block = rng(*self.key, block_id).choice(self.num_options, size=BLOCK, p=self.p)
            self._block_id = block_id
        return int(self._block[n % BLOCK])
