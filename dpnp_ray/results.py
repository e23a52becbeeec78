"""The results schema (Parquet, versioned) and atomic reading and writing.

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
import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from .provenance import error_line, redact

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


class ResultsError(ValueError):
    """A results file is missing, unreadable or of the wrong schema; names the file."""


def path_for(directory: str | Path, table: str) -> str:
    """Where a table of a study directory (local or URI) is."""
    if table not in REQUIRED_COLUMNS:
        raise ResultsError(f"unknown results table {table!r}; known: {', '.join(REQUIRED_COLUMNS)}")
    return join(directory, f"{table}.parquet")


def normalize(table: str, rows: Iterable[dict] | pd.DataFrame) -> pd.DataFrame:
    """Rows -> DataFrame with the schema version set and duplicates (by natural key) removed, last wins."""
    frame = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    frame["schema_version"] = SCHEMA_VERSION
    frame = _with_defaults(table, frame)
    keys = [k for k in UNIQUE_KEYS[table] if k in frame.columns]
    if keys and len(frame):
        frame = frame.drop_duplicates(subset=keys, keep="last").reset_index(drop=True)
    return frame


def is_uri(location: str | Path) -> bool:
    return "://" in str(location) and not str(location).startswith("file://")


def local_path(location: str | Path) -> Path:
    text = str(location)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def split_query(location: str | Path) -> tuple[str, str]:
    """(the location without its query string, "?<query>" or ""); only URIs have a query string."""
    text = str(location)
    if is_uri(text) and "?" in text:
        base, query = text.split("?", 1)
        return base, "?" + query
    return text, ""


def join(location: str | Path, *parts: str) -> str:
    """The one join of a storage location and path parts: local paths and URIs alike, a URI's query string
    (s3://bucket/x?endpoint_override=host:9000&scheme=http) kept at the end, its user info untouched."""
    base, query = split_query(location)
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)]) + query


def parent(location: str | Path) -> str:
    """The directory holding a file (local or URI, query string kept): Path(...).parent, which would collapse
    s3:// into s3:/, for storage locations."""
    base, query = split_query(location)
    return base.rstrip("/").rsplit("/", 1)[0] + query


def filesystem(location: str | Path):
    """(pyarrow filesystem, path in it) of a URI. A URI pyarrow cannot open is a one-line ResultsError without
    its credentials (pyarrow's own message repeats the URI)."""
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(str(location))
    except (ValueError, OSError, TypeError) as exc:  # ArrowInvalid is a ValueError
        raise ResultsError(f"{redact(str(location))}: not a storage location that can be opened "
                           f"({type(exc).__name__}: {error_line(exc)}); allowed: a local path, or an s3://, gs:// or "
                           "hdfs:// URI (an S3-compatible endpoint via AWS_ENDPOINT_URL or ?endpoint_override=)"
                           ) from None


def write_bytes_atomic(location: str, data: bytes) -> None:
    """Never leave a half-written file: local files go through a temporary file and os.replace;
    object stores (s3://, gs://) publish an object only when its upload completes."""
    if is_uri(location):
        fs, path = filesystem(location)
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as stream:
            stream.write(data)
        return
    target = local_path(location)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be shared
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def delete(location: str) -> None:
    """Remove a file (local or URI); nothing if it is not there."""
    if is_uri(location):
        import pyarrow.fs

        fs, path = filesystem(location)
        if fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
            fs.delete_file(path)
    else:
        local_path(location).unlink(missing_ok=True)


def list_names(location: str | Path, prefix: str) -> list[str]:
    """Names (not paths) of the files and directories directly under a directory (local or URI) that start
    with prefix, sorted; [] if the directory does not exist."""
    if is_uri(location):
        import pyarrow.fs

        fs, path = filesystem(location)
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
        return sorted(i.base_name for i in infos if i.base_name.startswith(prefix))
    folder = local_path(location)
    return sorted(p.name for p in folder.glob(f"{prefix}*")) if folder.is_dir() else []


def list_files(location: str | Path, suffix: str) -> list[str]:
    """Files directly under a directory (local or URI, the URI's credentials and query kept) whose names end
    with suffix, sorted."""
    if is_uri(location):
        return [join(location, name) for name in list_names(location, "") if name.endswith(suffix)]
    folder = local_path(location)
    return sorted(str(p) for p in folder.glob(f"*{suffix}")) if folder.is_dir() else []


def exists(location: str) -> bool:
    """Whether a file (local or URI) exists."""
    if is_uri(location):
        import pyarrow.fs

        fs, path = filesystem(location)
        return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound
    return local_path(location).exists()


def read_bytes(location: str) -> bytes:
    if is_uri(location):
        fs, path = filesystem(location)
        with fs.open_input_stream(path) as stream:
            return stream.read()
    return local_path(location).read_bytes()


def write_table(directory: str | Path, table: str, rows: Iterable[dict] | pd.DataFrame) -> str:
    """Write one table atomically (see write_bytes_atomic); returns its location."""
    frame = normalize(table, rows)
    missing = [c for c in REQUIRED_COLUMNS[table] if c not in frame.columns]
    if missing and len(frame):
        raise ResultsError(f"{table}.parquet would lack required columns {missing}")
    location = path_for(directory, table)
    write_bytes_atomic(location, parquet_bytes(frame))
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
        data = read_bytes(path)
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
    write_bytes_atomic(location, parquet_bytes(compact_points(frame)))
    return location


def read_points_file(location: str) -> pd.DataFrame:
    """A file of `write_points_file`; a ResultsError names it when it is not one."""
    try:
        frame = parquet_frame(read_bytes(location))
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
