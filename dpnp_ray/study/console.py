"""What a study prints while it runs: one line per finished trial and, now and then, the running trials.

Tune's own progress output (a config table when a trial starts, a 50-row result table when it
ends) is replaced by `StudyConsole`; `--verbose` brings Tune's output and Ray's INFO logs back.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from ray.tune import Callback

from ..trial_output import wait_for_end
from .records import train_run_name, trial_id_of

STATUS_EVERY_S = 300.0
"""Seconds between two tables of the running trials."""

OUTPUT_WAIT_S = 10.0
"""At most this long a finished trial's line waits for the trial's own last lines (trial_output.py)."""


def trial_label(config: dict[str, Any], tune_trial_id: str) -> str:
    """The project's trial_id (records.trial_id_of: `<variant>-s<seed>`, `optuna-<number>`), else Tune's id."""
    return trial_id_of(config, "ablation" if "variant" in config else "search") or tune_trial_id


def tune_trial_name(trial) -> str:
    """Tune's name (and directory name) of a trial: its trial_id, so Tune's files, TensorBoard runs,
    MLflow and W&B runs are named as in trials.parquet."""
    return trial_label(trial.config or {}, trial.trial_id)


def _acc(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "  -  "


def trial_line(label: str, result: dict[str, Any], errored: bool = False) -> str:
    """'trial full-s0  completed  clean 0.969  PGD 0.766  AA 0.760  wall 39s' from a trial's last result."""
    status = result.get("trial_status")
    if errored:
        status = "error"
    elif status == "running":  # its last report was an epoch: the scheduler stopped it
        status = f"stopped after epoch {result.get('epoch')}"
    elif status is None:
        status = "ended"
    line = f"trial {label:<20s} {status:<10s}"
    if "clean_acc" in result or "pgd_acc" in result:
        line += f"  clean {_acc(result.get('clean_acc'))}  PGD {_acc(result.get('pgd_acc'))}"
        line += f"  AA {_acc(result.get('aa_acc'))}"
    elif "val_robust_acc" in result:
        line += f"  val clean {_acc(result.get('val_clean_acc'))}  val robust {_acc(result.get('val_robust_acc'))}"
    seconds = result.get("time_total_s")
    if isinstance(seconds, (int, float)):
        line += f"  wall {seconds:.0f}s"
    return line


def status_table(trials, elapsed_s: float) -> str:
    """Counts of trials per Tune status, then one row per running trial with its latest epoch."""
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.status] = counts.get(trial.status, 0) + 1
    minutes, seconds = divmod(int(elapsed_s), 60)
    lines = [f"[{time.strftime('%H:%M:%S')}] {minutes // 60}:{minutes % 60:02d}:{seconds:02d} elapsed; trials: "
             + ", ".join(f"{n} {status.lower()}" for status, n in sorted(counts.items()))]
    running = [t for t in trials if t.status == "RUNNING"]
    if running:
        lines.append(f"  {'trial':<20s} {'epoch':>5s}  {'val clean':>9s}  {'val robust':>10s}")
        for trial in running:
            last = trial.last_result or {}
            epoch = last.get("epoch")
            lines.append(f"  {tune_trial_name(trial):<20s} {epoch if epoch is not None else '-':>5}  "
                         f"{_acc(last.get('val_clean_acc')):>9s}  {_acc(last.get('val_robust_acc')):>10s}")
    return "\n".join(lines)


class StudyConsole(Callback):
    """A Tune callback printing one line per finished trial and the running trials every `status_every_s`."""

    def __init__(self, study: str | None = None, status_every_s: float = STATUS_EVERY_S, out: TextIO | None = None):
        self.study = study
        self.status_every_s = status_every_s
        self.out = out
        self._started = time.monotonic()
        self._last_table = time.monotonic()

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks with the experiment
        return {**self.__dict__, "out": None}

    def _print(self, text: str) -> None:
        stream = self.out or sys.stdout
        stream.write(text + "\n")
        stream.flush()

    def setup(self, **info) -> None:
        self._started = self._last_table = time.monotonic()

    def on_trial_complete(self, iteration: int, trials, trial, **info) -> None:
        label = tune_trial_name(trial)
        if getattr(self, "study", None):  # its test lines first: then the results block comes after them all
            wait_for_end(train_run_name(self.study, label), OUTPUT_WAIT_S)
        self._print(trial_line(label, trial.last_result or {}))

    def on_trial_error(self, iteration: int, trials, trial, **info) -> None:
        self._print(trial_line(tune_trial_name(trial), trial.last_result or {}, errored=True))

    def on_step_end(self, iteration: int, trials, **info) -> None:
        now = time.monotonic()
        if now - self._last_table >= self.status_every_s:
            self._last_table = now
            self._print(status_table(trials, now - self._started))

    def on_experiment_end(self, trials, **info) -> None:
        self._print(status_table(trials, time.monotonic() - self._started))
