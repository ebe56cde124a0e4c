"""``evaclip eval``: zero-shot classification / retrieval / video and linear probe on datasets on disk, with
one CLIP_benchmark-style JSON per (model, dataset, task); ``evaclip eval report RESULTS_DIR`` builds the
paper's tables.

    evaclip eval --model EVA02-CLIP-B-16 --pretrained ckpt.pt --task zeroshot_classification \\
        --dataset imagenet1k cifar10 --dataset-root /data/{dataset} --output results/{dataset}_{model}_{task}.json
    evaclip eval report results/
"""
from __future__ import annotations

import argparse
import os
import sys

from evaclip.errors import ConfigError

# what --output templates may use (CLIP_benchmark's placeholders; see results.output_path)

TASK_DEFAULT_TRANSFORMS = {  # the paper's protocol (Table 14): best of both; retrieval uses direct resize
    "zeroshot_classification": "both", "video_classification": "both",
    "zeroshot_retrieval": "squash", "linear_probe": "shortest",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from evaclip.eval.linear_probe import BATCH_SIZE, EPOCHS, LR
    from evaclip.eval.results import DEFAULT_OUTPUT, OUTPUT_PLACEHOLDERS
    from evaclip.eval.runner import TASKS

    parser.description = ("Zero-shot classification / retrieval / video and linear probe on datasets on disk, one "
                          "CLIP_benchmark-style result JSON per dataset. The linear probe follows CLIP_benchmark's "
                          "protocol by default (AdamW, lr 0.1, 10 epochs, batch 64, no weight-decay search) and "
                          "writes lp_acc1, lp_acc5, lp_mean_per_class_recall.")

    parser.add_argument("action", nargs="?", choices=["run", "report"], default="run",
                        help="run an evaluation (default) or 'report RESULTS_DIR' to build tables")
    parser.add_argument("results_dir", nargs="?", help="with 'report': the folder of result JSON files")
    parser.add_argument("--model", help="model name or config JSON (see `evaclip models`)")
    parser.add_argument("--pretrained", help="checkpoint file of the model's weights")
    parser.add_argument("--task", choices=TASKS, default="zeroshot_classification")
    parser.add_argument("--dataset", nargs="+", help="dataset name(s) (with --dataset-root) or path(s); the "
                        "collections table2 (27 image sets), robustness, table5 (video), table3 (retrieval) expand")
    parser.add_argument("--dataset-root", help="folder holding the datasets; may contain {dataset} (name without wds/) or "
                        "{dataset_cleaned} (with / as -), as in CLIP_benchmark")
    parser.add_argument("--split", default="test")
    parser.add_argument("--train-split", default="train", help="linear probe: training split")
    parser.add_argument("--val-split", help="linear probe: validation split for the weight-decay search")
    parser.add_argument("--val-proportion", type=float, default=None,
                        help="linear probe: part of train (in (0, 1)) held out to search the weight decay when "
                             "there is no val split (default: no search, weight decay 0, as CLIP_benchmark)")
    parser.add_argument("--templates", help="prompt templates: .txt (one per line, {c} = class) or .json")
    parser.add_argument("--classnames", help="class names: .txt (one per line, in label order) or .json")
    parser.add_argument("--output", default=DEFAULT_OUTPUT,
                        help=f"result file or template with {' '.join('{%s}' % p for p in OUTPUT_PLACEHOLDERS)} "
                             f"(default {DEFAULT_OUTPUT})")
    parser.add_argument("--overwrite", action="store_true", help="re-run jobs whose result file exists "
                        "(by default a sweep skips them, so it can be resumed)")
    parser.add_argument("--image-transform", choices=["squash", "shortest", "both"],
                        help="squash = direct resize (†), shortest = resize + centre crop (*), both = report "
                             "both and keep the best (default: both; squash for retrieval)")
    parser.add_argument("--num-frames", type=int, default=1, help="video: frames per video (1 = middle frame)")
    parser.add_argument("--recall-k", type=int, nargs="+", default=[1, 5, 10], help="retrieval: the k of recall@k")
    parser.add_argument("--feature-cache", help="linear probe: folder to cache image features in")
    parser.add_argument("--lp-epochs", type=int, default=EPOCHS,
                        help="linear probe: training epochs (default %(default)s, CLIP_benchmark's protocol)")
    parser.add_argument("--lp-lr", type=float, default=LR,
                        help="linear probe: AdamW learning rate, cosine schedule (default %(default)s, "
                             "CLIP_benchmark's protocol)")
    parser.add_argument("--lp-train-fraction", type=float, metavar="F",
                        help="linear probe on a dataset without a train split: train on a seeded, stratified "
                             "part F (in (0, 1)) of its images and test on the disjoint rest, recorded in the "
                             "result (default: refuse, since training on the test images inflates the score)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                        help="images per forward pass, and the linear probe's training batch (default %(default)s, "
                             "CLIP_benchmark's protocol)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="data loader processes (default: 4, or the CPU count if smaller)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK if available)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="weight precision (inputs are cast to it; --amp adds bf16 autocast)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--allow-nonfinite", action="store_true",
                        help="load a checkpoint with NaN/inf weights instead of refusing it; every prediction of "
                             "such a model then counts as a miss")


def _report(args) -> int:
    from evaclip.eval.results import write_report

    if not args.results_dir:
        raise ConfigError("usage: evaclip eval report RESULTS_DIR")
    for path in write_report(args.results_dir):
        print(path)
    return 0


def _device(requested: str | None) -> str:
    import os

    import torch

    from evaclip.eval.features import resolve_device
    if requested or not torch.cuda.is_available():
        return resolve_device(requested)
    # Several ranks on fewer GPUs (e.g. a CPU-sized sweep split over one GPU) share them round-robin.
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"


def _check_values(args) -> None:
    """Refuse values that would be silently odd (or crash late), before any data or model is touched."""
    import math

    if args.num_frames < 1 or args.batch_size < 1 or args.workers < 0:
        raise ConfigError("--num-frames and --batch-size must be >= 1 and --workers >= 0")
    if any(k < 1 for k in args.recall_k):
        raise ConfigError(f"--recall-k {' '.join(map(str, args.recall_k))}: every k must be >= 1 "
                          f"(recall@k counts the k best candidates)")
    if args.lp_epochs < 1:
        raise ConfigError(f"--lp-epochs {args.lp_epochs}: the linear probe needs at least 1 epoch")
    if not (math.isfinite(args.lp_lr) and args.lp_lr > 0):
        raise ConfigError(f"--lp-lr {args.lp_lr}: the learning rate must be a finite number > 0 (default 0.1)")
    for flag, value in (("--val-proportion", args.val_proportion), ("--lp-train-fraction", args.lp_train_fraction)):
        if value is not None and not 0 < value < 1:
            raise ConfigError(f"{flag} {value}: must be a fraction strictly between 0 and 1")
    if args.val_proportion is not None and args.val_split:
        raise ConfigError("--val-split and --val-proportion both choose the weight-decay search's validation "
                          "images; give one of them")
    from evaclip.eval.results import check_output_template
    check_output_template(args.output)


def run(args) -> int:
    if args.action == "report":
        return _report(args)
    if not args.model or not args.dataset:
        raise ConfigError("evaclip eval needs --model and --dataset (or: evaclip eval report RESULTS_DIR)")
    _check_values(args)
    import evaclip
    from evaclip.eval.catalog import expand_collections
    from evaclip.eval.features import nonfinite_weights, poison_features
    from evaclip.eval.results import output_path, write_result
    from evaclip.eval.runner import EvalOptions, check_linear_probe_splits, evaluate, rank_share, resolve_dataset
    from evaclip.outputs import check_output
    from evaclip.transforms import image_transform

    device = _device(args.device)
    opts = EvalOptions(split=args.split, train_split=args.train_split, val_split=args.val_split,
                       val_proportion=args.val_proportion or 0.0, classnames_file=args.classnames,
                       templates_file=args.templates, batch_size=args.batch_size, workers=args.workers,
                       device=device, amp=args.amp, recall_k=tuple(args.recall_k), num_frames=args.num_frames,
                       feature_cache=args.feature_cache, lp_epochs=args.lp_epochs, lp_lr=args.lp_lr,
                       lp_train_fraction=args.lp_train_fraction,
                       cache_tag=f"{args.model}_{args.pretrained or 'none'}".replace("/", "_"))
    transforms = args.image_transform or TASK_DEFAULT_TRANSFORMS[args.task]
    transforms = ["squash", "shortest"] if transforms == "both" else [transforms]
    jobs = []
    for dataset in expand_collections(args.dataset):
        name, path = resolve_dataset(dataset, args.dataset_root)
        out = output_path(args.output, name, args.model, args.pretrained, args.task,
                          num_frames=args.num_frames if args.task == "video_classification" else None)
        # Before any model is built: a symlink/FIFO/device is refused even with --overwrite, and an
        # unwritable folder or a path under a file is found now rather than after the evaluation.
        check_output(out, overwrite=None, what="--output")
        if out.exists() and not args.overwrite:
            print(f"skip {name}: {out} exists", file=sys.stderr)
            continue
        if args.task == "linear_probe":
            check_linear_probe_splits(path, opts)
        jobs.append((name, path, out))
    jobs = rank_share(jobs)
    if not jobs:
        return 0
    model = evaclip.create_model(args.model, pretrained=args.pretrained, device=device, precision=args.precision,
                                 allow_nonfinite=args.allow_nonfinite)
    model.eval()
    # Checked after the precision cast too: a finite fp32 weight above 65504 is inf in fp16.
    bad = nonfinite_weights(model)
    if bad:
        total = sum(1 for _ in model.parameters()) + sum(1 for _ in model.buffers())
        print(f"evaclip eval: warning: {len(bad)} of {total} weight tensors hold NaN or inf (first: {bad[0]}); "
              f"the model is broken, so every prediction counts as a miss", file=sys.stderr)
        poison_features(model)
    tokenizer = evaclip.get_tokenizer(args.model)
    size = model.visual.image_size

    def transform_factory(mode: str):
        return image_transform(size, False, resize_mode=mode)

    for name, path, out in jobs:
        metrics, extras = evaluate(model, tokenizer, args.task, name, path, transform_factory, transforms, opts)
        by_transform = extras.get("metrics_by_transform", {"": metrics})
        skipped = max(int(m.get("num_skipped_files", 0)) for m in by_transform.values())
        if skipped:
            print(f"evaclip eval: warning: {name}: skipped {skipped} file(s) that could not be decoded; the metrics "
                  f"leave them out (num_skipped_files in {out})", file=sys.stderr)
        write_result(out, name, args.model, args.pretrained, args.task, metrics, **extras)
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        print(f"{name} [{extras['transform']}]: {shown} -> {out}")
    return 0
