"""Weak-to-strong initialisation: a bigger EVA-CLIP from a MIM student and a (smaller) EVA-CLIP teacher.

As in the paper (and the official 8B/18B recipes): the vision tower comes from the masked-image-modeling
student (its ``mask_token`` and ``lm_head`` are dropped, the CLIP ``head`` starts fresh), the text tower from
the teacher CLIP, except its projection to the joint space, which is re-initialised like ``logit_scale``
(the embedding size may change, and the new vision head must be matched from scratch anyway).

This is the same as the recipe form::

    evaclip.create_model(cfg, pretrained_image=mim_file, pretrained_text=teacher_file,
                         skip_keys=WEAK_TO_STRONG_SKIP)

but every tensor that is not re-initialised on purpose must be found in the files: a missing block raises
:class:`~evaclip.errors.CheckpointError` instead of silently staying random.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from evaclip.models.checkpoint import LoadReport, load_checkpoint
from evaclip.models.clip import CLIP
from evaclip.models.config import CLIPConfig

log = logging.getLogger(__name__)

# Tower-relative key prefixes left freshly initialised: the CLIP vision head (absent from MIM files; skipped
# if a file has one, as the official skip list does), the CLIP text projection and the HF tower's projection.
VISION_REINIT = ("head.",)
TEXT_REINIT = ("text_projection", "proj.")
WEAK_TO_STRONG_SKIP = VISION_REINIT + TEXT_REINIT


def init_student_clip(student_cfg_or_name: str | Path | dict | CLIPConfig, mim_checkpoint: str | os.PathLike,
                      teacher_clip_checkpoint: str | os.PathLike, *, device: str = "cpu",
                      precision: str = "fp32") -> CLIP:
    """Build the student EVA-CLIP: vision tower <- MIM student, text tower <- teacher CLIP.

    Re-initialised: ``visual.head.*``, the text projection (``text.text_projection`` or ``text.proj.*``) and
    ``logit_scale``. Everything else is loaded strictly (shapes must match the student config).
    """
    from evaclip.models.factory import create_model
    model = create_model(student_cfg_or_name, device=device, precision=precision)
    vision = load_checkpoint(model.visual, mim_checkpoint, strict=True, skip=VISION_REINIT,
                             allow_missing=VISION_REINIT)
    text = load_checkpoint(model.text, teacher_clip_checkpoint, strict=True, skip=TEXT_REINIT,
                           allow_missing=TEXT_REINIT)
    _log(vision, "vision <- MIM student")
    _log(text, "text <- teacher CLIP")
    return model


def _log(report: LoadReport, what: str) -> None:
    log.info("%s: %s", what, report)
