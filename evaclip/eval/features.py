"""Batched feature extraction shared by every task (progress bar, no grad, optional bf16 autocast).

This is the one place where images and texts enter a model during evaluation, so the rules about that live
here: inputs are cast to the model's weight dtype (a bf16/fp16 model runs without ``--amp``), an image or video
that cannot be decoded is skipped and counted instead of aborting the run (as training and ``embed`` do), and
a model whose weights are not all finite can be marked so that every feature it gives is NaN (which the
metrics count as a miss).
"""
from __future__ import annotations

import contextlib
from typing import Iterable, NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate
from tqdm import tqdm

from evaclip.errors import ConfigError, DatasetError, EvaclipError

# What decoding a bad file raises: evaclip's own errors (open_image, decode_frames) and what PIL/PyAV or a
# transform raise directly for truncated, unsupported or absurd files.
UNREADABLE = (EvaclipError, OSError, ValueError, SyntaxError)


def autocast(device: torch.device | str, amp: bool):
    """bf16 autocast on the device when ``amp`` (CLIP_benchmark's default), a no-op otherwise."""
    device = torch.device(device)
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def resolve_device(requested: str | None, default: str = "cpu") -> str:
    """A torch device string that exists on this machine, or a one-line ConfigError (``--device cuda`` on a
    machine without CUDA is otherwise an AssertionError deep inside torch)."""
    name = requested or default
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine (no GPU or a CPU-only torch "
                              "build); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                              f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    elif device.type != "cpu":
        raise ConfigError(f"--device {name}: evaluation runs on cpu, cuda or cuda:N, not {device.type!r}")
    return name


def model_dtype(model) -> torch.dtype:
    """The dtype of the model's floating-point weights (float32 for a model without any)."""
    params = getattr(model, "parameters", None)
    for p in (params() if params is not None else ()):
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def nonfinite_weights(model) -> list[str]:
    """Names of the parameters and buffers that hold a NaN or an infinity (checked once, after loading)."""
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    return [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def poison_features(model) -> None:
    """Make every image and text feature of ``model`` NaN (a hook on each tower), for a model whose weights are
    not all finite: however few outputs such a weight reaches, the model is broken, and NaN features make every
    ranking metric count a miss instead of scoring whatever the intact part computes."""
    for tower in ("visual", "text"):
        module = getattr(model, tower, None)
        if isinstance(module, torch.nn.Module):
            module.register_forward_hook(lambda _m, _inputs, out: torch.full_like(out, float("nan")))


def encode_images(model, images: torch.Tensor, device: torch.device | str = "cpu", amp: bool = False) -> torch.Tensor:
    """``model.encode_image`` of a batch as float32; the batch is cast to the weights' dtype first, so a
    bf16/fp16 model works without autocast (else: "Input type (float) and bias type (BFloat16)")."""
    with autocast(device, amp):
        return model.encode_image(images.to(device=device, dtype=model_dtype(model))).float()


class _Unreadable(NamedTuple):
    reason: str


class SkipUnreadable(Dataset):
    """A dataset whose items that cannot be decoded come out as a marker instead of an exception (which in a
    DataLoader worker would end the whole evaluation with a worker traceback)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:
            return self.dataset[i]
        except UNREADABLE as e:
            return _Unreadable(str(e) or type(e).__name__)


class Batch(tuple):
    """A batch from :func:`image_loader`: ``(inputs, labels)`` of the decodable items, as any loader gives (an
    empty tuple when none of them could be decoded), and in ``skipped`` the reasons the others were skipped."""

    def __new__(cls, items: tuple, skipped: list):
        batch = super().__new__(cls, items)
        batch.skipped = skipped
        return batch

    def __reduce__(self):  # DataLoader workers send batches to the main process by pickle
        return Batch, (tuple(self), self.skipped)

    def pin_memory(self) -> "Batch":  # what DataLoader(pin_memory=True) calls; the default would drop skipped
        from torch.utils.data._utils.pin_memory import pin_memory
        return Batch(tuple(pin_memory(x) for x in self), self.skipped)


def _collate(items: list) -> Batch:
    good = [x for x in items if not isinstance(x, _Unreadable)]
    return Batch(tuple(default_collate(good)) if good else (), [x.reason for x in items if isinstance(x, _Unreadable)])


def image_loader(dataset: Dataset, batch_size: int = 64, workers: int = 0) -> DataLoader:
    """An in-order batched loader that skips (and reports) files that cannot be decoded."""
    return DataLoader(SkipUnreadable(dataset), batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=_collate, pin_memory=torch.cuda.is_available(), persistent_workers=False)


def decoded_batches(loader: Iterable, skipped: list | None = None, what: str = "images"):
    """The ``(inputs, labels)`` batches of a loader; the reasons for skipped files (from :func:`image_loader`)
    are appended to ``skipped``. DatasetError if files were skipped and none could be decoded."""
    reasons = skipped if skipped is not None else []
    before, decoded = len(reasons), 0
    for batch in loader:
        if isinstance(batch, Batch):
            reasons += batch.skipped
            if not batch:
                continue
        decoded += 1
        yield batch
    if not decoded and len(reasons) > before:
        raise DatasetError(f"none of the {len(reasons) - before} {what} could be decoded (e.g. "
                           f"{reasons[before]}); check the dataset files")


@torch.no_grad()
def encode_image_batches(model, loader: Iterable, device: torch.device | str = "cpu", amp: bool = False,
                         desc: str = "images", normalize: bool = True,
                         skipped: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model.encode_image`` over a loader of ``(images, labels)``; returns float32 features on the CPU
    (L2-normalised unless ``normalize=False``) and the labels, both in loader order. With
    :func:`image_loader`, undecodable files are left out and the reasons appended to ``skipped``."""
    feats, labels = [], []
    batches = decoded_batches(loader, skipped)
    total = len(loader) if hasattr(loader, "__len__") else None
    for images, target in tqdm(batches, total=total, desc=desc, leave=False, dynamic_ncols=True,
                               disable=None):  # bars only on a terminal
        f = encode_images(model, images, device, amp)
        feats.append((F.normalize(f, dim=-1) if normalize else f).cpu())
        labels.append(torch.as_tensor(target))
    if not feats:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def encode_texts(model, tokenizer, texts: list[str], device: torch.device | str = "cpu", amp: bool = False,
                 batch_size: int = 256) -> torch.Tensor:
    """L2-normalised float32 text features [len(texts), D] on the CPU."""
    out = []
    for i in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[i:i + batch_size]).to(device)
        with autocast(device, amp):
            f = model.encode_text(tokens)
        out.append(F.normalize(f.float(), dim=-1).cpu())
    return torch.cat(out)
