"""Helpers of the reliability suite: real `evaclip` processes (plain or under torchrun) and what they leave."""
from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch
from proc_kit import kill_group, run_bounded
from safetensors.torch import load_file

# Every run of the suite: no progress bar, no TensorBoard (both are noise here).
QUIET = ["progress=false", "tensorboard=false"]


def env(faults: str | None = None) -> dict[str, str]:
    """The child's environment: faults only where asked; one thread per process, since the runs share 2 cores."""
    out = {k: v for k, v in os.environ.items() if k != "EVACLIP_FAULTS"}
    out.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONFAULTHANDLER="0",
               EVACLIP_DIST_TIMEOUT_S="180")
    if faults:
        out["EVACLIP_FAULTS"] = faults
    return out


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "evaclip.cli.main", *args]


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    # --standalone picks a free rendezvous port, so runs under pytest-xdist never collide.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "evaclip.cli.main", *args]


def run(cmd: list[str], faults: str | None = None, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return run_bounded(cmd, env=env(faults), timeout=timeout, **kw)


_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING) ")


def error_lines(stderr: str) -> list[str]:
    """stderr without Python warnings and the run's own log records (progress reports, not error messages)."""
    lines, skip_next = [], False
    for line in stderr.splitlines():
        if skip_next:
            skip_next = False
            continue
        if "Warning:" in line:
            skip_next = line.startswith("/")  # the source line printed under a warnings.warn location
            continue
        if _LOG_RECORD.match(line):
            continue
        if line.strip():
            lines.append(line)
    return lines


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 2, exactly one line on stderr naming every fragment, and no traceback."""
    lines = error_lines(proc.stderr)
    context = f"rc={proc.returncode} stderr={proc.stderr[-3000:]!r}"
    assert proc.returncode == 2, context
    assert "Traceback" not in proc.stderr, context
    assert len(lines) == 1, context
    for f in fragments:
        assert f.lower() in lines[0].lower(), f"{f!r} not in {lines[0]!r}"
    return lines[0]


def trace(out_dir: Path, rank: int = 0) -> dict[int, list[str]]:
    """Sample keys per step from `trace_samples=true`; a step redone after a resume keeps its last entry."""
    last: dict[int, list[str]] = {}
    path = Path(out_dir) / f"samples_rank{rank}.jsonl"
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        last[rec["step"]] = rec["keys"]
    return last


def final_weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(out_dir) / "final.safetensors"))


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def listing(root: Path) -> list[str]:
    """Every path under root, relative, sorted (for "nothing was written" checks)."""
    root = Path(root)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def run_many(cmds: list[list[str]], timeout: float = 300, cwd: Path | None = None) -> list[subprocess.CompletedProcess]:
    """Run every command at once (they are independent) and wait for all: the suite's wall time is the slowest."""
    procs = [subprocess.Popen(c, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                              stdin=subprocess.DEVNULL, start_new_session=True) for c in cmds]
    out = []
    for cmd, p in zip(cmds, procs):
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(p)
            stdout, stderr = p.communicate(timeout=60)
        out.append(subprocess.CompletedProcess(cmd, p.returncode, stdout, stderr))
    return out


def once(tmp_path_factory, name: str, make: Callable[[Path], dict]) -> tuple[Path, dict]:
    """``make(folder)`` run once per test session, even when several pytest-xdist workers need its result.

    The first worker to ask runs it (in a folder shared by the workers) and stores what it returns as JSON; the
    others wait on a file lock and read that back, instead of repeating minutes of training runs. (The
    xdist_group mark would do this, but pytest 9 + xdist 3.8 here ignore it.)
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    folder, stored = base / f"once-{name}", base / f"once-{name}.json"
    with open(base / f"once-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stored.exists():
            folder.mkdir(exist_ok=True)
            stored.write_text(json.dumps(make(folder)))
    return folder, json.loads(stored.read_text())


def as_dict(proc: subprocess.CompletedProcess) -> dict:
    return {"args": [str(a) for a in proc.args], "returncode": proc.returncode, "stdout": proc.stdout,
            "stderr": proc.stderr}


def as_proc(d: dict) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess(d["args"], d["returncode"], d["stdout"], d["stderr"])
