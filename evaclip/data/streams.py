"""Per-stream readers of raw samples from one source, with a position that is a few integers.

Stream g of W is one canonical stream (:mod:`evaclip.data.order`; W = ``data.canonical_streams``). A stream
turns draws j = 0, 1, 2, ... into shards (or CSV/folder items) with :class:`DrawOrder`:

- resampled: every draw picks one of all N units uniformly with replacement, from the stream's own seed;
- epochs: epoch e is a permutation of all N units (the same for every stream, seeded by (seed, source, e)) and
  stream g takes entries g, g+W, g+2W, ... A stream that gets no unit at all (N < W) falls back to resampling
  all units with its own seed, so no stream ever waits on an empty list; a warning says so.

For shards a unit is a stride of a shard: with fewer shards than streams, shard i is split into
k = ceil(W / N) parts (samples q, q+k, q+2k, ... for part q), so that every stream has units of its own, an
epoch still reads every sample once, and streams reading one shard at once do not hand out the same samples
(each part-reader reads the whole shard but decodes only its part: k times the I/O of small data).

Epochs are exact passes when every stream gets an equal share (equal shards, N * k a multiple of W). Otherwise
streams read at the same rate but own unequal shares, so a stream that finishes its share starts the next
epoch's while others finish theirs, and over many epochs the samples of the larger shares are seen less often.
Resampling (the paper's setting) has neither edge.

:class:`ShardStream` reads `interleave` shards at once and picks which one gives the next sample at random,
and shuffles samples within windows of `shuffle_window` consecutive samples of a shard. Its position is, per
interleaved shard, (draw number, samples consumed); restoring it re-opens those shards and skips the consumed
samples without decoding them.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterator

from evaclip.data import rng as R
from evaclip.data.tario import TarSampleReader
from evaclip.errors import DatasetError

log = logging.getLogger(__name__)


class DrawOrder:
    """Maps a draw number j to an index in [0, num_items) for stream g of W (see the module docstring)."""

    def __init__(self, num_items: int, *, seed: int, source: int, stream: int, num_streams: int, resampled: bool):
        self.num_items, self.seed, self.source = num_items, seed, source
        self.stream, self.num_streams = stream, num_streams
        self.per_epoch = len(range(stream, num_items, num_streams))
        self.resampled = resampled or self.per_epoch == 0
        if not resampled and stream == num_items:  # the first stream left without an item says it for all
            log.warning("source %d: %d items for %d streams, streams %d..%d have none and resample all items",
                        source, num_items, num_streams, num_items, num_streams - 1)
        self._uniform = R.BlockChoices((seed, R.DRAW, source, stream), num_items)
        self._epoch, self._mine = -1, None

    def epoch(self, j: int) -> int:
        """The epoch draw j belongs to (always 0 when resampling)."""
        return 0 if self.resampled else j // self.per_epoch

    def __call__(self, j: int) -> int:
        if self.resampled:
            return self._uniform(j)
        epoch, pos = divmod(j, self.per_epoch)
        if epoch != self._epoch:
            perm = R.rng(self.seed, R.EPOCH, self.source, epoch).permutation(self.num_items)
            self._epoch, self._mine = epoch, perm[self.stream::self.num_streams]
        return int(self._mine[pos])


class _OpenShard:
    """One shard being read: yields its samples in window-shuffled order, counting how many were consumed."""

    def __init__(self, url: str, draw: int, consumed: int, window: int, key: tuple[int, ...], max_member_bytes: int,
                 part: int = 0, parts: int = 1):
        self.url, self.draw, self.consumed, self.window = url, draw, consumed, window
        self.part, self.parts = part, parts
        self.key, self.max_member_bytes = key, max_member_bytes
        self.reader: TarSampleReader | None = None
        self._it: Iterator[dict] | None = None
        self._buf: list[dict] = []
        self._order: list[int] = []
        self.yielded = 0  # samples given out since this object was made (0 at the end = an empty shard)
        self._buf_start = -1  # shard index of the first sample in _buf

    def next(self) -> dict | None:
        """The next sample, or None when the shard is exhausted (or broken: see `reader.error`)."""
        start = self.consumed - self.consumed % self.window
        if start != self._buf_start:
            if self._it is None:
                self.reader = TarSampleReader(self.url, skip=self.part + start * self.parts,
                                              max_member_bytes=self.max_member_bytes, stride=self.parts)
                self._it = iter(self.reader)
            self._buf = [s for _, s in zip(range(self.window), self._it)]
            order = R.rng(*self.key, self.draw, start // self.window).permutation(len(self._buf))
            self._order, self._buf_start = [int(i) for i in order], start
        pos = self.consumed - start
        if pos >= len(self._buf):
            return None
        self.consumed += 1
        self.yielded += 1
        return self._buf[self._order[pos]]

    def close(self) -> None:
        if self._it is not None and hasattr(self._it, "close"):
            self._it.close()


class ShardStream:
    """Raw samples of one webdataset source for one canonical stream; see the module docstring."""

    def __init__(
        self,
        urls: list[str],
        *,
        seed: int,
        source: int,
        stream: int,
        num_streams: int,
        resampled: bool,
        interleave: int,
        shuffle_window: int,
        max_member_bytes: int,
        count: Callable[[str], None],
    ):
        self.urls = urls
        self.parts = max(1, -(-num_streams // len(urls)))  # strides per shard (see the module docstring)
        self.order = DrawOrder(len(urls) * self.parts, seed=seed, source=source, stream=stream,
                               num_streams=num_streams, resampled=resampled)
        units = len(urls) * self.parts
        if not resampled and stream == 0 and units % num_streams:
            log.warning("source %d: %d shards (x%d parts) do not split evenly over %d canonical streams; epochs "
                        "overlap at their edges and some samples are seen less often (use a shard count that "
                        "divides evenly, or data.resampled=true)", source, len(urls), self.parts, num_streams)
        self.slot_choice = R.BlockChoices((seed, R.SLOT, source, stream), interleave)
        self.window_key = (seed, R.WINDOW, source, stream)
        self.interleave, self.shuffle_window, self.max_member_bytes = interleave, shuffle_window, max_member_bytes
        self.count = count
        self.next_draw = 0
        self.choices = 0
        self.slots: list[_OpenShard | None] = [None] * interleave
        self.empty_run = 0  # shards in a row that gave no sample: a source that is all broken must not spin forever
        self.max_empty_run = 10 * len(urls) + 10

    def _open(self, draw: int, consumed: int = 0) -> _OpenShard:
        part, shard = divmod(self.order(draw), len(self.urls))
        return _OpenShard(self.urls[shard], draw, consumed, self.shuffle_window, self.window_key,
                          self.max_member_bytes, part, self.parts)

    def next_sample(self) -> dict:
        i = self.slot_choice(self.choices)
        self.choices += 1
        while True:
            shard = self.slots[i]
            if shard is None:
                # Keep epochs whole: finish the shards of this epoch before opening one of the next.
                older = self._open_slot_before_epoch(self.order.epoch(self.next_draw), start=i)
                if older is not None:
                    i = older
                    continue
                shard = self.slots[i] = self._open(self.next_draw)
                self.next_draw += 1
            sample = shard.next()
            if sample is not None:
                self.empty_run = 0
                return sample
            self._finish(shard)
            self.slots[i] = None

    def _open_slot_before_epoch(self, epoch: int, start: int) -> int | None:
        """The first slot after `start` (cyclically) still reading a shard of an epoch before `epoch`."""
        for k in range(1, self.interleave + 1):
            j = (start + k) % self.interleave
            shard = self.slots[j]
            if shard is not None and self.order.epoch(shard.draw) < epoch:
                return j
        return None

    def _finish(self, shard: _OpenShard) -> None:
        shard.close()
        if shard.reader is not None and shard.reader.error and shard.part == 0:  # a shard's damage counts once
            self.count(shard.reader.error)
            log.warning("shard %s: %s (%s)", shard.url, shard.reader.error, shard.reader.error_detail)
        # A part of a shard with fewer samples than parts can be empty; only a shard without samples is suspect.
        read_samples = shard.reader is not None and shard.reader.samples > 0
        if shard.yielded == 0 and not read_samples:
            self.empty_run += 1
            if self.empty_run > self.max_empty_run:
                raise DatasetError(
                    f"{self.empty_run} shards in a row gave no sample (last: {shard.url!r}); the source looks "
                    "empty or unreadable: check the shard paths")

    def state_dict(self) -> dict:
        slots = [None if s is None else [s.draw, s.consumed] for s in self.slots]
        return {"next_draw": self.next_draw, "choices": self.choices, "empty_run": self.empty_run, "slots": slots}

    def load_state_dict(self, state: dict) -> None:
        self.next_draw, self.choices = int(state["next_draw"]), int(state["choices"])
        self.empty_run = int(state.get("empty_run", 0))
        if len(state["slots"]) != self.interleave:
            raise DatasetError(f"data state has {len(state['slots'])} interleaved shards, config has {self.interleave}")
        self.slots = [None if s is None else self._open(int(s[0]), int(s[1])) for s in state["slots"]]
        for s in self.slots:
            if s is not None:
                s.yielded = s.consumed  # a resumed shard that already gave samples is not "empty"

    def close(self) -> None:
        for s in self.slots:
            if s is not None:
                s.close()
