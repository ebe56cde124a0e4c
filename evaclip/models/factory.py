"""One factory for every EVA-CLIP model: names map to JSON configs in ``model_configs/`` (and in the folders of
installed extensions, see :mod:`evaclip.plugins`); paths to JSON files in the official format, Hugging Face port
folders and run folders (their ``model_config.json``) are accepted as-is."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Callable, Iterable

import torch

from evaclip.errors import ConfigError, EvaclipError
from evaclip.models.checkpoint import RUN_MODEL_CONFIG, load_pretrained
from evaclip.models.clip import CLIP
from evaclip.models.config import CLIPConfig, config_from_dict, load_config_file
from evaclip.models.hf_port import config_from_hf, is_hf_folder
from evaclip.plugins import model_config_dirs

CONFIG_DIR = Path(__file__).parent / "model_configs"
_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Names the official code uses for configs that evaclip files under another name.
_ALIASES = {"EVA-CLIP-8B-plus": "EVA-CLIP-8B-448"}


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def _config_files() -> dict[str, Path]:
    """Model name -> JSON file: the built-in configs, then those of extensions (a built-in name wins)."""
    files: dict[str, Path] = {}
    for folder in (CONFIG_DIR, *model_config_dirs()):
        for p in sorted(folder.glob("*.json")):
            files.setdefault(p.stem, p)
    return files


def list_models() -> list[str]:
    """Names of the model configs: built in, and those of installed extensions."""
    return sorted(_config_files(), key=_natural_key)


def get_model_config(name_or_path: str | Path | dict | CLIPConfig) -> CLIPConfig:
    """A validated config from a built-in name, a JSON file path (official format), a Hugging Face port folder
    (its ``config.json``), a training run's folder (its ``model_config.json``), a dict, or a config."""
    if isinstance(name_or_path, CLIPConfig):
        name_or_path.validate()
        return name_or_path
    if isinstance(name_or_path, dict):
        return config_from_dict(name_or_path)
    name = str(name_or_path)
    name = _ALIASES.get(name, name)
    builtin = _config_files().get(name.replace("/", "-"))
    if builtin is not None:
        return load_config_file(builtin)
    if name.endswith(".json") or Path(name).is_file():
        return load_config_file(name)
    if (Path(name) / RUN_MODEL_CONFIG).is_file():  # a training run: the architecture it exported
        return load_config_file(Path(name) / RUN_MODEL_CONFIG)
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
    allow_nonfinite: bool = False,
) -> CLIP:
    """Build an EVA-CLIP model and optionally load weights.

    Args:
        name_or_json: a name from :func:`list_models`, the path of a JSON config (official format), a Hugging
            Face port folder (its ``config.json``; pass the folder as ``pretrained`` too for its weights), or a
            finished training run's folder (its ``model_config.json``; as ``pretrained``, its final weights).
        pretrained: a whole-model checkpoint (any official layout, an HF port folder or a run folder), loaded
            strictly.
        pretrained_image: initialise only the vision tower, from a CLIP checkpoint or a vision-only (MIM) file.
        pretrained_text: initialise only the text tower, from a CLIP checkpoint (training or flat layout).
        skip_keys: key prefixes of the towers to leave freshly initialised when loading ``pretrained_image`` /
            ``pretrained_text`` (e.g. ``("text_projection",)`` when the embedding size changes).
        device: where to build; ``"meta"`` allocates nothing (for counting and sharding plans).
        precision: ``fp32``, or ``bf16``/``fp16`` to cast the weights (use autocast for mixed precision).
        patch_dropout: override the config's patch dropout ratio (training only).
        allow_nonfinite: load checkpoints with NaN/inf weights (refused by default, see ``load_checkpoint``).

    The parameters are counted on the meta device first: a model that cannot fit in the memory available on
    ``device`` (and on the CPU, where it is built) is refused with a :class:`ConfigError` before anything is
    allocated.
    """
    cfg = get_model_config(name_or_json)
    if patch_dropout is not None:
        cfg.vision_cfg.patch_dropout = patch_dropout
        cfg.vision_cfg.validate()
    if precision not in _PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(_PRECISIONS)}")
    device = torch.device(device)
    n_values = parameter_count(cfg)  # on meta too: sizes torch cannot represent are one ConfigError here
    if device.type == "meta":
        if pretrained or pretrained_image or pretrained_text:
            raise ConfigError("cannot load weights into a model built on the meta device; use "
                              "evaclip.models.factory.pretrained_state_dict to fit them, then load after sharding")
        with torch.device("meta"):
            return CLIP(cfg).to(_PRECISIONS[precision])
    check_fits(n_values, device, precision)

    model = CLIP(cfg)
    load_pretrained(model, pretrained, pretrained_image, pretrained_text, skip_keys=skip_keys, strict=strict,
                    allow_nonfinite=allow_nonfinite)
    return model.to(device=device, dtype=_PRECISIONS[precision])


def pretrained_state_dict(model: CLIP, pretrained=None, pretrained_image=None, pretrained_text=None,
                          skip_keys: Iterable[str] = (), strict: bool = True, allow_nonfinite: bool = False
                          ) -> dict[str, torch.Tensor]:
    """The weights :func:`create_model` would load, fitted to ``model`` (which may be on the meta device), as one
    full state dict keyed like ``model.state_dict()``: for sharded models, which receive it after wrapping."""
    return load_pretrained(model, pretrained, pretrained_image, pretrained_text, skip_keys=skip_keys,
                           strict=strict, allow_nonfinite=allow_nonfinite)


# ---------------------------------------------------------------------------------------------- sizes
def _numel(module: torch.nn.Module, buffers: bool) -> int:
    n = sum(t.numel() for t in module.parameters())
    return n + sum(t.numel() for t in module.buffers()) if buffers else n


def _tower_count(build, layers: int, buffers: bool) -> int:
    """Values of a tower with ``layers`` blocks, from meta builds of 1 and 2 blocks: every block has the same
    size, so the count is exact without building (or looping over) all of them. Sizes too large for torch to
    represent are a :class:`ConfigError`."""
    try:
        with torch.device("meta"):
            one, two = _numel(build(1), buffers), _numel(build(2), buffers)
    except EvaclipError:
        raise
    except (RuntimeError, OverflowError, TypeError, ValueError) as e:  # torch: "Storage size ... overflowed"
        raise ConfigError(f"the model config's sizes are too large to build ({str(e).splitlines()[0][:120]}); "
                          "check width, layers, image_size/patch_size and vocab_size") from None
    return one + (layers - 1) * (two - one)


def tower_sizes(cfg: CLIPConfig, *, buffers: bool = True) -> tuple[int, int | None]:
    """``(vision, text)`` numbers of values in each tower's parameters (and buffers), counted on the meta device
    whatever the depth: nothing is allocated. ``text`` is None for a Hugging Face text tower, whose size is that
    of the local model it is read from. Sizes too large for torch to represent are a :class:`ConfigError`."""
    from evaclip.models.text import TextTransformer
    from evaclip.models.vision import EVAVisionTransformer
    v, t = cfg.vision_cfg, cfg.text_cfg
    vision = _tower_count(lambda n: EVAVisionTransformer(dataclasses.replace(v, layers=n), cfg.embed_dim),
                          v.layers, buffers)
    text = None if t.is_hf else _tower_count(
        lambda n: TextTransformer(dataclasses.replace(t, layers=n), cfg.embed_dim), t.layers, buffers)
    return vision, text


def check_tower_fits(build, layers: int) -> None:
    """For towers built outside :func:`create_model` (the MIM student and teacher): ``build(n)`` makes the tower
    with ``n`` blocks; refuse it, before building it for real, if it cannot fit in memory (fp32, on the CPU)."""
    check_fits(_tower_count(build, layers, buffers=True), torch.device("cpu"))


def parameter_count(cfg: CLIPConfig) -> int:
    """Values in the model's parameters and buffers (a Hugging Face text tower not counted; see
    :func:`tower_sizes`), plus logit_scale / logit_bias."""
    vision, text = tower_sizes(cfg)
    return vision + (text or 0) + 1 + (cfg.init_logit_bias is not None)


def _cpu_available() -> int | None:
    """Bytes this process can still allocate: MemAvailable, lowered by a cgroup (container) limit if any."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        return None
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and avail is not None:
            avail = min(avail, max(0, int(limit) - usage))
        break
    return avail


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` (CPU: see :func:`_cpu_available`; CUDA: ``torch.cuda.mem_get_info``), or None
    where it cannot be known."""
    if device.type == "cpu":
        return _cpu_available()
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device} was asked for, but CUDA is not available here; use device cpu")
        try:
            return torch.cuda.mem_get_info(device)[0]
        except (RuntimeError, AssertionError, ValueError) as e:
            raise ConfigError(f"device {device} cannot be used ({str(e).splitlines()[0][:120]}); "
                              f"choose one of cuda:0..cuda:{torch.cuda.device_count() - 1}") from None
    return None


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_fits(n_values: int, device: torch.device, precision: str = "fp32") -> None:
    """Refuse a model whose parameters alone do not fit: it is built in fp32 on the CPU, then moved to
    ``device`` in ``precision``. Checked before building, since an over-large model otherwise allocates until
    the machine runs out of memory."""
    fp32 = n_values * torch.finfo(torch.get_default_dtype()).bits // 8
    needs = [(torch.device("cpu"), fp32)]
    if device.type != "cpu":
        needs.append((device, n_values * torch.finfo(_PRECISIONS[precision]).bits // 8))
    for where, need in needs:
        free = available_memory(where)
        if free is not None and need > free:
            raise ConfigError(f"the model has {n_values:,} parameters: {_gib(need)} on {where}, where only "
                              f"{_gib(free)} is available; choose a smaller config (or build it on the meta "
                              "device to plan it)")


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
