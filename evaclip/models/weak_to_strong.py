"""Weak-to-strong initialisation: a bigger EVA-CLIP from a MIM student and a (smaller) EVA-CLIP teacher.

As in the paper (and the official 8B/18B recipes): the vision tower comes from the masked-image-modeling
student (its ``mask_token`` and ``lm_head`` are dropped, the CLIP ``head`` starts fresh), the text tower from
the teacher CLIP, except its projection to the joint space, which is re-initialised like ``logit_scale``
(the embedding size may change, and the new vision head must be matched from scratch anyway).

:func:`init_student_clip` is the recipe form, spelled out::

    evaclip.create_model(cfg, pretrained_image=mim_file, pretrained_text=teacher_file,
                         skip_keys=WEAK_TO_STRONG_SKIP)

Every tensor that is not re-initialised on purpose must be found in the files: a missing block raises
:class:`~evaclip.errors.CheckpointError` instead of silently staying random.
"""
from __future__ import annotations

import os
from pathlib import Path

from evaclip.models.checkpoint import TEXT_REINIT, VISION_REINIT, WEAK_TO_STRONG_SKIP
from evaclip.models.clip import CLIP
from evaclip.models.config import CLIPConfig
from evaclip.models.factory import create_model

# The skip list has one home, beside the fitting that applies it (evaclip.models.checkpoint.fit); it is
# re-exported here, where recipes look for it.
__all__ = ["TEXT_REINIT", "VISION_REINIT", "WEAK_TO_STRONG_SKIP", "init_student_clip"]


def init_student_clip(student_cfg_or_name: str | Path | dict | CLIPConfig, mim_checkpoint: str | os.PathLike,
                      teacher_clip_checkpoint: str | os.PathLike, *, device: str = "cpu",
                      precision: str = "fp32") -> CLIP:
    """Build the student EVA-CLIP: vision tower <- MIM student, text tower <- teacher CLIP.

    Re-initialised: ``visual.head.*``, the text projection (``text.text_projection`` or ``text.proj.*``) and
    ``logit_scale``. Everything else is loaded strictly (shapes must match the student config).
    """
    return create_model(student_cfg_or_name, pretrained_image=mim_checkpoint, pretrained_text=teacher_clip_checkpoint,
                        skip_keys=WEAK_TO_STRONG_SKIP, device=device, precision=precision)
