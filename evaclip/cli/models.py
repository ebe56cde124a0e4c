"""``evaclip models``: the model configs with their parameter counts and forward GFLOPs per tower.

Everything is measured on the meta device, so even EVA-CLIP-18B costs no memory: parameters are counted from
the built modules, and FLOPs are counted by running forward passes under
``torch.utils.flop_counter.FlopCounterMode`` (meta tensors carry shapes, which is all a FLOP count needs).
Dispatching every op of a 64-block model through the counter is slow, and all blocks of a tower are the same,
so the count is taken on 1- and 2-block copies of each tower and extrapolated linearly in depth (exact).
"""
from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

FLOPS_HELP = ("GFLOPs are counted with torch.utils.flop_counter.FlopCounterMode during forward passes on "
              "the meta device (1- and 2-block copies of each tower, extrapolated to the full depth): matrix "
              "multiplications, convolutions and attention, a multiply-add counted as 2 FLOPs; norms, "
              "activations and embedding lookups are not counted. Per image at the model's image size; per "
              "text at the full context length.")


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


def forward_gflops(module: torch.nn.Module, example: torch.Tensor) -> float:
    """GFLOPs of one forward pass of ``module`` on ``example`` (both on the meta device)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(example)
    return counter.get_total_flops() / 1e9


def tower_gflops(cfg, depth: int | None = None) -> tuple[float, float]:
    """Forward GFLOPs per image and per text of a config (``depth`` blocks per tower, default the config's)."""
    import evaclip
    if depth is None:
        depth_v, depth_t = cfg.vision_cfg.layers, cfg.text_cfg.layers
        one, two = tower_gflops(cfg, 1), tower_gflops(cfg, 2)
        # f(L) = f(1) + (L - 1) * (f(2) - f(1)): every block costs the same
        text = None if one[1] is None else one[1] + (depth_t - 1) * (two[1] - one[1])
        return one[0] + (depth_v - 1) * (two[0] - one[0]), text
    cfg = copy.deepcopy(cfg)
    cfg.vision_cfg.layers = cfg.text_cfg.layers = depth
    model = evaclip.create_model(cfg, device="meta").eval()
    size = model.visual.image_size
    image = forward_gflops(model.visual, torch.empty(1, 3, size, size, device="meta"))
    if cfg.text_cfg.is_hf:  # a Hugging Face encoder is not counted here (its depth is not ours to vary)
        return image, None
    tokens = torch.empty(1, model.text.context_length, dtype=torch.long, device="meta")
    return image, forward_gflops(model.text, tokens)


def model_stats(name: str, flops: bool = True) -> ModelStats:
    """Parameter counts and forward GFLOPs of one config, computed on the meta device (from 1- and 2-block
    builds, so even a config deeper or wider than any machine could hold is counted, not built)."""
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
