"""Fault injection for the reliability tests: ``EVACLIP_FAULTS="nan_loss@3,nan_grad@5,checkpoint_write@4"``.

Each entry ``kind@step`` fires at that training step (``kind@step:rank`` only on that rank, as ``RANK`` says
under torchrun). Kinds:

- ``nan_loss`` / ``inf_loss``: the loss of the step becomes non-finite;
- ``nan_grad``: a gradient of the step becomes NaN;
- ``nan_weight``: a weight becomes NaN right after the update of the step (as an update that overflows would
  leave it; the loss and gradients of that step were finite);
- ``crash``: the process dies with SIGKILL in the middle of the step (after backward, before the update);
- ``sigterm``: the process receives SIGTERM at that point of the step (preemption reaching this rank);
- ``sigterm_launcher``: the parent process receives SIGTERM there: under torchrun, the launcher, which
  forwards it to every rank (as SLURM's signal to the job step would reach them);
- ``checkpoint_write``: writing the checkpoint of that step fails with ENOSPC, as a full disk would;
- ``metrics_write``: appending that step's record to ``metrics.jsonl`` fails with ENOSPC;
- ``checkpoint_kill``: SIGKILL inside the save of that checkpoint, right after the sharded (DCP) write and
  before the per-rank files, ``meta.json`` and the rename: a ``step_XXXXXXXX.partial`` directory is left;
- ``rename_kill``: SIGKILL with the checkpoint complete in ``step_XXXXXXXX.partial``, just before its rename;
- ``prune_kill``: SIGKILL after the rename, while old checkpoints are being pruned: right after the oldest
  one's ``meta.json`` is deleted, the worst moment (fires only if that save prunes anything).

The last two watch the checkpoint code from outside with a Python audit hook (``os.rename`` / ``os.remove``
events), installed only when such a fault is asked for. Unset in normal runs, this module costs one dict
lookup per step. A misspelt kind is an error, so a fault test can never pass by injecting nothing.
"""
from __future__ import annotations

import errno
import os
import signal
import sys

from evaclip.errors import ConfigError

KINDS = ("nan_loss", "inf_loss", "nan_grad", "nan_weight", "crash", "sigterm", "sigterm_launcher",
         "checkpoint_write", "metrics_write", "checkpoint_kill", "rename_kill", "prune_kill")
_AUDITED = ("rename_kill", "prune_kill")


def _parse() -> dict[str, set[int]]:
    spec = os.environ.get("EVACLIP_FAULTS", "")
    rank = os.environ.get("RANK", "0")
    out: dict[str, set[int]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, _, where = item.partition("@")
        step, _, only_rank = where.partition(":")
        if kind not in KINDS or not step.isdigit() or (only_rank and not only_rank.isdigit()):
            raise ConfigError(f"EVACLIP_FAULTS entry {item!r} is not kind@step or kind@step:rank with kind one "
                              f"of {', '.join(KINDS)}; unset EVACLIP_FAULTS for a normal run")
        if only_rank and int(only_rank) != int(rank):
            continue
        out.setdefault(kind, set()).add(int(step))
    return out


_FAULTS = _parse()
_HOOKED = False
_pruning: list[str] = []  # "armed" after the rename of a prune_kill step, then "meta" once meta.json goes


def active(kind: str, step: int) -> bool:
    return step in _FAULTS.get(kind, ())


def _kill() -> None:
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def maybe_fail(kind: str, step: int) -> None:
    """Fire ``kind`` if it is injected at ``step``. ``checkpoint_write`` is also where ``checkpoint_kill`` fires."""
    if kind == "checkpoint_write" and active("checkpoint_kill", step):
        _kill()
    if not active(kind, step):
        return
    if kind in ("checkpoint_write", "metrics_write"):
        raise OSError(errno.ENOSPC, "No space left on device (injected)")
    if kind == "crash":
        _kill()
    if kind == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
    if kind == "sigterm_launcher":
        os.kill(os.getppid(), signal.SIGTERM)


def _step_of(path) -> int | None:
    name = os.path.basename(os.fsdecode(path))
    if name.startswith("step_") and name[5:].isdigit():
        return int(name[5:])
    return None


def _audit(event: str, args: tuple) -> None:
    if event == "os.rename":  # os.rename and os.replace
        src, dst = os.fsdecode(args[0]), args[1]
        step = _step_of(dst)
        if step is None or not src.endswith(".partial"):
            return
        if active("rename_kill", step):
            _kill()
        if active("prune_kill", step):
            _pruning[:] = ["armed"]
    elif event in ("os.remove", "os.rmdir") and _pruning:
        # Audit events come before the call: kill at the removal that follows meta.json's (a file or, if
        # meta.json was the last file, the folder itself), so meta.json is gone and the folder is not.
        if _pruning[-1] == "meta":
            _kill()
        if event == "os.remove" and os.path.basename(os.fsdecode(args[0])) == "meta.json":
            _pruning[:] = ["meta"]


def _install_hook() -> None:
    global _HOOKED
    if not _HOOKED and any(_FAULTS.get(k) for k in _AUDITED):
        sys.addaudithook(_audit)  # cannot be removed; it does nothing once the faults are cleared
        _HOOKED = True


def reload() -> None:
    """Re-read EVACLIP_FAULTS (for tests that set it in-process)."""
    global _FAULTS
    _FAULTS = _parse()
    _pruning.clear()
    _install_hook()


def poison_grad(model) -> None:
    """The ``nan_grad`` fault: fill one gradient with NaN, one that this rank holds a part of (under FSDP2 a
    small parameter's shard can be empty on some ranks, and filling that would inject nothing)."""
    for p in model.parameters():
        grad = p.grad
        if grad is None:
            continue
        local = grad.to_local() if hasattr(grad, "to_local") else grad
        if local.numel():
            local.fill_(float("nan"))
            return


def poison_weight(model) -> None:
    """The ``nan_weight`` fault: one element of a weight that this rank holds a part of becomes NaN."""
    import torch
    with torch.no_grad():
        for p in model.parameters():
            local = p.detach()
            local = local.to_local() if hasattr(local, "to_local") else local
            if local.numel():
                local.view(-1)[0] = float("nan")
                return


_install_hook()

