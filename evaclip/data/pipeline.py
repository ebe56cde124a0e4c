"""The training data loader: mixed sources -> decoded, transformed, tokenized full batches, exactly resumable.

Layout. Rank r runs `num_workers` DataLoader workers (or the main process when 0); logical worker w of rank r
is stream g = r * max(num_workers, 1) + w. Each stream mixes its sources sample by sample (source chosen with
probability proportional to its weight) and builds whole batches, so the batch sequence of every stream is a
pure function of (seed, g, counters): see :mod:`evaclip.data.rng` and :mod:`evaclip.data.streams`.

Resume. The DataLoader hands out worker batches round-robin, in order. Each batch carries the state of its
worker right after it was built; the loader keeps the latest consumed state per worker and the number of
batches consumed. A restored loader restarts every worker from its saved state and rotates the worker ids so
that the worker whose turn came next gets the first turn again. Batches that had been prefetched but not yet
consumed are simply built again. Nothing is replayed, except re-reading the shards being read up to the
consumed position (no decoding).

Skips. Bad samples are skipped and counted per reason (:data:`~evaclip.data.decode.SKIP_REASONS`); each batch
reports the skips its worker met while building it, and :attr:`TrainLoader.skip_counts` sums the consumed ones
(this rank only; all-reduce across ranks to log global totals).
"""
from __future__ import annotations

import copy
import logging
import random
from collections import Counter
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from evaclip.data import rng as R
from evaclip.data.config import DataConfig
from evaclip.data.decode import SkipSample, decode_caption, decode_image, find_image_bytes
from evaclip.data.sources import ItemStream, ResolvedSource, resolve_source
from evaclip.data.streams import ShardStream
from evaclip.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

STATE_VERSION = 1
Batch = tuple[torch.Tensor, torch.Tensor, dict]


# A run of this many skipped samples in a row means the data or the transform is broken, not just noisy web
# data (5% corrupt samples give runs of 3 or 4): stop with the last reason instead of spinning forever.
MAX_SKIP_RUN = 2000


class DefaultTokenizer:
    """`evaclip.tokenizer.tokenize` at a fixed context length (a class, so that it pickles for spawned workers)."""

    def __init__(self, context_length: int):
        from evaclip.tokenizer import tokenize  # noqa: F401 - fail here, in the caller, if it is missing

        self.context_length = context_length

    def __call__(self, texts: list[str]) -> torch.Tensor:
        from evaclip.tokenizer import tokenize

        return tokenize(texts, context_length=self.context_length)


class _RngGuard:
    """Saves and restores the global RNGs, so that seeding augmentations never disturbs the training process."""

    def __enter__(self):
        self.states = (torch.get_rng_state(), random.getstate(), np.random.get_state())

    def __exit__(self, *exc):
        torch.set_rng_state(self.states[0])
        random.setstate(self.states[1])
        np.random.set_state(self.states[2])


class MixedBatchDataset(IterableDataset):
    """An endless stream of full batches `(images[B,3,S,S], tokens[B,L], info)` for one rank."""

    def __init__(self, sources: list[ResolvedSource], cfg: DataConfig, rank: int, world_size: int,
                 transform: Callable, tokenizer: Callable, to_rgb: Callable):
        super().__init__()
        self.sources, self.cfg, self.rank, self.world_size = sources, cfg, rank, world_size
        self.transform, self.tokenizer, self.to_rgb = transform, tokenizer, to_rgb
        self.workers_per_rank = max(cfg.num_workers, 1)
        self.start_states: list[dict | None] = [None] * self.workers_per_rank
        self.first_worker = 0  # logical id of physical worker 0 (rotation after a resume)

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        logical = (physical + self.first_worker) % self.workers_per_rank
        return self.iter_worker(logical, self.start_states[logical])

    def _make_streams(self, g: int, count: Callable[[str], None]) -> list:
        cfg, num_streams = self.cfg, self.world_size * self.workers_per_rank
        streams = []
        for i, src in enumerate(self.sources):
            if src.kind == "webdataset":
                streams.append(ShardStream(
                    src.urls, seed=cfg.seed, source=i, worker=g, num_streams=num_streams, resampled=cfg.resampled,
                    interleave=cfg.interleave, shuffle_window=cfg.shuffle_window,
                    max_member_bytes=cfg.max_member_bytes, count=count))
            else:
                streams.append(ItemStream(src, seed=cfg.seed, source_index=i, worker=g, num_streams=num_streams,
                                          resampled=cfg.resampled))
        return streams

    def iter_worker(self, logical: int, state: dict | None) -> Iterator[Batch]:
        """The batches of logical worker `logical` of this rank, starting from `state` (None = the beginning)."""
        cfg = self.cfg
        g = self.rank * self.workers_per_rank + logical
        skips: Counter = Counter()
        streams = self._make_streams(g, lambda reason: skips.update([reason]))
        choose = R.BlockChoices((cfg.seed, R.MIX, g), len(self.sources), [s.weight for s in self.sources])
        draws = batches = skip_run = 0
        if state is not None:
            draws, batches = int(state["draws"]), int(state["batches"])
            for stream, st in zip(streams, state["streams"]):
                stream.load_state_dict(st)
        try:
            while True:
                images, captions, keys, urls, which = [], [], [], [], []
                with _RngGuard():
                    while len(images) < cfg.batch_size:
                        n, draws = draws, draws + 1
                        s = choose(n)
                        raw = streams[s].next_sample()
                        try:
                            image, caption = self._decode(raw, skips, seed=R.mix_seed(cfg.seed, R.AUGMENT, g, n))
                        except SkipSample as e:
                            skips[e.reason] += 1
                            skip_run += 1
                            if skip_run >= MAX_SKIP_RUN:
                                raise DatasetError(
                                    f"{skip_run} samples in a row were skipped (last: {e}, in {raw['__url__']}); "
                                    "check the data and the train transform") from None
                            continue
                        skip_run = 0
                        images.append(image)
                        captions.append(caption)
                        keys.append(raw["__key__"])
                        urls.append(raw["__url__"])
                        which.append(s)
                tokens = self.tokenizer(captions)
                batches += 1
                state = {"draws": draws, "batches": batches, "streams": [st.state_dict() for st in streams]}
                info = {"keys": keys, "urls": urls, "sources": which, "skips": dict(skips), "worker": logical,
                        "state": state}
                skips.clear()
                yield torch.stack(images), tokens, info
        finally:
            for stream in streams:
                stream.close()

    def _decode(self, raw: dict, skips: Counter, seed: int) -> tuple[torch.Tensor, str]:
        if raw.get("__skip__"):
            raise SkipSample(raw["__skip__"])
        # Caption first: it is cheap, and a sample without one is skipped before paying for the image.
        caption, truncated = decode_caption(raw, self.cfg.max_caption_chars)
        if truncated:
            skips["caption_truncated"] += 1
        image = decode_image(find_image_bytes(raw), self.cfg.max_image_pixels)
        # Seed the augmentation from the sample's position, so a resumed run augments it identically.
        torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed also queues CUDA seeding, slowly
        random.seed(seed)
        np.random.seed(seed % (1 << 32))
        own = getattr(self.transform, "generator", None)
        if isinstance(own, torch.Generator):  # a transform built with its own seed/generator (ImageTransform)
            own.manual_seed(seed)
        try:
            tensor = self.transform(self.to_rgb(image))
        except Exception as e:  # noqa: BLE001 - one odd image must not kill a week-long run
            log.warning("transform failed on %s from %s: %s: %s", raw["__key__"], raw["__url__"], type(e).__name__, e)
            raise SkipSample("transform_error", str(e)) from None
        return tensor, caption


def _identity(batch: Any) -> Any:
    return batch


class TrainLoader:
    """Iterable of `(images, tokens, info)` with `state_dict()` / `load_state_dict()` for exact resume.

    Each `iter(loader)` continues where the previous one stopped; with `samples_per_epoch` set it yields one
    virtual epoch (`len(loader)` batches), otherwise it never ends. `info` has `keys`, `urls`, `sources`
    (source index per sample), `skips` (reason -> count met while building this batch) and `worker`.
    """

    def __init__(self, dataset: MixedBatchDataset, cfg: DataConfig):
        self.dataset, self.cfg = dataset, cfg
        self.num_workers = cfg.num_workers
        self.worker_states: list[dict | None] = [None] * dataset.workers_per_rank
        self.batches_consumed = 0
        self.skip_counts: Counter = Counter()
        self._it: Iterator[Batch] | None = None
        self.batches_per_epoch = None
        if cfg.samples_per_epoch is not None:
            self.batches_per_epoch = max(1, cfg.samples_per_epoch // (cfg.batch_size * dataset.world_size))

    def __len__(self) -> int:
        if self.batches_per_epoch is None:
            raise TypeError("the loader is endless; set data.samples_per_epoch for virtual epochs with a length")
        return self.batches_per_epoch

    def _start(self) -> Iterator[Batch]:
        ds = self.dataset
        ds.start_states = list(self.worker_states)
        ds.first_worker = self.batches_consumed % ds.workers_per_rank
        if self.num_workers == 0:
            return ds.iter_worker(0, self.worker_states[0])
        loader = DataLoader(
            ds, batch_size=None, num_workers=self.num_workers, collate_fn=_identity, timeout=self.cfg.timeout_s,
            prefetch_factor=self.cfg.prefetch_factor, persistent_workers=False, pin_memory=self.cfg.pin_memory,
            # An explicit generator keeps DataLoader from drawing its base seed from the global torch RNG,
            # which would shift the trainer's random stream by when the loader was (re)started.
            generator=torch.Generator().manual_seed(self.cfg.seed))
        return iter(loader)

    def __iter__(self) -> Iterator[Batch]:
        if self._it is None:
            self._it = self._start()
        count = 0
        while self.batches_per_epoch is None or count < self.batches_per_epoch:
            images, tokens, info = next(self._it)
            self.worker_states[info["worker"]] = info.pop("state")
            self.batches_consumed += 1
            self.skip_counts.update(info["skips"])
            count += 1
            yield images, tokens, info

    def _layout(self) -> dict:
        ds, cfg = self.dataset, self.cfg
        return {"rank": ds.rank, "world_size": ds.world_size, "workers": ds.workers_per_rank, "seed": cfg.seed,
                "batch_size": cfg.batch_size, "resampled": cfg.resampled, "interleave": cfg.interleave,
                "shuffle_window": cfg.shuffle_window,
                "sources": [[s.name, s.kind, s.size, s.weight] for s in ds.sources]}

    def state_dict(self) -> dict:
        """The data position after the batches consumed so far (JSON-serialisable; save one per rank)."""
        return {"version": STATE_VERSION, "layout": self._layout(), "batches_consumed": self.batches_consumed,
                "workers": copy.deepcopy(self.worker_states),
                "skip_counts": dict(self.skip_counts)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position. The rank, world size, workers, seed and sources must be the same."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise DatasetError("data state is not from this evaclip version; start the data stream afresh")
        saved, now = state["layout"], self._layout()
        diff = [f"{k}: saved {saved.get(k)!r}, now {v!r}" for k, v in now.items() if saved.get(k) != v]
        if diff:
            raise DatasetError("cannot resume the data position exactly, the data layout changed ("
                               + "; ".join(diff) + "); keep the same world size, workers and sources")
        self.close()
        self.worker_states = copy.deepcopy(list(state["workers"]))
        self.batches_consumed = int(state["batches_consumed"])
        self.skip_counts = Counter(state.get("skip_counts", {}))

    def close(self) -> None:
        """Stop the worker processes (they restart from the current position on the next iteration)."""
        it, self._it = self._it, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        elif it is not None and hasattr(it, "close"):
            it.close()


def make_loader(cfg: DataConfig, rank: int = 0, world_size: int = 1, *, transform: Callable,
                tokenizer: Callable | None = None, to_rgb: Callable | None = None) -> TrainLoader:
    """The training loader of one rank.

    `transform(PIL RGB image) -> FloatTensor[3,S,S]` is the train transform; `tokenizer(list[str]) ->
    LongTensor[B,L]` defaults to `evaclip.tokenizer.tokenize` at `cfg.context_length`; `to_rgb` defaults to
    `evaclip.transforms.to_rgb`. Sources are listed (and checked) here, in the calling process.
    """
    cfg.validate()
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ConfigError(f"rank {rank!r} / world size {world_size!r} are impossible; need 0 <= rank < world_size")
    if not callable(transform):
        raise ConfigError("make_loader needs a train transform: a callable from a PIL image to a [3,S,S] tensor")
    sources = [resolve_source(s, i, cfg) for i, s in enumerate(cfg.sources)]
    if to_rgb is None:
        from evaclip.transforms import to_rgb
    dataset = MixedBatchDataset(sources, cfg, rank, world_size, transform,
                                tokenizer or DefaultTokenizer(cfg.context_length), to_rgb)
    return TrainLoader(dataset, cfg)


def global_skip_counts(counts: Counter | dict, group=None) -> dict[str, int]:
    """Sum per-rank skip counts over all ranks (a collective: every rank must call it); identity without dist."""
    from evaclip.data.decode import INFO_COUNTERS, SKIP_REASONS

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return dict(counts)
    names = list(SKIP_REASONS + INFO_COUNTERS)
    backend = torch.distributed.get_backend(group)
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    totals = torch.tensor([counts.get(n, 0) for n in names], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(totals, group=group)
    return {n: int(v) for n, v in zip(names, totals.tolist()) if v}
