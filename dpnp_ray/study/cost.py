"""The cost model of a study (docs/evaluation.md#cost-model): forward-equivalents per trial, ASHA's expected
epochs, packing trials into slots, and the seconds per forward-equivalent measured on this machine.

The bill before a study runs (`--dry-run`): its trials, what each holds, how many run at once, and
an estimate of the wall time and device-hours.

Cost model (docs/evaluation.md#cost-model), in forward-equivalents (FE) per image: a forward is 1,
an attack step (forward + backward to the input) 2, a training pass (forward + backward with weight
gradients) 3. A training step is 3 per training pass (clean and/or adversarial branch) plus 2k for
the PGD-k adversary (+1 for TRADES' clean reference forward): PGD-AT 2k + 3, Adv-DPNP 2k + 6,
TRADES 2k + 7, clean DPNP 3. A PGD-k evaluation of a point costs at most r (2k + 1) with r restarts;
evaluation PGD stops per point once it is broken and AutoAttack's later attacks only see the points
the earlier ones left, so attacks are counted at SURVIVAL of their length (see `attack_cost`).

Seconds per FE come from timing a few training steps and one evaluation PGD batch of the study's
real model in this process (no Ray): `calibrate`. The plan that uses all of this: plan.py.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, replace

from ..config import ExperimentConfig
from ..methods import METHODS
from ..ray_train import STOP_LATENCY_EPOCHS

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
    """FE of the test suite cfg.eval_suite (dpnp_ray/evaluate/suite_levels.py, docs/evaluation.md#suite-levels), by part."""
    from ..evaluate.corruptions import CIFAR_C_CORRUPTIONS, GENERATED_BENCHMARK, SEVERITIES
    from ..evaluate.external import AUTOATTACK_ITERATIONS, AUTOATTACK_VERSIONS
    from ..evaluate.suite_levels import SUITE_LEVELS

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
