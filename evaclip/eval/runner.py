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
from evaclip.eval import benchmarks
from evaclip.eval.datasets import Transform, load_classification, load_retrieval, make_loader, read_lines
from evaclip.eval.linear_probe import cached_features, linear_probe
from evaclip.eval.metrics import mean_recall
from evaclip.eval.retrieval import evaluate_zeroshot_retrieval
from evaclip.eval.video import evaluate_video_classification, load_video_folder
from evaclip.eval.zeroshot import evaluate_zeroshot_classification

TASKS = ("zeroshot_classification", "zeroshot_retrieval", "video_classification", "linear_probe")
TRANSFORMS = {"squash": "direct resize to a square (†)", "shortest": "shortest-side resize + centre crop (*)"}


@dataclass
class EvalOptions:
    """Everything a job needs besides the model; defaults follow CLIP_benchmark and the paper."""

    split: str = "test"
    train_split: str = "train"
    val_split: str | None = None
    val_proportion: float = 0.2
    classnames_file: str | None = None
    templates_file: str | None = None
    batch_size: int = 64
    workers: int = 4
    device: str = "cpu"
    amp: bool = False
    recall_k: tuple[int, ...] = (1, 5, 10)
    num_frames: int = 1
    feature_cache: str | None = None  # linear probe: folder for cached features
    lp_epochs: int = 20
    lp_lr: float = 1e-3
    cache_tag: str = "model"  # linear probe: names the cached feature files (model + pretrained)


def resolve_dataset(dataset: str, dataset_root: str | None) -> tuple[str, Path]:
    """(benchmark name, path) for ``--dataset NAME_OR_PATH [--dataset-root DIR]``; a root may use
    ``{dataset}`` (CLIP_benchmark's template), else ``ROOT/NAME`` is used when it exists, else ``ROOT``."""
    if dataset_root is None:
        path = Path(dataset).expanduser()
        if not path.exists():
            raise DatasetError(f"{dataset!r} is not an existing path; pass the dataset folder, or a name with "
                               f"--dataset-root DIR (nothing is ever downloaded)")
        return benchmarks.canonical_name(path.stem if path.is_file() else path.name), path
    name = benchmarks.canonical_name(dataset)
    root = dataset_root.replace("{dataset}", dataset).replace("{dataset_cleaned}", dataset.replace("/", "-"))
    path = Path(root).expanduser()
    if "{dataset" not in dataset_root and (path / dataset).exists():
        path = path / dataset
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
        templates = own_templates or benchmarks.default_templates(name)
    return classnames, templates


def run_task(model, tokenizer, task: str, name: str, path: Path, transform: Transform,
             opts: EvalOptions, cache_tag: str = "model") -> dict[str, float]:
    """Metrics of one task on one dataset with one image transform."""
    kw = dict(device=opts.device, amp=opts.amp)
    if task == "zeroshot_classification":
        data = load_classification(path, transform, dataset=name, split=opts.split)
        classnames, templates = _classnames_templates(name, data.classnames, data.templates, opts)
        loader = make_loader(data.dataset, opts.batch_size, opts.workers)
        return evaluate_zeroshot_classification(model, tokenizer, loader, classnames, templates, **kw)
    if task == "zeroshot_retrieval":
        data = load_retrieval(path, transform, split=opts.split)
        return evaluate_zeroshot_retrieval(model, tokenizer, data, batch_size=opts.batch_size,
                                           workers=opts.workers, ks=opts.recall_k, **kw)
    if task == "video_classification":
        split_path = path / opts.split if (path / opts.split).is_dir() else path
        dataset, own_names = load_video_folder(split_path, transform, dataset=name, num_frames=opts.num_frames)
        classnames, templates = _classnames_templates(name, own_names, None, opts)
        return evaluate_video_classification(model, tokenizer, dataset, classnames, templates, dataset_name=name,
                                             batch_size=max(1, opts.batch_size // opts.num_frames),
                                             workers=opts.workers, **kw)
    if task == "linear_probe":
        def features(split: str):
            data = load_classification(path, transform, dataset=name, split=split)
            if data.multilabel_targets is not None:
                raise ConfigError(f"{path} is a multi-label dataset ({data.layout}); the linear probe fits "
                                  f"single-label classifiers, so evaluate it with --task zeroshot_classification")
            cache = (Path(opts.feature_cache) / f"{name}_{split}_{cache_tag}.pt"
                     if opts.feature_cache else None)
            loader = make_loader(data.dataset, opts.batch_size, opts.workers)
            return cached_features(model, loader, cache, desc=split, **kw), len(data.classnames)
        (train, num_classes), (test, _) = features(opts.train_split), features(opts.split)
        val = features(opts.val_split)[0] if opts.val_split else None
        return linear_probe(train, test, num_classes, val=val, val_proportion=opts.val_proportion,
                            lr=opts.lp_lr, epochs=opts.lp_epochs, batch_size=max(opts.batch_size, 256),
                            device=opts.device)
    raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def headline(task: str, metrics: dict[str, float]) -> float:
    """The number the paper reports for a task (used to pick the better transform)."""
    if task == "zeroshot_retrieval":
        return mean_recall(metrics)
    if task == "video_classification":
        return metrics.get("score", float("nan"))
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
