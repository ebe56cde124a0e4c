"""Batched feature extraction shared by every task (progress bar, no grad, optional bf16 autocast)."""
from __future__ import annotations

import contextlib
from typing import Iterable

import torch
import torch.nn.functional as F
from tqdm import tqdm


def autocast(device: torch.device | str, amp: bool):
    """bf16 autocast on the device when ``amp`` (CLIP_benchmark's default), a no-op otherwise."""
    device = torch.device(device)
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@torch.no_grad()
def encode_image_batches(model, loader: Iterable, device: torch.device | str = "cpu", amp: bool = False,
                         desc: str = "images", normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model.encode_image`` over a loader of ``(images, labels)``; returns float32 features on the CPU
    (L2-normalised unless ``normalize=False``) and the labels, both in loader order."""
    feats, labels = [], []
    for images, target in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None):  # bars only on a terminal
        with autocast(device, amp):
            f = model.encode_image(images.to(device))
        f = f.float()
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
