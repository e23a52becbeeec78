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
from .devices import Precision, resolve_device
from .distributed import LocalEnvironment
from .evaluate import check_inputs, run_suite
from .factory import load_data
from .training_loop import EpochCallback, TrainResult, train


@dataclass
class ExperimentResult:
    """A finished trial: the trained model and its evaluation-suite rows (without the key columns)."""

    config: ExperimentConfig
    train: TrainResult
    evals: list[dict[str, Any]]  # evals.parquet rows; the first four are clean, fgsm, pgd, cw_inf
    summary: dict[str, Any] = field(default_factory=dict)
    corruptions: list[dict[str, Any]] = field(default_factory=list)
    geometry: list[dict[str, Any]] = field(default_factory=list)
    masking: list[dict[str, Any]] = field(default_factory=list)
    points: list[tuple[int, Any, Any]] = field(default_factory=list)  # per evals row: test positions, correct

    def points_frame(self, keys: dict[str, Any] | None = None):
        """Per-point results of every evals row, in points.parquet's schema (results.points_frame)."""
        from .results import points_frame

        return points_frame(self.evals, self.points, keys)


def summary_metrics(evals: list[dict[str, Any]], result: TrainResult) -> dict[str, Any]:
    """The headline test accuracies and the selected epoch's validation accuracies, for trials.parquet."""
    by_name: dict[str, float] = {}
    for row in evals:  # the first row of each attack: the threat-model evaluation (later ones vary eps/steps)
        by_name.setdefault(row["attack"], row["accuracy"])
    best = next((r for r in result.history if r["epoch"] == result.best_epoch), {})
    return {
        "clean_acc": by_name.get("clean"), "fgsm_acc": by_name.get("fgsm"), "pgd_acc": by_name.get("pgd"),
        "cw_acc": by_name.get("cw_inf"), "eval_n": evals[0]["n"] if evals else 0,
        "best_epoch": result.best_epoch, "epochs_run": len(result.history), "stopped_early": result.stopped_early,
        "val_clean_acc": best.get("val_clean_acc"), "val_robust_acc": best.get("val_robust_acc"),
        "precision": result.precision,
    }


def run_experiment(cfg: ExperimentConfig, *, env: LocalEnvironment | None = None, data: DatasetSplits | None = None,
                   resume: dict[str, Any] | None = None, on_epoch: EpochCallback | None = None,
                   log: Callable[[str], None] | None = print) -> ExperimentResult:
    cfg = cfg.resolved()
    check_inputs(cfg)  # before training: a suite input that cannot work should not cost a training run
    env = env or LocalEnvironment(resolve_device(cfg.device))
    data = data or load_data(cfg)
    started = time.perf_counter()
    result = train(cfg, env=env, data=data, resume=resume, on_epoch=on_epoch, log=log)
    train_seconds = time.perf_counter() - started
    suite = run_suite(result.net, data, cfg, env, Precision.choose(cfg.eval_precision, env.device))
    summary = summary_metrics(suite.evals, result)
    summary.update(suite.summary)
    summary.update(train_seconds=train_seconds, eval_seconds=time.perf_counter() - started - train_seconds)
    if log is not None and env.is_main:
        log("test: " + "  ".join(f"{e['attack']} {e['accuracy']:.3f}" for e in suite.evals[:4])
            + f"  (n={summary['eval_n']})")
        if "aa_acc" in summary:
            log(f"autoattack {summary['aa_version']} {summary['aa_acc']:.3f} (n={summary['aa_n']}), "
                f"PGD-AA gap {summary['pgd_aa_gap']:+.3f}")
        if summary.get("any_masking_flag"):
            log(f"gradient-masking checks flagged: {summary['masking_flagged_checks']}")
    return ExperimentResult(cfg, result, suite.evals, summary, suite.corruptions, suite.geometry, suite.masking,
                            suite.points)
