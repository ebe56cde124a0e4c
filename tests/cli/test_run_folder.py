"""A finished run's folder is accepted wherever a model is, and its two config files cannot be confused."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import evaclip
from evaclip.cli.main import main
from evaclip.errors import CheckpointError
from evaclip.train.config import apply_overrides
from evaclip.train.recipes import get_recipe


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    code = main(["train", "tiny", f"out_dir={out}", "steps=2", "data.batch_size=8", "schedule.warmup_steps=1",
                 "progress=false", "tensorboard=false", "data.num_workers=0"])
    assert code == 0
    return out


def test_run_writes_run_config_and_model_config_under_distinct_names(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert {"run_config.json", "model_config.json", "final.safetensors"} <= names
    assert "config.json" not in names  # the name of a Hugging Face folder's config: never written by a run
    run_cfg = json.loads((run_dir / "run_config.json").read_text())
    assert run_cfg["steps"] == 2 and run_cfg["model"]["name"] == "evaclip-tiny"
    model_cfg = json.loads((run_dir / "model_config.json").read_text())
    assert "vision_cfg" in model_cfg and "steps" not in model_cfg


def test_run_folder_as_model_and_as_pretrained(run_dir):
    cfg = evaclip.get_model_config(run_dir)
    assert cfg.to_dict() == evaclip.get_model_config(run_dir / "model_config.json").to_dict()
    model = evaclip.create_model(run_dir, pretrained=run_dir)
    exported = load_file(run_dir / "final.safetensors")
    state = model.state_dict()
    assert exported.keys() <= state.keys()
    for k, v in exported.items():
        assert torch.equal(state[k], v), k


def test_embed_cli_takes_a_run_folder_for_model_and_weights(run_dir, tmp_path):
    texts = tmp_path / "t.txt"
    texts.write_text("a red apple\na smiling face\n")
    by_folder, by_files = tmp_path / "a.npy", tmp_path / "b.npy"
    assert main(["embed", "--model", str(run_dir), "--pretrained", str(run_dir), "--texts", str(texts),
                 "--out", str(by_folder)]) == 0
    assert main(["embed", "--model", str(run_dir / "model_config.json"), "--pretrained",
                 str(run_dir / "final.safetensors"), "--texts", str(texts), "--out", str(by_files)]) == 0
    np.testing.assert_array_equal(np.load(by_folder), np.load(by_files))


def test_unfinished_run_folder_says_to_resume(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(CheckpointError, match="resume="):
        evaclip.create_model("evaclip-tiny", pretrained=tmp_path)


def test_data_weights_is_an_ordinary_field_whatever_the_override_order():
    two = "data.sources=/x/a.tar::/x/b.tar"
    for order in ([two, "data.weights=1.6,0.4"], ["data.weights=1.6::0.4", two]):
        cfg = apply_overrides(get_recipe("tiny"), order)
        assert [s.weight for s in cfg.data.sources] == [1.6, 0.4]
        assert cfg.data.weights == [1.6, 0.4]


def test_demo_recipes_chain_through_their_default_out_dirs():
    teacher, mim, student = get_recipe("demo-teacher"), get_recipe("demo-mim"), get_recipe("demo-student")
    assert mim.mim.teacher == f"{teacher.out_dir}/final.safetensors"
    assert student.model.pretrained_image == f"{mim.out_dir}/final.safetensors"
    assert student.model.pretrained_text == f"{teacher.out_dir}/final.safetensors"
    assert len({teacher.out_dir, mim.out_dir, student.out_dir, get_recipe("demo-control").out_dir}) == 4
