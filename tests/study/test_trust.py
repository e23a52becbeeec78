"""Issue 18 without Ray: names and trial ids confined to the study directory, records that cannot be read
reported, seeds in range, bad inputs one line before any work."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from dpnp_ray import results, storage
from dpnp_ray.study.preflight import settings_problems
from dpnp_ray.study.best_configs import write_best_configs
from dpnp_ray.study.records import export, model_path, points_path, record_path, scan_records, write_error_log
from dpnp_ray.study.settings import StudyError, StudySettings

from ..support import REPO
from ..support.studies import record, resolve

BAD_NAMES = ["..", ".", "", "a/b", "../x", "a\\b", "x?y", "x#y", "tab\there"]


PROVENANCE = {"hardware": "cpu", "code_version": "t", "torch_version": "t", "ray_version": "t", "python_version": "t"}


def _full_record(study, trial_id="full-s0", variant="full", seed=0, val_robust=0.5):
    """A record that exports: support.studies.record plus provenance."""
    record(str(study), trial_id, variant, seed, val_robust)
    path = study / "trials" / f"{trial_id}.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **PROVENANCE}))
    return path


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_name_that_is_not_one_directory_name_is_refused_before_anything(ablation, tmp_path, name):
    storage = tmp_path / "storage"
    storage.mkdir()
    for resume in ((), ("--resume",)):
        with pytest.raises(StudyError) as caught:
            resolve(ablation, "ablation", "--smoke", *resume, "--storage", str(storage), "--name", name)
        message = str(caught.value)
        assert "\n" not in message and message.startswith(f"--name {name!r}: must be one directory name")
    assert _files(tmp_path) == ["storage"]  # nothing written, in the storage or its parent
    assert any(p.startswith(f"--name {name!r}") for p in settings_problems(StudySettings(name=name)))


def test_good_names_pass():
    for name in ("ablation", "s", "my.study-2_x", "a..b"):
        assert not any(p.startswith("--name") for p in settings_problems(StudySettings(name=name)))


def test_the_script_refuses_name_dot_dot_in_one_line_before_ray(tmp_path):
    storage = tmp_path / "storage"
    proc = subprocess.run([sys.executable, "studies/ablation.py", "--smoke", "--storage", str(storage),
                           "--name", ".."], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "error: --name '..': must be one directory name: not empty, not '.' or '..', without '/', '\\', '?', '#' "
        "or control characters"]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("bad", ["../../x", "..", "a/b", ""])
def test_paths_built_from_a_trial_id_refuse_one_that_leaves_its_folder(tmp_path, bad):
    for build in (record_path, model_path, points_path):
        with pytest.raises(StudyError, match="trial_id"):
            build(str(tmp_path), bad)
    with pytest.raises(StudyError, match="trial_id"):
        write_error_log(str(tmp_path), bad, "traceback")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kind", ["ablation", "search"])
def test_a_tampered_trial_id_writes_nothing_outside_the_study(tmp_path, caplog, kind):
    study = tmp_path / "storage" / "s"
    _full_record(study)
    # a copy of a record whose trial_id was changed: the best of its variant, and on the Pareto front
    tampered = json.loads((study / "trials" / "full-s0.json").read_text())
    tampered.update(trial_id="../../x", variant="tampered",
                    summary={**tampered["summary"], "val_robust_acc": 0.99, "val_clean_acc": 0.99})
    (study / "trials" / "evil.json").write_text(json.dumps(tampered))
    outside = _files(tmp_path)
    with caplog.at_level(logging.WARNING):
        best = write_best_configs(str(study), kind)
        written = export(str(study))
    assert sorted(p.name for p in (study / "best").iterdir()) == ["full-s0.yaml"]
    assert [p for p in _files(tmp_path) if not p.startswith("storage/s/")] == \
        [p for p in outside if not p.startswith("storage/s/")]
    assert not (tmp_path / "x.yaml").exists() and not (tmp_path / "storage" / "x.yaml").exists()
    assert list(results.read_table(storage.parent(written["trials"]), "trials")["trial_id"]) == ["full-s0"]
    warned = [r.getMessage() for r in caplog.records if "evil.json" in r.getMessage()]
    assert warned and all("'../../x'" in m and "tampered" in m for m in warned)
    assert best == storage.join(str(study), "best")


# ----------------------------------------------------------------------------------- point 9


def _model_dir(tmp_path, **metadata):
    from dpnp_ray.model_export import FORMAT_VERSION, METADATA_FILE, MODEL_FORMAT

    directory = tmp_path / "model"
    directory.mkdir()
    (directory / METADATA_FILE).write_text(json.dumps({"format": MODEL_FORMAT, "format_version": FORMAT_VERSION,
                                                       "dataset": {"name": "digits"}, **metadata}))
    return directory


@pytest.mark.parametrize("config", ["missing", [1, 2], "epochs=3", None])
def test_evaluate_refuses_a_model_json_whose_config_is_no_mapping_in_one_line(tmp_path, capsys, config):
    from dpnp_ray.evaluate.__main__ import main

    directory = _model_dir(tmp_path, **({} if config == "missing" else {"config": config}))
    assert main([str(directory), "--suite", "basic", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    found = "it is missing" if config == "missing" else f"got a {type(config).__name__}"
    assert len(err) == 1 and "model.json: 'config' must be a mapping" in err[0] and found in err[0], err
    assert sorted(p.name for p in directory.iterdir()) == ["model.json"]  # nothing written


def test_evaluate_as_a_command_gives_no_traceback_for_a_list_config(tmp_path):
    directory = _model_dir(tmp_path, config=["epochs", 3])
    proc = subprocess.run([sys.executable, "-m", "dpnp_ray.evaluate", str(directory), "--device", "cpu"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "'config' must be a mapping" in proc.stderr


@pytest.mark.parametrize("field", ["seed", "split_seed"])
@pytest.mark.parametrize("value", [2 ** 32, 2 ** 64])
def test_a_seed_beyond_what_the_generators_take_is_refused_naming_its_field(field, value):
    from dpnp_ray.config import SEED_MAX, ConfigError, ExperimentConfig

    assert getattr(ExperimentConfig.from_dict({field: SEED_MAX}), field) == SEED_MAX == 2 ** 32 - 1
    with pytest.raises(ConfigError) as caught:
        ExperimentConfig.from_dict({field: value})
    assert caught.value.problems == [f"field {field!r} = {value}: must be <= {SEED_MAX} and >= 0"]


def test_a_huge_split_seed_is_blamed_on_split_seed_not_the_data_root(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dpnp_ray", "split_seed=18446744073709551616", "epochs=1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "'split_seed' = 18446744073709551616: must be <= 4294967295" in proc.stderr
    assert "data-root" not in proc.stderr and "data_root" not in proc.stderr


def test_an_ablation_seed_beyond_the_limit_is_refused_naming_seeds(ablation, tmp_path):
    with pytest.raises(StudyError, match=r"seeds \[0, 4294967296\]: a non-empty list of integers in "
                                         r"\[0, 4294967295\] \(--seeds\)"):
        resolve(ablation, "ablation", "--smoke", "--storage", str(tmp_path), "--name", "s", "--seeds", "0",
                "4294967296")
    assert not list(tmp_path.iterdir())


def test_a_search_seed_beyond_the_limit_is_refused_naming_seed(tmp_path):
    from dpnp_ray.study import SearchSpec, run_search
    from dpnp_ray.study.preflight import PreflightError

    with pytest.raises(PreflightError, match=r"--seed 4294967296: must be an integer in \[0, 4294967295\]"):
        run_search(SearchSpec({"epochs": 1}, 1, seed=2 ** 32), StudySettings(name="s", storage=str(tmp_path)))


@pytest.mark.parametrize("value", ["5", "0"])
def test_a_config_seed_in_an_ablation_is_refused_not_silently_ignored(ablation, tmp_path, value):
    with pytest.raises(StudyError) as caught:
        resolve(ablation, "ablation", "--smoke", "--storage", str(tmp_path), "--name", "s", "--set", f"seed={value}")
    assert str(caught.value) == (f"--set seed={value}: an ablation trains every variant at each seed of --seeds, "
                                 f"which replaces the config's seed; give --seeds {value} instead")
    study_file = tmp_path / "study_file.yaml"
    study_file.write_text("config: {seed: 5, epochs: 1}\n")
    with pytest.raises(StudyError, match=r"config\.seed 5: .*give seeds: \[5\]"):
        resolve(ablation, "ablation", "--config", str(study_file), "--storage", str(tmp_path), "--name", "s")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study_file.yaml"]  # no study.yaml recorded


def test_an_ablations_own_study_yaml_still_reruns(ablation, tmp_path):
    recipe = resolve(ablation, "ablation", "--smoke", "--storage", str(tmp_path), "--name", "s")
    with recipe:
        location = recipe.record()
    again = resolve(ablation, "ablation", "--config", location, "--storage", str(tmp_path), "--name", "s2")
    assert again.study["seeds"] == recipe.study["seeds"] and again.study["config"]["seed"] == 0


@pytest.mark.parametrize("content", [b'{"study": "b", "trial_id": "full-s1", "status": "comp', b"", b"\xff\xfe",
                                     b"[1, 2]"])
def test_a_truncated_record_is_reported_by_name_not_silently_dropped(tmp_path, caplog, content):
    study = tmp_path / "s"
    _full_record(study)
    (study / "trials" / "full-s1.json").write_bytes(content)
    records, skipped = scan_records(str(study))
    assert [r["trial_id"] for r in records] == ["full-s0"]
    assert len(skipped) == 1 and skipped[0].startswith(str(study / "trials" / "full-s1.json") + ": not ")
    with caplog.at_level(logging.WARNING):
        written = export(str(study))
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert lines == [f"warning: export: {skipped[0]}; this trial is in none of the tables"]
    assert list(results.read_table(storage.parent(written["trials"]), "trials")["trial_id"]) == ["full-s0"]


def test_an_export_of_only_unreadable_records_says_so(tmp_path):
    (tmp_path / "trials").mkdir()
    (tmp_path / "trials" / "full-s0.json").write_text('{"trial_id": "full-s0", "sta')
    with pytest.raises(StudyError, match=r"no trial records \(trials/\*\.json\) \(1 file\(s\) there are not valid "
                                         r"records, see above\)"):
        export(str(tmp_path))


def test_the_export_warning_reaches_the_console(tmp_path):
    study = tmp_path / "s"
    _full_record(study)
    (study / "trials" / "full-s1.json").write_text('{"trial_id": "full-s1", "sta')
    code = f"from dpnp_ray.study.records import export; export({str(study)!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        line for line in proc.stderr.strip().splitlines() if "full-s1.json: not a readable trial record" in line]
    assert len(proc.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------- point 5


def test_a_non_finite_loss_in_python_m_dpnp_ray_is_one_line_and_exit_1(tmp_path):
    # An enormous PPA weight overflows the Adv-DPNP loss at step 0 (as in test_reliability's study test).
    out = tmp_path / "model"
    proc = subprocess.run([sys.executable, "-m", "dpnp_ray", "lambda_ppa=1e38", "epochs=1", "train_attack_steps=1",
                           "val_attack_steps=1", "eval_suite=basic", "--out", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: training loss became non-finite at epoch 0, step 0 (method=adv_dpnp")
    assert "no model was exported" in lines[0] and not out.exists()
