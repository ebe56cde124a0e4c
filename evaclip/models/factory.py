"""One factory for every EVA-CLIP model: names map to JSON configs in ``model_configs/``; paths to JSON files
in the official format are accepted as-is."""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable, Iterable

import torch

from evaclip.errors import ConfigError
from evaclip.models.checkpoint import load_checkpoint
from evaclip.models.clip import CLIP
from evaclip.models.config import CLIPConfig, config_from_dict, load_config_file
from evaclip.models.hf_port import config_from_hf, is_hf_folder

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "model_configs"
_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Names the official code uses for configs that evaclip files under another name.
_ALIASES = {"EVA-CLIP-8B-plus": "EVA-CLIP-8B-448"}


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def list_models() -> list[str]:
    """Names of the built-in model configs."""
    return sorted((p.stem for p in CONFIG_DIR.glob("*.json")), key=_natural_key)


def get_model_config(name_or_path: str | Path | dict | CLIPConfig) -> CLIPConfig:
    """A validated config from a built-in name, a JSON file path (official format), a Hugging Face port folder
    (its ``config.json``), a dict, or a config."""
    if isinstance(name_or_path, CLIPConfig):
        name_or_path.validate()
        return name_or_path
    if isinstance(name_or_path, dict):
        return config_from_dict(name_or_path)
    name = str(name_or_path)
    name = _ALIASES.get(name, name)
    builtin = CONFIG_DIR / f"{name.replace('/', '-')}.json"
    if builtin.is_file():
        return load_config_file(builtin)
    if name.endswith(".json") or Path(name).is_file():
        return load_config_file(name)
    if is_hf_folder(Path(name)):  # a Hugging Face port folder (BAAI/EVA-CLIP-8B...): its config.json
        return config_from_dict(config_from_hf(Path(name)), where=f"{name}/config.json")
    close = [m for m in list_models() if name.lower() in m.lower() or m.lower() in name.lower()]
    hint = f" Did you mean {', '.join(close[:3])}?" if close else ""
    raise ConfigError(f"unknown model {name!r}.{hint} Run `evaclip models` for the list, or pass a path to a "
                      "JSON config with embed_dim, vision_cfg and text_cfg")


def create_model(
    name_or_json: str | Path | dict | CLIPConfig,
    pretrained: str | Path | None = None,
    *,
    pretrained_image: str | Path | None = None,
    pretrained_text: str | Path | None = None,
    skip_keys: Iterable[str] = (),
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    patch_dropout: float | None = None,
    strict: bool = True,
) -> CLIP:
    """Build an EVA-CLIP model and optionally load weights.

    Args:
        name_or_json: a name from :func:`list_models`, the path of a JSON config (official format), or a Hugging
            Face port folder (its ``config.json``; pass the folder as ``pretrained`` too for its weights).
        pretrained: a whole-model checkpoint (any official layout, or an HF port folder), loaded strictly.
        pretrained_image: initialise only the vision tower, from a CLIP checkpoint or a vision-only (MIM) file.
        pretrained_text: initialise only the text tower, from a CLIP checkpoint (training or flat layout).
        skip_keys: key prefixes of the towers to leave freshly initialised when loading ``pretrained_image`` /
            ``pretrained_text`` (e.g. ``("text_projection",)`` when the embedding size changes).
        device: where to build; ``"meta"`` allocates nothing (for counting and sharding plans).
        precision: ``fp32``, or ``bf16``/``fp16`` to cast the weights (use autocast for mixed precision).
        patch_dropout: override the config's patch dropout ratio (training only).
    """
    cfg = get_model_config(name_or_json)
    if patch_dropout is not None:
        cfg.vision_cfg.patch_dropout = patch_dropout
        cfg.vision_cfg.validate()
    if precision not in _PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(_PRECISIONS)}")
    device = torch.device(device)
    if device.type == "meta":
        if pretrained or pretrained_image or pretrained_text:
            raise ConfigError("cannot load weights into a model built on the meta device; use "
                              "evaclip.models.factory.pretrained_state_dict to fit them, then load after sharding")
        with torch.device("meta"):
            return CLIP(cfg).to(_PRECISIONS[precision])

    model = CLIP(cfg)
    if pretrained:
        report = load_checkpoint(model, pretrained, strict=strict)
        log.info("loaded %s", report)
    tower_skip = tuple(skip_keys)
    # Tower initialisation is strict except for what the caller re-initialises (skip_keys) and, for the vision
    # tower, the CLIP projection head, which a MIM file does not have.
    if pretrained_image:
        report = load_checkpoint(model.visual, pretrained_image, strict=True, skip=tower_skip,
                                 allow_missing=("head.",))
        log.info("vision tower: %s", report)
    if pretrained_text:
        report = load_checkpoint(model.text, pretrained_text, strict=True, skip=tower_skip)
        log.info("text tower: %s", report)
    return model.to(device=device, dtype=_PRECISIONS[precision])


def pretrained_state_dict(model: CLIP, pretrained=None, pretrained_image=None, pretrained_text=None,
                          skip_keys: Iterable[str] = (), strict: bool = True) -> dict[str, torch.Tensor]:
    """The weights :func:`create_model` would load, fitted to ``model`` (which may be on the meta device), as one
    full state dict keyed like ``model.state_dict()``: for sharded models, which receive it after wrapping."""
    out: dict[str, torch.Tensor] = {}
    if pretrained:
        out.update(load_checkpoint(model, pretrained, strict=strict).tensors)
    if pretrained_image:
        report = load_checkpoint(model.visual, pretrained_image, strict=True, skip=tuple(skip_keys),
                                 allow_missing=("head.",))
        out.update({f"visual.{k}": v for k, v in report.tensors.items()})
    if pretrained_text:
        report = load_checkpoint(model.text, pretrained_text, strict=True, skip=tuple(skip_keys))
        out.update({f"text.{k}": v for k, v in report.tensors.items()})
    return out


def create_model_and_transforms(name_or_json, pretrained=None, **kwargs):
    """``(model, preprocess_train, preprocess_val)``: the model plus the paper's train/eval image transforms."""
    from evaclip.transforms import image_transform
    model = create_model(name_or_json, pretrained, **kwargs)
    size = model.visual.image_size
    return model, image_transform(size, is_train=True), image_transform(size, is_train=False)


def get_tokenizer(name_or_json: str | Path | dict | CLIPConfig) -> Callable[..., torch.Tensor]:
    """A callable ``(str | list[str]) -> LongTensor[N, context_length]`` matching the model's text tower."""
    cfg = get_model_config(name_or_json)
    if cfg.text_cfg.is_hf:
        from evaclip.models.hf_text import HFTokenizer
        return HFTokenizer(cfg.text_cfg.hf_tokenizer_name or cfg.text_cfg.hf_model_name,
                           context_length=cfg.text_cfg.context_length)
    from evaclip.tokenizer import CLIPTokenizer
    return _BoundTokenizer(CLIPTokenizer(), cfg.text_cfg.context_length)


class _BoundTokenizer:
    """The shared CLIP BPE tokenizer with the model's context length as default."""

    def __init__(self, tokenizer, context_length: int):
        self.tokenizer = tokenizer
        self.context_length = context_length

    def __call__(self, texts, context_length: int | None = None) -> torch.Tensor:
        return self.tokenizer(texts, context_length=context_length or self.context_length)

    def __repr__(self) -> str:
        return f"CLIPTokenizer(context_length={self.context_length})"
