"""Evaluation datasets already on disk (nothing is ever downloaded): layout detection and loading.

Layouts, detected from a path by :func:`detect_layout`:

* ``clip_benchmark_wds``: CLIP_benchmark's webdataset export (``ROOT/<split>/nshards.txt`` and
  ``{0..n-1}.tar``; read by :mod:`evaclip.eval.wds`).
* ``captions_csv``: ``ROOT/captions.csv`` with header ``image,caption``, one row per caption.
* ``classification_csv``: a CSV with header ``image,label`` (class index or class name) and
  ``classnames.txt`` beside it.
* ``imagenet_folders``: class folders named by ImageNet synset (``n01440764``, ImageNet val / -A / -R /
  -Sketch) or by ImageNet class index (``0`` .. ``999``, ImageNet-V2); labels index the 1,000 classes, or the
  folders present in ImageNet order (ImageNet-A/R: their 200-class subsets).
* ``imagenet_solution_csv``: ImageNet's flat val folder with Kaggle's ``LOC_val_solution.csv`` (images in
  ``ILSVRC/Data/CLS-LOC/val/`` or beside the CSV). A classification CSV may also give synsets as labels.
* ``objectnet``: ObjectNet 1.0 as distributed (``images/<folder>/`` and ``mappings/*.json``, at ROOT or
  ``ROOT/objectnet-1.0``); as in CLIP_benchmark, the 113 classes that map to ImageNet, named by ObjectNet.
* ``voc_devkit``: PASCAL VOC2007 as distributed (``JPEGImages/`` + ``ImageSets/Main/<class>_<split>.txt``, at
  ROOT, ``ROOT/VOC2007`` or ``ROOT/VOCdevkit/VOC2007``): ``voc2007`` single-label object crops (+
  ``Annotations/``), ``voc2007_multilabel`` one multi-label sample per image (read by :mod:`evaclip.eval.voc`).
* ``image_folder``: ``ROOT/<class name>/<image>``, optional ``classnames.txt`` / ``templates.txt``.

A ``ROOT/<split>/`` folder in any of these layouts is used in place of ``ROOT``.

Class folders define the class list, as torchvision's ``ImageFolder`` (and so CLIP_benchmark) reads it: every
class folder in sorted order, one without images included, so a class keeps its label whatever the other
folders hold; :func:`check_same_classes` refuses splits of one dataset whose class lists differ.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from evaclip.errors import ConfigError, DatasetError
from evaclip.eval import catalog

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm")
LAYOUTS_HELP = ("a folder of class folders (ROOT/<class>/<image>), a classification CSV (header image,label) "
                "with classnames.txt, ROOT/captions.csv (header image,caption), ImageNet synset folders or "
                "ImageNet's flat val folder with LOC_val_solution.csv, ObjectNet 1.0 (images/ + mappings/), "
                "the VOC2007 devkit (JPEGImages/ + ImageSets/Main/), or CLIP_benchmark's webdataset layout "
                "(ROOT/<split>/nshards.txt + {i}.tar)")
_WNID = re.compile(r"^n\d{8}$")
# csv's default field limit (128 KiB) raises on a long caption; this bound still refuses a runaway field (a
# file without its closing quote) with one line instead of reading it into memory.
CSV_FIELD_LIMIT = 8 << 20

Transform = Callable[[Image.Image], torch.Tensor]


@dataclass
class ClassificationData:
    """Images with integer labels, and the class names / templates the dataset itself provides."""

    dataset: Dataset
    classnames: list[str]
    templates: list[str] | None
    layout: str
    labels: list[int] = field(default_factory=list)
    multilabel_targets: torch.Tensor | None = None  # [N, C] (1 / 0 / -1 ignored) for multi-label sets


@dataclass
class RetrievalData:
    """Images (their label is the image index) and all captions with the index of the image each describes."""

    dataset: Dataset
    captions: list[str]
    text_to_image: list[int]
    layout: str


def open_image(source: str | Path | bytes) -> Image.Image:
    """Decode an image file (path or bytes) fully, in its own mode; a corrupt file raises DatasetError naming
    it. The transform makes it RGB (``evaclip.transforms.to_rgb``, the one place that decides how transparency
    is handled), so a second conversion here cannot pre-empt that choice."""
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        image.load()
    except Exception as e:  # PIL raises many types for bad files
        raise DatasetError(f"cannot read image {source if not isinstance(source, bytes) else '<bytes>'}: {e}")
    return image


class ImageListDataset(Dataset):
    """(transform(image), label) for a list of image files."""

    def __init__(self, items: Sequence[tuple[Path, int]], transform: Transform):
        self.items, self.transform = list(items), transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        return self.transform(open_image(path)), label


class TarMembersDataset(Dataset):
    """(transform(image), label) for images stored in tar files, read by offset (no extraction)."""

    def __init__(self, items: Sequence[tuple[Path, int, int, int]], transform: Transform):
        self.items, self.transform = list(items), transform  # (tar path, data offset, size, label)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, offset, size, label = self.items[i]
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        return self.transform(open_image(data)), label


def read_lines(path: str | Path) -> list[str]:
    """Non-empty stripped lines of a list file (class names, templates, ...); a file with none is refused, so
    an empty ``templates.txt`` never silently means "the defaults"."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror}")
    except UnicodeDecodeError:
        raise DatasetError(f"{path} is not UTF-8 text; save it as UTF-8, one entry per line")
    if not lines:
        raise DatasetError(f"{path} has no entries (empty or only blank lines); write one entry per line, or "
                           f"remove the file to use the defaults")
    return lines


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS


def _csv_header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8") as f, _csv_field_limit():
            return [h.strip().lower() for h in next(csv.reader(f), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


@contextlib.contextmanager
def _csv_field_limit():
    # csv's limit is global: raise it only while evaclip reads, and put back what the caller had.
    previous = csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def class_folders(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def detect_layout(root: str | Path) -> str:
    """The layout name of a dataset path, or DatasetError naming the layouts evaclip reads."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"dataset path {root} does not exist; expected {LAYOUTS_HELP}")
    if root.is_file():
        header = _csv_header(root) if root.suffix.lower() == ".csv" else []
        if header[:2] == ["image", "caption"]:
            return "captions_csv"
        if header[:2] == ["image", "label"]:
            return "classification_csv"
        raise DatasetError(f"{root} is not a CSV with header image,label or image,caption; expected {LAYOUTS_HELP}")
    dirs = class_folders(root)
    if (root / "nshards.txt").exists() or any((d / "nshards.txt").exists() for d in dirs):
        return "clip_benchmark_wds"
    if (root / "captions.csv").exists():
        return "captions_csv"
    if _objectnet_root(root) is not None:
        return "objectnet"
    if (root / IMAGENET_SOLUTION).exists():
        return "imagenet_solution_csv"
    if voc_root(root) is not None:  # before image folders: JPEGImages/ would look like one class
        return "voc_devkit"
    csvs = [p for p in sorted(root.glob("*.csv")) if _csv_header(p)[:2] == ["image", "label"]]
    if len(csvs) == 1:
        return "classification_csv"
    if any(_is_image(p) for d in dirs for p in d.iterdir()):
        names = [d.name for d in dirs]  # every class folder is a class, an empty one too
        if all(_WNID.match(n) for n in names) or all(n.isdigit() and int(n) < 1000 for n in names):
            return "imagenet_folders"
        return "image_folder"
    raise DatasetError(f"no dataset found at {root}; expected {LAYOUTS_HELP}")


def _objectnet_root(root: Path) -> Path | None:
    for base in (root, root / "objectnet-1.0"):
        if (base / "mappings" / "folder_to_objectnet_label.json").exists() and (base / "images").is_dir():
            return base
    return None


def voc_root(root: Path) -> Path | None:
    """The VOC2007 devkit folder at or under ``root`` (JPEGImages/ + ImageSets/Main/), else None."""
    for base in (root, root / "VOC2007", root / "VOCdevkit" / "VOC2007"):
        if (base / "JPEGImages").is_dir() and (base / "ImageSets" / "Main").is_dir():
            return base
    return None


def _load_objectnet(root: Path, transform: Transform) -> ClassificationData:
    base = _objectnet_root(root)
    try:
        folder_to_label = json.loads((base / "mappings" / "folder_to_objectnet_label.json").read_text())
        to_imagenet = json.loads((base / "mappings" / "objectnet_to_imagenet_1k.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"{base}/mappings: cannot read ObjectNet's mapping files ({e})")
    # The classes are the folders whose ObjectNet label has ImageNet counterparts, in sorted folder order.
    folders = sorted(f for f, label in folder_to_label.items() if label in to_imagenet)
    classnames = [folder_to_label[f].lower() for f in folders]
    dirs = [base / "images" / f for f in folders]
    present = [(d, i) for i, d in enumerate(dirs) if d.is_dir()]
    if not present:
        raise DatasetError(f"{base}/images has none of the {len(folders)} ImageNet-mapped ObjectNet folders")
    items = _folder_items([d for d, _ in present], [i for _, i in present])
    return ClassificationData(ImageListDataset(items, transform), classnames, None, "objectnet",
                              [label for _, label in items])


def resolve_split(root: str | Path, split: str) -> Path:
    """``ROOT/<split>`` when it holds a dataset (or CLIP_benchmark shards), else ``ROOT`` itself."""
    root = Path(root)
    sub = root / split
    if (sub / "nshards.txt").exists():
        return root  # CLIP_benchmark: metadata at ROOT, shards under ROOT/<split>
    if sub.is_dir():
        try:
            detect_layout(sub)
            return sub
        except DatasetError:
            pass
    return root


def folder_classnames(folders: list[str], dataset: str | None) -> tuple[list[str], list[int]]:
    """Class names and label of each folder (``folders``: every class folder, sorted). A known benchmark gives
    its own names and label order when its folders as distributed (Caltech101's ``Faces``, ``car_side``...) or
    its class names match all the folders; otherwise the folder names (underscores as spaces) label the classes
    in sorted order."""
    def norm(s: str) -> str:
        return re.sub(r"[^a-z0-9]", "", s.lower())
    if dataset:
        try:
            known = catalog.default_classnames(dataset)
        except ConfigError:
            known = []
        shipped = catalog.folder_names(dataset)
        if known and shipped and len(shipped) == len(known) and set(folders) <= set(shipped):
            return known, [shipped.index(f) for f in folders]
        index = {norm(c): i for i, c in enumerate(known)}
        if known and len(index) == len(known) and all(norm(f) in index for f in folders):
            return known, [index[norm(f)] for f in folders]
    return [f.replace("_", " ") for f in folders], list(range(len(folders)))


def check_same_classes(first: ClassificationData, second: ClassificationData, where: str | Path,
                       names: tuple[str, str] = ("train", "test")) -> None:
    """Refuse two splits of one dataset whose class lists differ: a label would mean another class in each."""
    if first.classnames == second.classnames:
        return
    only = [c for c in first.classnames if c not in second.classnames]
    other = [c for c in second.classnames if c not in first.classnames]
    what = (f"{names[0]} has {only[:3]} that {names[1]} lacks" if only else
            f"{names[1]} has {other[:3]} that {names[0]} lacks" if other else "the classes are in another order")
    raise DatasetError(f"{where}: the {names[0]} and {names[1]} splits have different class lists ({what}); give "
                       f"every split the same class folders (an empty folder keeps a class's label)")


def _folder_items(folders: list[Path], labels: list[int]) -> list[tuple[Path, int]]:
    items = [(p, label) for d, label in zip(folders, labels) for p in sorted(d.iterdir()) if _is_image(p)]
    if not items:
        raise DatasetError(f"no images found in the class folders under {folders[0].parent}")
    return items


def _load_image_folder(root: Path, transform: Transform, dataset: str | None) -> ClassificationData:
    folders = class_folders(root)
    classnames, labels = folder_labels(root, folders, dataset)
    items = _folder_items(folders, labels)
    return ClassificationData(ImageListDataset(items, transform), classnames, own_templates(root), "image_folder",
                              [label for _, label in items])


def own_templates(root: Path) -> list[str] | None:
    """A class-folder set's own prompt templates (``ROOT/templates.txt``), or None for the defaults."""
    return read_lines(root / "templates.txt") if (root / "templates.txt").exists() else None


def folder_labels(root: Path, folders: list[Path], dataset: str | None) -> tuple[list[str], list[int]]:
    """Class names and each class folder's label (image and video folders alike): from ``ROOT/classnames.txt``
    when there is one, else from the folder names (:func:`folder_classnames`)."""
    names = [d.name for d in folders]
    if (root / "classnames.txt").exists():
        classnames = read_lines(root / "classnames.txt")
        index = {c: i for i, c in enumerate(classnames)}
        if all(n in index for n in names):
            # folders named by class: the label is the name's line (classes without images stay candidates)
            labels = [index[n] for n in names]
        elif len(classnames) == len(folders):
            labels = list(range(len(folders)))  # other folder names: classnames.txt in sorted folder order
        else:
            raise DatasetError(f"{root}/classnames.txt has {len(classnames)} names but there are {len(folders)} "
                               f"class folders (empty ones included); name the folders by class, or list one "
                               f"name per folder in sorted folder order")
    else:
        classnames, labels = folder_classnames(names, dataset)
    return classnames, labels


def _imagenet_labels(imagenet_index: list[int], dataset: str | None, root: Path,
                     folders: int | None = None) -> tuple[list[str], list[int]]:
    """Class names and labels for items given as ImageNet-1K class indices: all 1,000 classes, or the
    benchmark's subset (ImageNet-A/R). ``folders``: the items are that many class folders; 200 folders of a
    dataset of unknown name are taken as such a subset (the classes present, in ImageNet order)."""
    all_names = catalog.default_classnames("imagenet1k")
    subset = catalog.imagenet_subset(dataset) if dataset else None
    if subset is None and folders == 200 and dataset is None:
        subset = sorted(set(imagenet_index))  # ImageNet-A/R style: the classes present, in ImageNet order
    if subset is None:
        return all_names, imagenet_index
    where = {c: i for i, c in enumerate(subset)}
    missing = [i for i in imagenet_index if i not in where]
    if missing:
        what = "class folders" if folders else "images"
        raise DatasetError(f"{root}: {len(missing)} {what} have classes that are not in the {dataset} class subset")
    return [all_names[i] for i in subset], [where[i] for i in imagenet_index]


def _wnid_index(wnids: list[str], where: Path) -> list[int]:
    position = {w: i for i, w in enumerate(catalog.imagenet_wnids())}
    unknown = sorted({w for w in wnids if w not in position})
    if unknown:
        raise DatasetError(f"{where}: {unknown[:3]} are not ImageNet-1K synsets")
    return [position[w] for w in wnids]


def _load_imagenet_folders(root: Path, transform: Transform, dataset: str | None) -> ClassificationData:
    folders = class_folders(root)
    if _WNID.match(folders[0].name):
        imagenet_index = _wnid_index([d.name for d in folders], root)
    else:
        imagenet_index = [int(d.name) for d in folders]
    classnames, labels = _imagenet_labels(imagenet_index, dataset, root, folders=len(folders))
    items = _folder_items(folders, labels)
    return ClassificationData(ImageListDataset(items, transform), classnames, None, "imagenet_folders",
                              [label for _, label in items])


IMAGENET_SOLUTION = "LOC_val_solution.csv"  # Kaggle's ImageNet (ILSVRC CLS-LOC) validation labels


def _load_imagenet_solution(root: Path, transform: Transform, dataset: str | None) -> ClassificationData:
    """The flat ImageNet val folder as Kaggle ships it: ``LOC_val_solution.csv`` (``ImageId,PredictionString``;
    the first synset of the string is the label) and the images in ``ILSVRC/Data/CLS-LOC/val/`` or beside it."""
    path = root / IMAGENET_SOLUTION
    rows = _read_csv_rows(path, ("imageid", "predictionstring"))
    image_dir = root / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    image_dir = image_dir if image_dir.is_dir() else root
    wnids = []
    for image_id, boxes in rows:
        if not boxes.split():
            raise DatasetError(f"{path}: image {image_id} has an empty PredictionString (no synset)")
        wnids.append(boxes.split()[0])
    classnames, labels = _imagenet_labels(_wnid_index(wnids, path), dataset, root)
    items = [(image_dir / f"{image_id}.JPEG", y) for (image_id, _), y in zip(rows, labels)]
    missing = [str(p) for p, _ in items if not p.exists()]
    if missing:
        raise DatasetError(f"{path}: {len(missing)} of {len(items)} images are missing, e.g. {missing[0]} (if the "
                           f"val images were moved into synset folders, point at that folder instead)")
    return ClassificationData(ImageListDataset(items, transform), classnames, None, "imagenet_solution_csv", labels)


def _read_csv_rows(path: Path, columns: tuple[str, str]) -> list[tuple[str, str]]:
    rows, reader = [], None
    try:
        with open(path, newline="", encoding="utf-8") as f, _csv_field_limit():
            reader = csv.DictReader(f)
            reader.fieldnames = [h.strip().lower() for h in reader.fieldnames or []]
            if reader.fieldnames[:2] != list(columns):
                raise DatasetError(f"{path}: expected the header {','.join(columns)}, got "
                                   f"{','.join(reader.fieldnames)}")
            for r in reader:
                if r[columns[0]] is None or r[columns[1]] is None:
                    raise DatasetError(f"{path}:{reader.line_num}: the row has fewer than the {len(columns)} "
                                       f"columns {','.join(columns)}")
                rows.append((r[columns[0]], r[columns[1]]))
    except csv.Error as e:
        where = f"{path}:{reader.reader.line_num}" if reader is not None else str(path)  # the failing line
        raise DatasetError(f"{where}: not a readable CSV row ({e}; a field may hold at most "
                           f"{CSV_FIELD_LIMIT >> 20} MiB); fix the quoting or shorten the field") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path} is not UTF-8 text; save the CSV as UTF-8") from None
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror or e}") from None
    if not rows:
        raise DatasetError(f"{path} has a header but no rows")
    return rows


def _load_classification_csv(path: Path, transform: Transform, dataset: str | None) -> ClassificationData:
    if path.is_dir():
        path = next(p for p in sorted(path.glob("*.csv")) if _csv_header(p)[:2] == ["image", "label"])
    rows = _read_csv_rows(path, ("image", "label"))
    names_file = path.parent / "classnames.txt"
    templates_file = path.parent / "templates.txt"
    templates = read_lines(templates_file) if templates_file.exists() else None
    imagenet = set(catalog.imagenet_wnids())
    if not names_file.exists() and all(label.strip() in imagenet for _, label in rows):
        # ImageNet-1K synsets as labels (e.g. the flat val folder listed in a CSV)
        index = _wnid_index([label.strip() for _, label in rows], path)
        classnames, labels = _imagenet_labels(index, dataset, path)
        items = [(path.parent / image, y) for (image, _), y in zip(rows, labels)]
        missing = [str(p) for p, _ in items if not p.exists()]
        if missing:
            raise DatasetError(f"{path}: {len(missing)} image files are missing, e.g. {missing[0]}")
        return ClassificationData(ImageListDataset(items, transform), classnames, templates, "classification_csv",
                                  labels)
    if names_file.exists():
        classnames = read_lines(names_file)
    elif dataset:
        classnames = catalog.default_classnames(dataset)
    else:
        classnames = sorted({label.strip() for _, label in rows})
        if any(c.lstrip("-").isdigit() for c in classnames):
            raise DatasetError(f"{path}: integer labels need a classnames.txt beside the CSV (one name per line)")
    index = {c: i for i, c in enumerate(classnames)}
    items = []
    for image, label in rows:
        label = label.strip()
        if label in index:
            y = index[label]
        elif label.lstrip("-").isdigit():
            y = int(label)
        else:
            raise DatasetError(f"{path}: label {label!r} is neither a class index nor a name in classnames.txt")
        if not 0 <= y < len(classnames):
            raise DatasetError(f"{path}: label {y} is out of range for {len(classnames)} classes")
        items.append((path.parent / image, y))
    missing = [str(p) for p, _ in items if not p.exists()]
    if missing:
        raise DatasetError(f"{path}: {len(missing)} image files are missing, e.g. {missing[0]}")
    return ClassificationData(ImageListDataset(items, transform), classnames, templates, "classification_csv",
                              [y for _, y in items])


def load_classification(path: str | Path, transform: Transform, dataset: str | None = None,
                        split: str = "test") -> ClassificationData:
    """Load a classification dataset from any supported layout (see the module docstring)."""
    root = resolve_split(path, split)
    layout = detect_layout(root)
    if layout == "clip_benchmark_wds":
        from evaclip.eval.wds import load_wds_classification  # wds builds on this module's classes
        return load_wds_classification(root, transform, split)
    if layout == "classification_csv":
        return _load_classification_csv(root, transform, dataset)
    if layout == "imagenet_folders":
        return _load_imagenet_folders(root, transform, dataset)
    if layout == "objectnet":
        return _load_objectnet(root, transform)
    if layout == "imagenet_solution_csv":
        return _load_imagenet_solution(root, transform, dataset)
    if layout == "voc_devkit":
        from evaclip.eval.voc import load_voc
        return load_voc(root, transform, split, dataset)
    if layout == "image_folder":
        return _load_image_folder(root, transform, dataset)
    raise DatasetError(f"{root} is a {layout} dataset, not a classification dataset; expected {LAYOUTS_HELP}")


def load_retrieval(path: str | Path, transform: Transform, split: str = "test") -> RetrievalData:
    """Load an image-caption dataset: ``captions.csv`` or CLIP_benchmark's retrieval webdataset."""
    root = resolve_split(path, split)
    layout = detect_layout(root)
    if layout == "captions_csv":
        captions, owner = [], []
        csv_path = root if root.is_file() else root / "captions.csv"
        image_index: dict[str, int] = {}
        for image, caption in _read_csv_rows(csv_path, ("image", "caption")):
            owner.append(image_index.setdefault(image, len(image_index)))
            captions.append(caption)
        items = [(csv_path.parent / image, i) for image, i in image_index.items()]
        missing = [str(p) for p, _ in items if not p.exists()]
        if missing:
            raise DatasetError(f"{csv_path}: {len(missing)} image files are missing, e.g. {missing[0]}")
        return RetrievalData(ImageListDataset(items, transform), captions, owner, layout)
    if layout == "clip_benchmark_wds":
        from evaclip.eval.wds import load_wds_retrieval
        return load_wds_retrieval(root, transform, split)
    raise DatasetError(f"{root} is a {layout} dataset, not image-caption pairs; expected ROOT/captions.csv "
                       f"(header image,caption) or CLIP_benchmark's retrieval webdataset")

