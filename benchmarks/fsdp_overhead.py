"""FSDP2 overhead on CPU: 2 ranks (torchrun, gloo) vs one process, same global batch, same total cores.

Three runs of the same training step (benchmarks/train_step.py: forward -> InfoNCE -> backward -> clip ->
AdamW), fp32, on ``--global-batch`` samples per step in total:

- ``single``: one plain process, the whole batch, ``--threads`` threads (no process group, no wrapping);
- ``fsdp x1``: torchrun with 1 rank, the model wrapped by ``evaclip.models.parallel.apply_fsdp`` (fp32
  params and reduction): the cost of the FSDP2 machinery alone (copies in and out of the flat shards, hooks);
- ``fsdp x2``: torchrun with 2 ranks, half the batch each, ``--threads / 2`` threads each: adds the gloo
  all-gathers / reduce-scatters and the contrastive-loss feature gathers.

Overhead = step time / single step time - 1 (medians), in wall time (the slowest rank) and in CPU time
(summed over ranks; load-independent, see benchmarks/common.py). On a 2-core CPU two ranks cannot be faster
than one process with 2 threads; the number says what sharding costs, not what it buys.

    .venv/bin/python benchmarks/fsdp_overhead.py [--model evaclip-small] [--global-batch 64] [--repeats 4]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning, so process CPU time counts work only (libgomp reads this
# when torch loads it, hence before the import).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import Timing, machine_line, median, random_batch, set_threads, time_repeats  # noqa: E402
from benchmarks.train_step import make_step  # noqa: E402
from evaclip.models.factory import create_model, get_model_config  # noqa: E402
from evaclip.models.parallel import FSDPConfig, apply_fsdp  # noqa: E402


def step_times(model_name: str, batch: int, repeats: int, fsdp: bool, seed: int = 0) -> Timing:
    torch.manual_seed(0)
    model = create_model(model_name)
    if fsdp:
        apply_fsdp(model, cfg=FSDPConfig(param_dtype="fp32", reduce_dtype="fp32"))
    step = make_step(model, random_batch(get_model_config(model_name), batch, seed=seed))
    return time_repeats(step, repeats, warmup=1)


def worker(args) -> None:
    """Inside torchrun: time the FSDP2 step on this rank's share of the global batch; rank 0 prints JSON."""
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    set_threads(max(1, args.threads // world))
    times = step_times(args.model, args.global_batch // world, args.repeats, fsdp=True, seed=rank)
    # The slowest rank sets the pace (max of wall times); the work done is the sum of CPU times.
    wall, cpu = torch.tensor(times.wall), torch.tensor(times.cpu)
    dist.all_reduce(wall, op=dist.ReduceOp.MAX)
    dist.all_reduce(cpu, op=dist.ReduceOp.SUM)
    if rank == 0:
        print("RESULT " + json.dumps({"world": world, "wall": wall.tolist(), "cpu": cpu.tolist()}), flush=True)
    dist.destroy_process_group()


def launch(args, nproc: int) -> Timing:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(Path(__file__).resolve()), "--worker", "--model", args.model, "--global-batch",
           str(args.global_batch), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, args.threads // nproc)))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"torchrun with {nproc} rank(s) failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    return Timing(result["wall"], result["cpu"])


def run(model: str, global_batch: int, repeats: int, threads: int, verbose: bool = True) -> dict:
    class Args:  # the worker's command line, for launch()
        pass

    args = Args()
    args.model, args.global_batch, args.repeats, args.threads = model, global_batch, repeats, threads
    set_threads(threads)
    # single, fsdp x1, fsdp x2, single again: the single-process baseline brackets the torchrun runs, so that
    # load drifts on a shared machine show up in its spread.
    results = {"single": step_times(model, global_batch, repeats, fsdp=False)}
    results["fsdp x1"] = launch(args, 1)
    results["fsdp x2"] = launch(args, 2)
    results["single"].extend(step_times(model, global_batch, repeats, fsdp=False))
    base_wall, base_cpu = median(results["single"].wall), median(results["single"].cpu)
    out: dict = {"model": model, "global_batch": global_batch}
    for k, t in results.items():
        out[k] = {"step_s": median(t.wall), "overhead": median(t.wall) / base_wall - 1,
                  "cpu_s": median(t.cpu), "overhead_cpu": median(t.cpu) / base_cpu - 1}
    if verbose:
        print(f"FSDP2 overhead: {model}, global batch {global_batch}, fp32, gloo; {machine_line()}")
        for k, t in results.items():
            r = out[k]
            print(f"  {k:8s}: step {r['step_s'] * 1e3:8.1f} ms wall ({global_batch / r['step_s']:6.1f} samples/s), "
                  f"overhead {r['overhead'] * 100:+6.1f}% | {r['cpu_s']:6.2f} CPU-s per step (all ranks), "
                  f"overhead {r['overhead_cpu'] * 100:+6.1f}%   (median of {len(t.wall)})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="evaclip-small")
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="total threads (split over the ranks)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
    else:
        run(args.model, args.global_batch, args.repeats, args.threads)


if __name__ == "__main__":
    main()
