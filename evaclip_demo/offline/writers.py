"""Writers for the three on-disk layouts (see COMMON conventions): webdataset shards, image folders and
captions CSVs. Everything written is a pure function of its inputs: tar headers carry constant times and
owners, PNGs are encoded without timestamps, so a rebuild is byte-identical.
"""
from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of an RGB uint8 array (Pillow writes no time chunk, so it is deterministic)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder: Path, source: str, images: Sequence[np.ndarray | bytes], captions: Sequence[str],
                 metas: Sequence[dict], shard_size: int, ext: str = "png") -> list[dict]:
    """Write ``{source}-{i:05d}.tar`` shards of ``shard_size`` samples (``{key}.{ext}/.txt/.json``): RGB arrays
    are PNG-encoded, bytes (an encoded clip, ``ext="mp4"``) are written as they are.

    Keys are ``{source}-{n:06d}`` (no dots, as webdataset splits keys at the first dot).
    Returns ``[{"file": name, "samples": k}, ...]`` in shard order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for shard, start in enumerate(range(0, len(images), shard_size)):
        name = f"{source}-{shard:05d}.tar"
        end = min(start + shard_size, len(images))
        with tarfile.open(folder / name, "w", format=tarfile.GNU_FORMAT) as tar:
            for n in range(start, end):
                key = f"{source}-{n:06d}"
                media = images[n]
                _add(tar, f"{key}.{ext}", media if isinstance(media, bytes) else png_bytes(media))
                _add(tar, f"{key}.txt", captions[n].encode("utf-8"))
                _add(tar, f"{key}.json", json.dumps(metas[n], sort_keys=True, ensure_ascii=False).encode("utf-8"))
        shards.append({"file": name, "samples": end - start})
    return shards


def safe_filename(item_id: str) -> str:
    """A flat file name for an item id such as ``animals/birds/robin`` (-> ``animals__birds__robin``)."""
    return item_id.replace("/", "__").replace(" ", "_")


def write_image_folder(root: Path, images: Sequence[np.ndarray], ids: Sequence[str], classnames: Sequence[str],
                       class_order: Sequence[str], templates: Sequence[str]) -> dict[str, int]:
    """``ROOT/<class>/<id>.png`` plus ``classnames.txt`` (label order) and ``templates.txt``.

    Every class of ``class_order`` gets a folder, so folder names and classnames.txt always agree.
    Returns images per class.
    """
    counts = {c: 0 for c in class_order}
    for c in class_order:
        (root / c).mkdir(parents=True, exist_ok=True)
    for image, item_id, c in zip(images, ids, classnames):
        (root / c / f"{safe_filename(item_id)}.png").write_bytes(png_bytes(image))
        counts[c] += 1
    (root / "classnames.txt").write_text("".join(f"{c}\n" for c in class_order), encoding="utf-8")
    (root / "templates.txt").write_text("".join(f"{t}\n" for t in templates), encoding="utf-8")
    return counts


def write_captions_csv(root: Path, images: Sequence[np.ndarray], ids: Sequence[str],
                       captions: Sequence[str]) -> int:
    """``ROOT/images/<id>.png`` and ``ROOT/captions.csv`` (``image,caption``, paths relative to ROOT)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    with open(root / "captions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image", "caption"])
        for image, item_id, caption in zip(images, ids, captions):
            rel = f"images/{safe_filename(item_id)}.png"
            (root / rel).write_bytes(png_bytes(image))
            writer.writerow([rel, caption])
    return len(ids)
