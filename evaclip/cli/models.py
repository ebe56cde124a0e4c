"""``evaclip models``: the model configs with their parameter counts and forward GFLOPs per tower.

Parameters are counted on the meta device, so even EVA-CLIP-18B costs no memory; FLOPs come from the config
through :mod:`evaclip.models.flops`, the count the trainer's MFU and ``evaclip plan`` use (its tests hold it
to ``torch.utils.flop_counter``).
"""
from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass

import torch
from tqdm import tqdm

from evaclip.models.flops import model_flops

FLOPS_HELP = ("GFLOPs are counted from the config: matrix multiplications, convolutions and attention, a "
              "multiply-add counted as 2 FLOPs; norms, activations and embedding lookups are not counted (the "
              "convention of torch.utils.flop_counter). Per image at the model's image size; per text at the "
              "full context length, a Hugging Face text tower's encoder included.")


@dataclass
class ModelStats:
    name: str
    image_size: int
    vision_params: int
    text_params: int
    total_params: int  # includes logit_scale
    image_gflops: float | None
    text_gflops: float | None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("List the model configs: image size, parameters per tower and in total, and forward "
                          "GFLOPs per image and per text. " + FLOPS_HELP)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="model names or JSON config paths (default: every built-in config)")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count (parameters only)")


def tower_gflops(cfg) -> tuple[float, float]:
    """Forward GFLOPs per image and per text of a config (at inference: no patch dropout)."""
    flops = model_flops(cfg)
    return flops.vision / 1e9, (flops.text + flops.frozen_text) / 1e9


def model_stats(name: str, flops: bool = True) -> ModelStats:
    """Parameter counts and forward GFLOPs of one config, computed on the meta device and from the config, so
    even a config deeper or wider than any machine could hold is counted, not built."""
    import evaclip
    from evaclip.models.clip import build_text_tower
    from evaclip.models.factory import tower_sizes
    cfg = evaclip.get_model_config(name)
    vision, text = tower_sizes(cfg, buffers=False)
    if text is None:  # a Hugging Face text tower: its size is the local model's
        with torch.device("meta"):
            text = sum(p.numel() for p in build_text_tower(copy.deepcopy(cfg)).parameters())
    extra = 1 + (cfg.init_logit_bias is not None)  # logit_scale, logit_bias
    image_gflops, text_gflops = tower_gflops(cfg) if flops else (None, None)
    return ModelStats(name, cfg.vision_cfg.image_size, vision, text, vision + text + extra, image_gflops,
                      text_gflops)


def _millions(n: int) -> str:
    return f"{n / 1e6:,.2f}"


def _gflops(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.1f}" if x >= 100 else f"{x:.4g}"


def format_table(rows: list[ModelStats]) -> str:
    header = ["model", "image", "vision M", "text M", "total M", "GFLOPs/image", "GFLOPs/text"]
    cells = [[r.name, str(r.image_size), _millions(r.vision_params), _millions(r.text_params),
              _millions(r.total_params), _gflops(r.image_gflops), _gflops(r.text_gflops)] for r in rows]
    widths = [max(len(row[i]) for row in [header] + cells) for i in range(len(header))]
    lines = []
    for row in [header] + cells:
        # name left-aligned, numbers right-aligned
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import evaclip
    from evaclip.models.factory import tower_sizes
    names = args.names or evaclip.list_models()
    for name in args.names:  # fail on a bad name or an impossible size before doing any work
        tower_sizes(evaclip.get_model_config(name))
    rows = [model_stats(name, flops=not args.no_flops)
            for name in tqdm(names, desc="counting", unit="model", leave=False, disable=len(names) < 3)]
    print(format_table(rows))
    return 0
