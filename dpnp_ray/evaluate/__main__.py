"""Re-evaluate exported models: `python -m dpnp_ray.evaluate <model dir or study dir> --suite full`.

Given a study directory (one with models/), every exported model of the study is evaluated in turn (or those
of `--variants` / `--seeds`); a study's AutoAttack `standard` numbers come from here and nowhere else, and the
report reads them from `<study>/evaluations/*/` (analysis/markdown.py).

Runs the robustness suite on the whole test set (eval_n = eval_aa_n = 0) in fp32, whatever precision the
model was trained in: with `--suite full` that is AutoAttack `standard` on every test point, as
RobustBench reports (docs/evaluation.md#suite-levels). The rows go beside the model, never into its
directory (which stays the model and nothing else): to `--out`, by default `<study>/evaluations/<trial_id>/`
for a study's model (`<study>/models/<trial_id>`) and `<model dir>-evaluations/` for any other, in the results
schema: evals.parquet (and corruptions, geometry, masking, points .parquet), keyed by the trial's study,
trial_id, variant and seed, plus evaluation-<suite>.json with the summary and every accuracy measured. Rows
of other suite levels already there are kept. As each part of the suite starts it prints a line with the time
so far and about how long the rest takes (the study's own evaluation of the model, part by part, scaled to the
points evaluated now and recalibrated as parts finish). `--set FIELD=VALUE` changes evaluation fields (e.g. eval_n=1000 for a
quicker look, data_root=/data when the data moved).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .. import results, storage
from ..config import ExperimentConfig, parse_assignments
from ..model_export import json_safe, load_model, read_model_metadata
from ..provenance import provenance, redact

#: what a re-evaluation changes in the trial's config unless --set says otherwise: the whole test set
WHOLE_TEST_SET = {"eval_n": 0, "eval_aa_n": 0}
TABLES = ("evals", "corruptions", "geometry", "masking")


def evaluation_config(trained: dict[str, Any], suite: str, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """The config a re-evaluation runs: the trained config at `suite`, on the whole test set, then overrides."""
    return ExperimentConfig.from_dict({**trained, **WHOLE_TEST_SET, "eval_suite": suite, **(overrides or {})})


def default_out(model_dir: str) -> str:
    """Where a re-evaluation of `model_dir` goes unless --out says: `<study>/evaluations/<trial_id>` for a study's
    model (`<study>/models/<trial_id>`), else the sibling `<model dir>-evaluations`. Local paths and URIs alike."""
    base, query = storage.split_query(model_dir)
    base = base.rstrip("/")
    holder, name = storage.parent(base), base.rsplit("/", 1)[-1]
    if holder.rsplit("/", 1)[-1] == "models" and "/" in holder:
        return storage.join(storage.parent(holder), "evaluations", name) + query
    return f"{base}-evaluations{query}"


def _same_location(a: str, b: str) -> bool:
    if storage.is_uri(a) or storage.is_uri(b):
        return storage.split_query(a)[0].rstrip("/") == storage.split_query(b)[0].rstrip("/")
    return storage.local_path(a).resolve() == storage.local_path(b).resolve()


def evaluate_model(directory: str, suite: str = "full", *, device: str = "auto",
                   overrides: dict[str, Any] | None = None, out: str | None = None, log=print) -> dict[str, str]:
    """Evaluate the model in `directory` and write its rows to `out` (default_out); returns table name -> location."""
    from ..devices import Precision, resolve_device
    from ..distributed import LocalEnvironment
    from ..factory import load_data
    from .suite import check_inputs, part_estimates, run_suite

    out = out or default_out(directory)
    if _same_location(out, directory):
        raise ValueError(f"--out {redact(out)}: is the model's own directory; the model directory holds the model "
                         "only: choose another --out (default: beside it)")
    metadata = read_model_metadata(directory)
    cfg = evaluation_config(metadata["config"], suite, overrides)
    check_inputs(cfg)
    env = LocalEnvironment(resolve_device(device))
    net = load_model(directory, device=env.device)
    data = load_data(cfg)
    # fp32 whatever the training precision: bf16/fp16 logits round attack gradients and margins.
    precision = Precision.choose("fp32", env.device)
    started = time.perf_counter()
    # progress with the time left, estimated from the study's own (smaller) evaluation of this model
    estimates = part_estimates(metadata.get("metrics") or {}, metadata["config"], cfg, len(data.test))
    result = run_suite(net, data, cfg, env, precision, log=log, estimates=estimates)
    seconds = time.perf_counter() - started
    trial = metadata.get("trial") or {}
    keys = {k: trial.get(k) for k in results.KEY_COLUMNS}
    written = {}
    for table in TABLES:
        rows = [{**keys, **row} for row in getattr(result, table)]
        if not rows:
            continue
        earlier = results.read_table(out, table, required=False)
        if earlier is not None:  # other suite levels' rows stay; this level's rows are replaced (last wins)
            rows = earlier.to_dict("records") + rows
        written[table] = results.write_table(out, table, rows)
    written["points"] = _write_points(out, results.points_frame(result.evals, result.points, keys))
    accuracies = [{k: row.get(k) for k in ("attack", "loss", "norm", "eps", "steps", "restarts", "n", "accuracy")}
                  for row in result.evals]
    summary = {**keys, "model": redact(directory), "suite": suite, "eval_precision": precision.name,
               "device": str(env.device), "eval_n": cfg.eval_n, "eval_aa_n": cfg.eval_aa_n, "seconds": seconds,
               "accuracies": accuracies, **result.summary,
               "config": {k: redact(v) if isinstance(v, str) else v for k, v in cfg.to_dict().items()},
               **provenance(str(env.device))}
    location = storage.join(out, f"evaluation-{suite}.json")
    storage.write_bytes_atomic(location, json.dumps(json_safe(summary), indent=1).encode())
    written["summary"] = location
    if log is not None:
        first = result.evals[:4]
        log("  ".join(f"{e['attack']} {e['accuracy']:.4f}" for e in first) + f"  (n={first[0]['n']})")
        if "aa_acc" in result.summary:
            log(f"autoattack {result.summary['aa_version']} {result.summary['aa_acc']:.4f} (n={result.summary['aa_n']})")
    return written


def _write_points(directory: str, points) -> str:
    """points.parquet next to the model: an evaluation run again replaces all its points (a smaller eval_n
    leaves none of the earlier ones behind); other evaluations' points stay."""
    import pandas as pd

    earlier = results.read_table(directory, "points", required=False)
    if earlier is not None:
        key = results.POINT_EVAL_KEY
        rerun = pd.MultiIndex.from_frame(points[key].astype(object).drop_duplicates())
        kept = earlier[~pd.MultiIndex.from_frame(earlier[key].astype(object)).isin(rerun)]
        points = results.compact_points(pd.concat([kept.drop(columns="schema_version"), points], ignore_index=True))
    return results.write_table(directory, "points", points)


def study_models(study_dir: str, variants: list[str] | None = None, seeds: list[int] | None = None) -> list[str]:
    """The exported model directories of a study's completed trials (<study>/models/<trial_id>/, from its
    trials.parquet, in trial_id order), those of `variants` and `seeds` only when given. ValueError when none."""
    trials = results.read_table(study_dir, "trials")
    done = trials[trials["status"] == "completed"].sort_values("trial_id")
    if variants is not None:
        done = done[done["variant"].isin(variants)]
    if seeds is not None:
        done = done[done["seed"].isin(seeds)]
    chosen = [storage.join(study_dir, "models", str(t)) for t in done["trial_id"]]
    chosen = [d for d in chosen if storage.exists(storage.join(d, "model.json"))]
    if not chosen:
        asked = (f" of variants {variants}" if variants else "") + (f" of seeds {seeds}" if seeds else "")
        raise ValueError(f"{redact(study_dir)}: no exported model of a completed trial{asked} under models/")
    return chosen


def is_study_dir(location: str) -> bool:
    """A study directory (trials.parquet inside) rather than one model's directory."""
    return storage.exists(storage.join(location, "trials.parquet"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpnp_ray.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an exported model directory (<study>/models/<trial_id>), or a study "
                                      "directory: every model it exported")
    parser.add_argument("--variants", nargs="*", default=None, help="with a study directory: only these variants "
                                                                      "(default: all)")
    parser.add_argument("--seeds", nargs="*", type=int, default=None, help="with a study directory: only these "
                                                                           "seeds (default: all)")
    parser.add_argument("--suite", default="full", choices=["basic", "quick", "full"],
                        help="suite level (default: %(default)s: AutoAttack standard)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: %(default)s")
    parser.add_argument("--out", default=None,
                        help="where the tables go (default: <study>/evaluations/<trial_id> for a study's model, "
                             "else <model dir>-evaluations); never the model directory")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="evaluation config fields, e.g. eval_n=1000 data_root=/data")
    args = parser.parse_args(argv)
    from ..devices import resolve_device

    try:
        resolve_device(args.device)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        study = is_study_dir(args.model)
        if study and args.out:
            raise ValueError("--out with a study directory: each model's rows go to <study>/evaluations/<trial_id>/")
        if not study and (args.variants or args.seeds):
            raise ValueError(f"--variants / --seeds: {redact(args.model)} is one model's directory, not a study's")
        models = study_models(args.model, args.variants, args.seeds) if study else [args.model]
        overrides = parse_assignments(args.set)
        for number, model in enumerate(models, 1):
            if study:
                print(f"[{number}/{len(models)}] {redact(model)}", flush=True)
            written = evaluate_model(model, args.suite, device=args.device, overrides=overrides, out=args.out)
            for table, location in written.items():
                print(f"  {table:12s} {redact(location)}")
    except ValueError as exc:  # ModelFileError, ConfigError, DataError: a message, not a traceback
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
