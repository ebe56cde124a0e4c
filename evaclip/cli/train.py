"""``evaclip train RECIPE [key=value ...]``: the same command on a laptop or under torchrun."""
from __future__ import annotations

import argparse
import json
import logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", nargs="?", help="recipe name (see --list)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. steps=100 out_dir=runs/x optim.lr=1e-3 data.batch_size=32. "
                             "optim.lr=X scales every lr of the recipe (vision and text towers, logit scale) by X "
                             "over the recipe's optim.lr; optim.visual_lr / optim.text_lr set one tower's peak lr")
    parser.add_argument("--list", action="store_true", help="list the recipes and exit")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    from evaclip.errors import ConfigError
    from evaclip.train.config import apply_overrides
    from evaclip.train.recipes import get_recipe, recipe_table

    if args.list or not args.recipe:
        # Global batch and samples seen at the published run's GPU count (data.batch_size is per GPU).
        print(f"{'recipe':26s} {'source':32s} {'GPUs':>5s} {'batch':>8s} {'samples':>7s}  description")
        for row in recipe_table():
            gpus = str(row["gpus"]) if row["gpus"] else "-"
            batch = f"{row['global_batch']:,}" if row["global_batch"] else "-"
            seen = f"{row['samples_seen'] / 1e9:.2f}B" if row["samples_seen"] else "-"
            print(f"{row['recipe']:26s} {row['source']:32s} {gpus:>5s} {batch:>8s} {seen:>7s}  {row['doc']}")
        if not args.list:
            raise ConfigError("no recipe given; pick one of the recipes above: evaclip train RECIPE [key=value ...]")
        return 0
    for o in args.overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} is not key=value (e.g. steps=100)")
    cfg = apply_overrides(get_recipe(args.recipe), args.overrides)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import os

    from evaclip.train.trainer import train
    summary = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # the process group is gone by now: ask torchrun's variable
        print(json.dumps(summary, indent=2))
    return 0
