"""``evaclip eval``: zero-shot classification / retrieval / video and linear probe on datasets on disk, with
one CLIP_benchmark-style JSON per (model, dataset, task); ``evaclip eval report RESULTS_DIR`` builds the
paper's tables.

    evaclip eval --model EVA02-CLIP-B-16 --pretrained ckpt.pt --task zeroshot_classification \\
        --dataset imagenet1k cifar10 --dataset-root /data/{dataset} --output results/{dataset}_{model}_{task}.json
    evaclip eval report results/
"""
from __future__ import annotations

import argparse
import sys

from evaclip.errors import ConfigError

TASK_DEFAULT_TRANSFORMS = {  # the paper's protocol (Table 14): best of both; retrieval uses direct resize
    "zeroshot_classification": "both", "video_classification": "both",
    "zeroshot_retrieval": "squash", "linear_probe": "shortest",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from evaclip.eval.results import DEFAULT_OUTPUT
    from evaclip.eval.runner import TASKS

    parser.add_argument("action", nargs="?", choices=["run", "report"], default="run",
                        help="run an evaluation (default) or 'report RESULTS_DIR' to build tables")
    parser.add_argument("results_dir", nargs="?", help="with 'report': the folder of result JSON files")
    parser.add_argument("--model", help="model name or config JSON (see `evaclip models`)")
    parser.add_argument("--pretrained", help="checkpoint file of the model's weights")
    parser.add_argument("--task", choices=TASKS, default="zeroshot_classification")
    parser.add_argument("--dataset", nargs="+", help="dataset name(s) (with --dataset-root) or path(s); the "
                        "collections table2 (27 image sets), robustness, table5 (video), table3 (retrieval) expand")
    parser.add_argument("--dataset-root", help="folder holding the datasets; may contain {dataset}")
    parser.add_argument("--split", default="test")
    parser.add_argument("--train-split", default="train", help="linear probe: training split")
    parser.add_argument("--val-split", help="linear probe: validation split for the weight-decay search")
    parser.add_argument("--val-proportion", type=float, default=0.2,
                        help="linear probe: part of train held out for the search when there is no val split")
    parser.add_argument("--templates", help="prompt templates: .txt (one per line, {c} = class) or .json")
    parser.add_argument("--classnames", help="class names: .txt (one per line, in label order) or .json")
    parser.add_argument("--output", default=DEFAULT_OUTPUT,
                        help=f"result file or template with {{dataset}} {{model}} {{pretrained}} {{task}} "
                             f"{{language}} (default {DEFAULT_OUTPUT})")
    parser.add_argument("--overwrite", action="store_true", help="re-run jobs whose result file exists "
                        "(by default a sweep skips them, so it can be resumed)")
    parser.add_argument("--image-transform", choices=["squash", "shortest", "both"],
                        help="squash = direct resize (†), shortest = resize + centre crop (*), both = report "
                             "both and keep the best (default: both; squash for retrieval)")
    parser.add_argument("--num-frames", type=int, default=1, help="video: frames per video (1 = middle frame)")
    parser.add_argument("--recall-k", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--feature-cache", help="linear probe: folder to cache image features in")
    parser.add_argument("--lp-epochs", type=int, default=20)
    parser.add_argument("--lp-lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK if available)")
    parser.add_argument("--precision", default="fp32", help="model precision passed to create_model")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")


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
    if requested:
        return requested
    if not torch.cuda.is_available():
        return "cpu"
    # Several ranks on fewer GPUs (e.g. a CPU-sized sweep split over one GPU) share them round-robin.
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"


def run(args) -> int:
    if args.action == "report":
        return _report(args)
    if not args.model or not args.dataset:
        raise ConfigError("evaclip eval needs --model and --dataset (or: evaclip eval report RESULTS_DIR)")
    if args.num_frames < 1 or args.batch_size < 1 or args.workers < 0:
        raise ConfigError("--num-frames and --batch-size must be >= 1 and --workers >= 0")
    import evaclip
    from evaclip.eval.benchmarks import expand_collections
    from evaclip.eval.results import output_path, write_result
    from evaclip.eval.runner import EvalOptions, evaluate, rank_share, resolve_dataset
    from evaclip.transforms import image_transform

    transforms = args.image_transform or TASK_DEFAULT_TRANSFORMS[args.task]
    transforms = ["squash", "shortest"] if transforms == "both" else [transforms]
    jobs = []
    for dataset in expand_collections(args.dataset):
        name, path = resolve_dataset(dataset, args.dataset_root)
        out = output_path(args.output, name, args.model, args.pretrained, args.task,
                          num_frames=args.num_frames if args.task == "video_classification" else None)
        if out.exists() and not args.overwrite:
            print(f"skip {name}: {out} exists", file=sys.stderr)
            continue
        jobs.append((name, path, out))
    jobs = rank_share(jobs)
    if not jobs:
        return 0
    device = _device(args.device)
    model = evaclip.create_model(args.model, pretrained=args.pretrained, device=device, precision=args.precision)
    model.eval()
    tokenizer = evaclip.get_tokenizer(args.model)
    size = model.visual.image_size

    def transform_factory(mode: str):
        return image_transform(size, False, resize_mode=mode)

    opts = EvalOptions(split=args.split, train_split=args.train_split, val_split=args.val_split,
                       val_proportion=args.val_proportion, classnames_file=args.classnames,
                       templates_file=args.templates, batch_size=args.batch_size, workers=args.workers,
                       device=device, amp=args.amp, recall_k=tuple(args.recall_k), num_frames=args.num_frames,
                       feature_cache=args.feature_cache, lp_epochs=args.lp_epochs, lp_lr=args.lp_lr,
                       cache_tag=f"{args.model}_{args.pretrained or 'none'}".replace("/", "_"))
    for name, path, out in jobs:
        metrics, extras = evaluate(model, tokenizer, args.task, name, path, transform_factory, transforms, opts)
        write_result(out, name, args.model, args.pretrained, args.task, metrics, **extras)
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        print(f"{name} [{extras['transform']}]: {shown} -> {out}")
    return 0
