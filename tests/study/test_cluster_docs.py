"""docs/cluster.md: its cluster-launcher YAML, `ray job submit` line and KubeRay RayJob hold what a study needs,
and the job runs as written (study flags made small) on a local two-node cluster."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time

import pytest
import yaml

from dpnp_ray import results
from dpnp_ray.study.cluster import DRIVER_RESOURCE, TRIAL_ENV_VARS

from ..support import PYTHON, RAY, REPO, TwoNodeCluster

PAGE = REPO / "docs" / "cluster.md"


def fenced(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(), flags=re.S)


def blocks() -> dict[str, dict]:
    """The page's YAML blocks, by what they are: the launcher's cluster config and the RayJob."""
    found = [yaml.safe_load(text) for text in fenced("yaml")]
    return {"launcher": next(b for b in found if "available_node_types" in b),
            "rayjob": next(b for b in found if b.get("kind") == "RayJob")}


def job_submit() -> list[str]:
    (line,) = [line for text in fenced("bash") for line in text.splitlines() if line.startswith("ray job submit")]
    return shlex.split(line)


def study_flags(entrypoint: list[str]) -> list[str]:
    assert entrypoint[:2] == ["python", "studies/ablation.py"], entrypoint
    flags = entrypoint[2:]
    assert "--cluster" in flags and flags[flags.index("--storage") + 1].startswith("s3://")  # shared by every node
    return flags


def assert_repeats_nothing_the_study_sets(runtime_env: dict) -> None:
    """The study's ray.init adds py_modules and TRIAL_ENV_VARS; Ray refuses a job whose runtime_env repeats them."""
    assert "py_modules" not in runtime_env
    assert not set(runtime_env.get("env_vars", {})) & set(TRIAL_ENV_VARS)


def test_launcher_config_puts_trial_drivers_on_the_head_node():
    launcher = blocks()["launcher"]
    nodes = launcher["available_node_types"]
    head = nodes[launcher["head_node_type"]]
    assert head["resources"][DRIVER_RESOURCE] >= 1
    assert all(DRIVER_RESOURCE not in n.get("resources", {}) for name, n in nodes.items() if name != launcher["head_node_type"])
    assert {"cluster_name", "provider", "setup_commands"} <= set(launcher)
    assert any("dpnp_ray" in command for command in launcher["setup_commands"])


def test_rayjob_runs_the_study_on_a_cluster_with_the_driver_resource_on_its_head():
    job = blocks()["rayjob"]
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    study_flags(shlex.split(spec["entrypoint"]))
    assert_repeats_nothing_the_study_sets(yaml.safe_load(spec["runtimeEnvYAML"]))
    cluster = spec["rayClusterSpec"]
    # KubeRay passes rayStartParams to `ray start`: --resources takes JSON, quoted once more for the pod's shell
    resources = json.loads(yaml.safe_load(cluster["headGroupSpec"]["rayStartParams"]["resources"]))
    assert resources[DRIVER_RESOURCE] >= 1
    assert cluster["workerGroupSpecs"] and all("template" in group for group in cluster["workerGroupSpecs"])


def test_job_submit_line_sends_the_study_with_a_runtime_env_it_accepts():
    args = job_submit()
    separator = args.index("--")
    options, entrypoint = args[:separator], args[separator + 1:]
    assert "--address" in options and "--working-dir" in options
    study_flags(entrypoint)
    assert_repeats_nothing_the_study_sets(json.loads(options[options.index("--runtime-env-json") + 1]))


# the page's study flags that need what this machine lacks (GPUs, CIFAR-10, S3): each with its value, dropped
AGENT_NOT_READY = "No available agent to submit job"
"""what `ray job submit` answers before the head node's job agent has registered (nothing was submitted)"""
NEEDS = ("--gpus-per-worker", "--dataset", "--model", "--epochs", "--data-root", "--storage")


def without(flags: list[str], dropped: tuple[str, ...]) -> list[str]:
    kept, it = [], iter(flags)
    for flag in it:
        if flag in dropped:
            next(it)
        else:
            kept.append(flag)
    return kept


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_the_documented_job_runs_on_a_two_node_cluster(tmp_path):
    args = job_submit()
    separator = args.index("--")
    options, flags = args[:separator], study_flags(args[separator + 1:])
    storage = tmp_path / "results"
    small = without(flags, NEEDS) + ["--storage", str(storage), "--smoke", "--variants", "full",
                                     "--cpus-per-worker", "0.5", "--set", "eval_suite=basic"]
    with TwoNodeCluster() as cluster:
        options[options.index("--address") + 1] = cluster.dashboard
        options[options.index("--working-dir") + 1] = str(REPO)
        command = [RAY, *options[1:], "--", PYTHON, "studies/ablation.py", *small]
        deadline = time.monotonic() + 120
        while True:  # the head's job agent registers a while after `ray start`; until then a submit is refused
            proc = subprocess.run(command, env=cluster.env, capture_output=True, text=True, timeout=800)
            if proc.returncode == 0 or AGENT_NOT_READY not in proc.stderr + proc.stdout \
                    or time.monotonic() > deadline:
                break
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert "world_size=2" in proc.stdout
    trials = results.read_table(storage / "ablation", "trials")
    assert len(trials) == 1 and trials.loc[0, "status"] == "completed" and trials.loc[0, "runner"] == "train"
    assert trials.loc[0, "num_workers"] == 2
