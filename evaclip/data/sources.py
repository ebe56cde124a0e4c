"""Resolving data sources (shards, CSV files, caption folders) and streaming CSV/folder items.

CSV and folder sources are lists of items (image file, caption); :class:`ItemStream` walks them with the same
:class:`~evaclip.data.streams.DrawOrder` as shards, so they share the batching, mixing and exact-resume logic.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

from evaclip.data.config import DataConfig, DataSource
from evaclip.data.decode import IMAGE_EXTENSIONS
from evaclip.data.shards import check_shards, expand_urls
from evaclip.data.streams import DrawOrder
from evaclip.errors import DatasetError

CSV_IMAGE_KEYS = ("image", "path", "filepath", "file", "image_path")
CSV_CAPTION_KEYS = ("caption", "title", "text")


@dataclass
class ResolvedSource:
    """A source with its shard URLs (webdataset) or its items (csv/folder) listed."""

    name: str
    kind: str  # "webdataset" | "csv" | "folder"
    weight: float
    urls: list[str] = field(default_factory=list)
    image_paths: list[str] = field(default_factory=list)
    captions: list[str | None] = field(default_factory=list)       # csv: the caption text
    caption_paths: list[str | None] = field(default_factory=list)  # folder: the .txt sidecar (None if missing)

    @property
    def size(self) -> int:
        """Number of shards (webdataset) or items (csv/folder)."""
        return len(self.urls) if self.kind == "webdataset" else len(self.image_paths)


def _kind(src: DataSource) -> str:
    if src.kind != "auto":
        return src.kind
    if isinstance(src.urls, str):
        path = src.urls.strip()
        if path.lower().endswith((".csv", ".tsv")):
            return "csv"
        if os.path.isdir(path):
            return "folder"
    return "webdataset"


def resolve_source(src: DataSource, index: int, cfg: DataConfig) -> ResolvedSource:
    """List a source's shards or items; raise DatasetError if it is missing or empty."""
    kind = _kind(src)
    name = src.name or f"source{index}"
    out = ResolvedSource(name=name, kind=kind, weight=float(src.weight))
    if kind == "webdataset":
        out.urls = expand_urls(src.urls)
        check_shards(out.urls, name)
    elif kind == "csv":
        out.image_paths, out.captions = read_caption_csv(str(src.urls).strip(), cfg.csv_image_key, cfg.csv_caption_key)
        out.caption_paths = [None] * len(out.image_paths)
    else:
        out.image_paths, out.caption_paths = scan_caption_folder(str(src.urls).strip())
        out.captions = [None] * len(out.image_paths)
    return out


def read_caption_csv(path: str, image_key: str = "", caption_key: str = "") -> tuple[list[str], list[str]]:
    """Rows of a CSV/TSV with a header -> (absolute image paths, captions). Paths are relative to the file's folder."""
    if not os.path.isfile(path):
        raise DatasetError(f"caption CSV {path!r} does not exist")
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = [h.strip() for h in reader.fieldnames or []]
        img_col = image_key or next((k for k in CSV_IMAGE_KEYS if k in header), "")
        cap_col = caption_key or next((k for k in CSV_CAPTION_KEYS if k in header), "")
        if img_col not in header or cap_col not in header:
            raise DatasetError(
                f"caption CSV {path!r} has columns {header}; it needs an image column ({'/'.join(CSV_IMAGE_KEYS)}) "
                f"and a caption column ({'/'.join(CSV_CAPTION_KEYS)}), or set data.csv_image_key/csv_caption_key")
        reader.fieldnames = header
        root = os.path.dirname(os.path.abspath(path))
        paths, captions = [], []
        for row in reader:
            image = (row.get(img_col) or "").strip()
            if image:
                paths.append(os.path.join(root, image))
                captions.append(row.get(cap_col) or "")
    if not paths:
        raise DatasetError(f"caption CSV {path!r} has no rows with an image path")
    return paths, captions


def scan_caption_folder(root: str) -> tuple[list[str], list[str | None]]:
    """Images under `root` (recursively, sorted) and their `.txt` sidecars (same name, None when absent)."""
    if not os.path.isdir(root):
        raise DatasetError(f"image folder {root!r} does not exist")
    images, captions = [], []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext[1:].lower() in IMAGE_EXTENSIONS:
                images.append(os.path.join(folder, name))
                txt = os.path.join(folder, stem + ".txt")
                captions.append(txt if os.path.isfile(txt) else None)
    if not images:
        raise DatasetError(f"image folder {root!r} has no {'/'.join(IMAGE_EXTENSIONS)} image")
    return images, captions


def _read_bytes(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None  # vanished or unreadable: counted as a missing image/caption downstream


class ItemStream:
    """Raw samples of one CSV/folder source for one canonical stream, in the same shape as tar samples."""

    def __init__(self, source: ResolvedSource, *, seed: int, source_index: int, stream: int, num_streams: int,
                 resampled: bool):
        self.source = source
        self.order = DrawOrder(source.size, seed=seed, source=source_index, stream=stream,
                               num_streams=num_streams, resampled=resampled)
        self.next_draw = 0

    def next_sample(self) -> dict:
        i = self.order(self.next_draw)
        self.next_draw += 1
        src = self.source
        image_path = src.image_paths[i]
        ext = os.path.splitext(image_path)[1][1:].lower()
        # Pillow sniffs the format from the bytes, so an unusual suffix only needs some image slot.
        sample: dict = {"__key__": image_path, "__url__": src.name}
        image = _read_bytes(image_path)
        if image is not None:
            sample[ext if ext in IMAGE_EXTENSIONS else "jpg"] = image
        caption = src.captions[i].encode("utf-8") if src.captions[i] is not None else _read_bytes(src.caption_paths[i])
        if caption is not None:
            sample["txt"] = caption
        return sample

    def state_dict(self) -> dict:
        return {"next_draw": self.next_draw}

    def load_state_dict(self, state: dict) -> None:
        self.next_draw = int(state["next_draw"])

    def close(self) -> None:
        pass
