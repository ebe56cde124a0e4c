"""``evaclip convert IN OUT [--to FORMAT]``: rewrite a checkpoint of any layout (the training layout, the released
one, a vision-only MIM file, open_clip's EVA models, the Hugging Face port's file or sharded folder) as:

- ``safetensors`` (default): a safetensors file in evaclip's training layout, or the ``--layout`` asked for
  (``flat``: the released key names; ``vision``: the vision tower alone, unprefixed);
- ``official``: the released EVA-CLIP layout (``visual.*`` + OpenAI-style text keys, 0-d ``logit_scale``), as a
  ``.pt`` file the official code loads (or ``.safetensors``);
- ``open_clip``: open_clip's layout for its EVA models (timm trunk ``visual.trunk.*``, ``text.*``), as
  ``.bin``/``.pt`` (what its ``pretrained=`` loads) or ``.safetensors``;
- ``hf``: a Hugging Face port folder (``config.json`` + ``model.safetensors``); its config comes from ``--model``
  (a name, a JSON config or an HF folder), or from IN when IN is an HF folder.

The input is read safely (safetensors, or ``torch.load(weights_only=True)``), unwrapped, converted by the
layout's adapter (:mod:`evaclip.models.checkpoint.adapters`) and written by the target's. RoPE frequency tables
(rebuilt from the config) and a MIM model's ``mask_token`` / ``lm_head`` are left out; the command says so.
OUT is checked before IN is read (an existing file needs ``--overwrite``; a symlink, FIFO or device is never
replaced) and written atomically through :mod:`evaclip.outputs`. Weights with NaN/inf values are refused unless
``--allow-nonfinite``.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from evaclip.errors import CheckpointError
from evaclip.models.checkpoint import (adapter_named, check_hf_folder, load_checkpoint, load_state_dict, save_file,
                                       save_hf_folder, save_torch)
from evaclip.models.clip import CLIP
from evaclip.models.factory import get_model_config
from evaclip.models.hf_port import is_hf_folder
from evaclip.outputs import check_output

FORMATS = ("safetensors", "official", "open_clip", "hf")
LAYOUTS = ("training", "flat", "vision")
_TORCH_SUFFIXES = (".pt", ".bin", ".pth")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Convert a checkpoint (.pt/.bin/.safetensors in the training, released or vision-only "
                          "layout, plain or wrapped as DeepSpeed/trainer files, open_clip's EVA layout, or the "
                          "Hugging Face port's, also as a sharded model folder) to safetensors, the official "
                          "release layout, open_clip's layout or a Hugging Face port folder.")
    parser.add_argument("input", type=Path, metavar="IN",
                        help="checkpoint file to read, or a Hugging Face model folder")
    parser.add_argument("output", type=Path, metavar="OUT",
                        help="file to write (.safetensors; .pt/.bin for --to official/open_clip), or a folder for "
                             "--to hf")
    parser.add_argument("--to", choices=FORMATS, default="safetensors",
                        help="what to write: safetensors (evaclip's layout, see --layout), official (the released "
                             "EVA-CLIP layout), open_clip (open_clip's EVA models) or hf (a Hugging Face port "
                             "folder) (default: %(default)s)")
    parser.add_argument("--layout", choices=LAYOUTS, default=None,
                        help="with --to safetensors, the key layout of OUT: training (visual.*, text.*, "
                             "logit_scale), flat (visual.* + OpenAI-style text keys, as released) or vision (the "
                             "vision tower, unprefixed) (default: training)")
    parser.add_argument("--model", default=None,
                        help="with --to hf: the model (name, JSON config or HF folder) whose config.json to write; "
                             "the weights must fit it")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (a regular file)")
    parser.add_argument("--allow-nonfinite", action="store_true",
                        help="convert weights that contain NaN or inf values (refused by default)")


def _summarise(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit})" if len(keys) > limit else "")


def _check_arguments(args: argparse.Namespace) -> None:
    """Refuse a combination of options, or an OUT, that cannot work, before anything is read."""
    if args.layout is not None and args.to != "safetensors":
        raise CheckpointError(f"--layout applies to --to safetensors; --to {args.to} has its own layout")
    if args.model is not None and args.to != "hf":
        raise CheckpointError("--model applies to --to hf (the config.json to write); leave it out")
    if args.output.exists() and args.input.exists() and args.output.resolve() == args.input.resolve():
        raise CheckpointError(f"OUT is the same file as IN ({args.input}); choose another output path")
    suffix = args.output.suffix
    if args.to == "hf":
        if args.model is None and not is_hf_folder(args.input):
            raise CheckpointError("--to hf needs --model NAME (the model whose config.json to write), unless IN is "
                                  "a Hugging Face model folder")
        check_hf_folder(args.output, overwrite=args.overwrite)
        return
    if args.to == "safetensors" and suffix != ".safetensors":
        raise CheckpointError(f"OUT {args.output}: name the output .safetensors (it is written as safetensors)")
    if suffix not in (".safetensors",) + _TORCH_SUFFIXES:
        raise CheckpointError(f"OUT {args.output}: name the output .pt, .bin or .safetensors (the suffix chooses "
                              "the file format)")
    check_output(args.output, overwrite=args.overwrite, what="OUT")  # before the (possibly long) read


def _fits_model(sd: dict[str, torch.Tensor], model_arg, where: str):
    """The model config that ``model_arg`` names, after checking (on the meta device, nothing allocated) that
    the weights fit it exactly: a config.json must describe the tensors beside it."""
    cfg = get_model_config(model_arg)
    with torch.device("meta"):
        model = CLIP(cfg)
    try:
        load_checkpoint(model, sd, strict=True, allow_nonfinite=True, interpolate=False)
    except CheckpointError as e:
        raise CheckpointError(f"the weights of {where} do not fit the model {model_arg}: "
                              f"{str(e).split(': ', 1)[-1]}") from None
    return cfg


def run(args: argparse.Namespace) -> int:
    _check_arguments(args)
    sd, layout, dropped = load_state_dict(args.input, allow_nonfinite=args.allow_nonfinite)
    n_params = sum(v.numel() for v in sd.values())
    print(f"read {args.input}: {layout} layout, {len(sd)} tensors, {n_params:,} values")
    if dropped:
        print(f"  ignored {len(dropped)} key(s) (rebuilt from the config or not part of a CLIP): "
              f"{_summarise(dropped)}")
    target = (args.layout or "training") if args.to == "safetensors" else args.to
    has_text = any(k.startswith("text.") for k in sd)
    if target != "vision" and not has_text:
        raise CheckpointError(f"{args.input} holds only a vision tower; convert it with --layout vision")

    if args.to == "hf":
        model_arg = args.model if args.model is not None else str(args.input)
        cfg = _fits_model(sd, model_arg, str(args.input))
        if "logit_scale" in sd and not math.isclose(float(sd["logit_scale"].reshape(())), math.log(100.0),
                                                    rel_tol=1e-6):
            print(f"  note: the port's forward multiplies by 100; this model's temperature "
                  f"(exp(logit_scale) = {math.exp(float(sd['logit_scale'].reshape(()))):.4g}) is kept in the file "
                  "for evaclip")
        head_bias = sd.get("visual.head.bias")
        if head_bias is not None and bool(head_bias.any()):
            print("  note: the port's visual projection has no bias; this model's (non-zero) head bias is kept in "
                  "the file for evaclip")
        save_hf_folder(sd, cfg, args.output, overwrite=args.overwrite)
        print(f"wrote {args.output}: Hugging Face port folder (config.json, model.safetensors)")
        return 0

    out = adapter_named(target).from_evaclip(sd)
    if not out:
        raise CheckpointError(f"{args.input} has no vision-tower keys to write in the vision layout")
    if args.output.suffix == ".safetensors":
        save_file(out, args.output, metadata={"format": "pt", "evaclip_layout": target})
    else:
        save_torch(out, args.output)
    size_mb = args.output.stat().st_size / 2**20
    print(f"wrote {args.output}: {target} layout, {len(out)} tensors, {size_mb:.1f} MiB")
    return 0
