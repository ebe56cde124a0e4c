"""``evaclip index SOURCE --model M --pretrained P --out DIR``: build or update a semantic search index.

SOURCE is a folder of images (recursive), a CSV (path,caption) or webdataset shards (brace patterns). A re-run
embeds only new or changed files and drops removed ones; an interrupted run resumes; under torchrun the ranks
split the source. See :mod:`evaclip.search.build`.
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Embed a collection of images with an EVA-CLIP model into a search index folder "
                          "(embeddings, Parquet metadata, FAISS index, model record) for `evaclip serve`. "
                          "Re-running on the same --out embeds only new or changed images.")
    parser.add_argument("source", metavar="SOURCE",
                        help="folder of images (recursive; .txt sidecars are captions), a CSV/TSV with "
                             "path and caption columns, or webdataset shards (/data/shard-{000..099}.tar)")
    parser.add_argument("--out", required=True, metavar="INDEX_DIR", help="index folder (created or updated)")
    parser.add_argument("--model", default=None,
                        help="model name or JSON config (required for a new index; an existing one remembers it)")
    parser.add_argument("--pretrained", default=None, help="checkpoint file; without it the weights are random")
    parser.add_argument("--root", default=None,
                        help="folder the image paths are relative to and confined to (default: the folder, the "
                             "CSV's folder, or the shards' common folder)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--part-size", type=int, default=4096,
                        help="images per committed part: the most work an interruption loses (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=4, help="image decoding threads (default: %(default)s)")
    parser.add_argument("--index-type", default="auto", choices=["auto", "flat", "ivf"],
                        help="FAISS index: exact (flat), IVF, or auto = exact up to 64 MiB of vectors "
                             "(default: %(default)s)")
    parser.add_argument("--device", default="auto",
                        help="torch device; auto = cuda (cuda:LOCAL_RANK under torchrun) if available, else cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="weight precision (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from evaclip.search.build import build_index
    if args.model is not None and args.pretrained is None:
        print("evaclip index: warning: no --pretrained checkpoint: the model has random weights, which no later "
              "run can rebuild, so `evaclip serve` will refuse this index", file=sys.stderr)
    report = build_index(args.source, args.out, model=args.model, pretrained=args.pretrained, root=args.root,
                         batch_size=args.batch_size, device=args.device, precision=args.precision,
                         part_size=args.part_size, index_type=args.index_type, workers=args.workers)
    from evaclip.train.distributed import get_rank
    if get_rank() == 0:
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(report.skipped.items())) or "none"
        print(f"embedded {report.embedded} new images in {report.seconds:.1f} s ({report.images_per_s:.1f} "
              f"images/s); removed {report.removed} stale rows; skipped: {skipped}")
        print(f"index {report.out}: {report.total} images, {report.index.get('type')} FAISS index")
    return 0
