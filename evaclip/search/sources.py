"""What `evaclip index` reads: a folder of images, a caption CSV, or webdataset shards.

The listing and parsing are the training pipeline's own (:mod:`evaclip.data.sources`, :mod:`evaclip.data.shards`,
:mod:`evaclip.data.tario`, :mod:`evaclip.data.decode`), so a source indexes exactly as it trains.

Each item has an id (stable across runs) and a stamp (size and modification time of its file, or of its shard):
a re-run embeds only the items whose (id, stamp) is not in the index yet, and drops rows whose item is gone or
changed. Every item path is confined to the source root: a file or symlink that resolves outside it is skipped
(``outside_root``), so the server can never be made to read a file outside the collection.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from evaclip.data.decode import SkipSample, decode_caption, find_image_bytes
from evaclip.errors import DatasetError, EvaclipError


@dataclass(frozen=True)
class Item:
    source_id: str          # stable identity: the relative path (+ caption for CSV rows), or "<shard>/<key>"
    stamp: str              # "size:mtime_ns" of the file (or of the shard)
    image_path: str         # relative to the root, shown to users
    file: str | None = None           # absolute path of the image file (folder / CSV)
    caption: str | None = None
    caption_file: str | None = None   # folder sources: the .txt sidecar, read when embedding
    shard: str | None = None          # webdataset: the shard, relative to the root
    key: str | None = None            # webdataset: the sample key in that shard


@dataclass
class Source:
    kind: str                 # "folder" | "csv" | "webdataset"
    spec: str                 # what the user gave, made absolute where it is a path
    root: Path                # image paths are relative to it; the server serves nothing outside it
    items: list[Item] = field(default_factory=list)   # folder / CSV
    shards: list[str] = field(default_factory=list)   # webdataset: absolute shard paths
    skipped: Counter = field(default_factory=Counter)

    def describe(self) -> dict:
        return {"kind": self.kind, "spec": self.spec, "root": str(self.root)}


def stamp_of(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


def inside(path: str, root_real: str) -> bool:
    """True when `path`, with every symlink resolved, lies inside the (already resolved) root."""
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def _kind(spec: str) -> str:
    if os.path.isdir(spec):
        return "folder"
    if spec.lower().endswith((".csv", ".tsv")):
        return "csv"
    if "{" in spec or ";" in spec or spec.lower().endswith((".tar", ".tar.gz", ".tgz")):
        return "webdataset"
    if not os.path.exists(spec):
        raise DatasetError(f"source {spec!r} does not exist; give a folder of images, a CSV (path,caption) or "
                           "webdataset shards (/data/shard-{000..099}.tar)")
    raise DatasetError(f"source {spec!r} is neither a folder, a .csv/.tsv file nor .tar shards")


def open_source(spec: str, root: str | None = None) -> Source:
    """List a source's items (folder/CSV) or shards (webdataset); DatasetError if it is missing or empty."""
    spec = str(spec).strip()
    if not spec:
        raise DatasetError("empty SOURCE; give a folder of images, a CSV or webdataset shards")
    kind = _kind(spec)
    if kind == "folder":
        return _folder(Path(spec).resolve(), root)
    if kind == "csv":
        return _csv(Path(spec).resolve(), root)
    return _webdataset(spec, root)


def _resolve_root(default: Path, root: str | None) -> tuple[Path, str]:
    path = Path(root).resolve() if root else default
    if not path.is_dir():
        raise EvaclipError(f"--root {root}: not a folder")
    return path, os.path.realpath(path)


def _folder(folder: Path, root: str | None) -> Source:
    from evaclip.data.sources import scan_caption_folder
    root_path, root_real = _resolve_root(folder, root)
    src = Source("folder", str(folder), root_path)
    images, captions = scan_caption_folder(str(folder))
    for image, caption_file in zip(images, captions):
        _add_file(src, image, root_real, caption_file=caption_file)
    return src


def _csv(path: Path, root: str | None) -> Source:
    from evaclip.data.sources import read_caption_csv
    root_path, root_real = _resolve_root(path.parent, root)
    src = Source("csv", str(path), root_path)
    images, captions = read_caption_csv(str(path))
    seen = set()
    for image, caption in zip(images, captions):
        if (image, caption) in seen:  # a repeated row would be the same search result twice
            src.skipped["duplicate_row"] += 1
            continue
        seen.add((image, caption))
        _add_file(src, image, root_real, caption=caption)
    return src


def _add_file(src: Source, image: str, root_real: str, *, caption=None, caption_file=None) -> None:
    if not inside(image, root_real):
        src.skipped["outside_root"] += 1
        return
    stamp = stamp_of(image)
    if stamp is None:
        src.skipped["missing_image"] += 1
        return
    rel = os.path.relpath(os.path.abspath(image), src.root).replace(os.sep, "/")
    if rel.startswith("../"):  # a lexical path outside the root (the real one is inside): show it from the root
        rel = os.path.relpath(os.path.realpath(image), root_real).replace(os.sep, "/")
    source_id = rel if src.kind == "folder" else f"{rel}\t{caption}"
    src.items.append(Item(source_id, stamp, rel, file=image, caption=caption, caption_file=caption_file))


def _webdataset(spec: str, root: str | None) -> Source:
    from evaclip.data.shards import expand_urls, is_local, local_path
    urls = expand_urls(spec)
    remote = [u for u in urls if not is_local(u)]
    if remote:
        raise DatasetError(f"shard {remote[0]!r} is not a local file; `evaclip index` serves the images it "
                           "indexes, so copy the shards to a local folder first")
    shards = [os.path.abspath(local_path(u)) for u in urls]
    default_root = Path(os.path.commonpath([os.path.dirname(s) for s in shards]))
    root_path, root_real = _resolve_root(default_root, root)
    # Recorded absolute, so a re-run from another folder is recognised as the same source (or not).
    absolute = ";".join(os.path.abspath(local_path(p.strip())) for p in spec.split(";") if p.strip())
    src = Source("webdataset", absolute, root_path)
    for shard in shards:
        if not os.path.isfile(shard):
            src.skipped["missing_shard"] += 1
        elif not inside(shard, root_real):
            src.skipped["outside_root"] += 1
        else:
            src.shards.append(shard)
    if not src.shards:
        raise DatasetError(f"shard spec {spec!r}: none of the {len(shards)} shard(s) exists")
    return src


def shard_rel(src: Source, shard: str) -> str:
    return os.path.relpath(shard, src.root).replace(os.sep, "/")


def iter_shard(src: Source, shard: str, stamp: str, skipped: Counter, max_member_bytes: int
               ) -> Iterator[tuple[Item, bytes]]:
    """The samples of one shard as (item, image bytes); damaged samples and shards are counted in `skipped`."""
    from evaclip.data.tario import TarSampleReader
    rel = shard_rel(src, shard)
    reader = TarSampleReader(shard, max_member_bytes=max_member_bytes)
    for sample in reader:
        if sample.get("__skip__"):
            skipped[sample["__skip__"]] += 1
            continue
        try:
            data = find_image_bytes(sample)
        except SkipSample as e:
            skipped[e.reason] += 1
            continue
        try:
            caption, _ = decode_caption(sample, max_chars=10_000)
        except SkipSample:
            caption = None  # an image without a usable caption is still searchable
        key = sample["__key__"]
        yield Item(f"{rel}/{key}", stamp, f"{rel}/{key}", caption=caption, shard=rel, key=key), data
    if reader.error:
        skipped[reader.error] += 1
