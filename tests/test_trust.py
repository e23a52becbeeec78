"""Issue 18 without Ray: names and trial ids confined to the study directory, records that cannot be read
reported, seeds in range, bad inputs one line before any work."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from dpnp_ray import results
from dpnp_ray.study.preflight import settings_problems
from dpnp_ray.study.recipe import write_best_configs
from dpnp_ray.study.records import export, model_path, points_path, record_path, scan_records, write_error_log
from dpnp_ray.study.settings import StudyError, StudySettings

from .raytools import REPO
from .test_recipes import _record, load_script, resolve

BAD_NAMES = ["..", ".", "", "a/b", "../x", "a\\b", "x?y", "x#y", "tab\there"]


@pytest.fixture(scope="module")
def ablation():
    return load_script("ablation")


PROVENANCE = {"hardware": "cpu", "code_version": "t", "torch_version": "t", "ray_version": "t", "python_version": "t"}


def _full_record(study, trial_id="full-s0", variant="full", seed=0, val_robust=0.5):
    """A record that exports: the test_recipes record plus provenance."""
    _record(str(study), trial_id, variant, seed, val_robust)
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
    assert list(results.read_table(results.parent(written["trials"]), "trials")["trial_id"]) == ["full-s0"]
    warned = [r.getMessage() for r in caplog.records if "evil.json" in r.getMessage()]
    assert warned and all("'../../x'" in m and "tampered" in m for m in warned)
    assert best == results.join(str(study), "best")
