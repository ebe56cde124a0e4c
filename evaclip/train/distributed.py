"""Process-group helpers for runs launched by ``torchrun`` (or as one plain process).

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; everything here reads those and
degrades to a no-op when the process runs alone, so the same training code serves both cases.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from evaclip.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer; launch with torchrun") from None


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group torchrun describes in the environment, or do nothing for a single process.

    ``backend`` defaults to ``nccl`` when CUDA is available and ``gloo`` otherwise. On CUDA each process
    uses ``cuda:LOCAL_RANK``. Calling it again once the group exists just reports the current state.
    ``EVACLIP_DIST_TIMEOUT_S`` bounds how long a collective waits for a silent peer (PyTorch's default,
    10-30 minutes, suits a cluster; the test suite sets a short one so a bug fails fast instead of hanging).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"RANK={rank} WORLD_SIZE={world_size} is not a valid placement; launch with torchrun")
    use_cuda = torch.cuda.is_available() and backend != "gloo"
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are visible; "
                "lower --nproc_per_node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        if backend is None:
            backend = "nccl" if use_cuda else "gloo"
        # device_id lets NCCL bind its communicator eagerly instead of guessing from the current device.
        kwargs = {"device_id": device} if backend == "nccl" else {}
        timeout_s = _env_int("EVACLIP_DIST_TIMEOUT_S", 0)
        if timeout_s < 0:
            raise ConfigError(f"EVACLIP_DIST_TIMEOUT_S={timeout_s} must be a positive number of seconds")
        if timeout_s:
            kwargs["timeout"] = timedelta(seconds=timeout_s)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def under_launcher() -> bool:
    """True in a process that torchrun (torch.distributed.elastic) started."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_WORLD_SIZE" in os.environ


def exit_worker(code: int) -> NoReturn:
    """End a finished torchrun worker with ``code``, skipping interpreter finalization.

    By then the run has written everything and left the process group, but gloo's threads may still hold
    work objects that reference Python; freeing them while the interpreter shuts down aborts the process
    ("terminate called without an active exception", SIGABRT), and torchrun then reports a successful run
    as failed (PyTorch #179291). Logs and standard streams are flushed first.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def get_rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on global rank 0, the process that logs and writes shared files."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every process; a no-op for a single process."""
    if get_world_size() > 1:
        dist.barrier()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (JSON-like values), in rank order, on every rank; ``[obj]`` for a single process."""
    if get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def destroy() -> None:
    """Leave the process group if one was created (call once at the end of a run)."""
    if dist.is_available() and dist.is_initialized():
        # Unreachable DDP reducers still hold the group; collected now, none of them is its last owner
        # (freeing the group from a reducer can deadlock at exit: see Trainer.close).
        gc.collect()
        dist.destroy_process_group()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over all processes, returned as a new tensor (the input is left untouched)."""
    out = tensor.detach().clone()
    world_size = get_world_size()
    if world_size > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out.div_(world_size)
    return out
