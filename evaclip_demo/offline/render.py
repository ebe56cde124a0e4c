"""Rasterise PNG/SVG art to fixed-size RGB squares on white.

Pipeline: RGBA -> crop to the alpha bounding box -> pad to a square with a small margin (aspect kept) ->
shrink (``reduce`` first for huge images, then LANCZOS) -> composite onto white -> RGB uint8.
SVGs are rendered with cairosvg (needs the system library libcairo2) at three times the target size.
"""
from __future__ import annotations

import io
import os
import warnings
from multiprocessing import Pool
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from evaclip.errors import EvaclipError

MARGIN = 0.06  # padding around the content, as a fraction of its longer side
SVG_OVERSAMPLE = 3


def _svg_to_image(path: Path, size: int) -> Image.Image:
    try:
        import cairosvg
    except (ImportError, OSError) as e:  # OSError: the cairo C library itself is missing
        raise EvaclipError(f"SVG rendering needs cairosvg and libcairo2 ({e}); install them with "
                           "`pip install cairosvg` and `apt-get install libcairo2`") from e
    # cairosvg keeps the aspect ratio when only the width is given; unsafe=False (default) blocks
    # external entities and file access from inside the SVG.
    png = cairosvg.svg2png(url=str(path), output_width=SVG_OVERSAMPLE * size)
    return Image.open(io.BytesIO(png))


def to_square(image: Image.Image, size: int) -> np.ndarray | None:
    """An RGB uint8 array [size, size, 3] of the image's content centred on white; None if it is empty."""
    rgba = image.convert("RGBA")
    box = rgba.getchannel("A").getbbox()
    if box is None:
        return None
    rgba = rgba.crop(box)
    w, h = rgba.size
    side = int(max(w, h) * (1 + MARGIN)) + 1
    square = Image.new("RGBA", (side, side), (255, 255, 255, 0))
    square.paste(rgba, ((side - w) // 2, (side - h) // 2))
    if side >= 4 * size:  # a cheap box-filter shrink first keeps LANCZOS fast on big images
        square = square.reduce(side // (2 * size))
    square = square.resize((size, size), Image.LANCZOS)
    white = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, square).convert("RGB"), dtype=np.uint8)


def render(path: Path, size: int) -> np.ndarray | None:
    """Render one PNG or SVG file; None when it cannot be decoded or has no visible content."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette-transparency and large-image warnings
            image = _svg_to_image(path, size) if path.suffix == ".svg" else Image.open(path)
            return to_square(image, size)
    except EvaclipError:
        raise
    except Exception:  # a broken file in a package is skipped, not fatal
        return None


def _render_job(job: tuple[str, int]) -> np.ndarray | None:
    return render(Path(job[0]), job[1])


def render_all(paths: Sequence[Path], size: int, workers: int, desc: str = "render",
               progress: bool = True) -> list[np.ndarray | None]:
    """Render many files in order, on ``workers`` processes (1 = in this process), with a progress bar."""
    jobs = [(str(p), size) for p in paths]
    bar = dict(total=len(jobs), desc=desc, unit="img", disable=not progress, leave=False)
    if workers <= 1 or len(jobs) < 64:
        return [_render_job(j) for j in tqdm(jobs, **bar)]
    with Pool(min(workers, os.cpu_count() or 1)) as pool:
        return list(tqdm(pool.imap(_render_job, jobs, chunksize=32), **bar))
