"""Export to the layouts users load elsewhere (the released EVA-CLIP ``.pt``, open_clip's EVA layout, the Hugging
Face port folder) and back: evaclip -> layout -> file -> evaclip gives the same tensors and the same outputs, for
the three block styles (EVA02: RoPE + SwiGLU + sub-LN, separate q/k/v; EVA01: fused qkv + GELU; 18B: res-post-norm
+ RMSNorm, no biases). The HF export is also checked against a float64 restatement of the port's forward, which
shares no code with evaclip."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from test_hf_port import VOCAB as HF_VOCAB
from test_hf_port import _cfg as hf_cfg
from test_hf_port import _inputs as hf_inputs
from test_hf_port import reference_image_features, reference_text_features

import evaclip
from evaclip.cli.main import main
from evaclip.errors import CheckpointError
from evaclip.models.checkpoint import (adapter_for, adapter_named, export_state_dict, read_file, save_file,
                                       save_hf_folder, save_torch)

VOCAB = 600
STYLES = ["evaclip-tiny", "evaclip-small", "evaclip-tiny-18b"]  # EVA02-like, EVA01-like, 18B-like


def build(name: str, seed: int = 0):
    cfg = evaclip.get_model_config(name)
    cfg.text_cfg.vocab_size = VOCAB
    if name == "evaclip-small":  # smaller and faster; still fused qkv + GELU with q/v biases
        cfg.vision_cfg.layers, cfg.text_cfg.layers = 2, 2
        cfg.vision_cfg.image_size = 32
    torch.manual_seed(seed)
    model = evaclip.create_model(cfg).eval()
    with torch.no_grad():  # every tensor distinct from its init, biases and norm gains included
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        model.logit_scale.fill_(1.7)
    return cfg, model


def inputs(model, batch: int = 2):
    g = torch.Generator().manual_seed(3)
    size = model.visual.image_size
    images = torch.randn(batch, 3, size, size, generator=g)
    tokens = torch.randint(1, VOCAB - 2, (batch, 12), generator=g)
    tokens[:, 0], tokens[:, -1] = VOCAB - 2, VOCAB - 1
    return images, tokens


def outputs(model, images, tokens):
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens), model.logit_scale.detach().clone()


def assert_same_model(a, b, images, tokens):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for x, y in zip(outputs(a, images, tokens), outputs(b, images, tokens)):
        assert torch.equal(x, y)


@pytest.mark.parametrize("name", STYLES)
@pytest.mark.parametrize("layout,suffix", [("official", ".pt"), ("open_clip", ".bin"), ("open_clip", ".safetensors"),
                                           ("training", ".safetensors")])
def test_round_trip_through_each_layout(tmp_path, name, layout, suffix):
    cfg, model = build(name)
    images, tokens = inputs(model)
    exported = export_state_dict(model.state_dict(), layout)
    path = tmp_path / f"out{suffix}"
    (save_file if suffix == ".safetensors" else save_torch)(exported, path)
    raw = read_file(path)  # read back safely (weights_only for .pt/.bin)
    assert adapter_for(raw) is adapter_named(layout) and set(raw) == set(exported)
    assert raw["logit_scale"].ndim == 0  # as the official code and open_clip store it
    loaded = evaclip.create_model(cfg, pretrained=str(path)).eval()
    assert_same_model(model, loaded, images, tokens)


def test_official_layout_is_the_released_key_set():
    _, model = build("evaclip-tiny")
    keys = set(export_state_dict(model.state_dict(), "official"))
    assert {"visual.blocks.0.attn.q_proj.weight", "visual.blocks.0.attn.q_bias", "visual.blocks.0.mlp.w1.weight",
            "visual.blocks.0.mlp.ffn_ln.weight", "visual.blocks.0.attn.inner_attn_ln.weight", "visual.head.weight",
            "token_embedding.weight", "positional_embedding", "transformer.resblocks.0.attn.in_proj_weight",
            "ln_final.weight", "text_projection", "logit_scale"} <= keys
    assert not any(k.startswith("text.") for k in keys)


@pytest.mark.parametrize("name,expected", [
    # timm's Eva (open_clip's EVA02 configs: qkv_fused=False, swiglu_mlp, scale_mlp, scale_attn_inner)
    ("evaclip-tiny", {"attn.q_proj.weight", "attn.q_proj.bias", "attn.k_proj.weight", "attn.v_proj.bias",
                      "attn.norm.weight", "mlp.fc1_g.weight", "mlp.fc1_x.bias", "mlp.norm.weight", "mlp.fc2.weight"}),
    # EVA01-g style: fused qkv with separate q/v biases, GELU Mlp
    ("evaclip-small", {"attn.qkv.weight", "attn.q_bias", "attn.v_bias", "mlp.fc1.weight", "mlp.fc2.weight"}),
])
def test_open_clip_layout_uses_timm_eva_names(name, expected):
    _, model = build(name)
    sd = export_state_dict(model.state_dict(), "open_clip")
    block = {k[len("visual.trunk.blocks.0."):] for k in sd if k.startswith("visual.trunk.blocks.0.")}
    assert expected <= block
    assert not block & {"attn.inner_attn_ln.weight", "mlp.w1.weight", "mlp.ffn_ln.weight"}
    assert {"visual.trunk.cls_token", "visual.trunk.pos_embed", "visual.trunk.patch_embed.proj.weight",
            "visual.trunk.norm.weight", "visual.trunk.head.weight", "text.token_embedding.weight",
            "text.text_projection", "logit_scale"} <= set(sd)
    assert not any(k.startswith("visual.") and not k.startswith("visual.trunk.") for k in sd)


def test_hf_export_is_read_back_by_the_hf_reader_and_matches_the_ports_forward(tmp_path):
    cfg = hf_cfg(postnorm=True, qkv_bias=True)  # res-post-norm + RMSNorm + q/v biases (and a head bias)
    torch.manual_seed(0)
    model = evaclip.create_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        model.visual.head.bias.zero_()  # the port's projection has none (the reader gives it a zero one)
    folder = save_hf_folder(model.state_dict(), cfg, tmp_path / "hf")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]

    # the folder builds its own model from config.json (the existing reader) and loads the same tensors
    again = evaclip.create_model(str(folder), pretrained=str(folder)).eval()
    images, tokens = hf_inputs(cfg)
    assert_same_model(model, again, images.float(), tokens)

    # the port's forward, restated in float64 on the exported tensors, gives evaclip's features
    hf = {k: v.double() for k, v in load_file(str(folder / "model.safetensors")).items()}
    assert "visual_projection.bias" not in hf and "logit_scale" in hf
    assert not any(k.endswith("k_proj.bias") for k in hf if k.startswith("vision_model."))
    with torch.no_grad():
        ours_img = model.double().encode_image(images)
        ours_txt = model.encode_text(tokens)
    torch.testing.assert_close(ours_img, reference_image_features(hf, cfg, images), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ours_txt, reference_text_features(hf, cfg, tokens), rtol=1e-9, atol=1e-9)
    config = json.loads((folder / "config.json").read_text())
    assert config["vision_config"]["post_layernorm"] is True and config["projection_dim"] == cfg.embed_dim
    assert HF_VOCAB == config["text_config"]["vocab_size"]


@pytest.mark.parametrize("change,field", [("rope", "rope"), ("naiveswiglu", "naiveswiglu"), ("subln", "subln")])
def test_hf_export_refuses_what_the_port_cannot_express(tmp_path, change, field):
    cfg = hf_cfg(postnorm=False, qkv_bias=False)
    setattr(cfg.vision_cfg, change, True)
    cfg.vision_cfg.intp_freq = True  # RoPE on the tiny grid
    model = evaclip.create_model(cfg)
    with pytest.raises(CheckpointError, match=field):
        save_hf_folder(model.state_dict(), cfg, tmp_path / "hf")
    assert not (tmp_path / "hf" / "model.safetensors").exists()


# ------------------------------------------------------------------------------------------------ the CLI
def test_convert_cli_writes_each_format_and_each_reads_back(tmp_path, capsys):
    cfg, model = build("evaclip-tiny-18b")
    images, tokens = inputs(model)
    src = tmp_path / "model.safetensors"
    save_file(model.state_dict(), src)
    cfg_path = tmp_path / "model.json"
    cfg.save(cfg_path)

    for to, out in (("official", tmp_path / "official.pt"), ("open_clip", tmp_path / "open_clip_pytorch_model.bin"),
                    ("hf", tmp_path / "hf_folder")):
        extra = ["--model", str(cfg_path)] if to == "hf" else []
        assert main(["convert", str(src), str(out), "--to", to, *extra]) == 0, to
        printed = capsys.readouterr().out
        assert f"wrote {out}" in printed
        again = evaclip.create_model(cfg, pretrained=str(out)).eval()
        assert_same_model(model, again, images, tokens)
    assert "temperature" in printed  # the port multiplies by 100: the kept logit_scale is pointed out

    # and back from the HF folder to one file, without --model (the folder has its config.json)
    back = tmp_path / "back.safetensors"
    assert main(["convert", str(tmp_path / "hf_folder"), str(back)]) == 0
    assert_same_model(model, evaclip.create_model(cfg, pretrained=str(back)).eval(), images, tokens)


def test_convert_cli_bad_combinations_are_one_line_errors(tmp_path, capsys):
    cfg, model = build("evaclip-tiny")  # RoPE + SwiGLU + sub-LN: not expressible in the HF port
    src = tmp_path / "model.safetensors"
    save_file(model.state_dict(), src)
    other = tmp_path / "other.json"
    small_cfg, _ = build("evaclip-tiny-18b")
    small_cfg.save(other)
    cfg_path = tmp_path / "model.json"
    cfg.save(cfg_path)
    cases = [
        (["--to", "hf", str(tmp_path / "h1")], "--model"),
        (["--to", "official", "--layout", "flat", str(tmp_path / "o.pt")], "--layout"),
        (["--to", "official", str(tmp_path / "o.npz")], ".pt"),
        (["--to", "hf", "--model", str(cfg_path), str(tmp_path / "h2")], "cannot express"),
        (["--to", "hf", "--model", str(other), str(tmp_path / "h3")], "do not fit"),
    ]
    for args, fragment in cases:
        capsys.readouterr()
        out = args.pop()
        assert main(["convert", str(src), out, *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and fragment in err, err
    for name in ("h1", "h2", "h3"):  # nothing written
        assert not (tmp_path / name / "model.safetensors").exists() and not (tmp_path / name / "config.json").exists()
    assert not (tmp_path / "o.pt").exists() and not (tmp_path / "o.npz").exists()


def test_what_the_port_ignores_still_round_trips_through_the_hf_layout():
    """The port multiplies by 100 and its projection has no bias: a model's own temperature and a non-zero
    head bias are written under names the reader takes back, so evaclip -> hf -> evaclip loses nothing."""
    cfg = hf_cfg(postnorm=False, qkv_bias=True)
    model = evaclip.create_model(cfg)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(30.0))
        model.visual.head.bias.normal_()
    hf = export_state_dict(model.state_dict(), "hf")
    assert "visual_projection.bias" in hf
    back = evaclip.create_model(cfg)
    assert evaclip.load_checkpoint(back, hf).ok
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
