"""``evaclip convert IN OUT``: rewrite a checkpoint of any official layout (or the Hugging Face port's, file or
sharded folder) as a safetensors file.

The input is read safely (safetensors, or ``torch.load(weights_only=True)``), unwrapped (``module`` /
``model`` / ``state_dict``, DeepSpeed ``module.`` prefixes), normalised to the training layout, and written in
the requested layout. RoPE frequency tables (rebuilt from the config) and a MIM model's ``mask_token`` /
``lm_head`` are left out; the command says so. OUT is checked before IN is read (an existing file needs
``--overwrite``; a symlink, FIFO or device is never replaced) and written atomically through
:mod:`evaclip.outputs`. Weights with NaN/inf values are refused unless ``--allow-nonfinite``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from evaclip.errors import CheckpointError

LAYOUTS = ("training", "flat", "vision")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Convert a checkpoint (.pt/.bin/.safetensors in the training, flat or vision-only "
                          "layout, plain or wrapped as DeepSpeed/trainer files, or the Hugging Face port's "
                          "layout, also as a sharded model folder) to a safetensors file.")
    parser.add_argument("input", type=Path, metavar="IN",
                        help="checkpoint file to read, or a Hugging Face model folder")
    parser.add_argument("output", type=Path, metavar="OUT", help="safetensors file to write (.safetensors)")
    parser.add_argument("--layout", choices=LAYOUTS, default="training",
                        help="key layout of OUT: training (visual.*, text.*, logit_scale), flat (visual.* + "
                             "OpenAI-style text keys, as released) or vision (the vision tower, unprefixed) "
                             "(default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (a regular file)")
    parser.add_argument("--allow-nonfinite", action="store_true",
                        help="convert weights that contain NaN or inf values (refused by default)")


def _summarise(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit})" if len(keys) > limit else "")


def run(args: argparse.Namespace) -> int:
    from evaclip.models.checkpoint import export_state_dict, load_state_dict, save_file
    from evaclip.outputs import check_output
    if args.output.suffix != ".safetensors":
        raise CheckpointError(f"OUT {args.output}: name the output .safetensors (it is written as safetensors)")
    if args.output.exists() and args.input.exists() and args.output.resolve() == args.input.resolve():
        raise CheckpointError(f"OUT is the same file as IN ({args.input}); choose another output path")
    check_output(args.output, overwrite=args.overwrite, what="OUT")  # before the (possibly long) read
    sd, layout, dropped = load_state_dict(args.input, allow_nonfinite=args.allow_nonfinite)
    n_params = sum(v.numel() for v in sd.values())
    print(f"read {args.input}: {layout} layout, {len(sd)} tensors, {n_params:,} values")
    if dropped:
        print(f"  ignored {len(dropped)} key(s) (rebuilt from the config or not part of a CLIP): "
              f"{_summarise(dropped)}")
    has_text = any(k.startswith("text.") for k in sd)
    if args.layout != "vision" and not has_text:
        raise CheckpointError(f"{args.input} holds only a vision tower; convert it with --layout vision")
    out = export_state_dict(sd, args.layout)
    if not out:
        raise CheckpointError(f"{args.input} has no vision-tower keys to write in the vision layout")
    save_file(out, args.output, metadata={"format": "pt", "evaclip_layout": args.layout})
    size_mb = args.output.stat().st_size / 2**20
    print(f"wrote {args.output}: {args.layout} layout, {len(out)} tensors, {size_mb:.1f} MiB")
    return 0
