"""Hostile checkpoints and configs through the real CLI: refused with one clear line before any work, no code
from a pickle ever runs, and the run's out_dir stays empty (nothing half-written)."""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from rel_kit import QUIET, as_dict, as_proc, assert_clean_error, cli, listing, once, run, run_many
from safetensors.torch import save_file

import evaclip
from evaclip.models.checkpoint import export_state_dict


SHORT = ["steps=2", "schedule.warmup_steps=1", "checkpoint_every=0", "data.batch_size=8", *QUIET]


class _Plant:
    """Unpickling this calls os.mkdir(marker): harmless, but proof that the file ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _tiny_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return export_state_dict(evaclip.create_model("evaclip-tiny").state_dict(), "training")


def _hostile_files(root: Path) -> dict[str, tuple[Path, tuple[str, ...]]]:
    """name -> (file, fragments the one-line error must contain)."""
    sd = _tiny_state_dict()
    files: dict[str, tuple[Path, tuple[str, ...]]] = {}
    with open(root / "evil.pt", "wb") as f:
        pickle.dump({"visual.cls_token": torch.zeros(1, 1, 64), "x": _Plant(root / "PWNED")}, f)
    files["pickle_runs_code"] = (root / "evil.pt", ("refusing", "evil.pt"))
    torch.save({"state_dict": {"visual.cls_token": torch.zeros(1, 1, 64)}, "hook": _Plant(root / "PWNED2")},
               root / "evil_zip.pt")
    files["torch_save_runs_code"] = (root / "evil_zip.pt", ("refusing", "evil_zip.pt"))
    shapes = dict(sd, **{"visual.blocks.0.attn.proj.weight": torch.zeros(64, 32)})
    save_file(shapes, root / "shapes.safetensors")
    files["wrong_shape"] = (root / "shapes.safetensors", ("visual.blocks.0.attn.proj.weight", "(64, 32)"))
    save_file({k: v[:-1] if v.ndim else v for k, v in sd.items()}, root / "all_shapes.safetensors")
    files["every_shape_wrong"] = (root / "all_shapes.safetensors", ("all_shapes.safetensors",))
    data = (root / "shapes.safetensors").read_bytes()
    (root / "cut.safetensors").write_bytes(data[: len(data) // 3])
    files["truncated"] = (root / "cut.safetensors", ("truncated",))
    (root / "text.safetensors").write_bytes(b"<html>404 Not Found</html>" * 10)
    files["not_a_checkpoint"] = (root / "text.safetensors", ("text.safetensors",))
    return files


_CASES = ["pickle_runs_code", "torch_save_runs_code", "wrong_shape", "every_shape_wrong", "truncated",
          "not_a_checkpoint"]


@pytest.fixture(scope="module")
def refused_runs(tmp_path_factory):
    """`evaclip train tiny model.pretrained=FILE` for every hostile file, all at once."""
    def make(root: Path) -> dict:
        files = _hostile_files(root)
        cmds = [cli("train", "tiny", f"model.pretrained={files[c][0]}", f"out_dir={root / 'out' / c}", *SHORT)
                for c in _CASES]
        procs = run_many(cmds, cwd=root)
        return {c: {"proc": as_dict(p), "fragments": files[c][1]} for c, p in zip(_CASES, procs)}
    root, got = once(tmp_path_factory, "refused_runs", make)
    return root, {c: (as_proc(v["proc"]), v["fragments"]) for c, v in got.items()}


@pytest.mark.parametrize("case", _CASES)
def test_hostile_pretrained_checkpoint_is_refused_before_training(refused_runs, case):
    root, runs = refused_runs
    proc, fragments = runs[case]
    assert_clean_error(proc, *fragments)
    assert listing(root / "out" / case) == []  # nothing written (the folder may exist, empty)
    assert not (root / "PWNED").exists() and not (root / "PWNED2").exists()


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool])
def test_safetensors_with_non_float_weights_are_refused(tmp_path, dtype):
    sd = {k: (v * 100).to(dtype) for k, v in _tiny_state_dict().items()}
    save_file(sd, tmp_path / "ints.safetensors")
    proc = run(cli("train", "tiny", f"model.pretrained={tmp_path / 'ints.safetensors'}", f"out_dir={tmp_path / 'o'}",
                   *SHORT))
    assert_clean_error(proc, "dtype", "ints.safetensors")
    assert listing(tmp_path / "o") == []


def _config(**vision) -> dict:
    return {"embed_dim": 64,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8, **vision},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


BAD_CONFIGS = {
    "unknown_key": (_config(widht=64), ("widht",)),
    "width_not_divisible_by_heads": (_config(width=60), ("60", "head_width")),
    "patch_larger_than_image": (_config(patch_size=64), ("patch_size", "image_size")),
    "negative_layers": (_config(layers=-2), ("layers",)),
}


def test_bad_model_configs_fail_in_one_line_before_any_work(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_config()))
    names = list(BAD_CONFIGS)
    for name in names:
        (tmp_path / f"{name}.json").write_text(json.dumps(BAD_CONFIGS[name][0]))
    (tmp_path / "not_json.json").write_text("{'embed_dim': 64,")
    cmds = [cli("train", "tiny", f"model.name={tmp_path / f'{n}.json'}", f"out_dir={tmp_path / 'out' / n}", *SHORT)
            for n in names + ["not_json"]]
    cmds.append(cli("train", "tiny", f"model.name={good}", f"out_dir={tmp_path / 'out' / 'good'}", *SHORT))
    procs = run_many(cmds)
    for name, proc in zip(names, procs):
        assert_clean_error(proc, f"{name}.json" if name == "unknown_key" else "", *BAD_CONFIGS[name][1])
        assert listing(tmp_path / "out" / name) == [], name
    assert_clean_error(procs[len(names)], "not_json.json")
    # The same config without the fault trains: the errors above come from the faults, not from the file format.
    assert procs[-1].returncode == 0, procs[-1].stderr[-2000:]
    assert (tmp_path / "out" / "good" / "final.safetensors").is_file()


# ---------------------------------------------------------------------------------------------------------
# resume checkpoints: their DCP metadata is a pickle
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    def make(root: Path) -> dict:
        return as_dict(run(cli("train", "tiny", f"out_dir={root / 'run'}", "steps=2", "checkpoint_every=1",
                               "schedule.warmup_steps=1", "data.batch_size=8", *QUIET)))
    root, proc = once(tmp_path_factory, "saved_checkpoint", make)
    assert proc["returncode"] == 0, proc["stderr"][-2000:]
    return root / "run" / "checkpoints" / "step_00000002"


@pytest.mark.parametrize("how", ["runs_code", "garbled"])
def test_resume_from_a_planted_checkpoint_runs_no_code(saved_checkpoint, tmp_path, how):
    ckpt = tmp_path / "step_00000002"
    shutil.copytree(saved_checkpoint, ckpt)
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(_Plant(marker)) if how == "runs_code" else (saved_checkpoint / ".metadata").read_bytes()[:40]
    (ckpt / ".metadata").write_bytes(payload)
    proc = run(cli("train", "tiny", f"resume={ckpt}", f"out_dir={tmp_path / 'o'}", "steps=4", "checkpoint_every=1",
                   "schedule.warmup_steps=1", "data.batch_size=8", *QUIET))
    assert not marker.exists(), "unpickling the checkpoint metadata ran code"
    assert_clean_error(proc, "step_00000002", ".metadata")
