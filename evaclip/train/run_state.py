"""Resumable training checkpoints: sharded model + optimizer state (``torch.distributed.checkpoint``), the
global data position, the RNG state of every rank, and the step. A checkpoint resumes on any world size and
strategy: DCP reshards the model and optimizer state, and the data position does not depend on the ranks.

Layout of ``out_dir/checkpoints/step_00000100/``::

    .metadata, __*_*.distcp   model and optimizer state, sharded as trained (FSDP2 DTensors or full tensors)
    data.json                  the global data position (every canonical stream's counters; evaclip.data.order)
    rank_00000.json            that rank's RNG states
    meta.json                  step, world size, config, and the size and SHA-256 of every other file; written last

A checkpoint is written into ``step_XXXXXXXX.partial/`` and renamed only when every rank has finished, so a
run killed mid-write leaves a ``.partial`` directory that :func:`find_latest` ignores (and reports), and the
previous checkpoint is untouched. Before a checkpoint is loaded its files are checked against ``meta.json``
(:func:`verify`; the ranks share the hashing); ``resume=latest`` passes over a damaged newest checkpoint to the
newest good one with one warning. DCP metadata is pickled by PyTorch: resume only from checkpoints that your
own runs wrote (released weights are loaded through :mod:`evaclip.models.checkpoint`, which never unpickles).

An out_dir belongs to one run at a time: :class:`RunLock` holds ``out_dir/.lock`` (an advisory ``flock``, which
also works on most network file systems; where it does not, the lock cannot protect).
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evaclip.errors import TrainingError
from evaclip.train.distributed import barrier, gather_objects, get_rank, get_world_size

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
    complete, partial = _scan(out_dir)
    return Found(complete[-1] if complete else None, partial)


def _scan(out_dir: str | Path) -> tuple[list[Path], list[Path]]:
    """(complete checkpoints, oldest first; half-written ones)."""
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return [], []
    complete, partial = [], []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / "meta.json").is_file():
            complete.append((int(m.group(1)), p))
        elif p.name.endswith(".partial") or (m and not (p / "meta.json").is_file()):
            partial.append(p)
    complete.sort()
    return [p for _, p in complete], sorted(partial)


def resolve_resume(resume: str | None, out_dir: str | Path) -> Path | None:
    """``resume="latest"`` -> the newest checkpoint in out_dir that passes :func:`verify` (a damaged newer one is
    passed over with one warning); ``"auto"``: the same, or None (a fresh start) when out_dir has no complete
    checkpoint yet, for job scripts that requeue; a path -> that checkpoint, verified. A collective under torchrun.
    """
    if not resume:
        return None
    if resume in ("latest", "auto"):
        complete, partial = _scan(out_dir)
        if resume == "auto" and not complete:
            return None
        for p in partial:
            _warn(f"ignoring incomplete checkpoint {p} (the run was interrupted while writing it)")
        for path in reversed(complete):
            problem = verify(path)
            if problem is None:
                return path
            _warn(f"skipping damaged checkpoint {path}: {problem}; trying the one before")
        if complete:
            raise TrainingError(f"resume={resume} but every checkpoint in {checkpoint_root(out_dir)} is damaged (see "
                                "the warnings above); start afresh with overwrite=true or choose another out_dir")
        raise TrainingError(f"resume=latest but {checkpoint_root(out_dir)} holds no complete checkpoint; "
                            "start without resume, or set checkpoint_every so that runs save one")
    path = Path(resume)
    if not (path / "meta.json").is_file():
        raise TrainingError(f"resume={resume}: not a complete evaclip checkpoint directory (no meta.json); "
                            "pass resume=latest or a checkpoints/step_XXXXXXXX directory")
    problem = verify(path)
    if problem is not None:
        raise TrainingError(f"resume={resume}: the checkpoint is damaged ({problem}); resume from an earlier "
                            "checkpoint (resume=latest picks the newest good one)")
    return path


def _warn(message: str) -> None:
    if get_rank() == 0:
        log.warning("%s", message)


def read_meta(path: Path) -> dict[str, Any]:
    """A checkpoint's ``meta.json``, or a TrainingError saying why it cannot be read."""
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise TrainingError(f"{path / 'meta.json'} cannot be read ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120]})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        raise TrainingError(f"{path / 'meta.json'} is not an evaclip checkpoint record (no integer step)")
    return meta


# ---------------------------------------------------------------------------------------------- integrity
_HASH_CHUNK = 8 << 20


def _check_listing(path: Path) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """(what is wrong with meta.json or the presence and sizes of the files it lists, or None; that list)."""
    try:
        files = read_meta(path).get("files") or {}
    except TrainingError as e:
        return str(e), {}
    if not isinstance(files, dict) or not all(isinstance(w, dict) for w in files.values()):
        return "meta.json's file list is malformed", {}
    for name, want in sorted(files.items()):
        f = path / name
        if Path(name).name != name or not f.is_file():
            return f"{name} is missing", files
        if f.stat().st_size != want.get("bytes"):
            return f"{name} has {f.stat().st_size} bytes, {want.get('bytes')} were written (truncated?)", files
    return None, files


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _digest_files(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """{name: {"bytes", "sha256"}} of ``names``, the ranks sharing the work (each hashes every world-th file) and
    all receiving the whole table. A collective."""
    rank, world = get_rank(), get_world_size()
    mine = {n: {"bytes": (folder / n).stat().st_size, "sha256": _sha256(folder / n)}
            for i, n in enumerate(sorted(names)) if i % world == rank}
    table: dict[str, dict[str, Any]] = {}
    for part in gather_objects(mine):
        table.update(part)
    return table


def verify(path: Path) -> str | None:
    """None if the checkpoint at ``path`` is whole, else what is wrong with it (one phrase). A collective: the
    ranks share the hashing; every rank returns the same answer."""
    problem, files = _check_listing(path)
    problem = next((p for p in gather_objects(problem) if p), None)  # every rank takes the first problem found
    if problem is not None:
        return problem
    if not files:  # written before checksums existed: nothing to compare against
        _warn(f"checkpoint {path} has no checksums (written by an older evaclip); loading it unverified")
        return None
    got = _digest_files(path, list(files))
    bad = sorted(n for n, want in files.items() if got[n]["sha256"] != want.get("sha256"))
    if bad:
        return f"{bad[0]} does not match its SHA-256 in meta.json (the bytes changed after it was written)"
    return None


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
         *, data_state: dict[str, Any] | None, meta: dict[str, Any], keep: int = 2) -> Path:
    """Write a checkpoint collectively (every rank calls this) and prune old ones, keeping ``keep``.
    ``data_state`` (the global data position) is written by rank 0, the one that holds it."""
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
        _write_json(tmp / f"rank_{rank:05d}.json", {"rng": _rng_state()})
        if rank == 0 and data_state is not None:
            _write_json(tmp / "data.json", data_state)
        barrier()
        files = _digest_files(tmp, [p.name for p in tmp.iterdir() if p.is_file()])
        if rank == 0:
            _write_json(tmp / "meta.json", dict(meta, step=step, world_size=world, files=files))
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


def load(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict | None]:
    """Restore model and optimizer (resharded to this run's world size and strategy) and, where this rank existed
    in the saved run, its RNG; return (meta, the global data position or None)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    rank, world = get_rank(), get_world_size()
    _check_metadata(path)
    meta = read_meta(path)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    # The RNG of a rank that the saved run had (on another world size, the new ranks keep their seeded RNG:
    # training draws nothing from it that belongs to a sample, see evaclip.models.sample_rng).
    own = path / f"rank_{rank:05d}.json"
    if own.is_file() and meta.get("world_size", 1) == world:
        _set_rng_state(json.loads(own.read_text())["rng"])
    data = path / "data.json"
    return meta, json.loads(data.read_text()) if data.is_file() else None


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


# ---------------------------------------------------------------------------------------------- ownership
class RunLock:
    """``out_dir/.lock``, held by rank 0 for the whole run: a second run into the same out_dir is refused with the
    holder's pid, host and start time. The kernel drops the lock when the process ends, however it ends (a killed
    run leaves the file, which the next run simply locks again)."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        if self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return self  # an out_dir that cannot be written: the trainer's writability check says so
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown process"
            os.close(fd)
            raise TrainingError(f"out_dir {self.path.parent} is in use by another run ({holder}); wait for it to "
                                "finish or choose another out_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            # Removed while still held, so a finished or refused run leaves nothing behind; a process that opened
            # the old file in this instant would lock a file no one else sees (a race of microseconds, accepted).
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


# Config fields a resumed run may change: where it writes and reads, how long it runs, how it reports, and
# the step-size knobs that a stop message may ask for (lr, warm-up, clipping). Anything else in these
# sections changes what is being trained.
CHECKED_SECTIONS = ("task", "model", "optim", "loss", "mim", "precision")
RESUMABLE_CHANGES = ("model.pretrained", "model.pretrained_image", "model.pretrained_text", "mim.teacher",
                     "mim.teacher_model",
                     "optim.lr", "optim.visual_lr", "optim.text_lr", "optim.grad_clip")


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for each field of :data:`CHECKED_SECTIONS` that differs, except
    :data:`RESUMABLE_CHANGES`."""
    old = _flatten({k: saved.get(k) for k in CHECKED_SECTIONS})
    new = _flatten({k: current.get(k) for k in CHECKED_SECTIONS})
    changed = []
    for key in sorted(old.keys() | new.keys()):
        if key in RESUMABLE_CHANGES:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            a, b = list(a), list(b)
        if a != b:
            changed.append(f"{key}: {a!r} -> {b!r}")
    return changed
