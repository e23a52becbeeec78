"""Epsilon schedules (pure functions (epoch, step) -> eps) and learning-rate schedules, by name."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .registry import Registry

EpsSchedule = Callable[[int, int], float]
EPS_SCHEDULES: Registry[Callable[[float], float]] = Registry("eps schedule")
"""name -> ramp r(t) on t in [0, 1] with r(0) = 0 and r(1) = 1; `constant` is always at eps."""

EPS_SCHEDULES.register("constant")(lambda t: 1.0)
EPS_SCHEDULES.register("linear")(lambda t: t)
EPS_SCHEDULES.register("cosine")(lambda t: (1 - math.cos(math.pi * t)) / 2)


def make_eps_schedule(kind: str, eps: float, *, warmup_epochs: float = 0.0, steps_per_epoch: int = 1,
                      start: float = 0.0) -> EpsSchedule:
    """eps(epoch, step) = start + (eps - start) * r(t), t = min(1, (epoch + step / steps_per_epoch) / warmup).

    `constant` ignores the warm-up and always gives eps. Epochs count from 0, steps within an
    epoch from 0, so eps ramps smoothly across epoch boundaries.
    """
    ramp = EPS_SCHEDULES.get(kind)
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch={steps_per_epoch}: must be >= 1")
    if kind == "constant" or warmup_epochs <= 0:
        return lambda epoch, step: float(eps)

    def schedule(epoch: int, step: int) -> float:
        t = min(1.0, (epoch + step / steps_per_epoch) / warmup_epochs)
        return float(start + (eps - start) * ramp(t))

    return schedule


LRScheduleFactory = Callable[[torch.optim.Optimizer, int, Sequence[float], float], torch.optim.lr_scheduler.LRScheduler]
LR_SCHEDULES: Registry[LRScheduleFactory] = Registry("lr schedule")
"""name -> factory(optimizer, epochs, milestones, gamma) of a scheduler stepped once per epoch."""


@LR_SCHEDULES.register("step")
def step_lr(optimizer: torch.optim.Optimizer, epochs: int, milestones: Sequence[float], gamma: float):
    """Multiply the LR by gamma at each milestone, given as a fraction of the epochs."""
    at = sorted({max(1, round(f * epochs)) for f in milestones})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, at, gamma)


@LR_SCHEDULES.register("cosine")
def cosine_lr(optimizer: torch.optim.Optimizer, epochs: int, milestones: Sequence[float], gamma: float):
    """Cosine annealing from the initial LR to 0 over the epochs."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)


@LR_SCHEDULES.register("constant")
def constant_lr(optimizer: torch.optim.Optimizer, epochs: int, milestones: Sequence[float], gamma: float):
    """The initial LR throughout."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, [], gamma)


def make_lr_scheduler(optimizer: torch.optim.Optimizer, kind: str, epochs: int,
                      milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1):
    """The per-epoch LR schedule `kind` (a name in LR_SCHEDULES) for `optimizer`."""
    return LR_SCHEDULES.get(kind)(optimizer, epochs, milestones, gamma)
