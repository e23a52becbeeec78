"""The results schema (Parquet, versioned) and atomic reading and writing.

A study directory `<storage>/<name>/` holds:
  trials.parquet       one row per trial: identity, status, config (cfg_* columns), final metrics, provenance
  epochs.parquet       one row per (trial_id, epoch)
  evals.parquet        one row per (trial_id, suite, attack, eps, steps, loss)
  corruptions.parquet  one row per (trial_id, source, corruption, severity)
  geometry.parquet     one row per (trial_id, split)
  masking.parquet      one row per (trial_id, check): gradient-masking sanity checks
  pareto.parquet       search studies: the non-dominated trials
Each file carries `schema_version` in its Parquet metadata and as a column.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

import pandas as pd

SCHEMA_VERSION = 1

KEY_COLUMNS = ["study", "trial_id", "variant", "seed"]

#: columns every file of that name must have (more columns are allowed: cfg_*, metrics, provenance)
REQUIRED_COLUMNS: dict[str, list[str]] = {
    "trials": KEY_COLUMNS + [
        "status", "error", "clean_acc", "pgd_acc", "wall_seconds", "num_workers", "use_gpu", "hardware",
        "code_version", "torch_version", "ray_version", "python_version", "schema_version",
    ],
    "epochs": KEY_COLUMNS + [
        "epoch", "loss_total", "train_clean_acc", "val_clean_acc", "val_robust_acc", "eps", "lr",
        "images_per_s", "epoch_seconds", "schema_version",
    ],
    "evals": KEY_COLUMNS + ["suite", "split", "attack", "loss", "eps", "steps", "restarts", "n", "accuracy",
                            "schema_version"],
    "corruptions": KEY_COLUMNS + ["source", "corruption", "severity", "n", "accuracy", "schema_version"],
    "geometry": KEY_COLUMNS + ["split", "schema_version"],
    "masking": KEY_COLUMNS + ["check", "value", "threshold", "flagged", "detail", "schema_version"],
    "pareto": ["study", "trial_id", "schema_version"],
}

#: the natural key of each file: re-exporting after a resume keeps one row per key (the last)
UNIQUE_KEYS: dict[str, list[str]] = {
    "trials": ["trial_id"],
    "epochs": ["trial_id", "epoch"],
    "evals": ["trial_id", "suite", "split", "attack", "loss", "eps", "steps", "restarts"],
    "corruptions": ["trial_id", "source", "corruption", "severity"],
    "geometry": ["trial_id", "split"],
    "masking": ["trial_id", "check"],
    "pareto": ["trial_id"],
}


class ResultsError(ValueError):
    """A results file is missing, unreadable or of the wrong schema; names the file."""


def path_for(directory: str | Path, table: str) -> Path:
    if table not in REQUIRED_COLUMNS:
        raise ResultsError(f"unknown results table {table!r}; known: {', '.join(REQUIRED_COLUMNS)}")
    return Path(directory) / f"{table}.parquet"


def normalize(table: str, rows: Iterable[dict] | pd.DataFrame) -> pd.DataFrame:
    """Rows -> DataFrame with the schema version set and duplicates (by natural key) removed, last wins."""
    frame = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    frame["schema_version"] = SCHEMA_VERSION
    keys = [k for k in UNIQUE_KEYS[table] if k in frame.columns]
    if keys and len(frame):
        frame = frame.drop_duplicates(subset=keys, keep="last").reset_index(drop=True)
    return frame


def write_table(directory: str | Path, table: str, rows: Iterable[dict] | pd.DataFrame) -> Path:
    """Write one table atomically: a temporary file in the same directory, then os.replace."""
    frame = normalize(table, rows)
    missing = [c for c in REQUIRED_COLUMNS[table] if c not in frame.columns]
    if missing and len(frame):
        raise ResultsError(f"{table}.parquet would lack required columns {missing}")
    target = path_for(directory, table)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{table}.", suffix=".parquet.tmp", dir=target.parent)
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def read_table(directory: str | Path, table: str, *, required: bool = True) -> pd.DataFrame | None:
    """Read one table, checking it is Parquet of this schema; a clear ResultsError names the file otherwise."""
    path = path_for(directory, table)
    if not path.exists():
        if required:
            raise ResultsError(f"{path}: not found; is {Path(directory)} a dpnp_ray study directory?")
        return None
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for truncated/foreign files
        raise ResultsError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc}); "
                           "was it truncated or written by another program?") from None
    missing = [c for c in REQUIRED_COLUMNS[table] if c not in frame.columns]
    if missing and len(frame):
        raise ResultsError(f"{path}: missing columns {missing}; not a dpnp_ray {table} table")
    versions = set(frame["schema_version"].unique()) if "schema_version" in frame else set()
    if versions - {SCHEMA_VERSION}:
        raise ResultsError(f"{path}: schema_version {sorted(versions)}; this code reads {SCHEMA_VERSION}")
    return frame


def config_columns(config: dict) -> dict:
    """Config fields as trials.parquet columns: cfg_<field>; tuples become strings so Parquet types stay flat."""
    return {f"cfg_{k}": (",".join(map(str, v)) if isinstance(v, (tuple, list)) else v) for k, v in config.items()}
