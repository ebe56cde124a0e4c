"""``evaclip demo``: the paper's weak-to-strong loop (teacher EVA-CLIP -> MIM student -> student EVA-CLIP,
plus a from-scratch control at equal compute) on the offline data, with results.json, report.md and plots."""
from evaclip_demo.stages import FULL, QUICK, Budget, DemoOptions, run_demo

__all__ = ["Budget", "DemoOptions", "FULL", "QUICK", "run_demo"]
