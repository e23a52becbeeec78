"""Command-line pieces shared by the study scripts: flags, settings, errors, the summary table."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

from .config import ConfigError, field_choices, parse_assignments
from .ray_train import Scaling
from .study.settings import StudySettings


def add_common_flags(parser: argparse.ArgumentParser, default_name: str) -> None:
    g = parser.add_argument_group("where and how trials run")
    g.add_argument("--cluster", action="store_true",
                   help="attach to the running Ray cluster (ray.init(address='auto')) instead of a local instance")
    g.add_argument("--address", help="attach to the Ray cluster at this address (implies --cluster)")
    g.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP ranks) per trial")
    g.add_argument("--cpus-per-worker", type=float, default=1.0)
    g.add_argument("--gpus-per-worker", type=float, default=0.0, help="0: CPU workers (gloo); >0: GPU workers (NCCL)")
    g.add_argument("--max-concurrent", type=int, default=0, help="trials at once; 0: as many as the resources allow")
    g.add_argument("--max-failures", type=int, default=2,
                   help="times Ray Train restarts a trial's workers from the latest checkpoint after a crash")
    g.add_argument("--storage", default="results",
                   help="results root: a local path, or a URI shared by all nodes (s3://...) on multi-node clusters")
    g.add_argument("--name", default=default_name, help="study name: results go to <storage>/<name>/")
    g.add_argument("--resume", action="store_true", help="continue the study <storage>/<name> after an interruption")
    g.add_argument("--local-cpus", type=int, default=None, help="size of the local Ray instance (default: all cores)")
    c = parser.add_argument_group("experiment config")
    choices = field_choices()
    c.add_argument("--dataset", default=None, help=f"{', '.join(choices['dataset'])} (default: digits, offline)")
    c.add_argument("--model", default=None, help=f"{', '.join(choices['model'])} (default: small_cnn)")
    c.add_argument("--epochs", type=int, default=None)
    c.add_argument("--data-root", default=None)
    c.add_argument("--eval-suite", default=None, help="basic, quick (default), full")
    c.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="any other config field, e.g. --set lambda_ppa=0.2 eps_schedule=linear eps_warmup_epochs=5")


def base_config(args: argparse.Namespace, defaults: dict[str, Any]) -> dict[str, Any]:
    base = dict(defaults)
    for flag, field in (("dataset", "dataset"), ("model", "model"), ("epochs", "epochs"),
                        ("data_root", "data_root"), ("eval_suite", "eval_suite")):
        value = getattr(args, flag)
        if value is not None:
            base[field] = value
    base.update(parse_assignments(args.set))
    return base


def scaling(args: argparse.Namespace) -> Scaling:
    problems = []
    if args.workers < 1:
        problems.append(f"--workers {args.workers}: must be >= 1")
    if args.cpus_per_worker <= 0:
        problems.append(f"--cpus-per-worker {args.cpus_per_worker}: must be > 0")
    if args.gpus_per_worker < 0:
        problems.append(f"--gpus-per-worker {args.gpus_per_worker}: must be >= 0")
    if args.max_failures < -1:
        problems.append(f"--max-failures {args.max_failures}: must be >= -1 (-1: retry forever)")
    if problems:
        raise ConfigError(problems)
    return Scaling(args.workers, args.cpus_per_worker, args.gpus_per_worker, args.max_failures)


def study_settings(args: argparse.Namespace) -> StudySettings:
    """The StudySettings of the flags add_common_flags defines."""
    return StudySettings(name=args.name, storage=args.storage, scaling=scaling(args),
                         max_concurrent=args.max_concurrent, cluster=args.cluster, address=args.address,
                         resume=args.resume, local_cpus=args.local_cpus)


def run_cli(main: Callable[[], int]) -> None:
    """Run a study's main; known user errors become one line on stderr and exit code 2."""
    from .results import ResultsError
    from .study.settings import StudyError
    from .study.tune import StudyInterrupted

    # Ctrl-C ends the driver at once (KeyboardInterrupt) instead of Tune's graceful stop, which reports
    # unfinished trials as ended; Tune's experiment state is saved as it goes, so --resume continues.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    try:
        sys.exit(main())
    except StudyInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        sys.exit(130)
    except (ConfigError, StudyError, ResultsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
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
    failed = trials[trials["status"] != "completed"]
    for _, row in failed.iterrows():
        lines.append(f"{row['trial_id']}: {row['status']} {row.get('error', '')}")
    return "\n".join(lines) if lines else "(no trials)"


def print_locations(written: dict[str, str]) -> None:
    """The results directory and every file the study wrote."""
    from pathlib import Path

    print(f"\nresults: {Path(written['trials']).parent}")
    for table, location in written.items():
        print(f"  {table:14s} {location}")
