"""What a search searches and how: the Optuna search space (define-by-run), its objectives, samplers and the
ASHA rule. No Ray: the study spec (spec.py), the plan and the study file check against it before Ray starts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import optuna

from ..config import ExperimentConfig, field_choices
from ..methods import loss_weights
from ..ray_train import STOP_LATENCY_EPOCHS
from ..registry import Registry
from .settings import StudyError

OBJECTIVES = {"multi": (["val_clean_acc", "val_robust_acc"], ["max", "max"]),
              "robust": ("val_robust_acc", "max"), "clean": ("val_clean_acc", "max")}


@dataclass(frozen=True)
class SearchSpace:
    """Ranges of the searched fields; eps is searched as a fraction of the threat model's eps."""

    lambda_ppa: tuple[float, float] = (1e-3, 1.0)
    lambda_npr: tuple[float, float] = (1e-3, 1.0)
    lambda_cons: tuple[float, float] = (0.1, 10.0)
    beta_adv: tuple[float, float] = (0.25, 2.0)
    prototype_radius: tuple[float, float] = (1.0, 10.0)
    eps_fraction: tuple[float, float] = (0.5, 1.0)
    warmup_fraction: tuple[float, float] = (0.1, 0.5)  # of the epochs
    search_switches: bool = True
    # searched only in an equal-budget comparison of methods (sample_method): the optimiser, the baselines' weights
    lr: tuple[float, float] = (0.01, 0.2)
    weight_decay: tuple[float, float] = (1e-5, 1e-3)
    trades_beta: tuple[float, float] = (1.0, 12.0)
    mart_beta: tuple[float, float] = (1.0, 12.0)

    def sample(self, trial, threat_eps: float, epochs: int) -> None:
        """Suggest every parameter on an Optuna trial (define-by-run)."""
        choices = field_choices()
        for term, weight in (("use_ppa", "lambda_ppa"), ("use_npr", "lambda_npr"),
                             ("use_consistency", "lambda_cons")):
            on = trial.suggest_categorical(term, [True, False]) if self.search_switches else True
            if on:
                trial.suggest_float(weight, *getattr(self, weight), log=True)
        trial.suggest_float("beta_adv", *self.beta_adv)
        trial.suggest_float("prototype_radius", *self.prototype_radius, log=True)
        if self.search_switches:
            trial.suggest_categorical("prototype_update", list(choices["prototype_update"]))
        schedule = trial.suggest_categorical("eps_schedule", list(choices["eps_schedule"]))
        if schedule != "constant":
            lo, hi = self.warmup_fraction
            trial.suggest_float("eps_warmup_epochs", max(lo * epochs, 0.1), max(hi * epochs, 0.2))
        trial.suggest_float("eps", *self.eps_range(threat_eps))

    def eps_range(self, threat_eps: float) -> tuple[float, float]:
        """The searched training eps: eps_fraction of the threat model's eps."""
        return self.eps_fraction[0] * threat_eps, self.eps_fraction[1] * threat_eps

    def default_point(self, base: ExperimentConfig) -> dict[str, Any]:
        """The base config expressed as a point of this space: the first trial evaluates it."""
        point: dict[str, Any] = {}
        for term, weight in (("use_ppa", "lambda_ppa"), ("use_npr", "lambda_npr"),
                             ("use_consistency", "lambda_cons")):
            if self.search_switches:
                point[term] = getattr(base, term)
            if getattr(base, term):
                lo, hi = getattr(self, weight)
                point[weight] = min(max(getattr(base, weight), lo), hi)
        point["beta_adv"] = min(max(base.beta_adv, self.beta_adv[0]), self.beta_adv[1])
        point["prototype_radius"] = min(max(base.prototype_radius, self.prototype_radius[0]), self.prototype_radius[1])
        if self.search_switches:
            point["prototype_update"] = base.prototype_update
        point["eps_schedule"] = base.eps_schedule
        if base.eps_schedule != "constant":
            point["eps_warmup_epochs"] = base.eps_warmup_epochs
        lo, hi = self.eps_range(base.eval_eps)
        point["eps"] = min(max(base.eps, lo), hi)
        return point

    def method_params(self, cfg: ExperimentConfig) -> tuple[tuple[str, tuple[float, float], bool], ...]:
        """(field, bounds, log-uniform) of what a comparison of methods searches for cfg.method, in this order:
        SHARED_PARAMS and, for an adversarial method, the training eps (eps_range), the same for every method,
        then the loss weights its loss reads (methods.loss_weights under cfg's switches)."""
        shared = [(name, getattr(self, name), True) for name in SHARED_PARAMS]
        eps = [("eps", self.eps_range(cfg.eval_eps), False)] if cfg.is_adversarial else []
        own = [(name, getattr(self, name), name not in LINEAR_PARAMS)
               for name in loss_weights(cfg.method, cfg.to_dict())]
        return tuple(shared + eps + own)

    def sample_method(self, trial, cfg: ExperimentConfig) -> None:
        """Suggest one trial of cfg.method's search in a comparison of methods (define-by-run, no switches)."""
        for name, (lo, hi), log in self.method_params(cfg):
            trial.suggest_float(name, lo, hi, log=log)

    def method_default_point(self, cfg: ExperimentConfig) -> dict[str, Any]:
        """cfg as a point of cfg.method's space (clamped into it): each method's first trial."""
        return {name: min(max(getattr(cfg, name), lo), hi) for name, (lo, hi), _ in self.method_params(cfg)}


SHARED_PARAMS = ("lr", "weight_decay")
"""What a comparison of methods searches log-uniformly for every method, in the same ranges (and the training eps,
uniformly, for an adversarial one)."""
LINEAR_PARAMS = ("beta_adv",)
"""Loss weights sampled uniformly; every other one log-uniformly."""


@dataclass(frozen=True)
class AshaSettings:
    """ASHA early stopping as run_search uses it (Tune's AsyncHyperBandScheduler), in epochs done."""

    grace_period: int  # the first rung
    reduction_factor: float  # each rung keeps 1 / reduction_factor of the trials that reach it
    max_t: int  # the last rung: a stop decided there still takes effect before the last epoch
    metric: str = "val_robust_acc"  # one scalar, even when the search has two objectives


def asha_settings(epochs: int) -> AshaSettings | None:
    """The scheduler settings of a search of `epochs` epochs: rungs after max(1, epochs // 8) epochs and
    then every 3x as many, each keeping the best third. A stop reaches a trial during the epoch after
    its rung (STOP_LATENCY_EPOCHS), so a trial stopped at the first rung of an 8-epoch search trains 2
    epochs, and the last rung is at most epochs - 1 - STOP_LATENCY_EPOCHS epochs done: every stop leaves
    at least one epoch untrained (a later one is dropped by the trial, ray_train.honours_stop). None
    (no early stopping) when no rung fits, i.e. under 3 epochs. Expected share
    of the epochs of the full search (dpnp_ray.study.cost.asha_expected_epochs): 39% at 8 epochs, 28%
    at 100, against 59% at 8 epochs for rungs every 2x from epochs // 4. Measured by bench/asha.py
    (bench/README.md)."""
    grace, last = max(1, epochs // 8), epochs - 1 - STOP_LATENCY_EPOCHS
    return AshaSettings(grace_period=grace, reduction_factor=3, max_t=last) if last >= grace else None


SAMPLERS: Registry[Callable[[int], optuna.samplers.BaseSampler]] = Registry("sampler")
"""name -> factory(seed) of the Optuna sampler (--sampler)."""
SAMPLERS.register("tpe")(lambda seed: optuna.samplers.TPESampler(multivariate=True, group=True, seed=seed))
SAMPLERS.register("nsga2")(lambda seed: optuna.samplers.NSGAIISampler(seed=seed))
SAMPLERS.register("gp")(lambda seed: optuna.samplers.GPSampler(seed=seed))
SAMPLERS.register("random")(lambda seed: optuna.samplers.RandomSampler(seed=seed))


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The seeded sampler `--sampler name` asks for; a StudyError lists the known names."""
    if name not in SAMPLERS:
        raise StudyError(f"--sampler {name!r}: allowed {', '.join(SAMPLERS.names())}")
    return SAMPLERS.get(name)(seed)
