"""PASCAL VOC2007 as distributed (the devkit layout), read as a multi-label classification set.

``ROOT`` is ``VOC2007/`` (or a folder holding ``VOC2007/`` or ``VOCdevkit/VOC2007/``) with ``JPEGImages/``
and ``ImageSets/Main/<class>_<split>.txt``, whose lines are ``<image id> <flag>``: 1 the class is present,
-1 absent, 0 present but only as "difficult" objects. Labels are rows of a [C] tensor: 1 positive,
0 negative, -1 present only as "difficult" objects, which ``metrics.multilabel_metrics`` counts as present for
CLIP_benchmark's mAP and leaves out for the devkit's. Classes are in the devkit's (sorted) order, as in
CLIP_benchmark's ``voc2007_multilabel``. Table 11's ``voc2007`` is a different, single-label benchmark, so
that name is refused here.
"""
from __future__ import annotations

from pathlib import Path

import torch

from evaclip.errors import DatasetError
from evaclip.eval.datasets import ClassificationData, ImageListDataset, Transform, voc_root

_FLAGS = {"1": 1, "-1": 0, "0": -1}  # devkit flag -> our target value


def _read_class_file(path: Path) -> dict[str, int]:
    flags = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in _FLAGS:
            raise DatasetError(f"{path}:{number}: expected '<image id> <1|-1|0>', got {line.strip()!r}")
        flags[parts[0]] = _FLAGS[parts[1]]
    if not flags:
        raise DatasetError(f"{path} lists no images")
    return flags


def load_voc(root: Path, transform: Transform, split: str = "test", dataset: str | None = None) -> ClassificationData:
    if dataset not in (None, "voc2007_multilabel"):
        raise DatasetError(f"{root} is the VOC2007 devkit, read as the multi-label benchmark; evaluate it as "
                           f"--dataset voc2007_multilabel (not {dataset!r}: Table 11's voc2007 is single-label)")
    base = voc_root(root)
    if base is None:
        raise DatasetError(f"{root} is not a VOC devkit folder (JPEGImages/ + ImageSets/Main/)")
    main = base / "ImageSets" / "Main"
    files = sorted(main.glob(f"*_{split}.txt"))
    if not files:
        raise DatasetError(f"{main} has no <class>_{split}.txt files; is VOC2007's '{split}' split unpacked "
                           f"here? (VOCtest_06-Nov-2007.tar holds 'test', VOCtrainval_06-Nov-2007.tar the rest)")
    classnames = [f.name[: -len(f"_{split}.txt")] for f in files]
    per_class = {f.name[: -len(f"_{split}.txt")]: _read_class_file(f) for f in files}
    ids = sorted(per_class[classnames[0]])
    for name, flags in per_class.items():
        if sorted(flags) != ids:
            raise DatasetError(f"{main}/{name}_{split}.txt lists other images than {classnames[0]}_{split}.txt; "
                               f"the class files of one split must cover the same images")
    targets = torch.tensor([[per_class[c][i] for c in classnames] for i in ids], dtype=torch.int8)
    items = [(base / "JPEGImages" / f"{i}.jpg", targets[n]) for n, i in enumerate(ids)]
    missing = [str(p) for p, _ in items if not p.exists()]
    if missing:
        raise DatasetError(f"{base}/JPEGImages: {len(missing)} of {len(items)} images are missing, e.g. {missing[0]}")
    return ClassificationData(ImageListDataset(items, transform), classnames, None, "voc_devkit", [],
                              multilabel_targets=targets)
