r"""The Adv-DPNP ablation grid: every variant x seed, one Ray Tune trial each (DDP ones via Ray Train).

    python studies/ablation.py              # all variants, 3 seeds, digits, local Ray
    python studies/ablation.py --smoke      # 2 variants, 1 seed, 2 epochs: a few minutes on 2 CPUs
    python studies/ablation.py --dry-run    # the plan and its estimated bill; trains nothing
    python studies/ablation.py --cluster --dataset cifar10 --model resnet18 --epochs 100 \
        --workers 2 --gpus-per-worker 1 --storage s3://bucket/studies --seeds 0 1 2
    python studies/ablation.py --config study.yaml --epochs 20  # a study file; flags override it
    python studies/ablation.py --resume --seeds 0 1 2 3 4       # grow a study by two seeds
    python studies/ablation.py --tuned-from results/tuned       # each method at its tuned point
Results: <storage>/<name>/{trials,epochs,evals,...}.parquet (schema in docs/results.md),
study.yaml (the resolved study), models/<trial_id>/ (each trial's model),
best/<variant's best trial>.yaml.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from dpnp_ray import results, storage
from dpnp_ray.study.cli import (HelpFormatter, add_common_flags, config_epilog, console_summary, exit_code,
                                print_locations, run_cli, study_settings)
from dpnp_ray.study import plan_ablation, run_ablation
from dpnp_ray.study.best_configs import write_best_configs
from dpnp_ray.study.factorial import FACTORIAL_PREFIX, FACTORS, design_factors
from dpnp_ray.study.variants import DEFAULT_VARIANTS, LISTED_VARIANTS
from dpnp_ray.study.recipe import resolve_study

# The ablation's defaults on digits: small enough for a laptop, large enough to separate variants.
DEFAULTS = {"config": {"dataset": "digits", "model": "small_cnn", "epochs": 8, "lr": 0.05, "batch_size": 64},
            # the digits search of record chose these (docs/search_digits.md; 3 significant digits): for digits
            # studies only; on any other data set the library's defaults hold (config.py, docs/method.md "Defaults and open choices")
            "config_for": {"digits": {"lambda_ppa": 0.0286, "lambda_npr": 0.0554, "lambda_cons": 2.23,
                                      "beta_adv": 1.31, "prototype_radius": 1.1, "eps_schedule": "constant",
                                      "eps": 0.0997}},
            "variants": list(DEFAULT_VARIANTS), "seeds": [0, 1, 2]}
SMOKE = {"config": {"epochs": 2, "train_attack_steps": 3, "val_attack_steps": 3, "eval_attack_steps": 10,
                    "eval_aa_n": 100, "eval_corruption_n": 100},
         "variants": ["full", "pgd_at"], "seeds": [0]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                     epilog=config_epilog({**DEFAULTS["config"], **DEFAULTS["config_for"]["digits"]}))
    parser.add_argument("--variants", nargs="+", default=None, metavar="VARIANT",
                        help=f"variants to run (default: {' '.join(DEFAULT_VARIANTS)}); known: "
                             f"{' '.join(LISTED_VARIANTS)}; {FACTORIAL_PREFIX}F1,F2,... adds every cell of the 2^k "
                             f"factorial over factors F among {' '.join(FACTORS)} (docs/method.md)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds per variant (default: 0 1 2)")
    parser.add_argument("--smoke", action="store_true",
                        help="digits, small CNN, 2 epochs, 2 variants, 1 seed: the quick demonstration and CI run")
    parser.add_argument("--tuned-from", default=None, metavar="COMPARISON_DIR",
                        help="an equal-budget comparison (studies/search.py --methods): start from its base config "
                             "(less the test suite's fields) and run each method at its chosen point, as the variant "
                             "tuned_<method>, after those of --variants (default: none)")
    add_common_flags(parser, default_name="ablation", defaults=DEFAULTS["config"])
    p = parser.add_argument_group("power (with --dry-run)")
    p.add_argument("--power-from", metavar="STUDY_DIR", default=None,
                   help="an earlier study (its trials.parquet): the SD of a per-seed difference against full, for "
                        "the difference the planned seeds can detect")
    p.add_argument("--power-difference", type=float, metavar="POINTS", default=None,
                   help="a difference in accuracy points: how many seeds it needs (with --power-from)")
    return parser


def power_plan(plan, study: dict, args) -> list[str]:
    """The dry run's power lines (analysis/power.py) under the study's analysis plan (its comparisons, alpha and
    reference): the robust endpoint, on the attack subset."""
    from analysis.power import ATTACK_OF, PowerPlan, cell_sd_from, discordance_from, factorial_lines, seed_sd_from
    from dpnp_ray.analysis_plan import concrete_plan

    analysis = concrete_plan(study.get("analysis"), study["variants"], list(ATTACK_OF))
    cfg = plan.trials[0].cfg
    n = min(cfg.eval_n or plan.sizes.test, plan.sizes.test)
    n_robust = min(cfg.eval_aa_n, n) if cfg.eval_aa_n and cfg.eval_suite != "basic" else n
    known: dict = {}
    if args.power_from:
        trials = results.read_table(args.power_from, "trials")
        sd, metric, count = seed_sd_from(trials, reference=analysis.reference)
        known.update(seed_sd=sd, seed_sd_source=f"{metric} of {count} paired seeds in {args.power_from}")
        points = results.read_table(args.power_from, "points", required=False)
        if points is not None:
            known.update(discordance=discordance_from(points, ATTACK_OF[metric], reference=analysis.reference),
                         discordance_source=f"{ATTACK_OF[metric]} points of {args.power_from}")
        else:
            p = float(trials[metric].mean())
            known.update(discordance=2 * p * (1 - p), discordance_source=f"no points.parquet in {args.power_from}: "
                         f"independent errors at its mean {metric} {p:.1%}, an upper bound")
    difference = args.power_difference / 100 if args.power_difference is not None else None
    lines = PowerPlan(len(study["seeds"]), n_robust, len(analysis.comparisons), alpha=analysis.alpha,
                      difference=difference, **known).lines()
    factors = design_factors(study["variants"])
    if factors:
        cell = {}
        if args.power_from:
            sd, metric, count = cell_sd_from(results.read_table(args.power_from, "trials"), reference=analysis.reference)
            cell = {"cell_sd": sd, "source": f"{metric} of {count} seeds of {analysis.reference} in {args.power_from}"}
        lines += factorial_lines(len(factors), len(study["seeds"]), analysis.alpha, **cell)
    return lines


def main() -> int:
    recipe = resolve_study(build_parser(), "ablation", defaults=DEFAULTS, smoke=SMOKE)
    settings = study_settings(recipe.args)
    spec = recipe.spec()
    if recipe.args.dry_run:
        plan = plan_ablation(spec, settings)
        print(plan.format())
        print("\n".join(power_plan(plan, recipe.study, recipe.args)))
        return 0
    with recipe:  # holds the study's driver lock from recipe.record until the tables are written
        written = run_ablation(spec, settings, before_training=recipe.record)
        written["best"] = write_best_configs(settings.directory, "ablation")
    trials = results.read_table(storage.parent(written["trials"]), "trials")
    print("\n" + console_summary(trials))
    print_locations(written, settings)
    return exit_code(trials)  # 1 when a trial failed


if __name__ == "__main__":
    run_cli(main)
