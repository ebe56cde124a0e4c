"""State-dict adapter for the Hugging Face port of EVA-CLIP (``BAAI/EVA-CLIP-8B``, ``-8B-448``, ``-18B``, which
``transformers`` loads with ``trust_remote_code``), into evaclip's training layout.

The port's ``modeling_evaclip.py`` (HF-CLIP style) renames the tensors and splits the fused ones:

    vision_model.embeddings.class_embedding  (W)            -> visual.cls_token  (1, 1, W)
    vision_model.embeddings.patch_embedding.*                -> visual.patch_embed.proj.*
    vision_model.embeddings.position_embedding.weight (N+1, W) -> visual.pos_embed  (1, N+1, W)
    vision_model.encoder.layers.{i}.layer_norm{1,2}.*        -> visual.blocks.{i}.norm{1,2}.*
        .self_attn.{q,k,v}_proj.weight                       -> visual.blocks.{i}.attn.qkv.weight (stacked q, k, v)
        .self_attn.{q,v}_proj.bias                           -> visual.blocks.{i}.attn.{q,v}_bias
        .self_attn.out_proj.*                                -> visual.blocks.{i}.attn.proj.*
        .mlp.fc{1,2}.*                                       -> visual.blocks.{i}.mlp.fc{1,2}.*
    vision_model.post_layernorm.*                            -> visual.norm.*
    visual_projection.weight                                 -> visual.head.weight
    text_model.embeddings.token_embedding.weight             -> text.token_embedding.weight
    text_model.embeddings.position_embedding.weight          -> text.positional_embedding
    text_model.encoder.layers.{i}.layer_norm{1,2}.*          -> text.transformer.resblocks.{i}.ln_{1,2}.*
        .self_attn.{q,k,v}_proj.{weight,bias}                -> ...attn.in_proj_{weight,bias} (stacked)
        .self_attn.out_proj.*                                -> ...attn.out_proj.*
        .mlp.fc1.* / .mlp.fc2.*                              -> ...mlp.c_fc.* / ...mlp.c_proj.*
    text_model.final_layer_norm.*                            -> text.ln_final.*
    text_projection.weight  (E, Wt)                          -> text.text_projection  (Wt, E)

The port's ``post_layernorm`` *config flag* (res-post-norm blocks) is a property of the architecture, which the
evaclip model config states as ``postnorm``; the port has no RoPE and no SwiGLU, like the 8B and 18B models it
serves. It stores no temperature (it multiplies by a fixed 100), so a whole-model file gets ``logit_scale =
ln 100``. A vision k-projection bias is dropped: EVA's attention has none (the official code fixes it at zero),
and it cannot change the output anyway (it adds the same q.b_k to every logit of a query).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Mapping

import torch

from evaclip.errors import CheckpointError
from evaclip.models.config import CLIPConfig, config_from_dict, parse_json, show_value

StateDict = dict[str, torch.Tensor]

HF_ROOTS = ("vision_model.", "text_model.", "visual_projection.")

_VISION_RENAMES = {"embeddings.patch_embedding.": "patch_embed.proj.", "post_layernorm.": "norm."}
_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
_VISION_LAYER_RENAMES = {"layer_norm1.": "norm1.", "layer_norm2.": "norm2.", "self_attn.out_proj.": "attn.proj.",
                         "mlp.fc1.": "mlp.fc1.", "mlp.fc2.": "mlp.fc2."}
_TEXT_LAYER_RENAMES = {"layer_norm1.": "ln_1.", "layer_norm2.": "ln_2.", "self_attn.out_proj.": "attn.out_proj.",
                       "mlp.fc1.": "mlp.c_fc.", "mlp.fc2.": "mlp.c_proj."}


def is_hf_port(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(HF_ROOTS) for k in sd)


def _rename(rest: str, table: Mapping[str, str]) -> str | None:
    for old, new in table.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    return None


def _stack_qkv(parts: dict[str, torch.Tensor], where: str, kind: str) -> torch.Tensor | None:
    """Stack q, k, v tensors ("weight" or "bias"); absent biases are zero, as an absent bias means."""
    if kind == "weight":
        missing = [p for p in "qkv" if p not in parts]
        if missing:
            raise CheckpointError(f"the HF-port checkpoint lacks {where}.self_attn.{missing[0]}_proj.weight; "
                                  "the file is incomplete")
        return torch.cat([parts["q"], parts["k"], parts["v"]])
    if not parts:
        return None
    ref = next(iter(parts.values()))
    return torch.cat([parts.get(p, torch.zeros_like(ref)) for p in "qkv"])


def hf_to_training(sd: Mapping[str, torch.Tensor]) -> tuple[StateDict, list[str]]:
    """Convert an HF-port state dict to evaclip's training layout; returns it and the keys left out on purpose."""
    out: StateDict = {}
    dropped: list[str] = []
    attn: dict[tuple[str, int, str], dict[str, torch.Tensor]] = {}  # (tower, layer, weight|bias) -> {q,k,v}
    for key, value in sd.items():
        if key.endswith("position_ids"):  # an index buffer, not a weight
            dropped.append(key)
            continue
        if key in ("visual_projection.weight", "visual_projection.bias"):  # some ports give it a bias
            out["visual.head." + key.rsplit(".", 1)[1]] = value
            continue
        if key == "text_projection.weight":
            out["text.text_projection"] = value.t().contiguous()
            continue
        if key == "logit_scale":
            out["logit_scale"] = value.reshape(1)
            continue
        tower, _, rest = key.partition(".")
        if tower not in ("vision_model", "text_model"):
            raise CheckpointError(f"unexpected key {key!r} in an HF-port EVA-CLIP checkpoint")
        layer = _LAYER.fullmatch(rest)
        if layer:
            i, tail = int(layer.group(1)), layer.group(2)
            proj = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", tail)
            if proj:
                attn.setdefault((tower, i, proj.group(2)), {})[proj.group(1)] = value
                continue
            table = _VISION_LAYER_RENAMES if tower == "vision_model" else _TEXT_LAYER_RENAMES
            new = _rename(tail, table)
            if new is None:
                raise CheckpointError(f"unexpected key {key!r} in an HF-port EVA-CLIP checkpoint")
            out[f"visual.blocks.{i}.{new}" if tower == "vision_model"
                else f"text.transformer.resblocks.{i}.{new}"] = value
            continue
        if tower == "vision_model":
            if rest == "embeddings.class_embedding":
                out["visual.cls_token"] = value.reshape(1, 1, -1)
            elif rest == "embeddings.position_embedding.weight":
                out["visual.pos_embed"] = value.unsqueeze(0)
            else:
                new = _rename(rest, _VISION_RENAMES)
                if new is None:
                    raise CheckpointError(f"unexpected key {key!r} in an HF-port EVA-CLIP checkpoint")
                out["visual." + new] = value
        else:
            if rest == "embeddings.token_embedding.weight":
                out["text.token_embedding.weight"] = value
            elif rest == "embeddings.position_embedding.weight":
                out["text.positional_embedding"] = value
            elif rest.startswith("final_layer_norm."):
                out["text.ln_final." + rest[len("final_layer_norm."):]] = value
            else:
                raise CheckpointError(f"unexpected key {key!r} in an HF-port EVA-CLIP checkpoint")

    for (tower, i, kind), parts in sorted(attn.items()):
        where = f"{tower}.encoder.layers.{i}"
        if tower == "text_model":
            stacked = _stack_qkv(parts, where, kind)
            out[f"text.transformer.resblocks.{i}.attn.in_proj_{kind}"] = stacked
        elif kind == "weight":
            out[f"visual.blocks.{i}.attn.qkv.weight"] = _stack_qkv(parts, where, kind)
        else:
            if "k" in parts:  # adds q.b_k, the same for every key of a query: softmax ignores it
                dropped.append(f"{where}.self_attn.k_proj.bias")
            qv = {p: parts[p] for p in "qv" if p in parts}
            if qv:  # EVA learns q and v biases together; an absent one of the pair is zero
                ref = next(iter(qv.values()))
                for p in "qv":
                    out[f"visual.blocks.{i}.attn.{p}_bias"] = qv.get(p, torch.zeros_like(ref))
    if "visual.head.weight" in out and "visual.head.bias" not in out \
            and any(k.endswith(".attn.q_bias") for k in out):
        # The official 18B code gives the head a bias exactly when the blocks have q/v biases; the port's
        # projection has none, which is a zero bias.
        out["visual.head.bias"] = torch.zeros(out["visual.head.weight"].shape[0], dtype=out["visual.head.weight"].dtype)
    if any(k.startswith("visual.") for k in out) and any(k.startswith("text.") for k in out) \
            and "logit_scale" not in out:
        out["logit_scale"] = torch.tensor([math.log(100.0)])  # the port's fixed temperature
    return out, dropped


_VISION_BLOCK = re.compile(r"visual\.blocks\.(\d+)\.(.+)")
_TEXT_BLOCK = re.compile(r"text\.transformer\.resblocks\.(\d+)\.(.+)")


def _invert(table: Mapping[str, str]) -> dict[str, str]:
    return {new: old for old, new in table.items()}


def training_to_hf(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """An evaclip (training-layout) state dict in the port's layout: the inverse of :func:`hf_to_training`.

    Fused q/k/v tensors are split (an absent k bias stays absent, as the port's k projection has none); the
    vision head's bias is written only when it is not zero, since the port's projection has none and the
    reader gives a q/v-bias model a zero one. ``logit_scale`` is kept under its own name: the port's forward
    ignores it (it multiplies by 100), and the reader takes it back. A tensor the port has no place for (RoPE,
    SwiGLU, sub-LN, layer scale) is an error.
    """
    out: StateDict = {}
    vision_layer, text_layer = _invert(_VISION_LAYER_RENAMES), _invert(_TEXT_LAYER_RENAMES)
    vision_top = _invert(_VISION_RENAMES)
    for key, value in sd.items():
        block = _VISION_BLOCK.fullmatch(key)
        text_block = _TEXT_BLOCK.fullmatch(key)
        if block:
            pre, tail = f"vision_model.encoder.layers.{block.group(1)}.", block.group(2)
            if tail == "attn.qkv.weight":
                for p, part in zip("qkv", value.chunk(3)):
                    out[pre + f"self_attn.{p}_proj.weight"] = part
                continue
            if tail in ("attn.q_bias", "attn.v_bias"):
                out[pre + f"self_attn.{tail[5]}_proj.bias"] = value
                continue
            new = _rename(tail, vision_layer)
        elif text_block:
            pre, tail = f"text_model.encoder.layers.{text_block.group(1)}.", text_block.group(2)
            proj = re.fullmatch(r"attn\.in_proj_(weight|bias)", tail)
            if proj:
                for p, part in zip("qkv", value.chunk(3)):
                    out[pre + f"self_attn.{p}_proj.{proj.group(1)}"] = part
                continue
            new = _rename(tail, text_layer)
        else:
            pre, new = "", None
            if key == "visual.cls_token":
                new, value = "vision_model.embeddings.class_embedding", value.reshape(-1)
            elif key == "visual.pos_embed":
                new, value = "vision_model.embeddings.position_embedding.weight", value.reshape(value.shape[-2:])
            elif key == "visual.head.weight":
                new = "visual_projection.weight"
            elif key == "visual.head.bias":
                if not bool((value == 0).all()):
                    out["visual_projection.bias"] = value
                continue
            elif key.startswith("visual."):
                renamed = _rename(key[len("visual."):], vision_top)
                new = None if renamed is None else "vision_model." + renamed
            elif key == "text.token_embedding.weight":
                new = "text_model.embeddings.token_embedding.weight"
            elif key == "text.positional_embedding":
                new = "text_model.embeddings.position_embedding.weight"
            elif key.startswith("text.ln_final."):
                new = "text_model.final_layer_norm." + key[len("text.ln_final."):]
            elif key == "text.text_projection":
                new, value = "text_projection.weight", value.t().contiguous()
            elif key == "logit_scale":
                new, value = "logit_scale", value.reshape(())
        if new is None:
            raise CheckpointError(f"the Hugging Face port has no tensor for {key!r} (its blocks have no RoPE, "
                                  "SwiGLU, sub-LN or layer scale); export this model as official or open_clip")
        out[pre + new] = value
    return out


# What the adapter maps: the port's plain blocks. Config flags of other variants (as some forks of the port
# add them) would load into the wrong computation if the shapes happened to fit, so they are refused.
_EXACT_GELU = ("gelu",)
_VARIANT_FLAGS = ("rope", "swiglu", "sub_ln", "subln")


def read_config(folder: Path) -> dict | None:
    """A model folder's ``config.json`` as a dict (None if the folder has none); anything else is refused."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        return None
    try:
        text = config_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {config_path} ({e}); re-download the model folder") from None
    config = parse_json(text, str(config_path), CheckpointError)
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} holds a JSON {type(config).__name__}, not an object; it is not a "
                              "model config: re-download the model folder")
    return config


def check_config(folder: Path) -> None:
    """Refuse a model folder whose ``config.json`` describes blocks this adapter does not map.

    evaclip's towers use exact GELU; a ``hidden_act`` of anything else (``quick_gelu``...) or a truthy RoPE /
    SwiGLU / sub-LN flag in the vision or text config would give silently different outputs.
    """
    config = read_config(folder)
    if config is None:
        return
    config_path = folder / "config.json"
    for tower in ("vision_config", "text_config"):
        sub = config.get(tower)
        if not isinstance(sub, dict):
            continue
        act = sub.get("hidden_act", "gelu")
        if act not in _EXACT_GELU:
            raise CheckpointError(f"{config_path}: {tower}.hidden_act is {show_value(act)}, but evaclip's EVA-CLIP "
                                  "towers use exact GELU; this checkpoint is not one the HF-port adapter can load")
        flags = [k for k, v in sub.items() if v is True and any(f in k.lower() for f in _VARIANT_FLAGS)]
        if flags:
            raise CheckpointError(f"{config_path}: {tower} sets {', '.join(flags)}, a block variant the HF port of "
                                  "EVA-CLIP-8B/18B does not have; convert it from the official .pt files instead")


# ------------------------------------------------------------------------------------------ config.json
def _size(sub: dict, key: str, where: str, default: int | None = None) -> int:
    """A positive integer field (a JSON bool or float is not one)."""
    if key not in sub and default is not None:
        return default
    if key not in sub:
        raise CheckpointError(f"config.json lacks {where}.{key}; build the model from its evaclip name instead "
                              "(e.g. create_model('EVA-CLIP-8B', pretrained=FOLDER))")
    value = sub[key]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise CheckpointError(f"config.json: {where}.{key} must be a positive integer, got {show_value(value)}; "
                              "the file is damaged: re-download the model folder")
    return value


def _flag(sub: dict, key: str, where: str) -> bool:
    value = sub.get(key, False)
    if type(value) is not bool:  # "no" would be truthy
        raise CheckpointError(f"config.json: {where}.{key} must be true or false, got {show_value(value)}")
    return value


def _eps(sub: dict, where: str, expected: float) -> None:
    eps = sub.get("layer_norm_eps", expected)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isclose(eps, expected, rel_tol=1e-6):
        raise CheckpointError(f"config.json: {where}.layer_norm_eps is {show_value(eps)}, but evaclip's "
                              f"{where.split('_')[0]} tower uses {expected} as the official code does; this model "
                              "is not one it can build")


def _ratio(hidden: int, width: int) -> float:
    """``mlp_ratio`` with ``int(width * ratio) == hidden`` (the width evaclip computes), whatever the rounding."""
    ratio = hidden / width
    while int(width * ratio) < hidden:
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def _heads(sub: dict, width: int, where: str) -> int:
    heads = _size(sub, "num_attention_heads", where)
    if width % heads:
        raise CheckpointError(f"config.json: {where}.hidden_size ({width}) is not divisible by num_attention_heads "
                              f"({heads}); the file is damaged: re-download the model folder")
    return heads


def config_from_hf(folder: Path) -> dict:
    """The evaclip (official-format) model config of a Hugging Face port folder, from its ``config.json``
    (see :func:`config_from_hf_dict`)."""
    check_config(folder)
    config = read_config(folder)
    if config is None:
        raise CheckpointError(f"{folder} has no config.json; build the model from its evaclip name instead")
    return config_from_hf_dict(config, folder / "config.json")


def config_from_hf_dict(config: dict, where: Path | str = "config.json") -> dict:
    """The evaclip (official-format) model config of the port's ``config.json`` contents.

    Reads only the fields the port's modeling code reads (``hidden_size``, ``num_hidden_layers``,
    ``num_attention_heads``, ``intermediate_size``, ``image_size``, ``patch_size``, ``use_rms_norm``,
    ``post_layernorm``, ``q_bias``/``v_bias``, ``vocab_size``, ``max_position_embeddings``, ``projection_dim``),
    each checked for its type (sizes are positive integers, flags real booleans), and refuses what evaclip
    would build differently.
    """
    v, t = config.get("vision_config"), config.get("text_config")
    if not isinstance(v, dict) or not isinstance(t, dict):
        raise CheckpointError(f"{where} has no vision_config/text_config: not an EVA-CLIP HF port")
    width = _size(v, "hidden_size", "vision_config")
    heads = _heads(v, width, "vision_config")
    q_bias, v_bias = _flag(v, "q_bias", "vision_config"), _flag(v, "v_bias", "vision_config")
    if q_bias != v_bias:
        raise CheckpointError("config.json: vision q_bias and v_bias differ; EVA learns both or neither")
    _eps(v, "vision_config", 1e-6)
    _eps(t, "text_config", 1e-5)
    t_width = _size(t, "hidden_size", "text_config")
    t_heads = _heads(t, t_width, "text_config")
    return {
        "embed_dim": _size(config, "projection_dim", "config"),
        "vision_cfg": {
            "image_size": _size(v, "image_size", "vision_config"),
            "patch_size": _size(v, "patch_size", "vision_config"),
            "width": width, "layers": _size(v, "num_hidden_layers", "vision_config"),
            "head_width": width // heads,
            "mlp_ratio": _ratio(_size(v, "intermediate_size", "vision_config"), width),
            "qkv_bias": q_bias, "postnorm": _flag(v, "post_layernorm", "vision_config"),
            "use_rms_norm": _flag(v, "use_rms_norm", "vision_config"),
        },
        "text_cfg": {
            "context_length": _size(t, "max_position_embeddings", "text_config"),
            "vocab_size": _size(t, "vocab_size", "text_config"), "width": t_width, "heads": t_heads,
            "layers": _size(t, "num_hidden_layers", "text_config"),
            "mlp_ratio": _ratio(_size(t, "intermediate_size", "text_config", 4 * t_width), t_width),
        },
    }


# Fields that decide the weights' shapes or the computation; two configs equal on these are the same model.
_VISION_ARCH = ("image_size", "patch_size", "width", "layers", "head_width", "mlp_hidden", "qkv_bias", "postnorm",
                "norm_type", "rope", "naiveswiglu", "subln", "ls_init_value", "global_average_pool")
_TEXT_ARCH = ("context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "ls_init_value", "attn_mask",
              "is_hf")


def config_to_hf(cfg: CLIPConfig) -> dict:
    """The port's ``config.json`` for an evaclip model config: the inverse of :func:`config_from_hf_dict`.

    The port has plain GELU blocks without RoPE, SwiGLU or sub-LN, a cls-token pool and a fixed temperature;
    a model it cannot express is refused (one line naming the first field that differs) rather than written
    as a folder that would load into another computation.
    """
    v, t = cfg.vision_cfg, cfg.text_cfg
    out = {
        "architectures": ["EvaCLIPModel"], "model_type": "evaclip", "projection_dim": cfg.embed_dim,
        "vision_config": {
            "hidden_size": v.width, "num_hidden_layers": v.layers, "num_attention_heads": v.heads,
            "intermediate_size": v.mlp_hidden, "image_size": v.image_size, "patch_size": v.patch_size,
            "use_rms_norm": v.norm_type == "rmsnorm", "post_layernorm": v.postnorm, "q_bias": v.qkv_bias,
            "k_bias": False, "v_bias": v.qkv_bias, "layer_norm_eps": 1e-6, "hidden_act": "gelu",
        },
        "text_config": {
            "hidden_size": t.width, "num_hidden_layers": t.layers, "num_attention_heads": t.heads,
            "intermediate_size": int(t.width * t.mlp_ratio), "vocab_size": t.vocab_size,
            "max_position_embeddings": t.context_length, "layer_norm_eps": 1e-5, "hidden_act": "gelu",
        },
    }
    back = config_from_dict(config_from_hf_dict(out), where="the exported config.json")
    for tower, fields, a, b in (("vision_cfg", _VISION_ARCH, v, back.vision_cfg),
                                ("text_cfg", _TEXT_ARCH, t, back.text_cfg)):
        for name in fields:
            if getattr(a, name) != getattr(b, name):
                raise CheckpointError(
                    f"the Hugging Face port cannot express this model: its {tower}.{name} is "
                    f"{show_value(getattr(a, name))}, the port's blocks give {show_value(getattr(b, name))}; "
                    "export it as official or open_clip instead")
    if cfg.quick_gelu or cfg.init_logit_bias is not None:
        raise CheckpointError("the Hugging Face port cannot express this model (QuickGELU or a logit bias); export "
                              "it as official or open_clip instead")
    return out


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()
