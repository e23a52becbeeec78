"""Accuracy of a model on a split, clean or under an attack, sharded across workers.

Every rank evaluates its own slice of the split (`shard`) and per-point results or correct counts
are summed across ranks, so the result is the accuracy on the whole split whatever the number of
workers. The attacks' random starts come from one generator per rank, seeded `seed * 7919 + rank`,
drawn batch by batch in order: the same attack on the same points gives the same per-point results
whether they are counted (`correct_counts`) or kept per point (`correct_per_point`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..attacks import PrototypeScores, eval_mode, fgsm, pgd, rival_targets, targeted_pgd
from ..data import Split, to_float
from ..devices import Precision
from ..distributed import LocalEnvironment

Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
"""attack(model, x, y, generator) -> x_adv, with the model already in eval mode."""

# ------------------------------------------------------------------------------- point sets


def subsample_index(total: int, n: int, seed: int = 0) -> torch.Tensor:
    """The sorted positions of `subsample`'s points among `total` points."""
    if n <= 0 or n >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def subsample(split: Split, n: int, seed: int = 0) -> Split:
    """A fixed random subset of n points (n = 0 or n >= len: the whole split)."""
    if n <= 0 or n >= len(split):
        return split
    index = subsample_index(len(split), n, seed)
    return Split(split.images[index], split.labels[index])


def shard(split: Split, rank: int, world_size: int) -> Split:
    """This rank's contiguous slice of the split (slices of all ranks cover it exactly once)."""
    n = len(split)
    lo, hi = n * rank // world_size, n * (rank + 1) // world_size
    return Split(split.images[lo:hi], split.labels[lo:hi])


def local_points(split: Split, env: LocalEnvironment) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's `shard` of the split on its device: (float images in [0, 1], labels)."""
    part = shard(split, env.rank, env.world_size)
    return to_float(part.images.to(env.device)), part.labels.to(env.device)


def gather(local: torch.Tensor, total: int, env: LocalEnvironment) -> torch.Tensor:
    """Rows of this rank's `shard` slice -> the (total, ...) tensor of all ranks (a sum of zero-padded
    copies, so every rank gets it with one all-reduce)."""
    lo = total * env.rank // env.world_size
    full = torch.zeros((total, *local.shape[1:]), dtype=local.dtype, device=env.device)
    full[lo:lo + len(local)] = local.to(env.device)
    return env.all_reduce_sum(full)


def gather_flags(local: torch.Tensor, total: int, env: LocalEnvironment) -> torch.Tensor:
    """`gather` for per-point booleans."""
    return gather(local.to(torch.long), total, env).bool()


def fraction(flags: torch.Tensor) -> float:
    """The fraction of True flags (NaN for no points)."""
    return int(flags.sum()) / len(flags) if len(flags) else float("nan")


# ------------------------------------------------------------------------ per-point correctness


def attack_generator(device: torch.device, seed: int, rank: int = 0) -> torch.Generator:
    """The generator of the evaluation attacks' random starts on one rank (one per call, batches in order)."""
    return torch.Generator(device=device).manual_seed(seed * 7919 + rank)


def correct_per_point(net: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack | None, *,
                      env: LocalEnvironment, batch_size: int, precision: Precision, seed: int = 0,
                      features: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per point of this rank's (x, y): is the model right on it, clean or after `attack`? With
    `features`, also the features the head saw (fp32). The caller puts the model in eval mode.

    x may be uint8 or float, on any device; batches go to env.device. On a GPU, set batch_size as
    large as you like: a batch that runs out of device memory is retried at half the size (same
    random state), so evaluation runs at the largest size that fits.
    """
    generator = attack_generator(env.device, seed, env.rank)
    flags, feats = [], []
    lo = 0
    while lo < len(x):
        state = generator.get_state()
        try:
            ok, z = _batch_correct(net, x[lo:lo + batch_size], y[lo:lo + batch_size], attack, env.device,
                                   generator, precision, features)
        except torch.OutOfMemoryError:
            if env.device.type != "cuda" or batch_size == 1:
                raise
            batch_size //= 2
            torch.cuda.empty_cache()
            generator.set_state(state)
            warnings.warn(f"evaluation: out of device memory, retrying at batch_size={batch_size}",
                          RuntimeWarning, stacklevel=2)
            continue
        flags.append(ok)
        if z is not None:
            feats.append(z)
        lo += batch_size
    empty = torch.zeros(0, dtype=torch.bool, device=env.device)
    return (torch.cat(flags) if flags else empty), (torch.cat(feats) if feats else None)


def _batch_correct(net: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack | None, device: torch.device,
                   generator: torch.Generator, precision: Precision, features: bool
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    x = to_float(x.to(device, non_blocking=True))
    y = y.to(device, non_blocking=True)
    if attack is not None:
        x = attack(net, x, y, generator)
    with torch.no_grad(), precision.autocast():
        if not features:
            return net(x).argmax(1) == y, None
        z = net.features(x)
        return net.head(z).argmax(1) == y, z.float()


def correct_counts(net: nn.Module, split: Split, attack: Attack | None, *, env: LocalEnvironment,
                   batch_size: int, precision: Precision, seed: int = 0) -> tuple[int, int]:
    """(correct, total) over the whole split, summed across ranks; the model runs in eval mode. On a GPU,
    batch_size can be as large as you like (`correct_per_point` retries smaller on out-of-memory)."""
    local = shard(split, env.rank, env.world_size)
    with eval_mode(net):
        flags, _ = correct_per_point(net, local.images, local.labels, attack, env=env, batch_size=batch_size,
                                     precision=precision, seed=seed)
    counts = env.all_reduce_sum(torch.stack([flags.sum(), torch.tensor(len(local), device=env.device)]))
    return int(counts[0]), int(counts[1])


# ---------------------------------------------------------------------------------- attacks


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


def decision_scores(net: nn.Module) -> nn.Module:
    """What the attacks that know the model attack: a prototype classifier's distances to its prototypes
    (`attacks.PrototypeScores`), any other model's logits."""
    return PrototypeScores(net) if getattr(net, "has_prototypes", False) else net


def prototype_margin_attack(eps: float, step_size: float, steps: int, precision: Precision, *,
                            restarts: int = 1) -> Attack:
    """The feature-space attack: early-stopping PGD on the input maximizing ||z - c_y||^2 - min_{k != y}
    ||z - c_k||^2 (`attacks.prototype_margin`). Prototype classifiers only."""
    def attack(net: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not getattr(net, "has_prototypes", False):
            raise TypeError(f"the prototype-margin attack needs a prototype head, not {type(net.head).__name__}")
        with precision.autocast():
            return pgd(PrototypeScores(net), x, y, eps=eps, step_size=step_size, steps=steps, loss="cw",
                       restarts=restarts, generator=generator, early_stop=True)

    return attack


def targeted_rivals_attack(eps: float, step_size: float, steps: int, precision: Precision, *, rivals: int,
                           restarts: int = 1) -> Attack:
    """Targeted early-stopping PGD towards each of the `rivals` nearest rival prototypes (a linear head:
    the top rival logits), ranked at the clean point; a point counts as broken if any target breaks it
    (`attacks.targeted_pgd` on `decision_scores`)."""
    def attack(net: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        model = decision_scores(net)
        with precision.autocast():
            with torch.no_grad():
                targets = rival_targets(model(x), y, rivals)
            return targeted_pgd(model, x, y, targets, eps=eps, step_size=step_size, steps=steps, restarts=restarts,
                                generator=generator)

    return attack


# ------------------------------------------------------------------------- per-point worst case


@dataclass(frozen=True)
class PointFlags:
    """One attack's per-point results on a point set it covered (part of it, for some attacks): the
    positions of its points in the set and, for each, whether the model was still right."""

    index: torch.Tensor
    ok: torch.Tensor

    @property
    def accuracy(self) -> float:
        return fraction(self.ok)


def worst_case(flags: Mapping[str, PointFlags], n: int) -> torch.Tensor:
    """Per point of a set of n: right under every attack that ran on it (the per-point worst case). On the
    points an attack ran on, the worst case is therefore never more accurate than that attack."""
    device = next((f.ok.device for f in flags.values()), torch.device("cpu"))
    ok = torch.ones(n, dtype=torch.bool, device=device)
    for f in flags.values():
        index = f.index.to(device)
        ok[index] = ok[index] & f.ok.to(device)
    return ok


# ------------------------------------------------------------------------------ evals rows


def eval_row(attack: str, *, eps: float, steps: int, restarts: int, n: int, accuracy: float, split: str = "test",
             loss: str = "ce", suite: str = "basic", norm: str = "Linf", **extra: Any) -> dict[str, Any]:
    """One row of evals.parquet, without the key columns (study, trial_id, variant, seed). `norm`: the
    threat model's norm (eps is its radius): Linf, or L2.

    `extra` adds columns some attacks have: `version` (AutoAttack), `step_size` (PGD at a scaled eps).
    """
    return {"attack": attack, "eps": float(eps), "steps": int(steps), "restarts": int(restarts), "n": int(n),
            "accuracy": float(accuracy), "split": split, "loss": loss, "suite": suite, "norm": norm, **extra}


@dataclass(frozen=True)
class EvalResult:
    """An attack at one eps on n points (accuracy = correct / n): one row of evals.parquet."""

    attack: str
    eps: float
    steps: int
    restarts: int
    n: int
    accuracy: float
    split: str = "test"
    loss: str = "ce"
    suite: str = "basic"

    def as_row(self, suite: str | None = None) -> dict[str, Any]:
        """The evals row; `suite` names the suite level that produced it (default: self.suite)."""
        return eval_row(self.attack, eps=self.eps, steps=self.steps, restarts=self.restarts, n=self.n,
                        accuracy=self.accuracy, split=self.split, loss=self.loss, suite=suite or self.suite)

