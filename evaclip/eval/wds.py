"""CLIP_benchmark's webdataset export, read straight from the tar files (no webdataset dependency).

``ROOT/<split>/nshards.txt`` holds the shard count n, ``ROOT/<split>/{0..n-1}.tar`` the samples
(``KEY.webp|png|jpg|jpeg`` with ``KEY.cls``, a class index, or ``KEY.txt``, captions one per line), and ROOT
holds ``classnames.txt``, ``zeroshot_classification_templates.txt`` and ``dataset_type.txt``. Members are
indexed once (name, offset, size) and read by offset, so DataLoader workers need no open tar handles.
"""
from __future__ import annotations

import tarfile
from pathlib import Path

from evaclip.errors import DatasetError
from evaclip.eval.datasets import ClassificationData, RetrievalData, TarMembersDataset, Transform, read_lines


def wds_members(root: Path, split: str) -> list[dict[str, tuple[Path, int, int]]]:
    """Samples of a CLIP_benchmark webdataset split: per key, extension -> (tar, data offset, size)."""
    shard_dir = root / split if (root / split / "nshards.txt").exists() else root
    try:
        nshards = int(read_lines(shard_dir / "nshards.txt")[0])
    except (IndexError, ValueError):
        raise DatasetError(f"{shard_dir}/nshards.txt must hold the number of shards")
    samples: dict[str, dict] = {}
    for i in range(nshards):
        tar_path = shard_dir / f"{i}.tar"
        if not tar_path.exists():
            raise DatasetError(f"{tar_path} is missing: nshards.txt says {nshards} shards ({{0..{nshards - 1}}}.tar)")
        try:
            with tarfile.open(tar_path) as tar:
                for m in tar.getmembers():
                    if not m.isfile():
                        continue
                    key, _, ext = m.name.partition(".")
                    samples.setdefault(f"{i}/{key}", {})[ext.lower()] = (tar_path, m.offset_data, m.size)
        except tarfile.TarError as e:
            raise DatasetError(f"{tar_path} is not a readable tar file: {e}")
    return list(samples.values())


def _read_member(where: tuple[Path, int, int]) -> bytes:
    path, offset, size = where
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def _image_member(sample: dict) -> tuple[Path, int, int] | None:
    return next((sample[e] for e in ("webp", "png", "jpg", "jpeg") if e in sample), None)


def load_wds_classification(root: Path, transform: Transform, split: str) -> ClassificationData:
    if not (root / "classnames.txt").exists():
        raise DatasetError(f"{root}/classnames.txt is missing (CLIP_benchmark's webdataset layout needs it)")
    classnames = read_lines(root / "classnames.txt")
    items = []
    for sample in wds_members(root, split):
        image = _image_member(sample)
        if image is None or "cls" not in sample:
            continue
        label = int(_read_member(sample["cls"]).decode().strip())
        items.append((*image, label))
    if not items:
        raise DatasetError(f"no image+.cls samples in the shards of {root}/{split}")
    templates_file = root / "zeroshot_classification_templates.txt"
    templates = read_lines(templates_file) if templates_file.exists() else None
    return ClassificationData(TarMembersDataset(items, transform), classnames, templates, "clip_benchmark_wds",
                              [it[3] for it in items])


def load_wds_retrieval(root: Path, transform: Transform, split: str) -> RetrievalData:
    items, captions, owner = [], [], []
    for sample in wds_members(root, split):
        image = _image_member(sample)
        if image is None or "txt" not in sample:
            continue
        lines = [c for c in _read_member(sample["txt"]).decode("utf-8").splitlines() if c.strip()]
        captions += lines
        owner += [len(items)] * len(lines)
        items.append((*image, len(items)))
    if not items:
        raise DatasetError(f"no image+.txt samples in the shards of {root}/{split}")
    return RetrievalData(TarMembersDataset(items, transform), captions, owner, "clip_benchmark_wds")
