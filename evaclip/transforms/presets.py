"""CLIP image preprocessing: PIL image -> normalised FloatTensor [3, S, S] (PIL + torch, no torchvision).

Evaluation: shortest side resized to S (bicubic) then centre-cropped to S x S, or "squash": resized straight to
S x S. Training: a random resized crop (area fraction in ``scale``, aspect ratio in ``ratio``, bicubic), no
flip. Then [0, 1] scaling and normalisation with the OpenAI CLIP mean/std. For RGB inputs every step
reproduces the official torchvision pipeline (same sizes, rounding, random draws and float32 arithmetic).
"""
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from evaclip.errors import ConfigError
from evaclip.transforms.color import TRANSPARENCY_MODES, ImageInputError, to_rgb
from evaclip.transforms.geometry import center_crop, random_resized_crop_box, resize_shortest, resized_crop

OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE_MODES = ("shortest", "squash")
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING,
}


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 tensor [3, H, W] in [0, 1] (uint8 / 255, as torchvision's ToTensor)."""
    array = np.array(img, dtype=np.uint8)  # a writable copy (torch.from_numpy shares its memory)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous().to(torch.float32).div(255)


def normalize(tensor: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel, in the tensor's dtype."""
    mean_t = torch.as_tensor(mean, dtype=tensor.dtype).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=tensor.dtype).view(-1, 1, 1)
    return tensor.sub(mean_t).div(std_t)


class ImageTransform:
    """Callable PIL image -> normalised FloatTensor [3, S, S]; built by :func:`image_transform`."""

    def __init__(
        self,
        image_size: int,
        is_train: bool,
        *,
        resize_mode: str = "shortest",
        scale: tuple[float, float] = (0.9, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        mean: Sequence[float] = OPENAI_DATASET_MEAN,
        std: Sequence[float] = OPENAI_DATASET_STD,
        interpolation: str = "bicubic",
        generator: torch.Generator | None = None,
        seed: int | None = None,
        transparency: str = "keep",
    ) -> None:
        self.image_size = _check_size(image_size)
        if transparency not in TRANSPARENCY_MODES:
            raise ConfigError(f"transparency must be one of {TRANSPARENCY_MODES}, got {transparency!r}")
        self.transparency = transparency
        self.is_train = bool(is_train)
        if resize_mode not in RESIZE_MODES:
            raise ConfigError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
        if interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}")
        self.resize_mode = resize_mode
        self.interpolation = interpolation
        self.scale = _check_range("scale", scale, upper=1.0)
        self.ratio = _check_range("ratio", ratio, upper=None)
        self.mean = _check_channels("mean", mean)
        self.std = _check_channels("std", std)
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std must be positive, got {self.std}")
        if generator is not None and seed is not None:
            raise ConfigError("pass either generator or seed, not both")
        self.seed = None if seed is None else int(seed)
        if self.seed is not None:
            generator = torch.Generator().manual_seed(self.seed)
        # None -> torch's global RNG, which DataLoader seeds differently in each worker. A fixed seed here
        # gives every worker (a copy of this object) the same crop sequence.
        self.generator = generator
        self._resample = INTERPOLATIONS[interpolation]

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = to_rgb(img, self.transparency)
        size = self.image_size
        if self.is_train:
            box = random_resized_crop_box(img.width, img.height, self.scale, self.ratio, self.generator)
            img = resized_crop(img, box, size, self._resample)
        elif self.resize_mode == "squash":
            img = img if img.size == (size, size) else img.resize((size, size), self._resample)
        else:
            img = center_crop(resize_shortest(img, size, self._resample), size, size)
        return normalize(to_tensor(img), self.mean, self.std)

    def __repr__(self) -> str:
        if self.is_train:
            geometry = (f"RandomResizedCrop({self.image_size}, scale={self.scale}, "
                        f"ratio=({self.ratio[0]:.4g}, {self.ratio[1]:.4g}), {self.interpolation})")
            if self.seed is not None:
                geometry += f", seed={self.seed}"
            elif self.generator is not None:
                geometry += ", own generator"
        elif self.resize_mode == "squash":
            geometry = f"Resize(({self.image_size}, {self.image_size}), {self.interpolation})"
        else:
            geometry = f"ResizeShortest({self.image_size}, {self.interpolation}), CenterCrop({self.image_size})"
        to_rgb_step = "ToRGB(transparent on white)" if self.transparency == "white" else "ToRGB"
        return (f"ImageTransform({to_rgb_step}, {geometry}, ToTensor, "
                f"Normalize(mean={self.mean}, std={self.std}))")


def image_transform(
    image_size: int,
    is_train: bool,
    *,
    resize_mode: str = "shortest",
    scale: tuple[float, float] = (0.9, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
    interpolation: str = "bicubic",
    generator: torch.Generator | None = None,
    seed: int | None = None,
    transparency: str = "keep",
) -> ImageTransform:
    """CLIP preprocessing for training (``is_train=True``: random resized crop) or evaluation.

    ``resize_mode`` ("shortest": resize + centre crop, or "squash": direct resize) applies to evaluation;
    ``scale``/``ratio``/``generator``/``seed`` to training. ``seed`` (or a ``torch.Generator``) makes the
    crops reproducible; without either, torch's global RNG is used. ``transparency``: "keep" (default) drops
    alpha / transparent colours as the reference's ``convert("RGB")`` does; "white" composites them on white.
    """
    return ImageTransform(image_size, is_train, resize_mode=resize_mode, scale=scale, ratio=ratio, mean=mean,
                          std=std, interpolation=interpolation, generator=generator, seed=seed,
                          transparency=transparency)


def images_to_tensor(images: Sequence[Image.Image], transform: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    """Apply ``transform`` to each image and stack: Tensor [N, 3, S, S]."""
    if isinstance(images, Image.Image):
        images = [images]
    images = list(images)
    if not images:
        raise ImageInputError("images_to_tensor() got no images; pass a non-empty list of PIL images")
    return torch.stack([transform(img) for img in images])


def _check_size(image_size: object) -> int:
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2 and image_size[0] == image_size[1]:
        image_size = image_size[0]  # the official code also accepts a square (s, s)
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ConfigError(f"image_size must be a positive int (or a square (s, s) pair), got {image_size!r}")
    return int(image_size)


def _check_range(name: str, value: object, upper: float | None) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a pair of numbers (low, high), got {value!r}") from None
    if not 0 < low <= high or (upper is not None and high > upper):
        bound = f"0 < low <= high <= {upper}" if upper is not None else "0 < low <= high"
        raise ConfigError(f"{name} must satisfy {bound}, got {value!r}")
    return low, high


def _check_channels(name: str, value: object) -> tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * 3  # one value for all channels, as the official code allows
    try:
        values = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3:
        raise ConfigError(f"{name} must have 3 numbers (one per RGB channel), got {value!r}")
    return values
