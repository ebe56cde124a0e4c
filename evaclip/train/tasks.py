"""What is trained: the contrastive CLIP task and the masked-image-modeling (MIM) task.

A task builds the trainable module, computes the loss of one batch, does any per-step bookkeeping, and knows
how to export the final weights. The trainer (:mod:`evaclip.train.trainer`) is the same for both.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evaclip.train.config import TrainConfig


class ClipTask:
    """Contrastive image-text training of an EVA-CLIP model (InfoNCE over the global batch, or SigLIP)."""

    name = "clip"

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        from evaclip.models import get_model_config
        self.model_cfg = get_model_config(cfg.model.name)
        cfg.model.fit_vision(self.model_cfg.vision_cfg)
        if cfg.model.patch_dropout is not None:
            self.model_cfg.vision_cfg.patch_dropout = cfg.model.patch_dropout
        if cfg.model.fixed_temperature is not None:
            # The paper: temperature fixed at 0.01, i.e. a constant logit scale of 100.
            self.model_cfg.init_logit_scale = math.log(1.0 / cfg.model.fixed_temperature)
            self.model_cfg.learn_logit_scale = False
        if cfg.loss.kind == "siglip":
            from evaclip.train.loss import SigLipLoss
            # SigLIP's initialisation: scale 10, bias -10 (Zhai et al. 2023).
            self.model_cfg.init_logit_bias = SigLipLoss.init_logit_bias
            if cfg.model.fixed_temperature is None:
                self.model_cfg.init_logit_scale = SigLipLoss.init_logit_scale
        self.model_cfg.validate()

    @property
    def image_size(self) -> int:
        return self.model_cfg.vision_cfg.image_size

    def build(self, device: torch.device) -> nn.Module:
        from evaclip.models import create_model
        m = self.cfg.model
        model = create_model(self.model_cfg, m.pretrained, pretrained_image=m.pretrained_image,
                             pretrained_text=m.pretrained_text, skip_keys=m.skip_keys)
        self._finish(model)
        return model.to(device)

    def build_meta(self) -> nn.Module:
        """The same model on the meta device (no memory), to be sharded before it is materialised."""
        from evaclip.models import create_model
        model = create_model(self.model_cfg, device="meta")
        self._finish(model)
        return model

    def pretrained_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The configured pretrained weights fitted to ``model`` (a meta model), keyed like its state dict."""
        from evaclip.models.factory import pretrained_state_dict
        m = self.cfg.model
        return pretrained_state_dict(model, m.pretrained, m.pretrained_image, m.pretrained_text, m.skip_keys)

    def _finish(self, model: nn.Module) -> None:
        if self.cfg.model.lock_text:
            for p in model.text.parameters():
                p.requires_grad_(False)
        if self.cfg.model.grad_checkpointing:
            model.set_grad_checkpointing(True)

    def tokenizer(self):
        from evaclip.models import get_tokenizer
        return get_tokenizer(self.model_cfg)

    def make_loss(self) -> nn.Module:
        from evaclip.train.loss import ClipLoss, SigLipLoss
        if self.cfg.loss.kind == "siglip":
            return SigLipLoss()
        return ClipLoss(local_loss=self.cfg.loss.local_loss, gather_with_grad=self.cfg.loss.gather_with_grad,
                        mask_duplicate_texts=self.cfg.loss.mask_duplicate_texts)

    def loss(self, model: nn.Module, loss_fn: nn.Module, images: torch.Tensor, tokens: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, float]]:
        image_features, text_features, scale = model(images, tokens)
        if self.cfg.loss.kind == "siglip":
            loss = loss_fn(image_features, text_features, scale, _unwrap(model).logit_bias)
        else:
            loss = loss_fn(image_features, text_features, scale, tokens)
        return loss, {"logit_scale": scale}

    def after_step(self, model: nn.Module) -> None:
        scale = _unwrap(model).logit_scale
        if scale.requires_grad:  # the official post-step clamp: temperature never below 0.01
            with torch.no_grad():
                scale.clamp_(0, math.log(100.0))

    def export(self, full_state_dict: dict[str, torch.Tensor], out_dir: Path) -> list[Path]:
        from evaclip.models.checkpoint import save_file
        from evaclip.outputs import atomic_write_text
        weights, config = out_dir / "final.safetensors", out_dir / "model_config.json"
        save_file(full_state_dict, weights, metadata={"format": "evaclip-training-layout"})
        atomic_write_text(config, json.dumps(self.model_cfg.to_dict(), indent=2) + "\n", what="training output")
        return [weights, config]

    def flops_per_sample(self) -> float | None:
        """Model FLOPs of one training pair (3x forward; recomputation is not counted, as MFU convention has it)."""
        from evaclip.models.flops import model_flops
        return float(model_flops(self.model_cfg, self.model_cfg.vision_cfg.patch_dropout).training())


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def make_task(cfg: TrainConfig) -> Any:
    if cfg.task == "mim":
        from evaclip.train.mim_task import MIMTask
        return MIMTask(cfg)
    return ClipTask(cfg)
