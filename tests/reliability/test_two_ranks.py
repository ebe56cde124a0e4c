"""Two ranks under torchrun (FSDP2) over the hostile shards, with faults on rank 1 only: both ranks skip the
step that rank 1 alone found non-finite (or they would diverge), and the run reports the skipped samples of
every rank, not just rank 0's."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hostile_kit import BATCH, hostile_shards
from rel_kit import QUIET, final_weights, once, run, torchrun, trace

from evaclip.train.metrics import read_metrics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    def make(root: Path) -> dict:
        pattern, usable, expected = hostile_shards(root / "shards")
        # Without resampling each rank (one canonical stream each) reads one of the two shards, whole: 12 steps of 8
        # are one exact pass.
        proc = run(torchrun("train", "tiny", f"out_dir={root / 'run'}", f"data.sources={pattern}",
                            "data.resampled=false", "data.shuffle_window=1", f"steps={len(usable) // (2 * BATCH)}",
                            "data.canonical_streams=2",
                            f"data.batch_size={BATCH}", "schedule.warmup_steps=2", "checkpoint_every=0",
                            "strategy=fsdp", "log_every=1", "trace_samples=true", *QUIET),
                   faults="nan_loss@2:1,nan_grad@4:1")
        return {"returncode": proc.returncode, "stderr": proc.stderr[-3000:], "usable": usable, "expected": expected}
    root, got = once(tmp_path_factory, "two_ranks", make)
    assert got["returncode"] == 0, got["stderr"]
    out, usable, expected = root / "run", got["usable"], got["expected"]
    # metrics.jsonl is written by rank 0, whose own loss and gradients were always finite.
    records = read_metrics(out / "metrics.jsonl")
    return out, records, usable, expected


def test_a_nan_loss_on_one_rank_is_skipped_by_both(two_ranks):
    out, records, _, _ = two_ranks
    skipped = [r["step"] for r in records if r["skipped"]]
    assert 2 in skipped and set(skipped) <= {2, 4}
    assert all(torch.isfinite(v).all() for v in final_weights(out).values())


def test_a_nan_gradient_on_one_rank_is_skipped_by_both(two_ranks):
    out, records, _, _ = two_ranks
    assert [r["step"] for r in records if r["skipped"]] == [2, 4]
    assert json.loads((out / "summary.json").read_text())["skipped_steps"] == 2


def test_the_ranks_together_train_on_every_usable_sample_once(two_ranks):
    out, _, usable, _ = two_ranks
    seen = [k for rank in (0, 1) for keys in trace(out, rank).values() for k in keys]
    assert sorted(seen) == sorted(usable)


def test_metrics_count_the_skips_of_every_rank(two_ranks):
    _, records, _, expected = two_ranks
    last = records[-1]
    assert {k[len("skip/"):]: v for k, v in last.items() if k.startswith("skip/")} == expected


def test_summary_counts_the_skips_of_every_rank(two_ranks):
    out, _, _, expected = two_ranks
    assert json.loads((out / "summary.json").read_text())["skipped_samples"] == expected
