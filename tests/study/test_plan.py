"""The study plan without Ray: the cost model's arithmetic by hand, how many trials fit at once on a
local instance and on a cluster, and what `--dry-run` prints."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from dpnp_ray.config import ExperimentConfig
from dpnp_ray.ray_train import Scaling
from dpnp_ray.study import AblationSpec, SearchSpec, cost, plan
from dpnp_ray.study.cluster import (DRIVER_CPU, DRIVER_RESOURCE, driver_request, local_resources, plan_concurrency,
                                    trial_env_vars)
from dpnp_ray.study.settings import StudyError, StudySettings

from ..support import run_script
from ..support.studies import STUB

DIGITS = cost.SplitSizes(train=1295, val=143, test=359, source="by hand")


def digits(**fields) -> ExperimentConfig:
    return ExperimentConfig.from_dict({"dataset": "digits", **fields})


# ----------------------------------------------------------------------------------- cost model


@pytest.mark.parametrize("k", [1, 3, 10])
def test_train_step_cost_is_the_documented_cost_model(k):
    # docs/evaluation.md#cost-model: PGD-AT 2k+3, Adv-DPNP 2k+6, TRADES 2k+7, clean DPNP one training pass
    assert cost.train_step_cost(digits(method="pgd_at", train_attack_steps=k)) == 2 * k + 3
    assert cost.train_step_cost(digits(method="adv_dpnp", train_attack_steps=k)) == 2 * k + 6
    assert cost.train_step_cost(digits(method="trades", train_attack_steps=k)) == 2 * k + 7
    assert cost.train_step_cost(digits(method="dpnp", train_attack_steps=k)) == 3


def test_attack_cost_by_hand():
    assert cost.attack_cost(10, 1, survival=1.0) == 21  # the upper bound 2k + 1
    assert cost.attack_cost(10, 2, survival=0.5) == 2 * (10 + 1)
    assert cost.attack_cost(3, 1, survival=0.5) == 4


def test_images_per_epoch_drops_each_ranks_last_partial_batch():
    assert cost.images_per_epoch(1295, 64, 1) == 20 * 64
    assert cost.images_per_epoch(1295, 64, 2) == 2 * 10 * 64  # 647 per rank: 10 full batches each
    assert cost.images_per_epoch(100, 128, 1) == 100  # fewer than a batch: one short batch


def test_suite_cost_by_hand():
    s = 0.5
    basic = digits(eval_suite="basic", eval_n=100, eval_attack_steps=10)
    # clean 1 + FGSM 3 + PGD-10 and CW-10 at 2 * 10 * s + 1 = 11 each, on 100 points
    assert cost.suite_cost(basic, 359, 10, s) == {"threat_model": 100 * (1 + 3 + 11 + 11)}

    quick = digits(eval_suite="quick", eval_n=0, eval_aa_n=100, eval_attack_steps=10)
    parts = cost.suite_cost(quick, 359, 10, s)
    assert parts["threat_model"] == 359 * 26
    assert parts["pgd_subset"] == 100 * (1 + 11)
    # APGD-CE: 100 iterations x 2 on every point; APGD-T: 9 targets x 100 x 2 on the surviving half
    assert parts["autoattack"] == 100 * (200 + 9 * 200 * s)
    # eps curve: 5 eps besides the threat model's (11 each), PGD-20 (21), PGD-50 at eps 1 (51), zero-gradient check (2)
    assert parts["diagnostics"] == 100 * (5 * 11 + 21 + 51 + 2)
    assert parts["square"] == 100 * (1000 * s + 1)  # 1000 queries on min(500, 100) points
    assert "corruptions" not in parts  # 8x8 digits get no corruption rows

    cifar = ExperimentConfig.from_dict({"dataset": "cifar10", "eval_suite": "quick", "eval_corruption_n": 100})
    assert cost.suite_cost(cifar, 10_000, 10, s)["corruptions"] == 100 * (14 * 5 + 1)  # generated sets + clean


def test_trial_cost_and_seconds_by_hand():
    cfg = digits(epochs=2, batch_size=64, train_attack_steps=3, val_attack_steps=3, eval_suite="basic",
                 eval_n=100, eval_attack_steps=10)
    trial = cost.trial_cost(cfg, DIGITS, workers=1, survival=0.5)
    assert trial.train == 2 * 1280 * (2 * 3 + 6)
    assert trial.validation == 2 * 143 * (1 + 4)
    assert trial.suite == 100 * 26
    rates = cost.Calibration(train_seconds_per_fe=2e-4, eval_seconds_per_fe=1e-4, device="cpu", threads=1, detail="")
    for runner in ("train", "tune"):
        assert trial.seconds(rates, workers=1, runner=runner) == pytest.approx(
            trial.train * 2e-4 + (trial.validation + trial.suite) * 1e-4 + cost.FIXED_TRIAL_SECONDS[runner])
    assert trial.seconds(rates, workers=2) == pytest.approx(
        (trial.train * 2e-4 + (trial.validation + trial.suite) * 1e-4) / 2 + cost.FIXED_TRIAL_SECONDS["train"])
    half = cost.trial_cost(cfg, DIGITS, workers=1, epochs=1, evaluated=0.25, survival=0.5)
    assert (half.train, half.validation, half.suite) == (trial.train / 2, trial.validation / 2, trial.suite / 4)


def test_asha_rungs_and_expected_epochs_by_hand():
    # Tune's rungs: grace x rf^j for j < int(log2(7 / 1) + 1) = 3: after 1, 2 and 4 epochs (max_t = 8 - 1)
    assert cost.asha_rungs(1, 2, 7) == [1, 2, 4]
    assert cost.asha_rungs(2, 2, 7) == [2, 4]  # int(log2(3.5) + 1) = 2
    assert cost.asha_rungs(1, 3, 7) == [1, 3]  # int(log3(7) + 1) = 2
    expected, finished = cost.asha_expected_epochs(8, [2, 4], 2)
    # half stop at the rung after 2 epochs and train one more (the stop arrives during it), a quarter
    # at the rung after 4 (5 epochs), a quarter train all 8
    assert cost.STOP_LATENCY_EPOCHS == 1
    assert expected == pytest.approx(0.5 * 3 + 0.25 * 5 + 0.25 * 8)
    assert finished == pytest.approx(0.25)
    assert cost.asha_expected_epochs(8, [], 2) == (8, 1.0)
    expected, finished = cost.asha_expected_epochs(8, [1, 3], 3)
    assert expected == pytest.approx(2 / 3 * 2 + 2 / 9 * 4 + 1 / 9 * 8) and finished == pytest.approx(1 / 9)


def test_makespan_packs_trials_on_the_first_free_slot():
    assert cost.makespan([10, 10, 10], 2) == 20
    assert cost.makespan([5, 3, 3, 3], 2) == 8  # 5 | 3, 3 | then 3 after the 5
    assert cost.makespan([4, 4], 8) == 4


# -------------------------------------------------------------------------------- trials at once


def test_local_instance_runs_one_single_cpu_trial_per_core():
    for cores in (1, 2, 4, 16):
        nodes = [local_resources(StudySettings("x", local_cpus=cores))]
        assert driver_request(nodes) == {DRIVER_RESOURCE: 1.0}
        assert plan_concurrency(Scaling(), 0, nodes) == cores
        assert plan_concurrency(Scaling(cpus_per_worker=0.5), 0, nodes) == 2 * cores
        if cores >= 2:
            assert plan_concurrency(Scaling(num_workers=2), 0, nodes) == cores // 2
    # the old request (DRIVER_CPU per driver) leaves 1.99 CPUs for the second trial's 1-CPU worker
    assert plan_concurrency(Scaling(), 0, [{"CPU": 2.0}], {"CPU": DRIVER_CPU}) == 1
    assert plan_concurrency(Scaling(), 1, [local_resources(StudySettings("x", local_cpus=2))]) == 1


def test_cluster_without_the_driver_resource_keeps_the_cpu_driver():
    nodes = [{"CPU": 4.0}, {"CPU": 4.0}]
    assert driver_request(nodes) == {"CPU": DRIVER_CPU}
    assert plan_concurrency(Scaling(num_workers=2), 0, nodes) == 3  # a driver takes a worker slot
    # a cluster that offers the resource: the drivers take none, but no more than its units
    offered = [{"CPU": 4.0, DRIVER_RESOURCE: 2.0}, {"CPU": 4.0}]
    assert plan_concurrency(Scaling(num_workers=2), 0, offered) == 2
    assert plan_concurrency(Scaling(num_workers=1), 0, offered) == 2
    with pytest.raises(StudyError, match=r"1 dpnp_trial_driver for its driver.*cannot place"):
        plan_concurrency(Scaling(), 0, [{"CPU": 4.0, DRIVER_RESOURCE: 0.5}], {DRIVER_RESOURCE: 1.0})


def test_trial_env_vars(monkeypatch):
    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    local, cluster = trial_env_vars(local=True), trial_env_vars(local=False)
    assert float(local["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]) < 2.0  # Train's default: 2 s
    assert local["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    assert "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER" not in cluster  # spot nodes can be preempted
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "1.5")
    assert trial_env_vars(local=True)["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "1.5"  # the user's value wins


# ------------------------------------------------------------------------------------- the plan


def test_ablation_plan_lists_the_grid_and_its_bill_without_ray(tmp_path):
    import ray

    base = dict(dataset="digits", epochs=2, batch_size=64, train_attack_steps=3, val_attack_steps=3,
                eval_suite="basic", eval_n=100, eval_attack_steps=10)
    settings = StudySettings("abl", storage=str(tmp_path / "results"), local_cpus=2)
    p = plan.plan_ablation(AblationSpec(base, ["full", "pgd_at", "no_npr"], [0, 1]), settings, calibration=STUB)
    assert not ray.is_initialized()
    assert not (tmp_path / "results").exists()
    assert [t.name for t in p.trials] == ["full-s0", "full-s1", "pgd_at-s0", "pgd_at-s1", "no_npr-s0", "no_npr-s1"]
    assert [t.cfg.method for t in p.trials] == ["adv_dpnp"] * 2 + ["pgd_at"] * 2 + ["adv_dpnp"] * 2
    # a local 1-worker study runs its trials in their Tune actors (runner tune): no driver besides the worker
    assert p.concurrent == 2 and p.driver == {} and p.scaling.runner == "tune"
    fixed, fixed_cpu = cost.FIXED_TRIAL_SECONDS["tune"], cost.FIXED_TRIAL_CPU_SECONDS["tune"]
    full = p.trials[0]
    expected = (2 * 1280 * 12 + 2 * 143 * 5 + 100 * 26) * 1e-4 + fixed
    assert full.seconds == pytest.approx(expected)
    assert p.trials[2].cost.train == 2 * 1280 * 9  # PGD-AT: 2k + 3
    slots = cost.makespan([t.seconds for t in p.trials], 2)
    cpu_work = sum(t.seconds - fixed + fixed_cpu for t in p.trials)
    assert p.cpu_seconds == pytest.approx(cpu_work) and p.cpus == 2
    study = cost.FIXED_STUDY_SECONDS + cost.TUNE_ACTOR_START_SECONDS
    assert p.wall_seconds == pytest.approx(study + max(slots, cpu_work / 2))
    assert p.device_hours == pytest.approx(sum(t.seconds for t in p.trials) / 3600)
    text = p.format()
    assert "trials: 6 (3 variant(s) x 2 seed(s))" in text
    assert "at once: 2 trial(s) on a local Ray instance with 2 CPUs" in text
    assert "1 worker(s) x (1 CPU), nothing else (its Tune trial is its worker); runner tune" in text
    # the same study through TorchTrainers: a driver per trial, and Ray Train's start-up in every trial
    on_train = plan.plan_ablation(AblationSpec(base, ["full"], [0]),
                                  replace(settings, scaling=Scaling(runner="train")), calibration=STUB)
    assert on_train.driver == {DRIVER_RESOURCE: 1.0} and "1 dpnp_trial_driver for its Tune driver" in on_train.format()
    assert on_train.trials[0].seconds == pytest.approx(expected - fixed + cost.FIXED_TRIAL_SECONDS["train"])
    assert "full-s0 .. full-s1 (2)" in text and "pgd_at-s0 .. pgd_at-s1 (2)" in text
    assert "CPU-hours" in text and "estimate: wall" in text


def test_wall_time_is_the_slots_or_the_cpu_work_whichever_is_longer(monkeypatch):
    """Trials that fill every core share them with Ray's own processes: the CPU work bounds the wall."""
    base = dict(dataset="digits", epochs=2, batch_size=64, train_attack_steps=3, val_attack_steps=3,
                eval_suite="basic", eval_n=100, eval_attack_steps=10)
    settings = StudySettings("abl", local_cpus=2)
    monkeypatch.setattr(plan, "FIXED_TRIAL_CPU_SECONDS", {"tune": 0.0})
    light = plan.plan_ablation(AblationSpec(base, ["full", "pgd_at"], [0]), settings, calibration=STUB)
    compute = [t.seconds - cost.FIXED_TRIAL_SECONDS["tune"] for t in light.trials]
    assert light.wall_seconds == pytest.approx(light.study_seconds + max(t.seconds for t in light.trials))
    assert "CPU-bound" not in light.format()
    monkeypatch.setattr(plan, "FIXED_TRIAL_CPU_SECONDS", {"tune": 100.0})
    heavy = plan.plan_ablation(AblationSpec(base, ["full", "pgd_at"], [0]), settings, calibration=STUB)
    assert heavy.cpu_seconds == pytest.approx(sum(compute) + 200.0)
    assert heavy.wall_seconds == pytest.approx(heavy.study_seconds + (sum(compute) + 200.0) / 2)
    assert "note: CPU-bound: " in heavy.format()
    gpu = replace(heavy, scaling=Scaling(gpus_per_worker=0.5, runner="tune"))  # GPU compute holds no CPU: Ray's share only
    assert gpu.cpu_seconds == pytest.approx(200.0)


def test_search_plan_counts_the_asha_budget():
    settings = StudySettings("s", local_cpus=1)
    base = dict(dataset="digits", epochs=8, eval_suite="basic")
    with_asha = plan.plan_search(SearchSpec(base, 10, scheduler="asha"), settings, calibration=STUB)
    without = plan.plan_search(SearchSpec(base, 10, scheduler="none"), settings, calibration=STUB)
    assert len(with_asha.trials) == len(without.trials) == 10 and with_asha.concurrent == 1
    assert without.trials[0].epochs == 8
    from dpnp_ray.study.search_space import asha_settings

    rule = asha_settings(8)
    rungs = cost.asha_rungs(rule.grace_period, rule.reduction_factor, rule.max_t)
    epochs, finished = cost.asha_expected_epochs(8, rungs, rule.reduction_factor)
    assert with_asha.trials[0].epochs == pytest.approx(epochs) and epochs < 8
    assert with_asha.trials[0].cost.suite == pytest.approx(finished * without.trials[0].cost.suite)
    assert with_asha.wall_seconds < without.wall_seconds
    assert "search budget 10; ASHA decides after" in with_asha.format()


def test_gpu_plan(monkeypatch):
    settings = StudySettings("g", local_cpus=2, scaling=Scaling(gpus_per_worker=0.25))
    with pytest.raises(StudyError, match="GPU"):  # a local CPU instance has no GPU: nothing fits
        plan.plan_search(SearchSpec(dict(dataset="digits", epochs=2), 2, scheduler="none"), settings,
                         calibration=STUB)
    gpu_node = [{"CPU": 8.0, "GPU": 1.0, DRIVER_RESOURCE: 64.0}]
    monkeypatch.setattr(plan, "cluster_view", lambda settings: (gpu_node, "a node with one GPU"))
    p = plan.plan_search(SearchSpec(dict(dataset="digits", epochs=2), 8, scheduler="none"), settings, calibration=STUB)
    assert p.concurrent == 4  # four quarter-GPU trials share the GPU
    assert p.device_hours == pytest.approx(sum(t.seconds for t in p.trials) * 0.25 / 3600)
    text = p.format()
    assert "GPU-hours" in text and "calibrated on this machine's CPU" in text


@pytest.mark.parametrize("script, extra", [("ablation.py", []), ("search.py", ["--trials", "3"])])
def test_dry_run_prints_the_plan_and_trains_nothing(script, extra, tmp_path):
    proc = run_script(script, "--smoke", "--dry-run", "--local-cpus", "2", "--storage", str(tmp_path / "r"),
                      *extra, timeout=300)
    out = proc.stdout
    assert "nothing is trained" in out and "at once: 2 trial(s)" in out
    assert "calibration:" in out and "us per training FE" in out and "estimate: wall" in out
    assert ("trials: 2 (2 variant(s) x 1 seed(s))" if script == "ablation.py" else "trials: 3 (search budget 3")in out
    assert not (tmp_path / "r").exists()
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr
    assert math.isfinite(float(out.split("CPU-hours")[0].rsplit(",", 1)[1]))


def test_split_sizes_without_the_data_use_the_official_sizes_and_the_training_subset(tmp_path):
    """On a machine without the files (the cluster's nodes have them), the bill counts the official split sizes,
    less the validation share, and at most train_subset training images."""
    base = dict(dataset="cifar10", data_root=str(tmp_path / "absent"), val_fraction=0.1)
    assert cost.split_sizes(ExperimentConfig.from_dict(base)) == cost.SplitSizes(
        45_000, 5_000, 10_000, "official sizes (data not on this machine)")
    assert cost.split_sizes(ExperimentConfig.from_dict({**base, "train_subset": 4_000})).train == 4_000
