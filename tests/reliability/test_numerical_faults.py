"""Numerical faults: a non-finite loss or gradient skips the update (parameters and optimizer state untouched),
is logged, and K in a row stop the run with the step and a hint; scattered ones do not stop it.
(Faults on one rank of two: test_two_ranks.py.)"""
from __future__ import annotations

import pytest
import torch
from rel_kit import QUIET, assert_clean_error, cli, final_weights, run

from evaclip.train import faults
from evaclip.train.config import apply_overrides
from evaclip.train.metrics import read_metrics
from evaclip.train.recipes import get_recipe
from evaclip.train.trainer import Trainer


@pytest.fixture
def inject(monkeypatch):
    def set_faults(spec: str) -> None:
        monkeypatch.setenv("EVACLIP_FAULTS", spec)
        faults.reload()
    yield set_faults
    monkeypatch.delenv("EVACLIP_FAULTS", raising=False)
    faults.reload()


def _state(trainer: Trainer) -> tuple[dict, dict]:
    params = {k: v.detach().clone() for k, v in trainer.raw_model.state_dict().items()}
    optim = {i: {k: v.clone() for k, v in s.items() if torch.is_tensor(v)}
             for i, s in enumerate(trainer.optimizer.state.values())}
    return params, optim


def test_a_skipped_step_changes_neither_weights_nor_optimizer_state(tmp_path, inject):
    inject("nan_grad@0,inf_loss@1,nan_loss@3")
    cfg = apply_overrides(get_recipe("tiny"), [f"out_dir={tmp_path}", "steps=5", "schedule.warmup_steps=1",
                                               "data.batch_size=8", *QUIET])
    trainer = Trainer(cfg)
    batches = trainer._batches()
    skipped = []
    for step in range(5):
        trainer.step = step
        images, tokens, _ = next(batches)
        before = _state(trainer)
        record = trainer.train_step(images, tokens)
        after = _state(trainer)
        same = all(torch.equal(before[0][k], after[0][k]) for k in before[0]) and before[1].keys() == after[1].keys() \
            and all(torch.equal(before[1][i][k], after[1][i][k]) for i in before[1] for k in before[1][i])
        assert same == record["skipped"], (step, record)  # skipped <=> nothing moved; a real step moves weights
        skipped.append(record["skipped"])
        assert all(torch.isfinite(v).all() for v in after[0].values())
    assert skipped == [True, True, False, True, False]


def test_scattered_faults_are_skipped_logged_and_do_not_stop_the_run(tmp_path, inject):
    # Never 3 in a row (5 and 6 are 2 in a row): the run must finish.
    inject("nan_loss@1,inf_loss@3,nan_grad@5,nan_loss@6,inf_loss@8")
    from evaclip.train.trainer import train
    summary = train(apply_overrides(get_recipe("tiny"), [
        f"out_dir={tmp_path}", "steps=10", "schedule.warmup_steps=2", "data.batch_size=8", "max_nonfinite_steps=3",
        "checkpoint_every=0", "log_every=100", *QUIET]))
    assert summary["steps"] == 10 and summary["skipped_steps"] == 5
    records = read_metrics(tmp_path / "metrics.jsonl")
    # log_every=100 logs only the last step, and every skipped step in any case.
    assert [r["step"] for r in records if r["skipped"]] == [1, 3, 5, 6, 8]
    assert records[-1]["step"] == 9 and not records[-1]["skipped"]
    assert all(torch.isfinite(v).all() for v in final_weights(tmp_path).values())


def test_k_in_a_row_stop_the_cli_with_the_step_and_a_hint(tmp_path):
    out = tmp_path / "run"
    proc = run(cli("train", "tiny", f"out_dir={out}", "steps=10", "schedule.warmup_steps=2", "data.batch_size=8",
                   "max_nonfinite_steps=3", "checkpoint_every=2", *QUIET),
               faults="nan_loss@2,inf_loss@4,nan_grad@5,nan_loss@6")
    assert_clean_error(proc, "3 steps in a row (last at step 6)", "lower optim.lr")
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records if r["skipped"]] == [2, 4, 5, 6]
    assert not (out / "final.safetensors").exists()
    # The checkpoints before the blow-up are there to go back to (the newest two, keep_checkpoints=2).
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000004", "step_00000006"]


# ---- non-finite weights: never checkpointed, never exported -------------------------------------------------
def _no_export(out) -> None:
    assert not (out / "final.safetensors").exists() and not (out / "summary.json").exists()


def test_nan_pretrained_weights_never_train_nor_export(tmp_path):
    import evaclip
    from evaclip.models.checkpoint import save_file
    weights = evaclip.create_model("evaclip-tiny").state_dict()
    weights["visual.blocks.0.attn.q_proj.weight"][0, 0] = float("nan")
    save_file(weights, tmp_path / "nan.safetensors")
    out = tmp_path / "run"
    proc = run(cli("train", "tiny", f"out_dir={out}", "steps=3", "schedule.warmup_steps=1", "data.batch_size=8",
                   "checkpoint_every=1", f"model.pretrained={tmp_path / 'nan.safetensors'}", *QUIET))
    # Refused when loading (a CheckpointError) or by the trainer before step 0; either way with its cause.
    line = assert_clean_error(proc)
    assert "lower optim.lr" not in line and ("nan.safetensors" in line or "before any update" in line), line
    _no_export(out)
    assert not (out / "checkpoints").exists()


def test_a_model_that_is_not_finite_at_start_is_blamed_on_its_weights_not_the_lr(tmp_path):
    import evaclip
    from evaclip.errors import TrainingError
    from evaclip.models.checkpoint import save_file
    save_file(evaclip.create_model("evaclip-tiny").state_dict(), tmp_path / "ok.safetensors")
    out = tmp_path / "run"
    cfg = apply_overrides(get_recipe("tiny"), [f"out_dir={out}", "steps=3", "schedule.warmup_steps=1",
                                               "data.batch_size=8", "checkpoint_every=1",
                                               f"model.pretrained={tmp_path / 'ok.safetensors'}", *QUIET])
    trainer = Trainer(cfg)
    with torch.no_grad():  # what a loader that let NaN through would leave
        trainer.raw_model.text.token_embedding.weight[3, 1] = float("inf")
    with pytest.raises(TrainingError, match=r"before step 0, before any update \(1 non-finite value, e\.g\. in "
                                            r"text\.token_embedding\.weight\).*not the learning rate.*"
                                            r"model\.pretrained="):
        trainer.fit()
    trainer.close()
    _no_export(out)
    assert not (out / "checkpoints").exists()


def test_weights_that_go_bad_in_the_last_step_are_neither_exported_nor_checkpointed(tmp_path):
    out = tmp_path / "run"
    common = ["train", "tiny", f"out_dir={out}", "steps=3", "schedule.warmup_steps=1", "data.batch_size=8",
              "checkpoint_every=1", *QUIET]
    # The update of the last step leaves a NaN weight with a finite loss: no later step would notice it.
    proc = run(cli(*common), faults="nan_weight@2")
    assert_clean_error(proc, "non-finite after the update of step 2", "nothing is checkpointed", "lower optim.lr")
    _no_export(out)
    # The newest checkpoint is the last finite state, and a resumed run finishes from it.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000001", "step_00000002"]
    proc = run(cli(*common, "resume=latest"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all(torch.isfinite(v).all() for v in final_weights(out).values())


def test_weights_that_go_bad_mid_run_stop_it_at_the_next_step(tmp_path):
    out = tmp_path / "run"
    # The NaN weight makes the loss of step 2 NaN; the run stops there, not 5 steps later.
    proc = run(cli("train", "tiny", f"out_dir={out}", "steps=8", "schedule.warmup_steps=1", "data.batch_size=8",
                   "checkpoint_every=4", "log_every=1", *QUIET), faults="nan_weight@1")
    assert_clean_error(proc, "after the update of step 1", "1 step(s) had a non-finite loss or gradient, the first "
                                                             "at step 2", "nothing is checkpointed or exported")
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [0, 1, 2]
    _no_export(out)
    assert not (out / "checkpoints").exists()
