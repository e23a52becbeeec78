"""A tiny prototype net, a fixed batch and a digits config: the step's tests and the mutant-killing tests."""

import torch

from dpnp_ray.config import ExperimentConfig
from dpnp_ray.models import build_model


def make_net(prototypes: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(backbone="small_cnn", num_classes=3, in_channels=1, mean=(0.5,), std=(0.5,),
                       prototype_head=prototypes, prototype_radius=2.0)


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(6, 1, 8, 8, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])


def cfg_of(**kw):
    return ExperimentConfig.from_dict({"dataset": "digits", **kw})
