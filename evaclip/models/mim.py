"""Masked image modeling with a CLIP teacher: the EVA step of the weak-to-strong loop.

A student EVA ViT sees images whose masked patch embeddings are replaced by a learned ``mask_token`` (BEiT
style: the whole sequence goes through the blocks, nothing is dropped) and regresses, at the masked
positions, the per-patch features of a frozen EVA-CLIP vision tower: its tokens after the final norm and the
CLIP projection head. The loss is the negative cosine similarity, so it lies in [-1, 1] and is negative once
the student is better than orthogonal (see ``../shared/reference/eva_official_code.md`` §6).

Extension (``include_cls``): the student's cls token is also trained towards the teacher's pooled CLIP image
embedding, through the same ``lm_head``. Contrastive training shapes the teacher's class token much more than
its patch tokens, so this adds the most useful part of the teacher's output to the target.

The student's state dict is the official MIM layout: the tower's keys unprefixed (``patch_embed.*``,
``cls_token``, ``pos_embed``, ``blocks.*``, ``norm.*``) plus ``mask_token`` and ``lm_head.*``, and no CLIP
``head`` (it would receive no gradient; the CLIP built from the student initialises a fresh one).
"""
from __future__ import annotations

import dataclasses
import os

import torch
import torch.nn.functional as F
from torch import nn

from evaclip.errors import ConfigError
from evaclip.models.checkpoint import LoadReport, load_checkpoint, save_file
from evaclip.models.config import VisionConfig
from evaclip.models.init import trunc_normal_
from evaclip.models.vision import EVAVisionTransformer


class MIMStudent(EVAVisionTransformer):
    """An EVA vision tower with a ``mask_token`` and an ``lm_head`` to the teacher's feature width.

    It *is* the vision tower (a subclass, not a wrapper), so its parameter names are the official MIM file's
    and the tower's ``layer_id`` / ``no_weight_decay`` / grad checkpointing apply unchanged.
    ``forward(images, mask)`` returns the predictions at the masked patches, (n_masked, teacher_dim).
    """

    def __init__(self, cfg: VisionConfig, teacher_dim: int):
        if not isinstance(teacher_dim, int) or isinstance(teacher_dim, bool) or teacher_dim <= 0:
            raise ConfigError(f"teacher_dim must be a positive integer, got {teacher_dim!r}")
        cfg.validate()
        if torch.empty(0).device.type != "meta":  # a real build: refuse a student larger than memory first
            from evaclip.models.factory import check_tower_fits
            check_tower_fits(lambda n: MIMStudent(dataclasses.replace(cfg, layers=n), teacher_dim), cfg.layers)
        super().__init__(cfg, embed_dim=cfg.width)
        self.teacher_dim = teacher_dim
        self.head = nn.Identity()  # no CLIP projection in MIM (see module docstring)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.lm_head = nn.Linear(cfg.width, teacher_dim)
        if not self.pos_embed.is_meta:
            self._init_mim()

    @torch.no_grad()
    def init_weights(self) -> None:
        super().init_weights()
        if hasattr(self, "lm_head"):  # the parent's __init__ calls this before the MIM parts exist
            self._init_mim()

    @torch.no_grad()
    def _init_mim(self) -> None:
        trunc_normal_(self.mask_token)
        trunc_normal_(self.lm_head.weight)
        nn.init.zeros_(self.lm_head.bias)
        if self.cfg.postnorm:
            # Res-post-norm blocks compute x + norm(f(x)); zero norm gains make every block the identity at
            # init, so a deep student starts as "embedding -> final norm" and each residual branch grows from
            # zero (ReZero-like). The official MIM code does this; its CLIP code relies on the MIM weights.
            for blk in self.blocks:
                for norm in (blk.norm1, blk.norm2):
                    nn.init.zeros_(norm.weight)
                    if getattr(norm, "bias", None) is not None:
                        nn.init.zeros_(norm.bias)

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"mask_token"}

    @property
    def grid_size(self) -> int:
        return self.cfg.grid_size

    def mask_embeddings(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Patch embeddings (B, N, W) with masked positions replaced by the mask token (before pos-emb)."""
        x = self.embed(images)
        if mask.shape != x.shape[:2]:
            raise ValueError(f"mask must have shape (batch, {x.shape[1]}) for {tuple(images.shape)} images, "
                             f"got {tuple(mask.shape)}")
        w = mask.unsqueeze(-1).to(x.dtype)
        return x * (1 - w) + self.mask_token.to(x.dtype) * w

    def forward(self, images: torch.Tensor, mask: torch.Tensor, return_cls: bool = False):
        """Predictions at the masked patches (n_masked, D), in ``mask`` order (batch-major, row-major grid).

        With ``return_cls`` also the cls-token prediction (B, D) for the ``include_cls`` target.
        """
        mask = mask.bool()
        x = self.forward_features(self.mask_embeddings(images, mask), patches_embedded=True,
                                  return_all_tokens=True)
        patches = self.lm_head(x[:, 1:][mask])
        if return_cls:
            return patches, self.lm_head(x[:, 0])
        return patches

    # ---- checkpoints (official MIM layout) ------------------------------------------------------------
    def state_dict_official(self) -> dict[str, torch.Tensor]:
        """The official MIM layout: unprefixed tower keys + ``mask_token`` + ``lm_head.*`` (no CLIP head)."""
        return {k: v for k, v in self.state_dict().items()}

    def save(self, path: str | os.PathLike) -> None:
        """Write the official-layout state dict as safetensors (atomically)."""
        save_file(self.state_dict_official(), path, metadata={"format": "pt", "evaclip_layout": "mim"})

    def load(self, path: str | os.PathLike, *, allow_nonfinite: bool = False) -> LoadReport:
        """Load an official-layout MIM file (e.g. one written by :meth:`save`) strictly, to resume or evaluate:
        every key must match this student, with no interpolation (a grid change means another model). A student
        on the meta device receives nothing: the report's ``tensors`` hold the fitted weights (sharded init)."""
        return load_checkpoint(self, path, strict=True, allow_nonfinite=allow_nonfinite, interpolate=False)


class MIMTeacher(nn.Module):
    """A frozen EVA-CLIP vision tower giving per-patch targets: final norm then the CLIP head, cls dropped.

    ``forward(images)`` -> (B, N, D), or ``((B, N, D), (B, D))`` with ``include_cls`` where the second part
    is the teacher's pooled CLIP image embedding (exactly ``visual(images)``).

    Grid alignment rule: the teacher runs on a ``student_grid x student_grid`` patch grid, i.e. on images of
    ``student_grid * teacher_patch`` pixels. When that differs from the tower's own size, the tower is rebuilt
    at the new size with its position embedding interpolated (bicubic, as the checkpoint loader does), and
    the student's images are resized (bicubic) to it. A RoPE teacher without ``intp_freq`` has rotary tables
    fixed to its pre-training grid, so it cannot be moved to another grid: that raises ConfigError.
    """

    def __init__(self, visual: EVAVisionTransformer, student_grid: int | None = None, include_cls: bool = False):
        super().__init__()
        grid = visual.cfg.grid_size
        if student_grid is not None and student_grid != grid:
            visual = _regrid(visual, student_grid)
        self.visual = visual
        self.include_cls = include_cls
        self.image_size = visual.image_size
        self.output_dim = visual.output_dim
        for p in self.visual.parameters():
            p.requires_grad_(False)
        self.train(False)

    @classmethod
    def from_checkpoint(cls, model: str | os.PathLike | dict, checkpoint: str | os.PathLike,
                        student_grid: int | None = None, include_cls: bool = False) -> "MIMTeacher":
        """The vision tower of an EVA-CLIP (config name/JSON ``model`` + CLIP ``checkpoint``), frozen.

        Only the vision tower is built (no text tower is loaded); the checkpoint's visual part must fit it
        exactly, its position embedding being interpolated when ``student_grid`` differs.
        """
        from evaclip.models.factory import get_model_config
        cfg = get_model_config(model)
        vcfg = cfg.vision_cfg
        if student_grid is not None and student_grid != vcfg.grid_size:
            _check_regrid(vcfg, student_grid)
            vcfg = dataclasses.replace(vcfg, image_size=student_grid * vcfg.patch_size)
        from evaclip.models.factory import check_tower_fits
        check_tower_fits(lambda n: EVAVisionTransformer(dataclasses.replace(vcfg, layers=n), cfg.embed_dim),
                         vcfg.layers)
        visual = EVAVisionTransformer(vcfg, cfg.embed_dim)
        load_checkpoint(visual, checkpoint, strict=True)
        return cls(visual, None, include_cls)

    def train(self, mode: bool = True) -> "MIMTeacher":
        # Always eval: no patch dropout or drop path in the targets, whatever the caller's model.train() does.
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor):
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images.float(), size=(self.image_size, self.image_size), mode="bicubic",
                                   align_corners=False, antialias=True).to(images.dtype)
        v = self.visual
        tokens = v.forward_features(images, return_all_tokens=True)  # after the final norm (unless GAP)
        if v.fc_norm is not None:  # mean-pooling towers: their final norm is fc_norm
            patch = v.head(v.fc_norm(tokens[:, 1:]))
            pooled = v.head(v.fc_norm(tokens.mean(1)))
        else:
            out = v.head(tokens)
            patch, pooled = out[:, 1:], out[:, 0]
        return (patch, pooled) if self.include_cls else patch


def _check_regrid(cfg: VisionConfig, student_grid: int) -> None:
    if not isinstance(student_grid, int) or student_grid < 1:
        raise ConfigError(f"student grid must be a positive integer, got {student_grid!r}")
    if cfg.rope and not cfg.intp_freq:
        raise ConfigError(
            f"cannot align the teacher's {cfg.grid_size}x{cfg.grid_size} grid with the student's "
            f"{student_grid}x{student_grid}: the teacher uses RoPE without intp_freq, so its rotary table is "
            "fixed to its own grid; use a student with the same grid or a teacher config with intp_freq=true")


def _regrid(visual: EVAVisionTransformer, student_grid: int) -> EVAVisionTransformer:
    """The same tower rebuilt at ``student_grid * patch`` pixels, position embedding interpolated."""
    _check_regrid(visual.cfg, student_grid)
    cfg = dataclasses.replace(visual.cfg, image_size=student_grid * visual.cfg.patch_size)
    new = EVAVisionTransformer(cfg, visual.output_dim).to(visual.pos_embed.device, visual.pos_embed.dtype)
    load_checkpoint(new, visual.state_dict(), strict=True)
    return new


def mim_loss(student_out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-mean(cos(student_out, target))`` over rows (masked patches), computed in fp32."""
    if student_out.shape != target.shape:
        raise ValueError(f"student output {tuple(student_out.shape)} and target {tuple(target.shape)} differ")
    if student_out.shape[0] == 0:
        raise ValueError("no masked patches in the batch: the MIM loss is undefined")
    return -F.cosine_similarity(student_out.float(), target.float(), dim=-1).mean()


def mim_step_loss(student: MIMStudent, teacher: MIMTeacher, images: torch.Tensor, mask: torch.Tensor,
                  cls_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss for one batch: masked-patch loss (+ ``cls_weight`` x cls loss with include_cls).

    Returns the loss and detached metric tensors for logging (no device sync until the caller reads them).
    """
    mask = mask.bool()
    targets = teacher(images)
    if teacher.include_cls:
        patch_target, cls_target = targets
        patch_pred, cls_pred = student(images, mask, return_cls=True)
        patch_loss = mim_loss(patch_pred, patch_target[mask])
        cls_loss = mim_loss(cls_pred, cls_target)
        loss = patch_loss + cls_weight * cls_loss
        return loss, {"loss": loss.detach(), "patch_loss": patch_loss.detach(), "cls_loss": cls_loss.detach()}
    loss = mim_loss(student(images, mask), targets[mask])
    return loss, {"loss": loss.detach(), "patch_loss": loss.detach()}
