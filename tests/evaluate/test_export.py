"""Exported models without Ray: export -> load gives the same logits, foreign or tampered files are refused,
`python -m dpnp_ray` exports, `python -m dpnp_ray.evaluate` writes its rows beside the model, never into it."""

from __future__ import annotations

import hashlib
import io
import json

import pytest
import torch

import dpnp_ray
from dpnp_ray import results
from dpnp_ray.config import ExperimentConfig
from dpnp_ray.data import to_float
from dpnp_ray.model_export import (FORMAT_VERSION, METADATA_FILE, WEIGHTS_FILE, ModelFileError, export_model,
                                   load_model, read_model_metadata)

TINY = dict(dataset="digits", epochs=1, lr=0.05, batch_size=64, train_attack_steps=2, val_attack_steps=2,
            eval_attack_steps=3, eval_suite="basic")


@pytest.fixture(scope="module")
def trained(digits):
    from dpnp_ray.experiment import run_experiment

    return run_experiment(ExperimentConfig.from_dict(TINY), data=digits, log=None)


@pytest.fixture
def exported(trained, tmp_path):
    directory = str(tmp_path / "model")
    export_model(directory, trained.train.net, trained.config, trained.train.info, metrics=trained.summary,
                 trial={"study": "t", "trial_id": "full-s0", "variant": "full", "seed": 0})
    return directory


def test_export_then_load_gives_the_same_logits(trained, exported, digits):
    net = dpnp_ray.load_model(exported)
    assert not net.training and all(not m.training for m in net.modules())
    x = to_float(digits.test.images[:64])
    reference = trained.train.net.eval()
    with torch.no_grad():
        # the same weights through the same fp32 CPU kernels in the same process: bit for bit
        assert torch.equal(net(x), reference(x))
    metadata = read_model_metadata(exported)
    assert metadata["format_version"] == FORMAT_VERSION
    assert ExperimentConfig.from_dict(metadata["config"]) == trained.config
    assert metadata["metrics"]["clean_acc"] == trained.summary["clean_acc"]
    assert metadata["trial"]["trial_id"] == "full-s0" and metadata["provenance"]["code_version"]
    assert metadata["dataset"]["num_classes"] == 10
    assert read_model_metadata(exported + "/" + WEIGHTS_FILE) == metadata  # a file inside names its directory


def test_normalisation_is_inside_the_loaded_model(exported, digits):
    net = load_model(exported)
    info = digits.info
    assert torch.allclose(net.normalize.mean.flatten(), torch.tensor(info.mean))
    assert torch.allclose(net.normalize.std.flatten(), torch.tensor(info.std))


def _rewrite(directory: str, weights: bytes, *, checksum: bool) -> None:
    with open(f"{directory}/{WEIGHTS_FILE}", "wb") as handle:
        handle.write(weights)
    if checksum:
        metadata = json.loads(open(f"{directory}/{METADATA_FILE}").read())
        metadata["weights_sha256"] = hashlib.sha256(weights).hexdigest()
        open(f"{directory}/{METADATA_FILE}", "w").write(json.dumps(metadata))


class _Payload:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_tampered_weights_are_refused(exported):
    weights = bytearray(open(f"{exported}/{WEIGHTS_FILE}", "rb").read())
    weights[len(weights) // 2] ^= 0xFF
    _rewrite(exported, bytes(weights), checksum=False)
    with pytest.raises(ModelFileError, match="SHA-256 differs.*modified or corrupted"):
        load_model(exported)
    # a pickled payload with a matching checksum: weights_only refuses to run it
    buffer = io.BytesIO()
    torch.save({"backbone.x": _Payload()}, buffer)
    _rewrite(exported, buffer.getvalue(), checksum=True)
    with pytest.raises(ModelFileError, match="weights_only=True"):
        load_model(exported)
    # tensors that do not fit the architecture the config describes
    buffer = io.BytesIO()
    torch.save({"head.raw": torch.zeros(3)}, buffer)
    _rewrite(exported, buffer.getvalue(), checksum=True)
    with pytest.raises(ModelFileError, match="do not fit the model"):
        load_model(exported)


def test_foreign_directories_are_refused(exported, tmp_path):
    with pytest.raises(ModelFileError, match="no model.json; not a dpnp_ray model directory"):
        load_model(str(tmp_path / "nothing"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / METADATA_FILE).write_text(json.dumps({"format": "other", "weights_sha256": "0"}))
    with pytest.raises(ModelFileError, match="format 'other', expected 'dpnp_ray.model'"):
        load_model(str(foreign))
    (foreign / METADATA_FILE).write_text("not json")
    with pytest.raises(ModelFileError, match="not JSON"):
        load_model(str(foreign))
    metadata = json.loads(open(f"{exported}/{METADATA_FILE}").read())
    metadata["format_version"] = FORMAT_VERSION + 1
    open(f"{exported}/{METADATA_FILE}", "w").write(json.dumps(metadata))
    with pytest.raises(ModelFileError, match=f"format version {FORMAT_VERSION + 1}"):
        load_model(exported)


def test_evaluate_writes_rows_beside_the_model_never_into_it(trained, exported, digits, tmp_path, capsys):
    import os

    from dpnp_ray.evaluate.__main__ import default_out, evaluation_config, main

    full = evaluation_config(read_model_metadata(exported)["config"], "full")
    assert (full.eval_suite, full.eval_n, full.eval_aa_n) == ("full", 0, 0)  # AutoAttack standard, every point
    model_files = sorted(os.listdir(exported))
    assert main([exported, "--suite", "basic", "--device", "cpu"]) == 0
    assert "evaluate: threat_model (0s so far" in capsys.readouterr().out  # progress as each part starts
    assert sorted(os.listdir(exported)) == model_files  # the model directory holds the model only
    out = default_out(exported)
    assert out == f"{exported.rstrip('/')}-evaluations"  # not a study's model: a sibling folder
    evals = results.read_table(out, "evals")
    assert set(evals["suite"]) == {"basic"} and set(evals["trial_id"]) == {"full-s0"}
    assert (evals["n"] == len(digits.test)).all()  # the whole test set
    # the trial evaluated the whole test set in fp32 on this CPU too: the same clean and PGD accuracy
    by_attack = evals.set_index("attack")["accuracy"]
    assert by_attack["clean"] == trained.summary["clean_acc"] and by_attack["pgd"] == trained.summary["pgd_acc"]
    summary = json.loads(open(f"{out}/evaluation-basic.json").read())
    assert summary["eval_precision"] == "fp32" and summary["trial_id"] == "full-s0"
    measured = {row["attack"]: row["accuracy"] for row in summary["accuracies"]}  # every accuracy, clean included
    assert measured == by_attack.to_dict() and set(measured) >= {"clean", "fgsm", "pgd", "cw_inf"}
    # a second level keeps the first level's rows; --out puts them elsewhere; never into the model
    assert main([exported, "--suite", "basic", "--device", "cpu", "--set", "eval_n=50"]) == 0
    assert results.read_table(out, "evals")["n"].eq(50).all()  # same level: replaced, not duplicated
    assert main([exported, "--suite", "basic", "--device", "cpu", "--set", "eval_n=20", "--out",
                 str(tmp_path / "elsewhere")]) == 0
    assert results.read_table(tmp_path / "elsewhere", "evals")["n"].eq(20).all()
    assert main([exported, "--suite", "basic", "--device", "cpu", "--out", exported]) == 2
    assert sorted(os.listdir(exported)) == model_files


def test_a_study_models_evaluations_go_to_the_study():
    from dpnp_ray.evaluate.__main__ import default_out

    assert default_out("/r/abl/models/full-s0") == "/r/abl/evaluations/full-s0"
    assert default_out("s3://b/studies/abl/models/full-s0/?endpoint_override=h:9") == \
        "s3://b/studies/abl/evaluations/full-s0?endpoint_override=h:9"
    assert default_out("results/models/single") == "results/evaluations/single"
    assert default_out("/tmp/my-model") == "/tmp/my-model-evaluations"


def test_evaluating_a_study_evaluates_its_models_into_its_evaluations_and_the_report_reads_them(trained, tmp_path,
                                                                                                 capsys):
    """One AutoAttack-standard route: `python -m dpnp_ray.evaluate <study>` over the study's exported models,
    rows in <study>/evaluations/<trial_id>/, the page's AutoAttack-standard section from those rows."""
    import pandas as pd

    from analysis import markdown
    from dpnp_ray.evaluate.__main__ import main, study_models

    study = tmp_path / "abl"
    rows = []
    for variant, seed in (("full", 0), ("full", 1), ("pgd_at", 0)):
        trial_id = f"{variant}-s{seed}"
        export_model(str(study / "models" / trial_id), trained.train.net, trained.config, trained.train.info,
                     metrics=trained.summary, trial={"study": "abl", "trial_id": trial_id, "variant": variant,
                                                     "seed": seed})
        rows.append({"study": "abl", "trial_id": trial_id, "variant": variant, "seed": seed, "status": "completed"})
    rows.append({"study": "abl", "trial_id": "full-s2", "variant": "full", "seed": 2, "status": "failed"})
    provenance = {"error": "", "clean_acc": 0.9, "pgd_acc": 0.5, "wall_seconds": 1.0, "num_workers": 1, "use_gpu": False,
                  "hardware": "cpu", "code_version": "x", "torch_version": "x", "ray_version": "x", "python_version": "x"}
    rows = [{**provenance, **row} for row in rows]
    results.write_table(study, "trials", pd.DataFrame(rows))
    assert [p.rsplit("/", 1)[-1] for p in study_models(str(study))] == ["full-s0", "full-s1", "pgd_at-s0"]
    assert [p.rsplit("/", 1)[-1] for p in study_models(str(study), ["full"], [1])] == ["full-s1"]
    assert main([str(study), "--variants", "nope", "--device", "cpu"]) == 2
    assert "no exported model of a completed trial of variants ['nope']" in capsys.readouterr().err
    assert main([str(study), "--suite", "basic", "--seeds", "0", "--device", "cpu"]) == 0
    assert sorted(p.name for p in (study / "evaluations").iterdir()) == ["full-s0", "pgd_at-s0"]
    assert main([str(study), "--out", str(tmp_path / "x"), "--device", "cpu"]) == 2  # one place per model
    # the report reads AutoAttack standard from there (rows as a full-suite re-evaluation writes them)
    assert markdown.autoattack_standard_rows(study) is None  # basic: no AutoAttack row yet
    for trial_id, accuracy in (("full-s0", 0.6), ("pgd_at-s0", 0.4)):
        evals = results.read_table(study / "evaluations" / trial_id, "evals")
        standard = {**evals.iloc[0].to_dict(), "attack": "autoattack", "version": "standard", "accuracy": accuracy,
                    "suite": "full"}
        results.write_table(study / "evaluations" / trial_id, "evals",
                            [*evals.drop(columns="schema_version").to_dict("records"), standard])
    table = markdown.autoattack_standard_rows(study).set_index("trial_id")["aa_standard_acc"]
    assert table.to_dict() == {"full-s0": 0.6, "pgd_at-s0": 0.4}


def test_the_retired_scripts_csv_migrates_into_evaluations(tmp_path):
    import pandas as pd

    from analysis import markdown
    from dpnp_ray.study.migrate import AA_STANDARD_CSV, main

    study = tmp_path / "abl"
    study.mkdir()
    pd.DataFrame({"study": "abl", "trial_id": ["full-s0", "pgd_at-s0"], "variant": ["full", "pgd_at"], "seed": 0,
                  "n": 359, "eps": 0.1, "clean_acc": 0.98, "aa_standard_acc": [0.89, 0.88],
                  "aa_version": "pyautoattack 0.2.0", "seconds": 100.0, "warnings": ""}).to_csv(
        study / AA_STANDARD_CSV, index=False)
    assert main([str(study)]) == 0 and not (study / AA_STANDARD_CSV).exists()
    table = markdown.autoattack_standard_rows(study)
    assert table.set_index("trial_id")["aa_standard_acc"].to_dict() == {"full-s0": 0.89, "pgd_at-s0": 0.88}
    assert set(table["aa_code"]) == {"pyautoattack 0.2.0"} and set(table["n"]) == {359}
    evals = results.read_table(study / "evaluations" / "full-s0", "evals")
    assert evals[["attack", "version", "norm", "split", "suite"]].iloc[0].tolist() == \
        ["autoattack", "standard", "Linf", "test", "full"]
    assert main([str(study)]) == 0  # nothing left to do: already current


def test_evaluate_refuses_a_tampered_model(exported, capsys):
    from dpnp_ray.evaluate.__main__ import main

    with open(f"{exported}/{WEIGHTS_FILE}", "ab") as handle:
        handle.write(b"\0")
    assert main([exported, "--suite", "basic", "--device", "cpu"]) == 2
    assert "SHA-256 differs" in capsys.readouterr().err


def test_main_exports_its_model_and_retrains_a_best_config(tmp_path, digits):
    from dpnp_ray.__main__ import main
    from dpnp_ray.study.best_configs import best_config_yaml

    cfg = ExperimentConfig.from_dict({**TINY, "seed": 3}).to_dict()
    best = tmp_path / "best.yaml"
    best.write_text(best_config_yaml({"study": "s", "trial_id": "full-s3", "variant": "full", "seed": 3,
                                      "config": cfg, "summary": {}}, "ablation", "a test"))
    out = tmp_path / "single"
    assert main(["--config", str(best), "eval_n=50", "--out", str(out)]) == 0
    metadata = read_model_metadata(str(out))
    assert metadata["config"]["seed"] == 3 and metadata["config"]["eval_n"] == 50  # the file, then key=value
    assert metadata["trial"]["trial_id"] == "single" and metadata["metrics"]["eval_n"] == 50
    assert load_model(str(out))(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_the_time_left_comes_from_the_study_evaluation_scaled_by_points_and_calibrated_as_parts_finish():
    from dpnp_ray.config import ExperimentConfig
    from dpnp_ray.evaluate.suite_timing import SuiteTimer, part_estimates

    earlier = {"seconds_threat_model": 2.0, "seconds_autoattack": 5.0, "seconds_corruptions": 9.0, "eval_n": 100}
    now = ExperimentConfig.from_dict({"eval_n": 0, "eval_aa_n": 0})  # the whole test split of 359 points
    estimates = part_estimates(earlier, {"eval_n": 100, "eval_aa_n": 50}, now, 359)
    # threat model: 100 -> 359 points; AutoAttack: its 50-point subset -> 359; corruptions: not scaled by these
    assert estimates == {"threat_model": 2.0 * 359 / 100, "autoattack": 5.0 * 359 / 50}
    timer = SuiteTimer(estimates={"a": 10.0, "b": 20.0, "c": 30.0})
    assert timer.time_left() == 60.0
    timer.seconds["seconds_a"] = 20.0  # part a took twice its estimate: the rest will too
    assert timer.time_left() == 100.0
    timer.seconds.update(seconds_b=1.0, seconds_c=1.0)
    assert timer.time_left() is None
