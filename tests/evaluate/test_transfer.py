"""The transfer matrix (dpnp_ray.evaluate.transfer) on two small exported digits models, without Ray."""

from __future__ import annotations

import pytest
import torch

from dpnp_ray import results
from dpnp_ray.config import ExperimentConfig
from dpnp_ray.data import to_float
from dpnp_ray.devices import Precision
from dpnp_ray.distributed import LocalEnvironment
from dpnp_ray.evaluate.accuracy import correct_per_point, pgd_attack, subsample
from dpnp_ray.evaluate.transfer import main, run_transfer
from dpnp_ray.experiment import run_experiment
from dpnp_ray.model_export import export_model

CPU = torch.device("cpu")
N, STEPS = 80, 5


@pytest.fixture(scope="module")
def study(trained_digits, digits, tmp_path_factory):
    """A study directory with three exported models: the session's Adv-DPNP, the same weights again under another
    trial id, and a 1-epoch PGD-AT."""
    pgd_at = run_experiment(ExperimentConfig.from_dict(dict(
        dataset="digits", method="pgd_at", epochs=1, lr=0.05, batch_size=64, eval_suite="basic", eval_n=50,
        train_attack_steps=2, val_attack_steps=2, eval_attack_steps=2, device="cpu")), data=digits, log=None)
    directory = tmp_path_factory.mktemp("study")
    for trial, result in (("full-s0", trained_digits), ("copy-s0", trained_digits), ("pgd_at-s0", pgd_at)):
        export_model(str(directory / "models" / trial), result.train.net, result.config, result.train.info,
                     trial={"study": "tiny", "trial_id": trial, "variant": trial.split("-")[0], "seed": 0})
    return directory, {"full-s0": trained_digits, "copy-s0": trained_digits, "pgd_at-s0": pgd_at}


def test_matrix_shape_values_and_white_box_diagonal(study, digits, capsys):
    directory, trained = study
    assert main([str(directory), "--n", str(N), "--steps", str(STEPS), "--device", "cpu"]) == 0
    assert "transfer" in capsys.readouterr().out
    table = results.read_table(directory, "transfer")
    assert len(table) == 9 and set(zip(table["source_trial"], table["target_trial"])) == {
        (s, t) for s in trained for t in trained}
    assert table["accuracy"].between(0, 1).all() and (table["n"] == N).all() and (table["steps"] == STEPS).all()
    assert table["code_version"].notna().all() and (table["source_method"].isin(["adv_dpnp", "pgd_at"])).all()
    cfg = trained["full-s0"].config
    test = subsample(digits.test, N)
    attack = pgd_attack(cfg.eval_eps, cfg.eval_step, STEPS, Precision.choose("fp32", CPU), early_stop=False)
    for trial, result in trained.items():  # the diagonal: the white-box accuracy of that PGD, as the suite counts it
        ok, _ = correct_per_point(result.train.net.eval(), to_float(test.images), test.labels, attack,
                                  env=LocalEnvironment(CPU), batch_size=500,
                                  precision=Precision.choose("fp32", CPU), seed=cfg.seed)
        row = table[(table["source_trial"] == trial) & (table["target_trial"] == trial)].iloc[0]
        assert row["accuracy"] == int(ok.sum()) / N  # a count over N: exact
        assert row["eps"] == pytest.approx(cfg.eval_eps)
    matrix = table.set_index(["source_trial", "target_trial"])["accuracy"]
    # a model's examples against the same weights are white-box: the copy's entries equal the diagonal's
    assert matrix["full-s0", "copy-s0"] == matrix["copy-s0", "full-s0"] == matrix["full-s0", "full-s0"]
    assert matrix["pgd_at-s0", "copy-s0"] == matrix["pgd_at-s0", "full-s0"]


def test_fewer_than_two_models_or_mixed_threat_models_are_refused(study, tmp_path):
    directory, trained = study
    with pytest.raises(ValueError, match="0 exported model"):
        run_transfer(str(tmp_path), device="cpu")
    result = trained["full-s0"]
    for trial, eps in (("a", 0.1), ("b", 0.2)):
        export_model(str(tmp_path / "models" / trial), result.train.net, result.config.replace(eval_eps=eps),
                     result.train.info)
    with pytest.raises(ValueError, match="differ in dataset or eval_eps"):
        run_transfer(str(tmp_path), device="cpu")
