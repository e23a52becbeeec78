r"""Optuna search over Adv-DPNP's loss weights, eps schedule and ablation switches (Ray Tune).

    python studies/search.py --trials 20                     # digits, TPE, both objectives, ASHA
    python studies/search.py --trials 4 --epochs 2 --smoke   # a tiny search, a few minutes on 2 CPUs
    python studies/search.py --trials 64 --dry-run           # the plan and its estimated bill; trains nothing
    python studies/search.py --cluster --dataset cifar10 --model resnet18 --epochs 30 --trials 64 \
        --gpus-per-worker 1 --optuna-storage postgresql://user@db/optuna --storage s3://bucket/studies
    python studies/search.py --config study.yaml --trials 40  # a study file; flags override it
    python studies/search.py --resume --trials 40             # grow a finished search to 40 trials
Maximizes validation clean and validation robust accuracy (Pareto front in pareto.parquet, its configs in
best/<trial_id>.yaml); watch it live with `optuna-dashboard <storage>/<name>/optuna.journal`.
"""

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from dpnp_ray import results
from dpnp_ray.cli import (HelpFormatter, add_common_flags, config_epilog, console_summary, exit_code, print_locations,
                          run_cli, study_settings)
from dpnp_ray.study.optuna_search import OBJECTIVES, SAMPLERS, SearchSpace, run_search
from dpnp_ray.study.plan import plan_search
from dpnp_ray.study.recipe import resolve_study, write_best_configs

DEFAULTS = {"config": {"dataset": "digits", "model": "small_cnn", "epochs": 8, "lr": 0.05, "batch_size": 64,
                       "eval_suite": "basic"},
            "space": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(SearchSpace()).items()},
            "optuna_storage": None}
SMOKE = {"config": {"epochs": 2, "train_attack_steps": 3, "val_attack_steps": 3, "eval_attack_steps": 10}}


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
    parser.add_argument("--smoke", action="store_true", help="2 epochs, short attacks: a quick demonstration")
    add_common_flags(parser, default_name="search", defaults=DEFAULTS["config"])
    return parser


def main() -> int:
    recipe = resolve_study(build_parser(), "search", defaults=DEFAULTS, smoke=SMOKE)
    settings = study_settings(recipe.args)
    study = recipe.study
    if recipe.args.dry_run:
        print(plan_search(recipe.config, settings, trials=recipe.trials_to_run, scheduler=study["scheduler"]).format())
        return 0
    with recipe:  # holds the study's driver lock from recipe.record until the tables are written
        written = run_search(recipe.config, settings, trials=recipe.trials_to_run, space=recipe.search_space(),
                             sampler=study["sampler"], objective=study["objective"], scheduler=study["scheduler"],
                             seed=study["sampler_seed"], optuna_storage=study["optuna_storage"],
                             extend="trials" in recipe.grown, before_training=recipe.record)
        written["best"] = write_best_configs(settings.directory, "search")
    directory = results.parent(written["trials"])
    trials = results.read_table(directory, "trials")
    print("\n" + console_summary(trials, group="trial_id"))
    pareto = results.read_table(directory, "pareto")
    print("\nPareto front (val clean vs val robust):")
    print(pareto.drop(columns=["schema_version"]).to_string(index=False, max_cols=8))
    print_locations(written, settings)
    return exit_code(trials)  # 1 when a trial failed


if __name__ == "__main__":
    run_cli(main)
