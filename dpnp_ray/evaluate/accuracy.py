"""Accuracy of a model on a split, clean or under an attack, sharded across workers.

Every rank evaluates its own slice of the split and the correct counts are summed, so the
result is the accuracy on the whole split whatever the number of workers.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..attacks import eval_mode, fgsm, pgd
from ..data import Split, to_float
from ..distributed import LocalEnvironment
from ..devices import Precision

Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
"""attack(model, x, y, generator) -> x_adv, with the model already in eval mode."""


def subsample(split: Split, n: int, seed: int = 0) -> Split:
    """A fixed random subset of n points (n = 0 or n >= len: the whole split)."""
    if n <= 0 or n >= len(split):
        return split
    index = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return Split(split.images[index], split.labels[index])


def shard(split: Split, rank: int, world_size: int) -> Split:
    """This rank's contiguous slice of the split (slices of all ranks cover it exactly once)."""
    n = len(split)
    lo, hi = n * rank // world_size, n * (rank + 1) // world_size
    return Split(split.images[lo:hi], split.labels[lo:hi])


def correct_counts(net: nn.Module, split: Split, attack: Attack | None, *, env: LocalEnvironment,
                   batch_size: int, precision: Precision, seed: int = 0) -> tuple[int, int]:
    """(correct, total) over the whole split, summed across ranks; the model runs in eval mode.

    On a GPU, set batch_size as large as you like: a batch that runs out of device memory is
    retried at half the size (same random state), so evaluation runs at the largest size that fits.
    """
    local = shard(split, env.rank, env.world_size)
    generator = torch.Generator(device=env.device).manual_seed(seed * 7919 + env.rank)
    correct = torch.zeros((), dtype=torch.long, device=env.device)
    with eval_mode(net):
        lo = 0
        while lo < len(local):
            state = generator.get_state()
            try:
                correct += _batch_correct(net, local, lo, batch_size, attack, env.device, generator, precision)
            except torch.OutOfMemoryError:
                if env.device.type != "cuda" or batch_size == 1:
                    raise
                batch_size //= 2
                torch.cuda.empty_cache()
                generator.set_state(state)
                warnings.warn(f"correct_counts: out of device memory, retrying at batch_size={batch_size}",
                              RuntimeWarning, stacklevel=2)
                continue
            lo += batch_size
    counts = env.all_reduce_sum(torch.stack([correct, torch.tensor(len(local), device=env.device)]))
    return int(counts[0]), int(counts[1])


def _batch_correct(net: nn.Module, local: Split, lo: int, batch_size: int, attack: Attack | None,
                   device: torch.device, generator: torch.Generator, precision: Precision) -> torch.Tensor:
    x = to_float(local.images[lo:lo + batch_size].to(device, non_blocking=True))
    y = local.labels[lo:lo + batch_size].to(device, non_blocking=True)
    if attack is not None:
        x = attack(net, x, y, generator)
    with torch.no_grad(), precision.autocast():
        return (net(x).argmax(1) == y).sum()


def pgd_attack(eps: float, step_size: float, steps: int, precision: Precision, *, restarts: int = 1,
               loss: str = "ce", early_stop: bool = True) -> Attack:
    """PGD for robust-accuracy evaluation. early_stop (the default) counts a point as broken at the
    first iterate that misclassifies it and stops attacking it: never weaker than plain PGD on the
    same seed, and cheaper (see attacks.pgd). Training never goes through here."""
    def attack(net: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        with precision.autocast():
            return pgd(net, x, y, eps=eps, step_size=step_size, steps=steps, loss=loss, restarts=restarts,
                       generator=generator, early_stop=early_stop)

    return attack


def fgsm_attack(eps: float, precision: Precision, *, loss: str = "ce") -> Attack:
    def attack(net: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        with precision.autocast():
            return fgsm(net, x, y, eps=eps, loss=loss)

    return attack


@dataclass(frozen=True)
class EvalResult:
    """One row of evals.parquet: an attack at one eps on n points."""

    attack: str
    eps: float
    steps: int
    restarts: int
    n: int
    accuracy: float
    split: str = "test"
    loss: str = "ce"
    suite: str = "basic"

    def as_row(self) -> dict:
        return dict(self.__dict__)


def evaluate_attack(net: nn.Module, split: Split, *, name: str, attack: Attack | None, eps: float, steps: int,
                    restarts: int, env: LocalEnvironment, batch_size: int, precision: Precision,
                    split_name: str = "test", loss: str = "ce", seed: int = 0) -> EvalResult:
    correct, total = correct_counts(net, split, attack, env=env, batch_size=batch_size, precision=precision, seed=seed)
    return EvalResult(name, eps, steps, restarts, total, correct / max(total, 1), split_name, loss)
