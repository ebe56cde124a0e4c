"""Fitting a state dict to a module: the one path by which weights enter an evaclip model.

:func:`load_checkpoint` reads (safely, see :mod:`.reading`), converts with the layout's adapter (see
:mod:`.adapters`), takes the part that belongs to the module (a tower takes its ``visual.``/``text.`` keys),
interpolates a vision position embedding or patch kernel of another size, checks names, shapes and dtypes,
and copies the tensors, or hands them back for a model on the meta device. :func:`load_pretrained` is
``create_model``'s tower initialisation, used by the factory for real and sharded (meta) models alike.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from evaclip.errors import CheckpointError
from evaclip.models.checkpoint.adapters import StateDict, to_training_layout
from evaclip.models.checkpoint.reading import read_state_dict
from evaclip.models.vision import interpolate_pos_embed

log = logging.getLogger(__name__)

# Tower-relative key prefixes. A masked-image-modeling file's vision tower has a mask token and a head to the
# teacher's features that a CLIP's does not: they are left out (and reported) when the module lacks them.
MIM_ONLY = ("mask_token", "lm_head.")
# The weak-to-strong skip list: what stays freshly initialised when a CLIP's towers are taken from other
# models (the paper's 8B/18B recipes): the CLIP vision head (absent from MIM files), the text tower's
# projection to the joint space (the embedding size may change; ``proj.`` is an HF text tower's). The
# temperature is never taken from a tower file, so it needs no entry.
VISION_REINIT = ("head.",)
TEXT_REINIT = ("text_projection", "proj.")
WEAK_TO_STRONG_SKIP = VISION_REINIT + TEXT_REINIT


@dataclass
class LoadReport:
    """What happened when a checkpoint was loaded into a module."""

    path: str
    layout: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # dropped on purpose (RoPE tables, MIM head, skip list)
    resized: list[str] = field(default_factory=list)
    # The fitted tensors, keyed like the module's state dict (kept when the module is on the meta device,
    # so a sharded model can receive them with set_model_state_dict).
    tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self, limit: int = 6) -> str:
        parts = []
        if self.mismatched:
            shown = ", ".join(f"{k} (file {tuple(a)} vs model {tuple(b)})" for k, a, b in self.mismatched[:limit])
            parts.append(f"{len(self.mismatched)} mis-shaped: {shown}")
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {', '.join(self.missing[:limit])}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: {', '.join(self.unexpected[:limit])}")
        return "; ".join(parts)

    def __str__(self) -> str:
        s = f"{self.path} ({self.layout} layout): {len(self.loaded)} tensors loaded"
        if self.resized:
            s += f", resized {', '.join(self.resized)}"
        if self.ignored:
            s += f", {len(self.ignored)} ignored"
        return s + (f"; {self.problems()}" if not self.ok else "")


def _resize_for(model_sd: Mapping[str, torch.Tensor], sd: StateDict, report: LoadReport, prefix: str) -> None:
    """Interpolate a vision position embedding / patch kernel of another size (bicubic, cls entry kept)."""
    if prefix == "text.":
        return
    root = "visual." if prefix == "" else ""
    pos_key, patch_key = root + "pos_embed", root + "patch_embed.proj.weight"
    if pos_key in sd and pos_key in model_sd and sd[pos_key].shape != model_sd[pos_key].shape:
        target = model_sd[pos_key].shape
        if sd[pos_key].shape[-1] == target[-1]:
            new_grid = int(round((target[1] - 1) ** 0.5))
            try:
                sd[pos_key] = interpolate_pos_embed(sd[pos_key], new_grid)
                report.resized.append(f"{pos_key} {tuple(target)}")
            except ValueError:
                pass  # reported as mis-shaped below
    if patch_key in sd and patch_key in model_sd and sd[patch_key].shape != model_sd[patch_key].shape:
        a, b = sd[patch_key].shape, model_sd[patch_key].shape
        if a[:2] == b[:2]:
            sd[patch_key] = F.interpolate(sd[patch_key].float(), size=tuple(b[2:]), mode="bicubic",
                                          align_corners=False).to(sd[patch_key].dtype)
            report.resized.append(f"{patch_key} {tuple(b)}")


def _mim_extra(key: str, prefix: str) -> bool:
    """Whether ``key`` (relative to a module loaded with ``prefix``) is a vision key only MIM models have."""
    if prefix == "":
        return key.startswith("visual.") and key[len("visual."):].startswith(MIM_ONLY)
    return prefix == "visual." and key.startswith(MIM_ONLY)


def load_checkpoint(module: nn.Module, checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
                    strict: bool = True, skip: Iterable[str] = (), allow_missing: Iterable[str] = (),
                    allow_nonfinite: bool = False, interpolate: bool = True) -> LoadReport:
    """Load a checkpoint of any official layout into a CLIP model or into one of its towers.

    Args:
        module: a :class:`~evaclip.models.clip.CLIP`, its ``visual`` tower or its ``text`` tower. A tower takes
            the matching part of a whole-CLIP file; a vision-only (e.g. MIM) file goes into ``visual``.
        checkpoint: a file path, or a state dict already in memory.
        strict: raise :class:`CheckpointError` on any missing, unexpected or mis-shaped key (nothing is
            loaded then). Non-strict loads what fits and reports the rest, but still refuses a file that
            matches no key at all, the classic silent failure.
        skip: key prefixes (relative to ``module``) to drop from the file and leave freshly initialised, e.g.
            ``("text_projection", "logit_scale")`` when re-using a text tower with a new embedding size.
        allow_missing: key prefixes that may be absent from the file even when strict.
        allow_nonfinite: load NaN/inf weights instead of refusing them (:class:`CheckpointError`).
        interpolate: fit a vision position embedding / patch kernel of another size by interpolation; without
            it such a tensor is mis-shaped (for resuming, where a size change means the wrong file).
    """
    raw, name = read_state_dict(checkpoint, allow_nonfinite=allow_nonfinite)
    sd, layout, dropped = to_training_layout(raw)
    report = LoadReport(path=name, layout=layout, ignored=list(dropped))

    # Towers declare which part of a whole-CLIP state dict is theirs ("visual." / "text."); a CLIP takes all.
    prefix = getattr(module, "checkpoint_prefix", "")
    if prefix:
        report.ignored += [k for k in sd if not k.startswith(prefix)]
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    skip, allow_missing = tuple(skip), tuple(allow_missing)
    for key in [k for k in sd if skip and k.startswith(skip)]:
        report.ignored.append(key)
        del sd[key]

    model_sd = module.state_dict()
    for key in [k for k in sd if k not in model_sd and _mim_extra(k, prefix)]:
        report.ignored.append(prefix + key)
        del sd[key]
    # Casting would turn integer or boolean data into "weights" without a word: such a file is not this model's.
    wrong = [k for k, v in sd.items()
             if k in model_sd and model_sd[k].is_floating_point() and not v.is_floating_point()]
    if wrong:
        raise CheckpointError(f"{name}: {len(wrong)} tensors have a non-float dtype for float parameters (e.g. "
                              f"{wrong[0]}: {sd[wrong[0]].dtype}); it is not a weights file for this model")
    if interpolate:
        _resize_for(model_sd, sd, report, prefix)
    for key, value in sd.items():
        if key not in model_sd:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(model_sd[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(model_sd[key].shape)))
        else:
            report.loaded.append(key)
    report.missing = [k for k in model_sd if k not in sd and not (k.startswith(skip) if skip else False)
                      and not (allow_missing and k.startswith(allow_missing))]

    if not report.loaded:
        raise CheckpointError(f"{name} ({layout} layout) has no tensor that fits {type(module).__name__}"
                              f"{' (' + prefix.rstrip('.') + ' tower)' if prefix else ''}: {report.problems()}")
    if strict and not report.ok:
        raise CheckpointError(f"{name} does not match {type(module).__name__}: {report.problems()}. "
                              "Check the model config, or load with strict=False to keep what fits")
    if report.mismatched:  # non-strict: never copy a mis-shaped tensor
        for key, _, _ in report.mismatched:
            sd.pop(key, None)
    for key in report.unexpected:
        sd.pop(key, None)
    params = dict(module.named_parameters())
    params.update(dict(module.named_buffers()))
    if any(p.is_meta for p in params.values()):
        # Nothing to copy into: hand the fitted tensors back (see evaclip.train.trainer's meta init).
        report.tensors = {k: sd[k].to(params[k].dtype) for k in report.loaded}
        return report
    with torch.no_grad():
        for key in report.loaded:
            params[key].copy_(sd[key].to(params[key].dtype))
    return report




def load_pretrained(model: nn.Module, pretrained=None, pretrained_image=None, pretrained_text=None, *,
                    skip_keys: Iterable[str] = (), strict: bool = True, allow_nonfinite: bool = False
                    ) -> dict[str, torch.Tensor]:
    """Load ``create_model``'s weights into a CLIP: ``pretrained`` (the whole model, ``strict`` as asked), then
    ``pretrained_image`` / ``pretrained_text`` into the towers.

    Tower initialisation is strict except for what the caller re-initialises (``skip_keys``) and, for the
    vision tower, the CLIP projection head, which a MIM file does not have. On a model on the meta device
    nothing is copied: the fitted tensors are returned, keyed like ``model.state_dict()``, for a sharded model
    to receive after wrapping (otherwise the result is empty).
    """
    out: dict[str, torch.Tensor] = {}
    if pretrained:
        report = load_checkpoint(model, pretrained, strict=strict, allow_nonfinite=allow_nonfinite)
        log.info("loaded %s", report)
        out.update(report.tensors)
    skip = tuple(skip_keys)
    for what, tower, source, allow_missing in (("vision tower", model.visual, pretrained_image, VISION_REINIT),
                                               ("text tower", model.text, pretrained_text, ())):
        if source:
            report = load_checkpoint(tower, source, strict=True, skip=skip, allow_missing=allow_missing,
                                     allow_nonfinite=allow_nonfinite)
            log.info("%s: %s", what, report)
            out.update({tower.checkpoint_prefix + k: v for k, v in report.tensors.items()})
    return out


def load_state_dict(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> tuple[StateDict, str, list[str]]:
    """A checkpoint of any layout as a CLIP's state dict (training layout): returns it, the layout's name and
    the keys left out on purpose (RoPE tables, a MIM model's mask token and head). NaN/inf are refused unless
    ``allow_nonfinite``."""
    sd, _ = read_state_dict(path, allow_nonfinite=allow_nonfinite)
    out, layout, dropped = to_training_layout(sd)
    for key in [k for k in out if _mim_extra(k, "")]:
        dropped.append(key)
        del out[key]
    return out, layout, dropped
