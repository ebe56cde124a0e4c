"""Hostile data in a real training run: shards with ~5% broken samples train to the end, each kind of skip is
counted exactly (summary.json, metrics.jsonl), odd-but-valid images are trained on, and workers survive."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hostile_kit import BATCH, hostile_shards
from rel_kit import QUIET, as_dict, as_proc, cli, once, run, trace

from evaclip.data.decode import SKIP_REASONS
from evaclip.train.metrics import read_metrics


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    def make(root: Path) -> dict:
        pattern, usable, expected = hostile_shards(root / "shards")
        # Two loader workers, one stream and one shard each (no resampling, no shuffling): a pass of 24 batches is
        # exact (two streams split the two shards evenly).
        proc = run(cli("train", "tiny", f"out_dir={root / 'run'}", f"data.sources={pattern}",
                       f"steps={len(usable) // BATCH}", f"data.batch_size={BATCH}", "data.num_workers=2",
                       "data.canonical_streams=2", "data.resampled=false", "data.shuffle_window=1", "data.timeout_s=120", "checkpoint_every=0",
                       "schedule.warmup_steps=2", "trace_samples=true", *QUIET))
        return {"proc": as_dict(proc), "usable": usable, "expected": expected}
    root, got = once(tmp_path_factory, "hostile_run", make)
    return as_proc(got["proc"]), root / "run", got["usable"], got["expected"]


def test_run_completes_and_counts_every_kind_of_skip(hostile_run):
    proc, out, usable, expected = hostile_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == len(usable) // BATCH and summary["skipped_steps"] == 0
    assert summary["skipped_samples"] == expected
    assert {r for r in expected if r != "caption_truncated"} <= set(SKIP_REASONS)
    assert (out / "final.safetensors").is_file()


def test_every_usable_sample_is_trained_on_once_and_no_broken_one(hostile_run):
    _, out, usable, _ = hostile_run
    seen = [k for step, keys in sorted(trace(out).items()) for k in keys]
    assert sorted(seen) == sorted(usable)  # CMYK, 16-bit, palette, misnamed and 100 KB-caption samples included
    assert not any(k.startswith("bad_") for k in seen)


def test_metrics_report_the_skipped_sample_total(hostile_run):
    _, out, _, expected = hostile_run
    records = read_metrics(out / "metrics.jsonl")
    assert records and all("skipped_samples" in r for r in records)
    totals = [r["skipped_samples"] for r in records]
    assert totals == sorted(totals)  # a running total
    assert totals[-1] == sum(n for reason, n in expected.items() if reason in SKIP_REASONS)
