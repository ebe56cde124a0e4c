"""The training data loader: mixed sources -> decoded, transformed, tokenized full batches, exactly resumable.

Order. The samples of every step come from canonical streams in a global order that does not depend on the
number of ranks or workers (:mod:`evaclip.data.order`). Each stream mixes its sources sample by sample (source
chosen with probability proportional to its weight) and is a pure function of (seed, stream, counters): see
:mod:`evaclip.data.rng` and :mod:`evaclip.data.streams`. Rank r runs ``num_workers`` DataLoader workers (or
the main process when 0), each serving some of the rank's streams and building its piece of every step; the
loader joins the pieces of a step in position order.

Resume. Each piece carries the state of its worker's streams right after it was built; the loader keeps the
latest consumed state per stream and the number of steps consumed. The ranks' states together are the global
data position (:func:`merge_states`), which restores on any world size and number of workers: every stream is
restarted from its saved counters by whichever worker now serves it. Pieces that had been prefetched but not
yet consumed are simply built again. Nothing is replayed, except re-reading the shards being read up to the
consumed position (no decoding).

Skips. Bad samples are skipped and counted per reason (:data:`~evaclip.data.decode.SKIP_REASONS`); the stream
gives its next good sample in their place. Each batch reports the skips met while building it, and
:attr:`TrainLoader.skip_counts` sums the consumed ones (this rank only; all-reduce across ranks to log global
totals).
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
from evaclip.data.decode import SkipSample, decode_caption, decode_image, find_image_bytes, find_video_bytes
from evaclip.data.order import GlobalOrder
from evaclip.data.sources import ItemStream, ResolvedSource, resolve_source
from evaclip.data.video import decode_video
from evaclip.data.streams import ShardStream
from evaclip.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

STATE_VERSION = 2
# (images, tokens, info). A batch with video clips holds their frames in place of an image, one after another:
# images is then [sum(info["frames"]), 3, S, S] and info["frames"] the frame count of each sample (1 for images).
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


class CanonicalStream:
    """One canonical stream (:mod:`evaclip.data.order`): its sources mixed by weight, decoded and augmented.

    ``next()`` gives the stream's next good sample; a broken one is counted and the following draw takes its
    place, so the samples of every other stream stay where they were. Its position is a few integers per source.
    """

    def __init__(self, stream: int, owner: "MixedBatchDataset", skips: Counter):
        cfg, self.owner, self.stream, self.skips = owner.cfg, owner, stream, skips
        count = lambda reason: skips.update([reason])  # noqa: E731 - a shard's own read errors
        self.sources = []
        for i, src in enumerate(owner.sources):
            if src.kind == "webdataset":
                self.sources.append(ShardStream(
                    src.urls, seed=cfg.seed, source=i, stream=stream, num_streams=cfg.canonical_streams,
                    resampled=cfg.resampled, interleave=cfg.interleave, shuffle_window=cfg.shuffle_window,
                    max_member_bytes=cfg.max_member_bytes, count=count))
            else:
                self.sources.append(ItemStream(src, seed=cfg.seed, source_index=i, stream=stream,
                                               num_streams=cfg.canonical_streams, resampled=cfg.resampled))
        self.choose = R.BlockChoices((cfg.seed, R.MIX, stream), len(owner.sources),
                                     [s.weight for s in owner.sources])
        self.draws = 0     # raw samples drawn (good or not)
        self.produced = 0  # good samples given out

    def next(self) -> tuple[torch.Tensor, str, dict, int]:
        """(image tensor, caption, raw sample, source index) of the next good sample."""
        skip_run = 0
        while True:
            n, self.draws = self.draws, self.draws + 1
            s = self.choose(n)
            raw = self.sources[s].next_sample()
            try:
                # The augmentation is keyed by the draw, so it is the same wherever and whenever it is decoded.
                image, caption = self.owner.decode(raw, self.skips, R.mix_seed(self.owner.cfg.seed, R.AUGMENT,
                                                                               self.stream, n))
            except SkipSample as e:
                self.skips[e.reason] += 1
                skip_run += 1
                if skip_run >= MAX_SKIP_RUN:
                    raise DatasetError(
                        f"{skip_run} samples in a row were skipped (last: {e}, in {raw['__url__']}); "
                        "check the data and the train transform") from None
                continue
            self.produced += 1
            return image, caption, raw, s

    def state_dict(self) -> dict:
        return {"draws": self.draws, "produced": self.produced, "sources": [s.state_dict() for s in self.sources]}

    def load_state_dict(self, state: dict) -> None:
        self.draws, self.produced = int(state["draws"]), int(state["produced"])
        for source, st in zip(self.sources, state["sources"]):
            source.load_state_dict(st)

    def close(self) -> None:
        for source in self.sources:
            source.close()


class MixedBatchDataset(IterableDataset):
    """An endless stream of batch pieces ``(images[n,3,S,S], tokens[n,L], info)`` for one rank.

    Logical worker w yields its piece of every step in turn (:meth:`GlobalOrder.piece`); the DataLoader hands the
    workers' outputs out round-robin, so the loader takes one piece from each worker per step.
    """

    def __init__(self, sources: list[ResolvedSource], cfg: DataConfig, rank: int, world_size: int,
                 transform: Callable, tokenizer: Callable, to_rgb: Callable):
        super().__init__()
        self.sources, self.cfg, self.rank, self.world_size = sources, cfg, rank, world_size
        self.transform, self.tokenizer, self.to_rgb = transform, tokenizer, to_rgb
        workers = GlobalOrder.usable_workers(cfg.canonical_streams, world_size, cfg.num_workers)
        self.order = GlobalOrder(cfg.canonical_streams, cfg.global_batch(world_size), world_size, rank, workers)
        self.start_step = 0
        self.start_states: dict[int, dict] = {}

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        return self.iter_worker(info.id if info is not None else 0)

    def iter_worker(self, worker: int) -> Iterator[Batch]:
        """Worker ``worker``'s pieces from step ``start_step`` on, its streams restored from ``start_states``."""
        skips: Counter = Counter()
        streams = {c: CanonicalStream(c, self, skips) for c in self.order.worker_streams(worker)}
        for c, stream in streams.items():
            if c in self.start_states:
                stream.load_state_dict(self.start_states[c])
        step = self.start_step
        try:
            while True:
                positions = self.order.piece(step, worker)
                images, captions, keys, urls, which = [], [], [], [], []
                with _RngGuard():
                    for p in positions:
                        stream = streams[self.order.stream_of(p)]
                        image, caption, raw, s = stream.next()
                        images.append(image)
                        captions.append(caption)
                        keys.append(raw["__key__"])
                        urls.append(raw["__url__"])
                        which.append(s)
                tokens = self.tokenizer(captions) if captions else None
                info = {"positions": list(positions), "keys": keys, "urls": urls, "sources": which,
                        "skips": dict(skips), "worker": worker, "step": step,
                        "state": {c: st.state_dict() for c, st in streams.items()}}
                skips.clear()
                step += 1
                yield _stack(images, info), tokens, info
        finally:
            for stream in streams.values():
                stream.close()

    def decode(self, raw: dict, skips: Counter, seed: int) -> tuple[torch.Tensor, str]:
        """(image [3,S,S] or clip frames [F,3,S,S], caption)."""
        if raw.get("__skip__"):
            raise SkipSample(raw["__skip__"])
        # Caption first: it is cheap, and a sample without one is skipped before paying for the image.
        caption, truncated = decode_caption(raw, self.cfg.max_caption_chars)
        if truncated:
            skips["caption_truncated"] += 1
        video = find_video_bytes(raw)
        if video is not None:
            frames = decode_video(video, self.cfg.video_frames, self.cfg.max_image_pixels, self.cfg.max_video_seconds)
            # Every frame is augmented from the same seed: one crop (and flip) for the whole clip.
            return torch.stack([self._augment(f, raw, seed) for f in frames]), caption
        return self._augment(decode_image(find_image_bytes(raw), self.cfg.max_image_pixels), raw, seed), caption

    def _augment(self, image, raw: dict, seed: int) -> torch.Tensor:
        # Seed the augmentation from the sample's draw, so a resumed run augments it identically.
        torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed also queues CUDA seeding, slowly
        random.seed(seed)
        np.random.seed(seed % (1 << 32))
        own = getattr(self.transform, "generator", None)
        if isinstance(own, torch.Generator):  # a transform built with its own seed/generator (ImageTransform)
            own.manual_seed(seed)
        try:
            return self.transform(self.to_rgb(image))
        except Exception as e:  # noqa: BLE001 - one odd image must not kill a week-long run
            log.warning("transform failed on %s from %s: %s: %s", raw["__key__"], raw["__url__"], type(e).__name__, e)
            raise SkipSample("transform_error", str(e)) from None


def _identity(batch: Any) -> Any:
    return batch


def _stack(samples: list[torch.Tensor], info: dict) -> torch.Tensor | None:
    """Images [3,S,S] and clips [F,3,S,S] -> one tensor; with any clip, frame counts go to info["frames"]."""
    if not samples:
        return None
    if all(t.dim() == 3 for t in samples):
        return torch.stack(samples)
    info["frames"] = [t.shape[0] if t.dim() == 4 else 1 for t in samples]
    info["videos"] = sum(t.dim() == 4 for t in samples)
    return torch.cat([t if t.dim() == 4 else t[None] for t in samples])


def _merge(pieces: list[Batch]) -> Batch:
    """The workers' pieces of one step -> the rank's batch, in global-position order."""
    full = [p for p in pieces if p[0] is not None]
    positions = [q for _, _, info in full for q in info["positions"]]
    order = sorted(range(len(positions)), key=positions.__getitem__)
    index = torch.tensor(order)
    tokens = torch.cat([p[1] for p in full])[index]
    info: dict[str, Any] = {"positions": [positions[i] for i in order], "step": pieces[0][2]["step"]}
    if any("frames" in piece for _, _, piece in full):
        per_sample = [chunk for images, _, piece in full
                      for chunk in images.split(piece.get("frames") or [1] * images.shape[0])]
        images = torch.cat([per_sample[i] for i in order])
        info["frames"] = [per_sample[i].shape[0] for i in order]
        info["videos"] = sum(piece.get("videos", 0) for _, _, piece in full)
    else:
        images = torch.cat([p[0] for p in full])[index]
    for key in ("keys", "urls", "sources"):
        values = [v for _, _, piece in full for v in piece[key]]
        info[key] = [values[i] for i in order]
    skips: Counter = Counter()
    for _, _, piece in pieces:
        skips.update(piece["skips"])
    info["skips"] = dict(skips)
    return images, tokens, info


class TrainLoader:
    """Iterable of `(images, tokens, info)` with `state_dict()` / `load_state_dict()` for exact resume.

    Each `iter(loader)` continues where the previous one stopped; with `samples_per_epoch` set it yields one
    virtual epoch (`len(loader)` batches), otherwise it never ends. `info` has `positions` (global positions,
    :mod:`evaclip.data.order`), `keys`, `urls`, `sources` (source index per sample), `skips` (reason -> count
    met while building this batch) and `step`.
    """

    def __init__(self, dataset: MixedBatchDataset, cfg: DataConfig):
        self.dataset, self.cfg = dataset, cfg
        self.workers = dataset.order.workers
        self.stream_states: dict[int, dict] = {}
        self.batches_consumed = 0
        self.skip_counts: Counter = Counter()
        self._it: Iterator[Batch] | None = None
        self.batches_per_epoch = None
        if cfg.samples_per_epoch is not None:
            self.batches_per_epoch = max(1, cfg.samples_per_epoch // dataset.order.global_batch)

    def __len__(self) -> int:
        if self.batches_per_epoch is None:
            raise TypeError("the loader is endless; set data.samples_per_epoch for virtual epochs with a length")
        return self.batches_per_epoch

    def _start(self) -> Iterator[Batch]:
        ds = self.dataset
        ds.start_states = dict(self.stream_states)
        ds.start_step = self.batches_consumed
        if self.cfg.num_workers == 0:
            return ds.iter_worker(0)
        loader = DataLoader(
            ds, batch_size=None, num_workers=self.workers, collate_fn=_identity, timeout=self.cfg.timeout_s,
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
            pieces = [next(self._it) for _ in range(self.workers)]  # the DataLoader's strict round-robin
            for _, _, info in pieces:
                self.stream_states.update(info.pop("state"))
            images, tokens, info = _merge(pieces)
            self.batches_consumed += 1
            self.skip_counts.update(info["skips"])
            count += 1
            yield images, tokens, info

    def _layout(self) -> dict:
        """What fixes the global order (the world size and the workers do not)."""
        ds, cfg = self.dataset, self.cfg
        return {"canonical_streams": cfg.canonical_streams, "global_batch": ds.order.global_batch, "seed": cfg.seed,
                "resampled": cfg.resampled, "interleave": cfg.interleave, "shuffle_window": cfg.shuffle_window,
                "sources": [[s.name, s.kind, s.size, s.weight] for s in ds.sources]}

    def state_dict(self) -> dict:
        """This rank's part of the data position after the batches consumed so far (JSON-serialisable):
        its streams' counters. :func:`merge_states` joins the ranks' parts into the global position."""
        return {"version": STATE_VERSION, "layout": self._layout(), "batches_consumed": self.batches_consumed,
                "streams": {str(c): copy.deepcopy(st) for c, st in self.stream_states.items()},
                "skip_counts": dict(self.skip_counts)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved global position (:func:`merge_states`; one rank's own part works on the same world
        size). Any world size and number of workers; the order's layout (streams, global batch, seed, sources)
        must be the same."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise DatasetError("data state is not from this evaclip version; start the data stream afresh")
        saved, now = state["layout"], self._layout()
        diff = [f"{k}: saved {saved.get(k)!r}, now {v!r}" for k, v in now.items() if saved.get(k) != v]
        if diff:
            raise DatasetError("cannot resume the data position exactly, the data layout changed ("
                               + "; ".join(diff) + "); keep the same canonical streams, global batch and sources")
        self.close()
        order = self.dataset.order
        mine = {c for w in range(self.workers) for c in order.worker_streams(w)}  # this rank's streams
        streams = {int(c): st for c, st in state["streams"].items()}
        self.stream_states = {c: copy.deepcopy(st) for c, st in streams.items() if c in mine}
        self.batches_consumed = int(state["batches_consumed"])
        # Skip totals belong to the run: rank 0 carries them on (the logs sum over ranks).
        self.skip_counts = Counter(state.get("skip_counts", {}) if self.dataset.rank == 0 else {})

    def close(self) -> None:
        """Stop the worker processes (they restart from the current position on the next iteration)."""
        it, self._it = self._it, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        elif it is not None and hasattr(it, "close"):
            it.close()


def merge_states(states: list[dict | None]) -> dict | None:
    """The ranks' :meth:`TrainLoader.state_dict` parts -> the global data position (every stream, skip totals)."""
    states = [s for s in states if s is not None]
    if not states:
        return None
    merged = copy.deepcopy(states[0])
    skips: Counter = Counter()
    for part in states:
        merged["streams"].update(part["streams"])
        skips.update(part["skip_counts"])
    merged["skip_counts"] = dict(skips)
    return merged


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
    cfg.rank_batch(world_size)  # a world size that cannot share the global order is refused here, in one line
    usable = GlobalOrder.usable_workers(cfg.canonical_streams, world_size, cfg.num_workers)
    if cfg.num_workers > usable and rank == 0:
        log.warning("data.num_workers=%d but each rank reads only %d canonical streams: %d workers per rank; raise "
                    "data.canonical_streams to use more", cfg.num_workers, cfg.canonical_streams // world_size, usable)
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
