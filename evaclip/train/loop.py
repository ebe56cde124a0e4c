"""The parts of the training loop that are not training: when to log, evaluate and checkpoint; step timing and
throughput; the data skip counts of all ranks; the per-rank sample trace; the progress bar; the run summary;
the signals that ask the run to stop at a step boundary.

:meth:`evaclip.train.trainer.Trainer.fit` calls them in order, once per step, so that the loop itself reads as
what happens to the model.
"""
from __future__ import annotations

import json
from collections import Counter
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaclip.data.decode import SKIP_REASONS
from evaclip.train.config import TrainConfig


@dataclass
class Cadence:
    """Which of the run's periodic jobs fall on a step (``step`` counts the steps done, from 1)."""

    steps: int
    log_every: int
    eval_every: int
    checkpoint_every: int

    @classmethod
    def of(cls, cfg: TrainConfig) -> "Cadence":
        return cls(cfg.steps, cfg.log_every, cfg.eval.every, cfg.checkpoint_every)

    def log(self, step: int, skipped: bool) -> bool:
        """A skipped step is always logged: it is rare and the reason to read the log."""
        return step % self.log_every == 0 or step == self.steps or skipped

    def evaluate(self, step: int) -> bool:
        return bool(self.eval_every) and (step % self.eval_every == 0 or step == self.steps)

    def checkpoint(self, step: int) -> bool:
        """A checkpoint inside the run; the last step's is :meth:`final_checkpoint`'s (before the export)."""
        return bool(self.checkpoint_every) and step % self.checkpoint_every == 0 and step < self.steps

    @property
    def final_checkpoint(self) -> bool:
        return bool(self.checkpoint_every)


class StepClock:
    """Wall time of the run and of each step, split into waiting for data and the rest, and the throughput
    (samples/s, share of the step spent waiting, MFU) that follows for the global batch."""

    def __init__(self, global_batch: int, flops_per_sample: float | None, ceiling: float | None, world_size: int,
                 flops_per_extra_frame: float = 0.0):
        self.global_batch, self.frame_flops = global_batch, flops_per_extra_frame
        self.flops, self.ceiling, self.world_size = flops_per_sample, ceiling, world_size
        self.wall_start = time.perf_counter()
        self.data_time = self.step_time = 0.0
        self._t0 = self._t1 = self.wall_start

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def batch_ready(self) -> None:
        self._t1 = time.perf_counter()

    def step_done(self, record: dict[str, Any]) -> None:
        """Close the step's timing and add its throughput to ``record``."""
        t2 = time.perf_counter()
        wait, total = self._t1 - self._t0, t2 - self._t0
        self.data_time += wait
        self.step_time += total
        record["samples_per_s"] = self.global_batch / max(total, 1e-9)
        record["data_wait"] = wait / max(total, 1e-9)
        if self.flops and self.ceiling:  # the model's FLOP rate over the peak of every rank's device
            # A clip costs a vision pass per frame: its frames beyond the first are counted on top.
            step_flops = self.flops * self.global_batch + self.frame_flops * record.get("extra_frames", 0)
            record["mfu"] = step_flops / max(total, 1e-9) / (self.ceiling * self.world_size)

    def totals(self) -> dict[str, float]:
        return {"wall_s": time.perf_counter() - self.wall_start,
                "data_wait_share": self.data_time / self.step_time if self.step_time else 0.0}


class SkipCounts:
    """The samples the data loaders of all ranks dropped (unreadable, too large, ...). Reading them is a
    collective: every rank must ask on the same steps."""

    def __init__(self, loader: Any, carried: Counter | None = None):
        self.loader = loader  # None with batches fed by the caller: nothing is skipped then
        self.carried = carried if carried is not None else Counter()  # the loaders of earlier phases

    def add_to(self, record: dict[str, Any]) -> None:
        if self.loader is None:
            return
        skips = self._global()
        record["skipped_samples"] = sum(n for k, n in skips.items() if k in SKIP_REASONS)
        record.update({f"skip/{k}": v for k, v in skips.items()})

    def add_to_summary(self, summary: dict[str, Any]) -> None:
        if self.loader is not None:  # every rank's skips, as in metrics.jsonl
            summary["skipped_samples"] = self._global()

    def _global(self) -> dict[str, int]:
        from evaclip.data.pipeline import global_skip_counts
        return global_skip_counts(self.loader.skip_counts + self.carried)


class SampleTrace:
    """With ``trace_samples``: the keys of every sample each rank trained on, one JSON line per step in
    ``samples_rank{r}.jsonl`` (to check that ranks and resumes neither repeat nor lose samples)."""

    def __init__(self, out_dir: Path, rank: int, enabled: bool):
        self.path = out_dir / f"samples_rank{rank}.jsonl" if enabled else None

    def write(self, step: int, info: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "keys": list(info.get("keys", []))}) + "\n")


class Progress:
    """A tqdm bar on rank 0 with loss, lr, throughput and MFU; nothing elsewhere or when turned off."""

    def __init__(self, enabled: bool, total: int, initial: int, desc: str):
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)

    def update(self, record: dict[str, Any]) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        post = {"loss": f"{record['loss']:.3f}", "lr": f"{record['lr']:.2e}",
                "sps": f"{record['samples_per_s']:.1f}", "wait": f"{record['data_wait']:.0%}"}
        if "mfu" in record:
            post["mfu"] = f"{record['mfu']:.2f}"
        self.bar.set_postfix(post, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StopRequest:
    """Preemption: the signals that ask a run to stop at the next step boundary with a checkpoint.

    The handler only records the signal; the trainer reads :attr:`requested` at each step's one collective, so
    every rank stops after the same step even when the signal reached only some of them. Handlers can only be
    installed from the main thread; elsewhere (a run started from a worker thread) signals keep their default.
    A second signal while stopping is ignored (the checkpoint being written is protected by its atomic rename
    anyway), except a second Ctrl-C, which stops at once.
    """

    def __init__(self, names: list[str]):
        self.names = [*names, "SIGINT"]
        self.signal: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for name in self.names:
                sig = getattr(signal, name)
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal is not None:
            if name == "SIGINT":
                raise KeyboardInterrupt
            return
        self.signal = name
        more = " (Ctrl-C again to stop at once, losing the steps since the last checkpoint)" if name == "SIGINT" else ""
        print(f"{name} received: the run stops after this step with a checkpoint{more}", file=sys.stderr, flush=True)
