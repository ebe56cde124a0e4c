"""One evaluation job: (model, dataset, task) -> metrics, over one or both image transforms (Table 14).

The CLI (``evaclip eval``) and Python callers share this; it knows nothing about argparse.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from evaclip.errors import ConfigError, DatasetError
from evaclip.eval import catalog
from evaclip.eval.datasets import (ClassificationData, Transform, check_same_classes, load_classification,
                                   load_retrieval, read_lines, resolve_split)
from evaclip.eval.features import image_loader
from evaclip.eval.linear_probe import BATCH_SIZE, EPOCHS, LR, cached_features, linear_probe, stratified_split
from evaclip.eval.metrics import mean_recall
from evaclip.eval.retrieval import evaluate_zeroshot_retrieval
from evaclip.eval.video import evaluate_video_classification, load_video_folder
from evaclip.eval.zeroshot import Templates, evaluate_zeroshot_classification

TASKS = ("zeroshot_classification", "zeroshot_retrieval", "video_classification", "linear_probe")
TRANSFORMS = {"squash": "direct resize to a square (†)", "shortest": "shortest-side resize + centre crop (*)"}


@dataclass
class EvalOptions:
    """Everything a job needs besides the model; defaults follow CLIP_benchmark and the paper."""

    split: str = "test"
    train_split: str = "train"
    val_split: str | None = None
    val_proportion: float = 0.0  # linear probe: 0 = no weight-decay search (CLIP_benchmark's default)
    classnames_file: str | None = None
    templates_file: str | None = None
    batch_size: int = BATCH_SIZE  # also the linear probe's training batch, as in CLIP_benchmark
    workers: int = 4
    device: str = "cpu"
    amp: bool = False
    recall_k: tuple[int, ...] = (1, 5, 10)
    num_frames: int = 1
    feature_cache: str | None = None  # linear probe: folder for cached features
    lp_epochs: int = EPOCHS
    lp_lr: float = LR
    # linear probe without a train split: the seeded fraction of the test images to train on (None: refuse)
    lp_train_fraction: float | None = None
    seed: int = 0
    cache_tag: str = "model"  # linear probe: names the cached feature files (model + pretrained)


def resolve_dataset(dataset: str, dataset_root: str | None) -> tuple[str, Path]:
    """(name to record, path) for ``--dataset NAME_OR_PATH [--dataset-root DIR]``. A named set keeps
    CLIP_benchmark's ``wds/`` and ``vtab/`` prefixes in its name; a root may be a CLIP_benchmark template, with
    ``{dataset}`` = the name without ``wds/`` and ``{dataset_cleaned}`` = that with ``/`` as ``-`` (as its
    cli.py fills them: ``wds/vtab/cifar10`` -> ``vtab/cifar10``, ``vtab-cifar10``); a plain root holding a folder
    of that name (either form) means that folder, else the root itself is the dataset. A path is named by its
    folder, CLIP_benchmark's download names read back (``wds_vtab-cifar10`` -> ``wds/vtab/cifar10``)."""
    if dataset_root is None:
        path = Path(dataset).expanduser()
        if not path.exists():
            raise DatasetError(f"{dataset!r} is not an existing path; pass the dataset folder, or a name with "
                               f"--dataset-root DIR (nothing is ever downloaded)")
        return catalog.name_of_folder(path.stem if path.is_file() else path.name), path
    name = catalog.dataset_name(dataset)
    plain = dataset.strip().removeprefix("wds/")
    cleaned = plain.replace("/", "-")
    path = Path(dataset_root.replace("{dataset}", plain).replace("{dataset_cleaned}", cleaned)).expanduser()
    if "{dataset" not in dataset_root:
        path = next((path / sub for sub in (plain, cleaned) if (path / sub).exists()), path)
    return name, path


def _read_list_file(path: str, dataset: str, what: str) -> list[str] | dict:
    """A .txt file (one entry per line) or a .json list / dict (keyed by dataset name, CLIP_benchmark's
    custom files, or class name -> prompts for per-class prompts)."""
    if not Path(path).exists():
        raise ConfigError(f"{what} file {path} does not exist")
    if not path.endswith(".json"):
        return read_lines(path)
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} file {path} is not valid JSON: {e}")
    if isinstance(data, dict) and dataset in data:
        data = data[dataset]
    if isinstance(data, list) or (what == "templates" and isinstance(data, dict)):
        return data
    raise ConfigError(f"{what} file {path} has no entry for dataset {dataset!r}")


def _classnames_templates(name: str, own_names: list[str], own_templates, opts: EvalOptions):
    classnames = _read_list_file(opts.classnames_file, name, "classnames") if opts.classnames_file else own_names
    if opts.classnames_file and len(classnames) != len(own_names):
        raise ConfigError(f"{opts.classnames_file} lists {len(classnames)} class names but the dataset has "
                          f"{len(own_names)} classes")
    if opts.templates_file:
        templates = _read_list_file(opts.templates_file, name, "templates")
    else:
        templates = own_templates or catalog.default_templates(name)
    return classnames, templates


def _split_source(path: Path, split: str) -> Path:
    """Where a split's files are read from (``ROOT/<split>``, CLIP_benchmark's shard folder, or ROOT itself
    when there is no such split)."""
    if (Path(path) / split / "nshards.txt").exists():
        return Path(path) / split
    return resolve_split(path, split)


@dataclass
class ZeroshotSet:
    """A zero-shot classification set, listed (not decoded) with the class names and prompts it is scored with."""

    data: ClassificationData
    classnames: list[str]
    templates: Templates


def load_zeroshot_set(path: Path, transform: Transform, name: str, opts: EvalOptions) -> ZeroshotSet:
    """The set as ``evaclip eval --task zeroshot_classification`` reads it: its own class names and prompt
    templates unless ``opts`` names files, else the benchmark's (ImageNet's 80 for an unknown name)."""
    data = load_classification(path, transform, dataset=name, split=opts.split)
    classnames, templates = _classnames_templates(name, data.classnames, data.templates, opts)
    return ZeroshotSet(data, classnames, templates)


def evaluate_zeroshot_set(model, tokenizer, zeroshot: ZeroshotSet, opts: EvalOptions) -> dict[str, float]:
    """Zero-shot metrics of ``model`` on a loaded set: the one path that ``evaclip eval``, the trainer's
    evaluation hook and the demo share."""
    loader = image_loader(zeroshot.data.dataset, opts.batch_size, opts.workers)
    return evaluate_zeroshot_classification(model, tokenizer, loader, zeroshot.classnames, zeroshot.templates,
                                            device=opts.device, amp=opts.amp)


def run_task(model, tokenizer, task: str, name: str, path: Path, transform: Transform,
             opts: EvalOptions, cache_tag: str = "model") -> dict[str, float]:
    """Metrics of one task on one dataset with one image transform (with ``num_skipped_files``, the images
    or videos that could not be decoded and were left out)."""
    kw = dict(device=opts.device, amp=opts.amp)
    if task == "zeroshot_classification":
        return evaluate_zeroshot_set(model, tokenizer, load_zeroshot_set(path, transform, name, opts), opts)
    if task == "zeroshot_retrieval":
        data = load_retrieval(path, transform, split=opts.split)
        return evaluate_zeroshot_retrieval(model, tokenizer, data, batch_size=opts.batch_size,
                                           workers=opts.workers, ks=opts.recall_k, **kw)
    if task == "video_classification":
        split_path = path / opts.split if (path / opts.split).is_dir() else path
        dataset, own_names = load_video_folder(split_path, transform, dataset=name, num_frames=opts.num_frames)
        classnames, templates = _classnames_templates(name, own_names, dataset.templates, opts)
        return evaluate_video_classification(model, tokenizer, dataset, classnames, templates, dataset_name=name,
                                             batch_size=max(1, opts.batch_size // opts.num_frames),
                                             workers=opts.workers, **kw)
    if task == "linear_probe":
        return _linear_probe(model, name, path, transform, opts, cache_tag)
    raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def check_linear_probe_splits(path: Path, opts: EvalOptions) -> bool:
    """Refuse a linear probe that would train or tune on its own test images (cheap: nothing is decoded, so the
    CLI runs it before building the model). Returns True when there is no train split and
    ``opts.lp_train_fraction`` says to split the test images instead."""
    from evaclip.eval.datasets import detect_layout

    test_source = _split_source(path, opts.split)
    if detect_layout(test_source) == "voc_devkit":  # its splits are lists inside the devkit, not folders
        raise ConfigError(f"{path} is the VOC2007 devkit (voc_devkit), which is evaluated zero-shot only (voc2007: "
                          f"single-label object crops, voc2007_multilabel: multi-label mAP); use --task "
                          f"zeroshot_classification")
    no_train_split = _split_source(path, opts.train_split) == test_source
    if no_train_split and opts.lp_train_fraction is None:
        raise ConfigError(f"{path} has no {opts.train_split!r} split apart from the {opts.split!r} images, so the "
                          f"linear probe would train on its test set; point --train-split at a real split, or pass "
                          f"--lp-train-fraction F to train on a seeded, stratified part F of the images and test "
                          f"on the rest")
    if opts.val_split and _split_source(path, opts.val_split) == test_source:
        raise ConfigError(f"{path}: --val-split {opts.val_split} is the {opts.split!r} images themselves, so the "
                          f"weight decay would be tuned on the test set; name a split of its own, or use "
                          f"--val-proportion to hold out part of the training images")
    return no_train_split


def _linear_probe(model, name: str, path: Path, transform: Transform, opts: EvalOptions,
                  cache_tag: str) -> dict[str, float]:
    skipped: list[str] = []

    def load(split: str):
        data = load_classification(path, transform, dataset=name, split=split)
        if data.multilabel_targets is not None:
            raise ConfigError(f"{path} is a multi-label dataset ({data.layout}); the linear probe fits "
                              f"single-label classifiers, so evaluate it with --task zeroshot_classification")
        return data

    def features(split: str, data=None):
        data = data or load(split)
        # a prefixed name (wds/vtab/cifar10) must not become sub-folders of the cache
        cache_name = f"{name}_{split}_{cache_tag}.pt".replace("/", "_")
        cache = Path(opts.feature_cache) / cache_name if opts.feature_cache else None
        loader = image_loader(data.dataset, opts.batch_size, opts.workers)
        return cached_features(model, loader, cache, desc=split, device=opts.device, amp=opts.amp,
                               skipped=skipped), len(data.classnames)

    no_train_split = check_linear_probe_splits(path, opts)
    test_data = load(opts.split)
    split_info = {}
    if no_train_split:
        (x, y), num_classes = features(opts.split, test_data)
        train_idx, test_idx = stratified_split(y, opts.lp_train_fraction, seed=opts.seed)
        if len(test_idx) == 0:
            raise DatasetError(f"{path}: every class has a single image, so none is left to test on with "
                               f"--lp-train-fraction {opts.lp_train_fraction}")
        train, test = (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])
        # recorded with the metrics: this is not the official protocol's number
        split_info = {"lp_train_fraction": opts.lp_train_fraction, "lp_num_train": len(train_idx),
                      "lp_num_test": len(test_idx)}
    else:
        train_data = load(opts.train_split)
        check_same_classes(train_data, test_data, path, (opts.train_split, opts.split))
        (train, num_classes), (test, _) = features(opts.train_split, train_data), features(opts.split, test_data)
    val = None
    if opts.val_split:
        val_data = load(opts.val_split)
        check_same_classes(val_data, test_data, path, (opts.val_split, opts.split))
        val = features(opts.val_split, val_data)[0]
    metrics = linear_probe(train, test, num_classes, val=val, val_proportion=opts.val_proportion,
                           lr=opts.lp_lr, epochs=opts.lp_epochs, batch_size=opts.batch_size,
                           seed=opts.seed, device=opts.device)
    metrics.update(split_info)
    metrics["num_skipped_files"] = len(skipped)
    return metrics


def headline(task: str, metrics: dict[str, float]) -> float:
    """The number the paper reports for a task (used to pick the better transform)."""
    if task == "zeroshot_retrieval":
        return mean_recall(metrics)
    if task == "video_classification":
        return metrics.get("score", float("nan"))
    if task == "linear_probe":
        return metrics.get("lp_acc1", float("nan"))
    if "acc1" not in metrics and "mean_average_precision" in metrics:  # multi-label sets (VOC2007)
        return metrics["mean_average_precision"]
    return metrics.get("acc1", float("nan"))


def evaluate(model, tokenizer, task: str, name: str, path: Path,
             transform_factory: Callable[[str], Transform], transforms: list[str],
             opts: EvalOptions) -> tuple[dict[str, float], dict]:
    """Run a task with each transform in ``transforms``; returns the metrics of the best one (the paper's
    choice, Table 14) and extras for the result file (the per-transform metrics and which one won)."""
    by_transform = {}
    for mode in transforms:
        if mode not in TRANSFORMS:
            raise ConfigError(f"unknown image transform {mode!r}; choose from {', '.join(TRANSFORMS)} or both")
        by_transform[mode] = run_task(model, tokenizer, task, name, path, transform_factory(mode), opts,
                                      cache_tag=f"{opts.cache_tag}_{mode}")
    best = max(by_transform, key=lambda m: (-math.inf if math.isnan(headline(task, by_transform[m]))
                                            else headline(task, by_transform[m])))
    extras = {"transform": best}
    if len(by_transform) > 1:
        extras["metrics_by_transform"] = by_transform
    if task == "video_classification":
        extras["num_frames"] = opts.num_frames
    return by_transform[best], extras


def rank_share(items: list, rank: int | None = None, world: int | None = None) -> list:
    """This process's share of a sweep under torchrun (``RANK``/``WORLD_SIZE``): every world-th item."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
    return items[rank::world]
