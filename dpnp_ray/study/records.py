"""Trial records and their export to Parquet.

Each trial's whole record is `<study dir>/trials/<trial_id>.json`, written atomically; a completed
trial's selected model is `<study dir>/models/<trial_id>/` (`model_path`) and its test evaluations'
per-point results `<study dir>/points/<trial_id>.parquet` (`points_path`), both written by ray_train.py. `export`
turns those records into the Parquet tables of results.py; it runs at the end of every study and
can be re-run at any time (one row per trial and per trial-epoch, always).

A trial's id names it everywhere: `<variant>-s<seed>` in an ablation, `optuna-<number>` (its Optuna
trial number) in a search; its Train run is `<study>-<trial_id>` under `<study dir>/ray/train/`. A failed
trial's record holds its error in one line; the full traceback is in `<study dir>/logs/<trial_id>.log`
(the record's `error_log`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from .. import results, storage
from ..provenance import redact
from .settings import NAME_RULE, StudyError, name_problem

log = logging.getLogger(__name__)

#: tables with one row per entry of a record's list of that name (epochs: the record's "history")
PER_RECORD_TABLES = ("epochs", "evals", "corruptions", "geometry", "masking")
ENDED = ("completed", "stopped", "failed")
"""the statuses of a trial that has ended; any other record (none, or no status) has not"""
ERROR_CHARS = 300


def trial_id_of(params: dict[str, Any], kind: str) -> str | None:
    """A trial's id from what Tune chose for it; None if Tune's config does not say (see the module doc)."""
    if kind == "ablation":
        return f"{params['variant']}-s{params['seed']}" if "variant" in params and "seed" in params else None
    number = params.get("optuna_trial")
    return f"optuna-{int(number):04d}" if number is not None else None


def train_run_name(study: str, trial: str) -> str:
    """The Train run of a trial: fixed, so a relaunched trial finds its checkpoints."""
    return f"{study}-{trial}"


def root_cause(exc: BaseException) -> BaseException:
    """The exception that started a failure: a Train worker's (the lowest rank's) rather than Train's
    WorkerGroupError, the controller's for a ControllerError, the remote one inside Ray's RayTaskError."""
    failures = getattr(exc, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        exc = failures[min(failures)]
    elif isinstance(getattr(exc, "controller_failure", None), BaseException):
        exc = exc.controller_failure
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def one_line_error(exc: BaseException) -> str:
    """`Type: first line of the message` of the root cause, credentials redacted, at most ERROR_CHARS."""
    cause = root_cause(exc)
    lines = str(cause).strip().splitlines()
    return redact(f"{type(cause).__name__}: {lines[0] if lines else ''}".strip())[:ERROR_CHARS]


def checked_id(trial_id: Any) -> str:
    """trial_id if it is one file name (settings.NAME_RULE), else StudyError: every path built from a trial's
    id (its record, log, model, points, best config) stays inside its folder of the study directory."""
    problem = name_problem("trial_id", trial_id)
    if problem:
        raise StudyError(problem)
    return trial_id


def write_error_log(study_dir: str, trial: str, text: str) -> str:
    """Keep a failed trial's full traceback; returns where (the record's error_log, credentials redacted)."""
    location = storage.join(study_dir, "logs", f"{checked_id(trial)}.log")
    storage.write_bytes_atomic(location, redact(text).encode())
    return redact(location)


def record_path(study_dir: str, trial_id: str) -> str:
    return storage.join(study_dir, "trials", f"{checked_id(trial_id)}.json")


def model_path(study_dir: str, trial_id: str) -> str:
    """Where a completed trial's selected model is exported (model_export.py)."""
    return storage.join(study_dir, "models", checked_id(trial_id))


def points_path(study_dir: str, trial_id: str) -> str:
    """Where a completed trial's per-point results are written (a Parquet file: they would bloat the record)."""
    return storage.join(study_dir, "points", f"{checked_id(trial_id)}.parquet")


def read_record(path: str) -> dict[str, Any] | None:
    """The record at path, or None if there is none yet or it cannot be read."""
    try:
        return json.loads(storage.read_bytes(path))
    except (FileNotFoundError, OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def write_record(study_dir: str, record: dict[str, Any]) -> None:
    """Write a trial's record atomically under its trial_id."""
    storage.write_bytes_atomic(record_path(study_dir, record["trial_id"]), json.dumps(record, default=str).encode())


def scan_records(study_dir: str) -> tuple[list[dict[str, Any]], list[str]]:
    """(every valid trial record of a study in trial_id order, one line per file under trials/ that is not one).
    A record is valid when it is a JSON mapping whose trial_id is a safe name (checked_id) equal to its file's
    name: a truncated or tampered file is left out of everything built from the records, and said so."""
    records, skipped = [], []
    for path in storage.list_files(storage.join(study_dir, "trials"), ".json"):
        stem = path.split("?", 1)[0].rsplit("/", 1)[-1][:-len(".json")]
        try:
            record = json.loads(storage.read_bytes(path))
        except FileNotFoundError:
            continue  # removed since it was listed
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            skipped.append(f"{redact(path)}: not a readable trial record (truncated or corrupt: "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
            continue
        if not isinstance(record, dict):
            skipped.append(f"{redact(path)}: not a trial record (a JSON {type(record).__name__}, not a mapping)")
        elif record.get("trial_id") != stem or name_problem("trial_id", stem):
            skipped.append(f"{redact(path)}: its trial_id {record.get('trial_id')!r} is not its file's name "
                           f"{stem!r} (or not {NAME_RULE}); tampered or misplaced")
        else:
            records.append(record)
    return records, skipped


def read_records(study_dir: str) -> list[dict[str, Any]]:
    """Every valid trial record of a study, in trial_id order; a warning (logged) per file left out (scan_records)."""
    records, skipped = scan_records(study_dir)
    for line in skipped:
        log.warning("warning: %s; it is left out of the study's tables and best configs", line)
    return records


def _flatten_record(record: dict[str, Any]) -> dict[str, Any]:
    """One trials.parquet row: identity, status, final metrics, provenance, cfg_* and param_* columns."""
    row = {k: record.get(k) for k in ("study", "trial_id", "variant", "seed", "study_kind", "status", "error",
                                      "runner", "num_workers", "use_gpu", "wall_seconds", "worker_seconds",
                                      "started_at", "finished_at")}
    row["error"] = row["error"] or ""
    row["error_log"] = record.get("error_log") or ""
    if record.get("optuna_trial") is not None:
        row["optuna_trial"] = record["optuna_trial"]
    summary = record.get("summary") or {}
    row.update({k: v for k, v in summary.items() if not isinstance(v, (dict, list))})
    for key in ("clean_acc", "pgd_acc"):
        row.setdefault(key, float("nan"))
    history = record.get("history") or []
    if history:
        row["images_per_s"] = sum(r.get("images_per_s", 0.0) for r in history) / len(history)
    for key, value in record.items():
        if key.endswith("_version") or key in ("hardware", "platform"):
            row[key] = value
    # Paths in the config (data_root, corruption_root) must not reveal a home directory or credentials.
    config = {k: redact(v) if isinstance(v, str) else v for k, v in (record.get("config") or {}).items()}
    row.update(results.config_columns(config))
    # What the searcher sampled (absent: not sampled for this trial, e.g. a weight whose term was off).
    row.update({f"param_{k}": v for k, v in (record.get("params") or {}).items()})
    return row


def export(study_dir: str) -> dict[str, str]:
    """Trial records -> Parquet tables (atomically). Returns table name -> location. A file under trials/ that
    is no valid record (scan_records) is in no table, and a warning line per such file says so."""
    records, skipped = scan_records(study_dir)
    for line in skipped:
        log.warning("warning: export: %s; this trial is in none of the tables", line)
    if not records:
        unreadable = f" ({len(skipped)} file(s) there are not valid records, see above)" if skipped else ""
        raise StudyError(f"{redact(study_dir)} has no trial records (trials/*.json){unreadable}; nothing to export")
    keys = lambda r: {"study": r["study"], "trial_id": r["trial_id"], "variant": r["variant"], "seed": r["seed"]}
    tables: dict[str, list[dict]] = {"trials": [], **{name: [] for name in PER_RECORD_TABLES}}
    for record in records:
        tables["trials"].append(_flatten_record(record))
        for name in PER_RECORD_TABLES:
            source = record.get("history" if name == "epochs" else name) or []
            tables[name].extend({**keys(record), **row} for row in source)
    written = {}
    for name, rows in tables.items():
        if rows or name == "trials":
            written[name] = results.write_table(study_dir, name, rows)
    points = _collect_points(study_dir, records)
    if points is not None:
        written["points"] = results.write_table(study_dir, "points", points)
    return written


def _collect_points(study_dir: str, records: list[dict[str, Any]]):
    """points.parquet: every completed trial's points file with the trial's key columns; None if none has one."""
    import pandas as pd

    frames = []
    for record in records:
        location = points_path(study_dir, record["trial_id"])
        if record.get("status") != "completed" or not storage.exists(location):
            continue
        frame = results.read_points_file(location)
        for key in results.KEY_COLUMNS:
            frame.insert(results.KEY_COLUMNS.index(key), key, record[key])
        frames.append(frame)
    return results.compact_points(pd.concat(frames, ignore_index=True)) if frames else None
