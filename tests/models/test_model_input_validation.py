"""Hostile model inputs in-process: typed config fields, sizes checked against memory before anything
is allocated, HF config.json fields, checkpoint files that are not checkpoints, sharded folders whose index
decides, non-finite weights, and checkpoint outputs written through evaclip.outputs."""
from __future__ import annotations

import json
import math
import os
import pickle
import stat
import zipfile

import pytest
import torch
from safetensors.torch import load_file, save_file

import evaclip
from evaclip.cli.main import main
from evaclip.errors import CheckpointError, ConfigError, EvaclipError
from evaclip.models import factory
from evaclip.models.checkpoint import read_file
from evaclip.models.checkpoint import save_file as evaclip_save_file


def small_config(**vision) -> dict:
    return {"embed_dim": 16,
            "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16, **vision},
            "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}


def _with(section: str | None, key: str, value) -> dict:
    cfg = small_config()
    (cfg[section] if section else cfg)[key] = value
    return cfg


# ------------------------------------------------------------------------------------------ 1. typed fields
BAD_FIELDS = {
    "mlp_ratio_string": (_with("vision_cfg", "mlp_ratio", "4"), 'vision_cfg.mlp_ratio must be a finite number, got "4"'),
    "mlp_ratio_nan": (_with("vision_cfg", "mlp_ratio", math.nan), "vision_cfg.mlp_ratio must be a finite number"),
    "mlp_ratio_inf": (_with("text_cfg", "mlp_ratio", math.inf), "text_cfg.mlp_ratio must be a finite number"),
    "embed_dim_bool": (_with(None, "embed_dim", True), "embed_dim must be an integer, got true"),
    "logit_scale_string": (_with(None, "init_logit_scale", "x"), "init_logit_scale must be a finite number"),
    "qkv_bias_string": (_with("vision_cfg", "qkv_bias", "no"), 'vision_cfg.qkv_bias must be true or false, got "no"'),
    "rope_int": (_with("vision_cfg", "rope", 1), "vision_cfg.rope must be true or false, got 1"),
    "width_float": (_with("vision_cfg", "width", 32.0), "vision_cfg.width must be an integer, got 32.0"),
    "layers_string": (_with("text_cfg", "layers", "2"), 'text_cfg.layers must be an integer, got "2"'),
    "ls_init_list": (_with("vision_cfg", "ls_init_value", [1]), "vision_cfg.ls_init_value must be a finite number or null"),
    "hf_name_int": (_with("text_cfg", "hf_model_name", 3), "text_cfg.hf_model_name must be a string or null"),
    "hidden_width_zero": (_with("vision_cfg", "mlp_ratio", 1e-9), "MLP hidden width of 0"),
    "text_hidden_width_zero": (_with("text_cfg", "mlp_ratio", 0.01), "text_cfg.mlp_ratio (0.01) gives an MLP hidden width of 0"),
}


@pytest.mark.parametrize("case", BAD_FIELDS)
def test_wrong_field_types_are_one_line_config_errors(tmp_path, case):
    data, fragment = BAD_FIELDS[case]
    with pytest.raises(ConfigError) as info:
        evaclip.get_model_config(data)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    # the same from a file (json.dumps writes NaN/Infinity, which the file reader refuses on its own)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as info:
        evaclip.create_model(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_nan_and_infinity_in_a_json_file_are_refused_by_the_reader(tmp_path):
    for constant in ("NaN", "Infinity", "-Infinity"):
        path = tmp_path / "m.json"
        path.write_text(json.dumps(small_config()).replace('"width": 32', f'"width": {constant}', 1))
        with pytest.raises(ConfigError, match=f"not valid JSON: {constant} is not a JSON number"):
            evaclip.get_model_config(str(path))


def test_numbers_are_normalised_and_a_config_changed_in_code_is_checked_too():
    cfg = evaclip.get_model_config(_with("vision_cfg", "mlp_ratio", 2))
    assert cfg.vision_cfg.mlp_ratio == 2.0 and isinstance(cfg.vision_cfg.mlp_ratio, float)
    cfg.vision_cfg.qkv_bias = "false"  # truthy: would have built biases
    with pytest.raises(ConfigError, match="qkv_bias must be true or false"):
        evaclip.create_model(cfg)


# ------------------------------------------------------------------------------------------ 2. sizes vs memory
@pytest.mark.parametrize("section,key,value", [("vision_cfg", "width", 2**20), ("text_cfg", "vocab_size", 10**9),
                                               ("vision_cfg", "layers", 10**9)])
def test_a_model_larger_than_memory_is_refused_before_allocating(section, key, value):
    data = _with(section, key, value)
    if key == "width":
        data["vision_cfg"]["head_width"] = 64
    with pytest.raises(ConfigError, match=r"parameters: .* GiB on cpu, where only .* GiB is available"):
        evaclip.create_model(data)  # on the old code this allocated until memory ran out
    # planning it on the meta device still works: nothing is allocated there
    if key != "layers":
        assert evaclip.create_model(data, device="meta").visual.pos_embed.is_meta


def test_the_memory_check_counts_exactly_and_uses_the_free_memory(monkeypatch):
    cfg = evaclip.get_model_config(small_config())
    model = evaclip.create_model(cfg)
    assert factory.parameter_count(cfg) == sum(t.numel() for t in [*model.parameters(), *model.buffers()])
    big = evaclip.get_model_config("EVA-CLIP-18B")
    assert factory.tower_sizes(big, buffers=False) == (17_630_494_720, 694_987_520)  # the README's counts
    need = factory.parameter_count(cfg) * 4
    monkeypatch.setattr(factory, "_cpu_available", lambda: need - 1)
    with pytest.raises(ConfigError, match=f"{factory.parameter_count(cfg):,} parameters"):
        evaclip.create_model(cfg)
    monkeypatch.setattr(factory, "_cpu_available", lambda: need)
    evaclip.create_model(cfg)


def test_sizes_torch_cannot_represent_are_config_errors():
    data = _with("vision_cfg", "width", 2**40)
    data["vision_cfg"]["head_width"] = 2**40
    for device in ("cpu", "meta"):
        with pytest.raises(ConfigError, match="too large to build"):
            evaclip.create_model(data, device=device)


def test_cuda_without_cuda_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        evaclip.create_model(small_config(), device="cuda")


def test_a_gpu_build_is_checked_against_the_gpus_free_memory_in_the_target_precision(monkeypatch):
    cfg = evaclip.get_model_config(small_config())
    n = factory.parameter_count(cfg)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * n - 1, 10 * n))
    with pytest.raises(ConfigError, match=rf"{n:,} parameters: .* on cuda"):
        evaclip.create_model(cfg, device="cuda", precision="bf16")  # 2 bytes a value: 1 byte short


# ------------------------------------------------------------------------------------------ 3. HF config.json
def _hf_config() -> dict:
    return {"projection_dim": 16,
            "vision_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                              "intermediate_size": 128, "image_size": 16, "patch_size": 8, "use_rms_norm": True,
                              "post_layernorm": True, "q_bias": False, "v_bias": False},
            "text_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                            "vocab_size": 64, "max_position_embeddings": 8}}


def _hf_bad(tower: str | None, key: str, value):
    cfg = _hf_config()
    (cfg[tower] if tower else cfg)[key] = value
    return cfg


BAD_HF = {
    "heads_zero": (_hf_bad("vision_config", "num_attention_heads", 0), "num_attention_heads must be a positive integer"),
    "hidden_string": (_hf_bad("vision_config", "hidden_size", "abc"), "vision_config.hidden_size must be a positive"),
    "top_level_list": ([_hf_config()], "holds a JSON list, not an object"),
    "heads_do_not_divide": (_hf_bad("text_config", "num_attention_heads", 3), "not divisible by num_attention_heads"),
    "flag_string": (_hf_bad("vision_config", "post_layernorm", "yes"), "post_layernorm must be true or false"),
    "eps_string": (_hf_bad("text_config", "layer_norm_eps", "x"), 'layer_norm_eps is "x"'),
    "size_bool": (_hf_bad(None, "projection_dim", True), "config.projection_dim must be a positive integer"),
    "size_float": (_hf_bad("text_config", "vocab_size", 64.5), "vocab_size must be a positive integer"),
}


@pytest.mark.parametrize("case", BAD_HF)
def test_bad_hf_config_json_fields_are_one_line_errors(tmp_path, case):
    data, fragment = BAD_HF[case]
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(EvaclipError) as info:
        evaclip.create_model(str(tmp_path))
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_a_good_hf_config_json_builds_and_nan_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_hf_config()))
    model = evaclip.create_model(str(tmp_path))
    assert model.visual.blocks[0].mlp.fc1.weight.shape == (128, 32)
    (tmp_path / "config.json").write_text(json.dumps(_hf_bad(None, "projection_dim", math.nan)))
    with pytest.raises(CheckpointError, match="not valid JSON: NaN"):
        evaclip.create_model(str(tmp_path))


def test_an_intermediate_size_that_floats_round_down_is_kept_exact(tmp_path):
    cfg = _hf_bad("vision_config", "hidden_size", 1408)
    cfg["vision_config"].update(num_attention_heads=16, intermediate_size=6144)  # 6144 / 1408 * 1408 < 6144
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    built = evaclip.get_model_config(str(tmp_path))
    assert built.vision_cfg.mlp_hidden == 6144


# ------------------------------------------------------------------------------------------ 4. not checkpoints
class _Plant:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _bad_files(root) -> dict:
    """name -> (file, fragment of the one-line error)"""
    files = {}
    (root / "text.pt").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12345\n")
    files["text"] = (root / "text.pt", "is a text file (it starts with 'version https://git-lfs")
    (root / "short.pt").write_bytes(b"\x80\x02}q\x00")
    files["short_pickle"] = (root / "short.pt", "is truncated")
    (root / "random.pt").write_bytes(bytes(range(7, 250)) * 3)
    files["random_bytes"] = (root / "random.pt", "format is unknown (first bytes 07 08 09")
    torch.save({"w": torch.ones(1000)}, root / "good.pt")
    data = (root / "good.pt").read_bytes()
    (root / "cut.pt").write_bytes(data[: len(data) // 2])
    files["truncated_zip"] = (root / "cut.pt", "truncated PyTorch archive")
    torch.save({"w": torch.ones(1000)}, root / "legacy.pt", _use_new_zipfile_serialization=False)
    (root / "cut_legacy.pt").write_bytes((root / "legacy.pt").read_bytes()[:-100])
    files["truncated_legacy"] = (root / "cut_legacy.pt", "is truncated")
    with open(root / "evil.pt", "wb") as f:
        pickle.dump({"x": _Plant(root / "PWNED")}, f)
    files["runs_code"] = (root / "evil.pt", "refusing to load")
    return files


def test_files_that_are_not_checkpoints_say_what_they_are(tmp_path):
    for name, (path, fragment) in _bad_files(tmp_path).items():
        with pytest.raises(CheckpointError) as info:
            read_file(path)
        message = str(info.value)
        assert fragment in message and str(path) in message and "\n" not in message, (name, message)
        assert "could run code" not in message or name == "runs_code", (name, message)
    assert not (tmp_path / "PWNED").exists()
    os.mkfifo(tmp_path / "fifo.pt")  # opening it to read would wait forever for a writer
    with pytest.raises(CheckpointError, match="fifo.pt is not a regular file"):
        read_file(tmp_path / "fifo.pt")


# ------------------------------------------------------------------------------------------ 5. shard index decides
def test_a_tensor_in_two_shards_is_taken_from_the_shard_the_index_names(tmp_path):
    cfg = small_config()
    sd = {k: v.clone() for k, v in evaclip.create_model(cfg).state_dict().items()}
    key = "visual.pos_embed"
    others = sorted(k for k in sd if k != key)
    save_file({k: sd[k] for k in others[::2]} | {key: sd[key]}, tmp_path / "a.safetensors")
    stale = {k: sd[k] for k in others[1::2]} | {key: torch.full_like(sd[key], 7.0), "visual.stray": torch.ones(2)}
    save_file(stale, tmp_path / "b.safetensors")  # read last: a stale copy of pos_embed, and a tensor nobody maps
    weight_map = {k: "a.safetensors" for k in others[::2]} | {k: "b.safetensors" for k in others[1::2]}
    weight_map[key] = "a.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    merged = read_file(tmp_path)
    assert set(merged) == set(sd) and torch.equal(merged[key], sd[key])
    model = evaclip.create_model(cfg, pretrained=str(tmp_path))
    assert torch.equal(model.visual.pos_embed, sd[key])


# ------------------------------------------------------------------------------------------ 6. non-finite weights
def test_non_finite_weights_are_refused_unless_allowed(tmp_path):
    cfg = small_config()
    sd = evaclip.create_model(cfg).state_dict()
    sd = {k: v.clone() for k, v in sd.items()}
    sd["visual.blocks.0.mlp.fc1.weight"][0, :3] = torch.tensor([math.nan, math.inf, -math.inf])
    sd["text.ln_final.weight"][1] = math.nan
    save_file(sd, tmp_path / "nan.safetensors")
    for kwargs in ({"pretrained": str(tmp_path / "nan.safetensors")},
                   {"pretrained_image": str(tmp_path / "nan.safetensors")}):
        with pytest.raises(CheckpointError) as info:
            evaclip.create_model(cfg, **kwargs)
        # safetensors files list tensors by name: text.* comes first
        assert "4 NaN/inf values in 2 tensor(s), first text.ln_final.weight (1 of 32)" in str(info.value)
    model = evaclip.create_model(cfg, pretrained=str(tmp_path / "nan.safetensors"), allow_nonfinite=True)
    assert model.visual.blocks[0].mlp.fc1.weight.isnan().sum() == 1
    with pytest.raises(CheckpointError, match="non-finite"):
        evaclip.load_checkpoint(evaclip.create_model(cfg), sd)  # a state dict in memory goes the same way
    bf16 = {k: v.to(torch.bfloat16) for k, v in sd.items()}
    with pytest.raises(CheckpointError, match="non-finite"):
        evaclip.load_checkpoint(evaclip.create_model(cfg), bf16)


# ------------------------------------------------------------------------------------------ 7. outputs
def test_save_file_writes_a_0644_regular_file_and_refuses_special_targets(tmp_path):
    old = os.umask(0o022)
    try:
        evaclip_save_file({"w": torch.ones(2)}, tmp_path / "w.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o644
    evaclip_save_file({"w": torch.zeros(2)}, tmp_path / "w.safetensors")  # a regular file is replaced
    assert torch.equal(load_file(str(tmp_path / "w.safetensors"))["w"], torch.zeros(2))
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep")
    (tmp_path / "link.safetensors").symlink_to(target)
    os.mkfifo(tmp_path / "fifo.safetensors")
    for name in ("link.safetensors", "fifo.safetensors"):
        with pytest.raises(EvaclipError, match="does not replace it"):
            evaclip_save_file({"w": torch.ones(2)}, tmp_path / name)
    assert target.read_text() == "keep" and (tmp_path / "link.safetensors").is_symlink()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_convert_checks_its_output_before_reading_and_refuses_nan(tmp_path, capsys):
    cfg = small_config()
    sd = {k: v.clone() for k, v in evaclip.create_model(cfg).state_dict().items()}
    save_file(sd, tmp_path / "in.safetensors")
    (tmp_path / "afile").write_text("x")
    # the output problem is reported although the input is missing: it was checked first
    assert main(["convert", str(tmp_path / "missing.pt"), str(tmp_path / "afile" / "o.safetensors")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    out = tmp_path / "o.safetensors"
    assert main(["convert", str(tmp_path / "in.safetensors"), str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_umask()
    assert main(["convert", str(tmp_path / "in.safetensors"), str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    sd["visual.cls_token"][0, 0, 0] = math.nan
    save_file(sd, tmp_path / "nan.safetensors")
    before = out.read_bytes()
    assert main(["convert", str(tmp_path / "nan.safetensors"), str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "visual.cls_token" in err and "--allow-nonfinite" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == before
    assert main(["convert", str(tmp_path / "nan.safetensors"), str(out), "--overwrite", "--allow-nonfinite"]) == 0
    assert load_file(str(out))["visual.cls_token"].isnan().sum() == 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_zip_that_is_not_a_pytorch_archive_is_called_damaged(tmp_path):
    with zipfile.ZipFile(tmp_path / "x.pt", "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(CheckpointError, match="damaged PyTorch archive") as info:
        read_file(tmp_path / "x.pt")
    assert "\n" not in str(info.value)


def test_a_mim_student_larger_than_memory_is_refused_before_allocating():
    from evaclip.models.config import VisionConfig
    from evaclip.models.mim import MIMStudent
    huge = VisionConfig(image_size=16, patch_size=8, width=2**20, layers=1, head_width=64)
    with pytest.raises(ConfigError, match="GiB on cpu, where only"):
        MIMStudent(huge, teacher_dim=16)
    with torch.device("meta"):
        assert MIMStudent(huge, teacher_dim=16).lm_head.weight.is_meta  # planning it costs nothing
    with pytest.raises(ConfigError, match="teacher_dim must be a positive integer"):
        MIMStudent(VisionConfig(image_size=16, patch_size=8, width=32, layers=1, head_width=16), teacher_dim=True)
