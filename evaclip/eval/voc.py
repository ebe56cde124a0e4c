"""PASCAL VOC2007 as distributed (the devkit layout), read under either of CLIP_benchmark's two protocols.

``ROOT`` is ``VOC2007/`` (or a folder holding ``VOC2007/`` or ``VOCdevkit/VOC2007/``) with ``JPEGImages/``
and ``ImageSets/Main/<class>_<split>.txt``, whose lines are ``<image id> <flag>``: 1 the class is present,
-1 absent, 0 present but only as "difficult" objects. Classes are in the devkit's (sorted) order, which is
CLIP_benchmark's ``object_categories``. The dataset name picks the protocol, and the two never share a name:

* ``voc2007`` (Table 2's column, CLIP_benchmark's ``PASCALVoc2007Cropped``): single-label, one sample per
  annotated object, the image cropped to the object's box from ``Annotations/<id>.xml``, labelled with the
  object's class; scored as top-1/top-5 accuracy like every other Table 2 set. Every object counts, "difficult"
  and truncated ones too, in image order then annotation order. The box is cropped as CLIP_benchmark crops it:
  the devkit's 1-based inclusive pixel coordinates passed unchanged as PIL's ``(left, upper, right, lower)``,
  which shifts the crop one pixel up and left of the object; kept so that the numbers are CLIP_benchmark's.
* ``voc2007_multilabel`` (CLIP_benchmark's ``PASCALVoc2007``): one sample per image with a [C] target row,
  1 positive, 0 negative, -1 present only as "difficult" objects, which ``metrics.multilabel_metrics`` counts
  as present for CLIP_benchmark's mAP and leaves out for the devkit's. Also what a caller gets without a name.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import torch
from torch.utils.data import Dataset

from evaclip.errors import DatasetError
from evaclip.eval.catalog import canonical_name
from evaclip.eval.datasets import ClassificationData, ImageListDataset, Transform, open_image, voc_root

_FLAGS = {"1": 1, "-1": 0, "0": -1}  # devkit flag -> our target value
SINGLE_LABEL, MULTI_LABEL = "voc2007", "voc2007_multilabel"
_BOX = ("xmin", "ymin", "xmax", "ymax")


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


def _read_split(base: Path, split: str) -> tuple[list[str], list[str], dict[str, dict[str, int]]]:
    """(class names, image ids, class -> image id -> target value) of one split's class files."""
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
    return classnames, ids, per_class


def _check_images(base: Path, paths: list[Path]) -> None:
    missing = [str(p) for p in dict.fromkeys(paths) if not p.exists()]
    if missing:
        raise DatasetError(f"{base}/JPEGImages: {len(missing)} of {len(set(paths))} images are missing, "
                           f"e.g. {missing[0]}")


class CroppedImageDataset(Dataset):
    """(transform(image cropped to a box), label) for (image file, (left, upper, right, lower), label) items."""

    def __init__(self, items: list[tuple[Path, tuple[int, int, int, int], int]], transform: Transform):
        self.items, self.transform = list(items), transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, box, label = self.items[i]
        return self.transform(open_image(path).crop(box)), label


def _objects(xml_path: Path, classes: dict[str, int]) -> list[tuple[tuple[int, int, int, int], int]]:
    """The (box, label) of every object of one annotation file, in file order."""
    try:
        root = ET.parse(xml_path).getroot()
    except OSError as e:
        raise DatasetError(f"cannot read {xml_path}: {e.strerror or e}; the single-label protocol needs the "
                           f"devkit's Annotations/ (evaluate --dataset {MULTI_LABEL} without them)") from None
    except ET.ParseError as e:
        raise DatasetError(f"{xml_path} is not a readable VOC annotation ({e})") from None
    out = []
    for number, obj in enumerate(root.findall("object"), 1):  # top-level objects only, as CLIP_benchmark
        name = (obj.findtext("name") or "").strip()
        if name not in classes:
            raise DatasetError(f"{xml_path}: object {number} is a {name!r}, which no ImageSets/Main class file "
                               f"names (classes: {', '.join(classes)})")
        box_node = obj.find("bndbox")
        try:
            box = tuple(int(box_node.findtext(k).strip()) for k in _BOX)
        except (AttributeError, ValueError):
            raise DatasetError(f"{xml_path}: object {number} ({name}) has no integer bndbox "
                               f"{'/'.join(_BOX)}") from None
        if not (box[0] < box[2] and box[1] < box[3]):
            raise DatasetError(f"{xml_path}: object {number} ({name}) has an empty box {box} "
                               f"(xmin must be < xmax and ymin < ymax)")
        out.append((box, classes[name]))
    return out


def _load_objects(base: Path, transform: Transform, split: str) -> ClassificationData:
    classnames, ids, _ = _read_split(base, split)
    annotations = base / "Annotations"
    if not annotations.is_dir():
        raise DatasetError(f"{base} has no Annotations/ folder, which --dataset {SINGLE_LABEL} (one sample per "
                           f"annotated object) needs; unpack the devkit's annotations there, or evaluate the "
                           f"image-level labels as --dataset {MULTI_LABEL}")
    index = {c: i for i, c in enumerate(classnames)}
    items = [(base / "JPEGImages" / f"{i}.jpg", box, label)
             for i in ids for box, label in _objects(annotations / f"{i}.xml", index)]
    if not items:
        raise DatasetError(f"{annotations}: the {len(ids)} '{split}' images have no annotated objects")
    _check_images(base, [p for p, _, _ in items])
    return ClassificationData(CroppedImageDataset(items, transform), classnames, None, "voc_devkit",
                              [label for _, _, label in items])


def _load_images(base: Path, transform: Transform, split: str) -> ClassificationData:
    classnames, ids, per_class = _read_split(base, split)
    targets = torch.tensor([[per_class[c][i] for c in classnames] for i in ids], dtype=torch.int8)
    items = [(base / "JPEGImages" / f"{i}.jpg", targets[n]) for n, i in enumerate(ids)]
    _check_images(base, [p for p, _ in items])
    return ClassificationData(ImageListDataset(items, transform), classnames, None, "voc_devkit", [],
                              multilabel_targets=targets)


def load_voc(root: Path, transform: Transform, split: str = "test", dataset: str | None = None) -> ClassificationData:
    """The devkit under the protocol ``dataset`` names (see the module docstring); None: multi-label."""
    protocol = MULTI_LABEL if dataset is None else canonical_name(dataset)
    if protocol not in (SINGLE_LABEL, MULTI_LABEL):
        raise DatasetError(f"{root} is the VOC2007 devkit; evaluate it as --dataset {SINGLE_LABEL} (Table 2: "
                           f"single-label top-1 on object crops) or --dataset {MULTI_LABEL} (multi-label mAP), "
                           f"not {dataset!r}")
    base = voc_root(root)
    if base is None:
        raise DatasetError(f"{root} is not a VOC devkit folder (JPEGImages/ + ImageSets/Main/)")
    if protocol == SINGLE_LABEL:
        return _load_objects(base, transform, split)
    return _load_images(base, transform, split)
