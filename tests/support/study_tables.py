"""Synthetic study directories for the analysis tests: an ablation (four variants, one failed trial) and a
search, each with every table the report reads, written with results.write_table."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import stats
from dpnp_ray.config import ExperimentConfig
from dpnp_ray.results import config_columns, write_table

PROVENANCE = dict(error="", num_workers=1, use_gpu=False, hardware="2 CPU (test)", code_version="abc1234",
                  torch_version="2.4.0", ray_version="2.50.0", optuna_version="4.0.0", python_version="3.11",
                  aa_version="0.2.0")
DEFAULT_CONFIG = config_columns(ExperimentConfig(eps=8 / 255).to_dict())
ABLATION = {  # variant: (config changes, accuracy offset)
    "full": ({}, 0.0),
    "no_ppa": ({"use_ppa": False}, -0.03),
    "no_npr": ({"use_npr": False}, -0.01),
    "pgd_at": ({"method": "pgd_at"}, -0.05),
}


def trial_row(study: str, trial_id: str, variant: str, seed: int, acc: float, kind: str, config: dict,
              status: str = "completed", **extra) -> dict:
    cfg = {**DEFAULT_CONFIG, **{f"cfg_{k}": v for k, v in config.items()}, "cfg_seed": seed}
    return {
        "study": study, "trial_id": trial_id, "variant": variant, "seed": seed, "status": status,
        "clean_acc": 0.80 + acc, "fgsm_acc": 0.55 + acc, "pgd_acc": 0.50 + acc, "cw_acc": 0.48 + acc,
        "aa_acc": 0.46 + acc, "worst_case_acc": 0.45 + acc, "pgd_aa_gap": 0.04, "corruption_acc": 0.70 + acc,
        "best_epoch": 2, "epochs_run": 3,
        "val_clean_acc": 0.78 + acc, "val_robust_acc": 0.49 + acc, "train_seconds": 10.0, "eval_seconds": 2.0,
        "wall_seconds": 12.0 + seed, "images_per_s": 900.0 + 10 * seed, "study_kind": kind, "masking_flags": 0,
        **PROVENANCE, **cfg, **extra,
    }


def detail_tables(trials: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """epochs, evals, corruptions, geometry and masking rows for every completed trial."""
    out = {name: [] for name in ("epochs", "evals", "corruptions", "geometry", "masking")}
    for _, t in trials[trials["status"] == "completed"].iterrows():
        key = {k: t[k] for k in ("study", "trial_id", "variant", "seed")}
        shift = t["pgd_acc"] - 0.5
        for epoch in range(3):
            out["epochs"].append({**key, "epoch": epoch, "loss_total": 2.0 - 0.5 * epoch, "loss_ce": 1.5 - 0.4 * epoch,
                                  "loss_ppa": 0.3 if t["cfg_use_ppa"] else np.nan, "loss_cons": 0.1,
                                  "train_clean_acc": 0.5 + 0.1 * epoch, "train_adv_acc": 0.3 + 0.05 * epoch,
                                  "val_clean_acc": 0.5 + 0.1 * epoch + shift, "val_robust_acc": 0.3 + 0.05 * epoch,
                                  "eps": (epoch + 1) / 3 * 8 / 255, "lr": 0.1 * 0.5 ** epoch,
                                  "images_per_s": 900.0, "epoch_seconds": 3.0})
        common = dict(suite="quick", split="test", loss="ce", restarts=1, n=100)
        out["evals"] += [{**key, **common, "attack": "clean", "eps": 0.0, "steps": 0, "accuracy": t["clean_acc"]},
                         {**key, **common, "attack": "pgd", "eps": 8 / 255, "steps": 20, "accuracy": t["pgd_acc"]}]
        out["evals"] += [{**key, **common, "attack": "pgd_eps_curve", "eps": e / 255, "steps": 10,
                          "accuracy": t["clean_acc"] - e * 0.04 + shift} for e in (0, 2, 4, 8, 12)]
        out["corruptions"] += [{**key, "source": "generated-c", "corruption": c, "severity": s, "n": 100,
                                "accuracy": 0.8 - 0.05 * s - 0.02 * i + shift}
                               for i, c in enumerate(("gaussian_noise", "fog", "contrast")) for s in range(1, 6)]
        out["geometry"] += [{**key, "split": split, "n": 100, "attack": "pgd", "eps": 8 / 255, "accuracy": 0.5,
                             "prototype_source": "prototype_head",
                             "min_angle_deg": 80.0 - 5 * (split == "adversarial") + seed,
                             "intra_class_compactness": 0.2 + shift, "inter_class_separation": 2.0,
                             "positive_margin_fraction": 0.9} for seed, split in [(t["seed"], "clean"),
                                                                                   (t["seed"], "adversarial")]]
        out["masking"] += [{**key, "check": "fgsm_vs_pgd", "value": 0.05, "threshold": 0.0, "flagged": False,
                            "detail": "PGD below FGSM"},
                           {**key, "check": "eps_curve_to_zero", "value": 0.12, "threshold": 0.05,
                            "flagged": t["variant"] == "pgd_at", "detail": "accuracy at 12/255 <b>not</b> near 0"}]
    return {name: pd.DataFrame(rows) for name, rows in out.items()}


def ablation_tables() -> dict[str, pd.DataFrame]:
    """Four variants, three seeds each (pgd_at: one, so no test), one failed trial, every detail table."""
    rows = []
    for variant, (config, offset) in ABLATION.items():
        seeds = [0] if variant == "pgd_at" else [0, 1, 2]
        rows += [trial_row("abl", f"{variant}-s{s}", variant, s,
                           offset + 0.01 * s + 0.004 * (s * s % 3) * (offset != 0), "ablation", config)
                 for s in seeds]
    rows.append(trial_row("abl", "no_npr-s3", "no_npr", 3, 0.0, "ablation", {"use_npr": False}, status="failed",
                          error="RuntimeError: CUDA out of memory <oom>", clean_acc=np.nan, pgd_acc=np.nan))
    trials = pd.DataFrame(rows)
    return {"trials": trials, **detail_tables(trials)}


def search_tables() -> dict[str, pd.DataFrame]:
    """Twelve completed trials over five parameters and one stopped trial; pareto, epochs and masking tables."""
    rows = []
    for i in range(12):
        lr, lam = 10 ** (-3 + 2 * ((5 * i) % 12) / 11), ((7 * i) % 12) / 11  # log- and linear-uniform grids
        config = {"lr": lr, "lambda_ppa": lam, "ppa_form": ["sqeuclidean", "cosine"][i % 2], "use_npr": bool(i % 3),
                  "epochs": int(3 + i % 4)}
        row = trial_row("search", f"t{i:03d}", "search", 0, 0.05 * math.log10(lr) + 0.02 * lam, "search", config)
        row["val_clean_acc"] = 0.8 - 0.2 * lam + 0.01 * (i % 3)
        rows.append(row)
    rows.append(trial_row("search", "t012", "search", 0, 0.0, "search", {"lr": 0.05}, status="stopped",
                          val_clean_acc=np.nan, val_robust_acc=np.nan))
    trials = pd.DataFrame(rows)
    done = trials[trials["status"] == "completed"]
    front = done[stats.pareto_mask(done[["val_clean_acc", "val_robust_acc"]].to_numpy())]
    details = detail_tables(trials)
    return {"trials": trials, "pareto": front[["study", "trial_id", "val_clean_acc", "val_robust_acc"]],
            "epochs": details["epochs"], "masking": details["masking"]}


def write_study(directory: Path, tables: dict[str, pd.DataFrame], only: tuple[str, ...] | None = None) -> Path:
    for name, frame in tables.items():
        if only is None or name in only:
            write_table(directory, name, frame)
    return directory
