"""The bill before a study runs (`--dry-run`): its trials, what each holds, how many run at once, and
an estimate of the wall time and device-hours, from the cost model in cost.py.

A trial's seconds = its training FE x the
training rate + its validation and test-suite FE x the evaluation rate, divided by its workers,
plus FIXED_TRIAL_SECONDS of its runner (start-up and tear-down through Ray Tune, and Ray Train for `train`). The wall time packs
the trials into the concurrent slots in order (`makespan`), but is never below the study's CPU work
(the workers' compute plus FIXED_TRIAL_CPU_SECONDS of Ray processes per trial, by runner) spread over the
cluster's CPUs: where trials fill every core, Ray's own processes compete with them. Plus
FIXED_STUDY_SECONDS.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ExperimentConfig
from ..ray_train import Scaling

from .cost import (FIXED_STUDY_SECONDS, FIXED_TRIAL_CPU_SECONDS, FIXED_TRIAL_SECONDS, SURVIVAL,
                   TUNE_ACTOR_START_SECONDS, Calibration, SplitSizes, TrialCost, asha_expected_epochs, asha_rungs,
                   calibrate, makespan, split_sizes, train_step_cost, trial_cost)
from .cluster import alive_nodes, connect, local_resources, plan_concurrency, trial_driver, with_runner
from .preflight import PreflightError
from .search_space import asha_settings
from .settings import StudySettings
from .spec import AblationSpec, SearchSpec

# ------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class PlannedTrial:
    name: str
    cfg: ExperimentConfig
    cost: TrialCost
    seconds: float
    epochs: float


@dataclass(frozen=True)
class Plan:
    study: str
    kind: str  # "ablation" or "search"
    trials: list[PlannedTrial]
    scaling: Scaling
    driver: dict[str, float]
    concurrent: int
    where: str  # the cluster the plan was made for
    calibration: Calibration
    sizes: SplitSizes
    cpus: float  # the CPUs of the nodes the trials run on
    notes: list[str] = field(default_factory=list)
    runs: int = 1  # Tune runs one after another, each of an equal share of the trials (one per compared method)

    @property
    def cpu_seconds(self) -> float:
        """The trials' CPU work: CPU workers' compute (their threads busy) plus each trial's Ray processes."""
        s = self.scaling
        busy_cpus = 0.0 if s.use_gpu else s.num_workers * s.cpus_per_worker
        return sum(t.cost.compute_seconds(self.calibration, s.num_workers) * busy_cpus
                   + FIXED_TRIAL_CPU_SECONDS[s.runner] for t in self.trials)

    @property
    def slot_seconds(self) -> float:
        """The trials packed into the slots that run at once, run after run."""
        size = -(-len(self.trials) // self.runs)
        return sum(makespan([t.seconds for t in self.trials[i:i + size]], self.concurrent)
                   for i in range(0, len(self.trials), size))

    @property
    def cpu_bound(self) -> bool:
        """Whether the CPU work spread over the cluster's CPUs outlasts the slots."""
        return self.cpu_seconds / max(self.cpus, 1.0) > self.slot_seconds

    @property
    def wall_seconds(self) -> float:
        return self.study_seconds + max(self.slot_seconds, self.cpu_seconds / max(self.cpus, 1.0))

    @property
    def study_seconds(self) -> float:
        """Once per Tune run: FIXED_STUDY_SECONDS, and for `tune` the start of the slots' actors (in parallel)."""
        return self.runs * (FIXED_STUDY_SECONDS + (TUNE_ACTOR_START_SECONDS if self.scaling.runner == "tune" else 0.0))

    @property
    def device_hours(self) -> float:
        """Device-hours held: GPU-hours for GPU workers, CPU-hours (cores) otherwise."""
        per_worker = self.scaling.gpus_per_worker if self.scaling.use_gpu else self.scaling.cpus_per_worker
        return sum(t.seconds for t in self.trials) * self.scaling.num_workers * per_worker / 3600

    def format(self) -> str:
        s, unit = self.scaling, "GPU" if self.scaling.use_gpu else "CPU"
        holds = f"{s.cpus_per_worker:g} CPU" + (f", {s.gpus_per_worker:g} GPU" if s.use_gpu else "")
        driver = ", ".join(f"{v:g} {k}" for k, v in self.driver.items())
        driver = f"and {driver} for its Tune driver" if driver else "nothing else (its Tune trial is its worker)"
        cal = self.calibration
        lines = [
            f"dry run of {self.kind} {self.study!r}: nothing is trained",
            f"trials: {len(self.trials)}" + (f" ({self.notes[0]})" if self.notes else ""),
            f"each trial holds: {s.num_workers} worker(s) x ({holds}), {driver}; runner {s.runner}",
            f"at once: {self.concurrent} trial(s) on {self.where}",
            f"splits: train {self.sizes.train}, val {self.sizes.val}, test {self.sizes.test} ({self.sizes.source})",
            f"calibration: {cal.detail}: {cal.train_seconds_per_fe * 1e6:.3g} us per training FE, "
            f"{cal.eval_seconds_per_fe * 1e6:.3g} us per evaluation FE",
            "",
            f"{'trial':28s} {'method':13s} {'FE/img/step':>11s} {'epochs':>6s} {'train MFE':>10s} "
            f"{'val MFE':>8s} {'test MFE':>9s} {'est. s':>8s}",
        ]
        for group in _runs_of_equal_cost(self.trials):
            t = group[0]
            name = t.name if len(group) == 1 else f"{t.name} .. {group[-1].name} ({len(group)})"
            lines.append(f"{name:28s} {t.cfg.method:13s} {train_step_cost(t.cfg):11d} {t.epochs:6.3g} "
                         f"{t.cost.train / 1e6:10.2f} {t.cost.validation / 1e6:8.2f} {t.cost.suite / 1e6:9.2f} "
                         f"{t.seconds:8.1f}")
        lines += [
            "",
            f"estimate: wall {_duration(self.wall_seconds)}, {self.device_hours:.3g} {unit}-hours "
            f"(incl. {FIXED_TRIAL_SECONDS[s.runner]:g} s start-up + tear-down per trial and {self.study_seconds:g} s "
            f"per study{f' ({self.runs} Tune runs)' if self.runs > 1 else ''}; attacks at {SURVIVAL:g} of their "
            "length, docs/evaluation.md#cost-model)",
        ]
        if self.cpu_bound:
            lines.append(f"note: CPU-bound: {self.cpu_seconds:.0f} CPU-seconds of work "
                         f"({FIXED_TRIAL_CPU_SECONDS[s.runner]:g} "
                         f"per trial in Ray's processes) on {self.cpus:g} CPUs set the wall time")
        lines += [f"note: {n}" for n in self.notes[1:]]
        return "\n".join(lines)


def _runs_of_equal_cost(trials: list[PlannedTrial]) -> list[list[PlannedTrial]]:
    """Consecutive trials of the same method and cost, as one table row each."""
    runs: list[list[PlannedTrial]] = []
    for t in trials:
        if runs and (runs[-1][0].cfg.method, runs[-1][0].cost, runs[-1][0].epochs) == (t.cfg.method, t.cost, t.epochs):
            runs[-1].append(t)
        else:
            runs.append([t])
    return runs


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def cluster_view(settings: StudySettings) -> tuple[list[dict[str, float]], str]:
    """The nodes trials would run on: the local instance a study would start (no Ray needed), or the
    live nodes of the cluster named by --cluster / --address (connects, starts nothing)."""
    if not (settings.cluster or settings.address):
        nodes = [local_resources(settings)]
        return nodes, f"a local Ray instance with {nodes[0]['CPU']:g} CPUs"
    connect(settings)
    nodes = alive_nodes()
    cpus = sum(n.get("CPU", 0.0) for n in nodes)
    gpus = sum(n.get("GPU", 0.0) for n in nodes)
    return nodes, f"the cluster at {settings.address or 'auto'} ({len(nodes)} nodes, {cpus:g} CPUs, {gpus:g} GPUs)"


def _make_plan(kind: str, named: list[tuple[str, ExperimentConfig, float, float]], settings: StudySettings,
               calibration: Calibration | None, notes: list[str], runs: int = 1) -> Plan:
    nodes, where = cluster_view(settings)
    settings = with_runner(settings)
    driver = trial_driver(settings.scaling, nodes)
    concurrent = plan_concurrency(settings.scaling, settings.max_concurrent, nodes, driver)
    first = named[0][1]
    sizes = split_sizes(first)
    calibration = calibration or calibrate(first, max(1, int(settings.scaling.cpus_per_worker)))
    workers = settings.scaling.num_workers
    trials = []
    for name, cfg, epochs, evaluated in named:
        cost = trial_cost(cfg, sizes, workers, epochs=epochs, evaluated=evaluated)
        trials.append(PlannedTrial(name, cfg, cost, cost.seconds(calibration, workers, settings.scaling.runner),
                                   epochs))
    if settings.scaling.use_gpu and calibration.device == "cpu":
        notes.append("calibrated on this machine's CPU, while the trials run on GPU workers: the times are "
                     "far too long; run the dry run where a GPU is visible for a GPU estimate")
    cpus = sum(n.get("CPU", 0.0) for n in nodes)
    return Plan(settings.name, kind, trials, settings.scaling, driver, concurrent, where, calibration, sizes, cpus,
                notes, runs)


def plan_ablation(spec: AblationSpec, settings: StudySettings, calibration: Calibration | None = None) -> Plan:
    """The plan of `run_ablation(spec, settings)`: every variant x seed, in Tune's order."""
    if spec.problems():  # what run_ablation's preflight would refuse
        raise PreflightError(spec.problems())
    named = [(trial.trial_id, trial.cfg, float(trial.cfg.epochs), 1.0) for trial in spec.trials()]
    note = f"{len(spec.variants)} variant(s) x {len(spec.seeds)} seed(s)"
    return _make_plan("ablation", named, settings, calibration, [note])


def plan_search(spec: SearchSpec, settings: StudySettings, *, methods: list[str] | None = None,
                calibration: Calibration | None = None) -> Plan:
    """The plan of `run_search(spec, settings)`: `spec.n_trials` trials of the base config's cost (the searched
    fields do not change it); with ASHA each trains the expected epochs of its rungs and reaches the test suite
    with the chance of surviving them. `methods`: an equal-budget comparison (`--methods`): that budget for each
    method, one method after another, with a note per method of its budget and of what it searches."""
    if spec.problems():
        raise PreflightError(spec.problems())
    trials, scheduler, space = spec.n_trials, spec.scheduler, spec.space
    configs = [(f"{m} ", spec.for_method(m).config) for m in methods or []]
    configs = configs or [("", spec.config)]
    cfg = configs[0][1]
    epochs, evaluated = float(cfg.epochs), 1.0
    notes = [f"search budget {trials}" + (f" per method ({len(configs)} methods, one after another)" if methods
                                          else "")]
    if scheduler == "asha":
        asha = asha_settings(cfg.epochs)
        rungs = asha_rungs(asha.grace_period, asha.reduction_factor, asha.max_t) if asha else []
        if asha:
            epochs, evaluated = asha_expected_epochs(cfg.epochs, rungs, asha.reduction_factor)
        notes[0] += (f"; ASHA decides after {', '.join(f'{r:g}' for r in rungs) or 'no'} epoch(s)"
                     + (f" keeping 1/{asha.reduction_factor:g}" if asha else "")
                     + f": about {epochs:.3g} of {cfg.epochs} epochs per trial")
    for _, config in configs if methods else []:
        ranges = [f"{name} [{lo:.4g}, {hi:.4g}]{' log' if log else ''}" for name, (lo, hi), log
                  in space.method_params(config)]
        notes.append(f"budget of {config.method}: {trials} trial(s) of {config.epochs} epochs; searches "
                     + ", ".join(ranges))
    named = [(f"{prefix}{i}" if methods else f"trial {i}", config, epochs, evaluated)
             for prefix, config in configs for i in range(trials)]
    return _make_plan("search", named, settings, calibration, notes, runs=len(configs))
