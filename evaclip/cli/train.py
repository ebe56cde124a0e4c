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
    from evaclip.train.recipes import get_recipe, list_recipes

    if args.list or not args.recipe:
        for name, doc in list_recipes().items():
            print(f"{name:28s} {doc}")
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
