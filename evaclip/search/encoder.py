"""The model behind an index: loading it from what the index recorded, and proving it is the same model.

An index records the model's name, its resolved config and the checkpoint path, plus the embedding of a fixed
synthetic *probe* image. Whoever loads the model again (``serve``, or an incremental ``index`` run) embeds the
probe and compares: a different checkpoint, config or preprocessing gives a different embedding, and the
mismatch is refused instead of returning quietly wrong neighbours.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from evaclip.errors import CheckpointError, EvaclipError

# Same-model probes agree to ~1e-7 in fp32; bf16/fp16 weights or another device move them by < 1e-2.
PROBE_MIN_COSINE = 0.99


class ModelMismatchError(EvaclipError):
    """The model given (or recorded) does not reproduce the embeddings of an index."""


def probe_image() -> Image.Image:
    """A fixed 64x64 RGB test card (gradients and a checkerboard): enough structure to tell models apart."""
    y, x = np.mgrid[0:64, 0:64]
    rgb = np.stack([x * 4, y * 4, ((x // 8 + y // 8) % 2) * 255], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


class Encoder:
    """An EVA-CLIP model with its eval transform and tokenizer; embeds images and texts (L2-normalised)."""

    def __init__(self, model: str, pretrained: str | None, *, device: str = "cpu", precision: str = "fp32",
                 config: dict | None = None):
        import evaclip
        self.model_name = model
        self.pretrained = pretrained
        self.device = torch.device(device)
        self.precision = precision
        cfg = evaclip.get_model_config(config if config is not None else model)
        self.config = cfg.to_dict()
        if pretrained is not None and not Path(pretrained).exists():
            raise CheckpointError(f"checkpoint {pretrained} does not exist")
        self.model, _, self.preprocess = evaclip.create_model_and_transforms(
            cfg, pretrained, device=device, precision=precision)
        self.model.eval()
        self.tokenizer = evaclip.get_tokenizer(cfg)
        self.dim = int(cfg.embed_dim)
        self.image_size = int(self.model.visual.image_size)
        self._dtype = next(self.model.parameters()).dtype
        # One forward at a time: torch parallelises inside an op, and interleaved calls only thrash the cache.
        self.lock = threading.Lock()

    @torch.no_grad()
    def encode_pixels(self, batch: torch.Tensor) -> np.ndarray:
        with self.lock:
            out = self.model.encode_image(batch.to(self.device, self._dtype), normalize=True)
        return out.float().cpu().numpy()

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.encode_pixels(torch.stack([self.preprocess(im) for im in images]))

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        tokens = self.tokenizer(list(texts)).to(self.device)
        with self.lock:
            out = self.model.encode_text(tokens, normalize=True)
        return out.float().cpu().numpy()

    def probe(self) -> np.ndarray:
        return self.encode_images([probe_image()])[0]

    def record(self) -> dict:
        """What an index stores so that the same model can be rebuilt and checked without flags."""
        pretrained = os.path.abspath(self.pretrained) if self.pretrained else None
        return {"name": str(self.model_name), "config": self.config, "pretrained": pretrained,
                "precision": self.precision, "embed_dim": self.dim, "image_size": self.image_size,
                "probe": [float(v) for v in self.probe()]}


def check_same_model(encoder: Encoder, recorded: dict, where: str) -> None:
    """Refuse an encoder whose embeddings differ from those the index was built with."""
    if encoder.dim != recorded.get("embed_dim"):
        raise ModelMismatchError(
            f"{where} holds {recorded.get('embed_dim')}-d embeddings of model {recorded.get('name')}, but the "
            f"model given embeds to {encoder.dim} dimensions; use the index's model or build a new index")
    probe = np.asarray(recorded.get("probe") or [], np.float32)
    got = encoder.probe()
    cosine = float(probe @ got) if probe.shape == got.shape else -1.0
    if cosine < PROBE_MIN_COSINE and recorded.get("pretrained") is None:
        raise ModelMismatchError(
            f"{where} was built with random weights (no --pretrained), which no later run can reproduce; build "
            "the index again with a checkpoint (save the model with safetensors first)")
    if cosine < PROBE_MIN_COSINE:
        raise ModelMismatchError(
            f"{where} was built with model {recorded.get('name')} and checkpoint {recorded.get('pretrained')}, "
            f"and this model embeds differently (probe cosine {cosine:.3f}); use that checkpoint or build a new "
            "index with --out elsewhere")


def load_recorded(recorded: dict, where: str, *, pretrained: str | None = None, device: str = "cpu") -> Encoder:
    """Rebuild the model an index recorded (``pretrained`` overrides a moved checkpoint) and check it."""
    if pretrained is not None and not Path(pretrained).exists():
        raise CheckpointError(f"--pretrained {pretrained} does not exist")
    checkpoint = pretrained if pretrained is not None else recorded.get("pretrained")
    if checkpoint is not None and not Path(checkpoint).exists():
        raise CheckpointError(f"{where} was built with checkpoint {checkpoint}, which no longer exists; pass "
                              "--pretrained with its new location")
    encoder = Encoder(recorded.get("name", "?"), checkpoint, device=device,
                      precision=recorded.get("precision", "fp32"), config=recorded["config"])
    check_same_model(encoder, recorded, where)
    return encoder
