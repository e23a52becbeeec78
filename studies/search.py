r"""Optuna search over Adv-DPNP's loss weights, eps schedule and ablation switches (Ray Tune).

    python studies/search.py --trials 20                     # digits, TPE, both objectives, ASHA
    python studies/search.py --trials 4 --epochs 2 --smoke   # a tiny search: minutes on 2 CPUs
    python studies/search.py --trials 64 --dry-run           # the plan and its bill; trains nothing
    python studies/search.py --cluster --dataset cifar10 --model resnet18 --epochs 30 \
        --trials 64 --gpus-per-worker 1 --storage s3://bucket/studies \
        --optuna-storage postgresql://user@db/optuna
    python studies/search.py --config study.yaml --trials 40  # a study file; flags override it
    python studies/search.py --resume --trials 40             # grow a finished search to 40 trials
    python studies/search.py --methods --trials 20 --name tuned  # each method, equal budgets
Maximizes validation clean and validation robust accuracy (Pareto front in pareto.parquet, its
configs in best/<trial_id>.yaml); watch it live with
`optuna-dashboard <storage>/<name>/optuna.journal`.
With --methods (Adv-DPNP, PGD-AT, TRADES, MART), one search per method, one after another, each a
study <storage>/<name>/<name>-<method>/ with the same trials, epochs, sampler and seed, objective
and scheduler, over lr, weight_decay and the training eps in the same ranges plus the loss weights
that method's loss reads; each method's chosen point (the same rule on the validation split) goes
to <storage>/<name>/best/<method>.yaml, and `studies/ablation.py --tuned-from <storage>/<name>`
runs every method at its own point.
"""

import argparse
import dataclasses
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from dpnp_ray import results, storage
from dpnp_ray.study.cli import (HelpFormatter, add_common_flags, config_epilog, console_summary, exit_code,
                                print_locations, run_cli, study_settings)
from dpnp_ray.methods import METHODS
from dpnp_ray.provenance import redact
from dpnp_ray.study import StudyError, plan_search, run_search
from dpnp_ray.study.best_configs import method_study_name, write_best_configs, write_chosen_points
from dpnp_ray.study.recipe import resolve_study
from dpnp_ray.study.search_space import OBJECTIVES, SAMPLERS, SearchSpace
from dpnp_ray.study.study_file import read_yaml

DEFAULTS = {"config": {"dataset": "digits", "model": "small_cnn", "epochs": 8, "lr": 0.05, "batch_size": 64,
                       "eval_suite": "basic"},
            "space": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(SearchSpace()).items()},
            "optuna_storage": None, "methods": None}
SMOKE = {"config": {"epochs": 2, "train_attack_steps": 3, "val_attack_steps": 3, "eval_attack_steps": 10}}
COMPARED = ("adv_dpnp", "pgd_at", "trades", "mart")
"""--methods without names: the methods the paper compares."""


class _MethodsAction(argparse.Action):
    """--methods: the names given, or COMPARED when none is."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, list(values) or list(COMPARED))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                     epilog=config_epilog(DEFAULTS["config"]))
    parser.add_argument("--trials", type=int, default=20, help="Optuna trials in the study")
    parser.add_argument("--sampler", default="tpe", choices=SAMPLERS.names(), help="Optuna sampler")
    parser.add_argument("--objective", default="multi", choices=list(OBJECTIVES),
                        help="multi: maximize val clean and val robust accuracy; robust / clean: one of them")
    parser.add_argument("--scheduler", default="asha", choices=["asha", "none"],
                        help="ASHA early stopping on validation robust accuracy")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed")
    parser.add_argument("--optuna-storage", default=None,
                        help="journal file path or RDB URL (default: <storage>/<name>/optuna.journal)")
    parser.add_argument("--no-switches", action="store_true", help="keep every term on; search weights only")
    parser.add_argument("--methods", nargs="*", default=None, choices=METHODS.names(), metavar="METHOD",
                        action=_MethodsAction,
                        help="tune these methods (of " + ", ".join(METHODS.names()) + "; none named: "
                             + " ".join(COMPARED) + ") with equal budgets, a search each of lr, weight_decay, the "
                             "training eps and the loss weights the method uses, and write best/<method>.yaml "
                             "(default: Adv-DPNP's search)")
    parser.add_argument("--smoke", action="store_true", help="2 epochs, short attacks: a quick demonstration")
    add_common_flags(parser, default_name="search", defaults=DEFAULTS["config"])
    return parser


def main() -> int:
    recipe = resolve_study(build_parser(), "search", defaults=DEFAULTS, smoke=SMOKE)
    settings = study_settings(recipe.args)
    study = recipe.study
    spec = recipe.spec()
    if recipe.args.dry_run:
        print(plan_search(spec, settings, methods=study["methods"]).format())
        return 0
    if study["methods"]:
        return compare_methods(recipe, spec, settings)
    with recipe:  # holds the study's driver lock from recipe.record until the tables are written
        written = run_search(spec, settings, before_training=recipe.record)
        written["best"] = write_best_configs(settings.directory, "search")
    directory = storage.parent(written["trials"])
    trials = results.read_table(directory, "trials")
    print("\n" + console_summary(trials, group="trial_id"))
    pareto = results.read_table(directory, "pareto")
    print("\nPareto front (val clean vs val robust):")
    print(pareto.drop(columns=["schema_version"]).to_string(index=False, max_cols=8))
    print_locations(written, settings)
    return exit_code(trials)  # 1 when a trial failed


def compare_methods(recipe, spec, settings) -> int:
    """--methods: one search per method (its own study in the comparison's directory, the same budget and rules,
    one after another), then each method's chosen point in <study>/best/<method>.yaml."""
    from ray import tune

    study, failed = recipe.study, 0
    with recipe:  # the comparison's driver lock, from recipe.record (before the first trial) to the chosen points
        for method in study["methods"]:
            sub = dataclasses.replace(settings, storage=settings.directory,
                                      name=method_study_name(settings.name, method))
            # --resume: a method's search the interrupted run never reached starts afresh
            sub = dataclasses.replace(sub, resume=settings.resume and tune.Tuner.can_restore(sub.tune_experiment))
            print(f"\n=== {method}: {spec.n_trials} trial(s) in {redact(sub.directory)} ===")
            # each method's Optuna study lives in its own study directory's journal
            written = run_search(dataclasses.replace(spec, method=method, optuna_storage=None), sub,
                                 before_training=recipe.record)
            write_best_configs(sub.directory, "search")
            trials = results.read_table(storage.parent(written["trials"]), "trials")
            print("\n" + console_summary(trials, group="trial_id"))
            failed = max(failed, exit_code(trials))
        try:
            best = write_chosen_points(settings.directory, settings.name, study["methods"], study["objective"])
        except StudyError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(f"\nChosen points ({redact(best)}; validation split, one rule for every method):")
    for method in study["methods"]:
        chosen = read_yaml(storage.join(best, f"{method}.yaml"), "chosen point")
        values = ", ".join(f"{k}={v:.4g}" for k, v in chosen["params"].items())
        print(f"  {method:<13s} {chosen['trial']['trial_id']}  val clean {chosen['validation']['val_clean_acc']:.3f}  "
              f"val robust {chosen['validation']['val_robust_acc']:.3f}  {values}")
    print(f"\nEvery method at its point: python studies/ablation.py --tuned-from {redact(settings.directory)}")
    return failed


if __name__ == "__main__":
    run_cli(main)
