"""Bad input to `evaclip train` and `evaclip plan`, through the real CLI: each case exits with code 2 and one
line naming the problem, without a traceback, and leaves nothing exported (most are refused before the run
folder is even created). Also `python -m evaclip` (what `torchrun -m evaclip` runs) and a metrics write that
fails mid-run."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from rel_kit import QUIET, assert_clean_error, cli, final_weights, listing, run, run_many

from evaclip.train.recipes.tiny import sample_shards

SHORT = ["steps=3", "schedule.warmup_steps=1", "data.batch_size=8", *QUIET]
SHARD = sample_shards("train")


def _module(*args: str) -> list[str]:
    return [sys.executable, "-m", "evaclip", *args]


def _prepare_symlinked_final(out: Path) -> None:
    out.mkdir(parents=True)
    (out / "elsewhere").write_text("not evaclip's")
    os.symlink(out / "elsewhere", out / "final.safetensors")


def _prepare_metrics_folder(out: Path) -> None:
    (out / "metrics.jsonl").mkdir(parents=True)


# name -> (command after `evaclip`, fragments of the error line, preparation of the run folder or None)
CASES = {
    "steps_1e30": (["train", "tiny", "steps=1e30"], ("steps=1e30", "out of range"), None),
    "seed_1e300": (["train", "tiny", "seed=1e300"], ("seed=1e300", "out of range"), None),
    "steps_fraction": (["train", "tiny", "steps=2.5"], ("steps", "integer"), None),
    "empty_out_dir": (["train", "tiny", "out_dir="], ("out_dir is empty",), None),
    "weight_inf": (["train", "tiny", f"data.sources={SHARD}::{SHARD}", "data.weights=1,inf"],
                   ("data.weights", "finite"), None),
    "weight_nan_in_spec": (["train", "tiny", f"data.sources={SHARD}::{SHARD}", "data.weights=1::nan"],
                           ("finite",), None),
    "brace_bomb": (["train", "tiny", "data.sources=/x/{00000000..99999999}.tar"],
                   ("100,000,000 shards", "1,000,000"), None),
    "huge_lr": (["train", "tiny", "optim.lr=1e39"], ("optim.lr", "beyond any usable"), None),
    "eval_dataset_typo": (["train", "tiny", "eval.every=2", 'eval.zeroshot=["/nonexistent/petz"]'],
                          ("eval.zeroshot", "/nonexistent/petz"), None),
    "final_is_a_symlink": (["train", "tiny"], ("final.safetensors", "symbolic link"), _prepare_symlinked_final),
    "metrics_is_a_folder": (["train", "tiny"], ("metrics.jsonl", "folder"), _prepare_metrics_folder),
    "plan_memory_nan": (["plan", "EVA02-CLIP-B-16", "--gpus", "8", "--gpu-memory", "nan"],
                        ("--gpu-memory", "finite"), None),
    "plan_memory_inf": (["plan", "EVA02-CLIP-B-16", "--gpus", "8", "--gpu-memory", "inf"],
                        ("--gpu-memory", "finite"), None),
    "plan_batch_nan": (["plan", "EVA02-CLIP-B-16", "--gpus", "8", "--gpu-memory", "80", "--global-batch", "nan"],
                       ("--global-batch", "whole number"), None),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_train")
    cmds, before = {}, {}
    for i, (name, (args, _, prepare)) in enumerate(CASES.items()):
        out = root / name
        if prepare:
            prepare(out)
        before[name] = listing(out)
        if args[0] == "train":
            args = [*args[:2], f"out_dir={out}", *SHORT, *args[2:]]  # a case's own out_dir comes last and wins
        # Half the cases go through `python -m evaclip`, the rest through the CLI module.
        cmds[name] = (_module if i % 2 else cli)(*args)
    procs = run_many(list(cmds.values()), timeout=600)
    return {name: (proc, root / name, before[name]) for name, proc in zip(cmds, procs)}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_nothing_is_written(outcomes, name):
    proc, out, before = outcomes[name]
    assert_clean_error(proc, *CASES[name][1])
    assert listing(out) == before  # nothing written, not even run_config.json or metrics.jsonl


def test_python_m_evaclip_runs_under_torchrun(tmp_path):
    out = tmp_path / "run"
    proc = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                "-m", "evaclip", "train", "tiny", f"out_dir={out}", "steps=2", "checkpoint_every=0", *SHORT[1:]])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(torch.isfinite(v).all() for v in final_weights(out).values())


def test_a_metrics_write_failing_mid_run_is_one_line_and_the_checkpoints_stay_valid(tmp_path):
    out = tmp_path / "run"
    common = ["train", "tiny", f"out_dir={out}", "steps=6", "schedule.warmup_steps=1", "data.batch_size=8",
              "checkpoint_every=2", "log_every=1", *QUIET]
    proc = run(cli(*common), faults="metrics_write@3")
    assert_clean_error(proc, "could not append step 3", "metrics.jsonl", "No space left", "resume=latest")
    assert not (out / "final.safetensors").exists()
    # The failure came before the checkpoint of step 4: the one of step 2 is the newest, and complete.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002"]
    proc = run(cli(*common, "resume=latest"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(torch.isfinite(v).all() for v in final_weights(out).values())
