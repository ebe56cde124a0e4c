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
