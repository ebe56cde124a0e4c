"""The on-disk layout of a search index, and building the FAISS index over it.

::

    INDEX_DIR/
      index.json                        what `serve` needs: model (name, config, checkpoint, probe), source, count
      img_emb/img_emb_<part>.npy        float32 [rows, dim], L2-normalised (clip-retrieval's embedding layout)
      metadata/metadata_<part>.parquet  one row per embedding: image_path, caption, width, height, ...
      image.index                       FAISS index over all parts, rows in sorted part-name order

Row i of the concatenation of the parts (sorted by name) is vector id i of ``image.index``; clip-retrieval's back
end reads ``image.index`` and ``metadata/*.parquet`` the same way. A part is committed when its parquet file
exists (it is written after the ``.npy``); a ``.npy`` without its parquet file is what an interrupted run left
and is removed. Parts are never appended to, only written whole (atomically) or rewritten without rows whose
file was removed or changed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaclip.errors import EvaclipError
from evaclip.outputs import atomic_path, atomic_write_text

MANIFEST = "index.json"
FAISS_FILE = "image.index"
EMB_DIR = "img_emb"
META_DIR = "metadata"
FORMAT = "evaclip-search-index"
VERSION = 1

# Metadata columns. image_path is relative to the source root (for webdataset: "<shard>/<key>").
COLUMNS = ("image_path", "caption", "width", "height", "source_id", "stamp", "shard", "key")

# Exact search scans every vector per query; at about this many bytes of vectors it costs ~5-10 ms a query on
# two CPU cores (measured: 100k x 64 float32 = 25 MiB in 5.6 ms, 1M x 64 in 92 ms), so above it an IVF index
# that scans a sixteenth of the lists is used.
EXACT_MAX_BYTES = 64 << 20


class IndexFormatError(EvaclipError):
    """An index folder is missing, incomplete or damaged."""


@dataclass
class Part:
    name: str
    npy: Path
    parquet: Path


def emb_path(index_dir: Path, name: str) -> Path:
    return Path(index_dir) / EMB_DIR / f"img_emb_{name}.npy"


def meta_path(index_dir: Path, name: str) -> Path:
    return Path(index_dir) / META_DIR / f"metadata_{name}.parquet"


def list_parts(index_dir: Path) -> list[Part]:
    """Committed parts (both files present), sorted by name: the order of the vector ids."""
    meta_dir = Path(index_dir) / META_DIR
    if not meta_dir.is_dir():
        return []
    parts = []
    for p in sorted(meta_dir.glob("metadata_*.parquet")):
        name = p.stem[len("metadata_"):]
        npy = emb_path(index_dir, name)
        if npy.is_file():
            parts.append(Part(name, npy, p))
    return parts


def remove_uncommitted(index_dir: Path) -> int:
    """Delete the embedding files and temporaries an interrupted run left without metadata; returns how many."""
    removed = 0
    committed = {p.name for p in list_parts(index_dir)}
    for folder in (Path(index_dir) / EMB_DIR, Path(index_dir) / META_DIR):
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            stale_tmp = f.name.startswith(".") and f.name.endswith(".tmp")
            orphan = f.suffix == ".npy" and f.stem[len("img_emb_"):] not in committed
            orphan_meta = f.suffix == ".parquet" and f.stem[len("metadata_"):] not in committed
            if stale_tmp or orphan or orphan_meta:
                f.unlink(missing_ok=True)
                removed += 1
    return removed


def write_part(index_dir: Path, name: str, embeddings: np.ndarray, rows: dict[str, list],
               extra: dict | None = None) -> None:
    """Write one part: the embeddings first, then the metadata, whose presence commits the part."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    n = embeddings.shape[0]
    if any(len(rows[c]) != n for c in COLUMNS):
        raise ValueError(f"part {name}: metadata columns and embeddings differ in length")
    table = pa.table({
        "image_path": pa.array(rows["image_path"], pa.string()),
        "caption": pa.array(rows["caption"], pa.string()),
        "width": pa.array(rows["width"], pa.int32()),
        "height": pa.array(rows["height"], pa.int32()),
        "source_id": pa.array(rows["source_id"], pa.string()),
        "stamp": pa.array(rows["stamp"], pa.string()),
        "shard": pa.array(rows["shard"], pa.string()),
        "key": pa.array(rows["key"], pa.string()),
    })
    if extra:
        table = table.replace_schema_metadata({b"evaclip": json.dumps(extra).encode()})
    with atomic_path(emb_path(index_dir, name), what="index part") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, embeddings)
    with atomic_path(meta_path(index_dir, name), what="index part") as tmp:
        pq.write_table(table, tmp)


def read_part(part: Part, *, embeddings: bool = True):
    """(embeddings or None, pyarrow table, extra dict); raises IndexFormatError for a damaged part."""
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(part.parquet)
        emb = np.load(part.npy, mmap_mode="r") if embeddings else None
    except Exception as e:  # noqa: BLE001 - pyarrow and numpy raise many types for damaged files
        raise IndexFormatError(f"index part {part.name} is damaged ({type(e).__name__}: {e}); "
                               "delete its two files and re-run evaclip index") from None
    raw = (table.schema.metadata or {}).get(b"evaclip")
    extra = json.loads(raw) if raw else {}
    if emb is not None and (emb.ndim != 2 or emb.shape[0] != table.num_rows):
        raise IndexFormatError(f"index part {part.name}: {table.num_rows} metadata rows but embeddings of shape "
                               f"{tuple(emb.shape)}; delete its two files and re-run evaclip index")
    return emb, table, extra


def read_manifest(index_dir: Path) -> dict:
    path = Path(index_dir) / MANIFEST
    if not Path(index_dir).is_dir():
        raise IndexFormatError(f"index folder {index_dir} does not exist; build one with `evaclip index`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexFormatError(f"{index_dir} is not a search index (no {MANIFEST}); build one with "
                               "`evaclip index SOURCE --out DIR`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexFormatError(f"{path} is unreadable ({e}); re-run evaclip index") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{path} is not an evaclip search index manifest")
    if manifest.get("version") != VERSION:
        raise IndexFormatError(f"{path} has format version {manifest.get('version')}; this evaclip reads "
                               f"version {VERSION}: rebuild the index")
    return manifest


def write_manifest(index_dir: Path, manifest: dict) -> None:
    manifest = {"format": FORMAT, "version": VERSION, **manifest}
    atomic_write_text(Path(index_dir) / MANIFEST, json.dumps(manifest, indent=1) + "\n", what="index manifest")


def choose_index(n: int, dim: int, kind: str = "auto") -> dict:
    """The FAISS index description for n vectors: exact inner product, or IVF above EXACT_MAX_BYTES."""
    if kind not in ("auto", "flat", "ivf"):
        raise EvaclipError(f"--index-type {kind!r}: choose auto, flat or ivf")
    if kind == "flat" or (kind == "auto" and n * dim * 4 <= EXACT_MAX_BYTES):
        return {"type": "flat"}
    # ~4 sqrt(n) lists (FAISS's guideline is 4-16 sqrt(n)), with at least 39 training points per list.
    nlist = int(max(1, min(4 * np.sqrt(max(n, 1)), n // 39)))
    return {"type": "ivf", "nlist": nlist, "nprobe": max(1, nlist // 16)}


def build_faiss(embeddings: np.ndarray, spec: dict, seed: int = 0):
    """A FAISS index over the rows of `embeddings` (inner product = cosine on normalised vectors)."""
    import faiss
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    dim = x.shape[1]
    if spec["type"] == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, spec["nlist"], faiss.METRIC_INNER_PRODUCT)
        # k-means on a sample of 40 points per list (FAISS warns below 39) with 10 iterations: at 1M x 256 this
        # is ~1 minute on 2 CPU cores instead of ~10 with FAISS's defaults, for the coarse lists IVF needs.
        index.cp.niter = 10
        sample = min(x.shape[0], 40 * spec["nlist"])
        rows = np.random.default_rng(seed).choice(x.shape[0], sample, replace=False) if sample < x.shape[0] else None
        index.train(x[np.sort(rows)] if rows is not None else x)
        index.nprobe = spec["nprobe"]
    if x.shape[0]:
        index.add(x)
    return index


def write_faiss(index_dir: Path, index) -> None:
    import faiss
    with atomic_path(Path(index_dir) / FAISS_FILE, what="faiss index") as tmp:
        faiss.write_index(index, str(tmp))


def read_faiss(index_dir: Path):
    import faiss
    path = Path(index_dir) / FAISS_FILE
    if not path.is_file():
        raise IndexFormatError(f"{path} is missing; re-run evaclip index to rebuild it")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as e:
        raise IndexFormatError(f"{path} is damaged ({str(e).splitlines()[0] if str(e) else 'unreadable'}); "
                               "re-run evaclip index to rebuild it") from None

