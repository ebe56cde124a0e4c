"""Resize / centre-crop arithmetic and the random-resized-crop sampler, against naive numpy and closed forms."""
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from evaclip.transforms import (
    OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, center_crop, center_crop_box, image_transform,
    random_resized_crop_box, shortest_side_size,
)

MEAN = np.array(OPENAI_DATASET_MEAN, np.float32)
STD = np.array(OPENAI_DATASET_STD, np.float32)


def half_even_offset(margin: int) -> int:
    """margin / 2 rounded half to even, in integers (torchvision: int(round(margin / 2.0)))."""
    q, r = divmod(margin, 2)
    return q if r == 0 or q % 2 == 0 else q + 1


def naive_normalize(pixels: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> normalised float32 [3, H, W], step by step in numpy float32."""
    x = pixels.astype(np.float32) / np.float32(255)
    return ((x - MEAN) / STD).transpose(2, 0, 1)


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_shortest_side_size_truncates_the_long_side():
    rng = random.Random(0)
    for _ in range(2000):
        w, h, s = rng.randint(1, 3000), rng.randint(1, 3000), rng.randint(1, 1000)
        short, long = min(w, h), max(w, h)
        expected_long = (s * long) // short  # floor, in exact integer arithmetic
        assert shortest_side_size(w, h, s) == ((s, expected_long) if w <= h else (expected_long, s))
    assert shortest_side_size(500, 333, 224) == (336, 224)  # 336.33 -> 336


def test_center_crop_box_rounds_half_to_even():
    assert half_even_offset(1) == 0 and half_even_offset(3) == 2 and half_even_offset(5) == 2
    for height in range(10, 40):
        for width in range(10, 40):
            top, left, h, w = center_crop_box(width, height, 10, 10)
            assert (top, left, h, w) == (half_even_offset(height - 10), half_even_offset(width - 10), 10, 10)


@pytest.mark.parametrize("width,height", [(32, 45), (45, 32), (32, 32), (33, 32), (32, 35)])
def test_eval_crop_without_resize_equals_numpy_slice(width, height):
    # The short side already equals the size, so no resampling happens: the output is a pure numpy slice.
    img = noise_image(width, height, seed=width * height)
    pixels = np.asarray(img)
    top, left = half_even_offset(height - 32), half_even_offset(width - 32)
    expected = naive_normalize(pixels[top : top + 32, left : left + 32])
    got = image_transform(32, is_train=False)(img).numpy()
    assert got.shape == (3, 32, 32)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_eval_resize_then_crop_geometry():
    img = noise_image(64, 49, seed=1)
    # Shortest side 49 -> 32, long side floor(32 * 64 / 49) = 41; crop offset round_half_even(9 / 2) = 4.
    resized = np.asarray(img.resize((41, 32), Image.Resampling.BICUBIC))
    expected = naive_normalize(resized[:, 4:36])
    got = image_transform(32, is_train=False)(img).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_center_crop_pads_small_images_like_torchvision():
    img = Image.fromarray(np.full((2, 3, 3), 200, np.uint8))  # 3 wide, 2 high
    out = np.asarray(center_crop(img, 5, 6))[..., 0]  # crop 5 high, 6 wide
    # torchvision pads left (6-3)//2 = 1, top (5-2)//2 = 1 with zeros, then crops at offset 0.
    expected = np.zeros((5, 6), np.uint8)
    expected[1:3, 1:4] = 200
    assert (out == expected).all()


def test_squash_maps_halves_to_halves():
    pixels = np.zeros((16, 64, 3), np.uint8)
    pixels[:, :32] = (255, 0, 0)
    pixels[:, 32:] = (0, 0, 255)
    got = image_transform(32, is_train=False, resize_mode="squash")(Image.fromarray(pixels))
    assert got.shape == (3, 32, 32)
    red = naive_normalize(np.array([[[255, 0, 0]]], np.uint8))
    blue = naive_normalize(np.array([[[0, 0, 255]]], np.uint8))
    np.testing.assert_allclose(got[:, :, :14].numpy(), np.broadcast_to(red, (3, 32, 14)), atol=1e-6)
    np.testing.assert_allclose(got[:, :, 18:].numpy(), np.broadcast_to(blue, (3, 32, 14)), atol=1e-6)
    same = noise_image(32, 32)
    np.testing.assert_allclose(image_transform(32, False, resize_mode="squash")(same).numpy(),
                               naive_normalize(np.asarray(same)), atol=1e-6)


@pytest.mark.parametrize("width,height", [(1000, 800), (640, 640), (300, 1200), (57, 31), (2000, 30), (1, 1)])
@pytest.mark.parametrize("scale", [(0.9, 1.0), (0.08, 1.0), (0.5, 0.5)])
def test_random_crop_boxes_fit_and_respect_scale_and_ratio(width, height, scale):
    ratio = (3 / 4, 4 / 3)
    generator = torch.Generator().manual_seed(width + height)
    area = width * height
    for _ in range(300):
        top, left, h, w = random_resized_crop_box(width, height, scale, ratio, generator)
        assert 0 <= top and 0 <= left and 1 <= h and 1 <= w and top + h <= height and left + w <= width
        fallback = (top, left) == ((height - h) // 2, (width - w) // 2) and (w == width or h == height)
        if not fallback:
            # w, h are sqrt(A * r), sqrt(A / r) rounded to integers, with A in scale * area and r in ratio,
            # so A lies in [(w - .5)(h - .5), (w + .5)(h + .5)] and r in [(w - .5)/(h + .5), (w + .5)/(h - .5)].
            eps = 1e-9
            assert scale[0] * area <= (w + 0.5) * (h + 0.5) + eps
            assert (w - 0.5) * (h - 0.5) <= scale[1] * area + eps
            assert ratio[0] <= (w + 0.5) / (h - 0.5) + eps
            assert (w - 0.5) / (h + 0.5) <= ratio[1] + eps


def test_random_crop_fallback_after_ten_attempts():
    # A 100 x 10 strip cannot hold 99% of its area at aspect ratio <= 4/3: all 10 attempts fail, and the
    # fallback is the centred box of ratio 4/3 at full height: w = round(10 * 4/3) = 13, left = (100-13)//2.
    generator = torch.Generator().manual_seed(0)
    assert random_resized_crop_box(100, 10, (0.99, 1.0), (3 / 4, 4 / 3), generator) == (0, 43, 10, 13)
    # ... after consuming exactly 10 x 2 uniform draws from the generator.
    reference = torch.Generator().manual_seed(0)
    for _ in range(20):
        torch.empty(1).uniform_(0, 1, generator=reference)
    assert torch.equal(generator.get_state(), reference.get_state())
    assert random_resized_crop_box(10, 100, (0.99, 1.0), (3 / 4, 4 / 3), generator) == (43, 0, 13, 10)


def test_random_crop_first_attempt_with_fixed_area_and_ratio():
    generator = torch.Generator().manual_seed(3)
    assert random_resized_crop_box(50, 50, (1.0, 1.0), (1.0, 1.0), generator) == (0, 0, 50, 50)
    # A quarter of the area at ratio 1 is a 25 x 25 box placed uniformly: every offset in [0, 25] occurs.
    tops, lefts = set(), set()
    for _ in range(2000):
        top, left, h, w = random_resized_crop_box(50, 50, (0.25, 0.25), (1.0, 1.0), generator)
        assert (h, w) == (25, 25)
        tops.add(top)
        lefts.add(left)
    assert tops == lefts == set(range(26))


def test_random_crop_log_uniform_ratio_and_uniform_area():
    generator = torch.Generator().manual_seed(11)
    ratios, fractions = [], []
    for _ in range(4000):
        # Small areas, so that every first attempt fits (w <= sqrt(0.2 * 4000^2 * 4) < 4000) and no
        # rejection skews the distributions.
        _, _, h, w = random_resized_crop_box(4000, 4000, (0.1, 0.2), (1 / 4, 4.0), generator)
        ratios.append(math.log(w / h))
        fractions.append(w * h / 4000**2)
    # log-uniform on [-ln 4, ln 4]: mean 0, variance (2 ln 4)^2 / 12; area uniform on [0.1, 0.2]: mean 0.15.
    assert abs(np.mean(ratios)) < 0.05
    assert abs(np.var(ratios) - (2 * math.log(4)) ** 2 / 12) < 0.05
    assert abs(np.mean(fractions) - 0.15) < 0.005
    assert min(fractions) > 0.099 and max(fractions) < 0.201


def test_random_crop_is_reproducible():
    def boxes(g):
        return [random_resized_crop_box(640, 480, (0.9, 1.0), (3 / 4, 4 / 3), g) for _ in range(20)]

    assert boxes(torch.Generator().manual_seed(5)) == boxes(torch.Generator().manual_seed(5))
    assert boxes(torch.Generator().manual_seed(5)) != boxes(torch.Generator().manual_seed(6))
    torch.manual_seed(5)  # generator=None draws from the global RNG, as torchvision does
    assert boxes(None) == boxes(torch.Generator().manual_seed(5))
