"""``evaclip demo [--out DIR] [--quick] [--seeds 0,1,2]``: the whole weak-to-strong loop, end to end."""
from __future__ import annotations

import argparse
from pathlib import Path

from evaclip.errors import ConfigError

HELP = "the weak-to-strong demo on offline data, end to end"


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds expects comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds needs distinct integers such as 0,1,2, got {text!r}")
    return seeds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Prepare the offline data, train a small EVA-CLIP teacher, distil a larger EVA ViT "
                          "from it by masked image modeling, train the larger EVA-CLIP from that "
                          "initialisation and a from-scratch control at equal compute, continue the student on "
                          "images + video clips (and, the ablation, on images only), evaluate them and "
                          "write OUT/results.json, OUT/report.md and plots. Finished stages are skipped, so an "
                          "interrupted demo continues where it stopped.")
    parser.add_argument("--out", default="demo_out", help="output folder (default: %(default)s)")
    parser.add_argument("--data", default=None,
                        help="offline data folder (default: $EVACLIP_DATA, else ./data_cache/offline); built "
                             "there first if missing")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few minutes with tiny step counts")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, each a full run (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from evaclip_demo import DemoOptions, run_demo
    options = DemoOptions(out=Path(args.out), data_dir=Path(args.data) if args.data else None,
                          seeds=_seeds(args.seeds), quick=args.quick, progress=not args.no_progress)
    results = run_demo(options)
    s = results["summary"]
    def pm(stat) -> str:  # the spread only means something over several seeds
        return f"{stat['mean'] * 100:5.1f}" + (f" ± {stat['std'] * 100:.1f}" if stat["n"] > 1 else "")

    for m in ("teacher", "student", "control"):
        tux, noto = s[m]["metrics"]["zeroshot/tuxpaint/acc1"], s[m]["metrics"]["zeroshot/noto/acc1"]
        print(f"{m:8s} Tux Paint top-1 {pm(tux)}   Noto top-1 {pm(noto)}")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0
