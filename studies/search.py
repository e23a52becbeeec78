"""Optuna search over Adv-DPNP's loss weights, eps schedule and ablation switches (Ray Tune).

    python studies/search.py --trials 20                     # digits, TPE, both objectives, ASHA
    python studies/search.py --trials 4 --epochs 2 --smoke   # a tiny search, a few minutes on 2 CPUs
    python studies/search.py --trials 64 --dry-run           # the plan and its estimated bill; trains nothing
    python studies/search.py --cluster --dataset cifar10 --model resnet18 --epochs 30 --trials 64 \
        --gpus-per-worker 1 --optuna-storage postgresql://user@db/optuna --storage s3://bucket/studies
Maximizes validation clean and validation robust accuracy (Pareto front in pareto.parquet);
watch it live with `optuna-dashboard <storage>/<name>/optuna.journal`.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from dpnp_ray import results
from dpnp_ray.cli import add_common_flags, base_config, console_summary, print_locations, run_cli, study_settings
from dpnp_ray.study.optuna_search import OBJECTIVES, SAMPLERS, SearchSpace, run_search
from dpnp_ray.study.plan import plan_search

DEFAULTS = {"dataset": "digits", "model": "small_cnn", "epochs": 8, "lr": 0.05, "batch_size": 64,
            "eval_suite": "basic"}
SMOKE = {"epochs": 2, "train_attack_steps": 3, "val_attack_steps": 3, "eval_attack_steps": 10}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--sampler", default="tpe", choices=SAMPLERS.names())
    parser.add_argument("--objective", default="multi", choices=list(OBJECTIVES),
                        help="multi: maximize val clean and val robust accuracy; robust / clean: one of them")
    parser.add_argument("--scheduler", default="asha", choices=["asha", "none"],
                        help="ASHA early stopping on validation robust accuracy")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed")
    parser.add_argument("--optuna-storage", default=None,
                        help="journal file path or RDB URL (default: <storage>/<name>/optuna.journal)")
    parser.add_argument("--no-switches", action="store_true", help="keep every term on; search weights only")
    parser.add_argument("--smoke", action="store_true", help="2 epochs, short attacks: a quick demonstration")
    add_common_flags(parser, default_name="search")
    args = parser.parse_args()

    base = base_config(args, {**DEFAULTS, **(SMOKE if args.smoke else {})})
    settings = study_settings(args)
    if args.dry_run:
        print(plan_search(base, settings, trials=args.trials, scheduler=args.scheduler).format())
        return 0
    written = run_search(base, settings, trials=args.trials, space=SearchSpace(search_switches=not args.no_switches),
                         sampler=args.sampler, objective=args.objective, scheduler=args.scheduler, seed=args.seed,
                         optuna_storage=args.optuna_storage)
    directory = Path(written["trials"]).parent
    trials = results.read_table(directory, "trials")
    print("\n" + console_summary(trials, group="trial_id"))
    pareto = results.read_table(directory, "pareto")
    print("\nPareto front (val clean vs val robust):")
    print(pareto.drop(columns=["schema_version"]).to_string(index=False, max_cols=8))
    print_locations(written)
    return 0


if __name__ == "__main__":
    run_cli(main)
