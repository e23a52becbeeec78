"""Command-line pieces shared by the study scripts: flags, settings, errors, the summary table."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from typing import Any, Callable

from .. import storage
from ..config import ConfigError, ExperimentConfig, field_choices, fields_help, wrap_help
from ..provenance import redact
from ..ray_train import RUNNERS, Scaling
from .settings import StudySettings

# Ray's driver merges worker log lines that look alike across processes ("[repeated 3x across cluster]"): the
# epoch lines of different trials look alike, so it hid some of them. The study scripts print each line once
# themselves; set RAY_DEDUP_LOGS=1 to have Ray's merging back. Read when ray is first imported, hence here.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions and epilogs as written (their usage examples keep their line breaks), and every
    option's default; an option whose default is None states its effective default in its help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or "default" in text or (isinstance(action.default, bool) and not action.nargs):
            return text
        return super()._get_help_string(action)


def config_epilog(defaults: dict[str, Any]) -> str:
    """Every config field with the value this study gives it unless --set (or a flag) changes it."""
    return ("config fields for --set, with this study's defaults (auto: derived from other fields;\n"
            f"the allowed values of each field: python -m dpnp_ray --help):\n{fields_help(defaults)}")


def add_common_flags(parser: argparse.ArgumentParser, default_name: str,
                     defaults: dict[str, Any] | None = None) -> None:
    """The flags both studies share; `defaults` are the study's config defaults, shown in --help."""
    defaults = {**{f.name: getattr(ExperimentConfig(), f.name) for f in fields(ExperimentConfig)}, **(defaults or {})}
    choices = field_choices()
    parser.add_argument("--config", metavar="STUDY.yaml",
                        help="a study file holding what these flags hold (dpnp_ray/study/recipe.py); flags override "
                             "it. <storage>/<name>/study.yaml is one: the resolved study, written before training")
    g = parser.add_argument_group("where and how trials run")
    g.add_argument("--cluster", action="store_true",
                   help="attach to the running Ray cluster (ray.init(address='auto')) instead of a local instance")
    g.add_argument("--address", help="attach to the Ray cluster at this address (implies --cluster)")
    g.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP ranks) per trial")
    g.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs each worker holds")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, help="0: CPU workers (gloo); >0: GPU workers (NCCL)")
    g.add_argument("--max-concurrent", type=int, default=0, help="trials at once; 0: as many as the resources allow")
    g.add_argument("--max-failures", type=int, default=2,
                   help="times a trial restarts from its latest checkpoint after a crash (its workers, by Ray Train; "
                        "the trial itself, by Ray Tune, with --runner tune)")
    g.add_argument("--runner", choices=RUNNERS, default=None,
                   help="where a trial's loop runs: tune (in the Tune trial itself, one worker, seconds to start) or "
                        "train (a Ray Train TorchTrainer: DDP, Train's worker placement and restarts; ~15 s to start "
                        "on 2 cores); default: tune for a local trial of one worker, train otherwise")
    g.add_argument("--storage", default="results",
                   help="results root: a local path, or a URI shared by all nodes (s3://...) on multi-node clusters")
    g.add_argument("--name", default=default_name, help="study name: results go to <storage>/<name>/")
    g.add_argument("--resume", action="store_true", help="continue the study <storage>/<name> after an interruption")
    g.add_argument("--local-cpus", type=int, default=None, help="size of the local Ray instance (default: all cores)")
    o = parser.add_argument_group("output")
    o.add_argument("--log-to", default="", metavar="TRACKERS",
                   help="also log every trial to these trackers, comma-separated: tensorboard, mlflow, wandb "
                        "(mlflow and wandb: pip install -e '.[trackers]'; default: none)")
    o.add_argument("--mlflow-tracking-uri", default=None,
                   help="MLflow tracking URI (default: sqlite:///<storage>/<name>/mlflow.db)")
    o.add_argument("--verbose", action="store_true",
                   help="Tune's progress tables and Ray's INFO messages instead of one line per finished trial")
    g.add_argument("--dry-run", action="store_true",
                   help="print the plan (trials, what each holds, how many at once, estimated wall time and "
                        "device-hours) and exit without training")
    c = parser.add_argument_group("experiment config")
    c.add_argument("--dataset", default=None,
                   help=f"{', '.join(choices['dataset'])} (default: {defaults['dataset']})")
    c.add_argument("--model", default=None, help=f"{', '.join(choices['model'])} (default: {defaults['model']})")
    c.add_argument("--epochs", type=int, default=None, help=f"(default: {defaults['epochs']})")
    c.add_argument("--data-root", default=None, help=f"(default: {defaults['data_root']})")
    c.add_argument("--eval-suite", default=None,
                   help=f"{', '.join(choices['eval_suite'])} (default: {defaults['eval_suite']})")
    c.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="any other config field, e.g. --set lambda_ppa=0.2 eps_schedule=linear eps_warmup_epochs=5; "
                        "every field and its default is listed below")


def scaling(args: argparse.Namespace) -> Scaling:
    """The Scaling of the flags (their ranges are checked with everything else: study/preflight.py)."""
    return Scaling(args.workers, args.cpus_per_worker, args.gpus_per_worker, args.max_failures,
                   getattr(args, "runner", None))


def study_settings(args: argparse.Namespace) -> StudySettings:
    """The StudySettings of the flags add_common_flags defines; a tracker that is not installed is an error here."""
    from .trackers import check_installed, parse_log_to, resolve_mlflow_uri

    log_to = parse_log_to(args.log_to)
    check_installed(log_to)
    if "mlflow" in log_to:
        resolve_mlflow_uri(storage.join(args.storage, args.name), args.mlflow_tracking_uri)  # a store it can use
    return StudySettings(name=args.name, storage=args.storage, scaling=scaling(args),
                         max_concurrent=args.max_concurrent, cluster=args.cluster, address=args.address,
                         resume=args.resume, local_cpus=args.local_cpus, log_to=log_to,
                         mlflow_tracking_uri=args.mlflow_tracking_uri, verbose=args.verbose)


def run_cli(main: Callable[[], int]) -> None:
    """Run a study's main; known user errors become one line on stderr and exit code 2."""
    from ..results import ResultsError
    from .settings import StudyError
    from .tuner import StudyInterrupted

    # Ctrl-C ends the driver at once (KeyboardInterrupt) instead of Tune's graceful stop, which reports
    # unfinished trials as ended; Tune's experiment state is saved as it goes, so --resume continues.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    try:
        sys.exit(main())
    except StudyInterrupted as exc:
        print(f"interrupted: {redact(str(exc))}", file=sys.stderr)
        sys.exit(130)
    except (ConfigError, StudyError, ResultsError) as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished trials are saved; continue with the same command plus --resume",
              file=sys.stderr)
        sys.exit(130)


def console_summary(trials, group: str = "variant") -> str:
    """Mean (and std over seeds) of the headline metrics per group, as fixed-width text."""
    import pandas as pd

    metrics = [m for m in ("clean_acc", "pgd_acc", "cw_acc", "aa_acc", "corruption_acc", "val_robust_acc")
               if m in trials and trials[m].notna().any()]
    done = trials[trials["status"] == "completed"]
    lines = []
    if len(done):
        table = done.groupby(group)[metrics].agg(["mean", "std", "count"])
        rows = []
        for name, row in table.iterrows():
            cells = {"n": int(row[(metrics[0], "count")])}
            for m in metrics:
                std = row[(m, "std")]
                cells[m] = f"{row[(m, 'mean')]:.3f}" + ("" if pd.isna(std) else f"±{std:.3f}")
            rows.append(pd.Series(cells, name=name))
        lines.append(pd.DataFrame(rows).to_string())
        lines.append(_points_note(done, metrics))
    for status, what in (("stopped", "stopped early by the scheduler"), ("failed", "failed (errors below)")):
        ids = trials.loc[trials["status"] == status, "trial_id"].tolist()
        if ids:
            lines.append(f"{what}: {len(ids)} ({', '.join(ids[:8])}{', ...' if len(ids) > 8 else ''})")
    return "\n".join(lines) if lines else "(no trials)"


def _points_note(done, metrics: list[str]) -> str:
    """'(mean±std over n seeds; clean_acc, pgd_acc on 359 test points; aa_acc on 100 test points)', wrapped."""
    from ..results import points_measured

    on: dict[str, list[str]] = {}
    for metric in metrics:
        if points := points_measured(done, metric):
            on.setdefault(points, []).append(metric)
    measured = "; ".join(f"{', '.join(names)} on {points}" for points, names in on.items())
    return wrap_help(f"(mean±std over n seeds{'; ' + measured if measured else ''})")


def exit_code(trials, stream=None) -> int:
    """How the study went: 0 when every trial completed or was stopped by the scheduler; 1 when any failed,
    after one line per distinct error (how many trials, which, where the full log is) on stderr."""
    stream = stream or sys.stderr
    failed = trials[trials["status"] == "failed"]
    if failed.empty:
        return 0
    print(f"\n{len(failed)} of {len(trials)} trial(s) failed:", file=stream)
    for error, group in failed.groupby(failed["error"].fillna(""), sort=False):
        ids = group["trial_id"].tolist()
        logs = [redact(log) for log in group.get("error_log", []) if isinstance(log, str) and log]
        where = "no log" if not logs else f"full log: {logs[0]}" + (
            f" (one per trial in {storage.parent(logs[0])}/)" if len(logs) > 1 else "")
        print(f"  {len(ids)} x {redact(error) or '(no message)'}  [{', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''}]; "
              f"{where}", file=stream)
    return 1


def print_locations(written: dict[str, str], settings: StudySettings | None = None) -> None:
    """The results directory, every file the study wrote, and where each tracker (--log-to) has the trials."""
    from .trackers import tracker_locations

    directory = storage.parent(written["trials"])
    print(f"\nresults: {redact(directory)}")
    for table, location in written.items():
        print(f"  {table:14s} {redact(location)}")
    if settings is not None and settings.log_to:
        for tracker, where in tracker_locations(settings.log_to, study_dir=directory,
                                                mlflow_tracking_uri=settings.mlflow_tracking_uri).items():
            print(f"  {tracker:14s} {redact(where)}")
