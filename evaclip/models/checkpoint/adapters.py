"""One adapter per checkpoint layout, each in both directions: ``to_evaclip`` (a file's keys -> evaclip's
*training layout*, the keys of its modules: ``visual.*``, ``text.*``, ``logit_scale``) and ``from_evaclip`` (the
reverse, for export). :func:`adapter_for` picks the adapter from a state dict's keys.

Layouts (see ``../shared/reference/eva_official_code.md`` §4):

- ``training``: ``visual.*`` + ``text.*`` + ``logit_scale`` (the official CustomCLIP state dict, and evaclip's);
- ``flat`` (export name ``official``): ``visual.*`` + OpenAI-style text keys (``transformer.resblocks.*``,
  ``token_embedding``, ``positional_embedding``, ``ln_final``, ``text_projection``), as in the released ``.pt``
  files;
- ``vision``: unprefixed vision-tower keys (``patch_embed.*``, ``blocks.*``...), e.g. the masked-image-modeling
  files, which also carry ``mask_token`` and ``lm_head.*``;
- ``open_clip``: open_clip's EVA models (``EVA02-B-16``...): the vision tower is a timm ``Eva`` trunk
  (``visual.trunk.*``, timm's names for the SwiGLU and sub-LN parts and for q/v biases of separate
  projections), the text tower ``text.*`` (``custom_text``);
- ``hf``: the Hugging Face port (``vision_model.*``, ``text_model.*``, ``*_projection.weight``), mapped by
  :mod:`evaclip.models.hf_port`.

Loading drops the RoPE frequency tables that the official code stores (evaclip rebuilds them from the config),
stores ``logit_scale`` with shape (1,) and moves a ``text.logit_scale`` to ``logit_scale``; exports store it 0-d,
as the official code and open_clip do.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from evaclip.errors import CheckpointError
from evaclip.models.checkpoint.reading import StateDict
from evaclip.models.hf_port import hf_to_training, is_hf_port, training_to_hf

_FLAT_TEXT = ("text_projection", "positional_embedding", "token_embedding", "transformer.", "ln_final.")
_VISION_ROOTS = ("patch_embed.", "blocks.", "cls_token", "pos_embed", "norm.", "fc_norm.", "head.", "rope.",
                 "mask_token", "lm_head.")


def _is_rope_table(key: str) -> bool:
    return "freqs_cos" in key or "freqs_sin" in key


def _common_load(sd: Mapping[str, torch.Tensor], rename) -> tuple[StateDict, list[str]]:
    """Rename every key with ``rename`` (None: not this layout's), dropping RoPE tables; normalise the
    temperature's name and shape."""
    out: StateDict = {}
    dropped: list[str] = []
    for key, value in sd.items():
        if _is_rope_table(key):
            dropped.append(key)
            continue
        new = rename(key)
        if new == "text.logit_scale":  # some flat files file the temperature under the text tower
            new = "logit_scale"
        out[new] = value
    if "logit_scale" in out and out["logit_scale"].ndim == 0:
        out["logit_scale"] = out["logit_scale"].reshape(1)
    return out, dropped


def _scalar_temperature(sd: StateDict) -> StateDict:
    if "logit_scale" in sd:
        sd["logit_scale"] = sd["logit_scale"].reshape(())
    return sd


class StateDictAdapter:
    """A checkpoint layout: how to recognise it and how to convert it to and from evaclip's training layout."""

    name = ""
    export_name = ""  # the name ``evaclip convert --to`` uses, if the layout can be written

    def matches(self, sd: Mapping[str, torch.Tensor]) -> bool:
        raise NotImplementedError

    def to_evaclip(self, sd: Mapping[str, torch.Tensor]) -> tuple[StateDict, list[str]]:
        """The state dict in evaclip's training layout, and the keys left out on purpose."""
        raise NotImplementedError

    def from_evaclip(self, sd: Mapping[str, torch.Tensor]) -> StateDict:
        """An evaclip (training-layout) state dict in this layout."""
        raise NotImplementedError


class TrainingAdapter(StateDictAdapter):
    name = "training"

    def matches(self, sd):
        return any(k.startswith(("visual.", "text.")) for k in sd)

    def to_evaclip(self, sd):
        return _common_load(sd, lambda k: k)

    def from_evaclip(self, sd):
        return _scalar_temperature(dict(sd))


class OfficialAdapter(StateDictAdapter):
    """The released EVA-CLIP ``.pt`` files: ``visual.*`` and the text tower's keys without a prefix."""

    name, export_name = "flat", "official"

    def matches(self, sd):
        return any(k.startswith(_FLAT_TEXT) for k in sd)

    def to_evaclip(self, sd):
        return _common_load(sd, lambda k: "text." + k if k.startswith(_FLAT_TEXT) else k)

    def from_evaclip(self, sd):
        return _scalar_temperature({k[len("text."):] if k.startswith("text.") else k: v for k, v in sd.items()})


class VisionAdapter(StateDictAdapter):
    """A vision tower alone, unprefixed: the masked-image-modeling files (``mask_token``, ``lm_head.*`` kept as
    ``visual.mask_token``..., which :func:`~evaclip.models.checkpoint.fit.load_checkpoint` leaves out of a tower
    that has no such parameters)."""

    name = export_name = "vision"

    def matches(self, sd):
        return any(k.startswith(_VISION_ROOTS) for k in sd)

    def to_evaclip(self, sd):
        return _common_load(sd, lambda k: "visual." + k)

    def from_evaclip(self, sd):
        out: StateDict = {}
        for key, value in sd.items():
            if key.startswith("visual."):
                out[key[len("visual."):]] = value
            elif not (key.startswith("text.") or key == "logit_scale"):
                out[key] = value  # already unprefixed: a MIM student's own state dict
        return out


# timm's Eva names for the parts whose official (and evaclip) names differ; q/v biases are renamed only in
# blocks with separate q/k/v projections, where timm makes them the projections' biases.
_TIMM_RENAMES = (("attn.inner_attn_ln.", "attn.norm."), ("mlp.ffn_ln.", "mlp.norm."), ("mlp.w1.", "mlp.fc1_g."),
                 ("mlp.w2.", "mlp.fc1_x."), ("mlp.w3.", "mlp.fc2."))
_BLOCK_TAIL = re.compile(r"(blocks\.\d+\.)(.+)")


class OpenClipAdapter(StateDictAdapter):
    """open_clip's EVA models (``EVA01-g-14``, ``EVA02-B-16``, ``-L-14``, ``-E-14``...; timm trunk + custom
    text), as in its ``open_clip_pytorch_model.bin`` files. open_clip has configs only for the released EVA01 and
    EVA02 architectures; other evaclip models are renamed the same way but have no open_clip config to load into.
    """

    name = export_name = "open_clip"
    _TRUNK = "visual.trunk."

    def matches(self, sd):
        return any(k.startswith(self._TRUNK) for k in sd)

    def to_evaclip(self, sd):
        swiglu = any(k.endswith("mlp.fc1_g.weight") for k in sd)

        def rename(key: str) -> str:
            if key.startswith(_FLAT_TEXT):  # an open_clip model without custom_text keeps OpenAI-style keys
                return "text." + key
            if not key.startswith(self._TRUNK):
                return key
            rest = key[len(self._TRUNK):]
            block = _BLOCK_TAIL.fullmatch(rest)
            if block:
                head, tail = block.groups()
                for ours, timm in _TIMM_RENAMES:
                    if tail.startswith(timm) and (swiglu or timm == "attn.norm." or timm == "mlp.norm."):
                        tail = ours + tail[len(timm):]
                        break
                tail = {"attn.q_proj.bias": "attn.q_bias", "attn.v_proj.bias": "attn.v_bias"}.get(tail, tail)
                rest = head + tail
            return "visual." + rest

        return _common_load(sd, rename)

    def from_evaclip(self, sd):
        out: StateDict = {}
        for key, value in sd.items():
            if not key.startswith("visual."):
                out[key] = value
                continue
            rest = key[len("visual."):]
            block = _BLOCK_TAIL.fullmatch(rest)
            if block:
                head, tail = block.groups()
                for ours, timm in _TIMM_RENAMES:
                    if tail.startswith(ours):
                        tail = timm + tail[len(ours):]
                        break
                if tail in ("attn.q_bias", "attn.v_bias") and f"visual.{head}attn.q_proj.weight" in sd:
                    tail = f"attn.{tail[5]}_proj.bias"
                rest = head + tail
            out[self._TRUNK + rest] = value
        return _scalar_temperature(out)


class HFPortAdapter(StateDictAdapter):
    """The Hugging Face port of EVA-CLIP-8B/18B; the mapping itself lives in :mod:`evaclip.models.hf_port`, next
    to its ``config.json`` reader and writer."""

    name = export_name = "hf"

    def matches(self, sd):
        return is_hf_port(sd)

    def to_evaclip(self, sd):
        return hf_to_training(sd)

    def from_evaclip(self, sd):
        return training_to_hf(sd)


TRAINING, OFFICIAL, VISION, OPEN_CLIP, HF = (TrainingAdapter(), OfficialAdapter(), VisionAdapter(),
                                             OpenClipAdapter(), HFPortAdapter())
# Detection order: the most specific key pattern first (an open_clip file also has text.* keys, a released
# file also has visual.* keys).
ADAPTERS: tuple[StateDictAdapter, ...] = (HF, OPEN_CLIP, OFFICIAL, TRAINING, VISION)
BY_NAME = {a.name: a for a in ADAPTERS} | {a.export_name: a for a in ADAPTERS if a.export_name}


def adapter_for(sd: Mapping[str, torch.Tensor]) -> StateDictAdapter:
    """The adapter of the layout ``sd`` is in."""
    for adapter in ADAPTERS:
        if adapter.matches(sd):
            return adapter
    raise CheckpointError("unrecognised checkpoint layout: expected visual.*/text.* keys, OpenAI-style text keys "
                          f"or EVA vision keys (patch_embed.*, blocks.*); first keys: {list(sd)[:5]}")


def adapter_named(name: str) -> StateDictAdapter:
    if name not in BY_NAME:
        raise CheckpointError(f"unknown checkpoint layout {name!r}; choose one of {', '.join(sorted(BY_NAME))}")
    return BY_NAME[name]


def to_training_layout(sd: Mapping[str, torch.Tensor]) -> tuple[StateDict, str, list[str]]:
    """Any known layout in evaclip's training layout: the state dict, the layout's name, the keys dropped on
    purpose (RoPE tables, which are rebuilt; index buffers of the HF port)."""
    adapter = adapter_for(sd)
    out, dropped = adapter.to_evaclip(sd)
    return out, adapter.name, dropped


def export_state_dict(state_dict: Mapping[str, torch.Tensor], layout: str = "training") -> StateDict:
    """An evaclip (training-layout) state dict in another layout (``training``, ``flat``/``official``,
    ``vision``, ``open_clip``, ``hf``); see the module docstring."""
    return adapter_named(layout).from_evaclip(state_dict)
