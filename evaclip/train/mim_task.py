"""The masked-image-modeling task: the EVA step of the weak-to-strong loop.

A student EVA ViT (the vision tower of ``model.name``) regresses, at BEiT block-masked positions, the
per-patch features of a frozen EVA-CLIP teacher (``mim.teacher`` + ``mim.teacher_model``). The result is a
vision-only checkpoint in the official MIM layout (with ``mask_token`` and ``lm_head``), which initialises a
larger EVA-CLIP through ``model.pretrained_image`` (see the ``demo-student`` recipe).
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import nn

from evaclip import transforms
from evaclip.models.flops import mim_training_flops
from evaclip.models import sample_rng
from evaclip.models.masking import BlockMaskGenerator
from evaclip.models.mim import MIMStudent, MIMTeacher, mim_step_loss
from evaclip.errors import TrainingError
from evaclip.train.config import TrainConfig
from evaclip.train.tasks import Task


class _NoTokens:
    """MIM needs no text: a picklable stand-in tokenizer that costs nothing in the data workers."""

    context_length = 1

    def __call__(self, texts, context_length: int | None = None) -> torch.Tensor:
        return torch.zeros(len(texts) if isinstance(texts, list) else 1, 1, dtype=torch.long)


class FlipThenCrop:
    """EVA-02's MIM augmentation: ``RandomHorizontalFlip(p)`` then the crop shared by student and teacher.

    The teacher sees the student's (resized) crop, so one flip before the crop flips both views, as EVA-02's
    flip before its two-resolution crop does. The draw is torchvision's, ``torch.rand(1) < p`` on torch's
    global RNG, which the data workers seed apart from one another. ``mim.hflip`` sets p.
    """

    def __init__(self, crop, p: float = 0.5):
        self.crop, self.p = crop, p

    def __call__(self, img):
        # p = 0 draws nothing, so the crops stay those of a run without the flip (the demo's)
        if self.p > 0 and torch.rand(1).item() < self.p:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return self.crop(img)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p}), {self.crop!r}"


class MIMTask(Task):
    name = "mim"

    def __init__(self, cfg: TrainConfig):

        super().__init__(cfg)
        self.vision_cfg = self.model_cfg.vision_cfg
        grid = self.vision_cfg.grid_size
        self.teacher = MIMTeacher.from_checkpoint(cfg.mim.teacher_model, cfg.mim.teacher, student_grid=grid,
                                                  include_cls=cfg.mim.include_cls)
        ratio = cfg.mim.mask_ratio
        # None leaves the count to BlockMaskGenerator: EVA-02's 105 of 256, same share on other grids.
        count = None if ratio is None else max(1, round(ratio * grid * grid))
        self.masker = BlockMaskGenerator(grid, num_masking_patches=count)

    def train_transform(self):
        # EVA-02's MIM crop: RandomResizedCrop with scale (0.2, 1), after a horizontal flip.
        return FlipThenCrop(transforms.image_transform(self.image_size, is_train=True, scale=(0.2, 1.0)),
                            self.cfg.mim.hflip)

    def build(self, device: torch.device) -> nn.Module:
        student = MIMStudent(self.vision_cfg, teacher_dim=self.teacher.output_dim)
        if self.cfg.model.pretrained_image:  # continue from an earlier MIM file
            student.load(self.cfg.model.pretrained_image)
        self._finish(student, device)
        return student.to(device)

    def build_meta(self, device: torch.device) -> nn.Module:
        with torch.device("meta"):
            student = MIMStudent(self.vision_cfg, teacher_dim=self.teacher.output_dim)
        self._finish(student, device)
        return student

    def pretrained_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        if not self.cfg.model.pretrained_image:
            return {}
        # On a meta student nothing is copied: the fitted tensors come back in the report.
        return dict(model.load(self.cfg.model.pretrained_image).tensors)

    def _finish(self, student: nn.Module, device: torch.device) -> None:
        if self.cfg.model.grad_checkpointing:
            student.set_grad_checkpointing(True)
        # The frozen teacher is never sharded: every rank computes the targets of its own batch.
        self.teacher.to(device)

    def tokenizer(self):
        return _NoTokens()

    def loss(self, model: nn.Module, loss_fn, images: torch.Tensor, tokens: torch.Tensor,
             frames: list[int] | None = None):
        if frames is not None:
            raise TrainingError("the MIM task trains on images and the data has video clips; give it image "
                                "sources (video training is for the CLIP task)")
        # Each sample's mask is keyed by the sample (its global position, set by the trainer), so it is the same
        # on any number of processes; without keys, one seed from the global torch RNG.
        seeds = sample_rng.sub_keys(sample_rng.current(), sample_rng.MIM_MASK)
        if seeds is None:
            seeds = int(torch.randint(0, 2**31 - 1, (1,)))
        mask = self.masker(images.shape[0], seeds).to(images.device)
        loss, metrics = mim_step_loss(model, self.teacher, images, mask)
        return loss, {k: v for k, v in metrics.items() if k != "loss"}

    def export(self, full_state_dict: dict[str, torch.Tensor], out_dir: Path) -> list[Path]:
        # The model config written beside the weights is the CLIP whose vision tower this student is:
        # create_model(config, pretrained_image=weights).
        return self._write_export(full_state_dict, out_dir, {"format": "pt", "evaclip_layout": "mim"})

    def flops_per_sample(self) -> float | None:
        """Student training (3x forward) plus the frozen teacher's forward, per image."""
        return float(mim_training_flops(self.vision_cfg, self.teacher.visual.cfg, self.teacher.output_dim))
