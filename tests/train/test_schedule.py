"""Learning-rate schedules against their closed forms at hand-picked steps."""

import math

import pytest
import torch
from torch import nn

from evaclip.errors import ConfigError
from evaclip.train.schedule import LRSchedule


def test_cosine_closed_form_official() -> None:
    # warmup 4, total 14: the cosine runs over 10 steps after the warm-up.
    s = LRSchedule(total_steps=14, warmup_steps=4)
    assert s.factor(0) == pytest.approx(1 / 4)  # step 0 already has lr > 0: (step + 1) / warmup
    assert s.factor(2) == pytest.approx(3 / 4)
    assert s.factor(3) == pytest.approx(1.0)  # last warm-up step reaches the peak
    assert s.factor(4) == pytest.approx(1.0)  # first cosine step: cos(0)
    assert s.factor(9) == pytest.approx(0.5)  # half way: 0.5 * (1 + cos(pi / 2))
    assert s.factor(6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 10)))
    assert s.factor(13) == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 10)))  # last training step
    assert s.factor(14) == pytest.approx(0.0, abs=1e-12)
    assert s.factor(20) == pytest.approx(0.0, abs=1e-12)  # stays at the floor past the end


def test_no_warmup_and_min_lr_and_constant() -> None:
    assert LRSchedule(total_steps=10).factor(0) == pytest.approx(1.0)
    s = LRSchedule(total_steps=12, warmup_steps=2, min_lr_ratio=0.1)
    assert s.factor(0) == pytest.approx(0.5)
    assert s.factor(7) == pytest.approx(0.1 + 0.9 * 0.5)
    assert s.factor(12) == pytest.approx(0.1)
    c = LRSchedule(total_steps=5, warmup_steps=5, kind="constant")
    assert [c.factor(i) for i in (0, 4, 5, 100)] == pytest.approx([0.2, 1.0, 1.0, 1.0])


def test_apply_sets_base_lr_times_scale_per_group() -> None:
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD(
        [{"params": [a], "base_lr": 4e-4, "lr_scale": 0.81, "lr": 1.0}, {"params": [b], "lr": 5e-4}], lr=1.0
    )
    s = LRSchedule(total_steps=14, warmup_steps=4)
    assert s.apply(opt, 1) == pytest.approx(0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(4e-4 * 0.81 * 0.5)
    assert opt.param_groups[1]["lr"] == pytest.approx(5e-4 * 0.5)  # no base_lr: its first lr is the peak
    s.apply(opt, 9)  # stateless: any step, in any order (resume)
    assert opt.param_groups[0]["lr"] == pytest.approx(4e-4 * 0.81 * 0.5)
    assert opt.param_groups[1]["lr"] == pytest.approx(5e-4 * 0.5)
    s.apply(opt, 4)
    assert opt.param_groups[1]["lr"] == pytest.approx(5e-4)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(total_steps=10, warmup_steps=10),
        dict(total_steps=0),
        dict(total_steps=10, warmup_steps=-1),
        dict(total_steps=10, kind="linear"),
        dict(total_steps=10, min_lr_ratio=1.5),
    ],
)
def test_bad_schedules_raise(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        LRSchedule(**kwargs)


def test_negative_step_raises() -> None:
    with pytest.raises(ConfigError):
        LRSchedule(total_steps=3).factor(-1)
