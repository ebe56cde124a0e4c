"""Evaluation metrics as pure functions on tensors (also used by the demo).

Ties are broken the way ``argmax`` breaks them: among equal scores the lower index ranks first. That makes
every metric here deterministic (``torch.topk`` leaves the order of ties unspecified), and top-1 equals
``logits.argmax(1) == targets``.

Conventions follow CLIP_benchmark: top-k is NaN when there are fewer than k classes; mean per-class recall is
sklearn's balanced accuracy (the mean recall over the classes that have at least one sample); a retrieval
query is a hit at k if any of its true matches is among the k best-scored candidates.

Non-finite scores (NaN, +inf, -inf) come from a broken model, so they never help it: a query whose target score
is non-finite is a miss at every k, and a non-finite score elsewhere in a row never outranks a finite target.
(Plain comparisons would do the opposite: nothing is ``>`` NaN, so a NaN target would never be beaten, and
``argmax`` picks NaN.) The classification, retrieval and multi-label metric dicts report how many scores were
non-finite (``num_nonfinite_scores``), so a result shows when this happened.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch

# The rank of a query that cannot be a hit (its target score is not finite): beyond every k.
MISS = torch.iinfo(torch.long).max


def _as_tensor(x, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(dtype) if dtype is not None else t


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of ``scores[i, targets[i]]`` in row i, ties going to the lower index.

    ``scores``: [N, C]; ``targets``: [N] class indices. Rank 0 means the target is the argmax. Only finite
    scores compete: a non-finite target gets rank ``MISS`` (a miss at every k), and non-finite scores elsewhere in
    the row rank below every finite one.
    """
    target_scores = scores.gather(1, targets[:, None])
    finite = torch.isfinite(scores)
    index = torch.arange(scores.shape[1], device=scores.device)[None, :]
    higher = ((scores > target_scores) & finite).sum(1)
    tied_before = ((scores == target_scores) & finite & (index < targets[:, None])).sum(1)
    ranks = higher + tied_before
    return torch.where(torch.isfinite(target_scores[:, 0]), ranks, torch.full_like(ranks, MISS))


def num_nonfinite(scores: torch.Tensor) -> int:
    """How many entries of ``scores`` are NaN or infinite."""
    return int((~torch.isfinite(scores)).sum())


def predictions(scores: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Predicted class per row: the argmax over the finite scores (the lower index among ties). A row with
    no finite score predicts -1, which matches no class; with ``targets``, so does a row whose target score
    is non-finite, so a prediction is right exactly when ``target_ranks`` is 0."""
    finite = torch.isfinite(scores)
    pred = scores.masked_fill(~finite, float("-inf")).argmax(1)
    valid = finite.any(1)
    if targets is not None:
        valid &= finite.gather(1, targets[:, None])[:, 0]
    return torch.where(valid, pred, torch.full_like(pred, -1))


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
    preds, targets = _as_tensor(predictions, torch.long), _as_tensor(targets, torch.long)
    if preds.shape != targets.shape or preds.ndim != 1:
        raise ValueError("predictions and targets must be 1-D and of the same length")
    if targets.numel() == 0:
        return float("nan")
    c = int(num_classes if num_classes is not None else max(int(targets.max()), int(preds.max())) + 1)
    support = torch.bincount(targets, minlength=c).double()
    correct = torch.bincount(targets[preds == targets], minlength=c).double()
    present = support > 0
    return (correct[present] / support[present]).mean().item()


def classification_metrics(logits, targets) -> dict[str, float]:
    """``acc1``, ``acc5`` and ``mean_per_class_recall`` in CLIP_benchmark's names, and ``num_nonfinite_scores``."""
    logits, targets = _as_tensor(logits), _as_tensor(targets, torch.long)
    acc = topk_accuracy(logits, targets, ks=(1, 5))
    recall = mean_per_class_recall(predictions(logits, targets), targets, num_classes=logits.shape[1])
    return {"acc1": acc[1], "acc5": acc[5], "mean_per_class_recall": recall,
            "num_nonfinite_scores": num_nonfinite(logits)}


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
    t2i_ranks, nonfinite = [], 0
    for s in range(0, n_txt, chunk_size):
        scores = txt[s:s + chunk_size] @ img.T
        nonfinite += num_nonfinite(scores)
        t2i_ranks.append(target_ranks(scores, owner[s:s + chunk_size]))
    t2i = torch.cat(t2i_ranks)
    # image -> text: the rank of an image's best true caption is the smallest rank among its captions.
    i2t_ranks = []
    for s in range(0, n_img, chunk_size):
        scores = img[s:s + chunk_size] @ txt.T  # [b, T]
        rows = torch.arange(s, s + scores.shape[0], device=img.device)
        is_true = owner[None, :] == rows[:, None]
        # Best true caption: highest finite score, the lowest index among equal scores (argmax picks the
        # first). An image none of whose captions has a finite score is a miss, whatever argmax returns.
        masked = scores.masked_fill(~is_true | ~torch.isfinite(scores), float("-inf"))
        ranks = target_ranks(scores, masked.argmax(1))
        i2t_ranks.append(torch.where(torch.isfinite(masked).any(1), ranks, torch.full_like(ranks, MISS)))
    i2t = torch.cat(i2t_ranks)
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = (t2i < k).double().mean().item()
        out[f"text_retrieval_recall@{k}"] = (i2t < k).double().mean().item()
    out["num_nonfinite_scores"] = nonfinite
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


def _pr_points(scores: torch.Tensor, positive: torch.Tensor, group_ties: bool,
               num_positive: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Precision and recall down the ranking (highest score first, ties in sample order). ``group_ties``:
    one point per distinct score (equal scores are predicted positive together, as sklearn does); else
    one point per sample (the VOC devkit's ``VOCevalcls``). Recall is out of ``num_positive``, which may
    count positives that are not in the ranking (never retrieved)."""
    order = torch.argsort(scores, descending=True, stable=True)
    s, y = scores[order], positive[order].double()
    tp, seen = torch.cumsum(y, 0), torch.arange(1, len(y) + 1, dtype=torch.float64)
    if group_ties:
        last_of_run = torch.ones_like(s, dtype=torch.bool)
        last_of_run[:-1] = s[1:] != s[:-1]
        tp, seen = tp[last_of_run], seen[last_of_run]
    return tp / seen, tp / num_positive


def average_precision(scores, targets, ignore=None, eleven_point: bool = False) -> torch.Tensor:
    """Per-class average precision [C] of multi-label ``scores`` [N, C] against 0/1 ``targets`` [N, C].

    Default: the area under the precision-recall curve as a step function, sum over score thresholds of
    (recall gained) x precision, ties forming one threshold (sklearn's ``average_precision_score``).
    ``eleven_point``: the PASCAL VOC2007 devkit's measure, the mean over recall levels 0, 0.1, ..., 1 of the
    best precision at that recall or above, with one precision/recall point per sample in rank order, as
    the devkit computes it (levels are compared with a 1e-12 tolerance, so an exact 0.3 recall counts for
    the 0.3 level). ``ignore`` [N, C] (bool) leaves a sample out of a class's ranking (VOC's "difficult").
    A class without positive samples gets NaN. A sample with a non-finite score is never retrieved: it is
    left out of the ranking, but a positive one still counts in the recall's denominator.
    """
    scores, positive = _as_tensor(scores).double(), _as_tensor(targets).bool()
    if scores.ndim != 2 or positive.shape != scores.shape:
        raise ValueError(f"scores and targets must both be [N, C]; got {tuple(scores.shape)} and {tuple(positive.shape)}")
    keep = ~_as_tensor(ignore).bool() if ignore is not None else torch.ones_like(positive)
    finite = torch.isfinite(scores)
    out = torch.full((scores.shape[1],), float("nan"), dtype=torch.float64)
    for c in range(scores.shape[1]):
        num_positive = int(positive[keep[:, c], c].sum())
        if not num_positive:
            continue
        ranked = keep[:, c] & finite[:, c]
        s, y = scores[ranked, c], positive[ranked, c]
        if not y.any():
            out[c] = 0.0
            continue
        precision, recall = _pr_points(s, y, not eleven_point, num_positive)
        if eleven_point:
            levels = torch.linspace(0, 1, 11, dtype=torch.float64)
            out[c] = torch.stack([precision[recall >= r - 1e-12].max() if (recall >= r - 1e-12).any()
                                  else torch.zeros((), dtype=torch.float64) for r in levels]).mean()
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
    logits, targets = _as_tensor(logits), _as_tensor(targets)
    present = average_precision(logits, targets != 0)
    voc = average_precision(logits, targets > 0, ignore=targets < 0, eleven_point=True)
    return {"mean_average_precision": float(torch.nan_to_num(present, nan=0.0).mean()),
            "mean_average_precision_voc07": float(np.nanmean(voc.numpy())) if (~voc.isnan()).any() else float("nan"),
            "num_nonfinite_scores": num_nonfinite(logits)}
