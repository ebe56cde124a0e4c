"""BEiT block-wise masking for masked image modeling (the EVA step of weak-to-strong).

A mask is grown on the (g x g) patch grid by adding rectangles until ``num_masking_patches`` cells are masked
or a rectangle cannot be placed. Each rectangle draws a target area uniformly in ``[min_num_patches,
remaining]`` and a log-uniform aspect ratio in ``[min_aspect, 1/min_aspect]``; it is accepted if it fits
strictly inside the grid and adds between 1 and ``remaining`` new cells (up to 10 tries per rectangle).
The official EVA recipe masks 105 of the 256 cells of a 16x16 grid (~40%) with at least 16 cells per block;
smaller grids scale both numbers with the grid area.

Random draws come from one ``numpy.random.Generator`` in a fixed order (area, log-aspect, then top and left
when the block fits), so a
seed reproduces the masks exactly; a ``torch.Generator`` is turned into a numpy seed by one draw from it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from evaclip.errors import ConfigError

_TRIES_PER_BLOCK = 10
_OFFICIAL_GRID_AREA = 256  # 16x16: 224 px with patch 14
_OFFICIAL_MIN_BLOCK = 16
# 105 of 256, the official count at grid 16 (round(0.4 * 256) would give 102); other grids keep the ratio.
DEFAULT_MASK_RATIO = 105 / 256

RandomSource = np.random.Generator | torch.Generator | int | None


@dataclass(frozen=True)
class MaskRect:
    """A rectangle placed by the generator: rows ``top:top+height``, columns ``left:left+width``."""

    top: int
    left: int
    height: int
    width: int


class BlockMaskGenerator:
    """Block-wise masks on a ``grid x grid`` patch grid; ``generator(batch, rng)`` -> BoolTensor[B, grid*grid].

    Args:
        grid: patches per side (image_size // patch_size).
        num_masking_patches: cells to mask per image; default ``round(105/256 * grid**2)`` (~41%: 105 at grid
            16, 26 at grid 8, 7 at grid 4).
        min_num_patches: smallest block area; default 16 scaled to the grid area, at least 1.
        max_num_patches: largest block area; default: no limit beyond what remains to be masked.
        min_aspect: aspect ratios are log-uniform in ``[min_aspect, 1 / min_aspect]``.
    """

    def __init__(self, grid: int, num_masking_patches: int | None = None, min_num_patches: int | None = None,
                 max_num_patches: int | None = None, min_aspect: float = 0.3):
        if not isinstance(grid, int) or grid < 1:
            raise ConfigError(f"masking grid must be a positive integer, got {grid!r}")
        area = grid * grid
        if num_masking_patches is None:
            num_masking_patches = int(round(DEFAULT_MASK_RATIO * area))
        if min_num_patches is None:
            min_num_patches = max(1, int(round(_OFFICIAL_MIN_BLOCK * area / _OFFICIAL_GRID_AREA)))
        if not 0 < num_masking_patches <= area:
            raise ConfigError(f"num_masking_patches must be in [1, {area}] for a {grid}x{grid} grid, "
                              f"got {num_masking_patches}")
        if min_num_patches < 1:
            raise ConfigError(f"min_num_patches must be >= 1, got {min_num_patches}")
        if max_num_patches is not None and max_num_patches < min_num_patches:
            raise ConfigError(f"max_num_patches ({max_num_patches}) is below min_num_patches ({min_num_patches})")
        if not 0 < min_aspect <= 1:
            raise ConfigError(f"min_aspect must be in (0, 1], got {min_aspect}")
        self.grid = grid
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        self.max_num_patches = max_num_patches if max_num_patches is not None else area
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))

    def __repr__(self) -> str:
        return (f"BlockMaskGenerator(grid={self.grid}, num_masking_patches={self.num_masking_patches}, "
                f"min_num_patches={self.min_num_patches}, max_num_patches={self.max_num_patches})")

    def _place_block(self, mask: np.ndarray, budget: int, rng: np.random.Generator) -> MaskRect | None:
        """Try up to 10 rectangles; mask the first that adds 1..budget new cells. None if all fail."""
        g = self.grid
        for _ in range(_TRIES_PER_BLOCK):
            # a + (b - a) * U, as Python's random.uniform: near the end the budget may be below the
            # minimum block area, and the area is then drawn in [budget, min_num_patches].
            target_area = self.min_num_patches + (budget - self.min_num_patches) * rng.random()
            lo, hi = self.log_aspect
            aspect = math.exp(lo + (hi - lo) * rng.random())
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if not (w < g and h < g):  # strict, as BEiT: a block never spans the whole grid
                continue
            top = int(rng.integers(0, g - h + 1))
            left = int(rng.integers(0, g - w + 1))
            window = mask[top:top + h, left:left + w]
            new = h * w - int(window.sum())
            if 0 < new <= budget:
                window[...] = True
                return MaskRect(top, left, h, w)
        return None

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, list[MaskRect]]:
        """One (grid, grid) boolean mask and the blocks that built it, in order."""
        mask = np.zeros((self.grid, self.grid), dtype=bool)
        blocks: list[MaskRect] = []
        count = 0
        while count < self.num_masking_patches:
            budget = min(self.num_masking_patches - count, self.max_num_patches)
            block = self._place_block(mask, budget, rng)
            if block is None:
                break
            blocks.append(block)
            count = int(mask.sum())
        return mask, blocks

    def __call__(self, batch_size: int, rng: RandomSource | list[int] = None) -> torch.Tensor:
        """``batch_size`` masks as a BoolTensor[B, grid*grid] (row-major, the order of the patch tokens).

        ``rng`` may also be one integer seed per sample: each mask is then a function of its own seed alone
        (the trainer keys them by the samples' global positions)."""
        per_sample = isinstance(rng, list)
        if per_sample and len(rng) != batch_size:
            raise ValueError(f"{len(rng)} mask seeds for a batch of {batch_size}")
        gen = None if per_sample else as_numpy_generator(rng)
        masks = np.zeros((batch_size, self.grid * self.grid), dtype=bool)
        for i in range(batch_size):
            masks[i] = self.sample(np.random.default_rng(rng[i]) if per_sample else gen)[0].reshape(-1)
        return torch.from_numpy(masks)


def as_numpy_generator(rng: RandomSource) -> np.random.Generator:
    """A numpy Generator from a Generator, a seed, a torch.Generator (one draw from it) or None (fresh)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=rng).item())
        return np.random.default_rng(seed)
    if rng is None or isinstance(rng, int):
        return np.random.default_rng(rng)
    raise TypeError(f"expected a numpy Generator, torch.Generator, int seed or None, got {type(rng).__name__}")


def block_masks(batch_size: int, grid: int, rng: RandomSource = None, **kwargs) -> torch.Tensor:
    """Shortcut: ``BlockMaskGenerator(grid, **kwargs)(batch_size, rng)``."""
    return BlockMaskGenerator(grid, **kwargs)(batch_size, rng)
