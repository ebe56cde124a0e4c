"""Evaluation metrics as pure functions on tensors (also used by the demo).

Ties are broken the way ``argmax`` breaks them: among equal scores the lower index ranks first. That makes
every metric here deterministic (``torch.topk`` leaves the order of ties unspecified), and top-1 equals
``logits.argmax(1) == targets``.

Conventions follow CLIP_benchmark: top-k is NaN when there are fewer than k classes; mean per-class recall is
sklearn's balanced accuracy (the mean recall over the classes that have at least one sample); a retrieval
query is a hit at k if any of its true matches is among the k best-scored candidates.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch

def _as_tensor(x, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(dtype) if dtype is not None else t


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of ``scores[i, targets[i]]`` in row i, ties going to the lower index.

    ``scores``: [N, C]; ``targets``: [N] class indices. Rank 0 means the target is the argmax.
    """
    target_scores = scores.gather(1, targets[:, None])
    index = torch.arange(scores.shape[1], device=scores.device)[None, :]
    higher = (scores > target_scores).sum(1)
    tied_before = ((scores == target_scores) & (index < targets[:, None])).sum(1)
    return higher + tied_before


def topk_accuracy(logits, targets, ks: Iterable[int] = (1, 5), chunk_size: int = 4096) -> dict[int, float]:
    """Fraction of rows whose target is among the k highest logits, for each k (NaN if k > #classes)."""
    logits, targets = _as_tensor(logits), _as_tensor(targets, torch.long)
    if logits.ndim != 2 or targets.shape != (logits.shape[0],):
        raise ValueError(f"logits must be [N, C] and targets [N]; got {tuple(logits.shape)} and {tuple(targets.shape)}")
    n, num_classes = logits.shape
    ranks = torch.cat([target_ranks(logits[i:i + chunk_size], targets[i:i + chunk_size])
                       for i in range(0, n, chunk_size)]) if n else torch.zeros(0, dtype=torch.long)
    out = {}
    for k in ks:
        if k > num_classes or n == 0:
            out[k] = float("nan")
        else:
            out[k] = (ranks < k).double().mean().item()
    return out


def mean_per_class_recall(predictions, targets, num_classes: int | None = None) -> float:
    """Mean over classes with at least one sample of (correct predictions / samples of that class).

    Same as ``sklearn.metrics.balanced_accuracy_score``: a class that never occurs in ``targets`` is left
    out of the mean instead of counting as recall 0.
    """
    predictions, targets = _as_tensor(predictions, torch.long), _as_tensor(targets, torch.long)
    if predictions.shape != targets.shape or predictions.ndim != 1:
        raise ValueError("predictions and targets must be 1-D and of the same length")
    if targets.numel() == 0:
        return float("nan")
    c = int(num_classes if num_classes is not None else max(int(targets.max()), int(predictions.max())) + 1)
    support = torch.bincount(targets, minlength=c).double()
    correct = torch.bincount(targets[predictions == targets], minlength=c).double()
    present = support > 0
    return (correct[present] / support[present]).mean().item()


def classification_metrics(logits, targets) -> dict[str, float]:
    """``acc1``, ``acc5`` and ``mean_per_class_recall`` in CLIP_benchmark's names."""
    logits, targets = _as_tensor(logits), _as_tensor(targets, torch.long)
    acc = topk_accuracy(logits, targets, ks=(1, 5))
    recall = mean_per_class_recall(logits.argmax(1), targets, num_classes=logits.shape[1])
    return {"acc1": acc[1], "acc5": acc[5], "mean_per_class_recall": recall}


def retrieval_recall(image_features, text_features, text_to_image, ks: Iterable[int] = (1, 5, 10),
                     chunk_size: int = 256) -> dict[str, float]:
    """Zero-shot retrieval recall@k in both directions, with several captions per image.

    ``image_features`` [I, D] and ``text_features`` [T, D] are compared by dot product (pass normalised
    features for cosine similarity); ``text_to_image[t]`` is the index of the image caption t describes.
    ``image_retrieval_recall@k`` (text -> image): a caption is a hit if its image is in its top k images.
    ``text_retrieval_recall@k`` (image -> text): an image is a hit if any of its captions is in its top k.
    Scores are computed ``chunk_size`` queries at a time, so 5k x 25k needs only chunk x 25k floats.
    """
    img, txt = _as_tensor(image_features).float(), _as_tensor(text_features).float()
    owner = _as_tensor(text_to_image, torch.long).to(img.device)
    ks = list(ks)
    n_img, n_txt = img.shape[0], txt.shape[0]
    if owner.shape != (n_txt,) or (n_txt and (owner.min() < 0 or owner.max() >= n_img)):
        raise ValueError("text_to_image must give, for each caption, the index of an existing image")
    captions_per_image = torch.bincount(owner, minlength=n_img)
    if n_img == 0 or (captions_per_image == 0).any():
        raise ValueError("every image needs at least one caption for image->text retrieval")

    # text -> image: one true image per caption.
    t2i_ranks = torch.cat([target_ranks(txt[s:s + chunk_size] @ img.T, owner[s:s + chunk_size])
                           for s in range(0, n_txt, chunk_size)])
    # image -> text: the rank of an image's best true caption is the smallest rank among its captions.
    i2t_ranks = []
    for s in range(0, n_img, chunk_size):
        scores = img[s:s + chunk_size] @ txt.T  # [b, T]
        rows = torch.arange(s, s + scores.shape[0], device=img.device)
        is_true = owner[None, :] == rows[:, None]
        # Best true caption: highest score, the lowest index among equal scores (argmax picks the first).
        masked = scores.masked_fill(~is_true, float("-inf"))
        best = masked.argmax(1)
        i2t_ranks.append(target_ranks(scores, best))
    i2t = torch.cat(i2t_ranks)
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = (t2i_ranks < k).double().mean().item()
        out[f"text_retrieval_recall@{k}"] = (i2t < k).double().mean().item()
    return out


def mean_recall(metrics: dict[str, float] | Iterable[float]) -> float:
    """MR of Table 3: the plain mean of every recall@k value given (a metrics dict or a list of numbers)."""
    values = [v for k, v in metrics.items() if "recall@" in k] if isinstance(metrics, dict) else list(metrics)
    return float(np.mean(values)) if values else float("nan")


def video_score(acc1: float, acc5: float, dataset: str) -> float:
    """Table 5's number: top-1 for UCF-101, mean(top-1, top-5) for the Kinetics sets."""
    if dataset.lower().startswith("kinetics"):
        return (acc1 + acc5) / 2 if not math.isnan(acc5) else float("nan")
    return acc1


def _pr_points(scores: torch.Tensor, positive: torch.Tensor, group_ties: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Precision and recall down the ranking (highest score first, ties in sample order). ``group_ties``:
    one point per distinct score (equal scores are predicted positive together, as sklearn does); else
    one point per sample (the VOC devkit's ``VOCevalcls``)."""
    order = torch.argsort(scores, descending=True, stable=True)
    s, y = scores[order], positive[order].double()
    tp, seen = torch.cumsum(y, 0), torch.arange(1, len(y) + 1, dtype=torch.float64)
    if group_ties:
        last_of_run = torch.ones_like(s, dtype=torch.bool)
        last_of_run[:-1] = s[1:] != s[:-1]
        tp, seen = tp[last_of_run], seen[last_of_run]
    return tp / seen, tp / y.sum()


def average_precision(scores, targets, ignore=None, eleven_point: bool = False) -> torch.Tensor:
    """Per-class average precision [C] of multi-label ``scores`` [N, C] against 0/1 ``targets`` [N, C].

    Default: the area under the precision-recall curve as a step function, sum over score thresholds of
    (recall gained) x precision, ties forming one threshold (sklearn's ``average_precision_score``).
    ``eleven_point``: the PASCAL VOC2007 devkit's measure, the mean over recall levels 0, 0.1, ..., 1 of the
    best precision at that recall or above, with one precision/recall point per sample in rank order, as
    the devkit computes it (levels are compared with a 1e-12 tolerance, so an exact 0.3 recall counts for
    the 0.3 level). ``ignore`` [N, C] (bool) leaves a sample out of a class's ranking (VOC's "difficult").
    A class without positive samples gets NaN. Non-finite scores are an error (NaN would rank first).
    """
    scores, positive = _as_tensor(scores).double(), _as_tensor(targets).bool()
    if scores.ndim != 2 or positive.shape != scores.shape:
        raise ValueError(f"scores and targets must both be [N, C]; got {tuple(scores.shape)} and {tuple(positive.shape)}")
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf; average precision needs finite scores")
    keep = ~_as_tensor(ignore).bool() if ignore is not None else torch.ones_like(positive)
    out = torch.full((scores.shape[1],), float("nan"), dtype=torch.float64)
    for c in range(scores.shape[1]):
        s, y = scores[keep[:, c], c], positive[keep[:, c], c]
        if not y.any():
            continue
        precision, recall = _pr_points(s, y, group_ties=not eleven_point)
        if eleven_point:
            levels = torch.linspace(0, 1, 11, dtype=torch.float64)
            out[c] = torch.stack([precision[recall >= r - 1e-12].max() for r in levels]).mean()
        else:
            gained = torch.diff(recall, prepend=torch.zeros(1, dtype=torch.float64))
            out[c] = (gained * precision).sum()
    return out


def multilabel_metrics(logits, targets) -> dict[str, float]:
    """Multi-label zero-shot scores; ``targets`` [N, C]: 1 present, 0 absent, -1 present only as
    "difficult" objects (VOC).

    ``mean_average_precision``: CLIP_benchmark's number (its labels come from every annotated object, so
    "difficult" counts as present; a class without positives counts 0). ``mean_average_precision_voc07``:
    the VOC2007 devkit's 11-point AP with "difficult" images left out, averaged over classes with positives.
    """
    targets = _as_tensor(targets)
    present = average_precision(logits, targets != 0)
    voc = average_precision(logits, targets > 0, ignore=targets < 0, eleven_point=True)
    return {"mean_average_precision": float(torch.nan_to_num(present, nan=0.0).mean()),
            "mean_average_precision_voc07": float(np.nanmean(voc.numpy())) if (~voc.isnan()).any() else float("nan")}
