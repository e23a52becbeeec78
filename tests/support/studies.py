"""The study scripts as modules (without running them), a study resolved from their flags, a trial record written
by hand, and a stub calibration for plans: studies without Ray."""

from __future__ import annotations

import importlib.util

from dpnp_ray.config import ExperimentConfig
from dpnp_ray.study import cost
from dpnp_ray.study.recipe import resolve_study
from dpnp_ray.study.records import write_record

from .processes import REPO

STUB = cost.Calibration(train_seconds_per_fe=1e-4, eval_seconds_per_fe=1e-4, device="cpu", threads=1, detail="stub")


def load_script(name: str):
    """studies/<name>.py as a module (its parser, defaults and main), without running it."""
    spec = importlib.util.spec_from_file_location(f"studies_{name}", REPO / "studies" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolve(script, kind: str, *argv: str):
    return resolve_study(script.build_parser(), kind, defaults=script.DEFAULTS, smoke=script.SMOKE, argv=list(argv))


def record(directory, trial_id, variant, seed, val_robust, val_clean=0.9, status="completed", **config):
    """A trial's record as the runner writes it (config and validation summary); returns its config."""
    cfg = ExperimentConfig.from_dict({"epochs": 1, "seed": seed, **config}).to_dict()
    write_record(directory, {"study": "b", "trial_id": trial_id, "variant": variant, "seed": seed, "status": status,
                             "config": cfg, "summary": {"val_robust_acc": val_robust, "val_clean_acc": val_clean,
                                                        "clean_acc": 0.8, "pgd_acc": 0.4}})
    return cfg
