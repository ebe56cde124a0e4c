"""What the trainer reports and how overrides are read: MFU against the ceiling of the run's own dtype, fp16
loss scaling (skipped overflows, the scale checkpointed), `optim.lr` meaning every lr, exact integer overrides,
and the evaluation hook's datasets found before step 0."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from evaclip.errors import ConfigError, DatasetError, EvaclipError, TrainingError
from evaclip.train import trainer as trainer_module
from evaclip.train.config import apply_overrides, compute_dtype
from evaclip.train.metrics import read_metrics
from evaclip.train.optim import build_optimizer
from evaclip.train.recipes import get_recipe
from evaclip.train.trainer import Trainer, train

QUIET = ["progress=false", "tensorboard=false"]


def _tiny(out, *overrides):
    return apply_overrides(get_recipe("tiny"), [f"out_dir={out}", "schedule.warmup_steps=1", "data.batch_size=8",
                                                "checkpoint_every=0", "log_every=1", *QUIET, *overrides])


# ---- MFU ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp32", "amp_bf16"])
def test_mfu_divides_by_the_ceiling_of_the_dtype_the_run_computes_in(tmp_path, monkeypatch, precision):
    ceilings = {torch.float32: 1e12, torch.bfloat16: 4e12, torch.float16: 8e12}
    asked = []

    def fake_ceiling(device, dtype=torch.float32, *args, **kwargs):
        asked.append(dtype)
        return ceilings[dtype]

    monkeypatch.setattr(trainer_module, "measure_matmul_ceiling", fake_ceiling)
    cfg = _tiny(tmp_path, "steps=2", f"precision={precision}")
    trainer = Trainer(cfg)
    flops = trainer.task.flops_per_sample()
    trainer.fit()
    trainer.close()
    assert asked == [compute_dtype(precision)]
    for r in read_metrics(tmp_path / "metrics.jsonl"):
        assert r["mfu"] == pytest.approx(flops * r["samples_per_s"] / ceilings[compute_dtype(precision)])


# ---- fp16 loss scaling --------------------------------------------------------------------------------------
def test_amp_fp16_scales_the_loss_and_skips_overflowing_steps_without_counting_them(tmp_path):
    # The first steps overflow fp16 at the initial scale 65536 (the fresh tiny model's gradient norm is ~2e4:
    # 12 halvings); a run of more such steps than max_nonfinite_steps must not stop: they are the scaler's
    # back-off, not a fault.
    summary = train(_tiny(tmp_path, "steps=14", "precision=amp_fp16", "max_nonfinite_steps=1"))
    records = read_metrics(tmp_path / "metrics.jsonl")
    scales = [r["loss_scale"] for r in records]
    assert scales[0] == 65536.0
    for before, after, r in zip(scales, scales[1:], records):
        # An overflow skips the update and halves the scale; a good step keeps it (growth needs 2000 steps).
        assert r["overflow"] == r["skipped"]
        assert after == (before / 2 if r["overflow"] else before)
    assert any(r["overflow"] for r in records) and not all(r["skipped"] for r in records)
    assert summary["nonfinite_steps"] == 0 and summary["skipped_steps"] == sum(r["skipped"] for r in records)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)


def test_amp_fp16_scale_is_checkpointed_and_resumed(tmp_path):
    ref = tmp_path / "ref"
    train(_tiny(ref, "steps=14", "precision=amp_fp16", "checkpoint_every=7"))
    run = tmp_path / "run"
    train(_tiny(run, "steps=7", "precision=amp_fp16", "checkpoint_every=7"))
    meta = json.loads((run / "checkpoints" / "step_00000007" / "meta.json").read_text())
    first = read_metrics(run / "metrics.jsonl")
    assert meta["grad_scaler"]["scale"] == first[-1]["loss_scale"] / (2 if first[-1]["overflow"] else 1)
    train(_tiny(run, "steps=14", "precision=amp_fp16", "checkpoint_every=7", "resume=latest"))
    want = [(r["loss_scale"], r["loss"]) for r in read_metrics(ref / "metrics.jsonl")]
    got = [(r["loss_scale"], r["loss"]) for r in read_metrics(run / "metrics.jsonl")]
    # The resumed run starts from the saved scale, not the initial one, and updates where the reference did.
    assert got == want and want[7][0] != 65536.0 and not all(r["skipped"] for r in read_metrics(ref / "metrics.jsonl"))


def test_a_nonfinite_loss_under_fp16_is_a_fault_and_keeps_the_scale(tmp_path, monkeypatch):
    from evaclip.train import faults
    monkeypatch.setenv("EVACLIP_FAULTS", "nan_loss@3")
    faults.reload()
    try:
        train(_tiny(tmp_path, "steps=5", "precision=amp_fp16"))
    finally:
        monkeypatch.delenv("EVACLIP_FAULTS")
        faults.reload()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert records[3]["skipped"] and not records[3]["overflow"]
    assert records[4]["loss_scale"] == records[3]["loss_scale"]
    assert json.loads((tmp_path / "summary.json").read_text())["nonfinite_steps"] == 1


# ---- optim.lr -----------------------------------------------------------------------------------------------
def test_optim_lr_scales_every_group_of_a_recipe_with_tower_lrs():
    base = get_recipe("eva-clip-18b").optim
    assert (base.lr, base.visual_lr, base.text_lr) == (4e-4, 4e-4, 4e-5)
    cfg = apply_overrides(get_recipe("eva-clip-18b"), ["optim.lr=1e-4"])
    assert (cfg.optim.lr, cfg.optim.visual_lr, cfg.optim.text_lr) == pytest.approx((1e-4, 1e-4, 1e-5))
    # A tower lr given on the same command line is taken as given, whatever the order.
    for order in (["optim.text_lr=3e-6", "optim.lr=1e-4"], ["optim.lr=1e-4", "optim.text_lr=3e-6"]):
        cfg = apply_overrides(get_recipe("eva-clip-18b"), order)
        assert (cfg.optim.visual_lr, cfg.optim.text_lr) == pytest.approx((1e-4, 3e-6))
    # Alone, a tower lr changes only its tower.
    cfg = apply_overrides(get_recipe("eva-clip-18b"), ["optim.visual_lr=1e-4"])
    assert (cfg.optim.lr, cfg.optim.visual_lr, cfg.optim.text_lr) == (4e-4, 1e-4, 4e-5)


def test_optim_lr_moves_every_parameter_group_of_the_model():
    import evaclip
    model = evaclip.create_model("evaclip-tiny")
    before = {g["name"]: g["lr"] for g in build_optimizer(model, get_recipe("tiny").optim).param_groups}
    after = {g["name"]: g["lr"] for g in build_optimizer(
        model, apply_overrides(get_recipe("tiny"), ["optim.lr=5e-4"]).optim).param_groups}
    assert {"visual", "text", "other"} <= {name.split(".")[0] for name in before}
    assert after == pytest.approx({k: v * 5e-4 / 2e-3 for k, v in before.items()})


def test_optim_lr_from_a_zero_recipe_lr_names_the_tower_fields():
    cfg = get_recipe("tiny")
    cfg.optim.lr = 0.0
    with pytest.raises(ConfigError, match="optim.visual_lr and optim.text_lr"):
        apply_overrides(cfg, ["optim.lr=1e-3"])


def test_the_help_and_the_config_say_what_each_lr_does(capsys):
    from evaclip.cli.main import main
    from evaclip.train.optim import OptimConfig
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "optim.lr=X scales every lr" in " ".join(capsys.readouterr().out.split())
    for name in ("visual_lr", "text_lr", "``lr``"):
        assert name in OptimConfig.__doc__


# ---- integer and other overrides ----------------------------------------------------------------------------
def test_integer_overrides_are_exact():
    cfg = apply_overrides(get_recipe("tiny"), ["seed=12345678901234567", "steps=1e3", "data.seed=-7"])
    assert cfg.seed == 12345678901234567 and cfg.steps == 1000 and cfg.data.seed == -7
    assert apply_overrides(get_recipe("tiny"), [f"seed={2**63 - 1}"]).seed == 2**63 - 1


@pytest.mark.parametrize("override, fragment", [
    ("steps=1e30", "out of range"), ("seed=1e300", "out of range"), (f"seed={2**63}", "out of range"),
    ("seed=1e999999999", "out of range"), ("steps=1.5", "expects an integer"), ("steps=nan", "expects an integer"),
    ("steps=inf", "expects an integer"), ("out_dir=", "out_dir is empty"), ("out_dir=  ", "out_dir is empty"),
    ("data.weights=inf", "finite"), ("data.weights=nan", "finite"), ("data.weights=abc", "number"),
    ("optim.lr=1e39", "beyond any usable"), ("optim.lr=nan", "finite"),
])
def test_bad_overrides_are_one_line_config_errors(override, fragment):
    with pytest.raises(ConfigError, match=fragment) as e:
        apply_overrides(get_recipe("tiny"), [override])
    assert "\n" not in str(e.value)


def test_a_source_weight_that_is_not_finite_is_told_so():
    cfg = get_recipe("tiny")
    cfg.data.sources[0].weight = float("inf")
    with pytest.raises(ConfigError, match="must be finite"):
        cfg.validate()


# ---- the evaluation hook ------------------------------------------------------------------------------------
def _image_folder(root, classes=("cat", "dog"), per_class=2):
    for i, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for j in range(per_class):
            Image.new("RGB", (32, 32), (200 * i, 40 * j, 90)).save(root / c / f"{j}.png")
    return root


def test_eval_datasets_are_checked_before_step_0(tmp_path):
    good = _image_folder(tmp_path / "pets")
    out = tmp_path / "run"
    with pytest.raises(DatasetError, match=r"eval\.zeroshot: .*petz") as e:
        Trainer(_tiny(out, "steps=20", "eval.every=10", f'eval.zeroshot=["{good}", "{tmp_path / "petz"}"]'))
    assert "\n" not in str(e.value)
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()
    # A folder that exists but holds no classification dataset is refused as early.
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="eval.zeroshot"):
        Trainer(_tiny(out, "steps=20", "eval.every=10", f'eval.zeroshot=["{tmp_path / "empty"}"]'))


def test_the_eval_hook_evaluates_the_datasets_found_at_start(tmp_path):
    good = _image_folder(tmp_path / "pets")
    train(_tiny(tmp_path / "run", "steps=2", "eval.every=2", f'eval.zeroshot=["{good}"]'))
    last = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert 0.0 <= last["zeroshot/pets/acc1"] <= 1.0


def test_eval_zeroshot_needs_the_clip_task():
    with pytest.raises(ConfigError, match="task=clip"):
        apply_overrides(get_recipe("tiny"), ["task=mim", "mim.teacher=t", "mim.teacher_model=evaclip-tiny",
                                             'eval.zeroshot=["x"]'])


def test_an_output_that_is_not_a_regular_file_is_refused_before_step_0(tmp_path):
    (tmp_path / "metrics.jsonl").mkdir(parents=True)
    with pytest.raises(EvaclipError, match="metrics.jsonl"):
        Trainer(_tiny(tmp_path, "steps=2"))


def test_a_metrics_write_failure_is_a_training_error(tmp_path, monkeypatch):
    from evaclip.train import faults
    monkeypatch.setenv("EVACLIP_FAULTS", "metrics_write@1")
    faults.reload()
    try:
        with pytest.raises(TrainingError, match=r"could not append step 1 to .*metrics.jsonl .*resume=latest"):
            train(_tiny(tmp_path, "steps=3"))
    finally:
        monkeypatch.delenv("EVACLIP_FAULTS")
        faults.reload()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0]
