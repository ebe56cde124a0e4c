"""Rasterisation and the leakage/split helpers, on images made here."""
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from evaclip_demo.offline.leakage import cap_per_class, first_unique, group_holdout, near_duplicates
from evaclip_demo.offline.render import render, render_all, to_square


def _blobs(seed: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((size // 8, size // 8, 1))).astype(np.uint8)


def test_to_square_keeps_aspect_with_white_padding():
    img = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    ImageDraw.Draw(img).rectangle((10, 40, 89, 59), fill=(255, 0, 0, 255))  # 80 x 20 red bar
    out = to_square(img, 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    red = (out[..., 0] > 200) & (out[..., 1] < 80)
    rows, cols = np.nonzero(red)
    # the bar spans (almost) the full width but only about a quarter of the height, centred
    assert cols.min() <= 2 and cols.max() >= 29
    assert 5 <= rows.max() - rows.min() + 1 <= 9
    assert abs((rows.min() + rows.max()) / 2 - 15.5) <= 1
    assert (out[0] == 255).all() and (out[-1] == 255).all()  # transparent -> white


def test_to_square_empty_image_is_none():
    assert to_square(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), 16) is None


def test_render_svg_and_png_agree(tmp_path: Path):
    pytest.importorskip("cairosvg", reason="cairosvg (pip) and libcairo2 (apt) render SVG art")
    (tmp_path / "c.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="40" height="40">'
                                    '<circle cx="20" cy="20" r="15" fill="#0000ff"/></svg>')
    img = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    ImageDraw.Draw(img).ellipse((5, 5, 35, 35), fill=(0, 0, 255, 255))
    img.save(tmp_path / "c.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    svg, png, broken = render_all([tmp_path / "c.svg", tmp_path / "c.png", tmp_path / "broken.png"], 24, workers=1,
                                  progress=False)
    assert broken is None
    assert np.abs(svg.astype(int) - png.astype(int)).mean() < 12  # same picture, different rasterisers
    assert svg[12, 12, 2] > 200 and svg[12, 12, 0] < 60 and (svg[0, 0] == 255).all()
    assert render(tmp_path / "c.png", 24).tolist() == png.tolist()


def test_near_duplicates_finds_recoloured_and_mirrored_copies_only():
    evals = np.stack([_blobs(1), _blobs(2)])
    train = np.stack([
        _blobs(3),                                                   # unrelated
        np.clip(evals[0].astype(int) + 10, 0, 255).astype(np.uint8),  # recoloured copy
        evals[1][:, ::-1],                                            # mirrored copy
        _blobs(4),
    ])
    assert near_duplicates(train, evals, 0.95).tolist() == [False, True, True, False]
    assert near_duplicates(train, evals[:0], 0.95).tolist() == [False] * 4


def test_first_unique_and_cap_per_class():
    a, b = _blobs(1), _blobs(2)
    assert first_unique([a, b, a.copy(), b, _blobs(3)]) == [0, 1, 4]
    classes = ["x"] * 5 + ["y"] * 2 + [""]
    keep = cap_per_class(classes, 3, random.Random(0))
    assert sum(k for k, c in zip(keep, classes) if c == "x") == 3
    assert keep[5:] == [True, True, False]  # small class kept whole, unlabelled dropped
    assert keep == cap_per_class(classes, 3, random.Random(0))


@pytest.mark.parametrize("n", [0, 2, 10])
def test_group_holdout_picks_singletons_only(n: int):
    groups = ["a", "b", "c", "dup", "dup", "a star polygon with 5 points", "d"]
    held = group_holdout(groups, n, random.Random(1))
    assert len(held) == min(n, 4)
    assert held <= {"a", "b", "c", "d"}
