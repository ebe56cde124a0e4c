"""Linear probe on cached features with CLIP_benchmark's protocol (``clip_benchmark/metrics/linear_probe.py``):
a linear layer trained with AdamW (lr 0.1, 10 epochs, batch 64, cosine schedule without warm-up) on the
L2-normalised image features of the train split, scored on the test split. The weight decay is 0 unless a
validation split is given (``val``, or ``val_proportion`` of train held out): then it is searched on a 97-point
log grid 1e-6..1e2 (7 coarse points, then bisection) and the layer is refit on train+val with the best one.
Results use CLIP_benchmark's names: ``lp_acc1``, ``lp_acc5``, ``lp_mean_per_class_recall``."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from evaclip.errors import DatasetError
from evaclip.eval.features import encode_image_batches
from evaclip.eval.metrics import classification_metrics
from evaclip.outputs import atomic_write

WEIGHT_DECAYS = np.logspace(-6, 2, num=97).tolist()
# CLIP_benchmark's defaults (its --fewshot_lr, --fewshot_epochs, --batch_size)
LR, EPOCHS, BATCH_SIZE = 0.1, 10, 64


def cached_features(model, loader: Iterable, cache: str | Path | None, device="cpu", amp: bool = False,
                    desc: str = "features", skipped: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image features and labels, read from ``cache`` (a .pt file) when it exists, else computed
    and written there. The cache holds only tensors and is read with ``weights_only=True``; it remembers how
    many files were skipped, so ``skipped`` gets as many entries on a cache hit."""
    reasons: list = []
    if cache is not None and Path(cache).exists():
        blob = torch.load(cache, map_location="cpu", weights_only=True)
        reasons = ["(cached)"] * int(blob.get("num_skipped_files", torch.tensor(0)))
        feats, labels = blob["features"], blob["labels"]
    else:
        feats, labels = encode_image_batches(model, loader, device=device, amp=amp, desc=desc, skipped=reasons)
        if cache is not None:
            blob = {"features": feats, "labels": labels, "num_skipped_files": torch.tensor(len(reasons))}
            atomic_write(cache, lambda tmp: torch.save(blob, tmp), what="feature cache")
    if skipped is not None:
        skipped += reasons
    return feats, labels


def stratified_split(labels: torch.Tensor, train_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint (train, test) index tensors over ``labels``: per class, a seeded random ``train_fraction`` of
    its samples (rounded, at least one) for training and the rest (at least one when the class has two or
    more) for testing. For a dataset without a train split; both parts keep the class proportions."""
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_train = min(max(1, round(train_fraction * len(idx))), max(1, len(idx) - 1))
        train.append(idx[:n_train])
        test.append(idx[n_train:])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(test)).values


def train_linear(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float,
                 lr: float = LR, epochs: int = EPOCHS, batch_size: int = BATCH_SIZE, seed: int = 0) -> nn.Linear:
    """A linear classifier trained with AdamW (cross-entropy, cosine LR without warm-up), on the device of
    ``features``."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = nn.Linear(features.shape[1], num_classes).to(features.device)
    labels = labels.to(features.device)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    n = features.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total = max(1, epochs * steps_per_epoch)
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g).to(features.device)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            for group in opt.param_groups:
                group["lr"] = 0.5 * (1 + math.cos(math.pi * step / total)) * lr
            loss = F.cross_entropy(head(features[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return head.eval()


def search_peak(score: Callable[[int], float], n: int = 97, coarse: int = 7, span: int = 8) -> int:
    """Index in ``range(n)`` maximising ``score``: the best of ``coarse`` evenly spaced points, then a
    bisection that looks ``span``, ``span/2``, ... indices either side (ties keep the first best seen)."""
    cache: dict[int, float] = {}

    def best(indices: list[int]) -> int:
        top, top_score = indices[0], -math.inf
        for i in indices:
            if i not in cache:
                cache[i] = score(i)
            if cache[i] > top_score:
                top, top_score = i, cache[i]
        return top

    peak = best(np.linspace(0, n - 1, coarse).round().astype(int).tolist())
    while span > 0:
        peak = best([max(peak - span, 0), peak, min(peak + span, n - 1)])
        span //= 2
    return peak


def linear_probe(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                 num_classes: int, val: tuple[torch.Tensor, torch.Tensor] | None = None,
                 val_proportion: float = 0.0, lr: float = LR, epochs: int = EPOCHS, batch_size: int = BATCH_SIZE,
                 seed: int = 0, weight_decays: list[float] = WEIGHT_DECAYS,
                 device: torch.device | str = "cpu") -> dict[str, float]:
    """``lp_acc1``, ``lp_acc5``, ``lp_mean_per_class_recall`` on ``test`` (CLIP_benchmark's names), the chosen
    ``weight_decay`` and the protocol (``lr``, ``epochs``, ``batch_size``, ``seed``).

    Without a ``val`` split, ``val_proportion`` of ``train`` (a seeded random part) is held out for the
    weight-decay search; ``val_proportion=0`` (CLIP_benchmark's default) skips the search (weight decay 0)."""
    (xtr, ytr), (xte, yte) = [(x.to(device), y.to(device)) for x, y in (train, test)]
    if val is not None:
        val = (val[0].to(device), val[1].to(device))
    if xtr.shape[0] == 0 or xte.shape[0] == 0:
        raise DatasetError("the linear probe needs images in both the train and the test split")
    if val is None and val_proportion > 0:
        perm = torch.randperm(xtr.shape[0], generator=torch.Generator().manual_seed(seed)).to(device)
        n_val = max(1, int(round(val_proportion * xtr.shape[0])))
        val = (xtr[perm[:n_val]], ytr[perm[:n_val]])
        xtr, ytr = xtr[perm[n_val:]], ytr[perm[n_val:]]
    fit = dict(lr=lr, epochs=epochs, batch_size=batch_size, seed=seed)
    if val is not None:
        xva, yva = val

        def val_acc(i: int) -> float:
            head = train_linear(xtr, ytr, num_classes, weight_decays[i], **fit)
            with torch.no_grad():
                return (head(xva).argmax(1) == yva).float().mean().item()

        weight_decay = weight_decays[search_peak(val_acc, n=len(weight_decays),
                                                 coarse=min(7, len(weight_decays)))]
        xtr, ytr = torch.cat([xtr, xva]), torch.cat([ytr, yva])
    else:
        weight_decay = 0.0
    head = train_linear(xtr, ytr, num_classes, weight_decay, **fit)
    with torch.no_grad():
        scores = classification_metrics(head(xte).cpu(), yte.cpu())
    metrics = {f"lp_{k}": v for k, v in scores.items() if k != "num_nonfinite_scores"}
    metrics["num_nonfinite_scores"] = scores["num_nonfinite_scores"]
    metrics.update(weight_decay=weight_decay, lr=lr, epochs=epochs, batch_size=batch_size, seed=seed)
    return metrics
