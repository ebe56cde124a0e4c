"""Named configs: parameter counts against the reference note's formulas, building on the meta device, key
names and shapes against the official checkpoint layout, and official-format JSON files accepted as-is."""
from __future__ import annotations

import json
import time

import pytest
import torch

import evaclip
from evaclip.models.config import CLIPConfig

VOCAB = 49408


# ---------------------------------------------------------------------------------------------------------
# parameter-count formulas (reference note, section 1); n = 1 for RMSNorm, 2 for LayerNorm; b = qkv_bias
# ---------------------------------------------------------------------------------------------------------
def vision_params(cfg: CLIPConfig) -> int:
    v = cfg.vision_cfg
    W, L, p, E = v.width, v.layers, v.patch_size, cfg.embed_dim
    H = int(W * v.mlp_ratio)
    N = (v.image_size // p) ** 2
    n = 2 if (v.fusedLN or not v.use_rms_norm) else 1
    b = int(v.qkv_bias)
    if v.naiveswiglu and v.subln:
        block = 4 * W * W + 3 * W * H + 2 * H + n * H + 2 * W + 3 * n * W + 2 * W * b
    else:
        assert not v.subln and not v.naiveswiglu, "no formula for this combination in the note"
        block = 4 * W * W + 2 * W * H + H + 2 * W + 2 * n * W + 2 * W * b
    layer_scale = 2 * W if v.ls_init_value else 0  # gamma_1, gamma_2 (EVA01-CLIP-B-16)
    return L * (block + layer_scale) + (3 * p * p * W + W) + W + (N + 1) * W + n * W + W * E + E * b


def text_params(cfg: CLIPConfig) -> int:
    t = cfg.text_cfg
    Wt, Lt = t.width, t.layers
    layer_scale = 2 * Wt if t.ls_init_value else 0
    return (t.vocab_size * Wt + t.context_length * Wt + Lt * (12 * Wt * Wt + 13 * Wt + layer_scale) + 2 * Wt
            + Wt * cfg.embed_dim)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", evaclip.list_models())
def test_parameter_count_matches_the_formulas(name):
    cfg = evaclip.get_model_config(name)
    model = evaclip.create_model(name, device="meta")
    assert count(model.visual) == vision_params(cfg)
    if cfg.text_cfg.is_hf:  # a Hugging Face encoder (the demo's MiniLM): no CLIP text formula applies
        return
    assert count(model.text) == text_params(cfg)
    assert count(model) == vision_params(cfg) + text_params(cfg) + 1  # + logit_scale


def test_official_configs_are_all_there():
    official = {"EVA01-CLIP-g-14", "EVA01-CLIP-g-14-plus", "EVA02-CLIP-B-16", "EVA02-CLIP-L-14",
                "EVA02-CLIP-L-14-336", "EVA02-CLIP-bigE-14", "EVA02-CLIP-bigE-14-plus", "EVA-CLIP-8B",
                "EVA-CLIP-8B-448", "EVA-CLIP-18B"}
    assert official <= set(evaclip.list_models())
    assert {"evaclip-tiny", "evaclip-small"} <= set(evaclip.list_models())


@pytest.mark.parametrize("name,vision,text", [
    ("EVA-CLIP-18B", 17_630_494_720, 694_987_520),
    ("EVA-CLIP-8B", 7_526_088_704, 694_659_840),
])
def test_published_counts_of_8b_and_18b(name, vision, text):
    cfg = evaclip.get_model_config(name)
    assert vision_params(cfg) == vision and text_params(cfg) == text  # the formulas themselves
    model = evaclip.create_model(name, device="meta")
    assert count(model.visual) == vision and count(model.text) == text


@pytest.mark.parametrize("name,vision_m,text_m", [
    ("EVA02-CLIP-bigE-14-plus", 4351, 694.3), ("EVA02-CLIP-L-14", 304.1, 123.7), ("EVA02-CLIP-B-16", 86.3, 63.4),
    ("EVA01-CLIP-g-14", 1013, 123.8),
])
def test_rounded_counts_from_the_reference_table(name, vision_m, text_m):
    model = evaclip.create_model(name, device="meta")
    assert count(model.visual) / 1e6 == pytest.approx(vision_m, abs=0.5 if vision_m > 1000 else 0.05)
    assert count(model.text) / 1e6 == pytest.approx(text_m, abs=0.05)


def test_building_18b_on_meta_allocates_nothing_and_is_fast():
    evaclip.create_model("evaclip-tiny", device="meta")  # warm up torch's lazy initialisation
    start = time.perf_counter()
    model = evaclip.create_model("EVA-CLIP-18B", device="meta")
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"building EVA-CLIP-18B on meta took {elapsed:.1f} s"
    tensors = list(model.parameters()) + list(model.buffers())
    assert tensors and all(t.is_meta for t in tensors)
    assert model.logit_scale.shape == (1,)


@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_every_named_config_builds_on_meta(precision, dtype):
    for name in evaclip.list_models():
        model = evaclip.create_model(name, device="meta", precision=precision)
        assert all(p.is_meta and p.dtype == dtype for p in model.parameters()), name
        cfg = evaclip.get_model_config(name)
        assert model.visual.image_size == cfg.vision_cfg.image_size
        assert model.text.context_length == cfg.text_cfg.context_length
        assert model.visual.num_layers == cfg.vision_cfg.layers
        assert cfg.text_cfg.is_hf or model.text.num_layers == cfg.text_cfg.layers
        # shapes propagate on meta: a forward pass gives the embedding shape without computing anything
        img = torch.empty(2, 3, cfg.vision_cfg.image_size, cfg.vision_cfg.image_size, device="meta", dtype=dtype)
        if cfg.vision_cfg.width <= 1024:  # keep it quick; the shape logic does not depend on the size
            assert model.encode_image(img).shape == (2, cfg.embed_dim)


# ---------------------------------------------------------------------------------------------------------
# key names and shapes (reference note, section 4)
# ---------------------------------------------------------------------------------------------------------
EVA01_TINY = {
    "embed_dim": 40,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "head_width": 16, "mlp_ratio": 4.3637,
                   "patch_size": 8, "eva_model_name": "eva-clip-g-14-x", "drop_path_rate": 0.4, "xattn": True,
                   "fusedLN": True},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2, "xattn": False,
                 "fusedLN": True},
}


def expected_layout(cfg: CLIPConfig) -> dict[str, tuple[int, ...]]:
    """The official CustomCLIP state-dict keys and shapes, written from the reference note."""
    v, t, E = cfg.vision_cfg, cfg.text_cfg, cfg.embed_dim
    W, p, H = v.width, v.patch_size, int(v.width * v.mlp_ratio)
    N = (v.image_size // p) ** 2
    ln = v.fusedLN or not v.use_rms_norm

    def norm(prefix: str, dim: int, layernorm: bool = ln) -> dict:
        out = {f"{prefix}.weight": (dim,)}
        if layernorm:
            out[f"{prefix}.bias"] = (dim,)
        return out

    keys: dict[str, tuple[int, ...]] = {
        "visual.cls_token": (1, 1, W), "visual.pos_embed": (1, N + 1, W),
        "visual.patch_embed.proj.weight": (W, 3, p, p), "visual.patch_embed.proj.bias": (W,),
    }
    for i in range(v.layers):
        b = f"visual.blocks.{i}."
        keys |= norm(b + "norm1", W) | norm(b + "norm2", W)
        if v.subln:
            keys |= {b + f"attn.{x}_proj.weight": (W, W) for x in "qkv"}
            keys |= norm(b + "attn.inner_attn_ln", W)
        else:
            keys[b + "attn.qkv.weight"] = (3 * W, W)
        if v.qkv_bias:
            keys |= {b + "attn.q_bias": (W,), b + "attn.v_bias": (W,)}
        keys |= {b + "attn.proj.weight": (W, W), b + "attn.proj.bias": (W,)}
        if v.naiveswiglu:
            keys |= {b + "mlp.w1.weight": (H, W), b + "mlp.w1.bias": (H,), b + "mlp.w2.weight": (H, W),
                     b + "mlp.w2.bias": (H,), b + "mlp.w3.weight": (W, H), b + "mlp.w3.bias": (W,)}
            if v.subln:
                keys |= norm(b + "mlp.ffn_ln", H)
        else:
            keys |= {b + "mlp.fc1.weight": (H, W), b + "mlp.fc1.bias": (H,), b + "mlp.fc2.weight": (W, H),
                     b + "mlp.fc2.bias": (W,)}
    keys |= norm("visual.norm", W)
    keys["visual.head.weight"] = (E, W)
    if v.qkv_bias:
        keys["visual.head.bias"] = (E,)

    Wt = t.width
    keys |= {"text.token_embedding.weight": (t.vocab_size, Wt), "text.positional_embedding": (t.context_length, Wt)}
    for j in range(t.layers):
        b = f"text.transformer.resblocks.{j}."
        keys |= norm(b + "ln_1", Wt, True) | norm(b + "ln_2", Wt, True)
        keys |= {b + "attn.in_proj_weight": (3 * Wt, Wt), b + "attn.in_proj_bias": (3 * Wt,),
                 b + "attn.out_proj.weight": (Wt, Wt), b + "attn.out_proj.bias": (Wt,),
                 b + "mlp.c_fc.weight": (4 * Wt, Wt), b + "mlp.c_fc.bias": (4 * Wt,),
                 b + "mlp.c_proj.weight": (Wt, 4 * Wt), b + "mlp.c_proj.bias": (Wt,)}
    keys |= norm("text.ln_final", Wt, True)
    keys["text.text_projection"] = (Wt, E)
    keys["logit_scale"] = (1,)
    return keys


def _shapes(model) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["evaclip-tiny-18b", "evaclip-tiny", "EVA01-tiny"])
def test_key_names_and_shapes_match_the_official_layout(name, tmp_path):
    if name == "EVA01-tiny":
        path = tmp_path / "EVA01-tiny.json"
        path.write_text(json.dumps(EVA01_TINY))
        name = str(path)
    cfg = evaclip.get_model_config(name)
    model = evaclip.create_model(name)
    got, want = _shapes(model), expected_layout(cfg)
    assert sorted(set(got) - set(want)) == [] and sorted(set(want) - set(got)) == []
    assert got == want


def test_spot_checks_of_the_18b_style_layout():
    cfg = evaclip.get_model_config("evaclip-tiny-18b")
    sd = _shapes(evaclip.create_model("evaclip-tiny-18b", device="meta"))
    W, E, Wt = cfg.vision_cfg.width, cfg.embed_dim, cfg.text_cfg.width
    assert sd["visual.blocks.0.attn.qkv.weight"] == (3 * W, W)
    assert "visual.blocks.0.attn.q_bias" not in sd and "visual.head.bias" not in sd  # qkv_bias=False
    assert "visual.blocks.0.norm1.bias" not in sd  # RMSNorm has no bias
    assert sd["visual.head.weight"] == (E, W)
    assert sd["text.transformer.resblocks.0.attn.in_proj_weight"] == (3 * Wt, Wt)
    assert sd["text.text_projection"] == (Wt, E) and sd["logit_scale"] == (1,)
    eva02 = _shapes(evaclip.create_model("evaclip-tiny", device="meta"))
    assert eva02["visual.blocks.0.attn.q_bias"] == (64,) and "visual.head.bias" in eva02
    assert not any("freqs" in k for k in eva02)  # RoPE tables are rebuilt, not stored


# ---------------------------------------------------------------------------------------------------------
# official-format JSON files
# ---------------------------------------------------------------------------------------------------------
def test_official_format_18b_json_is_accepted_as_is(tmp_path):
    # The structure of the official EVA-CLIP-18B.json (every key it has), with tiny sizes.
    official = {
        "embed_dim": 24,
        "vision_cfg": {"image_size": 28, "layers": 2, "width": 32, "head_width": 16, "mlp_ratio": 5,
                       "patch_size": 14, "eva_model_name": "eva-clip-18b-14-x", "drop_path_rate": 0,
                       "qkv_bias": False, "xattn": True, "postnorm": True, "fusedLN": False, "use_rms_norm": True},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2,
                     "xattn": False, "fusedLN": False},
    }
    path = tmp_path / "EVA-CLIP-18B-tiny.json"
    path.write_text(json.dumps(official, indent=4))
    model = evaclip.create_model(str(path))
    cfg = model.cfg
    assert cfg.vision_cfg.postnorm and cfg.vision_cfg.norm_type == "rmsnorm" and not cfg.vision_cfg.qkv_bias
    assert model.visual.blocks[0].postnorm
    assert count(model.visual) == vision_params(cfg) and count(model.text) == text_params(cfg)
    assert _shapes(model) == expected_layout(cfg)
    out = model.encode_image(torch.randn(2, 3, 28, 28))
    assert out.shape == (2, 24) and torch.isfinite(out).all()
    # also a pathlib.Path, and the same file through create_model_and_transforms' config lookup
    assert evaclip.get_model_config(path).vision_cfg.layers == 2


def test_official_format_eva02_json_is_accepted_as_is(tmp_path):
    official = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "drop_path_rate": 0, "head_width": 16,
                       "mlp_ratio": 2.6667, "patch_size": 8, "eva_model_name": "eva-clip-l-14", "xattn": True,
                       "fusedLN": True, "rope": True, "pt_hw_seq_len": 16, "intp_freq": True,
                       "naiveswiglu": True, "subln": True},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2,
                     "xattn": False, "fusedLN": True},
    }
    path = tmp_path / "eva02.json"
    path.write_text(json.dumps(official))
    model = evaclip.create_model(str(path))
    assert model.visual.rope is not None and model.visual.blocks[0].attn.subln
    assert _shapes(model) == expected_layout(model.cfg)
    assert count(model.visual) == vision_params(model.cfg)


def test_every_official_field_is_accepted(tmp_path):
    # Every field of the official CLIPVisionCfg / CLIPTextCfg (at harmless values) and the top-level flags.
    vision = {"layers": 2, "width": 32, "head_width": 16, "mlp_ratio": 4.0, "patch_size": 8, "image_size": 32,
              "ls_init_value": None, "patch_dropout": 0.0, "global_average_pool": False, "drop_path_rate": None,
              "timm_model_name": None, "timm_model_pretrained": False, "timm_pool": "avg", "timm_proj": "linear",
              "timm_proj_bias": False, "eva_model_name": "eva-clip-b-16", "qkv_bias": True, "fusedLN": False,
              "xattn": True, "postnorm": False, "rope": False, "pt_hw_seq_len": 16, "intp_freq": False,
              "naiveswiglu": False, "subln": False, "use_rms_norm": False}
    text = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1, "ls_init_value": None,
            "hf_model_name": None, "hf_tokenizer_name": None, "hf_model_pretrained": True, "proj": "mlp",
            "pooler_type": "mean_pooler", "masked_language_modeling": False, "fusedLN": False, "xattn": False,
            "attn_mask": True}
    path = tmp_path / "all-fields.json"
    path.write_text(json.dumps({"embed_dim": 16, "quick_gelu": False, "custom_text": True,
                                "vision_cfg": vision, "text_cfg": text}))
    model = evaclip.create_model(str(path), device="meta")
    assert count(model.visual) == vision_params(model.cfg) and count(model.text) == text_params(model.cfg)
