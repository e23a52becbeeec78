"""dpnp_ray: Ray-distributed hyperparameter and ablation studies of Adv-DPNP.

Public API (everything else is importable from its own module):
    ExperimentConfig      one validated config, built from a flat dict
    run_experiment        one trial in this process: train, select on validation, evaluate
    train                 the training loop alone
    run_ablation, run_search, export   Ray Tune studies and their Parquet export
    load_model            an exported model (<study>/models/<trial_id>) as an eval-mode nn.Module
"""

from .config import ConfigError, ExperimentConfig

__version__ = "0.1.0"
__all__ = ["ConfigError", "ExperimentConfig", "run_experiment", "train", "run_ablation", "run_search", "export",
           "load_model"]


def __getattr__(name: str):
    # Lazy: importing the package must not import torch, Ray or Optuna until they are needed.
    if name == "run_experiment":
        from .experiment import run_experiment

        return run_experiment
    if name == "train":
        from .training_loop import train

        return train
    if name == "run_ablation":
        from .study.ablation_grid import run_ablation

        return run_ablation
    if name == "export":
        from .study import export

        return export
    if name == "load_model":
        from .model_export import load_model

        return load_model
    if name == "run_search":
        from .study.optuna_search import run_search

        return run_search
    raise AttributeError(f"module 'dpnp_ray' has no attribute {name!r}")
