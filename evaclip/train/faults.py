"""Fault injection for the reliability tests: ``EVACLIP_FAULTS="nan_loss@3,nan_grad@5,checkpoint_write@4"``.

Each entry ``kind@step`` fires once at that training step. Kinds: ``nan_loss`` / ``inf_loss`` (the loss
becomes non-finite), ``nan_grad`` (a gradient becomes NaN), ``checkpoint_write`` (writing the checkpoint of
that step fails with ENOSPC, as a full disk would), ``crash`` (the process dies with SIGKILL, mid-step).
Unset in normal runs; reading it costs one dict lookup per step.
"""
from __future__ import annotations

import errno
import os
import signal


def _parse() -> dict[str, set[int]]:
    spec = os.environ.get("EVACLIP_FAULTS", "")
    out: dict[str, set[int]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, _, step = item.partition("@")
        out.setdefault(kind, set()).add(int(step))
    return out


_FAULTS = _parse()


def active(kind: str, step: int) -> bool:
    return step in _FAULTS.get(kind, ())


def maybe_fail(kind: str, step: int) -> None:
    if not active(kind, step):
        return
    if kind == "checkpoint_write":
        raise OSError(errno.ENOSPC, "No space left on device (injected)")
    if kind == "crash":
        os.kill(os.getpid(), signal.SIGKILL)


def reload() -> None:
    """Re-read EVACLIP_FAULTS (for tests that set it in-process)."""
    global _FAULTS
    _FAULTS = _parse()
