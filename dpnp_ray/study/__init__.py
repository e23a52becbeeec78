"""Ray Tune studies of Adv-DPNP and their export to Parquet, one concern per module:

    settings        StudySettings, StudyError
    cluster         storage checks, the Ray connection, how many trials fit at once
    records         trial records (trials/<trial_id>.json) and `export` to the Parquet tables
    tuner           the Tune glue: one trial, the Tuner, recording and exporting when a study ends
    ablation_grid   the ablation variants and `run_ablation`
    optuna_search   the Optuna search space, samplers and `run_search`
    console         what a study prints: one line per finished trial, the running trials now and then
    trackers        --log-to tensorboard,mlflow,wandb: Tune's logger callbacks
    study_file      study files: their keys, YAML reading and writing, layering
    recipe          resolving a study (defaults, --config, flags), study.yaml, --resume growth
    best_configs    best/<trial_id>.yaml, an equal-budget comparison's chosen points, --tuned-from
    optuna_storage  the Optuna storage: journal or RDB, checked before Ray starts
    plan            --dry-run: the plan, its cost and power
    preflight       every input checked before Ray starts

`dpnp_ray.study.export(<study dir>)` rebuilds a study's Parquet tables from its trial records.
"""

from .records import export

__all__ = ["export"]
