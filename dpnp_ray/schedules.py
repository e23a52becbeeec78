"""Epsilon schedules (pure functions (epoch, step) -> eps) and the learning-rate schedule."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .registry import Registry

EpsSchedule = Callable[[int, int], float]
_RAMPS: Registry[Callable[[float], float]] = Registry("eps schedule")
"""name -> ramp r(t) on t in [0, 1] with r(0) = 0 and r(1) = 1."""

_RAMPS.register("constant")(lambda t: 1.0)
_RAMPS.register("linear")(lambda t: t)
_RAMPS.register("cosine")(lambda t: (1 - math.cos(math.pi * t)) / 2)

EPS_SCHEDULES = _RAMPS


def make_eps_schedule(kind: str, eps: float, *, warmup_epochs: float = 0.0, steps_per_epoch: int = 1,
                      start: float = 0.0) -> EpsSchedule:
    """eps(epoch, step) = start + (eps - start) * r(t), t = min(1, (epoch + step / steps_per_epoch) / warmup).

    `constant` ignores the warm-up and always gives eps. Epochs count from 0, steps within an
    epoch from 0, so eps ramps smoothly across epoch boundaries.
    """
    ramp = _RAMPS.get(kind)
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch={steps_per_epoch}: must be >= 1")
    if kind == "constant" or warmup_epochs <= 0:
        return lambda epoch, step: float(eps)

    def schedule(epoch: int, step: int) -> float:
        t = min(1.0, (epoch + step / steps_per_epoch) / warmup_epochs)
        return float(start + (eps - start) * ramp(t))

    return schedule


def make_lr_scheduler(optimizer: torch.optim.Optimizer, kind: str, epochs: int,
                      milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1):
    """Per-epoch LR schedule: `step` decays by gamma at the given fractions of the epochs."""
    if kind == "step":
        at = sorted({max(1, round(f * epochs)) for f in milestones})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, at, gamma)
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if kind == "constant":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, [], gamma)
    raise ValueError(f"lr schedule {kind!r}: allowed 'step', 'cosine', 'constant'")
