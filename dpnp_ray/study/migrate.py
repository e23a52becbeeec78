"""Bring a study written by older code to what the current code and docs describe.

Searches before the Optuna journal carried the project's trial ids have Optuna trials without a
`trial_id` user attribute, a study without objective names, and a trials.parquet without the
`optuna_trial` column, so the documented join of the journal with the tables fails. `migrate_search`
matches every Optuna trial to its trials.parquet row by its sampled parameters (the values Tune passed to
the trial, bit for bit), then rewrites the journal with those attributes (Optuna refuses to change
finished trials in place, so the trials are copied into a fresh journal, states, values, parameters,
distributions and intermediate values unchanged) and adds the column. Trial ids stay as they were.

An ablation re-evaluated by the retired `studies/autoattack_standard.py` holds its AutoAttack `standard`
numbers in `autoattack_standard.csv`; `migrate_autoattack_csv` writes them where `python -m dpnp_ray.evaluate
<study> --suite full` writes its own, `evaluations/<trial_id>/evals.parquet` (one `autoattack` row, version
standard, per trial) with an evaluation-full.json saying where the row came from, and removes the CSV.

    python -m dpnp_ray.study.migrate docs/data/search_digits
    python -m dpnp_ray.study.migrate docs/data/ablation_digits
"""

from __future__ import annotations

import argparse
import math
import warnings
from typing import Any

import optuna
import pandas as pd

from .. import results, storage
from .search_space import OBJECTIVES
from .optuna_storage import make_storage
from .settings import StudyError

JOURNAL = "optuna.journal"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def _match(trial: optuna.trial.FrozenTrial, rows: pd.DataFrame) -> str:
    """The trial_id of the one trials.parquet row whose param_* values are the trial's parameters."""
    hits = []
    for _, row in rows.iterrows():
        sampled = {c[len("param_"):]: row[c] for c in rows.columns if c.startswith("param_")
                   and not (isinstance(row[c], float) and math.isnan(row[c]))}
        if sampled.keys() == trial.params.keys() and all(_same(sampled[k], trial.params[k]) for k in sampled):
            hits.append(row["trial_id"])
    if len(hits) != 1:
        raise StudyError(f"Optuna trial {trial.number} matches {len(hits)} rows of trials.parquet by its "
                         "parameters; cannot migrate this study")
    return hits[0]


def migrate_search(study_dir: str) -> bool:
    """Migrate the search in study_dir in place; False when it already has the current form."""
    journal = storage.join(study_dir, JOURNAL)
    optuna_storage = make_storage(journal)
    names = optuna.get_all_study_names(optuna_storage)
    if len(names) != 1:
        raise StudyError(f"{journal}: {len(names)} studies; a search's journal holds one")
    study = optuna.load_study(study_name=names[0], storage=optuna_storage)
    table = results.read_table(study_dir, "trials")
    if study.metric_names is not None and all("trial_id" in t.user_attrs for t in study.trials) \
            and "optuna_trial" in table.columns:
        return False
    ids = {t.number: t.user_attrs.get("trial_id") or _match(t, table) for t in study.trials}
    if len(set(ids.values())) != len(ids):
        raise StudyError(f"{journal}: two Optuna trials match one trials.parquet row; cannot migrate")

    metric_names = study.metric_names or (OBJECTIVES["multi"][0] if len(study.directions) == 2 else None)
    fresh_path = journal + ".migrating"
    storage.local_path(fresh_path).unlink(missing_ok=True)
    fresh = optuna.create_study(study_name=study.study_name, storage=make_storage(fresh_path),
                                directions=study.directions)
    if metric_names:
        with warnings.catch_warnings():  # set_metric_names is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            fresh.set_metric_names(list(metric_names))
    for key, value in study.user_attrs.items():
        fresh.set_user_attr(key, value)
    for trial in study.trials:
        fresh.add_trial(optuna.trial.create_trial(
            state=trial.state, values=trial.values, params=trial.params, distributions=trial.distributions,
            user_attrs={**trial.user_attrs, "trial_id": ids[trial.number]}, system_attrs=trial.system_attrs,
            intermediate_values=trial.intermediate_values))
    storage.local_path(fresh_path).replace(storage.local_path(journal))

    number = {trial_id: n for n, trial_id in ids.items()}
    table["optuna_trial"] = table["trial_id"].map(number).astype("Int64")
    results.write_table(study_dir, "trials", table)
    return True


AA_STANDARD_CSV = "autoattack_standard.csv"


def migrate_autoattack_csv(study_dir: str) -> bool:
    """autoattack_standard.csv -> evaluations/<trial_id>/evals.parquet + evaluation-full.json; False if no CSV."""
    import json

    from ..evaluate.accuracy import eval_row
    from ..evaluate.external import AUTOATTACK_ITERATIONS, AUTOATTACK_VERSIONS

    csv = storage.join(study_dir, AA_STANDARD_CSV)
    if not storage.exists(csv):
        return False
    frame = pd.read_csv(storage.local_path(csv))
    for row in frame.to_dict("records"):
        keys = {k: row[k] for k in results.KEY_COLUMNS}
        out = storage.join(study_dir, "evaluations", str(row["trial_id"]))
        version = str(row["aa_version"])
        evals = [{**keys, **eval_row("autoattack", eps=row["eps"], steps=AUTOATTACK_ITERATIONS, restarts=1,
                                     n=row["n"], accuracy=row["aa_standard_acc"], suite="full",
                                     loss="+".join(AUTOATTACK_VERSIONS["standard"]), version="standard")}]
        results.write_table(out, "evals", evals)
        summary = {**keys, "suite": "full", "aa_acc": row["aa_standard_acc"], "aa_version": "standard",
                   "aa_n": int(row["n"]), "aa_code": version, "clean_acc_checked": row["clean_acc"],
                   "seconds": row["seconds"],
                   "converted_from": f"{AA_STANDARD_CSV} of the retired studies/autoattack_standard.py"}
        storage.write_bytes_atomic(storage.join(out, "evaluation-full.json"), json.dumps(summary, indent=1).encode())
    storage.delete(csv)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpnp_ray.study.migrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("study_dir", help="a study's directory")
    args = parser.parse_args(argv)
    search = storage.exists(storage.join(args.study_dir, "optuna.journal"))
    changed = migrate_search(args.study_dir) if search else False
    changed = migrate_autoattack_csv(args.study_dir) or changed
    print(f"{args.study_dir}: {'migrated' if changed else 'already current'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
