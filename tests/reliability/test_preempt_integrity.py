"""Preemption, damaged checkpoints and out_dir ownership, each through the real `evaclip train` command.

Signals are real: the process (or, under torchrun, the launcher, which forwards it to every rank) receives
SIGTERM at a chosen point of a step (``EVACLIP_FAULTS``), so the tests are exact and do not depend on timing.
"""
from __future__ import annotations

import json
import re
import shutil
import signal
from pathlib import Path

import pytest
from rel_kit import (QUIET, assert_bit_identical, assert_clean_error, cli, error_lines, final_weights, once, run,
                     torchrun)

from evaclip.errors import Preempted
from evaclip.train.run_state import RunLock

STEPS = 6
COMMON = [f"steps={STEPS}", "data.batch_size=8", "schedule.warmup_steps=2", "log_every=1", *QUIET]


def _steps_logged(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _assert_preempted(proc, out: Path, step: int) -> None:
    assert proc.returncode == Preempted.exit_code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (out / "checkpoints" / f"step_{step:08d}" / "meta.json").is_file()
    assert not (out / "final.safetensors").exists()  # stopped, not finished


# ---------------------------------------------------------------------------------------------- preemption
def test_sigterm_mid_step_saves_at_the_step_boundary_and_resume_is_bit_identical(killed_run, tmp_path):
    root, _ = killed_run
    ref, out = root / "ref", tmp_path / "run"  # checkpoint_every does not change the weights
    stopped = run(cli("train", "tiny", *COMMON, f"out_dir={out}"), faults="sigterm@2")
    _assert_preempted(stopped, out, 3)  # the signal came during step 2 (0-based): that step finished first
    lines = error_lines(stopped.stderr)
    assert lines[-1].startswith("evaclip train: stopped by SIGTERM after step 3 of 6") and "resume=latest" in lines[-1]
    resumed = run(cli("train", "tiny", *COMMON, f"out_dir={out}", "resume=latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_bit_identical(final_weights(ref), final_weights(out))
    assert _steps_logged(out) == list(range(STEPS))  # each step once, though steps 3.. ran after the resume
    assert not (out / ".lock").exists()


TWO_RANKS = ["train", "tiny", *COMMON, "strategy=fsdp"]


@pytest.fixture(scope="module")
def two_rank_reference(tmp_path_factory) -> Path:
    def make(root: Path) -> dict:
        reference = run(torchrun(*TWO_RANKS, f"out_dir={root / 'ref'}"))
        assert reference.returncode == 0, reference.stderr[-3000:]
        return {}
    return once(tmp_path_factory, "preempt-two-ranks", make)[0] / "ref"


@pytest.mark.parametrize("fault", ["sigterm@2:1", "sigterm_launcher@2:0"])
def test_two_ranks_stop_together_and_resume_bit_identical(two_rank_reference, tmp_path, fault):
    """``sigterm@2:1``: only rank 1 is signalled; the step's collective carries the request, so both ranks stop
    after the same step. ``sigterm_launcher``: torchrun gets SIGTERM and forwards it to both ranks."""
    ref, out, args = two_rank_reference, tmp_path / "run", TWO_RANKS
    stopped = run(torchrun(*args, f"out_dir={out}"), faults=fault)
    assert stopped.returncode != 0
    # The launcher forwards its signal a moment later, so the ranks may be a step further by then: read the step
    # from the ranks' own messages, which must agree.
    said = re.findall(r"stopped by (?:SIGTERM|a signal to another rank) after step (\d+) of 6", stopped.stderr)
    assert len(said) == 2 and said[0] == said[1], stopped.stderr[-3000:]
    step = int(said[0])
    assert 3 <= step < STEPS
    ckpt = out / "checkpoints" / f"step_{step:08d}"
    assert {"rank_00000.json", "rank_00001.json", "meta.json"} <= {p.name for p in ckpt.iterdir()}
    resumed = run(torchrun(*args, f"out_dir={out}", "resume=latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_bit_identical(final_weights(ref), final_weights(out))
    assert _steps_logged(out) == list(range(STEPS))


def test_preempt_signals_are_configurable_and_checked(tmp_path):
    bad = run(cli("train", "tiny", *COMMON, f"out_dir={tmp_path / 'a'}", "preempt_signals=SIGKILL"))
    assert_clean_error(bad, "preempt_signals", "SIGKILL", "SIGUSR1")


# ---------------------------------------------------------------------------------------------- integrity
@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """A run with checkpoints at steps 2 and 4, killed (SIGKILL) during step 5, and an uninterrupted reference
    (started with resume=auto in an empty out_dir: what a requeueing job script passes the first time)."""
    args = ["train", "tiny", *COMMON, "checkpoint_every=2", "keep_checkpoints=3"]

    def make(root: Path) -> dict:
        ref = run(cli(*args, f"out_dir={root / 'ref'}", "resume=auto"))
        killed = run(cli(*args, f"out_dir={root / 'run'}"), faults="crash@5")
        assert ref.returncode == 0 and killed.returncode == -signal.SIGKILL, ref.stderr[-3000:]
        return {}

    root, _ = once(tmp_path_factory, "preempt-integrity", make)  # shared by the xdist workers; read-only
    return root, args


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _largest(folder: Path) -> Path:
    return max((p for p in folder.iterdir() if p.is_file()), key=lambda p: p.stat().st_size)


def _flip(path: Path, offset_fraction: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * offset_fraction)
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "flipped_byte": lambda ckpt: _flip(_largest(ckpt)),
    "truncated_shard": lambda ckpt: _largest(ckpt).write_bytes(_largest(ckpt).read_bytes()[:1000]),
    "malformed_meta": lambda ckpt: (ckpt / "meta.json").write_text("{\"step\": 4, "),
    "missing_rank_file": lambda ckpt: (ckpt / "rank_00000.json").unlink(),
    "flipped_metadata": lambda ckpt: _flip(ckpt / ".metadata", 0.9),
}


@pytest.mark.parametrize("damage", ["flipped_byte", "truncated_shard", "malformed_meta", "missing_rank_file"])
def test_resume_latest_passes_over_a_damaged_newest_checkpoint(killed_run, tmp_path, damage):
    root, args = killed_run
    out = _copy(root / "run", tmp_path / "run")
    DAMAGE[damage](out / "checkpoints" / "step_00000004")
    proc = run(cli(*args, f"out_dir={out}", "resume=latest"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if "damaged checkpoint" in line]
    assert len(warnings) == 1 and "step_00000004" in warnings[0], proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and "step_00000002" in proc.stderr
    assert_bit_identical(final_weights(root / "ref"), final_weights(out))


@pytest.mark.parametrize("damage", ["flipped_metadata", "truncated_shard"])
def test_a_named_damaged_checkpoint_is_one_line(killed_run, tmp_path, damage):
    root, args = killed_run
    out = _copy(root / "run", tmp_path / "run")
    ckpt = out / "checkpoints" / "step_00000004"
    DAMAGE[damage](ckpt)
    proc = run(cli(*args, f"out_dir={out}", f"resume={ckpt}"))
    assert_clean_error(proc, "step_00000004", "damaged")


def test_when_every_checkpoint_is_damaged_resume_latest_says_so(killed_run, tmp_path):
    root, args = killed_run
    out = _copy(root / "run", tmp_path / "run")
    for step in (2, 4):
        _flip(_largest(out / "checkpoints" / f"step_{step:08d}"))
    proc = run(cli(*args, f"out_dir={out}", "resume=latest"))
    assert_clean_error(proc, "every checkpoint", "damaged")


# ---------------------------------------------------------------------------------------------- ownership
def test_a_second_run_into_a_locked_out_dir_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    lock = RunLock(out).acquire()  # this test process plays the run in progress
    try:
        proc = run(cli("train", "tiny", *COMMON, f"out_dir={out}"))
        assert_clean_error(proc, "in use by another run", "pid")
    finally:
        lock.release()
    again = run(cli("train", "tiny", *COMMON, f"out_dir={out}", "steps=3"))
    assert again.returncode == 0, again.stderr[-3000:]  # free again


def test_a_fresh_run_over_old_checkpoints_is_refused_unless_overwrite(killed_run, tmp_path):
    root, args = killed_run
    out = _copy(root / "run", tmp_path / "run")
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    proc = run(cli(*args, f"out_dir={out}"))
    assert_clean_error(proc, "holds the checkpoints of an earlier run", "resume=latest", "overwrite=true")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before  # nothing touched
    fresh = run(cli(*args, f"out_dir={out}", "overwrite=true"))
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert_bit_identical(final_weights(root / "ref"), final_weights(out))
    assert _steps_logged(out) == list(range(STEPS))


def test_resume_with_a_changed_model_or_loss_lists_the_changes(killed_run, tmp_path):
    root, args = killed_run
    out = _copy(root / "run", tmp_path / "run")
    proc = run(cli(*args, f"out_dir={out}", "resume=latest", "loss.kind=siglip", "optim.weight_decay=0.3"))
    assert_clean_error(proc, "changed config", "loss.kind", "optim.weight_decay", "resume_changes_ok=true")
    lower_lr = run(cli(*args, f"out_dir={out}", "resume=latest", "optim.lr=1e-4"))  # what a stop message advises
    assert lower_lr.returncode == 0, lower_lr.stderr[-3000:]


def test_resume_auto_continues_from_the_newest_good_checkpoint(killed_run, tmp_path):
    root, args = killed_run
    out = _copy(root / "run", tmp_path / "run")
    resumed = run(cli(*args, f"out_dir={out}", "resume=auto"))
    assert resumed.returncode == 0 and "step_00000004" in resumed.stderr, resumed.stderr[-3000:]
    assert_bit_identical(final_weights(root / "ref"), final_weights(out))
