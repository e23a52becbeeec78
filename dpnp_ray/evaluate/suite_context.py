"""What the suite's parts share: the context they read (`SuiteContext`: the model, the resolved config, where it
runs, the level, the dataset's description and the timer) and the result they write to (`SuiteResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import ExperimentConfig
from ..data import DatasetInfo
from ..devices import Precision
from ..distributed import LocalEnvironment
from ..models import Classifier
from .accuracy import Attack, PointFlags, correct_per_point, eval_row, gather_flags, pgd_attack
from .suite_levels import SuiteLevel
from .suite_timing import SuiteTimer


@dataclass
class SuiteResult:
    """Rows for the Parquet tables (without the key columns) and flat scalars for trials.parquet.
    `subset_flags` (in memory only, not written): each attack at eval_eps -> its per-point results on the
    attack subset, the inputs of the per-point worst case. `points`: for each evals row (by its position),
    the positions in the test split of the points it ran on and whether the model was right on each
    (points.parquet, `accuracy.points_table`); rows enter through `add_eval` so the two cannot disagree."""

    evals: list[dict[str, Any]] = field(default_factory=list)
    corruptions: list[dict[str, Any]] = field(default_factory=list)
    geometry: list[dict[str, Any]] = field(default_factory=list)
    masking: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    subset_flags: dict[str, PointFlags] = field(default_factory=dict)
    points: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def add_eval(self, row: dict[str, Any], split_index: torch.Tensor, ok: torch.Tensor) -> None:
        """An evals row and its per-point results (positions in the test split, right or not)."""
        if len(split_index) != len(ok) or row["n"] != len(ok):
            raise ValueError(f"{row['attack']}: {len(ok)} per-point results for n={row['n']} on "
                             f"{len(split_index)} positions")
        self.points.append((len(self.evals), split_index.detach().cpu(), ok.detach().cpu()))
        self.evals.append(row)


@dataclass(frozen=True)
class SuiteContext:
    """What every part of the suite needs: the model (in eval mode), the resolved config, where it runs,
    the level that runs and the dataset's description; `timer` collects the parts' wall seconds."""

    net: Classifier
    cfg: ExperimentConfig
    env: LocalEnvironment
    precision: Precision
    level: SuiteLevel
    info: DatasetInfo
    timer: SuiteTimer = field(default_factory=SuiteTimer)

    def correct(self, x: torch.Tensor, y: torch.Tensor, attack: Attack | None, *, features: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-point correctness (and features) on this rank's points, with the suite's batch size and seed."""
        return correct_per_point(self.net, x, y, attack, env=self.env, batch_size=self.cfg.eval_batch_size,
                                 precision=self.precision, seed=self.cfg.seed, features=features)

    def correct_all(self, x: torch.Tensor, y: torch.Tensor, attack: Attack | None, n: int) -> torch.Tensor:
        """`correct` without features, gathered: per point of all n points of every rank."""
        local, _ = self.correct(x, y, attack)
        return gather_flags(local, n, self.env)

    def pgd(self, eps: float, step_size: float, steps: int, restarts: int = 1) -> Attack:
        return pgd_attack(eps, step_size, steps, self.precision, restarts=restarts)

    def row(self, attack: str, **columns: Any) -> dict[str, Any]:
        """An evals row labelled with the level that runs."""
        return eval_row(attack, suite=self.level.name, **columns)
