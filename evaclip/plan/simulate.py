"""Simulated sharding at scale: evaclip's FSDP2 wrapping applied to a meta-device model under a fake process
group of any world size, read back as per-rank parameter bytes. Nothing is allocated or communicated.

The fake process group is process-global, so run one simulation per process: ``run_in_subprocess`` does,
and ``python -m evaclip.plan.simulate MODEL WORLD [RANK]`` prints the result as JSON.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from evaclip.errors import ConfigError


@dataclass(frozen=True)
class SimulatedShards:
    model: str
    world_size: int
    rank: int
    local_numel: int  # parameter elements this rank stores (its DTensor local shards)
    local_bytes: int
    allocated_numel: int | None  # elements of FSDP2's padded shard storage (the same on every rank)
    full_numel: int  # parameter elements of the whole model
    sharded_params: int  # parameters that became DTensors
    total_params: int  # parameter tensors in the model
    fsdp_units: int  # modules that fully_shard wrapped (blocks + root)
    seconds: float


def simulate_fsdp(model: str, world_size: int, rank: int = 0) -> SimulatedShards:
    """Shard ``model`` (built on the meta device) with ``apply_fsdp`` as rank ``rank`` of ``world_size``.

    Must run in a process with no other process group: it initialises the fake backend and tears it down.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from evaclip.models.factory import create_model
    from evaclip.models.parallel import FSDPConfig, apply_fsdp

    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"need world_size >= 1 and 0 <= rank < world_size, got {world_size} and {rank}")
    if dist.is_initialized():
        raise ConfigError("simulate_fsdp needs a process without a process group; use run_in_subprocess")
    start = time.perf_counter()
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        net = create_model(model, device="meta")
        full = sum(p.numel() for p in net.parameters())
        mesh = init_device_mesh("cpu", (world_size,))
        apply_fsdp(net, mesh, FSDPConfig())
        local = local_bytes = sharded = count = 0
        for p in net.parameters():
            count += 1
            shard = p.to_local() if isinstance(p, DTensor) else p
            sharded += isinstance(p, DTensor)
            local += shard.numel()  # meta tensors: shapes only, nothing allocated
            local_bytes += shard.numel() * shard.element_size()
        units = sum(1 for m in net.modules() if type(m).__name__.startswith("FSDP"))
        return SimulatedShards(model, world_size, rank, local, local_bytes, _allocated_numel(net), full,
                               sharded, count, units, time.perf_counter() - start)
    finally:
        dist.destroy_process_group()


def _allocated_numel(net) -> int | None:
    """Elements of the padded shard storage FSDP2 allocates per rank (private API: None if it changes).

    The DTensor local shard is a view of it without the padding, so the last ranks of a 360-way shard can
    hold empty views while still allocating as much as rank 0.
    """
    total = 0
    try:
        for module in net.modules():
            get_state = getattr(module, "_get_fsdp_state", None)
            group = get_state()._fsdp_param_group if get_state is not None else None
            if group is not None:
                total += sum(p._sharded_param_data.numel() for p in group.fsdp_params)
    except AttributeError:
        return None
    return total


def run_in_subprocess(model: str, world_size: int, rank: int = 0, timeout: float = 300.0) -> SimulatedShards:
    """Run :func:`simulate_fsdp` in a fresh Python process (the fake process group is process-global)."""
    cmd = [sys.executable, "-m", "evaclip.plan.simulate", model, str(world_size), str(rank)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"simulated sharding of {model} on {world_size} ranks failed: {tail[0]}")
    return SimulatedShards(**json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (2, 3):
        print("usage: python -m evaclip.plan.simulate MODEL WORLD_SIZE [RANK]", file=sys.stderr)
        return 2
    result = simulate_fsdp(argv[0], int(argv[1]), int(argv[2]) if len(argv) == 3 else 0)
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
