"""``evaclip plan MODEL --gpus N --gpu-memory GiB ...``: memory and time plan for training on a GPU cluster.

Example (the paper's EVA-CLIP-18B run)::

    evaclip plan EVA-CLIP-18B --gpus 360 --gpu-memory 40 --global-batch 108000 --patch-dropout 0.5 \\
        --grad-checkpointing --peak-tflops 312 --mfu 0.4 --samples 6e9
"""
from __future__ import annotations

import argparse
import json
import math

from evaclip.plan.memory import OPTIMIZER_BYTES
from evaclip.plan.planner import DEFAULT_RESERVE_GB, PlanRequest, format_plan, make_plan


def _count(text: str) -> int:
    """Integers that may be written like 108000, 108k or 1.08e5."""
    try:
        value = float(text[:-1]) * 1000 if text.lower().endswith("k") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count like 108000, 108k or 1.08e5, got {text!r}") from None
    if not math.isfinite(value) or value != int(value):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a model name (see `evaclip models`), a JSON config path, or a training "
                                      "recipe (`evaclip train --list`: its model, resolution and global batch)")
    parser.add_argument("--gpus", type=int, required=True, help="number of GPUs (data-parallel ranks)")
    parser.add_argument("--gpu-memory", type=float, required=True, metavar="GiB",
                        help="memory per GPU as sold, in GiB: 40 for an A100-40GB, 80 for an H100")
    parser.add_argument("--global-batch", type=_count, default=None, help="image-text pairs per step, all GPUs")
    parser.add_argument("--patch-dropout", type=float, default=0.0, help="fraction of image patches dropped")
    parser.add_argument("--grad-checkpointing", action="store_true", help="recompute block activations")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak per GPU (A100: 312)")
    parser.add_argument("--mfu", type=float, default=None, help="model FLOPs utilisation to assume, e.g. 0.4")
    parser.add_argument("--samples", type=float, default=None, help="pairs to train on, e.g. 6e9")
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZER_BYTES), default="lamb")
    parser.add_argument("--reserve-gb", type=float, default=DEFAULT_RESERVE_GB,
                        help="GB per GPU kept for the CUDA context, NCCL buffers and fragmentation")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def run(args: argparse.Namespace) -> int:
    request = PlanRequest(model=args.model, gpus=args.gpus, gpu_memory_gib=args.gpu_memory,
                          global_batch=args.global_batch, patch_dropout=args.patch_dropout,
                          grad_checkpointing=args.grad_checkpointing, peak_tflops=args.peak_tflops,
                          mfu=args.mfu, samples=args.samples, optimizer=args.optimizer,
                          reserve_gb=args.reserve_gb)
    plan = make_plan(request)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else format_plan(plan))
    return 0
