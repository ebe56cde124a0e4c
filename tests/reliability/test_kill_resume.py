"""Kill -9 and resume: one run killed at 10 seeded points (6 under torchrun; some inside a checkpoint save), each
time resumed with ``resume=latest``, ends bit-identical to an uninterrupted run and trains on the same samples in
the same order.

The kills are SIGKILLs the process sends itself at a chosen point (``EVACLIP_FAULTS``), not timers, so the test
is exact and does not depend on the machine's speed. Run as one process and as 2 ranks under torchrun (FSDP2).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest
from rel_kit import QUIET, assert_bit_identical, cli, final_weights, run, torchrun, trace

from evaclip.train.run_state import find_latest

STEPS, EVERY, KEEP, BATCH = 12, 2, 2, 8
COMMON = [f"steps={STEPS}", f"checkpoint_every={EVERY}", f"keep_checkpoints={KEEP}", f"data.batch_size={BATCH}",
          "trace_samples=true", "schedule.warmup_steps=2", "log_every=1", *QUIET]


@dataclass(frozen=True)
class Point:
    """Where a launch is killed. ``resumes_at``: the newest complete checkpoint it leaves; ``partial``: the step
    of the half-written checkpoint it leaves (the next launch must ignore and report it)."""

    when: tuple
    fault: str
    resumes_at: int
    partial: int | None = None


def timeline(world: int) -> list[Point]:
    """Every kill point after the first complete checkpoint, in the order a run meets them.

    The checkpoint of step c is saved after step c-1 and before step c, hence its key (c, -1, ...).
    """
    rank = (lambda rng: "") if world == 1 else (lambda rng: rng.choice(["", ":0", ":1"]))
    rng = random.Random(world)
    points = [Point((s, 0), f"crash@{s}{rank(rng)}", s // EVERY * EVERY) for s in range(EVERY, STEPS)]
    for c in range(2 * EVERY, STEPS + 1, EVERY):
        points.append(Point((c, -1, 0), f"checkpoint_kill@{c}{rank(rng)}", c - EVERY, partial=c))
        points.append(Point((c, -1, 1), f"rename_kill@{c}", c - EVERY, partial=c))
        if c >= (KEEP + 1) * EVERY:  # only then is there an old checkpoint to prune
            points.append(Point((c, -1, 2), f"prune_kill@{c}", c))
    return sorted(points, key=lambda p: p.when)


def choose(seed: int, world: int, n: int = 10) -> list[Point]:
    """n distinct points: at least one of each kind that kills inside a checkpoint save, and 3 mid-step kills."""
    rng = random.Random(seed)
    points = timeline(world)
    kinds = ("checkpoint_kill", "rename_kill", "prune_kill")
    picked = [rng.choice([p for p in points if p.fault.startswith(k)]) for k in kinds]
    picked += rng.sample([p for p in points if p.fault.startswith("crash")], 3)
    rest = [p for p in points if p not in picked]
    picked += rng.sample(rest, n - len(picked))
    return sorted(picked, key=lambda p: p.when)


def _killed(proc, world: int) -> bool:
    if world == 1:
        return proc.returncode == -9
    # torchrun reports the rank that died of SIGKILL and tears the other one down.
    return proc.returncode != 0 and "exitcode: -9" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2], ids=["1proc", "torchrun2"])
def test_killed_repeatedly_then_bit_identical(tmp_path: Path, world: int):
    launch = cli if world == 1 else torchrun
    args = ["train", "tiny", *COMMON] + (["strategy=fsdp"] if world == 2 else [])
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = run(launch(*args, f"out_dir={ref_dir}"))
    assert ref.returncode == 0, ref.stderr[-3000:]

    # 10 kills for one process, 6 for 2 ranks (each torchrun launch costs about 3x a single process; 6 still
    # holds every kind of kill: one of each inside a save and 3 mid-step).
    points = choose(seed=1234 + world, world=world, n=10 if world == 1 else 6)
    story = " -> ".join(p.fault for p in points)
    resume: list[str] = []
    for i, point in enumerate(points):
        proc = run(launch(*args, f"out_dir={run_dir}", *resume), faults=point.fault)
        assert _killed(proc, world), f"kill {i} ({point.fault}) of {story}: rc={proc.returncode}\n{proc.stderr[-3000:]}"
        assert not (run_dir / "final.safetensors").exists()
        if i:
            _assert_resumed_as_expected(proc.stderr, run_dir, points[i - 1])
        found = find_latest(run_dir)
        assert found.path is not None and found.path.name == f"step_{point.resumes_at:08d}", (point, found)
        if point.partial is not None:
            partial = run_dir / "checkpoints" / f"step_{point.partial:08d}.partial"
            assert partial in found.partial, (point, found)
            assert not (run_dir / "checkpoints" / f"step_{point.partial:08d}").exists()
        resume = ["resume=latest"]

    last = run(launch(*args, f"out_dir={run_dir}", "resume=latest"))
    assert last.returncode == 0, last.stderr[-3000:]
    _assert_resumed_as_expected(last.stderr, run_dir, points[-1])

    assert_bit_identical(final_weights(ref_dir), final_weights(run_dir))
    for rank in range(world):
        ref_trace, got = trace(ref_dir, rank), trace(run_dir, rank)
        assert sorted(got) == list(range(STEPS)) and got == ref_trace, f"rank {rank} saw other samples"
        assert sum(len(k) for k in got.values()) == STEPS * BATCH
    # Every half-written checkpoint was written again by the resumed runs, and the newest `keep` are complete.
    # (Folders left by a kill while pruning: test_a_kill_while_pruning_leaves_no_orphan.)
    root = run_dir / "checkpoints"
    assert not list(root.glob("*.partial"))
    assert find_latest(run_dir).path == root / f"step_{STEPS:08d}"
    assert (root / f"step_{STEPS - EVERY:08d}" / "meta.json").is_file()


def _assert_resumed_as_expected(stderr: str, run_dir: Path, kill: Point) -> None:
    """The launch after `kill` resumed from the newest complete checkpoint and reported the half-written one."""
    root = run_dir / "checkpoints"
    assert f"resumed from {root / f'step_{kill.resumes_at:08d}'} at step {kill.resumes_at}" in stderr, \
        f"after {kill.fault}: {stderr[-3000:]}"
    if kill.partial is not None:
        assert f"ignoring incomplete checkpoint {root / f'step_{kill.partial:08d}.partial'}" in stderr, \
            f"after {kill.fault}: {stderr[-3000:]}"


def test_a_kill_while_pruning_leaves_no_orphan(tmp_path):
    args = ["train", "tiny", "steps=8", f"checkpoint_every={EVERY}", "keep_checkpoints=2", f"data.batch_size={BATCH}",
            "schedule.warmup_steps=2", f"out_dir={tmp_path}", *QUIET]
    killed = run(cli(*args), faults="prune_kill@6")
    assert killed.returncode == -9, killed.stderr[-2000:]
    found = find_latest(tmp_path)
    assert found.path == tmp_path / "checkpoints" / "step_00000006"
    assert found.partial == [tmp_path / "checkpoints" / "step_00000002"]  # what the kill left: no meta.json
    done = run(cli(*args, "resume=latest"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000006", "step_00000008"]


def test_kill_points_cover_every_checkpoint_kind_and_are_reachable():
    """The schedule itself: 10 distinct points in timeline order, each reachable after the previous resume."""
    for world in (1, 2):
        for seed in range(20):
            points = choose(seed, world)
            assert len({p.fault for p in points}) == 10
            kinds = {p.fault.split("@")[0] for p in points}
            assert {"checkpoint_kill", "rename_kill", "prune_kill", "crash"} <= kinds
            assert sum(p.fault.startswith("crash") for p in points) >= 3
            for before, after in zip(points, points[1:]):
                assert after.when > before.when
                # The next launch restarts at step before.resumes_at: it runs that step and every later one, and
                # saves only the checkpoints after it, so the next point must lie there.
                start = before.resumes_at
                assert after.when[0] > start or after.when[:2] == (start, 0), (before, after)
