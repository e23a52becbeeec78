"""The bill before a study runs (`--dry-run`): its trials, what each holds, how many run at once, and
an estimate of the wall time and device-hours.

Cost model (docs/evaluation.md#cost-model), in forward-equivalents (FE) per image: a forward is 1,
an attack step (forward + backward to the input) 2, a training pass (forward + backward with weight
gradients) 3. A training step is 3 per training pass (clean and/or adversarial branch) plus 2k for
the PGD-k adversary (+1 for TRADES' clean reference forward): PGD-AT 2k + 3, Adv-DPNP 2k + 6,
TRADES 2k + 7, clean DPNP 3. A PGD-k evaluation of a point costs at most r (2k + 1) with r restarts;
evaluation PGD stops per point once it is broken and AutoAttack's later attacks only see the points
the earlier ones left, so attacks are counted at SURVIVAL of their length (see `attack_cost`).

Seconds per FE come from timing a few training steps and one evaluation PGD batch of the study's
real model in this process (no Ray): `calibrate`. A trial's seconds = its training FE x the
training rate + its validation and test-suite FE x the evaluation rate, divided by its workers,
plus FIXED_TRIAL_SECONDS of its runner (start-up and tear-down through Ray Tune, and Ray Train for `train`). The wall time packs
the trials into the concurrent slots in order (`makespan`), but is never below the study's CPU work
(the workers' compute plus FIXED_TRIAL_CPU_SECONDS of Ray processes per trial, by runner) spread over the
cluster's CPUs: where trials fill every core, Ray's own processes compete with them. Plus
FIXED_STUDY_SECONDS.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Any

from ..config import ExperimentConfig
from ..methods import METHODS
from ..ray_train import STOP_LATENCY_EPOCHS, Scaling
from .cluster import alive_nodes, connect, local_resources, plan_concurrency, trial_driver, with_runner
from .settings import StudySettings

SURVIVAL = 0.5
"""Fraction of an early-stopping attack's length spent on an average point, and the fraction of
points that AutoAttack's and Square's later stages see. A robust model keeps about half its test
points under PGD; points already broken (misclassified clean points first) cost a step or two."""

FIXED_TRIAL_SECONDS = {"train": 12.0, "tune": 0.1}
"""Start-up plus tear-down of one trial, by runner (ray_train.RUNNERS), measured side by side by
bench/ray_overhead.py on a 2-core CPU machine (bench/README.md): `train` starts a Train controller, its
helper actors and a worker process per trial (12.2 s); `tune` runs in its Tune actor, which Tune reuses
from trial to trial (0.04 s; the first trial of each slot also starts the actor: TUNE_ACTOR_START_SECONDS)."""

TUNE_ACTOR_START_SECONDS = 5.0
"""`tune` runner: starting a slot's Tune actor and its imports (torch, ray.tune), once per concurrent slot
(bench/ray_overhead.py: 5.0 s for the first trial)."""

FIXED_TRIAL_CPU_SECONDS = {"train": 30.0, "tune": 3.0}
"""CPU-seconds one trial's Ray processes spend beside the worker's own compute, by runner. `train`:
starting and importing the Tune trial driver, Train controller, worker and helper actors (each a new
process that imports ray.train and torch), polling, reporting, checkpoints; `tune`: reports and
checkpoints through Tune only. They hold no CPU in Ray's accounting, so on a local instance whose trials
fill every core they slow the trials down. Measured as the machine's CPU time over whole studies
(bench/study_wall.py, bench/README.md)."""

FIXED_STUDY_SECONDS = 20.0
"""Once per study: starting the local Ray instance and the Tuner, exporting the tables at the end."""

OFFICIAL_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000), "svhn": (73_257, 26_032),
                  "fashion_mnist": (60_000, 10_000)}
"""(official train, test) sizes, used when the data are not on this machine (only on the cluster's nodes)."""

AUTOATTACK_TARGETS = 9  # APGD-T / FAB-T target classes (at most C - 1)
FAB_STEP_COST = 3  # FAB: a forward, the Jacobian of two logits, the projection


# ------------------------------------------------------------------------------------- cost model


def train_step_cost(cfg: ExperimentConfig) -> int:
    """FE per training image of one step of cfg.method with cfg.train_attack_steps (k)."""
    method = METHODS.get(cfg.method)
    passes = int(method.clean_branch) + int(method.adversarial)
    attack = 0
    if method.adversarial:
        reference = 1 if (method.attack_loss or cfg.train_attack_loss) == "kl" else 0  # TRADES' clean logits
        attack = 2 * cfg.train_attack_steps + reference
    return 3 * passes + attack


def attack_cost(steps: int, restarts: int = 1, survival: float = SURVIVAL) -> float:
    """FE per point of an early-stopping PGD: per restart, 2 per step for the surviving share of
    the steps and the final forward; survival = 1 gives the upper bound r (2k + 1)."""
    return restarts * (2 * steps * survival + 1)


@dataclass(frozen=True)
class SplitSizes:
    train: int
    val: int
    test: int
    source: str  # where the sizes come from: "loaded" or "official sizes"


def split_sizes(cfg: ExperimentConfig) -> SplitSizes:
    """The sizes of cfg's splits: loaded (digits is always here), else the official sizes less the
    validation share."""
    from ..data import DataError
    from ..factory import load_data

    try:
        data = load_data(cfg)
        return SplitSizes(len(data.train), len(data.val), len(data.test), "loaded")
    except (DataError, OSError):
        if cfg.dataset not in OFFICIAL_SIZES:
            raise
    train, test = OFFICIAL_SIZES[cfg.dataset]
    val = round(cfg.val_fraction * train)
    kept = min(cfg.train_subset, train - val) if cfg.train_subset else train - val  # load_dataset refuses more
    return SplitSizes(kept, val, test, "official sizes (data not on this machine)")


def images_per_epoch(n_train: int, batch_size: int, workers: int) -> int:
    """Training images one epoch sees: each rank drops its last incomplete batch (training_loop.train_loader)."""
    per_rank = n_train // workers
    if per_rank <= batch_size:
        return workers * per_rank
    return workers * (per_rank // batch_size) * batch_size


def validation_cost(cfg: ExperimentConfig, n_val: int, survival: float = SURVIVAL) -> float:
    """FE of one epoch's validation: clean accuracy and PGD-(val_attack_steps) accuracy."""
    return n_val * (1 + attack_cost(cfg.val_attack_steps, 1, survival))


def suite_cost(cfg: ExperimentConfig, n_test: int, num_classes: int, survival: float = SURVIVAL) -> dict[str, float]:
    """FE of the test suite cfg.eval_suite (dpnp_ray/evaluate/suite.py, docs/evaluation.md#suite-levels), by part."""
    from ..evaluate.corruptions import CIFAR_C_CORRUPTIONS, GENERATED_BENCHMARK, SEVERITIES
    from ..evaluate.external import AUTOATTACK_ITERATIONS, AUTOATTACK_VERSIONS
    from ..evaluate.suite import SUITE_LEVELS

    level = SUITE_LEVELS.get(cfg.eval_suite)
    k, r = cfg.eval_attack_steps, cfg.eval_restarts
    n = n_test if cfg.eval_n == 0 else min(cfg.eval_n, n_test)
    m = n if cfg.eval_aa_n == 0 else min(cfg.eval_aa_n, n)
    pgd = attack_cost(k, r, survival)
    parts = {"threat_model": n * (1 + 3 + 2 * pgd)}  # clean, FGSM (a step and a forward), PGD-k, CW-inf
    if level.strong_pgd is not None and tuple(level.strong_pgd) != (k, r):
        parts["strong_pgd"] = n * attack_cost(*level.strong_pgd, survival)
    if level.attack_subset:
        parts["pgd_subset"] = m * (1 + pgd)
    targets = min(AUTOATTACK_TARGETS, num_classes - 1)
    stages = {"apgd-ce": 2 * AUTOATTACK_ITERATIONS, "apgd-t": 2 * AUTOATTACK_ITERATIONS * targets,
              "fab-t": FAB_STEP_COST * AUTOATTACK_ITERATIONS * targets, "square": 5000}

    def cascade(version: str) -> float:  # the first stage attacks every point, each later one only what is left
        return m * sum(stages[a] * (1 if i == 0 else survival) for i, a in enumerate(AUTOATTACK_VERSIONS[version]))

    if level.autoattack is not None:
        parts["autoattack"] = cascade(level.autoattack)
    # APGD-CE + T over the eps curve (m = 0 is clean: no attack) and in the L2 ball
    runs = (level.aa_eps_curve * sum(1 for x in set(cfg.eval_aa_eps_curve) if x > 0)
            + level.l2 * (cfg.eval_l2_eps != 0))
    if runs:
        parts["other_threat_models"] = runs * cascade("apgd")
    if level.diagnostics:
        curve = len(set(cfg.eval_eps_curve) | {1.0}) - 1  # eps = 1 x eval_eps is the PGD-k above
        parts["diagnostics"] = m * (curve * pgd + attack_cost(level.steps_factor * k, r, survival)
                                    + attack_cost(level.unbounded_steps, 1, survival) + 2)  # + zero-gradient check
        if level.square_queries:
            square_n = m if level.square_n == 0 else min(level.square_n, m)
            parts["square"] = square_n * (level.square_queries * survival + 1)
    if level.corruptions:
        from ..data import dataset_info

        if cfg.corruption_root and cfg.dataset in ("cifar10", "cifar100"):
            sets = len(CIFAR_C_CORRUPTIONS) * len(SEVERITIES)
        elif tuple(dataset_info(cfg.dataset).image_shape) == (3, 32, 32):
            sets = len(GENERATED_BENCHMARK) * len(SEVERITIES)
        else:
            sets = 0  # no corruption rows for this image shape
        if sets:
            n_c = n_test if cfg.eval_corruption_n == 0 else min(cfg.eval_corruption_n, n_test)
            parts["corruptions"] = n_c * (sets + 1)
    return parts


@dataclass(frozen=True)
class TrialCost:
    """One trial's forward-equivalents: training, validation (every epoch) and the test suite."""

    train: float
    validation: float
    suite: float

    def compute_seconds(self, rates: "Calibration", workers: int) -> float:
        """The workers' own work, without Ray's fixed cost."""
        return ((self.train * rates.train_seconds_per_fe + (self.validation + self.suite) * rates.eval_seconds_per_fe)
                / workers)

    def seconds(self, rates: "Calibration", workers: int, runner: str = "train") -> float:
        return self.compute_seconds(rates, workers) + FIXED_TRIAL_SECONDS[runner]


def trial_cost(cfg: ExperimentConfig, sizes: SplitSizes, workers: int, epochs: float | None = None,
               evaluated: float = 1.0, survival: float = SURVIVAL) -> TrialCost:
    """FE of a trial of `epochs` epochs (default cfg.epochs); `evaluated` is the chance it reaches the
    test suite (1, or below with early stopping)."""
    from ..data import dataset_info

    epochs = cfg.epochs if epochs is None else epochs
    per_epoch = images_per_epoch(sizes.train, cfg.batch_size, workers) * train_step_cost(cfg)
    num_classes = dataset_info(cfg.dataset).num_classes
    return TrialCost(train=epochs * per_epoch, validation=epochs * validation_cost(cfg, sizes.val, survival),
                     suite=evaluated * sum(suite_cost(cfg, sizes.test, num_classes, survival).values()))


# ---------------------------------------------------------------------------------- early stopping


def asha_rungs(grace_period: float, reduction_factor: float, max_t: float) -> list[float]:
    """The epochs done at which ASHA decides (one bracket), as Tune's AsyncHyperBandScheduler builds
    them: grace x rf^j for j < int(log_rf(max_t / grace) + 1), those a trial reaches (<= max_t)."""
    count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return [grace_period * reduction_factor ** j for j in range(count) if grace_period * reduction_factor ** j <= max_t]


def asha_expected_epochs(epochs: int, rungs: list[float], reduction_factor: float) -> tuple[float, float]:
    """(expected epochs a trial trains, chance it finishes) when each rung keeps 1 / rf of the trials
    that reach it; a trial stopped at the rung of m epochs done trains m + STOP_LATENCY_EPOCHS."""
    expected, reach = 0.0, 1.0
    for rung in sorted(rungs):
        stopped = reach * (1 - 1 / reduction_factor)
        expected += stopped * min(epochs, math.floor(rung) + STOP_LATENCY_EPOCHS)
        reach -= stopped
    return expected + reach * epochs, reach


def makespan(durations: list[float], slots: int) -> float:
    """Wall time of running the durations in order, each on the first slot to come free."""
    free = [0.0] * max(1, slots)
    for duration in durations:
        i = free.index(min(free))
        free[i] += duration
    return max(free)


# ------------------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Calibration:
    train_seconds_per_fe: float  # per image-FE of a training step
    eval_seconds_per_fe: float  # per image-FE of an evaluation PGD step
    device: str
    threads: int
    detail: str


def calibrate(cfg: ExperimentConfig, threads: int, steps: int = 3) -> Calibration:
    """Seconds per FE of cfg's model on this machine: `steps` timed training steps (after one warm-up;
    the median) at cfg.batch_size with PGD-1 (the FE count scales them to any k), and one evaluation
    PGD-2 batch of min(eval_batch_size, 256) points; random inputs of the dataset's shape."""
    import torch

    from ..attacks import eval_mode, pgd
    from ..data import dataset_info
    from ..devices import Precision, resolve_device
    from ..steps import DualBranchForward, train_step
    from ..factory import make_optimizer, model_from_config

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cal = replace(cfg, train_attack_steps=1)
        info = dataset_info(cfg.dataset)
        device = resolve_device(cfg.device)
        precision = Precision.choose(cfg.precision, device)
        torch.manual_seed(0)
        net = model_from_config(cal, info).to(device)
        forward, optimizer = DualBranchForward(net), make_optimizer(cal, net)
        generator = torch.Generator(device=device).manual_seed(0)
        x = torch.rand(cfg.batch_size, *info.image_shape, generator=generator, device=device)
        y = torch.randint(0, info.num_classes, (cfg.batch_size,), generator=generator, device=device)

        def timed(fn) -> float:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter() - started

        def step() -> None:
            train_step(forward, net, x, y, cal, eps=cal.eps, optimizer=optimizer, precision=precision,
                       generator=generator)

        net.train()
        timed(step)
        train_s = statistics.median(timed(step) for _ in range(steps)) / (cfg.batch_size * train_step_cost(cal))
        n_eval = min(cfg.eval_batch_size, 256)
        xe = x[:n_eval] if n_eval <= len(x) else torch.rand(n_eval, *info.image_shape, generator=generator,
                                                             device=device)
        ye = torch.randint(0, info.num_classes, (len(xe),), generator=generator, device=device)

        def attack() -> None:
            with torch.no_grad(), precision.autocast():
                net(pgd(net, xe, ye, eps=cal.eval_eps, step_size=cal.eval_step, steps=2, generator=generator))

        with eval_mode(net):
            attack()
            eval_s = timed(attack) / (len(xe) * attack_cost(2, 1, survival=1.0))
    finally:
        torch.set_num_threads(previous)
    return Calibration(train_s, eval_s, str(device), threads,
                       f"{steps} training steps of {cfg.model} at batch {cfg.batch_size} and one PGD-2 batch "
                       f"of {len(xe)} on {device} ({threads} torch thread{'s' if threads > 1 else ''})")


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


def plan_ablation(base: dict[str, Any], variants: list[str], seeds: list[int], settings: StudySettings,
                  calibration: Calibration | None = None, extra_variants: dict[str, dict] | None = None) -> Plan:
    """The plan of `run_ablation(base, variants, seeds, settings, extra_variants=...)`: every variant x seed, in
    Tune's order."""
    from .ablation_grid import variant_overrides

    overrides = {**variant_overrides(), **(extra_variants or {})}
    named = []
    for variant in variants:  # Tune's grid order: the seed varies fastest
        for seed in seeds:
            cfg = ExperimentConfig.from_dict({**base, **overrides[variant], "seed": seed})
            named.append((f"{variant}-s{seed}", cfg, float(cfg.epochs), 1.0))
    note = f"{len(variants)} variant(s) x {len(seeds)} seed(s)"
    return _make_plan("ablation", named, settings, calibration, [note])


def plan_search(base: dict[str, Any], settings: StudySettings, *, trials: int, scheduler: str = "asha",
                calibration: Calibration | None = None, methods: list[str] | None = None, space=None) -> Plan:
    """The plan of `run_search(base, settings, trials=..., scheduler=...)`: `trials` trials of the base
    config's cost (the searched fields do not change it); with ASHA each trains the expected epochs
    of its rungs and reaches the test suite with the chance of surviving them. `methods`: an equal-budget
    comparison (`--methods`): `trials` trials of each method, one method after another, with a note per method
    of its budget and of what it searches in `space` (an optuna_search.SearchSpace)."""
    from .optuna_search import SearchSpace, asha_settings

    configs = [(f"{m} ", ExperimentConfig.from_dict({**base, "method": m})) for m in methods or []]
    configs = configs or [("", ExperimentConfig.from_dict(base))]
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
    space = space or SearchSpace()
    for _, config in configs if methods else []:
        ranges = [f"{name} [{lo:.4g}, {hi:.4g}]{' log' if log else ''}" for name, (lo, hi), log
                  in space.method_params(config)]
        notes.append(f"budget of {config.method}: {trials} trial(s) of {config.epochs} epochs; searches "
                     + ", ".join(ranges))
    named = [(f"{prefix}{i}" if methods else f"trial {i}", config, epochs, evaluated)
             for prefix, config in configs for i in range(trials)]
    return _make_plan("search", named, settings, calibration, notes, runs=len(configs))
