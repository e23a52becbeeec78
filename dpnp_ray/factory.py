"""Config -> data, model and optimizer: the factories every route (training, evaluation, export, plans) uses.

The one place that turns an `ExperimentConfig` into the objects the math works on; it imports no training
or evaluation code, so loading a model or planning a study does not pull the training stack in.
"""

from __future__ import annotations

import torch

from .config import ExperimentConfig
from .data import DatasetInfo, DatasetSplits, load_dataset
from .models import Classifier, build_model
from .optimizers import OPTIMIZERS


def model_from_config(cfg: ExperimentConfig, info: DatasetInfo) -> Classifier:
    """The classifier cfg describes, sized for the data set `info` describes."""
    return build_model(
        backbone=cfg.model, num_classes=info.num_classes, in_channels=info.image_shape[0], mean=info.mean,
        std=info.std, prototype_head=cfg.uses_prototypes, feature_dim=cfg.feature_dim,
        prototype_radius=cfg.prototype_radius, logit_form=cfg.logit_form, logit_scale=cfg.logit_scale,
        prototype_constraint=cfg.prototype_constraint, feature_head=cfg.feature_head,
        prototype_mode=cfg.prototype_mode,
    )


def make_optimizer(cfg: ExperimentConfig, net: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer cfg.optimizer (a name in optimizers.OPTIMIZERS) over all of net's parameters."""
    return OPTIMIZERS.get(cfg.optimizer)(net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)


def load_data(cfg: ExperimentConfig) -> DatasetSplits:
    """The train / val / test splits cfg names (dataset, files, split seed, subset)."""
    return load_dataset(cfg.dataset, cfg.data_root, val_fraction=cfg.val_fraction, split_seed=cfg.split_seed,
                        download=cfg.download, train_subset=cfg.train_subset)
