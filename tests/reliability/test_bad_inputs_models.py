"""Every bad model input we know of through the real CLI (`evaclip models` / `embed` / `convert` / `train`):
exit code 2, one line that says what was wrong, no traceback, nothing written."""
from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path

import pytest
import torch
from rel_kit import QUIET, as_dict, as_proc, assert_clean_error, cli, listing, once, run_many
from safetensors.torch import save_file

import evaclip


def _config(section: str | None = None, key: str | None = None, value=None) -> dict:
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
    if key is not None:
        (cfg[section] if section else cfg)[key] = value
    return cfg


def _hf_config() -> dict:
    return {"projection_dim": 16,
            "vision_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                              "intermediate_size": 128, "image_size": 16, "patch_size": 8},
            "text_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                            "vocab_size": 64, "max_position_embeddings": 8}}


class _Plant:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _cases(root: Path) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    """name -> (evaclip arguments, fragments of the one-line error). Every case writes (if anything) under
    root/out/NAME, which must stay empty."""
    cases: dict[str, tuple[list[str], tuple[str, ...]]] = {}

    def out(name: str) -> Path:
        (root / "out" / name).mkdir(parents=True)
        return root / "out" / name

    def model_json(name: str, data, text: str | None = None) -> Path:
        path = root / f"{name}.json"
        path.write_text(text if text is not None else json.dumps(data))
        return path

    # 1. model JSON fields
    for name, (section, key, value, fragments) in {
        "mlp_ratio_string": ("vision_cfg", "mlp_ratio", "4", ("vision_cfg.mlp_ratio", "finite number", '"4"')),
        "embed_dim_bool": (None, "embed_dim", True, ("embed_dim must be an integer", "true")),
        "logit_scale_string": (None, "init_logit_scale", "x", ("init_logit_scale", '"x"')),
        "qkv_bias_string": ("vision_cfg", "qkv_bias", "no", ("vision_cfg.qkv_bias must be true or false", '"no"')),
        "mlp_ratio_tiny": ("vision_cfg", "mlp_ratio", 1e-9, ("mlp_ratio", "hidden width of 0")),
    }.items():
        path = model_json(name, _config(section, key, value))
        cases[name] = (["models", str(path), "--no-flops"], (f"{name}.json", *fragments))
    for constant in ("NaN", "Infinity"):
        text = json.dumps(_config()).replace('"mlp_ratio"', '"x"').replace('"width": 32', f'"width": {constant}', 1)
        path = model_json(f"literal_{constant}", None, text)
        cases[f"literal_{constant}"] = (["models", str(path), "--no-flops"], ("not valid JSON", constant))
    # 2. sizes beyond memory: refused before anything is allocated (training builds on the CPU)
    texts = root / "texts.txt"
    texts.write_text("a cat\na dog\n")
    for name, (section, key, value) in {"width_2_20": ("vision_cfg", "width", 2**20),  # head_width 16 divides it
                                        "vocab_1e9": ("text_cfg", "vocab_size", 10**9)}.items():
        data = _config(section, key, value)
        path = model_json(name, data)
        cases[name] = (["train", "tiny", f"model.name={path}", f"out_dir={out(name)}", "steps=2",
                        "schedule.warmup_steps=1", *QUIET], ("parameters", "GiB", "available"))
    huge = _config("vision_cfg", "width", 2**40)
    huge["vision_cfg"]["head_width"] = 2**40
    cases["width_2_40"] = (["models", str(model_json("width_2_40", huge)), "--no-flops"], ("too large to build",))
    # 3. HF config.json
    for name, data, fragments in [
        ("hf_heads_zero", {**_hf_config(), "vision_config": {**_hf_config()["vision_config"], "num_attention_heads": 0}},
         ("vision_config.num_attention_heads must be a positive integer", "0")),
        ("hf_hidden_string", {**_hf_config(), "text_config": {**_hf_config()["text_config"], "hidden_size": "abc"}},
         ("text_config.hidden_size must be a positive integer", '"abc"')),
        ("hf_top_level_list", [_hf_config()], ("config.json holds a JSON list, not an object",)),
    ]:
        folder = root / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(data))
        cases[name] = (["models", str(folder), "--no-flops"], fragments)
    # 4. checkpoint files that are not checkpoints, through convert
    (root / "text.pt").write_text("<html><body>404 Not Found</body></html>\n")
    (root / "short.pt").write_bytes(b"\x80\x02}q\x00")
    (root / "random.pt").write_bytes(bytes((i * 7 + 3) % 256 for i in range(4096)))
    with open(root / "evil.pt", "wb") as f:
        pickle.dump({"x": _Plant(root / "PWNED")}, f)
    for name, fragments in {"text": ("text.pt", "is a text file", "<html>"), "short": ("short.pt", "truncated"),
                            "random": ("random.pt", "format is unknown"),
                            "evil": ("evil.pt", "refusing", "posix.mkdir")}.items():
        cases[f"pt_{name}"] = (["convert", str(root / f"{name}.pt"), str(out(f"pt_{name}") / "o.safetensors")],
                               fragments)
    # 6. non-finite weights: convert, embed and training's model.pretrained refuse them
    torch.manual_seed(0)
    sd = {k: v.clone() for k, v in evaclip.create_model("evaclip-tiny").state_dict().items()}
    sd["visual.blocks.1.attn.proj.weight"][3, :5] = math.nan
    save_file(sd, root / "nan.safetensors")
    nan_fragments = ("nan.safetensors", "non-finite", "5 NaN/inf values", "visual.blocks.1.attn.proj.weight")
    cases["nan_convert"] = (["convert", str(root / "nan.safetensors"), str(out("nan_convert") / "o.safetensors")],
                            (*nan_fragments, "--allow-nonfinite"))
    cases["nan_embed"] = (["embed", "--model", "evaclip-tiny", "--pretrained", str(root / "nan.safetensors"),
                           "--texts", str(texts), "--out", str(out("nan_embed") / "e.npy")], nan_fragments)
    cases["nan_train"] = (["train", "tiny", f"model.pretrained={root / 'nan.safetensors'}",
                           f"out_dir={out('nan_train')}", "steps=2", "schedule.warmup_steps=1", "checkpoint_every=0", *QUIET], nan_fragments)
    # 7. convert outputs: checked before the input is read, special files never replaced
    target = root / "keep.txt"
    target.write_text("keep")
    (out("out_symlink") / "o.safetensors").symlink_to(target)
    cases["out_symlink"] = (["convert", str(root / "nan.safetensors"), str(root / "out" / "out_symlink" / "o.safetensors"),
                             "--overwrite"], ("symbolic link", "does not replace it"))
    (out("out_under_file") / "afile").write_text("")
    cases["out_under_file"] = (["convert", str(root / "missing.pt"),
                                str(root / "out" / "out_under_file" / "afile" / "o.safetensors")], ("is a file",))
    return cases


@pytest.fixture(scope="module")
def refused(tmp_path_factory):
    def make(root: Path) -> dict:
        cases = _cases(root)
        before = {name: listing(root / "out" / name) for name in cases}
        procs = run_many([cli(*args) for args, _ in cases.values()], cwd=root)
        return {name: {"proc": as_dict(p), "fragments": cases[name][1], "before": before[name]}
                for name, p in zip(cases, procs)}
    root, got = once(tmp_path_factory, "bad_inputs_models", make)
    return root, got


CASES = ["mlp_ratio_string", "embed_dim_bool", "logit_scale_string", "qkv_bias_string", "mlp_ratio_tiny",
         "literal_NaN", "literal_Infinity", "width_2_20", "vocab_1e9", "width_2_40", "hf_heads_zero",
         "hf_hidden_string", "hf_top_level_list", "pt_text", "pt_short", "pt_random", "pt_evil", "nan_convert",
         "nan_embed", "nan_train", "out_symlink", "out_under_file"]


@pytest.mark.parametrize("case", CASES)
def test_bad_model_input_exits_2_with_one_line_and_writes_nothing(refused, case):
    root, got = refused
    assert set(got) == set(CASES)
    entry = got[case]
    assert_clean_error(as_proc(entry["proc"]), *entry["fragments"])
    assert listing(root / "out" / case) == entry["before"], "something was written"
    assert not (root / "PWNED").exists()
    assert (root / "keep.txt").read_text() == "keep"
