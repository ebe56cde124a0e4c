"""Step-based learning-rate schedules (the official ``warmup_cosine_lr`` and two variants).

The schedule is a pure function of the step, so a resumed run needs no scheduler state: call
``schedule.apply(optimizer, step)`` before each optimizer step. Each parameter group gets
``group["base_lr"] * group["lr_scale"] * factor(step)``, with ``base_lr`` the peak lr of its tower and
``lr_scale`` its layer-decay scale (both set by :func:`evaclip.train.optim.param_groups`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from evaclip.errors import ConfigError

SCHEDULE_KINDS = ("cosine", "constant")


@dataclass(frozen=True)
class LRSchedule:
    """Linear warm-up ``(step + 1) / warmup_steps`` then, for ``kind="cosine"``, a half cosine from the peak
    down to ``min_lr_ratio * peak`` at ``total_steps``, or, for ``kind="constant"``, the peak.

    ``min_lr_ratio`` is a fraction of each group's own peak (groups have different peaks under layer decay,
    so one absolute floor would not fit them all); 0 reproduces the official schedule.
    """

    total_steps: int
    warmup_steps: int = 0
    kind: str = "cosine"
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ConfigError(f"unknown lr schedule {self.kind!r}; choose one of {', '.join(SCHEDULE_KINDS)}")
        if self.warmup_steps < 0 or self.total_steps < 1:
            raise ConfigError(
                f"lr schedule needs warmup_steps >= 0 and total_steps >= 1, got {self.warmup_steps} and "
                f"{self.total_steps}"
            )
        if self.kind == "cosine" and self.total_steps <= self.warmup_steps:
            raise ConfigError(
                f"cosine schedule: total_steps ({self.total_steps}) must exceed warmup_steps "
                f"({self.warmup_steps}); lower the warm-up or train longer"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")

    def factor(self, step: int) -> float:
        """Multiplier of the peak lr at 0-based optimizer step ``step``."""
        if step < 0:
            raise ConfigError(f"lr schedule step must be >= 0, got {step}")
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        # Past total_steps stay at the floor instead of climbing back up the cosine.
        progress = min(step - self.warmup_steps, self.total_steps - self.warmup_steps)
        progress /= self.total_steps - self.warmup_steps
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's lr for ``step`` and return the factor (log ``peak lr * factor`` as the lr)."""
        f = self.factor(step)
        for group in optimizer.param_groups:
            base_lr = group.get("base_lr")
            if base_lr is None:
                # Groups not built by param_groups: remember their initial lr as the peak.
                base_lr = group["base_lr"] = group["lr"]
            group["lr"] = base_lr * group.get("lr_scale", 1.0) * f
        return f
