"""What a person sees: --help with every default, progress lines inside epochs, one line per finished
trial, and (end to end, with Ray) each worker line printed once and none of Tune's result tables."""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from types import SimpleNamespace

import pytest

from dpnp_ray.config import HELP_WIDTH, ExperimentConfig, config_fields
from dpnp_ray.study.console import StudyConsole, status_table, trial_label, trial_line
from dpnp_ray.training_loop import ConsoleLog, format_progress, progress_interval, train

from ..support import PYTHON, REPO, run_script
from ..support.studies import load_script

# ---------------------------------------------------------------- --help

VALUED_OPTIONS = ["--workers", "--cpus-per-worker", "--gpus-per-worker", "--max-concurrent", "--max-failures",
                  "--storage", "--name", "--local-cpus", "--log-to", "--mlflow-tracking-uri", "--dataset", "--model",
                  "--epochs", "--data-root", "--eval-suite"]


def help_text(script: str) -> str:
    proc = subprocess.run([PYTHON, str(REPO / "studies" / script), "--help"], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def option_help(text: str) -> dict[str, str]:
    """Option -> its whole help entry (the option line and the lines indented under it)."""
    entries, current = {}, None
    for line in text.splitlines():
        match = re.match(r"  (--[a-z-]+)", line)
        if match:
            current = match.group(1)
            entries[current] = line
        elif current and line.startswith("        "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


@pytest.mark.parametrize("script, own, suite", [
    ("search.py", ["--trials", "--sampler", "--objective", "--scheduler", "--seed", "--optuna-storage"], "basic"),
    ("ablation.py", ["--variants", "--seeds"], "quick"),
])
def test_help_states_every_default_and_keeps_the_examples_line_breaks(script, own, suite):
    text = help_text(script)
    entries = option_help(text)
    for option in VALUED_OPTIONS + own:
        assert "default" in entries[option], f"{script} --help: {option} states no default: {entries[option]}"
    assert f"(default: {suite})" in entries["--eval-suite"]  # the study's own default, not the config's
    assert "--set FIELD=VALUE" not in entries["--set"] and "listed below" in entries["--set"]
    studies = load_script(script[:-3])
    digits = {**studies.DEFAULTS["config"], **studies.DEFAULTS.get("config_for", {}).get("digits", {})}
    lambda_ppa = digits.get("lambda_ppa", ExperimentConfig().lambda_ppa)
    assert f"eval_suite={suite}" in text and "lr=0.05" in text and f"lambda_ppa={lambda_ppa}" in text  # every field
    examples = [line for line in text.splitlines() if line.rstrip().endswith("\\")]
    assert examples, "a usage example continued on the next line keeps its backslash and line break"
    assert "  --cluster" in text and "studies/" in text.split("options:")[0]


def test_every_help_fits_a_terminal_and_the_library_help_shows_each_default():
    texts = {script: help_text(script) for script in ("ablation.py", "search.py")}
    library = subprocess.run([PYTHON, "-m", "dpnp_ray", "--help"], capture_output=True, text=True, timeout=120,
                             cwd=REPO)
    assert library.returncode == 0, library.stderr
    texts["python -m dpnp_ray"] = library.stdout
    for name, text in texts.items():
        wide = [line for line in text.splitlines() if len(line) > HELP_WIDTH]
        assert not wide, f"{name} --help: {len(wide)} lines over {HELP_WIDTH} columns, e.g. {wide[0]!r}"
    base = ExperimentConfig()
    listed = dict(re.findall(r"(?<![\w-])([a-z_0-9]+)=(\S*)", library.stdout.split("fields, with their defaults")[1]))
    assert set(listed) >= set(config_fields())
    assert listed["lr"] == str(base.lr) and listed["eps"] == "auto" and listed["use_npr"] == "true"
    assert listed["lr_milestones"] == json.dumps(list(base.lr_milestones), separators=(",", ":"))


# ---------------------------------------------------------------- progress inside an epoch


def test_progress_line_arithmetic():
    # 120 of 390 batches of 64 in 9 s: 853 img/s; 270 batches left at 0.075 s each: 20 s
    assert format_progress(3, 120, 390, 120 * 64, 9.0) == "epoch   3: 120/390 batches, 853 img/s, ETA 0:20"
    assert format_progress(0, 390, 390, 390 * 64, 30.0).endswith("ETA 0:00")


def test_progress_lines_only_when_asked_and_never_off_a_terminal(digits):
    from dpnp_ray.config import ExperimentConfig

    cfg = ExperimentConfig.from_dict(dict(dataset="digits", epochs=1, batch_size=256, train_attack_steps=1,
                                          val_attack_steps=1, eval_suite="basic"))
    lines: list[str] = []
    train(cfg, data=digits, log=ConsoleLog(lines.append, progress_every_s=1e-9))
    progress = [line for line in lines if "batches" in line]
    batches = len(digits.train.labels) // 256  # drop_last: only whole batches
    assert progress and all(re.fullmatch(r"epoch   0: \d+/%d batches, \d+ img/s, ETA \d+:\d\d" % batches, p)
                            for p in progress)
    done = [int(p.split(": ")[1].split("/")[0]) for p in progress]
    assert done == sorted(set(done)) and done[-1] <= batches
    assert lines[-1].startswith("epoch   0  loss")  # the epoch's own line comes last

    quiet: list[str] = []
    train(cfg, data=digits, log=ConsoleLog(quiet.append, progress_every_s=0.0))
    assert len(quiet) == 1 and "batches" not in quiet[0]
    assert progress_interval(print) == 0.0  # pytest captures stdout: not a terminal
    assert progress_interval(None) == 0.0


# ---------------------------------------------------------------- one line per trial


def fake_trial(trial_id, status, config, **last):
    return SimpleNamespace(trial_id=trial_id, status=status, config=config, last_result=last)


def test_trial_lines_name_the_trial_and_its_outcome():
    assert trial_label({"variant": "no_ppa", "seed": 2}, "x_00001") == "no_ppa-s2"
    assert trial_label({"lambda_ppa": 0.2}, "x_00001") == "x_00001"
    line = trial_line("no_ppa-s2", {"trial_status": "completed", "clean_acc": 0.96936, "pgd_acc": 0.766,
                                    "aa_acc": 0.76, "time_total_s": 38.97})
    assert re.fullmatch(r"trial no_ppa-s2 +completed +clean 0\.969  PGD 0\.766  AA 0\.760  wall 39s", line)
    stopped = trial_line("x_00003", {"trial_status": "running", "epoch": 1, "val_clean_acc": 0.9,
                                     "val_robust_acc": 0.7, "time_total_s": 12})
    assert "stopped after epoch 1" in stopped and "val robust 0.700" in stopped
    failed = trial_line("full-s1", {"trial_status": "failed", "epoch": -1})
    assert "failed" in failed and "clean" not in failed
    assert "AA   -  " in trial_line("t", {"trial_status": "completed", "clean_acc": 0.9, "pgd_acc": 0.5})


def test_console_prints_a_trial_once_and_the_table_only_at_its_interval(capsys):
    running = fake_trial("a_00000", "RUNNING", {"variant": "full", "seed": 0}, epoch=3, val_clean_acc=0.91,
                         val_robust_acc=0.7)
    done = fake_trial("a_00001", "TERMINATED", {"variant": "pgd_at", "seed": 0}, trial_status="completed",
                      clean_acc=0.9, pgd_acc=0.6, aa_acc=0.55, time_total_s=40.0)
    trials = [running, done, fake_trial("a_00002", "PENDING", {"variant": "trades", "seed": 0})]
    console = StudyConsole(status_every_s=1e9)
    console.on_trial_complete(0, trials, done)
    console.on_step_end(1, trials)  # the interval has not passed: nothing
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("trial pgd_at-s0") and "completed" in out[0]
    StudyConsole(status_every_s=0.0).on_step_end(2, trials)
    table = capsys.readouterr().out
    assert "1 pending, 1 running, 1 terminated" in table
    assert re.search(r"full-s0 +3 +0\.910 +0\.700", table) and "pgd_at-s0" not in table  # running trials only
    assert "trial" in status_table([], 0.0)


# ---------------------------------------------------------------- end to end


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_a_study_prints_each_worker_line_once_and_one_line_per_trial(tmp_path):
    proc = run_script("ablation.py", "--smoke", "--storage", str(tmp_path), "--name", "console",
                      "--set", "eval_suite=basic")
    output = proc.stdout + proc.stderr
    epochs = Counter(re.findall(r"\[console-(\S+)\] epoch +(\d+)  loss", output))
    assert epochs == {("full-s0", "0"): 1, ("full-s0", "1"): 1, ("pgd_at-s0", "0"): 1, ("pgd_at-s0", "1"): 1}
    tests = Counter(re.findall(r"\[console-(\S+)\] test: clean", output))
    assert tests == {"full-s0": 1, "pgd_at-s0": 1}
    finished = re.findall(r"^trial (\S+) +completed +clean 0\.\d{3}  PGD 0\.\d{3}  AA +- +wall \d+s$", proc.stdout,
                          re.MULTILINE)
    assert sorted(finished) == ["full-s0", "pgd_at-s0"]
    for chatter in ("finished iteration", "completed after", "Trial status:", "Reporting training result",
                    "Started a local Ray instance", "Attempting to start training worker group",
                    "Token authentication is enabled", "Checkpoint successfully created",
                    "Experiment state snapshotting"):
        assert chatter not in output, chatter  # Tune's tables and Ray's INFO lines only with --verbose


def test_epoch_lines_leave_out_what_the_method_does_not_measure_and_the_summary_says_its_points():
    import pandas as pd

    from dpnp_ray.study.cli import console_summary
    from dpnp_ray.training_loop import format_epoch

    base = {"epoch": 3, "loss_total": 0.5, "val_clean_acc": 0.9, "val_robust_acc": 0.5, "eps": 0.1, "lr": 0.05,
            "images_per_s": 900.0, "epoch_seconds": 1.5}
    pgd_at = format_epoch({**base, "train_adv_acc": 0.61, "train_clean_acc": float("nan")})
    assert "nan" not in pgd_at and "train adv 0.610  val clean 0.900" in pgd_at
    assert "train clean 0.800 adv 0.610" in format_epoch({**base, "train_adv_acc": 0.61, "train_clean_acc": 0.8})
    trials = pd.DataFrame({"variant": ["full", "full"], "seed": [0, 1], "trial_id": ["full-s0", "full-s1"],
                           "status": "completed", "clean_acc": [0.9, 0.92], "pgd_acc": [0.5, 0.52],
                           "aa_acc": [0.45, 0.47], "eval_n": 359, "aa_n": 100})
    summary = console_summary(trials)
    assert ("(mean±std over n seeds; clean_acc, pgd_acc on 359 test points; aa_acc on 100 test points)"
            in summary)
    trials["val_robust_acc"] = [0.6, 0.61]
    trials["corruption_acc"] = [0.7, 0.71]
    trials["corruption_n"] = 10000
    note = console_summary(trials).split("(mean±std", 1)[1]
    assert all(len(line) <= HELP_WIDTH for line in note.splitlines()) and len(note.splitlines()) == 2
    assert "val_robust_acc on the validation split" in note.replace("\n", " ")


def test_the_study_scripts_turn_off_rays_merging_of_look_alike_lines():
    """Ray's driver merges look-alike worker lines across processes; epoch lines of different trials look alike,
    so a resumed fast study lost most of them. dpnp_ray.study.cli (imported first by the scripts) turns it off."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "RAY_DEDUP_LOGS"}
    out = subprocess.run([PYTHON, "-c", "import sys, dpnp_ray.study.cli; assert 'ray' not in sys.modules; "
                          "import ray._private.ray_constants as c; print(c.RAY_DEDUP_LOGS)"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_the_default_token_auth_notice_is_dropped_and_the_disabled_warning_kept(caplog):
    """Ray's own notice functions, through the filter a local study installs before ray.init."""
    from ray._private.authentication import authentication_token_setup as setup

    from dpnp_ray.study.cluster import quiet_default_token_auth_warning

    quiet_default_token_auth_warning()
    quiet_default_token_auth_warning()  # once is enough; twice adds nothing
    with caplog.at_level("WARNING", logger=setup.logger.name):
        setup._warn_token_auth_enabled()
        setup._warn_token_auth_disabled()
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if m.startswith("Token authentication is enabled")]
    assert [m for m in messages if m.startswith("Token authentication is disabled")]  # a real risk still shows
    assert len(setup.logger.filters) == 1
