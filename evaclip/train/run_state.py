"""Resumable training checkpoints: sharded model + optimizer state (``torch.distributed.checkpoint``), the
data position and RNG state of every rank, and the step.

Layout of ``out_dir/checkpoints/step_00000100/``::

    .metadata, __*_*.distcp   model and optimizer state, sharded as trained (FSDP2 DTensors or full tensors)
    rank_00000.json            that rank's data-loader position and RNG states
    meta.json                  step, world size, config; written last

A checkpoint is written into ``step_XXXXXXXX.partial/`` and renamed only when every rank has finished, so a
run killed mid-write leaves a ``.partial`` directory that :func:`find_latest` ignores (and reports), and the
previous checkpoint is untouched. DCP metadata is pickled by PyTorch: resume only from checkpoints that your
own runs wrote (released weights are loaded through :mod:`evaclip.models.checkpoint`, which never unpickles).
"""
from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import pickle
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evaclip.errors import TrainingError
from evaclip.train.distributed import barrier, get_rank, get_world_size

log = logging.getLogger(__name__)
_STEP_DIR = re.compile(r"^step_(\d{8})$")


@dataclass
class Found:
    path: Path | None
    partial: list[Path]


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def find_latest(out_dir: str | Path) -> Found:
    """The newest complete checkpoint (one with ``meta.json``) and any half-written ones."""
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return Found(None, [])
    complete, partial = [], []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / "meta.json").is_file():
            complete.append((int(m.group(1)), p))
        elif p.name.endswith(".partial") or (m and not (p / "meta.json").is_file()):
            partial.append(p)
    complete.sort()
    return Found(complete[-1][1] if complete else None, sorted(partial))


def resolve_resume(resume: str | None, out_dir: str | Path) -> Path | None:
    """``resume="latest"`` -> newest complete checkpoint in out_dir; a path -> that checkpoint (checked)."""
    if not resume:
        return None
    if resume == "latest":
        found = find_latest(out_dir)
        for p in found.partial:
            log.warning("ignoring incomplete checkpoint %s (the run was interrupted while writing it)", p)
        if found.path is None:
            raise TrainingError(f"resume=latest but {checkpoint_root(out_dir)} holds no complete checkpoint; "
                                "start without resume, or set checkpoint_every so that runs save one")
        return found.path
    path = Path(resume)
    if not (path / "meta.json").is_file():
        raise TrainingError(f"resume={resume}: not a complete evaclip checkpoint directory (no meta.json); "
                            "pass resume=latest or a checkpoints/step_XXXXXXXX directory")
    return path


def _rng_state() -> dict[str, str]:
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return {k: base64.b64encode(v.numpy().tobytes()).decode() for k, v in states.items()}


def _set_rng_state(states: dict[str, str]) -> None:
    def decode(s: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)
    torch.set_rng_state(decode(states["torch"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(decode(states["cuda"]))


@contextlib.contextmanager
def _single_process_quiet():
    """DCP warns on every save/load without a process group that it assumes a single process; that is the
    intended case here, so only that warning is filtered."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(out_dir: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         *, rank_state: dict[str, Any], meta: dict[str, Any], keep: int = 2) -> Path:
    """Write a checkpoint collectively (every rank calls this) and prune old ones, keeping ``keep``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from evaclip.train import faults

    rank, world = get_rank(), get_world_size()
    root = checkpoint_root(out_dir)
    final = root / f"step_{step:08d}"
    tmp = root / f"step_{step:08d}.partial"
    try:
        if rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        barrier()
        model_sd, optim_sd = get_state_dict(model, optimizer)
        with _single_process_quiet():
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
        faults.maybe_fail("checkpoint_write", step)
        _write_json(tmp / f"rank_{rank:05d}.json", {"rank_state": rank_state, "rng": _rng_state()})
        barrier()
        if rank == 0:
            _write_json(tmp / "meta.json", dict(meta, step=step, world_size=world))
            if final.exists():  # a checkpoint of the same step from an earlier, interrupted attempt
                shutil.rmtree(final)
            os.rename(tmp, final)
            _prune(root, keep)
        barrier()
    except (OSError, CheckpointException) as e:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise TrainingError(f"could not write checkpoint {final}: {_write_failure(e, root)}; the previous "
                            "checkpoint is intact. Free disk space or choose another out_dir, then resume=latest"
                            ) from None
    return final


def _write_failure(e: BaseException, root: Path) -> str:
    """One line on why a checkpoint write failed. DCP gathers each rank's error into a CheckpointException, and a
    full disk reaches it as torch's zip writer failing without an errno, so also say how much room is left."""
    if isinstance(e, OSError):
        reason = e.strerror or str(e)
    else:
        failures = getattr(e, "failures", None) or {}
        inner = next(iter(failures.values()))[0] if failures else e
        first = str(inner).splitlines()[0][:160] if str(inner) else ""
        reason = f"{type(inner).__name__}: {first}"
    try:
        reason += f" ({shutil.disk_usage(root).free / 2**20:.0f} MiB free there)"
    except OSError:
        pass
    return reason


def _prune(root: Path, keep: int) -> None:
    steps = sorted(p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / "meta.json").is_file())
    for old in steps[:-keep]:
        (old / "meta.json").unlink()  # first the completion mark: a kill mid-delete leaves an incomplete folder
        shutil.rmtree(old, ignore_errors=True)
    # Incomplete folders older than the newest checkpoint can never be resumed from (a checkpoint whose pruning
    # was killed, a .partial that no resumed run rewrote): remove them too.
    newest = int(steps[-1].name[5:]) if steps else -1
    for p in root.iterdir():
        m = re.match(r"^step_(\d{8})(\.partial)?$", p.name)
        if m and int(m.group(1)) < newest and not (p / "meta.json").is_file():
            shutil.rmtree(p, ignore_errors=True)


def load(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Restore model, optimizer and this rank's RNG; return (meta, rank_state)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    rank, world = get_rank(), get_world_size()
    _check_metadata(path)
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("world_size", 1) != world:
        raise TrainingError(f"checkpoint {path} was written by {meta.get('world_size')} processes, this run has "
                            f"{world}; exact resume needs the same world size (the data position is per rank)")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    per_rank = json.loads((path / f"rank_{rank:05d}.json").read_text())
    _set_rng_state(per_rank["rng"])
    return meta, per_rank["rank_state"]


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles only what DCP writes into ``.metadata``: its own metadata classes, torch sizes and dtypes."""

    _NAMES = {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
              ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
              ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str):
        if (module == "torch.distributed.checkpoint.metadata" or (module, name) in self._NAMES
                or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype))):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in checkpoint metadata")


def _check_metadata(path: Path) -> None:
    """DCP unpickles ``.metadata`` with plain pickle, which can run code: read it first with the allow-list above,
    so that a planted or garbled file is refused before DCP touches it."""
    try:
        with open(path / ".metadata", "rb") as f:
            _MetadataUnpickler(f).load()
    except Exception as e:  # noqa: BLE001 - whatever the failure, this is not a checkpoint to trust
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise TrainingError(f"refusing to resume from {path}: its .metadata is not DCP checkpoint metadata "
                            f"({reason}); resume only from checkpoints your own runs wrote") from None
