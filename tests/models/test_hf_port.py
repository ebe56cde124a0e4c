"""The Hugging Face port's checkpoints (``vision_model.*``/``text_model.*``, as BAAI/EVA-CLIP-8B and -18B ship
them): converted by evaclip.models.hf_port, they give the outputs that the port's own forward pass gives.

The reference below is a plain re-statement of the port's ``modeling_evaclip.py`` forward (embeddings, pre- or
post-norm layers with separate q/k/v projections, pooled class token through ``post_layernorm``, causal text
encoder pooled at the highest token id, bias-free projections), written on the HF-layout tensors directly, in
float64; it shares no code with evaclip's modules. Random weights (biases and norm gains too), so every
tensor matters.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file as st_save

import evaclip
from evaclip.errors import CheckpointError

VOCAB = 500


def _cfg(postnorm: bool, qkv_bias: bool):
    cfg = evaclip.get_model_config("evaclip-tiny-18b")  # RMSNorm, no RoPE, no SwiGLU: the port's architecture
    cfg.vision_cfg.postnorm, cfg.vision_cfg.qkv_bias = postnorm, qkv_bias
    cfg.text_cfg.vocab_size = VOCAB
    return cfg


def hf_state_dict(cfg, seed: int = 0, vision_q_bias: bool = False) -> dict[str, torch.Tensor]:
    """Random weights in the port's layout and shapes for ``cfg``."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return (torch.randn(*shape, generator=g) * scale).float()

    v, t, E = cfg.vision_cfg, cfg.text_cfg, cfg.embed_dim
    W, p, n = v.width, v.patch_size, (v.image_size // v.patch_size) ** 2
    hidden = int(W * v.mlp_ratio)
    sd = {"vision_model.embeddings.class_embedding": r(W),
          "vision_model.embeddings.patch_embedding.weight": r(W, 3, p, p),
          "vision_model.embeddings.patch_embedding.bias": r(W),
          "vision_model.embeddings.position_embedding.weight": r(n + 1, W),
          "vision_model.post_layernorm.weight": 1 + r(W),
          "visual_projection.weight": r(E, W)}
    for i in range(v.layers):
        pre = f"vision_model.encoder.layers.{i}."
        sd.update({pre + "layer_norm1.weight": 1 + r(W), pre + "layer_norm2.weight": 1 + r(W),
                   pre + "self_attn.out_proj.weight": r(W, W), pre + "self_attn.out_proj.bias": r(W),
                   pre + "mlp.fc1.weight": r(hidden, W), pre + "mlp.fc1.bias": r(hidden),
                   pre + "mlp.fc2.weight": r(W, hidden), pre + "mlp.fc2.bias": r(W)})
        for q in "qkv":
            sd[pre + f"self_attn.{q}_proj.weight"] = r(W, W)
        if vision_q_bias:  # q_bias / v_bias, and a (harmless) non-zero k bias
            for q in "qkv":
                sd[pre + f"self_attn.{q}_proj.bias"] = r(W)
    Wt = t.width
    sd.update({"text_model.embeddings.token_embedding.weight": r(VOCAB, Wt),
               "text_model.embeddings.position_embedding.weight": r(t.context_length, Wt),
               "text_model.final_layer_norm.weight": 1 + r(Wt), "text_model.final_layer_norm.bias": r(Wt),
               "text_projection.weight": r(E, Wt)})
    for i in range(t.layers):
        pre = f"text_model.encoder.layers.{i}."
        for ln in ("layer_norm1", "layer_norm2"):
            sd[pre + ln + ".weight"], sd[pre + ln + ".bias"] = 1 + r(Wt), r(Wt)
        for q in "qkv":
            sd[pre + f"self_attn.{q}_proj.weight"], sd[pre + f"self_attn.{q}_proj.bias"] = r(Wt, Wt), r(Wt)
        sd.update({pre + "self_attn.out_proj.weight": r(Wt, Wt), pre + "self_attn.out_proj.bias": r(Wt),
                   pre + "mlp.fc1.weight": r(4 * Wt, Wt), pre + "mlp.fc1.bias": r(4 * Wt),
                   pre + "mlp.fc2.weight": r(Wt, 4 * Wt), pre + "mlp.fc2.bias": r(Wt)})
    return sd


# --------------------------------------------------------------------------- the port's forward, restated
def _rms(x, w, eps=1e-6):
    # the port's RMSNorm takes the mean square in float32 whatever the input dtype (T5 style)
    return w * (x * torch.rsqrt(x.to(torch.float32).pow(2).mean(-1, keepdim=True) + eps))


def _ln(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _lin(sd, name, x):
    return x @ sd[name + ".weight"].T + (sd[name + ".bias"] if name + ".bias" in sd else 0)


def _attention(sd, pre, x, heads, causal):
    B, N, C = x.shape
    d = C // heads
    q, k, v = (_lin(sd, pre + f"self_attn.{c}_proj", x).view(B, N, heads, d).transpose(1, 2) for c in "qkv")
    logits = (q * d ** -0.5) @ k.transpose(-1, -2)
    if causal:
        logits = logits + torch.full((N, N), float("-inf"), dtype=x.dtype).triu(1)
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C)
    return _lin(sd, pre + "self_attn.out_proj", out)


def _layer(sd, pre, x, heads, norm, postnorm, causal=False):
    def mlp(h):
        return _lin(sd, pre + "mlp.fc2", F.gelu(_lin(sd, pre + "mlp.fc1", h)))
    if postnorm:  # the port's post_layernorm flag: norm after each branch, before the residual add
        x = x + norm(_attention(sd, pre, x, heads, causal), pre + "layer_norm1")
        return x + norm(mlp(x), pre + "layer_norm2")
    x = x + _attention(sd, pre, norm(x, pre + "layer_norm1"), heads, causal)
    return x + mlp(norm(x, pre + "layer_norm2"))


def reference_image_features(sd, cfg, images):
    v = cfg.vision_cfg
    x = F.conv2d(images, sd["vision_model.embeddings.patch_embedding.weight"],
                 sd["vision_model.embeddings.patch_embedding.bias"], stride=v.patch_size).flatten(2).transpose(1, 2)
    cls = sd["vision_model.embeddings.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + sd["vision_model.embeddings.position_embedding.weight"]
    rms = lambda h, name: _rms(h, sd[name + ".weight"])  # noqa: E731
    for i in range(v.layers):
        x = _layer(sd, f"vision_model.encoder.layers.{i}.", x, v.width // v.head_width, rms, v.postnorm)
    pooled = _rms(x[:, 0], sd["vision_model.post_layernorm.weight"])
    return pooled @ sd["visual_projection.weight"].T


def reference_text_features(sd, cfg, tokens):
    t = cfg.text_cfg
    x = sd["text_model.embeddings.token_embedding.weight"][tokens] \
        + sd["text_model.embeddings.position_embedding.weight"][: tokens.shape[1]]
    ln = lambda h, name: _ln(h, sd[name + ".weight"], sd[name + ".bias"])  # noqa: E731
    for i in range(t.layers):
        x = _layer(sd, f"text_model.encoder.layers.{i}.", x, t.heads, ln, False, causal=True)
    x = ln(x, "text_model.final_layer_norm")
    pooled = x[torch.arange(x.shape[0]), tokens.argmax(-1)]
    return pooled @ sd["text_projection.weight"].T


def _inputs(cfg, batch=3):
    g = torch.Generator().manual_seed(7)
    s = cfg.vision_cfg.image_size
    images = torch.randn(batch, 3, s, s, generator=g, dtype=torch.float64)
    tokens = torch.randint(1, VOCAB - 2, (batch, cfg.text_cfg.context_length), generator=g)
    for b, end in enumerate((5, 11, 20)[:batch]):  # start, words, end (the highest id), then padding
        tokens[b, 0], tokens[b, end], tokens[b, end + 1:] = VOCAB - 2, VOCAB - 1, 0
    return images, tokens


@pytest.mark.parametrize("postnorm,qkv_bias", [(True, False), (False, False), (False, True)],
                         ids=["18B-like", "8B-like", "with-q-v-bias"])
def test_hf_port_checkpoint_matches_the_ports_forward(tmp_path, postnorm, qkv_bias):
    cfg = _cfg(postnorm, qkv_bias)
    sd = hf_state_dict(cfg, vision_q_bias=qkv_bias)
    st_save(sd, str(tmp_path / "model.safetensors"))
    model = evaclip.create_model(cfg, pretrained=str(tmp_path / "model.safetensors")).double().eval()
    sd64 = {k: v.double() for k, v in sd.items()}
    images, tokens = _inputs(cfg)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), reference_image_features(sd64, cfg, images),
                                   rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(model.encode_text(tokens), reference_text_features(sd64, cfg, tokens),
                                   rtol=1e-9, atol=1e-9)
    assert model.logit_scale.exp().item() == pytest.approx(100.0)  # the port's fixed temperature


def test_the_vision_k_bias_is_dropped_because_it_cannot_matter(tmp_path):
    cfg = _cfg(False, True)
    sd = hf_state_dict(cfg, vision_q_bias=True)
    report = evaclip.load_checkpoint(evaclip.create_model(cfg), sd)
    assert report.layout == "hf"
    assert sorted(k for k in report.ignored if "k_proj" in k) == \
        [f"vision_model.encoder.layers.{i}.self_attn.k_proj.bias" for i in range(cfg.vision_cfg.layers)]
    # the reference uses that k bias; the match in the test above shows that dropping it changes nothing
    assert sd["vision_model.encoder.layers.0.self_attn.k_proj.bias"].abs().sum() > 0


def _write_sharded(sd, folder, fmt="safetensors"):
    folder.mkdir()
    keys = sorted(sd)
    shards = {f"model-0000{j + 1}-of-00002.{'safetensors' if fmt == 'safetensors' else 'bin'}": keys[j::2]
              for j in range(2)}
    for name, ks in shards.items():
        part = {k: sd[k].clone() for k in ks}
        st_save(part, str(folder / name)) if fmt == "safetensors" else torch.save(part, folder / name)
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": {k: n for n, ks in shards.items()
                                                                           for k in ks}}))
    return folder


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_a_sharded_hf_folder_loads_like_one_file(tmp_path, fmt):
    cfg = _cfg(True, False)
    sd = hf_state_dict(cfg)
    folder = _write_sharded(sd, tmp_path / "EVA-CLIP", fmt)
    from_folder = evaclip.create_model(cfg, pretrained=str(folder))
    from_memory = evaclip.create_model(cfg)
    evaclip.load_checkpoint(from_memory, sd)
    for (k, a), (_, b) in zip(from_folder.state_dict().items(), from_memory.state_dict().items()):
        assert torch.equal(a, b), k
    assert not torch.equal(from_folder.visual.pos_embed, evaclip.create_model(cfg).visual.pos_embed)


def test_bad_hf_folders_give_clear_errors(tmp_path):
    cfg = _cfg(True, False)
    sd = hf_state_dict(cfg)
    folder = _write_sharded(sd, tmp_path / "partial")
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="names the shard model-00002-of-00002.safetensors, which is missing"):
        evaclip.create_model(cfg, pretrained=str(folder))
    folder = _write_sharded(sd, tmp_path / "stale-index")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["vision_model.extra.weight"] = "model-00001-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="lacks 1 tensor.*its index assigns to it.*vision_model.extra.weight"):
        evaclip.create_model(cfg, pretrained=str(folder))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="directory without a weights file.*model.safetensors.index.json"):
        evaclip.create_model(cfg, pretrained=str(tmp_path / "empty"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="shard index .* is not valid JSON"):
        evaclip.create_model(cfg, pretrained=str(tmp_path / "broken"))
    (tmp_path / "broken" / "model.safetensors.index.json").write_text('{"weight_map": []}')
    with pytest.raises(CheckpointError, match="not a valid shard index.*weight_map must map"):
        evaclip.create_model(cfg, pretrained=str(tmp_path / "broken"))
    (tmp_path / "broken" / "model.safetensors.index.json").write_text('{"weight_map": {"a": "../x.safetensors"}}')
    with pytest.raises(CheckpointError, match="outside its folder.*x.safetensors"):
        evaclip.create_model(cfg, pretrained=str(tmp_path / "broken"))


@pytest.mark.parametrize("text_config,message", [
    ({"hidden_act": "quick_gelu"}, 'text_config.hidden_act is "quick_gelu"'),
    ({"use_rope": True}, "text_config sets use_rope"),
])
def test_hf_folders_whose_config_names_other_blocks_are_refused(tmp_path, text_config, message):
    cfg = _cfg(True, False)
    folder = _write_sharded(hf_state_dict(cfg), tmp_path / "m")
    (folder / "config.json").write_text(json.dumps({"vision_config": {"hidden_act": "gelu", "use_rope": False},
                                                    "text_config": text_config}))
    with pytest.raises(CheckpointError, match=message):
        evaclip.create_model(cfg, pretrained=str(folder))
    (folder / "config.json").write_text(json.dumps({"vision_config": {"hidden_act": "gelu"},
                                                    "text_config": {"hidden_act": "gelu", "use_rope": False}}))
    assert evaclip.create_model(cfg, pretrained=str(folder)) is not None  # the port's own settings load


def test_projection_bias_and_a_lone_v_bias_are_mapped(tmp_path):
    cfg = _cfg(False, True)
    sd = hf_state_dict(cfg, vision_q_bias=True)
    for i in range(cfg.vision_cfg.layers):  # only v biases: the q bias of the pair is zero
        del sd[f"vision_model.encoder.layers.{i}.self_attn.q_proj.bias"]
    sd["visual_projection.bias"] = torch.randn(cfg.embed_dim)
    model = evaclip.create_model(cfg)
    assert evaclip.load_checkpoint(model, sd).ok
    assert torch.equal(model.visual.head.bias, sd["visual_projection.bias"])
    assert not model.visual.blocks[0].attn.q_bias.any()
    assert torch.equal(model.visual.blocks[0].attn.v_bias, sd["vision_model.encoder.layers.0.self_attn.v_proj.bias"])


def test_hf_port_files_of_the_wrong_model_or_with_stray_keys_are_refused(tmp_path):
    cfg = _cfg(True, False)
    sd = hf_state_dict(cfg)
    wider = _cfg(True, False)
    wider.vision_cfg.width = 128
    with pytest.raises(CheckpointError, match="does not match.*visual"):
        evaclip.create_model(wider, pretrained=str(_write_sharded(sd, tmp_path / "m")))
    with pytest.raises(CheckpointError, match="unexpected key 'vision_model.encoder.layers.0.self_attn.rope"):
        evaclip.load_checkpoint(evaclip.create_model(cfg),
                                {**sd, "vision_model.encoder.layers.0.self_attn.rope.weight": torch.ones(2)})
    del sd["vision_model.encoder.layers.1.self_attn.k_proj.weight"]
    with pytest.raises(CheckpointError, match="lacks vision_model.encoder.layers.1.self_attn.k_proj.weight"):
        evaclip.load_checkpoint(evaclip.create_model(cfg), sd)


def test_vision_only_hf_file_goes_into_the_visual_tower():
    cfg = _cfg(True, False)
    sd = {k: v for k, v in hf_state_dict(cfg).items() if k.startswith(("vision_model.", "visual_projection."))}
    model = evaclip.create_model(cfg)
    report = evaclip.load_checkpoint(model.visual, sd)
    assert report.ok and report.layout == "hf" and len(report.loaded) == len(model.visual.state_dict())
    assert torch.equal(model.visual.head.weight, sd["visual_projection.weight"])
    assert math.isclose(model.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)  # untouched


def test_convert_cli_turns_an_hf_folder_into_one_training_layout_file(tmp_path, capsys):
    from evaclip.cli.main import main
    cfg = _cfg(True, False)
    sd = hf_state_dict(cfg)
    # what other exports of the port carry: index buffers (transformers' older saves) and a stored temperature
    sd["vision_model.embeddings.position_ids"] = torch.arange(17).unsqueeze(0)
    sd["text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    sd["logit_scale"] = torch.tensor(4.0)
    folder = _write_sharded(sd, tmp_path / "EVA-CLIP")
    out = tmp_path / "evaclip.safetensors"
    assert main(["convert", str(folder), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "hf layout" in printed and "ignored 2" in printed and "position_ids" in printed
    direct, converted = evaclip.create_model(cfg, pretrained=str(folder)), evaclip.create_model(cfg, pretrained=str(out))
    for (k, a), (_, b) in zip(direct.state_dict().items(), converted.state_dict().items()):
        assert torch.equal(a, b), k
    assert converted.logit_scale.item() == 4.0  # a stored temperature wins over the port's fixed 100


def _hf_config(cfg) -> dict:
    """config.json as the port writes it, with the fields its modeling code reads."""
    v, t = cfg.vision_cfg, cfg.text_cfg
    return {"projection_dim": cfg.embed_dim,
            "vision_config": {"hidden_size": v.width, "num_hidden_layers": v.layers,
                              "num_attention_heads": v.width // v.head_width,
                              "intermediate_size": int(v.width * v.mlp_ratio), "image_size": v.image_size,
                              "patch_size": v.patch_size, "use_rms_norm": True, "post_layernorm": v.postnorm,
                              "q_bias": v.qkv_bias, "k_bias": False, "v_bias": v.qkv_bias, "hidden_act": "gelu",
                              "layer_norm_eps": 1e-6},
            "text_config": {"hidden_size": t.width, "num_hidden_layers": t.layers, "num_attention_heads": t.heads,
                            "intermediate_size": 4 * t.width, "vocab_size": t.vocab_size,
                            "max_position_embeddings": t.context_length, "hidden_act": "gelu",
                            "layer_norm_eps": 1e-5, "q_bias": True, "k_bias": True, "v_bias": True}}


def test_an_hf_folder_builds_its_own_model_from_config_json(tmp_path):
    cfg = _cfg(True, False)
    sd = hf_state_dict(cfg)
    folder = _write_sharded(sd, tmp_path / "EVA-CLIP-tiny")
    (folder / "config.json").write_text(json.dumps(_hf_config(cfg)))
    built = evaclip.get_model_config(str(folder))
    assert built.to_dict() == cfg.to_dict()  # the same architecture as the evaclip config it was written from
    model = evaclip.create_model(str(folder), pretrained=str(folder)).double().eval()
    sd64 = {k: v.double() for k, v in sd.items()}
    images, tokens = _inputs(cfg)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), reference_image_features(sd64, cfg, images),
                                   rtol=1e-9, atol=1e-9)
    bad = _hf_config(cfg)
    bad["vision_config"]["layer_norm_eps"] = 1e-5
    (folder / "config.json").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match="vision_config.layer_norm_eps is 1e-05"):
        evaclip.get_model_config(str(folder))
    del bad["vision_config"]["layer_norm_eps"], bad["vision_config"]["hidden_size"]
    (folder / "config.json").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match="lacks vision_config.hidden_size.*EVA-CLIP-8B"):
        evaclip.get_model_config(str(folder))
