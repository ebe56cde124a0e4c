"""Runs in phases (evaclip/train/phases.py): what a phase may change, the paper's 18B schedule and its plan, and a
real phased run (images at patch dropout 0.5 -> no patch dropout -> clips mixed with images) that resumes inside
its second and third phases, and at a phase boundary, exactly where the uninterrupted run goes."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from evaclip.errors import ConfigError
from evaclip.train.config import PhaseSection
from evaclip.train.phases import phase_at, phase_config
from evaclip.train.recipes import get_recipe
from evaclip.train.recipes.tiny import sample_shards
from evaclip.train.trainer import train


def test_a_phase_changes_only_data_and_patch_dropout_and_fills_the_run():
    cfg = get_recipe("tiny")
    cfg.steps, cfg.schedule.warmup_steps = 5, 1
    cfg.phases = [PhaseSection("a", 3, ["model.patch_dropout=0.5"]), PhaseSection("b", 2, ["data.weights=2"])]
    cfg.validate()
    assert [phase_at(cfg, s).index for s in range(7)] == [0, 0, 0, 1, 1, 1, 1]
    assert phase_config(cfg, 0).model.patch_dropout == 0.5 and phase_config(cfg, 1).model.patch_dropout is None
    assert phase_config(cfg, 1).data.sources[0].weight == 2 and cfg.data.sources[0].weight == 1  # a copy
    cfg.phases[1].overrides = ["optim.lr=1"]
    with pytest.raises(ConfigError, match="cannot change between phases"):
        cfg.validate()
    cfg.phases[1].overrides = []
    cfg.steps = 9
    with pytest.raises(ConfigError, match="add up to 5 steps"):
        cfg.validate()


def test_the_18b_recipe_is_the_papers_three_phases_and_the_plan_costs_each():
    from evaclip.plan.planner import PlanRequest, make_plan
    cfg = get_recipe("eva-clip-18b")
    batch = cfg.data.batch_size * 360
    samples = [p.steps * batch for p in cfg.phases]
    assert [round(s / 1e6) for s in samples] == [5400, 620, 24]  # 5.4B; 0.6B + 20M LAION-COCO; 24M video
    dropouts = [phase_config(cfg, i).model.patch_dropout for i in range(3)]
    assert dropouts == [0.5, 0.0, 0.5]
    assert len(phase_config(cfg, 1).data.sources) == 3 and len(phase_config(cfg, 2).data.sources) == 3
    plan = make_plan(PlanRequest(model="eva-clip-18b", gpus=360, gpu_memory_gib=40, peak_tflops=312, mfu=0.4))
    one, two, three = plan.phases
    assert two.training_flops_per_sample > 1.8 * one.training_flops_per_sample  # no patch dropout costs ~2x
    assert three.training_flops_per_sample > 7 * one.training_flops_per_sample  # 8 frames a clip
    assert plan.days == pytest.approx(sum(p.days for p in plan.phases))
    assert get_recipe("eva-clip-18b-plus").phases == []


@pytest.fixture(scope="module")
def phased(tmp_path_factory):
    pytest.importorskip("av")
    from video_kit import mixed_shard
    root = tmp_path_factory.mktemp("phased")
    mixed = root / "mixed.tar"
    mixed_shard(mixed, sample_shards("train"), clips=12, images=12, corrupt=1)

    def config(out, resume=None):
        cfg = get_recipe("tiny")
        cfg.out_dir, cfg.resume, cfg.steps, cfg.log_every, cfg.checkpoint_every = str(out), resume, 6, 1, 1
        cfg.keep_checkpoints, cfg.progress, cfg.tensorboard = 10, False, False
        cfg.data.global_batch_size, cfg.schedule.warmup_steps = 8, 1
        cfg.phases = [PhaseSection("images", 2, ["model.patch_dropout=0.5"]),
                      PhaseSection("no patch dropout", 2, ["model.patch_dropout=0.0"]),
                      PhaseSection("video", 2, [f"data.sources={mixed}", "data.video_frames=4",
                                                "model.patch_dropout=0.5"])]
        return cfg
    summary = train(config(root / "ref"))
    return root, config, summary


def _losses(out):
    return [(r["step"], r["phase"], r["loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


def test_a_phased_run_switches_data_and_patch_dropout(phased):
    root, _, summary = phased
    records = _losses(root / "ref")
    assert [(s, p) for s, p, _ in records] == [(0, 0), (1, 0), (2, 1), (3, 1), (4, 2), (5, 2)]
    assert summary["video_samples"] > 0  # only the third phase has clips
    assert summary["skipped_samples"].get("corrupt_video", 0) >= 1
    metrics = [json.loads(line) for line in (root / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert all(m["video_samples"] == 0 for m in metrics[:4]) and sum(m["video_samples"] for m in metrics[4:]) > 0


@pytest.mark.parametrize("step", [3, 4, 5])  # inside phase 2, at the start of phase 3, inside phase 3
def test_resume_inside_a_phase_or_at_its_start_ends_where_the_uninterrupted_run_does(phased, tmp_path, step):
    root, config, _ = phased
    out = tmp_path / "resumed"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(root / "ref" / "checkpoints" / f"step_{step:08d}", out / "checkpoints" / f"step_{step:08d}")
    train(config(out, resume="latest"))
    a, b = load_file(str(root / "ref" / "final.safetensors")), load_file(str(out / "final.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(out)[-(6 - step):] == _losses(root / "ref")[step:]


def test_phases_are_set_from_the_command_line_by_index():
    from evaclip.train.config import apply_overrides
    cfg = get_recipe("eva-clip-18b")
    apply_overrides(cfg, ['phases.2.overrides=["data.sources=/v/{0..9}.tar", "data.weights=1"]', "phases.1.steps=10"])
    assert phase_config(cfg, 2).data.sources[0].urls == "/v/{0..9}.tar"
    assert cfg.steps == cfg.phases[0].steps + 10 + cfg.phases[2].steps  # the run is as long as its phases
    with pytest.raises(ConfigError, match="items 0..2"):
        apply_overrides(cfg, ["phases.3.steps=1"])
