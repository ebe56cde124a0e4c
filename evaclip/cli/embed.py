"""``evaclip embed``: embed a folder of images or a file of texts into a float32 ``.npy`` array.

Row i of ``OUT.npy`` is the embedding of line i of the sidecar ``OUT.txt``, which lists the inputs in order
(image paths relative to the folder, or the texts themselves).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from evaclip.errors import EvaclipError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Embed images (a folder, searched recursively, in sorted path order) or texts (one per "
                          "line; blank lines are skipped) with an EVA-CLIP model. Writes OUT.npy (float32, one "
                          "row per input) and OUT.txt listing the inputs in the same order.")
    parser.add_argument("--model", required=True, help="model name (see `evaclip models`) or JSON config path")
    parser.add_argument("--pretrained", default=None,
                        help="checkpoint file (any official layout); without it the weights are random")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, metavar="DIR", help="folder of images (recursive)")
    source.add_argument("--texts", type=Path, metavar="FILE", help="UTF-8 text file, one text per line")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE.npy", help="output array")
    parser.add_argument("--batch-size", type=int, default=32, help="inputs per forward pass (default: %(default)s)")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                        help="L2-normalise the embeddings (default: on)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="weight precision (default: %(default)s); the output is float32 either way")
    parser.add_argument("--allow-nonfinite", action="store_true",
                        help="load a checkpoint with NaN/inf weights instead of refusing it (with a warning)")


def find_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, by extension), sorted by their path relative to ``root``."""
    if not root.is_dir():
        raise EvaclipError(f"--images {root}: not a folder")
    found = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def read_texts(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise EvaclipError(f"--texts {path}: file not found") from None
    except UnicodeDecodeError as e:
        raise EvaclipError(f"--texts {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise EvaclipError(f"--texts {path}: no non-blank lines to embed")
    return texts


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def embed_images(model, preprocess, paths: list[Path], batch_size: int, normalize: bool, device
                 ) -> tuple[np.ndarray, list[Path], int]:
    """Embeddings of the decodable images, the paths that were embedded, and how many were skipped."""
    from PIL import Image

    from evaclip.eval.features import encode_images
    rows, kept, skipped = [], [], 0
    with tqdm(total=len(paths), desc="embedding images", unit="img", file=sys.stderr) as bar:
        for chunk in _batches(paths, batch_size):
            tensors = []
            for path in chunk:
                try:
                    with Image.open(path) as img:
                        tensors.append(preprocess(img))
                    kept.append(path)
                except (OSError, ValueError, SyntaxError, EvaclipError):  # undecodable / truncated / unsupported
                    skipped += 1
            if tensors:
                with torch.no_grad():
                    f = encode_images(model, torch.stack(tensors), device)
                rows.append((torch.nn.functional.normalize(f, dim=-1) if normalize else f).cpu())
            bar.update(len(chunk))
    width = model.visual.output_dim
    return (torch.cat(rows).numpy() if rows else np.zeros((0, width), np.float32)), kept, skipped


def embed_texts(model, tokenizer, texts: list[str], batch_size: int, normalize: bool, device) -> np.ndarray:
    rows = []
    for chunk in tqdm(list(_batches(texts, batch_size)), desc="embedding texts", unit="batch", file=sys.stderr):
        tokens = tokenizer(chunk).to(device)
        with torch.no_grad():
            rows.append(model.encode_text(tokens, normalize=normalize).float().cpu())
    return torch.cat(rows).numpy()


def write_outputs(out: Path, array: np.ndarray, labels: list[str]) -> Path:
    """Write OUT.npy and the sidecar OUT.txt, each atomically (no half-written file remains)."""
    from evaclip.outputs import atomic_write, atomic_write_text
    sidecar = out.with_suffix(".txt")

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: given a path, np.save would append ".npy" to the name
            np.save(f, array.astype(np.float32, copy=False), allow_pickle=False)

    atomic_write(out, save, what="--out")
    atomic_write_text(sidecar, "".join(label + "\n" for label in labels), what="--out sidecar")
    return sidecar


def run(args: argparse.Namespace) -> int:
    import evaclip
    from evaclip.eval.features import nonfinite_weights, resolve_device
    from evaclip.outputs import check_output
    if args.out.suffix != ".npy":
        raise EvaclipError(f"--out {args.out}: the output must be a .npy file")
    if args.batch_size < 1:
        raise EvaclipError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = resolve_device(args.device)
    # Both outputs are replaced when they are regular files, never when they are a symlink, FIFO or device;
    # an unwritable folder is found now, before a possibly large model is built.
    check_output(args.out, overwrite=True, what="--out")
    check_output(args.out.with_suffix(".txt"), overwrite=True, what="--out sidecar")
    # Check the model name and the inputs before building a (possibly large) model.
    evaclip.get_model_config(args.model)
    if args.images is not None:
        paths = find_images(args.images)
        if not paths:
            raise EvaclipError(f"--images {args.images}: no image files found "
                               f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    else:
        texts = read_texts(args.texts)
    if args.pretrained is None:
        print("evaclip embed: warning: no --pretrained checkpoint, the model has random weights", file=sys.stderr)

    model, _, preprocess = evaclip.create_model_and_transforms(args.model, args.pretrained, device=device,
                                                               precision=args.precision,
                                                               allow_nonfinite=args.allow_nonfinite)
    model.eval()
    # Checked after the precision cast too: a finite fp32 weight above 65504 is inf in fp16.
    bad = nonfinite_weights(model)
    if bad:
        print(f"evaclip embed: warning: {len(bad)} weight tensor(s) hold NaN or inf (first: {bad[0]}); the "
              f"embeddings of this model are not trustworthy", file=sys.stderr)
    if args.images is not None:
        array, kept, skipped = embed_images(model, preprocess, paths, args.batch_size, args.normalize, device)
        if skipped:
            print(f"evaclip embed: warning: skipped {skipped} undecodable image file(s)", file=sys.stderr)
        if not kept:
            raise EvaclipError(f"--images {args.images}: none of the {len(paths)} image files could be decoded")
        labels = [p.relative_to(args.images).as_posix() for p in kept]
    else:
        tokenizer = evaclip.get_tokenizer(args.model)
        array = embed_texts(model, tokenizer, texts, args.batch_size, args.normalize, device)
        labels = texts
    sidecar = write_outputs(args.out, array, labels)
    print(f"wrote {args.out} ({array.shape[0]} x {array.shape[1]} float32) and {sidecar}")
    return 0
