"""Disk and I/O faults: a full disk while a checkpoint is written, shards that vanish or are cut mid-read."""
from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest
from data_kit import write_tar
from hostile_kit import emoji_samples, tar_members
from rel_kit import QUIET, assert_bit_identical, assert_clean_error, cli, final_weights, listing, run, trace

from evaclip.data.tario import TarSampleReader
from evaclip.train.run_state import find_latest

SHORT = ["steps=6", "checkpoint_every=2", "data.batch_size=8", "schedule.warmup_steps=2", *QUIET]


def _assert_only_complete(out_dir: Path, steps: list[int]) -> None:
    """The checkpoints folder holds exactly these complete checkpoints and nothing half-written."""
    found = find_latest(out_dir)
    assert found.partial == [], found.partial
    names = sorted(p.name for p in (out_dir / "checkpoints").iterdir())
    assert names == [f"step_{s:08d}" for s in steps], names
    for s in steps:
        assert {"meta.json", "rank_00000.json", ".metadata"} <= set(os.listdir(out_dir / "checkpoints" / names[0]))


def test_no_space_left_keeps_the_previous_checkpoint_and_resumes_exactly(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = run(cli("train", "tiny", *SHORT, f"out_dir={ref_dir}"))
    assert ref.returncode == 0, ref.stderr[-2000:]

    full = run(cli("train", "tiny", *SHORT, f"out_dir={run_dir}"), faults="checkpoint_write@4")
    assert_clean_error(full, "could not write checkpoint", "step_00000004", "No space left on device",
                       "previous checkpoint is intact", "resume=latest")
    _assert_only_complete(run_dir, [2])
    assert not (run_dir / "final.safetensors").exists()

    resumed = run(cli("train", "tiny", *SHORT, f"out_dir={run_dir}", "resume=latest"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "at step 2" in resumed.stderr
    assert_bit_identical(final_weights(ref_dir), final_weights(run_dir))


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 60 MiB tmpfs: room for one checkpoint of the tiny model (~40 MB), not for two."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=60m", "tmpfs", str(mount)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs here ({e}); the injected ENOSPC test covers the error path")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {proc.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def test_real_full_disk_gives_a_clear_error_and_keeps_the_previous_checkpoint(tiny_tmpfs, tmp_path):
    out = tiny_tmpfs / "run"
    proc = run(cli("train", "tiny", *SHORT, f"out_dir={out}"))
    assert_clean_error(proc, "could not write checkpoint", "step_00000004", "previous checkpoint is intact")
    _assert_only_complete(out, [2])
    # The surviving checkpoint loads: resume it into a run whose out_dir has room.
    from evaclip.train.config import apply_overrides
    from evaclip.train.recipes import get_recipe
    from evaclip.train.trainer import Trainer
    cfg = apply_overrides(get_recipe("tiny"), [*SHORT, f"out_dir={tmp_path / 'elsewhere'}",
                                               f"resume={out / 'checkpoints' / 'step_00000002'}"])
    trainer = Trainer(cfg)
    trainer.resume()
    assert trainer.step == 2 and trainer.samples_seen == 16


# ---------------------------------------------------------------------------------------------------------
# shards that vanish or are cut while being read, in a real training run
# ---------------------------------------------------------------------------------------------------------
def _emoji_members(start: int, count: int) -> list[tuple[str, bytes]]:
    """`count` real image-caption pairs of the shipped emoji sample, as tar members (png + txt)."""
    return tar_members(emoji_samples(count, start))


def _good_keys(data: bytes, scratch: Path) -> list[str]:
    """The samples a reader keeps from (possibly cut) tar bytes: read the same bytes from a file."""
    scratch.write_bytes(data)
    return [s["__key__"] for s in TarSampleReader(str(scratch))]


class _FifoShard:
    """A named pipe serving a tar stream that stops in the middle of a member, as a dropped connection would.

    The reader (the training process) blocks in open() until this thread opens the write end, reads what is
    written, and sees end-of-file mid-member. Later opens get an empty stream (a shard gone by the next pass).
    """

    def __init__(self, path: Path, data: bytes):
        self.path, self.data, self.stop = path, data, threading.Event()
        os.mkfifo(path)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        data = self.data
        while not self.stop.is_set():
            try:
                # An open that finds the first reader still draining the pipe adds nothing to its stream:
                # it still sees exactly `data`, then end-of-file once every writer has closed.
                with open(self.path, "wb") as f:
                    f.write(data)
            except BrokenPipeError:
                pass
            if not data:
                self.stop.wait(0.005)  # keeps this loop from spinning while that reader finishes
            data = b""

    def close(self) -> None:
        self.stop.set()
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)  # releases a writer blocked in open()
        os.close(fd)
        self.thread.join(timeout=10)


def test_vanished_and_cut_shards_are_skipped_and_counted_in_a_training_run(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_tar(shards / "s-0.tar", _emoji_members(0, 24))  # intact
    cut = write_tar(tmp_path / "cut.tar", _emoji_members(24, 24)).read_bytes()
    cut = cut[: int(len(cut) * 0.55)]  # stops inside a member
    (shards / "s-1.tar").write_bytes(cut)  # truncated on disk
    streamed = write_tar(tmp_path / "stream.tar", _emoji_members(48, 24)).read_bytes()
    streamed = streamed[: int(len(streamed) * 0.45)]
    fifo = _FifoShard(shards / "s-2.tar", streamed)  # cut while streaming
    # s-3.tar is listed by the pattern but gone when its turn comes.
    scratch = tmp_path / "scratch.tar"
    good = [s["__key__"] for s in TarSampleReader(str(shards / "s-0.tar"))]
    good += _good_keys(cut, scratch) + _good_keys(streamed, scratch)
    assert 10 < len(good) < 72
    steps = len(good) // 8 + 1  # one pass over the readable samples, and one batch into the next pass
    out = tmp_path / "run"
    try:
        proc = run(cli("train", "tiny", f"out_dir={out}", f"steps={steps}", "data.batch_size=8",
                       f"data.sources={shards}/s-{{0..3}}.tar", "data.resampled=false", "data.shuffle_window=1",
                       "data.canonical_streams=1",
                       "checkpoint_every=0", "schedule.warmup_steps=1", "trace_samples=true", *QUIET), timeout=300)
    finally:
        fifo.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    skipped = summary["skipped_samples"]
    # One pass meets two cut shards and one missing shard (the next pass may meet some again).
    assert 2 <= skipped.get("truncated_tar", 0) <= 4 and 1 <= skipped.get("unreadable_shard", 0) <= 2, skipped
    assert set(skipped) <= {"truncated_tar", "unreadable_shard"}, skipped
    seen = [k for s in sorted(trace(out)) for k in trace(out)[s]]
    # The first pass trained on every readable sample exactly once, and never on a sample cut in half.
    assert sorted(seen[: len(good)]) == sorted(good)
    assert set(seen) <= set(good)
    assert "unreadable_shard" in proc.stderr and "s-3.tar" in proc.stderr  # and each was logged
    assert listing(shards) == ["s-0.tar", "s-1.tar", "s-2.tar"]
