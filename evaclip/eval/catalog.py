"""The paper's benchmark suite (Table 11) and the class names / prompt templates shipped as data files.

Class names and templates live in ``evaclip/eval/data/*.json`` (keys are CLIP_benchmark's dataset names);
ImageNet-A and ImageNet-R are 200-class subsets given as indices into the 1,000 ImageNet classes
(``imagenet_subsets.json``), and ``imagenet_wnids.txt`` lists the 1,000 synsets in label order. The class names
and their order are those CLIP_benchmark evaluates its benchmark list with (``vtab/*`` sets: TFDS's label names;
SUN397: ``ClassName.txt`` order; VOC2007: the devkit's sorted order). ``folder_names.json`` lists, in label
order, the folder names of sets whose folders are not named by class as distributed (Caltech101's
``101_ObjectCategories``).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from evaclip.errors import ConfigError

DATA_DIR = Path(__file__).parent / "data"


@dataclass(frozen=True)
class Benchmark:
    """One evaluation dataset of Table 11."""

    name: str               # CLIP_benchmark's name, the key in the data files
    title: str              # the column title in the paper's tables
    task: str               # zeroshot_classification | video_classification | zeroshot_retrieval
    paper_classes: int | None  # "Classes" column of Table 11 (None for retrieval)
    test_size: int          # "Test size" column of Table 11
    subset_of: str | None = None  # classes are a subset of another benchmark's classes


def _c(name, title, classes, size, subset_of=None):
    return Benchmark(name, title, "zeroshot_classification", classes, size, subset_of)


# In the order of the columns of Table 2 (the 27 image classification benchmarks).
IMAGE_CLASSIFICATION = [
    _c("imagenet1k", "ImageNet-1K", 1000, 50000),
    _c("imagenetv2", "ImageNet-V2", 1000, 10000, "imagenet1k"),
    _c("imagenet-a", "ImageNet-A", 1000, 7500, "imagenet1k"),
    _c("imagenet-r", "ImageNet-R", 1000, 30000, "imagenet1k"),
    _c("imagenet_sketch", "ImageNet-Sketch", 1000, 50899, "imagenet1k"),
    _c("objectnet", "ObjectNet", 1000, 50273, "imagenet1k"),
    _c("cifar10", "CIFAR-10", 10, 10000),
    _c("cifar100", "CIFAR-100", 100, 10000),
    _c("mnist", "MNIST", 10, 10000),
    _c("caltech101", "Caltech101", 101, 9144),
    _c("sun397", "SUN397", 397, 108754),
    _c("fgvc_aircraft", "FGVC-Aircraft", 100, 3333),
    _c("country211", "Country-211", 211, 21100),
    _c("cars", "Stanford Cars", 196, 8041),
    _c("birdsnap", "Birdsnap", 500, 2195),
    _c("dtd", "DTD", 47, 1880),
    _c("eurosat", "EuroSAT", 10, 27000),
    _c("fer2013", "FER2013", 8, 3574),
    _c("flowers", "Flowers-102", 102, 6149),
    _c("food101", "Food-101", 102, 25250),
    _c("gtsrb", "GTSRB", 43, 12630),
    _c("pcam", "PCam", 2, 32768),
    _c("pets", "Pets", 37, 3669),
    _c("renderedsst2", "Rendered SST2", 2, 1821),
    _c("resisc45", "RESISC45", 45, 31500),
    _c("stl10", "STL-10", 10, 8000),
    _c("voc2007", "VOC2007", 20, 4952),
]

VIDEO_CLASSIFICATION = [
    Benchmark("ucf101", "UCF-101", "video_classification", 101, 11213),
    Benchmark("kinetics400", "K-400", "video_classification", 400, 19240),
    Benchmark("kinetics600", "K-600", "video_classification", 600, 29788),
    Benchmark("kinetics700", "K-700", "video_classification", 700, 33966),
]

RETRIEVAL = [
    Benchmark("flickr30k", "Flickr30K", "zeroshot_retrieval", None, 1000),
    Benchmark("mscoco_captions", "COCO", "zeroshot_retrieval", None, 5000),
]

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in IMAGE_CLASSIFICATION + VIDEO_CLASSIFICATION + RETRIEVAL}

# Table 6a: the robustness columns, in the paper's order.
ROBUSTNESS = ["imagenet1k", "imagenet-a", "imagenet-r", "imagenetv2", "imagenet_sketch", "objectnet"]

# Names that expand to a sweep on the command line (`--dataset table2 --dataset-root /data/{dataset}`).
COLLECTIONS: dict[str, list[str]] = {
    "table2": [b.name for b in IMAGE_CLASSIFICATION],
    "robustness": list(ROBUSTNESS),
    "table5": [b.name for b in VIDEO_CLASSIFICATION],
    "table3": [b.name for b in RETRIEVAL],
}


def expand_collections(names: list[str]) -> list[str]:
    """Replace collection names (``table2``, ``robustness``, ``table5``, ``table3``) by their datasets."""
    out: list[str] = []
    for n in names:
        out += COLLECTIONS.get(n.lower(), [n])
    return out


# Where the class lists we evaluate with differ from Table 11's "Classes" column, and why.
PAPER_COUNT_NOTES = {
    "imagenet-a": "Table 11 lists 1000; evaluated (as in CLIP and CLIP_benchmark) on its 200-class subset",
    "imagenet-r": "Table 11 lists 1000; evaluated (as in CLIP and CLIP_benchmark) on its 200-class subset",
    "objectnet": "Table 11 lists 1000 (the ImageNet names shipped here, for copies in ImageNet synset folders); "
                 "ObjectNet 1.0's own layout is evaluated, as in CLIP_benchmark, on its 113 ImageNet-mapped classes",
    "caltech101": "CLIP's list has 102 entries: the 101 categories plus the 'background' class",
    "fer2013": "Table 11 lists 8; FER2013 has 7 emotions (CLIP and CLIP_benchmark use 7)",
    "food101": "Table 11 lists 102; Food-101 has 101 classes",
}


# Benchmarks that are another's images scored another way: they share its class names and templates.
SAME_CLASSES = {"voc2007_multilabel": "voc2007"}


@lru_cache(maxsize=None)
def _load(name: str):
    with open(DATA_DIR / name, encoding="utf-8") as f:
        return json.load(f) if name.endswith(".json") else [line.strip() for line in f if line.strip()]


def imagenet_wnids() -> list[str]:
    """The 1,000 ImageNet synset ids in label order (sorted, as the ImageNet val folders)."""
    return list(_load("imagenet_wnids.txt"))


# CLIP_benchmark's name prefixes: the webdataset export (``wds/``) and the VTAB versions of a set (``vtab/``).
NAME_PREFIXES = ("wds/", "vtab/")
_ALIASES = {"imagenet": "imagenet1k", "imagenet-1k": "imagenet1k", "in1k": "imagenet1k",
            "imagenet-v2": "imagenetv2", "imagenet-sketch": "imagenet_sketch", "coco": "mscoco_captions",
            "mscoco": "mscoco_captions", "flowers102": "flowers", "oxford_pets": "pets",
            "stanford_cars": "cars", "ucf-101": "ucf101", "kinetics-400": "kinetics400",
            "kinetics-600": "kinetics600", "kinetics-700": "kinetics700", "sst2": "renderedsst2"}


def _split_prefixes(dataset: str) -> tuple[str, str]:
    key, prefix = dataset.strip().lower(), ""
    for p in NAME_PREFIXES:
        if key.startswith(p):
            prefix, key = prefix + p, key[len(p):]
    return prefix, key


def canonical_name(dataset: str) -> str:
    """The key of a dataset in the shipped data and the paper's tables, for a name as a user may type it
    (``wds/vtab/cifar10`` -> ``cifar10``, ``ImageNet-1K`` -> ``imagenet1k``)."""
    key = _split_prefixes(dataset)[1]
    return _ALIASES.get(key, key)


def dataset_name(dataset: str) -> str:
    """The name a result is recorded under: CLIP_benchmark's name with its ``wds/`` and ``vtab/`` prefixes kept
    (so rows match CLIP_benchmark's lists, e.g. ``vtab/cifar10``), aliases resolved (``wds/ImageNet-1K`` ->
    ``wds/imagenet1k``)."""
    prefix, key = _split_prefixes(dataset)
    return prefix + _ALIASES.get(key, key)


def name_of_folder(folder: str) -> str:
    """:func:`dataset_name` of a dataset given by its folder, with the folder names of CLIP_benchmark's
    downloads read back (``wds_vtab-cifar10`` -> ``wds/vtab/cifar10``, ``vtab-pets`` -> ``vtab/pets``)."""
    match = re.match(r"(wds[_-])?(vtab-)?(.*)", folder.strip().lower())
    return dataset_name(("wds/" if match[1] else "") + ("vtab/" if match[2] else "") + match[3])


def default_classnames(dataset: str) -> list[str]:
    """The shipped class names of a benchmark, in label order (ImageNet-A/R: their 200-class subsets)."""
    name = canonical_name(dataset)
    name = SAME_CLASSES.get(name, name)
    subsets = _load("imagenet_subsets.json")
    names = _load("classnames.json")
    if name in subsets:
        return [names["imagenet1k"][i] for i in subsets[name]]
    bench = BENCHMARKS.get(name)
    key = name if name in names else (bench.subset_of if bench and bench.subset_of else None)
    if key is None or key not in names:
        raise ConfigError(f"no class names shipped for dataset {dataset!r}; pass --classnames FILE "
                          f"(one class name per line) or put a classnames.txt beside the data")
    return list(names[key])


def folder_names(dataset: str) -> list[str] | None:
    """The folder names of a benchmark as distributed, in label order, where they are not its class names
    (Caltech101: ``BACKGROUND_Google``, ``Faces``, ... for "background", "off-center face", ...); else None."""
    name = canonical_name(dataset)
    return list(_load("folder_names.json")[name]) if name in _load("folder_names.json") else None


def imagenet_subset(dataset: str) -> list[int] | None:
    """Indices into the 1,000 ImageNet classes for ImageNet-A / ImageNet-R, else None."""
    return _load("imagenet_subsets.json").get(canonical_name(dataset))


def default_templates(dataset: str) -> list[str]:
    """The shipped prompt templates (``{c}`` = class name); ImageNet's 80 for sets without their own,
    as CLIP_benchmark does."""
    name = canonical_name(dataset)
    name = SAME_CLASSES.get(name, name)
    templates = _load("templates.json")
    if name in templates:
        return list(templates[name])
    bench = BENCHMARKS.get(name)
    if bench is not None and bench.subset_of in templates:
        return list(templates[bench.subset_of])
    return list(templates["imagenet1k"])
