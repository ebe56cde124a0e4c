"""Leakage control between training and evaluation images, and the deterministic split helpers.

Tux Paint reuses openclipart art, and the emoji styles share drawings, so an evaluation image can have a
recoloured, re-rendered or mirrored copy in the training sources. Such copies are found with "ink"
vectors: the image shrunk to 32x32, inverted (255 - pixel, so white background counts as nothing),
L2-normalised; a cosine above the threshold (0.95) with an evaluation image or its mirror marks the training
image as a copy, and it is dropped. Only training images are ever dropped, so false positives are harmless.
"""
from __future__ import annotations

import hashlib
import random
from collections import Counter
from typing import Sequence

import numpy as np
from PIL import Image

INK_SIZE = 32
DUP_THRESHOLD = 0.95


def ink_vectors(images: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] uint8 -> [N, 32*32*3] float32 unit vectors of inverted, shrunk images."""
    if len(images) == 0:
        return np.zeros((0, INK_SIZE * INK_SIZE * 3), np.float32)
    small = np.stack([np.asarray(Image.fromarray(a).resize((INK_SIZE, INK_SIZE), Image.BOX)) for a in images])
    v = 1.0 - small.astype(np.float32).reshape(len(images), -1) / 255.0
    return v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-6)


def near_duplicates(train: np.ndarray, evaluation: np.ndarray, threshold: float = DUP_THRESHOLD,
                    block: int = 2048) -> np.ndarray:
    """Boolean mask over ``train``: True where an image matches some evaluation image (or its mirror)."""
    mask = np.zeros(len(train), dtype=bool)
    if len(train) == 0 or len(evaluation) == 0:
        return mask
    ref = np.concatenate([ink_vectors(evaluation), ink_vectors(evaluation[:, :, ::-1])])
    for start in range(0, len(train), block):
        sims = ink_vectors(train[start:start + block]) @ ref.T
        mask[start:start + block] = sims.max(axis=1) > threshold
    return mask


def first_unique(images: Sequence[np.ndarray]) -> list[int]:
    """Indices of the first occurrence of each exactly identical image."""
    seen: set[str] = set()
    keep = []
    for i, a in enumerate(images):
        digest = hashlib.sha1(a.tobytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            keep.append(i)
    return keep


def cap_per_class(classnames: Sequence[str], cap: int, rng: random.Random) -> list[bool]:
    """Keep at most ``cap`` random items per non-empty class (class order fixed, so it is deterministic)."""
    keep = [bool(c) for c in classnames]
    by_class: dict[str, list[int]] = {}
    for i, c in enumerate(classnames):
        if c:
            by_class.setdefault(c, []).append(i)
    for c in sorted(by_class):
        idx = by_class[c]
        if len(idx) > cap:
            for i in rng.sample(idx, len(idx) - cap):
                keep[i] = False
    return keep


def group_holdout(groups: Sequence[str], n: int, rng: random.Random,
                  exclude: tuple[str, ...] = ("star polygon", "playing card")) -> set[str]:
    """Pick ``n`` groups of size one (an identical name never crosses the split) to hold out.

    Generated stars and playing cards are never held out: their names differ only by a number.
    """
    size = Counter(groups)
    candidates = sorted(g for g, k in size.items() if k == 1 and not any(e in g for e in exclude))
    rng.shuffle(candidates)
    return set(candidates[:n])
