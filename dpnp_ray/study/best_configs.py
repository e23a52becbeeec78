"""Outputs chosen from a finished study: runnable best configs, and an equal-budget comparison's chosen points.

After a study, `write_best_configs` writes `<study>/best/<trial_id>.yaml` (per variant for an ablation,
the Pareto front for a search): `python -m dpnp_ray --config best/<trial_id>.yaml` retrains one.

An equal-budget comparison (`studies/search.py --methods ...`) searches each method in a search of its own,
`<study>/<name>-<method>/` (the same trials, epochs, sampler and seed, objective, scheduler and shared ranges),
and writes each method's chosen point to `<study>/best/<method>.yaml` by one rule (`write_chosen_points`).
`studies/ablation.py --tuned-from <study>` then starts from the comparison's base config at Adv-DPNP's point
(so `full` and its switches run there) and runs each other method at its point as the variant `tuned_<method>`
(`comparison_layer`; study.yaml records the points under `tuned`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from .. import results, storage
from ..config import TEST_SUITE_FIELDS
from ..provenance import redact
from .records import checked_id, read_records
from .settings import StudyError
from .study_file import BEST_DIR, STUDY_FILE, TUNED_PREFIX, dump_yaml, is_number, plain, read_yaml, redacted


def write_best_configs(study_dir: str, kind: str) -> str:
    """<study>/best/<trial_id>.yaml for the best completed trial of each variant (ablation: by validation
    robust accuracy, then clean) or every trial on the Pareto front (search: pareto.parquet, the search's
    validation objectives). Files of trials no longer chosen are removed. Returns the directory."""
    done = [r for r in read_records(study_dir) if r.get("status") == "completed"]
    if kind == "ablation":
        best: dict[Any, dict] = {}
        for record in done:
            current = best.get(record.get("variant"))
            if current is None or _selection_key(record) > _selection_key(current):
                best[record.get("variant")] = record
        chosen = list(best.values())
        reason = "the best seed of its variant by validation robust accuracy (then clean accuracy)"
    else:
        front = results.read_table(study_dir, "pareto", required=False)
        if front is not None:
            ids = set(front["trial_id"])
            chosen = [r for r in done if r["trial_id"] in ids]
        else:
            values = [[_metric(r, "val_clean_acc"), _metric(r, "val_robust_acc")] for r in done]
            chosen = [r for r, keep in zip(done, results.pareto_mask(values) if done else []) if keep]
        reason = "on the Pareto front of the search's validation objectives"
    directory = storage.join(study_dir, BEST_DIR)
    names = set()
    for record in chosen:
        name = f"{checked_id(record['trial_id'])}.yaml"  # read_records left out ids that are no file name
        names.add(name)
        storage.write_bytes_atomic(storage.join(directory, name), best_config_yaml(record, kind, reason).encode())
    for stale in storage.list_files(directory, ".yaml"):
        if stale.rsplit("/", 1)[-1] not in names:
            storage.delete(stale)
    return directory


def method_study_dir(study_dir: str, name: str, method: str) -> str:
    """Where `method`'s search of the comparison `name` lies: the study <study>/<name>-<method>/, whose name (in
    its tables, Optuna and the trackers) says both."""
    return storage.join(study_dir, method_study_name(name, method))


def method_study_name(name: str, method: str) -> str:
    return f"{name}-{method}"


CHOICE_RULES: dict[str, tuple[str, ...]] = {"multi": ("val_robust_acc", "val_clean_acc"),
                                            "robust": ("val_robust_acc", "val_clean_acc"),
                                            "clean": ("val_clean_acc", "val_robust_acc")}
"""A comparison's objective -> the validation metrics that choose each method's point, highest first (the most
robust point of the Pareto front for `multi`); the earliest trial wins a tie."""


def chosen_record(records: Sequence[dict[str, Any]], objective: str) -> dict[str, Any] | None:
    """The completed trial CHOICE_RULES[objective] chooses among `records` (trial_id order); None if none."""
    done = [r for r in records if r.get("status") == "completed"]
    return max(done, key=lambda r: tuple(_metric(r, m) for m in CHOICE_RULES[objective]), default=None)


def write_chosen_points(study_dir: str, name: str, methods: Sequence[str], objective: str) -> str:
    """<study>/best/<method>.yaml: each method's chosen point (`chosen_record`) from its search. StudyError naming
    the methods whose search has no completed trial (after writing the others). Returns the directory."""
    directory, empty = storage.join(study_dir, BEST_DIR), []
    rule = f"chosen by the validation split's {', then '.join(CHOICE_RULES[objective])} (objective {objective})"
    for method in methods:
        sub = method_study_dir(study_dir, name, method)
        record = chosen_record(read_records(sub), objective)
        if record is None:
            empty.append(method)
            continue
        text = best_config_yaml(record, "search", rule, retrain=storage.join(BEST_DIR, f"{method}.yaml"),
                                model=storage.join(method_study_name(name, method), "models", record["trial_id"]))
        storage.write_bytes_atomic(storage.join(directory, f"{method}.yaml"), text.encode())
    if empty:
        raise StudyError(f"no completed trial in the search of {', '.join(empty)} in {redact(study_dir)}: no chosen "
                         f"point for {'it' if len(empty) == 1 else 'them'}")
    return directory


def comparison_layer(comparison_dir: str) -> dict[str, Any]:
    """`--tuned-from DIR`: what an ablation takes from the equal-budget comparison in DIR: its base config less the
    test suite's own fields (TEST_SUITE_FIELDS), the seed and the method (the ablation's own), with Adv-DPNP's
    chosen parameters as `point` when it was tuned (the caller lays it over the study file, which may be the very
    file the comparison started from); `tuned` (tuned_<method> -> every other method and its chosen parameters,
    from best/<method>.yaml) and `tuned_from`. StudyError when DIR holds no finished comparison."""
    where = redact(comparison_dir)
    study = read_yaml(storage.join(comparison_dir, STUDY_FILE), "--tuned-from: the comparison's study file")
    methods = study.get("methods") if isinstance(study, dict) and study.get("kind") == "search" else None
    if not methods or not isinstance(study.get("config"), dict):
        raise StudyError(f"--tuned-from {where}: not an equal-budget comparison (its {STUDY_FILE} records no search "
                         "with `methods`); run studies/search.py --methods first")
    tuned = {}
    for method in methods:
        chosen = read_yaml(storage.join(comparison_dir, BEST_DIR, f"{method}.yaml"),
                           f"--tuned-from {where}: {method}'s chosen point", missing_ok=True)
        params = chosen.get("params") if isinstance(chosen, dict) else None
        if not isinstance(params, dict) or (chosen.get("config") or {}).get("method") != method:
            raise StudyError(f"--tuned-from {where}: no chosen point of {method} ({BEST_DIR}/{method}.yaml); finish "
                             f"the comparison first (studies/search.py --resume --storage ... --name "
                             f"{study.get('name')})")
        tuned[f"{TUNED_PREFIX}{method}"] = {"method": method, **params}
    config = {k: v for k, v in study["config"].items() if k not in (*TEST_SUITE_FIELDS, "seed", "method")}
    # Adv-DPNP's point: `full`, its single switches and factorial cells all run at it
    point = {k: v for k, v in tuned.pop(f"{TUNED_PREFIX}adv_dpnp", {}).items() if k != "method"}
    return {"config": config, "point": point, "tuned": tuned, "tuned_from": comparison_dir}


def best_config_yaml(record: dict[str, Any], kind: str, reason: str, *, retrain: str | None = None,
                     model: str | None = None) -> str:
    """A trial's config as a runnable file (`python -m dpnp_ray --config`), with where it came from. `retrain`,
    `model`: where the file and the trial's model lie in the study (default best/<trial_id>.yaml, models/<trial_id>)."""
    summary = record.get("summary") or {}
    trial_id = record["trial_id"]
    header = (f"Trial {trial_id} of the {kind} study {record.get('study')!r}: {reason}.\n"
              f"Retrain it: python -m dpnp_ray --config <study>/{retrain or f'{BEST_DIR}/{trial_id}.yaml'}\n"
              f"Its trained model: <study>/{model or f'models/{trial_id}'}/ (dpnp_ray.load_model)")
    document = {
        "trial": {k: record.get(k) for k in ("study", "trial_id", "variant", "seed")},
        "validation": {k: summary.get(k) for k in ("val_clean_acc", "val_robust_acc", "best_epoch")},
        "test": {k: summary[k] for k in ("clean_acc", "pgd_acc", "cw_acc", "aa_acc") if k in summary},
        "params": plain(record.get("params") or {}),  # what the searcher chose (empty in an ablation)
        "config": plain(record.get("config") or {}),
    }
    return dump_yaml(redacted(document), header)


def _selection_key(record: dict[str, Any]) -> tuple[float, float, float]:
    return _metric(record, "val_robust_acc"), _metric(record, "val_clean_acc"), -float(record.get("seed") or 0)


def _metric(record: dict[str, Any], name: str) -> float:
    value = (record.get("summary") or {}).get(name)
    return float(value) if is_number(value) and math.isfinite(value) else float("-inf")
