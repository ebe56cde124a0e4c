"""Training on video clips mixed with images, through the real `evaclip train` command: clips and images train
together, a corrupt clip is skipped and counted, and 2 ranks train the same run as 1 process."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rel_kit import QUIET, as_dict, as_proc, cli, final_weights, once, run_many, torchrun

pytest.importorskip("av")
from video_kit import mixed_shard  # noqa: E402

from evaclip.train.recipes.tiny import sample_shards  # noqa: E402


@pytest.fixture(scope="module")
def video_runs(tmp_path_factory) -> tuple[Path, dict]:
    def make(root: Path) -> dict:
        shard = root / "mixed-000.tar"
        mixed_shard(shard, sample_shards("train"), clips=16, images=24, corrupt=2)
        # The command of the issue (1 process, 8 per step) and the same global batch on 2 DDP ranks.
        one = cli("train", "tiny", f"data.sources={shard}", "data.batch_size=8", "steps=4", "log_every=1",
                  f"out_dir={root / 'one'}", *QUIET)
        two = torchrun("train", "tiny", f"data.sources={shard}", "data.global_batch_size=8", "steps=4",
                       "log_every=1", "strategy=ddp", f"out_dir={root / 'two'}", *QUIET)
        return {n: as_dict(p) for n, p in zip(("one", "two"), run_many([one, two], timeout=600))}
    return once(tmp_path_factory, "video-runs", make)


def test_clips_and_images_train_together_and_a_corrupt_clip_is_counted(video_runs):
    root, procs = video_runs
    proc = as_proc(procs["one"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((root / "one" / "summary.json").read_text())
    assert summary["steps"] == 4 and 0 < summary["video_samples"] < summary["samples_seen"] == 32
    assert summary["skipped_samples"].get("corrupt_video", 0) >= 1
    records = [json.loads(line) for line in (root / "one" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["video_samples"] for r in records) == summary["video_samples"]
    assert all(r["extra_frames"] == 7 * r["video_samples"] for r in records)  # 8 frames a clip


def test_two_ranks_train_a_mixed_batch_like_one_process(video_runs):
    root, procs = video_runs
    proc = as_proc(procs["two"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = {n: [json.loads(line)["loss"] for line in (root / n / "metrics.jsonl").read_text().splitlines()]
              for n in ("one", "two")}
    assert max(abs(a - b) for a, b in zip(losses["one"], losses["two"])) <= 1e-4, losses
    a, b = final_weights(root / "one"), final_weights(root / "two")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-4
    assert json.loads((root / "two" / "summary.json").read_text())["video_samples"] == \
        json.loads((root / "one" / "summary.json").read_text())["video_samples"]
    assert torch.isfinite(torch.tensor(losses["two"])).all()
