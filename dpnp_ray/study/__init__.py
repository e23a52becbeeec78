"""Ray Tune studies of Adv-DPNP and their export to Parquet, one concern per module:

    settings        StudySettings, StudyError
    spec            AblationSpec, SearchSpec: what a study runs, typed, checked by `problems()`
    variants        the ablation's variants (config overrides), the default grid, the factorial cells
    search_space    the Optuna search space, objectives, samplers, the ASHA rule
    cluster         storage checks, the Ray connection, how many trials fit at once
    records         trial records (trials/<trial_id>.json) and `export` to the Parquet tables
    tuner           the Tune glue: one trial, the Tuner, recording and exporting when a study ends
    ablation_grid   `run_ablation`: an AblationSpec as a Tune grid
    optuna_search   `run_search`: a SearchSpec through Tune's OptunaSearch, Optuna kept in step
    console         what a study prints: one line per finished trial, the running trials now and then
    trackers        --log-to tensorboard,mlflow,wandb: Tune's logger callbacks
    study_file      study files: their keys, YAML reading and writing, layering
    recipe          resolving a study (defaults, --config, flags), study.yaml, --resume growth
    best_configs    best/<trial_id>.yaml, an equal-budget comparison's chosen points, --tuned-from
    optuna_storage  the Optuna storage: journal or RDB, checked before Ray starts
    plan, cost      --dry-run: the plan, and its cost model
    preflight       every input checked before Ray starts
    cli             the study scripts' shared flags, settings from them, errors as one line, the summary table

The face the study scripts use:

    spec = AblationSpec(base_config, variants=("full", "pgd_at"), seeds=(0, 1))
    spec.problems()                                   # [] or one line per problem
    print(plan_ablation(spec, StudySettings("s")).format())   # the --dry-run bill
    run_ablation(spec, StudySettings("s"))            # -> the Parquet locations
    run_search(SearchSpec(base_config, n_trials=24), StudySettings("t"))

`export(<study dir>)` rebuilds a study's Parquet tables from its trial records.
"""

from .records import export
from .settings import StudyError, StudySettings

__all__ = ["AblationSpec", "SearchSpec", "TrialSpec", "StudySettings", "StudyError", "export", "run_ablation",
           "run_search", "plan_ablation", "plan_search"]


def __getattr__(name: str):
    # Lazy: the specs import Optuna and torch, the runners Ray Tune; a trial's worker imports this package
    # (its records) without needing them.
    if name in ("AblationSpec", "SearchSpec", "TrialSpec"):
        from . import spec

        return getattr(spec, name)
    if name == "run_ablation":
        from .ablation_grid import run_ablation

        return run_ablation
    if name == "run_search":
        from .optuna_search import run_search

        return run_search
    if name in ("plan_ablation", "plan_search"):
        from . import plan

        return getattr(plan, name)
    raise AttributeError(f"module 'dpnp_ray.study' has no attribute {name!r}")
