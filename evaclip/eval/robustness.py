"""Table 6a: the average over ImageNet-1K/-A/-R/-V2/-Sketch and ObjectNet, and its gap to ImageNet-1K."""
from __future__ import annotations

import math

from evaclip.eval.catalog import ROBUSTNESS


def robustness_summary(acc1: dict[str, float]) -> dict[str, float]:
    """``{"avg": mean top-1 over the 6 sets, "delta": ImageNet-1K top-1 - avg}``; NaN if a set is missing
    (the paper's "∆↓": lower means the model loses less off ImageNet)."""
    values = [acc1.get(name, float("nan")) for name in ROBUSTNESS]
    if any(math.isnan(v) for v in values):
        return {"avg": float("nan"), "delta": float("nan")}
    avg = sum(values) / len(values)
    return {"avg": avg, "delta": acc1["imagenet1k"] - avg}
