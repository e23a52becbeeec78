"""Config validation: each kind of bad input gets one clear error naming field, value and what is allowed."""

import subprocess
import sys

import pytest

from dpnp_ray.config import ConfigError, ExperimentConfig, field_choices
from dpnp_ray.data import DATASETS
from dpnp_ray.methods import METHODS
from dpnp_ray.models import BACKBONES
from dpnp_ray.optimizers import OPTIMIZERS
from dpnp_ray.schedules import EPS_SCHEDULES, LR_SCHEDULES

#: config field -> the registry whose names it accepts
REGISTRY_FIELDS = {"dataset": DATASETS, "model": BACKBONES, "method": METHODS, "optimizer": OPTIMIZERS,
                   "lr_schedule": LR_SCHEDULES, "eps_schedule": EPS_SCHEDULES}


def error_for(**values) -> str:
    with pytest.raises(ConfigError) as info:
        ExperimentConfig.from_dict(values)
    return str(info.value)


def test_defaults_follow_paper_part_b_and_resolve_eps():
    cfg = ExperimentConfig.from_dict({})
    assert (cfg.method, cfg.prototype_update, cfg.logit_form, cfg.npr_form, cfg.ppa_form) == (
        "adv_dpnp", "clean", "dot", "prototype", "sqeuclidean")
    assert cfg.consistency_direction == "clean_to_adv" and cfg.consistency_detach_clean
    assert cfg.eval_precision == "fp32"  # evaluation in fp32 whatever the training precision
    assert cfg.eps == pytest.approx(0.1)  # digits' threat model
    assert cfg.train_step_size == pytest.approx(cfg.eps / 4)
    cifar = ExperimentConfig.from_dict({"dataset": "cifar10", "model": "resnet18"})
    assert cifar.eps == pytest.approx(8 / 255) and cifar.train_step_size == pytest.approx(2 / 255)


@pytest.mark.parametrize("values, fragments", [
    ({"lamda_ppa": 0.1}, ["unknown field 'lamda_ppa'", "lambda_ppa"]),
    ({"lambda_ppa": -0.5}, ["'lambda_ppa' = -0.5", ">= 0"]),
    ({"eps": 1.5}, ["'eps' = 1.5", "<= 1.0"]),
    ({"eps": -0.1}, ["'eps' = -0.1", ">= 0"]),
    ({"train_attack_steps": 0}, ["'train_attack_steps' = 0", ">= 1"]),
    ({"dataset": "mnist"}, ["'dataset' = 'mnist'", "'cifar10'", "'digits'"]),
    ({"model": "vgg"}, ["'model' = 'vgg'", "'resnet18'"]),
    ({"method": "awp"}, ["'method' = 'awp'", "'adv_dpnp'", "'trades'"]),
    ({"epochs": "ten"}, ["'epochs' = 'ten'", "integer"]),
    ({"epochs": 2.5}, ["'epochs' = 2.5", "integer"]),
    ({"use_npr": "yes"}, ["'use_npr' = 'yes'", "true or false"]),
    ({"lr": float("nan")}, ["'lr' = nan", "finite"]),
    ({"prototype_update": "sometimes"}, ["'prototype_update'", "'clean'", "'adversarial'", "'both'"]),
    ({"eval_precision": "int8"}, ["'eval_precision' = 'int8'", "'fp32'", "'bf16'", "'fp16'", "'auto'"]),
    ({"eval_rival_targets": 0}, ["'eval_rival_targets' = 0", ">= 1"]),
])
def test_bad_values_name_field_value_and_allowed(values, fragments):
    message = error_for(**values)
    for fragment in fragments:
        assert fragment in message


def test_all_problems_are_reported_together():
    message = error_for(eps=2.0, lambda_npr=-1.0, bogus=1)
    assert "'eps'" in message and "'lambda_npr'" in message and "'bogus'" in message


def test_sample_npr_requires_dominating_ppa():
    message = error_for(npr_form="sample", lambda_ppa=0.1, lambda_npr=0.1)
    assert "bounded below" in message and "lambda_ppa > lambda_npr" in message
    assert "bounded below" in error_for(npr_form="sample", use_ppa=False, lambda_npr=0.01)
    assert "bounded below" in error_for(npr_form="sample", ppa_form="cosine", lambda_ppa=1.0, lambda_npr=0.1)
    ok = ExperimentConfig.from_dict({"npr_form": "sample", "lambda_ppa": 0.5, "lambda_npr": 0.1})
    assert ok.npr_form == "sample"
    # switching NPR off makes the combination harmless
    assert ExperimentConfig.from_dict({"npr_form": "sample", "use_npr": False, "lambda_npr": 1.0})


def test_flat_dict_round_trip_and_coercion():
    import numpy as np

    cfg = ExperimentConfig.from_dict({"epochs": np.int64(3), "lr": 1, "lr_milestones": [0.3, 0.6], "seed": 4.0})
    assert cfg.epochs == 3 and isinstance(cfg.lr, float) and cfg.lr_milestones == (0.3, 0.6) and cfg.seed == 4
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(lr=0.5).lr == 0.5
    with pytest.raises(ConfigError, match="'lr' = -1"):
        cfg.replace(lr=-1)


def test_schedule_combinations():
    assert "eps_warmup_epochs > 0" in error_for(eps_schedule="linear")
    assert "exceeds eps" in error_for(eps=0.05, eps_start=0.1)
    assert "increasing" in error_for(lr_milestones=[0.8, 0.2])


def test_frozen_and_direct_construction_validated():
    cfg = ExperimentConfig.from_dict({})
    with pytest.raises(Exception):
        cfg.epochs = 3  # frozen
    with pytest.raises(ConfigError, match="'epochs' = 0"):
        ExperimentConfig(epochs=0)


@pytest.mark.parametrize("name", REGISTRY_FIELDS)
def test_registry_fields_accept_exactly_the_registered_names(name):
    registry = REGISTRY_FIELDS[name]
    assert field_choices()[name] == registry.names() and len(registry) > 0
    extra = {"eps_warmup_epochs": 1.0} if name == "eps_schedule" else {}
    for value in registry.names():
        assert getattr(ExperimentConfig.from_dict({name: value, **extra}), name) == value
    message = error_for(**{name: "no_such_name"})
    assert f"field {name!r} = 'no_such_name'" in message
    assert "allowed values are " + ", ".join(map(repr, registry.names())) in message


def test_method_properties_come_from_the_method_registry():
    for name in METHODS:
        cfg = ExperimentConfig.from_dict({"method": name})
        assert cfg.uses_prototypes == METHODS.get(name).prototype_head
        assert cfg.is_adversarial == METHODS.get(name).adversarial
    assert ExperimentConfig.from_dict({"method": "adv_dpnp"}).uses_prototypes
    assert not ExperimentConfig.from_dict({"method": "pgd_at"}).uses_prototypes
    assert not ExperimentConfig.from_dict({"method": "dpnp"}).is_adversarial


def test_importing_the_config_imports_no_torch():
    code = "import sys, dpnp_ray.config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_main_help_lists_registered_names(capsys):
    from dpnp_ray.__main__ import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, registry in REGISTRY_FIELDS.items():
        assert f"  {name}: {', '.join(registry.names())}\n" in out
    assert main(["method=awp"]) == 2
    err = capsys.readouterr().err
    assert "'method' = 'awp'" in err and all(repr(m) in err for m in METHODS)
