"""Optimizers by name: factory(params, *, lr, momentum, nesterov, weight_decay) -> torch optimizer.

Every factory takes all the config's optimizer settings and uses those that apply to it.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from .registry import Registry

OptimizerFactory = Callable[..., torch.optim.Optimizer]
OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")


@OPTIMIZERS.register("sgd")
def sgd(params: Iterable[torch.nn.Parameter], *, lr: float, momentum: float, nesterov: bool,
        weight_decay: float) -> torch.optim.Optimizer:
    """SGD with (heavy-ball or, if nesterov and momentum > 0, Nesterov) momentum and L2 weight decay."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov and momentum > 0)


@OPTIMIZERS.register("adam")
def adam(params: Iterable[torch.nn.Parameter], *, lr: float, momentum: float, nesterov: bool,
         weight_decay: float) -> torch.optim.Optimizer:
    """Adam with L2 weight decay added to the gradient; momentum and nesterov do not apply."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
