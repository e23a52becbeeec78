"""The results schema (Parquet, versioned): its tables, their columns and keys, how rows are built and typed,
and reading and writing a table checked against it (the bytes go through storage.py).

A study directory `<storage>/<name>/` holds:
  trials.parquet       one row per trial: identity, status (error, error_log), config (cfg_* columns),
                       final metrics, provenance
  epochs.parquet       one row per (trial_id, epoch)
  evals.parquet        one row per (trial_id, suite, split, attack, loss, norm, eps, steps, restarts)
  corruptions.parquet  one row per (trial_id, source, corruption, severity)
  geometry.parquet     one row per (trial_id, split)
  masking.parquet      one row per (trial_id, check): gradient-masking sanity checks
  points.parquet       one row per (trial_id, suite, split, attack, loss, norm, eps, steps, restarts, index): was the
                       model right on test point `index` (its position in the whole test split, so rows of
                       different trials pair) in that evaluation? One evaluation's mean of `correct` is its
                       evals.parquet `accuracy` exactly. Collected at export from `points/<trial_id>.parquet`,
                       which each trial's rank 0 writes (per-point results stay out of the JSON record).
  pareto.parquet       search studies: the non-dominated trials (`pareto_mask`)
  transfer.parquet     one row per (source_trial, target_trial, attack, loss, eps, steps): a target model's
                       accuracy on a source model's adversarial examples (`python -m dpnp_ray.evaluate.transfer`)
Each file carries `schema_version` in its Parquet metadata and as a column.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from . import storage
from .provenance import redact
from .storage import ResultsError

SCHEMA_VERSION = 1

KEY_COLUMNS = ["study", "trial_id", "variant", "seed"]

#: columns every file of that name must have (more columns are allowed: cfg_*, metrics, provenance)
REQUIRED_COLUMNS: dict[str, list[str]] = {
    "trials": KEY_COLUMNS + [
        "status", "error", "clean_acc", "pgd_acc", "wall_seconds", "num_workers", "use_gpu", "hardware",
        "code_version", "torch_version", "ray_version", "python_version", "schema_version",
    ],
    "epochs": KEY_COLUMNS + [
        "epoch", "loss_total", "val_clean_acc", "val_robust_acc", "eps", "lr",
        "images_per_s", "epoch_seconds", "schema_version",
    ],
    "evals": KEY_COLUMNS + ["suite", "split", "attack", "loss", "norm", "eps", "steps", "restarts", "n", "accuracy",
                            "schema_version"],
    "corruptions": KEY_COLUMNS + ["source", "corruption", "severity", "n", "accuracy", "schema_version"],
    "geometry": KEY_COLUMNS + ["split", "schema_version"],
    "masking": KEY_COLUMNS + ["check", "value", "threshold", "flagged", "detail", "schema_version"],
    "pareto": ["study", "trial_id", "schema_version"],
    "points": KEY_COLUMNS + ["suite", "split", "attack", "loss", "norm", "eps", "steps", "restarts", "index",
                             "correct", "schema_version"],
    "transfer": ["study", "source_trial", "target_trial", "attack", "loss", "eps", "steps", "n", "accuracy",
                 "code_version", "torch_version", "hardware", "schema_version"],
}

#: the natural key of each file: re-exporting after a resume keeps one row per key (the last)
UNIQUE_KEYS: dict[str, list[str]] = {
    "trials": ["trial_id"],
    "epochs": ["trial_id", "epoch"],
    "evals": ["trial_id", "suite", "split", "attack", "loss", "norm", "eps", "steps", "restarts"],
    "corruptions": ["trial_id", "source", "corruption", "severity"],
    "geometry": ["trial_id", "split"],
    "masking": ["trial_id", "check"],
    "pareto": ["trial_id"],
    "points": ["trial_id", "suite", "split", "attack", "loss", "norm", "eps", "steps", "restarts", "index"],
    "transfer": ["source_trial", "target_trial", "attack", "loss", "eps", "steps"],
}

#: the columns of points.parquet that name the evaluation a point belongs to (evals.parquet's key, less trial_id)
POINT_EVAL_KEY = ["suite", "split", "attack", "loss", "norm", "eps", "steps", "restarts"]


#: columns added after a table's first files: their value in rows written before them (filled on read and write)
COLUMN_DEFAULTS: dict[str, dict[str, object]] = {
    "evals": {"norm": "Linf"},  # every evaluation was L-inf before the L2 threat model came
    "points": {"norm": "Linf"},
}


def _with_defaults(table: str, frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with COLUMN_DEFAULTS filled in where a column is absent or null."""
    for column, value in COLUMN_DEFAULTS.get(table, {}).items():
        if column not in frame:
            frame[column] = value
        elif frame[column].isna().any():
            frame[column] = frame[column].astype(object).fillna(value)
    return frame


def path_for(directory: str | Path, table: str) -> str:
    """Where a table of a study directory (local or URI) is."""
    if table not in REQUIRED_COLUMNS:
        raise ResultsError(f"unknown results table {table!r}; known: {', '.join(REQUIRED_COLUMNS)}")
    return storage.join(directory, f"{table}.parquet")


def normalize(table: str, rows: Iterable[dict] | pd.DataFrame) -> pd.DataFrame:
    """Rows -> DataFrame with the schema version set and duplicates (by natural key) removed, last wins."""
    frame = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    frame["schema_version"] = SCHEMA_VERSION
    frame = _with_defaults(table, frame)
    keys = [k for k in UNIQUE_KEYS[table] if k in frame.columns]
    if keys and len(frame):
        frame = frame.drop_duplicates(subset=keys, keep="last").reset_index(drop=True)
    return frame


def write_table(directory: str | Path, table: str, rows: Iterable[dict] | pd.DataFrame) -> str:
    """Write one table atomically (see write_bytes_atomic); returns its location."""
    frame = normalize(table, rows)
    missing = [c for c in REQUIRED_COLUMNS[table] if c not in frame.columns]
    if missing and len(frame):
        raise ResultsError(f"{table}.parquet would lack required columns {missing}")
    location = path_for(directory, table)
    storage.write_bytes_atomic(location, parquet_bytes(frame))
    return location


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """A frame as Parquet with a CRC-32 checksum on every page, which `parquet_frame` verifies: a flipped bit
    in a data page then fails the read instead of reading back as a wrong accuracy."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, write_page_checksum=True)
    return buffer.getvalue()


def parquet_frame(data: bytes) -> pd.DataFrame:
    """Parquet bytes as a frame, every page checksum verified (pyarrow raises on a mismatch)."""
    return pd.read_parquet(io.BytesIO(data), page_checksum_verification=True)


def read_table(directory: str | Path, table: str, *, required: bool = True) -> pd.DataFrame | None:
    """Read one table, checking it is Parquet of this schema; a clear ResultsError names the file otherwise."""
    path = path_for(directory, table)
    try:
        data = storage.read_bytes(path)
    except (FileNotFoundError, OSError):
        if required:
            raise ResultsError(f"{redact(path)}: not found; is {redact(str(directory))} a dpnp_ray study directory?"
                               ) from None
        return None
    try:
        frame = parquet_frame(data)
    except Exception as exc:  # pyarrow raises many types for truncated/foreign files
        raise ResultsError(f"{redact(path)}: not a readable Parquet file ({type(exc).__name__}: {redact(str(exc))}); "
                           "was it truncated or written by another program?") from None
    frame = _with_defaults(table, frame)
    missing = [c for c in REQUIRED_COLUMNS[table] if c not in frame.columns]
    if missing and len(frame):
        raise ResultsError(f"{redact(path)}: missing columns {missing}; not a dpnp_ray {table} table")
    versions = set(frame["schema_version"].unique()) if "schema_version" in frame else set()
    if versions - {SCHEMA_VERSION}:
        raise ResultsError(f"{redact(path)}: schema_version {sorted(versions)}; this code reads {SCHEMA_VERSION}")
    return frame


def config_columns(config: dict) -> dict:
    """Config fields as trials.parquet columns: cfg_<field>; tuples become strings so Parquet types stay flat."""
    return {f"cfg_{k}": (",".join(map(str, v)) if isinstance(v, (tuple, list)) else v) for k, v in config.items()}


def pareto_mask(values: np.ndarray) -> np.ndarray:
    """Rows of an (n, k) array not dominated by any other row, all objectives maximized.

    Row j dominates row i when it is >= on every objective and > on one. Rows with a NaN are never on the front.
    """
    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values).all(axis=1)
    mask = finite.copy()
    for i in np.flatnonzero(finite):
        others = values[finite]
        dominated = (others >= values[i]).all(axis=1) & (others > values[i]).any(axis=1)
        mask[i] = not dominated.any()
    return mask


def points_frame(evals: list[dict], points: Iterable[tuple[int, object, object]], keys: dict | None = None
                 ) -> pd.DataFrame:
    """points.parquet rows: for each (position in `evals`, test-split positions, right-or-not flags), one row
    per point, with that evals row's POINT_EVAL_KEY and the `keys` columns (study, trial_id, ...).
    Compact types: int32 index, bool correct, category strings (dictionary-encoded in Parquet)."""
    parts = []
    for position, index, ok in points:
        row = evals[position]
        index, ok = np.asarray(index, dtype=np.int32), np.asarray(ok, dtype=bool)
        part = pd.DataFrame({"index": index, "correct": ok})
        for column in POINT_EVAL_KEY:
            part[column] = row[column]
        parts.append(part)
    columns = list(keys or {}) + POINT_EVAL_KEY + ["index", "correct"]
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    for column, value in (keys or {}).items():
        frame[column] = value
    frame = frame[columns]
    return compact_points(frame)


def write_points_file(location: str, frame: pd.DataFrame) -> str:
    """One trial's per-point results (`points_frame`, without key columns) as a Parquet file, atomically."""
    storage.write_bytes_atomic(location, parquet_bytes(compact_points(frame)))
    return location


def read_points_file(location: str) -> pd.DataFrame:
    """A file of `write_points_file`; a ResultsError names it when it is not one."""
    try:
        frame = parquet_frame(storage.read_bytes(location))
    except Exception as exc:  # pyarrow raises many types for truncated/foreign files
        raise ResultsError(f"{location}: not a readable per-point results file ({type(exc).__name__}: {exc})") from None
    frame = _with_defaults("points", frame)
    missing = [c for c in POINT_EVAL_KEY + ["index", "correct"] if c not in frame.columns]
    if missing:
        raise ResultsError(f"{location}: missing columns {missing}; not a dpnp_ray per-point results file")
    return frame


def compact_points(frame: pd.DataFrame) -> pd.DataFrame:
    """points columns at their compact types (strings as categories, index int32, correct bool)."""
    frame = frame.copy()
    for column in frame.columns:
        if pd.api.types.is_object_dtype(frame[column]) or pd.api.types.is_string_dtype(frame[column]):
            frame[column] = frame[column].astype("category")
    frame["index"] = frame["index"].astype(np.int32)
    frame["correct"] = frame["correct"].astype(bool)
    for column in ("steps", "restarts"):
        if column in frame:
            frame[column] = frame[column].astype(np.int32)
    return frame


POINT_COUNT_COLUMNS = {"aa_acc": "aa_n", "pgd_aa_gap": "aa_n", "worst_case_acc": "worst_case_n",
                       "square_acc": "square_n", "corruption_acc": "corruption_n"}
"""the trials.parquet column holding how many test points each accuracy was measured on (default: eval_n)"""


def points_measured(trials: pd.DataFrame, metric: str) -> str:
    """'359 test points' (or '100-359 test points' when trials differ) for an accuracy column; '' if unknown.

    Validation metrics (val_*) are measured on the validation split, never on test points."""
    if metric.startswith("val_"):
        return "the validation split"
    column = POINT_COUNT_COLUMNS.get(metric, "eval_n")
    values = sorted(set(pd.to_numeric(trials[column], errors="coerce").dropna().astype(int))) if column in trials else []
    if not values:
        return ""
    count = f"{values[0]}" if len(values) == 1 else f"{values[0]}-{values[-1]}"
    return f"{count} {'image x corruption pairs' if metric == 'corruption_acc' else 'test points'}"
