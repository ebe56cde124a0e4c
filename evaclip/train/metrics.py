"""Training telemetry: ``metrics.jsonl``, TensorBoard, and MFU against a matmul ceiling measured here, in the
dtype the run computes in (:func:`evaclip.train.config.compute_dtype`)."""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evaclip.errors import TrainingError
from evaclip.outputs import atomic_write_text
from evaclip.train import faults


@dataclass
class Ceiling:
    """Sustained square-matmul rate: FLOP per wall second and FLOP per process-CPU second (medians)."""

    per_wall_s: float
    per_cpu_s: float


def matmul_ceiling(device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32, n: int = 1024,
                   seconds: float = 0.3, repeats: int = 1) -> Ceiling:
    """The sustained rate of an ``n x n`` matmul on ``device``: the denominator of MFU.

    A model step can only approach it, since norms, softmax, activations and the optimizer run at memory
    speed. The CPU-time rate does not depend on other load on a shared machine; the wall rate does.
    """
    # A generator of its own: measuring must not move the run's random stream (patch dropout, MIM masks), so a
    # run draws the same whether or not its FLOPs are known and the ceiling measured.
    generator = torch.Generator(device).manual_seed(0)
    while True:
        a = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
        b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        # A dtype this device computes slowly (fp16 on most CPUs: one 1024^3 matmul takes seconds) is measured on
        # a smaller matmul, so that measuring stays within about ``seconds``.
        if time.perf_counter() - start <= seconds / 4 or n <= 128:
            break
        n //= 2
    every = 4 if device.type == "cuda" else 1  # a CPU has nothing to synchronise: check the time every matmul
    wall_rates, cpu_rates = [], []
    for _ in range(repeats):
        a @ b
        _sync(device)
        iters, start, cpu = 0, time.perf_counter(), time.process_time()
        while True:
            a @ b
            iters += 1
            if iters % every == 0:
                _sync(device)
                elapsed = time.perf_counter() - start
                if elapsed >= seconds:
                    wall_rates.append(2 * n**3 * iters / elapsed)
                    cpu_rates.append(2 * n**3 * iters / max(time.process_time() - cpu, 1e-9))
                    break
    return Ceiling(statistics.median(wall_rates), statistics.median(cpu_rates))


def measure_matmul_ceiling(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024,
                           seconds: float = 0.3) -> float:
    """FLOP per wall second of a square matmul: what the trainer's MFU is measured against."""
    return matmul_ceiling(device, dtype, n, seconds).per_wall_s


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MetricsLog:
    """Appends one JSON object per logged step; mirrors scalars to TensorBoard when it is installed."""

    def __init__(self, out_dir: str | Path, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
            except ImportError:
                self._tb = None

    def drop_from(self, step: int) -> None:
        """Forget the records of ``step`` and later (a resumed run writes them again), so that every step appears
        once. Rewritten atomically; a line that is not JSON (cut by a crash) is dropped too."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] < step:
                kept.append(line + "\n")
        atomic_write_text(self.path, "".join(kept), what="training output")

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        try:
            faults.maybe_fail("metrics_write", record["step"])
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise TrainingError(f"could not append step {record['step']} to {self.path} ({e.strerror or e}); the "
                                "checkpoints written so far are intact: free disk space or fix out_dir, then "
                                "resume=latest") from None
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
