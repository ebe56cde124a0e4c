"""Runs in phases: the paper's three-phase EVA-CLIP-18B schedule and any recipe like it.

A phase is a number of steps and the settings it changes (data sources and weights, patch dropout), written as
overrides of the run config (:class:`~evaclip.train.config.PhaseSection`). One learning-rate schedule (warm-up
then cosine) spans the whole run: the paper reports one schedule over the 6B samples of EVA-CLIP-18B (Table 13),
of which the last 0.6B + 20M and 24M are the second and third phases (section 3). The trainer enters the phase
of the current step before each step; a checkpoint records the phase its data position belongs to, so a resume
inside a phase continues its data, and a resume at a phase's first step starts that phase's data afresh.
Sample keys (patch dropout, masks) continue over phases: a phase's positions start after the previous phases'.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from evaclip.errors import ConfigError
from evaclip.train.config import PHASE_KEYS, TrainConfig, apply_override


@dataclass(frozen=True)
class Phase:
    index: int
    name: str
    start: int  # first step
    steps: int

    @property
    def end(self) -> int:
        return self.start + self.steps


def check_phases(cfg: TrainConfig) -> None:
    """ConfigError unless every phase has steps, only changes what may change, and the phases fill ``steps``."""
    for i, phase in enumerate(cfg.phases):
        label = phase.name or f"phase {i}"
        if not isinstance(phase.steps, int) or phase.steps < 1:
            raise ConfigError(f"{label}: steps must be a positive integer, got {phase.steps!r}")
        if not 0.0 <= phase.video_share <= 1.0:
            raise ConfigError(f"{label}: video_share is a fraction in [0, 1], got {phase.video_share!r}")
        for assignment in phase.overrides:
            key = assignment.split("=", 1)[0].strip()
            if "=" not in assignment or not key.startswith(PHASE_KEYS):
                raise ConfigError(f"{label}: override {assignment!r} cannot change between phases; a phase may set "
                                  f"{', '.join(k + '...' if k.endswith('.') else k for k in PHASE_KEYS)}")
    total = sum(p.steps for p in cfg.phases)
    if total != cfg.steps:
        raise ConfigError(f"the phases add up to {total} steps but steps={cfg.steps}; a run in phases has the "
                          "steps of its phases (set each phase's steps, not steps)")


def phases(cfg: TrainConfig) -> list[Phase]:
    """The run's phases with their first steps (one phase for a config without phases)."""
    if not cfg.phases:
        return [Phase(0, "", 0, cfg.steps)]
    out, start = [], 0
    for i, p in enumerate(cfg.phases):
        out.append(Phase(i, p.name or f"phase {i}", start, p.steps))
        start += p.steps
    return out


def phase_at(cfg: TrainConfig, step: int) -> Phase:
    """The phase that trains ``step`` (the last one from its end on)."""
    for phase in phases(cfg):
        if step < phase.end:
            return phase
    return phases(cfg)[-1]


def phase_config(cfg: TrainConfig, index: int) -> TrainConfig:
    """The run config as phase ``index`` trains it: its overrides applied to a copy (no phases left in it)."""
    out = copy.deepcopy(cfg)
    out.phases = []
    if cfg.phases:
        for assignment in cfg.phases[index].overrides:
            apply_override(out, assignment)
        out.data.validate()
    return out
