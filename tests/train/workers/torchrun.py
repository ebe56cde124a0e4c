"""Launch a worker script under real torchrun processes (gloo, CPU) from a test."""

import os
import subprocess
import sys
from pathlib import Path

from proc_kit import kill_group


def run_torchrun(script: Path | str, *args: str, nproc: int = 2, timeout: float = 300.0) -> None:
    """Run ``script args...`` on ``nproc`` local processes; fail with the workers' output if one fails.

    ``--standalone`` makes torchrun bind its rendezvous store to a free port itself, so parallel tests never
    race for a port chosen in advance. The generous timeout is for a loaded 2-core machine; a healthy run
    takes a few seconds.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", EVACLIP_DIST_TIMEOUT_S="180")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script), *args]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)  # the launcher and every worker (each worker has a session of its own)
        output, _ = proc.communicate(timeout=60)
        raise AssertionError(f"torchrun timed out after {timeout:.0f}s:\n{output[-6000:]}") from None
    if proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{output[-6000:]}")
