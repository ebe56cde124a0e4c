"""Model configs: typed dataclasses that read the official EVA-CLIP JSON format as-is.

The field names of :class:`VisionConfig` and :class:`TextConfig` are the official ones (``vision_cfg`` and
``text_cfg`` of baaivision/EVA's ``model_configs/*.json``, including their camelCase ``fusedLN``), so a JSON file
written for the official code loads here unchanged, and one written here loads there. Defaults are the
official defaults too (note ``qkv_bias=True``). A few evaclip-only fields are documented where they appear.

Validation happens here, before any tensor is allocated: unknown keys and impossible values raise
:class:`~evaclip.errors.ConfigError` with a one-line message.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaclip.errors import ConfigError


@dataclass
class VisionConfig:
    """EVA vision transformer (``EVAVisionTransformer`` in the official code)."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    head_width: int = 64
    mlp_ratio: float = 4.0
    qkv_bias: bool = True  # q and v biases (k has none); also gives the projection head a bias
    postnorm: bool = False  # res-post-norm blocks (EVA-CLIP-18B, EVA02-CLIP-bigE): x + norm(f(x))
    use_rms_norm: bool = False
    fusedLN: bool = False  # official: apex FusedLayerNorm. It is a LayerNorm, and it wins over use_rms_norm.
    rope: bool = False  # 2D rotary position embedding on patch tokens (EVA02)
    pt_hw_seq_len: int = 16  # RoPE grid the model was pre-trained on
    intp_freq: bool = False  # rescale RoPE positions of a different grid onto pt_hw_seq_len
    naiveswiglu: bool = False  # SwiGLU MLP instead of GELU
    subln: bool = False  # separate q/k/v projections + norm inside attention and MLP (EVA02)
    ls_init_value: float | None = None  # layer scale (gamma_1/gamma_2), unused by the released models
    patch_dropout: float = 0.0  # fraction of patch tokens dropped in training (cls is always kept)
    drop_path_rate: float | None = 0.0
    global_average_pool: bool = False  # mean-pool tokens through fc_norm instead of the cls token
    xattn: bool = False  # official: use xformers. evaclip always uses F.scaled_dot_product_attention.
    eva_model_name: str | None = None  # informational in the official configs
    # Accepted for format compatibility only; evaclip builds EVA towers, never timm ones.
    timm_model_name: str | None = None
    timm_model_pretrained: bool = False
    timm_pool: str = "avg"
    timm_proj: str = "linear"
    timm_proj_bias: bool = False

    @property
    def heads(self) -> int:
        return self.width // self.head_width

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def mlp_hidden(self) -> int:
        # int() truncation as in the official Block: 1024 * 2.6667 -> 2730, 1408 * 4.3637 -> 6144.
        return int(self.width * self.mlp_ratio)

    @property
    def norm_type(self) -> str:
        # The official factory checks fusedLN first, so fusedLN=True with use_rms_norm=True is a LayerNorm.
        if self.fusedLN:
            return "layernorm"
        return "rmsnorm" if self.use_rms_norm else "layernorm"

    def validate(self) -> None:
        check_types(self, "vision_cfg.")
        _positive(self, "image_size", "patch_size", "width", "layers", "head_width", "pt_hw_seq_len")
        _hidden_width(self, "vision_cfg.")
        if self.width % self.head_width:
            raise ConfigError(
                f"vision_cfg.width ({self.width}) is not divisible by head_width ({self.head_width}); "
                "choose a head_width that divides the width")
        if self.patch_size > self.image_size:
            raise ConfigError(
                f"vision_cfg.patch_size ({self.patch_size}) is larger than image_size ({self.image_size})")
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"vision_cfg.image_size ({self.image_size}) is not a multiple of patch_size ({self.patch_size})")
        if self.rope and (self.width // self.heads) % 4:
            raise ConfigError(f"vision_cfg.rope needs a head width divisible by 4, got {self.width // self.heads}")
        if self.rope and not self.intp_freq and self.grid_size != self.pt_hw_seq_len:
            raise ConfigError(f"vision_cfg.rope without intp_freq needs a {self.pt_hw_seq_len}x{self.pt_hw_seq_len} "
                              f"patch grid (pt_hw_seq_len), got {self.grid_size}x{self.grid_size}; set intp_freq: true "
                              "or pt_hw_seq_len to the grid size")
        if not 0.0 <= self.patch_dropout < 1.0:
            raise ConfigError(f"vision_cfg.patch_dropout must be in [0, 1), got {self.patch_dropout}")
        if self.drop_path_rate is not None and not 0.0 <= self.drop_path_rate < 1.0:
            raise ConfigError(f"vision_cfg.drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.timm_model_name:
            raise ConfigError("vision_cfg.timm_model_name is not supported: evaclip builds EVA vision towers only")


@dataclass
class TextConfig:
    """CLIP text transformer (``TextTransformer``), or a Hugging Face encoder when ``hf_model_name`` is set."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    ls_init_value: float | None = None
    fusedLN: bool = False  # a LayerNorm either way (eps 1e-5)
    xattn: bool = False  # official: use xformers. evaclip always uses SDPA.
    attn_mask: bool = True  # causal mask
    mlp_ratio: float = 4.0  # evaclip field; the official text tower is fixed at 4
    # Hugging Face text tower (official `hf_model_name` path): a local directory or an installed model name.
    hf_model_name: str | None = None
    hf_tokenizer_name: str | None = None
    hf_model_pretrained: bool = True
    proj: str = "mlp"  # "linear" or "mlp" projection on top of the pooled HF features
    pooler_type: str = "mean_pooler"  # "mean_pooler" or "cls_pooler"
    masked_language_modeling: bool = False
    hf_freeze: bool = False  # evaclip field: keep the HF encoder frozen (only the projection trains)

    @property
    def is_hf(self) -> bool:
        return bool(self.hf_model_name)

    def validate(self) -> None:
        check_types(self, "text_cfg.")
        if self.is_hf:
            if self.proj not in ("linear", "mlp"):
                raise ConfigError(f"text_cfg.proj must be 'linear' or 'mlp', got {self.proj!r}")
            if self.pooler_type not in ("mean_pooler", "cls_pooler"):
                raise ConfigError(f"text_cfg.pooler_type must be 'mean_pooler' or 'cls_pooler', got {self.pooler_type!r}")
            return
        _positive(self, "context_length", "vocab_size", "width", "heads", "layers")
        _hidden_width(self, "text_cfg.")
        if self.width % self.heads:
            raise ConfigError(
                f"text_cfg.width ({self.width}) is not divisible by heads ({self.heads}); choose heads that divide it")


@dataclass
class CLIPConfig:
    """A whole EVA-CLIP model: ``{"embed_dim", "vision_cfg", "text_cfg"}`` plus optional extras."""

    embed_dim: int
    vision_cfg: VisionConfig = field(default_factory=VisionConfig)
    text_cfg: TextConfig = field(default_factory=TextConfig)
    quick_gelu: bool = False  # official flag: QuickGELU in the text tower (OpenAI weights)
    custom_text: bool = False  # official flag; evaclip always uses the CustomCLIP layout (`text.*`)
    # evaclip fields. The official code learns logit_scale from ln(1/0.07) and clamps it to ln(100) after
    # each step; the paper reports a temperature fixed at 0.01 (learn_logit_scale=False, init ln(100)).
    init_logit_scale: float = math.log(1 / 0.07)
    learn_logit_scale: bool = True
    init_logit_bias: float | None = None  # set (SigLIP: -10) to add a learnable logit_bias for the sigmoid loss

    def validate(self) -> None:
        check_types(self, "")
        if self.embed_dim <= 0:
            raise ConfigError(f"embed_dim must be a positive integer, got {self.embed_dim!r}")
        self.vision_cfg.validate()
        self.text_cfg.validate()

    def to_dict(self) -> dict[str, Any]:
        """The official JSON shape; fields still at their defaults are left out so the file stays readable."""
        out: dict[str, Any] = {"embed_dim": self.embed_dim}
        out["vision_cfg"] = _non_default(self.vision_cfg)
        out["text_cfg"] = _non_default(self.text_cfg)
        for f in dataclasses.fields(self):
            if f.name in ("embed_dim", "vision_cfg", "text_cfg"):
                continue
            value = getattr(self, f.name)
            if value != f.default:
                out[f.name] = value
        return out

    def save(self, path: str | Path) -> None:
        from evaclip.outputs import atomic_write_text
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n", what="model config")


# ------------------------------------------------------------------------------------------ typed fields
def show_value(value: Any) -> str:
    try:  # as the JSON file spells it (true, "4"), else Python's repr
        text = json.dumps(value)
    except (TypeError, ValueError):
        try:
            text = repr(value)
        except ValueError:  # an integer with more digits than Python converts to text
            text = f"{type(value).__name__} too large to show"
    return text if len(text) <= 60 else text[:57] + "..."


def _check_value(kind: Any, value: Any) -> tuple[bool, Any, str]:
    """``(ok, normalised value, what the field takes)`` for one annotated type (int, float, bool, str, X | None).

    JSON has one number type and Python's bool is an int, so the checks are explicit: a bool is not a number,
    an integer field takes no float, a float field takes an integer (as a float) but never NaN or infinity.
    """
    args = typing.get_args(kind)
    if type(None) in args:
        inner = next(a for a in args if a is not type(None))
        ok, value, what = _check_value(inner, value) if value is not None else (True, None, "")
        return ok, value, f"{_check_value(inner, 0)[2]} or null"
    if kind is bool:
        return type(value) is bool, value, "true or false"
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool), value, "an integer"
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value, "a finite number"
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            return False, value, "a finite number"
        return math.isfinite(number), number, "a finite number"
    if kind is str:
        return isinstance(value, str), value, "a string"
    raise TypeError(f"no type check for {kind!r}")  # a field type this module does not know: a bug here


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in ("vision_cfg", "text_cfg")}


def check_types(cfg: Any, section: str) -> None:
    """Every field of a config dataclass against its annotation; numbers are normalised in place (4 -> 4.0).

    The one type check of model configs: JSON files, dicts and configs changed in code all pass here, so
    ``"mlp_ratio": "4"``, ``"embed_dim": true`` or ``"qkv_bias": "no"`` (truthy!) never reach the model.
    """
    for name, kind in _field_types(type(cfg)).items():
        value = getattr(cfg, name)
        ok, normalised, what = _check_value(kind, value)
        if not ok:
            raise ConfigError(f"{section}{name} must be {what}, got {show_value(value)}")
        if normalised is not value:
            setattr(cfg, name, normalised)


def _hidden_width(cfg: Any, section: str) -> None:
    # The MLP width is int(width * mlp_ratio), as in the official code: a tiny ratio truncates it to 0.
    hidden = int(cfg.width * cfg.mlp_ratio)
    if cfg.mlp_ratio <= 0 or hidden < 1:
        raise ConfigError(f"{section}mlp_ratio ({cfg.mlp_ratio}) gives an MLP hidden width of {hidden} for width "
                          f"{cfg.width}; it must be at least 1 (the usual ratio is 4)")


def _positive(cfg: Any, *names: str) -> None:
    section = "vision_cfg" if isinstance(cfg, VisionConfig) else "text_cfg"
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{section}.{name} must be a positive integer, got {value!r}")


def _non_default(cfg: Any) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != f.default}


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {show_value(data)}")
    data = {str(k): v for k, v in data.items()}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    return cls(**data)


def config_from_dict(data: dict[str, Any], where: str = "model config") -> CLIPConfig:
    """Build and validate a :class:`CLIPConfig` from the official JSON structure."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object with embed_dim, vision_cfg and text_cfg")
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in data]
    if missing:
        raise ConfigError(f"{where} lacks {', '.join(missing)}; an EVA-CLIP config needs embed_dim, vision_cfg, text_cfg")
    data = dict(data)
    data["vision_cfg"] = _build(VisionConfig, data["vision_cfg"], f"{where}: vision_cfg")
    data["text_cfg"] = _build(TextConfig, data["text_cfg"], f"{where}: text_cfg")
    cfg = _build(CLIPConfig, data, where)
    try:
        cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return cfg


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (Python writes it, JSON has no such value); write a number")


def parse_json(text: str, where: str, error: type[Exception] = ConfigError) -> Any:
    """``json.loads`` for config files, refusing what Python's parser accepts but JSON does not (NaN,
    Infinity); any problem is one ``error`` line naming ``where``."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise error(f"{where} is nested too deeply to be a config") from None
    except ValueError as e:  # JSONDecodeError, and the constants above
        raise error(f"{where} is not valid JSON: {e}") from None


def load_config_file(path: str | Path) -> CLIPConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"model config file not found: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"model config {path} is not UTF-8 text; it should be a JSON file") from None
    except OSError as e:
        raise ConfigError(f"model config {path} cannot be read ({e.strerror or e})") from None
    return config_from_dict(parse_json(text, f"model config {path}"), where=str(path))
