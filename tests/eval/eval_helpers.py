"""Shared helpers for the eval tests: a tiny deterministic CLIP-like model, real PNG images drawn with PIL,
and numpy re-implementations of the model and transform (the independent reference)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from PIL import Image, ImageDraw

from evaclip.tokenizer import tokenize

SIZE = 16
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def to_array(image: Image.Image) -> np.ndarray:
    """The test transform in numpy: RGB, bilinear resize to SIZE x SIZE, [0, 1], CHW."""
    image = image.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
    return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0


def tiny_transform(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(to_array(image))


class ToyCLIP(nn.Module):
    """encode_image: linear map of the pixels; encode_text: mean of token embeddings, linear map."""

    def __init__(self, dim: int = 12, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.image_proj = nn.Parameter(torch.randn(3 * SIZE * SIZE, dim, generator=g) * 0.05)
        self.token_embedding = nn.Parameter(torch.randn(49408, dim, generator=g))
        self.text_proj = nn.Parameter(torch.randn(dim, dim, generator=g))

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        f = images.flatten(1) @ self.image_proj
        return nn.functional.normalize(f, dim=-1) if normalize else f

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        mask = (tokens != 0).float()[..., None]
        f = (self.token_embedding[tokens] * mask).sum(1) / mask.sum(1) @ self.text_proj
        return nn.functional.normalize(f, dim=-1) if normalize else f

    # numpy twins, used only as the reference
    def np_image(self, arrays: np.ndarray) -> np.ndarray:
        return arrays.reshape(len(arrays), -1) @ self.image_proj.detach().numpy()

    def np_text(self, texts: list[str]) -> np.ndarray:
        tokens = tokenize(texts).numpy()
        emb = self.token_embedding.detach().numpy()
        out = []
        for row in tokens:
            row = row[row != 0]
            out.append(emb[row].mean(0) @ self.text_proj.detach().numpy())
        return np.stack(out)


def np_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_zeroshot_logits(model: ToyCLIP, arrays: np.ndarray, classnames, templates) -> np.ndarray:
    """Independent zero-shot logits: per class mean of normalised prompt embeddings, renormalised."""
    head = []
    for c in classnames:
        t = np_normalize(model.np_text([tpl.replace("{c}", c) for tpl in templates]))
        head.append(t.mean(0))
    head = np_normalize(np.stack(head))
    return 100.0 * np_normalize(model.np_image(arrays)) @ head.T


def draw_shape(color: str, shape: str, rng: np.random.Generator, size: int = 24) -> Image.Image:
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 60, 3)))
    draw = ImageDraw.Draw(image)
    x0, y0 = (int(v) for v in rng.integers(0, size // 3, 2))
    x1, y1 = x0 + int(rng.integers(size // 2, size - x0)), y0 + int(rng.integers(size // 2, size - y0))
    fill = COLORS[color]
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    else:
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=fill)
    return image



def shapes(n_per_class: int, classes=("red", "green", "blue"), seed: int = 0):
    """[(class index, PIL image)] of coloured shapes."""
    rng = np.random.default_rng(seed)
    kinds = ["circle", "square", "triangle"]
    return [(ci, draw_shape(c, kinds[(ci + j) % 3], rng)) for ci, c in enumerate(classes) for j in range(n_per_class)]


class ColorCLIP(nn.Module):
    """A model that 'knows' colours: image -> mean RGB, text -> sum of one-hot vectors of the colour words it
    contains. Zero-shot on coloured shapes is then 100% right exactly when labels and class names line up."""

    def __init__(self):
        super().__init__()
        table = torch.zeros(49408, 3)
        for axis, word in enumerate(("red", "green", "blue")):
            table[int(tokenize(word)[0, 1]), axis] = 1.0
        self.register_buffer("table", table)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return images.mean(dim=(2, 3)) - images.mean(dim=(1, 2, 3))[:, None]  # colour, minus grey level

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.table[tokens].sum(1) + 1e-3
