"""Checkpoint round-trips through every official layout and file wrapper, MIM vision files, position
embedding interpolation, tower initialisation, and the errors for bad files."""
from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file as st_save

import evaclip
from evaclip.errors import CheckpointError, ConfigError, EvaclipError
from evaclip.models.checkpoint import export_state_dict


VOCAB = 1000  # a small vocabulary keeps the files small; the text tower is otherwise the named config's


def tiny_cfg(name: str = "evaclip-tiny", **vision):
    cfg = evaclip.get_model_config(name)
    cfg.text_cfg.vocab_size = VOCAB
    for k, v in vision.items():
        setattr(cfg.vision_cfg, k, v)
    return cfg


def make_model(name: str = "evaclip-tiny", seed: int = 0, **vision):
    cfg = tiny_cfg(name, **vision)
    torch.manual_seed(seed)
    model = evaclip.create_model(cfg).eval()
    with torch.no_grad():  # a value the default init would never give, so we can see that it loaded
        model.logit_scale.fill_(1.2345)
        model.visual.head.weight.mul_(1000)  # the 0.001-scaled head would hide differences
    return model


def inputs(model, batch: int = 2):
    g = torch.Generator().manual_seed(3)
    size = model.visual.image_size
    images = torch.randn(batch, 3, size, size, generator=g)
    tokens = torch.randint(1, VOCAB - 2, (batch, 12), generator=g)
    tokens[:, 0], tokens[:, -1] = VOCAB - 2, VOCAB - 1  # start / end; the end token has the highest id
    return images, tokens


def write(sd: dict, path, how: str):
    """Write a state dict the way the official tools do."""
    sd = {k: v.detach().clone().contiguous() for k, v in sd.items()}
    if how == "safetensors":
        st_save(sd, str(path))
    elif how == "bare":
        torch.save(sd, path)
    elif how == "deepspeed":
        torch.save({"module": {"module." + k: v for k, v in sd.items()}, "epoch": 3, "global_steps": 10}, path)
    elif how == "state_dict":
        torch.save({"state_dict": sd, "epoch": 1}, path)
    else:
        raise ValueError(how)
    return path


def with_official_extras(sd: dict, layout: str, head_dim: int, table: int) -> dict:
    """Add what official files carry: a 0-d logit_scale and the RoPE frequency buffers."""
    sd = dict(sd)
    prefix = "" if layout == "vision" else "visual."
    sd[prefix + "rope.freqs_cos"] = torch.randn(table, head_dim)
    sd[prefix + "blocks.0.attn.rope.freqs_cos"] = torch.randn(table, head_dim)
    if "logit_scale" in sd:
        assert sd["logit_scale"].ndim == 0  # export writes it 0-d, as the official code does
    return sd


@pytest.fixture(scope="module")
def source():
    return make_model("evaclip-tiny")


@pytest.mark.parametrize("how", ["safetensors", "bare", "deepspeed", "state_dict"])
@pytest.mark.parametrize("layout", ["training", "flat", "vision"])
def test_round_trip_of_every_layout(source, tmp_path, layout, how):
    sd = export_state_dict(source.state_dict(), layout)
    if layout == "flat":
        assert "transformer.resblocks.0.attn.in_proj_weight" in sd and "text_projection" in sd
        assert not any(k.startswith("text.") for k in sd)
    if layout == "vision":
        assert "blocks.0.attn.q_proj.weight" in sd and not any(k.startswith(("visual.", "text.")) for k in sd)
        assert "logit_scale" not in sd
    hd = source.cfg.vision_cfg.head_width
    sd = with_official_extras(sd, layout, hd, source.cfg.vision_cfg.num_patches)
    path = write(sd, tmp_path / f"ckpt.{'safetensors' if how == 'safetensors' else 'pt'}", how)

    images, tokens = inputs(source)
    with torch.no_grad():
        want_img, want_txt = source.encode_image(images), source.encode_text(tokens)
    if layout == "vision":
        fresh = make_model("evaclip-tiny", seed=1)
        report = evaclip.load_checkpoint(fresh.visual, path)
        assert report.ok and report.layout == "vision"
        assert {"rope.freqs_cos", "blocks.0.attn.rope.freqs_cos"} <= {k.replace("visual.", "") for k in report.ignored}
        with torch.no_grad():
            assert torch.equal(fresh.encode_image(images), want_img)
        return
    loaded = evaclip.create_model(tiny_cfg(), pretrained=str(path)).eval()
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), want_img)
        assert torch.equal(loaded.encode_text(tokens), want_txt)
    assert loaded.logit_scale.shape == (1,) and loaded.logit_scale.item() == pytest.approx(1.2345)
    # and the rope tables are the model's own, not the random ones in the file
    assert torch.equal(loaded.visual.rope.freqs_cos, source.visual.rope.freqs_cos)


def test_loading_a_whole_clip_file_into_each_tower(source, tmp_path):
    path = write(export_state_dict(source.state_dict(), "flat"), tmp_path / "flat.pt", "deepspeed")
    fresh = make_model(seed=5)
    images, tokens = inputs(source)
    evaclip.load_checkpoint(fresh.visual, path)
    evaclip.load_checkpoint(fresh.text, path)
    with torch.no_grad():
        assert torch.equal(fresh.encode_image(images), source.encode_image(images))
        assert torch.equal(fresh.encode_text(tokens), source.encode_text(tokens))


def test_mim_vision_file_loads_into_visual(source, tmp_path):
    vis = export_state_dict(source.state_dict(), "vision")
    W = source.cfg.vision_cfg.width
    mim = {k: v for k, v in vis.items() if not k.startswith("head.")}  # MIM files have no CLIP head
    mim |= {"mask_token": torch.randn(1, 1, W), "lm_head.weight": torch.randn(24, W), "lm_head.bias": torch.randn(24)}
    path = write(mim, tmp_path / "mim.pt", "bare")
    images, _ = inputs(source)

    fresh = make_model(seed=9)
    head_before = fresh.visual.head.weight.clone()
    report = evaclip.load_checkpoint(fresh.visual, path, allow_missing=("head.",))
    assert report.ok and {"visual.mask_token", "visual.lm_head.weight"} <= set(report.ignored)
    with torch.no_grad():
        assert torch.equal(fresh.visual.forward_features(images), source.visual.forward_features(images))
    assert torch.equal(fresh.visual.head.weight, head_before)  # untouched

    # strict without allow_missing: the missing head is reported by name, nothing is loaded
    fresh2 = make_model(seed=9)
    before = fresh2.visual.pos_embed.clone()
    with pytest.raises(CheckpointError, match="head.weight"):
        evaclip.load_checkpoint(fresh2.visual, path)
    assert torch.equal(fresh2.visual.pos_embed, before)

    # through the factory: pretrained_image initialises the trunk from the MIM file
    model = evaclip.create_model(tiny_cfg(), pretrained_image=str(path)).eval()
    with torch.no_grad():
        assert torch.equal(model.visual.forward_features(images), source.visual.forward_features(images))


@pytest.mark.parametrize("name", ["evaclip-tiny-18b", "evaclip-tiny"])
def test_position_embedding_is_interpolated_for_another_image_size(tmp_path, name):
    small = make_model(name)  # 32 px, grid 4
    path = write(export_state_dict(small.state_dict(), "training"), tmp_path / "small.safetensors", "safetensors")
    big_cfg = tiny_cfg(name, image_size=48)  # grid 6
    big = evaclip.create_model(big_cfg, pretrained=str(path))
    W = small.cfg.vision_cfg.width
    old = small.visual.pos_embed.detach()
    grid = old[:, 1:].reshape(1, 4, 4, W).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    expected = torch.cat((old[:, :1], resized.permute(0, 2, 3, 1).reshape(1, 36, W)), dim=1)
    assert big.visual.pos_embed.shape == (1, 37, W)
    torch.testing.assert_close(big.visual.pos_embed.detach(), expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(big.visual.pos_embed[:, 0], small.visual.pos_embed[:, 0])  # cls entry kept
    assert torch.equal(big.visual.blocks[0].attn.proj.weight, small.visual.blocks[0].attn.proj.weight)
    with torch.no_grad():
        out = big.encode_image(torch.randn(1, 3, 48, 48))
    assert out.shape == (1, small.cfg.embed_dim) and torch.isfinite(out).all()


def test_tower_initialisation_with_skip_keys(source, tmp_path):
    path = write(export_state_dict(source.state_dict(), "flat"), tmp_path / "clip.pt", "state_dict")
    cfg = tiny_cfg()
    cfg.embed_dim = 32  # a new embedding size: both projections must start fresh
    with pytest.raises(CheckpointError, match="text_projection|head"):
        evaclip.create_model(cfg, pretrained_image=str(path), pretrained_text=str(path))
    torch.manual_seed(11)
    model = evaclip.create_model(cfg, pretrained_image=str(path), pretrained_text=str(path),
                                 skip_keys=("head.", "text_projection")).eval()
    images, tokens = inputs(source)
    with torch.no_grad():
        assert torch.equal(model.visual.forward_features(images), source.visual.forward_features(images))
    for name, p in source.text.named_parameters():
        if name != "text_projection":
            assert torch.equal(model.text.state_dict()[name], p), name
    assert model.text.text_projection.shape == (64, 32) and model.visual.head.weight.shape == (32, 64)
    # logit_scale is never taken from a tower checkpoint: it restarts at ln(1/0.07)
    assert model.logit_scale.item() == pytest.approx(2.6592600369644165)


def test_sharded_init_gets_exactly_the_tensors_create_model_loads(source, tmp_path):
    """``pretrained_state_dict`` (a meta model, for FSDP) and ``create_model`` take one fitting path: the same
    tensors for a whole-model file and for tower initialisation with a skip list."""
    from evaclip.models.clip import CLIP
    from evaclip.models.factory import pretrained_state_dict
    clip_file = write(export_state_dict(source.state_dict(), "flat"), tmp_path / "clip.pt", "deepspeed")
    vis = {k: v for k, v in export_state_dict(source.state_dict(), "vision").items() if not k.startswith("head.")}
    mim_file = write(vis | {"mask_token": torch.randn(1, 1, 64)}, tmp_path / "mim.pt", "bare")
    for kwargs in ({"pretrained": str(clip_file)},
                   {"pretrained_image": str(mim_file), "pretrained_text": str(clip_file),
                    "skip_keys": ("head.", "text_projection")}):
        real = evaclip.create_model(tiny_cfg(), **kwargs).state_dict()
        with torch.device("meta"):
            meta = CLIP(tiny_cfg())
        fitted = pretrained_state_dict(meta, **kwargs)
        skipped = {"visual.head.weight", "visual.head.bias", "text.text_projection", "logit_scale"}
        expected = set(real) - (skipped if "skip_keys" in kwargs else set())
        assert set(fitted) == expected
        assert all(torch.equal(fitted[k], real[k]) for k in fitted)


# ---------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------
def _raises(exc, *fragments):
    """pytest.raises that also checks the message names the problem (every fragment, case-insensitive)."""
    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(exc)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *a):
            suppressed = self.ctx.__exit__(*a)
            msg = str(self.info.value).lower()
            assert "\n" not in msg.strip(), f"not one line: {msg!r}"
            for f in fragments:
                assert f.lower() in msg, f"{f!r} not in {msg!r}"
            return suppressed
    return _Check()


def test_unknown_model_name():
    with _raises(ConfigError, "EVA-CLIP-19B", "evaclip models"):
        evaclip.create_model("EVA-CLIP-19B")


def test_config_with_unknown_keys(tmp_path):
    cfg = json.loads(json.dumps({"embed_dim": 8, "vision_cfg": {"image_size": 32, "patch_size": 8, "widht": 64},
                                 "text_cfg": {}}))
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(cfg))
    with _raises(ConfigError, "widht", "vision_cfg"):
        evaclip.create_model(str(path))


def test_impossible_configs(tmp_path):
    base = {"embed_dim": 8, "text_cfg": {"width": 32, "heads": 2, "layers": 1}}
    cases = [({"width": 60, "head_width": 16}, ("60", "head_width")),
             ({"image_size": 16, "patch_size": 32}, ("patch_size", "image_size"))]
    for vision, fragments in cases:
        with _raises(ConfigError, *fragments):
            evaclip.create_model({**base, "vision_cfg": vision})
    with _raises(ConfigError, "not found"):
        evaclip.create_model(str(tmp_path / "nope.json"))


def test_missing_and_empty_files(tmp_path):
    model = make_model()
    with _raises(CheckpointError, "not found", "nope.pt"):
        evaclip.load_checkpoint(model, tmp_path / "nope.pt")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with _raises(CheckpointError, "empty"):
        evaclip.create_model(tiny_cfg(), pretrained=str(tmp_path / "empty.safetensors"))


def test_truncated_files(source, tmp_path):
    sd = export_state_dict(source.state_dict(), "training")
    for how, name in (("safetensors", "t.safetensors"), ("bare", "t.pt"), ("deepspeed", "t.bin")):
        path = write(sd, tmp_path / name, how)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with _raises(CheckpointError, "truncated", name):
            evaclip.create_model(tiny_cfg(), pretrained=str(path))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > marker",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch, writer):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    payload = {"visual.cls_token": torch.zeros(1, 1, 64), "x": _Evil()}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with _raises(CheckpointError, "refusing", "evil.pt"):
        evaclip.create_model(tiny_cfg(), pretrained=str(path))
    assert not (tmp_path / "marker").exists()


def test_wrong_shapes_load_nothing_and_name_the_key(source, tmp_path):
    sd = export_state_dict(source.state_dict(), "training")
    sd["visual.blocks.1.attn.proj.weight"] = torch.randn(64, 32)
    path = write(sd, tmp_path / "bad.safetensors", "safetensors")
    model = make_model(seed=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with _raises(CheckpointError, "visual.blocks.1.attn.proj.weight", "(64, 32)"):
        evaclip.load_checkpoint(model, path)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # strict: nothing was copied


def test_missing_and_unexpected_keys_are_listed(source, tmp_path):
    sd = export_state_dict(source.state_dict(), "training")
    del sd["visual.norm.weight"]
    sd["visual.extra_thing"] = torch.zeros(3)
    path = write(sd, tmp_path / "odd.pt", "bare")
    with _raises(CheckpointError, "missing", "visual.norm.weight", "unexpected", "visual.extra_thing"):
        evaclip.create_model(tiny_cfg(), pretrained=str(path))
    report = evaclip.load_checkpoint(make_model(), path, strict=False)
    assert report.missing == ["visual.norm.weight"] and report.unexpected == ["visual.extra_thing"]


def test_file_that_fits_no_key(tmp_path, source):
    path = write({"foo.bar": torch.zeros(2), "baz": torch.ones(1)}, tmp_path / "other.safetensors", "safetensors")
    with pytest.raises(CheckpointError) as info:
        evaclip.create_model(tiny_cfg(), pretrained=str(path))
    assert "foo.bar" in str(info.value) or "layout" in str(info.value)
    # a vision-only file offered to the text tower fits nothing, even non-strict
    vis = write(export_state_dict(source.state_dict(), "vision"), tmp_path / "vis.pt", "bare")
    with _raises(CheckpointError, "no tensor that fits"):
        evaclip.load_checkpoint(make_model().text, vis, strict=False)


def test_errors_are_evaclip_errors():
    assert issubclass(CheckpointError, EvaclipError) and issubclass(ConfigError, EvaclipError)


# ---------------------------------------------------------------------------------------------------------
# more loader cases
# ---------------------------------------------------------------------------------------------------------
def test_legacy_pickle_format_model_wrapper_and_half_precision(source, tmp_path):
    sd = {k: v.half() for k, v in export_state_dict(source.state_dict(), "training").items()}
    path = tmp_path / "legacy.bin"
    torch.save({"model": sd, "optimizer": {"lr": 1e-3}}, path, _use_new_zipfile_serialization=False)
    model = evaclip.create_model(tiny_cfg(), pretrained=str(path))
    assert model.visual.pos_embed.dtype == torch.float32
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k].float().reshape(v.shape)), k
    bf16 = evaclip.create_model(tiny_cfg(), pretrained=str(path), precision="bf16")
    assert bf16.visual.pos_embed.dtype == torch.bfloat16


def test_in_memory_state_dict_and_non_strict_partial_load(source):
    sd = export_state_dict(source.state_dict(), "training")
    sd["visual.head.weight"] = torch.zeros(3, 3)
    model = make_model(seed=21)
    head = model.visual.head.weight.clone()
    report = evaclip.load_checkpoint(model, sd, strict=False)
    assert [k for k, _, _ in report.mismatched] == ["visual.head.weight"] and not report.ok
    assert torch.equal(model.visual.head.weight, head)  # the mis-shaped tensor is not copied
    assert torch.equal(model.visual.pos_embed, source.visual.pos_embed)  # everything else is


def test_text_logit_scale_in_flat_files(source, tmp_path):
    sd = export_state_dict(source.state_dict(), "flat")
    sd["text.logit_scale"] = sd.pop("logit_scale")
    sd = {("text." + k if not k.startswith(("visual.", "text.")) else k): v for k, v in sd.items()}
    path = write(sd, tmp_path / "t.pt", "bare")
    model = evaclip.create_model(tiny_cfg(), pretrained=str(path))
    assert model.logit_scale.item() == pytest.approx(1.2345)


def test_vision_file_of_another_grid_and_patch_size_into_visual(tmp_path):
    small = make_model("evaclip-tiny-18b")  # 32 px, patch 8, grid 4
    path = write(export_state_dict(small.state_dict(), "vision"), tmp_path / "v.safetensors", "safetensors")
    target = evaclip.create_model(tiny_cfg("evaclip-tiny-18b", image_size=64, patch_size=16))  # grid 4, patch 16
    report = evaclip.load_checkpoint(target.visual, path)
    assert report.ok and any("patch_embed.proj.weight" in r for r in report.resized)
    kernel = F.interpolate(small.visual.patch_embed.proj.weight.detach(), size=(16, 16), mode="bicubic",
                           align_corners=False)
    torch.testing.assert_close(target.visual.patch_embed.proj.weight.detach(), kernel, rtol=1e-6, atol=1e-6)
    assert torch.equal(target.visual.pos_embed, small.visual.pos_embed)  # same grid: untouched
