"""The global sample order: which sample fills each slot of each step's batch, whatever the world size.

Samples come from ``C = data.canonical_streams`` canonical streams (:class:`~evaclip.data.pipeline.
CanonicalStream`), each a pure function of (seed, stream id, its own counters). Global position ``p`` (counted
from 0 over the whole run, ``B`` per step) is filled by stream ``p % C`` with that stream's ``p // C``-th sample.
Nothing here depends on the number of processes; they only decide who computes which position:

- rank ``r`` of ``W`` takes the positions ``p ≡ r (mod W)`` of each step (``B / W`` of them, so ``W`` must divide
  ``B``), and therefore owns the streams ``c ≡ r (mod W)`` (so ``W`` must divide ``C``);
- the rank's streams are dealt to its data-loader workers round-robin; every worker builds its piece of every
  step, and the loader puts the pieces back in position order.

So step ``s`` trains on the same samples, each with the same augmentation and the same patch-dropout or MIM mask
(both keyed by the position), on 1, 2, 4, ... processes with any number of workers, and a checkpoint's data
position (each stream's counters) can be resumed on another world size.

A broken sample is skipped inside its stream, which then gives its next good sample for the same position: a
skip never shifts another stream, rank or step. A canonical stream is the unit of reading: with fewer shards
than streams, each shard is read by several streams, each taking every k-th sample of it (see
:class:`~evaclip.data.streams.ShardStream`).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GlobalOrder:
    """The positions and streams of one rank and its workers (``workers`` >= 1 logical workers)."""

    streams: int
    global_batch: int
    world_size: int
    rank: int
    workers: int

    @staticmethod
    def usable_workers(streams: int, world_size: int, num_workers: int) -> int:
        """Workers that get at least one stream: a worker beyond the rank's ``streams / world_size`` would idle."""
        return max(1, min(max(num_workers, 1), streams // world_size))

    def rank_positions(self, step: int) -> range:
        """This rank's global positions in step ``step``, in order."""
        return range(step * self.global_batch + self.rank, (step + 1) * self.global_batch, self.world_size)

    def stream_of(self, position: int) -> int:
        return position % self.streams

    def worker_of_stream(self, stream: int) -> int:
        return (stream // self.world_size) % self.workers

    def worker_streams(self, worker: int) -> list[int]:
        """The canonical streams this rank's worker ``worker`` reads."""
        return [c for c in range(self.rank, self.streams, self.world_size) if self.worker_of_stream(c) == worker]

    def piece(self, step: int, worker: int) -> list[int]:
        """The positions of step ``step`` that worker ``worker`` fills (possibly none), in order."""
        return [p for p in self.rank_positions(step) if self.worker_of_stream(self.stream_of(p)) == worker]
