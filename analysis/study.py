"""A study directory as the report reads it: its Parquet tables, its study.yaml and what is known of the study.

    from analysis.study import load_study
    study = load_study("results/ablation")  # Study: trials, optional tables, kind, name, Optuna study, verdicts
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis import optuna_study
from dpnp_ray.results import ResultsError, read_table

OPTIONAL_TABLES = ("epochs", "evals", "corruptions", "geometry", "masking", "pareto")
NO_VARIANT = "(no variant)"
STUDY_FILE = "study.yaml"  # dpnp_ray.study.study_file.STUDY_FILE; importing that module would import torch


@dataclass
class Study:
    """The tables of one study directory; optional tables are None when their file is absent."""

    directory: Path
    trials: pd.DataFrame
    epochs: pd.DataFrame | None = None
    evals: pd.DataFrame | None = None
    corruptions: pd.DataFrame | None = None
    geometry: pd.DataFrame | None = None
    masking: pd.DataFrame | None = None
    pareto: pd.DataFrame | None = None
    optuna_storage: str | None = None  # the search's Optuna storage; None: <directory>/optuna.journal
    recipe: str | None = None  # study.yaml: the resolved study and its command line, when the study wrote one

    @property
    def name(self) -> str:
        names = list(dict.fromkeys(self.trials["study"].astype(str)))
        return ", ".join(names) if names else self.directory.name

    @property
    def kind(self) -> str:
        """'ablation' or 'search': trials.study_kind, else 'search' when there is a Pareto table."""
        if "study_kind" in self.trials.columns and self.trials["study_kind"].notna().any():
            return str(self.trials["study_kind"].dropna().iloc[0])
        return "search" if self.pareto is not None else "ablation"

    @functools.cached_property
    def points(self) -> pd.DataFrame | None:
        """points.parquet (per-point correctness of every test evaluation), read when first asked for; None when
        the study has none (studies older than it)."""
        return _named_variants(read_table(self.directory, "points", required=False))

    @functools.cached_property
    def planned_verdicts(self):
        """(plan, verdict table) of an ablation (analysis/verdicts.py): computed once, read by every section."""
        from analysis import verdicts

        plan = verdicts.study_plan(self)
        return plan, verdicts.verdicts(self, plan)

    @property
    def journal(self) -> str | None:
        """The search's Optuna storage if there is one to read (--optuna-storage, or <directory>/optuna.journal)."""
        if self.optuna_storage:
            return self.optuna_storage
        path = optuna_study.journal_path(self.directory)
        return str(path) if path.is_file() else None

    @functools.cached_property
    def search(self):
        """The search's Optuna study: from its journal when there is one, else rebuilt from trials.parquet;
        NoData (not cached) when nothing was searched."""
        if self.journal is not None:
            return optuna_study.journal_study(self.journal, self.name)
        return optuna_study.rebuild_study(self.trials)

    @property
    def search_source(self) -> str:
        if self.journal is not None:
            return f"Optuna journal {self.journal}"
        return "rebuilt from trials.parquet (no Optuna journal in the study directory)"


def load_study(directory: str | Path, optuna_storage: str | None = None) -> Study:
    """Read a study directory; ResultsError when it is not one (no trials.parquet) or a file is not of the schema.
    `optuna_storage`: the search's Optuna storage when it is not <directory>/optuna.journal."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ResultsError(f"{directory}: not a directory; pass a study directory holding trials.parquet")
    inner = sorted(p.parent.name for p in directory.glob("*/trials.parquet"))
    if inner and not (directory / "trials.parquet").exists():
        raise ResultsError(f"{directory}: not a study directory, but holds studies {', '.join(inner)}; "
                           f"pass one of them, e.g. {directory / inner[0]}")
    trials = read_table(directory, "trials")
    if trials.empty:
        raise ResultsError(f"{directory / 'trials.parquet'}: no trials recorded yet; nothing to report")
    tables = {t: _named_variants(read_table(directory, t, required=False)) for t in OPTIONAL_TABLES}
    recipe = directory / STUDY_FILE
    return Study(directory, _named_variants(trials), **tables, optuna_storage=optuna_storage,
                 recipe=recipe.read_text(encoding="utf-8") if recipe.is_file() else None)


def _named_variants(frame: pd.DataFrame | None) -> pd.DataFrame | None:
    """Variants as strings, a missing one named: figures select rows by variant name."""
    if frame is None or "variant" not in frame.columns:
        return frame
    return frame.assign(variant=frame["variant"].astype("string").fillna(NO_VARIANT).astype(str))
