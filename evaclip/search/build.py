"""`evaclip index`: embed a collection into an index folder, incrementally and resumably, on one or many ranks.

A run lists the source, skips every item whose (id, stamp) is already in a committed part, embeds the rest in
batches and commits a new part every ``part_size`` images, so an interrupted run loses at most one part of work
and the next run goes on from there. Under ``torchrun`` each rank embeds every world_size-th item (or shard) and
writes its own parts; rank 0 then drops rows whose file was removed or changed, and builds the FAISS index over
all parts.
"""
from __future__ import annotations

import os
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from evaclip.data.decode import DEFAULT_MAX_IMAGE_PIXELS, SkipSample, decode_image
from evaclip.errors import EvaclipError
from evaclip.outputs import check_output
from evaclip.search import store
from evaclip.search.encoder import Encoder, check_same_model
from evaclip.search.sources import Item, Source, iter_shard, open_source, shard_rel, stamp_of
from evaclip.transforms import ImageInputError

MAX_FILE_BYTES = 256 << 20  # one image file; larger ones are skipped as oversized (as training skips members)


@dataclass
class BuildReport:
    out: Path
    embedded: int = 0          # images embedded by this run (all ranks)
    total: int = 0             # vectors in the index after the run
    removed: int = 0           # rows dropped because their file was removed or changed
    skipped: dict = field(default_factory=dict)   # reason -> count
    seconds: float = 0.0       # embedding time of this run
    index: dict = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


def _dist():
    from evaclip.train import distributed
    info = distributed.init_distributed()
    return info.rank, info.world_size, info.device, distributed


def _gather(obj, world: int):
    if world == 1:
        return [obj]
    import torch.distributed as dist
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _check_out(out: Path) -> dict | None:
    """The manifest of an existing index at `out`, None for a new one; refuse any other existing path."""
    if os.path.lexists(out) and not out.is_dir():
        raise EvaclipError(f"--out {out} exists and is not a folder; choose a folder for the index")
    check_output(out / store.MANIFEST, overwrite=None, what="--out")
    if (out / store.MANIFEST).exists():
        return store.read_manifest(out)
    if out.is_dir() and any(out.iterdir()) and not (out / store.META_DIR).is_dir():
        raise EvaclipError(f"--out {out} is a non-empty folder that is not an index; choose an empty or new folder")
    return None


def _done_sets(out: Path, rank: int) -> tuple[set, set, int]:
    """(source_id, stamp) pairs and completed shards already in committed parts, and the last run number."""
    done, shards_done, last_run = set(), set(), 0
    for part in store.list_parts(out):
        try:
            _, table, extra = store.read_part(part, embeddings=False)
        except store.IndexFormatError as e:
            if rank == 0:
                print(f"evaclip index: warning: {e}; its images will be embedded again", file=sys.stderr)
            continue
        done.update(zip(table.column("source_id").to_pylist(), table.column("stamp").to_pylist()))
        shards_done.update(extra.get("complete_shards", []))
        run = part.name.split("_", 1)[0]
        last_run = max(last_run, int(run) if run.isdigit() else 0)
    return done, shards_done, last_run


class _PartWriter:
    """Buffers embedded rows and commits them as parts named RUN_RANK_SEQ (sorted = id order)."""

    def __init__(self, out: Path, run: int, rank: int, part_size: int, on_part: Callable | None):
        self.out, self.run, self.rank, self.part_size, self.on_part = out, run, rank, part_size, on_part
        self.seq = 0
        self.embs: list[np.ndarray] = []
        self.rows = {c: [] for c in store.COLUMNS}
        self.complete_shards: list[str] = []
        self.written = 0

    def add(self, items: list[Item], sizes: list[tuple[int, int]], captions: list, emb: np.ndarray) -> None:
        self.embs.append(emb)
        for item, (w, h), caption in zip(items, sizes, captions):
            for col, value in (("image_path", item.image_path), ("caption", caption), ("width", w), ("height", h),
                               ("source_id", item.source_id), ("stamp", item.stamp), ("shard", item.shard),
                               ("key", item.key)):
                self.rows[col].append(value)
        if len(self.rows["source_id"]) >= self.part_size:
            self.flush()

    def flush(self, force: bool = False) -> None:
        n = len(self.rows["source_id"])
        if n == 0 and not (force and self.complete_shards):
            return
        name = f"{self.run:05d}_{self.rank:03d}_{self.seq:05d}"
        emb = np.concatenate(self.embs) if self.embs else np.zeros((0, 0), np.float32)
        if n == 0:
            emb = np.zeros((0, 1), np.float32)  # completion marker only
        store.write_part(self.out, name, emb, self.rows, {"complete_shards": self.complete_shards})
        self.seq += 1
        self.written += n
        self.embs, self.rows, self.complete_shards = [], {c: [] for c in store.COLUMNS}, []
        if self.on_part is not None:
            self.on_part(name, n)


def _load_file(item: Item, preprocess, max_pixels: int):
    """(pixels, (w, h), caption) for a folder/CSV item, or the reason to skip it."""
    try:
        with open(item.file, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError:
        return "missing_image"
    if len(data) > MAX_FILE_BYTES:
        return "oversized_member"
    caption = item.caption
    if item.caption_file is not None:
        try:
            with open(item.caption_file, "rb") as f:
                caption = f.read(100_000).decode("utf-8", errors="replace").strip() or None
        except OSError:
            caption = None
    return _decode(data, preprocess, max_pixels, caption)


def _decode(data: bytes, preprocess, max_pixels: int, caption):
    try:
        image = decode_image(data, max_pixels)
        return preprocess(image), image.size, caption
    except SkipSample as e:
        return e.reason
    except (ImageInputError, OSError, ValueError):
        return "corrupt_image"


def build_index(source: str, out: str | Path, *, model: str | None = None, pretrained: str | None = None,
                root: str | None = None, batch_size: int = 64, device: str = "auto", precision: str = "fp32",
                part_size: int = 4096, index_type: str = "auto", workers: int = 4, progress: bool = True,
                max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, on_part: Callable[[str, int], None] | None = None
                ) -> BuildReport:
    """Build or update the index at `out` from `source`; see the module docstring. Returns what was done.

    ``model`` may be omitted when `out` already holds an index: the recorded model is used. ``on_part(name, n)``
    is called after each committed part (progress hooks; an exception there stops the run like a crash would).
    """
    if batch_size < 1 or part_size < 1 or workers < 1:
        raise EvaclipError("--batch-size, --part-size and --workers must be >= 1")
    out = Path(out)
    rank, world, rank_device, distributed = _dist()
    device = str(rank_device) if device == "auto" else device
    manifest = _check_out(out)
    src = open_source(source, root)
    where = f"index {out}"
    if manifest is not None:
        recorded_src = manifest.get("source", {})
        if recorded_src.get("spec") != src.spec:
            raise EvaclipError(f"{where} was built from {recorded_src.get('spec')}, not {src.spec}; "
                               "index that source again or choose another --out")
    if model is None and manifest is None:
        raise EvaclipError("--model is required for a new index (an existing index remembers its model)")
    if model is None:
        rec = manifest["model"]
        encoder = Encoder(rec["name"], pretrained or rec.get("pretrained"), device=str(device),
                          precision=rec.get("precision", precision), config=rec["config"])
    else:
        encoder = Encoder(model, pretrained, device=str(device), precision=precision)
    if manifest is not None:
        check_same_model(encoder, manifest["model"], where)
    record = encoder.record()

    done, shards_done, last_run = _done_sets(out, rank)
    distributed.barrier()
    if rank == 0:
        store.remove_uncommitted(out)
        previous = manifest or {}
        store.write_manifest(out, {"complete": False, "model": record, "source": src.describe(),
                                   "count": previous.get("count", 0), "index": previous.get("index", {}),
                                   "parts": previous.get("parts", [])})
    distributed.barrier()

    writer = _PartWriter(out, last_run + 1, rank, part_size, on_part)
    skipped: Counter = Counter()
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        if src.kind == "webdataset":
            todo_shards = [s for s in src.shards if f"{shard_rel(src, s)}@{stamp_of(s)}" not in shards_done]
            _embed_shards(src, todo_shards[rank::world], done, encoder, writer, pool, skipped, batch_size,
                          max_pixels, progress and rank == 0)
        else:
            todo = [it for it in src.items if (it.source_id, it.stamp) not in done]
            _embed_files(todo[rank::world], encoder, writer, pool, skipped, batch_size, max_pixels,
                         progress and rank == 0)
    writer.flush(force=True)
    seconds = time.perf_counter() - start

    gathered = _gather((writer.written, dict(skipped), seconds), world)
    distributed.barrier()
    report = BuildReport(out=out, embedded=sum(g[0] for g in gathered), seconds=max(g[2] for g in gathered))
    total_skips = Counter(src.skipped)
    for g in gathered:
        total_skips.update(g[1])
    report.skipped = dict(total_skips)
    if rank == 0:
        keep = _current_filter(src)
        count, removed, spec = finalize(out, keep, index_type=index_type)
        store.write_manifest(out, {"complete": True, "model": record, "source": src.describe(), "count": count,
                                   "index": spec, "parts": [p.name for p in store.list_parts(out)],
                                   "skipped": report.skipped})
        report.total, report.removed, report.index = count, removed, spec
    distributed.barrier()
    return report


def _embed_files(todo: list[Item], encoder: Encoder, writer: _PartWriter, pool, skipped: Counter,
                 batch_size: int, max_pixels: int, progress: bool) -> None:
    from tqdm import tqdm
    with tqdm(total=len(todo), desc="indexing", unit="img", file=sys.stderr, disable=not progress) as bar:
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            loaded = list(pool.map(lambda it: _load_file(it, encoder.preprocess, max_pixels), chunk))
            _commit(chunk, loaded, encoder, writer, skipped)
            bar.update(len(chunk))


def _embed_shards(src: Source, shards: list[str], done: set, encoder: Encoder, writer: _PartWriter, pool,
                  skipped: Counter, batch_size: int, max_pixels: int, progress: bool) -> None:
    from tqdm import tqdm
    with tqdm(desc="indexing", unit="img", file=sys.stderr, disable=not progress) as bar:
        for shard in shards:
            stamp = stamp_of(shard) or "?"
            batch: list[tuple[Item, bytes]] = []
            for item, data in iter_shard(src, shard, stamp, skipped, MAX_FILE_BYTES):
                if (item.source_id, item.stamp) in done:  # embedded before an interruption
                    continue
                batch.append((item, data))
                if len(batch) == batch_size:
                    _commit_bytes(batch, encoder, writer, pool, skipped, max_pixels)
                    bar.update(len(batch))
                    batch = []
            if batch:
                _commit_bytes(batch, encoder, writer, pool, skipped, max_pixels)
                bar.update(len(batch))
            writer.complete_shards.append(f"{shard_rel(src, shard)}@{stamp}")


def _commit_bytes(batch, encoder, writer, pool, skipped, max_pixels) -> None:
    items = [it for it, _ in batch]
    loaded = list(pool.map(lambda b: _decode(b[1], encoder.preprocess, max_pixels, b[0].caption), batch))
    _commit(items, loaded, encoder, writer, skipped)


def _commit(items: list[Item], loaded: list, encoder: Encoder, writer: _PartWriter, skipped: Counter) -> None:
    good = [(it, r) for it, r in zip(items, loaded) if not isinstance(r, str)]
    for r in loaded:
        if isinstance(r, str):
            skipped[r] += 1
    if not good:
        return
    emb = encoder.encode_pixels(torch.stack([r[0] for _, r in good]))
    writer.add([it for it, _ in good], [r[1] for _, r in good], [r[2] for _, r in good], emb)


def _current_filter(src: Source) -> Callable:
    """A function table -> boolean mask of the rows whose item still exists unchanged in the source."""
    if src.kind == "webdataset":
        shards = {shard_rel(src, s): stamp_of(s) for s in src.shards}

        def keep(table):
            return np.array([shards.get(s) == st for s, st in zip(table.column("shard").to_pylist(),
                                                                    table.column("stamp").to_pylist())], bool)
    else:
        current = {it.source_id: it.stamp for it in src.items}

        def keep(table):
            return np.array([current.get(i) == st for i, st in zip(table.column("source_id").to_pylist(),
                                                                     table.column("stamp").to_pylist())], bool)
    return keep


def finalize(out: Path, keep: Callable | None = None, *, index_type: str = "auto") -> tuple[int, int, dict]:
    """Drop stale and duplicate rows from the parts, build and write the FAISS index: (count, removed, spec)."""
    import pyarrow as pa
    removed, seen, embs = 0, set(), []
    for part in store.list_parts(out):
        try:
            emb, table, extra = store.read_part(part)
        except store.IndexFormatError:
            part.npy.unlink(missing_ok=True)
            part.parquet.unlink(missing_ok=True)
            continue
        mask = keep(table) if keep is not None else np.ones(table.num_rows, bool)
        ids = table.column("source_id").to_pylist()
        for i, sid in enumerate(ids):
            if mask[i] and sid in seen:
                mask[i] = False
            elif mask[i]:
                seen.add(sid)
        if not mask.all():
            removed += int((~mask).sum())
            if not mask.any() and not extra.get("complete_shards"):
                part.parquet.unlink(missing_ok=True)  # metadata first: an .npy alone is uncommitted
                part.npy.unlink(missing_ok=True)
                continue
            kept_emb = np.asarray(emb)[mask]
            if not mask.any():
                kept_emb = np.zeros((0, emb.shape[1]), np.float32)
            rows = table.filter(pa.array(mask)).to_pydict()
            store.write_part(out, part.name, kept_emb, rows, extra)
            emb = kept_emb
        if emb.shape[0]:
            embs.append(np.asarray(emb, np.float32))
    manifest = store.read_manifest(out)
    dim = int(manifest["model"]["embed_dim"])
    matrix = np.concatenate(embs) if embs else np.zeros((0, dim), np.float32)
    if matrix.shape[1] != dim:
        raise store.IndexFormatError(f"index {out}: parts hold {matrix.shape[1]}-d embeddings but the model "
                                     f"embeds to {dim}; build the index again in a new folder")
    spec = store.choose_index(matrix.shape[0], dim, index_type)
    store.write_faiss(out, store.build_faiss(matrix, spec))
    return int(matrix.shape[0]), removed, spec


