"""How long the suite takes: wall seconds per part as it runs (`SuiteTimer`, summary["seconds_<part>"]), and the
time-left estimate from an earlier evaluation of the same model (`part_estimates`), calibrated as parts finish."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

from ..config import ExperimentConfig


SUBSET_PARTS = ("pgd_subset", "autoattack", "other_threat_models", "adaptive", "eps_curve", "steps_check", "unbounded",
                "square", "geometry")
"""the suite's parts that run on the attack subset (eval_aa_n points); the others run on eval_n points
(corruptions: on eval_corruption_n)"""


def part_estimates(earlier: dict[str, Any], earlier_cfg: dict[str, Any], cfg: ExperimentConfig, test_size: int
                   ) -> dict[str, float]:
    """Seconds each part of the suite should take under `cfg`, from an earlier evaluation of the same model
    (`earlier`: its summary with seconds_<part>, under `earlier_cfg`): each part's seconds scaled by how many
    more points it runs on now (all attacks cost about the same per point at a fixed level). Parts the earlier
    evaluation did not run have no estimate."""
    def points(config: dict[str, Any], field: str) -> int:
        n = int(config.get(field) or 0)
        return min(n, test_size) if n > 0 else test_size

    now = cfg.to_dict()
    estimates = {}
    for key, seconds in earlier.items():
        if not key.startswith("seconds_") or not isinstance(seconds, (int, float)) or key == "seconds_corruptions":
            continue
        part = key[len("seconds_"):]
        field = "eval_aa_n" if part in SUBSET_PARTS else "eval_n"
        estimates[part] = float(seconds) * points(now, field) / max(points(earlier_cfg, field), 1)
    return estimates


class SuiteTimer:
    """Wall seconds per part of the suite, as summary["seconds_<part>"]; with `log`, a line as each part starts
    saying the time so far and, where `estimates` (part -> seconds, part_estimates) know the parts, about how
    long those still to run will take (scaled by how the parts done so far compared with their estimates)."""

    def __init__(self, log: Callable[[str], None] | None = None, estimates: dict[str, float] | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self.log = log
        self.estimates = dict(estimates or {})
        self.started = time.perf_counter()

    def time_left(self) -> float | None:
        """Seconds the estimated parts not yet timed should take, calibrated by the timed ones; None if none."""
        done = [p for p in self.estimates if f"seconds_{p}" in self.seconds and self.estimates[p] > 0]
        pace = (sum(self.seconds[f"seconds_{p}"] for p in done) / sum(self.estimates[p] for p in done)) if done else 1.0
        left = [self.estimates[p] for p in self.estimates if f"seconds_{p}" not in self.seconds]
        return pace * sum(left) if left else None

    @contextlib.contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        started = time.perf_counter()
        if self.log is not None:
            left = self.time_left()
            estimate = f"; about {_duration(left)} left for the parts an earlier evaluation timed" if left else ""
            self.log(f"evaluate: {part} ({_duration(started - self.started)} so far{estimate})")
        try:
            yield
        finally:
            self.seconds[f"seconds_{part}"] = self.seconds.get(f"seconds_{part}", 0.0) + time.perf_counter() - started


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else (
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")
