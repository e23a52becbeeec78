"""One trial end to end: train, select on validation, evaluate on the test set.

`run_experiment(cfg)` is the single-process entry point (tests, debugging a config);
the Ray worker calls the same function with its own environment and callbacks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .config import ExperimentConfig
from .data import DatasetSplits
from .environment import LocalEnvironment
from .evaluate import EvalResult, evaluate_attack, fgsm_attack, pgd_attack, subsample
from .runtime import Precision, resolve_device
from .train import EpochCallback, TrainResult, load_data, train


@dataclass
class ExperimentResult:
    config: ExperimentConfig
    train: TrainResult
    evals: list[EvalResult]
    summary: dict[str, Any] = field(default_factory=dict)


def test_evaluation(net, data: DatasetSplits, cfg: ExperimentConfig, env: LocalEnvironment,
                    precision: Precision) -> list[EvalResult]:
    """Clean, FGSM, PGD-k (CE) and CW-inf (PGD on the C&W margin) at the threat model's eps."""
    test = subsample(data.test, cfg.eval_n)
    common = dict(env=env, batch_size=cfg.eval_batch_size, precision=precision, seed=cfg.seed)
    eps, step, k, restarts = cfg.eps, cfg.eval_step, cfg.eval_attack_steps, cfg.eval_restarts
    return [
        evaluate_attack(net, test, name="clean", attack=None, eps=0.0, steps=0, restarts=0, **common),
        evaluate_attack(net, test, name="fgsm", attack=fgsm_attack(eps, precision), eps=eps, steps=1,
                        restarts=1, **common),
        evaluate_attack(net, test, name="pgd", attack=pgd_attack(eps, step, k, precision, restarts=restarts),
                        eps=eps, steps=k, restarts=restarts, **common),
        evaluate_attack(net, test, name="cw_inf",
                        attack=pgd_attack(eps, step, k, precision, restarts=restarts, loss="cw"),
                        eps=eps, steps=k, restarts=restarts, loss="cw", **common),
    ]


def summarize(evals: list[EvalResult], result: TrainResult) -> dict[str, Any]:
    by_name = {e.attack: e.accuracy for e in evals}
    best = next((r for r in result.history if r["epoch"] == result.best_epoch), {})
    return {
        "clean_acc": by_name.get("clean"), "fgsm_acc": by_name.get("fgsm"), "pgd_acc": by_name.get("pgd"),
        "cw_acc": by_name.get("cw_inf"), "eval_n": evals[0].n if evals else 0,
        "best_epoch": result.best_epoch, "epochs_run": len(result.history), "stopped_early": result.stopped_early,
        "val_clean_acc": best.get("val_clean_acc"), "val_robust_acc": best.get("val_robust_acc"),
        "precision": result.precision,
    }


def run_experiment(cfg: ExperimentConfig, *, env: LocalEnvironment | None = None, data: DatasetSplits | None = None,
                   resume: dict[str, Any] | None = None, on_epoch: EpochCallback | None = None,
                   log: Callable[[str], None] | None = print) -> ExperimentResult:
    cfg = cfg.resolved()
    env = env or LocalEnvironment(resolve_device(cfg.device))
    data = data or load_data(cfg)
    started = time.perf_counter()
    result = train(cfg, env=env, data=data, resume=resume, on_epoch=on_epoch, log=log)
    train_seconds = time.perf_counter() - started
    evals = test_evaluation(result.net, data, cfg, env, Precision.choose(cfg.precision, env.device))
    summary = summarize(evals, result)
    summary.update(train_seconds=train_seconds, eval_seconds=time.perf_counter() - started - train_seconds)
    if log is not None and env.is_main:
        log("test: " + "  ".join(f"{e.attack} {e.accuracy:.3f}" for e in evals) + f"  (n={summary['eval_n']})")
    return ExperimentResult(cfg, result, evals, summary)
