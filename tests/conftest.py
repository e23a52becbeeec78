import pytest
import torch

# Two cores shared with Ray workers: one intra-op thread keeps runs predictable.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    from dpnp_ray.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def trained_digits(digits):
    """Adv-DPNP trained for a few epochs on digits (CPU, ~15 s), shared by the attack and training tests."""
    from dpnp_ray.config import ExperimentConfig
    from dpnp_ray.experiment import run_experiment

    cfg = ExperimentConfig.from_dict(dict(dataset="digits", epochs=4, lr=0.05, batch_size=64, eval_suite="basic",
                                          train_attack_steps=5, val_attack_steps=5))
    return run_experiment(cfg, data=digits, log=print)
