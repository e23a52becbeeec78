"""--log-to tensorboard,mlflow,wandb: flag checks and callbacks without Ray, then a real study whose
TensorBoard event files and MLflow store are read back and compared with trials.parquet."""

from __future__ import annotations

import importlib.util
import struct
import subprocess
from pathlib import Path

import pytest

from dpnp_ray import results
from dpnp_ray.study import records, trackers
from dpnp_ray.study.settings import StudyError

from ..support import PYTHON, REPO, run_script, study_env


def tensorboard_values(directory: Path):
    """(step, summary value) of every summary in every events.out.tfevents.* file under directory (TFRecord
    framing: 8-byte length, 4-byte CRC, the Event, 4-byte CRC)."""
    from tensorboardX.proto import event_pb2

    for path in sorted(directory.rglob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                yield event.step, value


def read_tensorboard_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of the scalars written under directory."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for step, value in tensorboard_values(directory):
        if value.HasField("simple_value"):
            scalars.setdefault(value.tag, []).append((step, value.simple_value))
    return scalars


def read_tensorboard_hparams(directory: Path) -> dict[str, object]:
    """The HParams plugin's session-start hyperparameters written under directory."""
    from tensorboardX.proto import plugin_hparams_pb2

    found: dict[str, object] = {}
    for _, value in tensorboard_values(directory):
        if value.metadata.plugin_data.plugin_name != "hparams":
            continue
        plugin = plugin_hparams_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
        for name, v in plugin.session_start_info.hparams.items():
            found[name] = getattr(v, v.WhichOneof("kind"))
    return found


# ---------------------------------------------------------------- without Ray


def test_log_to_names_and_errors():
    assert trackers.parse_log_to("tensorboard, MLflow,tensorboard") == ("tensorboard", "mlflow")
    assert trackers.parse_log_to("") == () and trackers.parse_log_to(None) == ()
    with pytest.raises(StudyError, match=r"--log-to 'tensorbord'.*tensorbord.*allowed: tensorboard, mlflow, wandb"):
        trackers.parse_log_to("tensorbord")


def test_a_missing_tracker_package_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(StudyError, match=r"--log-to wandb needs wandb.*pip install -e '\.\[trackers\]'"):
        trackers.check_installed(("tensorboard", "wandb"))
    trackers.check_installed(("tensorboard",))


def test_study_script_refuses_an_unknown_tracker_before_starting_ray(tmp_path):
    proc = subprocess.run([PYTHON, str(REPO / "studies" / "ablation.py"), "--smoke", "--log-to", "tensorboard,neptune",
                           "--storage", str(tmp_path)], capture_output=True, text=True, timeout=120, env=study_env())
    assert proc.returncode == 2 and "neptune" in proc.stderr and "allowed: tensorboard, mlflow, wandb" in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing started, nothing written


def test_mlflow_store_defaults_to_sqlite_in_the_study_directory(tmp_path):
    assert trackers.resolve_mlflow_uri(str(tmp_path / "s"), None) == f"sqlite:///{tmp_path}/s/mlflow.db"
    assert trackers.resolve_mlflow_uri("s3://b/s", "http://mlflow:5000") == "http://mlflow:5000"
    with pytest.raises(StudyError, match="--mlflow-tracking-uri"):
        trackers.resolve_mlflow_uri("s3://b/s", None)


def test_wandb_runs_offline_without_an_api_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert not trackers.wandb_offline()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert trackers.wandb_offline()
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("HOME", "/nonexistent")  # no ~/.netrc login either
    monkeypatch.setenv("NETRC", "/nonexistent/netrc")
    assert trackers.wandb_offline()
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # what `wandb login` writes
    assert not trackers.wandb_offline()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb not installed (pip install -e '.[trackers]')")
def test_wandb_callback_is_offline_without_a_key(monkeypatch, tmp_path):
    from ray.air.integrations.wandb import WandbLoggerCallback

    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    [callback] = trackers.tracker_callbacks(("wandb",), study_dir=str(tmp_path), study="s", kind="ablation")
    assert isinstance(callback, WandbLoggerCallback) and callback.kwargs["mode"] == "offline" and callback.group == "s"


def test_callbacks_for_tensorboard_and_mlflow_create_the_experiment_in_the_study(tmp_path):
    import mlflow
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.logger import TBXLoggerCallback

    study_dir = tmp_path / "study"
    tbx, ml = trackers.tracker_callbacks(("tensorboard", "mlflow"), study_dir=str(study_dir), study="study",
                                         kind="search")
    assert isinstance(tbx, TBXLoggerCallback) and isinstance(ml, MLflowLoggerCallback)
    experiment = mlflow.MlflowClient(ml.tracking_uri).get_experiment_by_name("study")
    assert experiment.artifact_location == str(study_dir / "mlflow-artifacts")  # not ./mlruns wherever we started
    assert (study_dir / "mlflow.db").is_file() and ml.tags == {"study": "study", "study_kind": "search"}
    locations = trackers.tracker_locations(("tensorboard", "mlflow"), study_dir=str(study_dir))
    assert locations == {"tensorboard": f"tensorboard --logdir {study_dir}",
                         "mlflow": f"mlflow ui --backend-store-uri sqlite:///{study_dir}/mlflow.db"}


class FakeTrial:
    """What the tracker callbacks read of a Tune trial."""

    def __init__(self, trial_id: str, config: dict):
        self.trial_id, self.config = trial_id, config

    def __str__(self) -> str:
        return self.trial_id


def tracker_state(study_dir: Path) -> trackers.StudyTrackerState:
    from dpnp_ray.config import ExperimentConfig

    def describe(params: dict) -> trackers.TrialIdentity:
        cfg = ExperimentConfig.from_dict({"seed": params["seed"], "lambda_npr": 0.3})
        return trackers.TrialIdentity(f"{params['variant']}-s{params['seed']}", params["variant"], cfg.seed,
                                      cfg.to_dict())

    return trackers.StudyTrackerState(study="st", kind="ablation", study_dir=str(study_dir), describe=describe)


def test_trackers_step_is_the_epoch_and_the_test_evaluation_is_logged_once(tmp_path):
    from dpnp_ray.ray_train import TIME_ATTR

    state, trial = tracker_state(tmp_path), FakeTrial("t0", {"variant": "full", "seed": 3})
    epochs = [{"epoch": e, TIME_ATTR: e + 1, "val_robust_acc": 0.5, "clean_acc": float("nan")} for e in range(3)]
    final = {"clean_acc": 0.9, "trial_status": "completed"}
    steps = [state.step(trial, r) for r in [*epochs, final, {**final, "checkpoint_dir_name": "x"}]]
    assert steps == [0, 1, 2, 2, None]  # the worker's and the driver's report of one record: logged once
    assert state.loggable(trial, {**final, "val_robust_acc": 0.5}) == final  # the epochs logged that already


def test_trackers_show_the_resolved_config_tags_status_and_artifacts(tmp_path):
    from dpnp_ray.config import ExperimentConfig

    state, trial = tracker_state(tmp_path), FakeTrial("t0", {"variant": "full", "seed": 3})
    params = state.params(trial)
    assert set(params) == {f for f in ExperimentConfig().to_dict()}  # every config field, not variant and seed
    assert params["lambda_npr"] == 0.3 and params["seed"] == 3
    assert all(isinstance(v, (bool, int, float, str)) for v in params.values())
    assert trackers.flat_params({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": "[1, 2]", "d": "None"}
    tags = state.tags(trial)
    assert tags["variant"] == "full" and tags["seed"] == "3" and tags["trial_id"] == "full-s3"
    assert tags["study"] == "st" and tags["study_kind"] == "ablation" and tags["code_version"]
    assert state.status(trial, failed=False) == "completed" and state.status(trial, failed=True) == "failed"
    records.write_record(str(tmp_path), {"trial_id": "full-s3", "status": "stopped"})
    assert state.status(trial, failed=False) == "stopped"
    assert trackers.MLFLOW_RUN_STATUS["stopped"] == "KILLED"
    assert state.artifacts(trial) == []  # nothing exported yet
    (tmp_path / "models" / "full-s3").mkdir(parents=True)
    (tmp_path / "study.yaml").write_text("kind: ablation\n")
    assert state.artifacts(trial) == [str(tmp_path / "models" / "full-s3"), str(tmp_path / "study.yaml")]


def test_log_to_is_part_of_the_recipe(tmp_path):
    from dpnp_ray.study.recipe import FLAG_KEYS
    from dpnp_ray.study.study_file import RUN_KEYS

    assert FLAG_KEYS["log_to"] == "log_to" and "log_to" in RUN_KEYS  # recorded; may change on --resume
    assert trackers.parse_log_to(["tensorboard", "MLflow"]) == ("tensorboard", "mlflow")  # as study.yaml holds it


# ---------------------------------------------------------------- a real study


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_tensorboard_and_mlflow_hold_every_report_of_the_trial(tmp_path):
    import mlflow

    proc = run_script("ablation.py", "--smoke", "--variants", "full", "--log-to", "tensorboard,mlflow",
                      "--storage", str(tmp_path), "--name", "tracked", "--set", "eval_suite=basic")
    directory = tmp_path / "tracked"
    trial = results.read_table(directory, "trials").set_index("trial_id").loc["full-s0"]
    epochs = results.read_table(directory, "epochs").sort_values("epoch")
    assert f"tensorboard --logdir {directory}" in proc.stdout and "mlflow ui --backend-store-uri" in proc.stdout

    # TensorBoard: the trial's directory is named by its trial_id; one point per epoch at step = epoch, then
    # the test evaluation once, at the last epoch's step; an HParams summary of the resolved config
    scalars = read_tensorboard_scalars(directory / "ray" / "tune" / "full-s0")
    robust = sorted(scalars["ray/tune/val_robust_acc"])
    assert [step for step, _ in robust] == list(epochs["epoch"])
    assert [v for _, v in robust] == pytest.approx(list(epochs["val_robust_acc"]), abs=1e-6)  # stored as float32
    assert scalars["ray/tune/clean_acc"] == [(epochs["epoch"].max(), pytest.approx(trial["clean_acc"], abs=1e-6))]
    hparams = read_tensorboard_hparams(directory / "ray" / "tune" / "full-s0")
    assert hparams["lambda_npr"] == pytest.approx(trial["cfg_lambda_npr"]) and hparams["status"] == "completed"

    # MLflow: one experiment named after the study, one run named by trial_id, the same numbers
    client = mlflow.MlflowClient(f"sqlite:///{directory}/mlflow.db")
    experiment = client.get_experiment_by_name("tracked")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "full-s0" and run.info.status == "FINISHED"
    config = {k[len("cfg_"):]: v for k, v in trial.items() if k.startswith("cfg_")}
    assert set(run.data.params) == set(config)  # the whole resolved config, field by field
    assert run.data.params["epochs"] == "2" and run.data.params["eval_suite"] == "basic"
    tags = run.data.tags
    assert tags["study"] == "tracked" and tags["variant"] == "full" and tags["seed"] == "0"
    assert tags["status"] == "completed" and tags["code_version"] == trial["code_version"]
    history = sorted(client.get_metric_history(run.info.run_id, "val_robust_acc"), key=lambda m: m.step)
    assert [m.step for m in history] == list(epochs["epoch"])  # step = epoch, each once
    assert [m.value for m in history] == pytest.approx(list(epochs["val_robust_acc"]))
    [test] = client.get_metric_history(run.info.run_id, "clean_acc")  # the test evaluation, once
    assert test.value == pytest.approx(trial["clean_acc"]) and test.step == epochs["epoch"].max()
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"full-s0", "study.yaml"} <= artifacts
    assert "model.json" in {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "full-s0")}
