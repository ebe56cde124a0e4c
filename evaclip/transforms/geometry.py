"""Resize, centre crop and random-resized-crop geometry, following torchvision's rules exactly.

The official EVA-CLIP code uses torchvision's ``Resize(size)`` + ``CenterCrop(size)`` for evaluation and
``RandomResizedCrop(size, scale=(0.9, 1.0))`` for training, on PIL images. These functions reproduce their
size arithmetic, rounding and random draws (same RNG calls in the same order), so crops are pixel-identical.
"""
import math

import torch
from PIL import Image

Box = tuple[int, int, int, int]  # (top, left, height, width), torchvision's order


def shortest_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after scaling the shorter side to ``size``; the longer side is truncated, not rounded."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def resize_shortest(img: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """Scale ``img`` so that its shorter side is ``size`` (aspect ratio kept)."""
    new_size = shortest_side_size(img.width, img.height, size)
    return img if new_size == img.size else img.resize(new_size, resample)


def center_crop_box(width: int, height: int, crop_height: int, crop_width: int) -> Box:
    """Centre crop box; odd margins are split with Python's round-half-to-even, as torchvision does."""
    top = int(round((height - crop_height) / 2.0))
    left = int(round((width - crop_width) / 2.0))
    return top, left, crop_height, crop_width


def center_crop(img: Image.Image, crop_height: int, crop_width: int) -> Image.Image:
    """Crop the centre of ``img``; an image smaller than the crop is first zero-padded (torchvision rule)."""
    if crop_width > img.width or crop_height > img.height:
        pad_w, pad_h = max(crop_width - img.width, 0), max(crop_height - img.height, 0)
        padded = Image.new(img.mode, (img.width + pad_w, img.height + pad_h))
        padded.paste(img, (pad_w // 2, pad_h // 2))
        img = padded
    top, left, h, w = center_crop_box(img.width, img.height, crop_height, crop_width)
    return img.crop((left, top, left + w, top + h))


def random_resized_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> Box:
    """Sample a crop box like torchvision's ``RandomResizedCrop.get_params``.

    Up to 10 attempts draw an area fraction uniformly in ``scale`` and an aspect ratio (w/h) log-uniformly in
    ``ratio``; the first box that fits is placed uniformly at random. If none fits, the fallback is the
    largest centred box whose aspect ratio is clamped into ``ratio``. ``generator=None`` uses torch's global
    RNG (then the draws equal torchvision's for the same seed).
    """
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))  # float32, as in torchvision
    log_low, log_high = float(log_ratio[0]), float(log_ratio[1])
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_low, log_high, generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(img: Image.Image, box: Box, size: int, resample: Image.Resampling) -> Image.Image:
    """Cut ``box`` out of ``img`` and resize it to ``size`` x ``size``."""
    top, left, h, w = box
    return img.crop((left, top, left + w, top + h)).resize((size, size), resample)
