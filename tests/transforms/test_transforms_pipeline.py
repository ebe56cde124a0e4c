"""The full preprocessing callable: normalisation closed form, train crops, batching, config errors."""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from evaclip.errors import ConfigError
from evaclip.transforms import (
    OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, ImageInputError, ImageTransform, image_transform, images_to_tensor,
    random_resized_crop_box, resized_crop,
)


def noise_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4}[mode]
    values = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(values, mode)


@pytest.mark.parametrize("is_train", [False, True])
def test_normalisation_closed_form(is_train):
    color = (30, 200, 255)
    out = image_transform(16, is_train, seed=0)(Image.new("RGB", (40, 25), color))
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    for c in range(3):
        expected = (color[c] / 255.0 - OPENAI_DATASET_MEAN[c]) / OPENAI_DATASET_STD[c]
        assert torch.allclose(out[c], torch.full((16, 16), expected), atol=1e-6)
    custom = image_transform(8, False, mean=(0.5, 0.5, 0.5), std=0.25)(Image.new("RGB", (8, 8), (0, 255, 51)))
    assert torch.allclose(custom[:, 0, 0], torch.tensor([-2.0, 2.0, (0.2 - 0.5) / 0.25]), atol=1e-6)


def test_train_transform_is_a_resized_crop_of_the_image():
    img = noise_image(64, 48, seed=2)
    out = image_transform(32, True, seed=7)(img)
    assert out.shape == (3, 32, 32)
    box = random_resized_crop_box(64, 48, (0.9, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(7))
    top, left, h, w = box
    crop = np.asarray(img)[top : top + h, left : left + w]  # the crop itself, sliced in numpy
    expected = np.asarray(Image.fromarray(crop).resize((32, 32), Image.Resampling.BICUBIC))
    assert np.array_equal(np.asarray(resized_crop(img, box, 32, Image.Resampling.BICUBIC)), expected)
    mean, std = torch.tensor(OPENAI_DATASET_MEAN).view(3, 1, 1), torch.tensor(OPENAI_DATASET_STD).view(3, 1, 1)
    pixels = torch.from_numpy(expected.copy()).permute(2, 0, 1).float() / 255
    assert torch.allclose(out, (pixels - mean) / std, atol=1e-6)


def test_train_transform_determinism():
    img = noise_image(80, 60, seed=3)
    first = [image_transform(32, True, seed=1)(img) for _ in range(2)]
    assert torch.equal(first[0], first[1])  # same seed, fresh transform -> same crop
    transform = image_transform(32, True, seed=1)
    a, b = transform(img), transform(img)
    assert torch.equal(a, first[0]) and not torch.equal(a, b)  # successive calls draw new crops
    assert not torch.equal(image_transform(32, True, seed=2)(img), a)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(image_transform(32, True, generator=g1)(img), image_transform(32, True, generator=g2)(img))
    eval_transform = image_transform(32, False)
    assert torch.equal(eval_transform(img), eval_transform(img))


def test_any_mode_goes_through_and_transparency_is_kept_or_white():
    transparent = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    out = image_transform(8, False, transparency="white")(transparent)
    white = (1.0 - torch.tensor(OPENAI_DATASET_MEAN)) / torch.tensor(OPENAI_DATASET_STD)
    assert torch.allclose(out, white.view(3, 1, 1).expand(3, 8, 8), atol=1e-6)
    black = -torch.tensor(OPENAI_DATASET_MEAN) / torch.tensor(OPENAI_DATASET_STD)  # the reference's convert("RGB")
    assert torch.allclose(image_transform(8, False)(transparent), black.view(3, 1, 1).expand(3, 8, 8), atol=1e-6)
    with pytest.raises(ConfigError, match="transparency"):
        image_transform(8, False, transparency="grey")
    for img in [Image.new("L", (9, 12), 7), Image.new("I;16", (12, 9), 65535), Image.new("CMYK", (10, 10)),
                Image.new("P", (10, 10)), Image.new("1", (10, 10))]:
        assert image_transform(8, False)(img).shape == (3, 8, 8)


def test_images_to_tensor_stacks_transforms():
    images = [noise_image(30, 20, seed=s) for s in range(3)] + [noise_image(20, 30, seed=4, mode="RGBA")]
    transform = image_transform(16, False)
    batch = images_to_tensor(images, transform)
    assert batch.shape == (4, 3, 16, 16)
    for i, img in enumerate(images):
        assert torch.equal(batch[i], transform(img))
    assert images_to_tensor(images[0], transform).shape == (1, 3, 16, 16)
    with pytest.raises(ImageInputError, match="no images"):
        images_to_tensor([], transform)


def test_repr_is_readable():
    assert repr(image_transform(224, False)) == (
        "ImageTransform(ToRGB, ResizeShortest(224, bicubic), CenterCrop(224), ToTensor, "
        "Normalize(mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711)))")
    assert "RandomResizedCrop(224, scale=(0.9, 1.0), ratio=(0.75, 1.333), bicubic), seed=3" in repr(
        image_transform(224, True, seed=3))
    assert "Resize((32, 32), bicubic)" in repr(image_transform(32, False, resize_mode="squash"))


def test_transform_pickles_for_dataloader_workers():
    transform = image_transform(16, True, seed=4)
    clone = pickle.loads(pickle.dumps(transform))
    img = noise_image(40, 30)
    assert isinstance(clone, ImageTransform) and torch.equal(clone(img), transform(img))


@pytest.mark.parametrize("kwargs,match", [
    (dict(image_size=0), "image_size must be a positive int"),
    (dict(image_size=(224, 192)), "image_size must be a positive int"),
    (dict(resize_mode="longest"), "resize_mode must be one of"),
    (dict(interpolation="cubic"), "interpolation must be one of"),
    (dict(scale=(0.5, 1.5)), "scale must satisfy"),
    (dict(scale=(1.0, 0.5)), "scale must satisfy"),
    (dict(ratio=(0, 1)), "ratio must satisfy"),
    (dict(ratio="wide"), "ratio must be a pair"),
    (dict(mean=(0.5, 0.5)), "mean must have 3 numbers"),
    (dict(std=(1, 0, 1)), "std must be positive"),
    (dict(seed=1, generator=torch.Generator()), "either generator or seed"),
])
def test_bad_configs_raise_config_error(kwargs, match):
    args = dict(image_size=32, is_train=True) | kwargs
    with pytest.raises(ConfigError, match=match):
        image_transform(args.pop("image_size"), args.pop("is_train"), **args)


def test_bad_image_raises():
    with pytest.raises(ImageInputError, match="expected a PIL.Image.Image"):
        image_transform(16, False)("photo.jpg")
