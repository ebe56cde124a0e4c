"""What is trained: the contrastive CLIP task and the masked-image-modeling (MIM) task.

Both implement :class:`Task`, the only thing the trainer (:mod:`evaclip.train.trainer`) knows about them: build
the trainable module (on a device, or on the meta device for sharded init, with its pretrained weights handed
over separately), compute the loss of one batch, do any per-step bookkeeping, export the final weights and
count the FLOPs of one sample.
"""
from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from evaclip import transforms
from evaclip.models import create_model, get_model_config, get_tokenizer
from evaclip.models.checkpoint import RUN_MODEL_CONFIG, RUN_WEIGHTS, save_file
from evaclip.models.config import CLIPConfig
from evaclip.models.factory import pretrained_state_dict
from evaclip.models.flops import model_flops
from evaclip.models.parallel import unwrap
from evaclip.outputs import atomic_write_text
from evaclip.train.config import TrainConfig
from evaclip.train.loss import ClipLoss, SigLipLoss


def model_config(cfg: TrainConfig) -> CLIPConfig:
    """The model config a run trains: ``model.name``'s config with the run's own settings applied (input size,
    patch dropout, fixed temperature, SigLIP's logit bias). The one translation from run config to model config,
    used by the tasks and by the planner."""
    model_cfg = get_model_config(cfg.model.name)
    cfg.model.fit_vision(model_cfg.vision_cfg)
    if cfg.model.patch_dropout is not None:
        model_cfg.vision_cfg.patch_dropout = cfg.model.patch_dropout
    if cfg.model.fixed_temperature is not None:
        # The paper: temperature fixed at 0.01, i.e. a constant logit scale of 100.
        model_cfg.init_logit_scale = math.log(1.0 / cfg.model.fixed_temperature)
        model_cfg.learn_logit_scale = False
    if cfg.loss.kind == "siglip":
        # SigLIP's initialisation: scale 10, bias -10 (Zhai et al. 2023).
        model_cfg.init_logit_bias = SigLipLoss.init_logit_bias
        if cfg.model.fixed_temperature is None:
            model_cfg.init_logit_scale = SigLipLoss.init_logit_scale
    model_cfg.validate()
    return model_cfg


class Task(ABC):
    """One kind of training. ``model_cfg`` is the run's model config (:func:`model_config`)."""

    name: str

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.model_cfg = model_config(cfg)

    @property
    def image_size(self) -> int:
        return self.model_cfg.vision_cfg.image_size

    # ---- the module ----------------------------------------------------------------------------------------
    @abstractmethod
    def build(self, device: torch.device) -> nn.Module:
        """The trainable module on ``device``, initialised and with the configured pretrained weights."""

    @abstractmethod
    def build_meta(self, device: torch.device) -> nn.Module:
        """The same module on the meta device (no memory), to be sharded before it is materialised. Whatever
        the task keeps unsharded beside it (the MIM teacher) goes to ``device``."""

    @abstractmethod
    def pretrained_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The configured pretrained weights fitted to ``model`` (a meta model), keyed like its state dict; empty
        when the run starts from scratch."""

    # ---- data ------------------------------------------------------------------------------------------------
    @abstractmethod
    def tokenizer(self) -> Callable:
        """The data workers' caption tokenizer."""

    def train_transform(self) -> Callable:
        return transforms.image_transform(self.image_size, is_train=True, scale=self.cfg.data.crop_scale)

    # ---- one step --------------------------------------------------------------------------------------------
    def make_loss(self) -> nn.Module | None:
        return None

    @abstractmethod
    def loss(self, model: nn.Module, loss_fn: nn.Module | None, images: torch.Tensor, tokens: torch.Tensor,
             frames: list[int] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """(the loss of this rank's batch, extra values to log) through ``model`` as wrapped for training.
        ``frames``: with video clips in the batch, the frame count of each sample (see evaclip.data.pipeline)."""

    def after_step(self, model: nn.Module) -> None:
        """Bookkeeping after an optimizer update."""

    # ---- results ---------------------------------------------------------------------------------------------
    @abstractmethod
    def export(self, full_state_dict: dict[str, torch.Tensor], out_dir: Path) -> list[Path]:
        """Write the final weights (full, unsharded, fp32) and their model config; the paths written."""

    @abstractmethod
    def flops_per_sample(self) -> float | None:
        """Model FLOPs of one training sample (for MFU)."""

    def flops_per_extra_frame(self) -> float:
        """FLOPs of each frame of a clip beyond its first (a clip costs one vision pass per frame)."""
        return 0.0

    def _write_export(self, full_state_dict: dict[str, torch.Tensor], out_dir: Path,
                      metadata: dict[str, str]) -> list[Path]:
        weights, config = out_dir / RUN_WEIGHTS, out_dir / RUN_MODEL_CONFIG
        save_file(full_state_dict, weights, metadata=metadata)
        atomic_write_text(config, json.dumps(self.model_cfg.to_dict(), indent=2) + "\n", what="training output")
        return [weights, config]


class ClipTask(Task):
    """Contrastive image-text training of an EVA-CLIP model (InfoNCE over the global batch, or SigLIP)."""

    name = "clip"

    def build(self, device: torch.device) -> nn.Module:
        m = self.cfg.model
        model = create_model(self.model_cfg, m.pretrained, pretrained_image=m.pretrained_image,
                             pretrained_text=m.pretrained_text, skip_keys=m.skip_keys)
        self._finish(model)
        return model.to(device)

    def build_meta(self, device: torch.device) -> nn.Module:
        model = create_model(self.model_cfg, device="meta")
        self._finish(model)
        return model

    def pretrained_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        m = self.cfg.model
        return pretrained_state_dict(model, m.pretrained, m.pretrained_image, m.pretrained_text, m.skip_keys)

    def _finish(self, model: nn.Module) -> None:
        if self.cfg.model.lock_text:
            for p in model.text.parameters():
                p.requires_grad_(False)
        if self.cfg.model.grad_checkpointing:
            model.set_grad_checkpointing(True)

    def tokenizer(self):
        return get_tokenizer(self.model_cfg)

    def make_loss(self) -> nn.Module:
        if self.cfg.loss.kind == "siglip":
            return SigLipLoss()
        return ClipLoss(local_loss=self.cfg.loss.local_loss, gather_with_grad=self.cfg.loss.gather_with_grad,
                        mask_duplicate_texts=self.cfg.loss.mask_duplicate_texts)

    def loss(self, model: nn.Module, loss_fn: nn.Module, images: torch.Tensor, tokens: torch.Tensor,
             frames: list[int] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        # A clip is a sample like an image: its feature is the mean over its frames (video_features).
        image_features, text_features, scale = (model(images, tokens) if frames is None
                                                else model(images, tokens, frame_counts=frames))
        if self.cfg.loss.kind == "siglip":
            loss = loss_fn(image_features, text_features, scale, unwrap(model).logit_bias)
        else:
            loss = loss_fn(image_features, text_features, scale, tokens)
        return loss, {"logit_scale": scale}

    def after_step(self, model: nn.Module) -> None:
        clip = unwrap(model)
        if clip.logit_scale.requires_grad:  # a fixed temperature is left where the config put it
            clip.clamp_logit_scale()

    def export(self, full_state_dict: dict[str, torch.Tensor], out_dir: Path) -> list[Path]:
        return self._write_export(full_state_dict, out_dir, {"format": "evaclip-training-layout"})

    def flops_per_sample(self) -> float | None:
        """Model FLOPs of one training pair (3x forward; recomputation is not counted, as MFU convention has it)."""
        return float(model_flops(self.model_cfg, self.model_cfg.vision_cfg.patch_dropout).training())

    def flops_per_extra_frame(self) -> float:
        return 3.0 * model_flops(self.model_cfg, self.model_cfg.vision_cfg.patch_dropout).vision


def make_task(cfg: TrainConfig) -> Task:
    if cfg.task == "mim":
        from evaclip.train.mim_task import MIMTask
        return MIMTask(cfg)
    return ClipTask(cfg)
