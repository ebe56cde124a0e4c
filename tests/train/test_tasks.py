"""The task interface: both tasks build on the meta device for sharded init, one run-config -> model-config
translation (tasks and planner), a trainer that leaves the run config as given, and the loop's cadence."""
import os
import sys

import pytest
import torch
from proc_kit import run_bounded
from safetensors.torch import load_file, save_file

import evaclip
from evaclip.models.mim import MIMStudent
from evaclip.plan.planner import PlanRequest, _resolve
from evaclip.train.config import apply_overrides
from evaclip.train.loop import Cadence
from evaclip.train.recipes import get_recipe
from evaclip.train.tasks import ClipTask, Task, make_task
from evaclip.train.trainer import Trainer

QUIET = ["progress=false", "tensorboard=false"]


def _mim_files(tmp_path):
    """A tiny teacher and a student file whose weights no fresh initialisation could produce."""
    teacher = tmp_path / "teacher.safetensors"
    save_file(evaclip.create_model("evaclip-tiny").state_dict(), teacher)
    cfg = evaclip.get_model_config("evaclip-tiny")
    torch.manual_seed(5)
    student = MIMStudent(cfg.vision_cfg, teacher_dim=cfg.embed_dim)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    student.save(tmp_path / "student.safetensors")
    return teacher, tmp_path / "student.safetensors"


def _mim_overrides(tmp_path):
    teacher, student = _mim_files(tmp_path)
    return ["task=mim", f"mim.teacher={teacher}", "mim.teacher_model=evaclip-tiny",
            f"model.pretrained_image={student}"]


def test_the_mim_task_builds_on_meta_and_hands_over_its_pretrained_student(tmp_path):
    task = make_task(apply_overrides(get_recipe("tiny"), _mim_overrides(tmp_path)))
    assert isinstance(task, Task)
    model = task.build_meta(torch.device("cpu"))
    assert all(p.is_meta for p in model.parameters())
    weights = task.pretrained_state_dict(model)
    ref = load_file(str(tmp_path / "student.safetensors"))
    assert set(weights) == set(model.state_dict()) == set(ref)
    # What the sharded trainer does with it, on one process: materialise, initialise, receive the weights.
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.init_weights()
    model.load_state_dict(weights)
    for k, v in ref.items():
        assert torch.equal(model.state_dict()[k], v), k
    # the teacher went where the run computes, beside the meta student
    assert all(p.device.type == "cpu" for p in task.teacher.parameters())


def test_a_mim_run_without_pretrained_student_gets_no_weights_from_rank_0(tmp_path):
    overrides = [o for o in _mim_overrides(tmp_path) if not o.startswith("model.pretrained_image")]
    task = make_task(apply_overrides(get_recipe("tiny"), overrides))
    assert task.pretrained_state_dict(task.build_meta(torch.device("cpu"))) == {}


def test_sharded_mim_init_under_two_ranks_loads_the_student_exactly(tmp_path):
    """FSDP under torchrun: the student is built on meta, sharded, materialised, and receives the pretrained
    MIM file from rank 0. With a zero learning rate the exported student equals that file."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "evaclip.cli.main", "train", "tiny", f"out_dir={out}", "steps=2", "checkpoint_every=0",
           "data.batch_size=8", "schedule.warmup_steps=1", "strategy=fsdp", "optim.lr=0", "optim.visual_lr=0",
           *QUIET, *_mim_overrides(tmp_path)]
    proc = run_bounded(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = load_file(str(out / "final.safetensors"))
    ref = load_file(str(tmp_path / "student.safetensors"))
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert torch.equal(got[k], v), k


@pytest.mark.parametrize("recipe", ["demo-student", "eva-clip-8b-plus"])
def test_the_planner_sizes_the_model_the_recipe_trains(recipe):
    """One translation from run config to model config: the planner's model of a recipe is the task's, with
    the run's patch dropout, temperature and input size."""
    _, planned, _, _ = _resolve(PlanRequest(model=recipe, gpus=1, gpu_memory_gib=80))
    assert planned.to_dict() == ClipTask(get_recipe(recipe)).model_cfg.to_dict()


def test_building_a_trainer_leaves_the_run_config_as_given(tmp_path):
    cfg = apply_overrides(get_recipe("tiny"), [f"out_dir={tmp_path / 'run'}", "steps=2", "schedule.warmup_steps=1",
                                               *QUIET, *_mim_overrides(tmp_path)])
    before = cfg.to_dict()
    trainer = Trainer(cfg)
    try:
        assert cfg.to_dict() == before
    finally:
        trainer.close()


def test_cadence_logs_skipped_and_last_steps_and_checkpoints_the_last_step_once():
    c = Cadence(steps=10, log_every=4, eval_every=3, checkpoint_every=5)
    assert [s for s in range(1, 11) if c.log(s, skipped=False)] == [4, 8, 10]
    assert c.log(1, skipped=True)
    assert [s for s in range(1, 11) if c.evaluate(s)] == [3, 6, 9, 10]
    # step 10's checkpoint is the final one, written once after the loop
    assert [s for s in range(1, 11) if c.checkpoint(s)] == [5] and c.final_checkpoint
    off = Cadence(steps=10, log_every=1, eval_every=0, checkpoint_every=0)
    assert not any(off.evaluate(s) or off.checkpoint(s) for s in range(1, 11)) and not off.final_checkpoint
