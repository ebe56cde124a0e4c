"""Run a child process from a test with a bound that really holds.

``subprocess.run(..., timeout=...)`` kills only the direct child and then waits, with no limit, for its pipes
to close; a ``torchrun`` launcher's workers inherit those pipes, so one hung worker would stall the whole
suite. Here the child starts its own session, and on timeout the whole process group is killed.
"""
from __future__ import annotations

import os
import signal
import subprocess
from typing import Sequence


def run_bounded(cmd: Sequence[str], *, timeout: float = 300.0, env: dict | None = None, cwd=None,
                input: str | None = None) -> subprocess.CompletedProcess:
    """Like ``subprocess.run(cmd, capture_output=True, text=True)``; a timeout fails the test with the output."""
    proc = subprocess.Popen(list(cmd), env=env, cwd=cwd, text=True, start_new_session=True,
                            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate(timeout=60)
        raise AssertionError(f"{' '.join(map(str, cmd))[:300]} timed out after {timeout:.0f}s; "
                             f"stderr tail:\n{(err or '')[-4000:]}") from None
    return subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc), children before grandchildren."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # the command name may hold spaces and parens
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out.extend(kids)
        todo.extend(kids)
    return out


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child, its process group and every descendant.

    The group alone is not enough: torchrun starts each worker in a session of its own, so a hung worker
    would outlive its launcher and keep the pipes open. The tree is listed before anything is killed, since
    orphans are re-parented and could no longer be found.
    """
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
