"""The robustness evaluation suite every finished trial goes through.

`run_suite(net, data, cfg, env, precision)` returns a `SuiteResult`: rows for evals.parquet,
corruptions.parquet, geometry.parquet and masking.parquet (without the study/trial/variant/seed
key columns, which the caller adds) and flat scalars for trials.parquet. What runs is a
`SuiteLevel`, looked up by `cfg.eval_suite` in `SUITE_LEVELS`:

basic   clean, FGSM, PGD-k (cfg.eval_attack_steps / eval_step / eval_restarts) and CW-inf (PGD on
        the C&W margin) on cfg.eval_n test points: exactly the four rows of the old
        `experiment.test_evaluation`.
quick   basic, plus on the "attack subset" (cfg.eval_aa_n points drawn from those eval_n):
        AutoAttack `apgd` (APGD-CE then APGD-T, 9 targets, 100 iterations, 1 restart: standard's
        settings for those two attacks) from the original code (PyPI `pyautoattack`), in fp32;
        a PGD-k accuracy-vs-eps curve ("pgd_eps_curve") at eps = m * cfg.eval_eps for m in
        cfg.eval_eps_curve and m = 1, step scaled with eps; PGD-2k ("pgd_steps_check"); PGD at
        eps = 1 ("pgd_unbounded"); a cheap black-box Square attack ("square"); the gradient-masking
        checks below; geometry (`geometry.geometry_metrics`) of the clean ("test") and PGD-k
        ("test_pgd") features of the attack subset, against the prototypes (a linear head's weight
        rows for the baselines, prototype_source = "linear_weight"); common corruptions on
        cfg.eval_corruption_n points: the released files (source "cifar10-c" / "cifar100-c") when
        cfg.corruption_root is set and the dataset is cifar10 / cifar100, else the offline generator's
        14 benchmark corruptions x 5 severities (source "generated-c", fixed seed CORRUPTION_SEED),
        which needs 3x32x32 images (digits gets no corruption rows; summary says why).
full    quick with AutoAttack `standard` (APGD-CE, APGD-T, FAB-T, Square 5000 queries: AutoAttack's
        cascade, the per-point worst case) instead of `apgd`, PGD-50 with 10 restarts on the eval_n
        points, and Square with 5000 queries on the whole attack subset.

Rows of evals.parquet carry suite = the level that ran; "autoattack" rows add `version` (apgd /
standard) and name the cascade in `loss`; "square" rows put the query budget in `steps`; eps-curve
and unbounded rows add `step_size`. The summary holds clean/fgsm/pgd/cw (via experiment.summary_metrics),
aa_acc, aa_version, aa_n, pgd_aa_gap (PGD-k CE minus AutoAttack on the attack subset), aa_warnings,
square_acc, corruption_acc (mean over corruptions x severities), corruption_clean_acc (same points),
corruption_source, masking_flags (count), any_masking_flag, masking_flagged_checks and seconds_<part>
(wall seconds on this rank).

Gradient-masking checks (masking.parquet: check, value, threshold, flagged = value > threshold, detail, n).
"tol(n)" is `noise_tolerance(n)` = max(0.5 / sqrt(n), 1 / n): one binomial standard error at p = 1/2
(1.6 points at n = 1000, as EVAL_NOTES gives for 1k subsets), at least one point. All comparisons are
on the same points, so only the attacks' randomness can reorder them; tol is generous on purpose.

fgsm_vs_pgd             acc(PGD-k) - acc(FGSM) on the eval_n points > tol(n)
eps_monotone            largest rise of PGD-k accuracy between consecutive eps of the curve > tol(n)
eps0_equals_clean       |acc(PGD, eps = 0) - clean acc| > 0 (PGD at eps 0 must not change any input)
steps_monotone          acc(PGD-2k) - acc(PGD-k) > tol(n); full adds steps_monotone_50x10 (eval_n points)
pgd_aa_gap              acc(PGD-k CE) - acc(AutoAttack) > max(4 points, tol(n)): sound evaluations show
                        about 1.8 points, hypersphere training 4-7, broken defenses far more (EVAL_NOTES)
black_box_vs_white_box  acc(white-box, per point: survived PGD-k and AutoAttack) - acc(Square) > tol(m),
                        on the m points Square ran on (quick: 1000 queries on <= 500 points, Square's
                        schedule rescaled to the budget; full: 5000 queries, AutoAttack's settings)
unbounded_eps           acc(PGD at eps = 1, 50 steps (full: 100) of 2.5 / steps) > 2%: eps = 1 reaches
                        every image, so only hidden gradients leave points correct
zero_gradients          fraction of clean points whose fp32 CE input gradient is exactly 0 > 0
                        (AutoAttack's own check; its warnings are also kept in summary["aa_warnings"])

Sharding: every rank evaluates its slice of each point set (`evaluate.shard`) and per-point results
are gathered with `env.all_reduce_sum`, so every rank returns the same rows. AutoAttack and Square
run per rank on their slice: their random starts depend on the batch they see, so results can
differ in the last digits between world sizes (they are still the same attacks on the same points).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import corruptions
from .attacks import eval_mode
from .config import ExperimentConfig
from .data import DatasetInfo, DatasetSplits, Split, to_float
from .distributed import LocalEnvironment
from .evaluate import EvalResult, evaluate_attack, fgsm_attack, pgd_attack, shard, subsample
from .geometry import geometry_metrics
from .models import Classifier
from .registry import Registry
from .devices import Precision

# ------------------------------------------------------------------------------------ levels


@dataclass(frozen=True)
class SuiteLevel:
    """What one level of the suite runs. Tests and scripts may pass a modified copy to `run_suite`
    (e.g. `dataclasses.replace(SUITE_LEVELS.get("quick"), square_queries=200)`)."""

    name: str
    autoattack: str | None = None  # a key of AUTOATTACK_VERSIONS, or None
    diagnostics: bool = False  # eps curve, PGD-2k, unbounded PGD, Square and the masking checks
    geometry: bool = False
    corruptions: bool = False
    strong_pgd: tuple[int, int] | None = None  # (steps, restarts) of an extra PGD on the eval_n points
    square_queries: int = 0  # stand-alone Square (black-box) for the masking check; 0: skip it
    square_n: int = 0  # points of the attack subset it runs on; 0: all of them
    square_rescale_schedule: bool = True  # Square's own option: fit its p schedule to few queries
    unbounded_steps: int = 50  # PGD at eps = 1 with step 2.5 / steps (Madry et al.'s rule)
    steps_factor: int = 2  # the steps check compares PGD-k with PGD-(factor * k)


SUITE_LEVELS: Registry[SuiteLevel] = Registry("eval suite level")
SUITE_LEVELS.register("basic")(SuiteLevel("basic"))
SUITE_LEVELS.register("quick")(SuiteLevel(
    "quick", autoattack="apgd", diagnostics=True, geometry=True, corruptions=True,
    square_queries=1000, square_n=500))
SUITE_LEVELS.register("full")(SuiteLevel(
    "full", autoattack="standard", diagnostics=True, geometry=True, corruptions=True, strong_pgd=(50, 10),
    square_queries=5000, square_n=0, square_rescale_schedule=False, unbounded_steps=100))

#: AutoAttack versions as this project names them -> the attacks of AutoAttack's cascade, in order
AUTOATTACK_VERSIONS: dict[str, tuple[str, ...]] = {
    "apgd": ("apgd-ce", "apgd-t"),
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
}
AUTOATTACK_ITERATIONS = 100  # APGD and FAB iterations in both versions (AutoAttack's defaults)

#: the datasets whose released corrupted test sets `load_cifar_c` reads, and their source names
RELEASED_CORRUPTION_SOURCES = {"cifar10": "cifar10-c", "cifar100": "cifar100-c"}
#: seed of the generated corruptions: fixed, so every trial sees the same corrupted images (as with
#: the released files) and variants are compared on identical data
CORRUPTION_SEED = 0

# ------------------------------------------------------------------ masking-check thresholds
#: flag a PGD-CE minus AutoAttack gap above 4 points: sound evaluations show about 1.8 points
#: (APGD-CE vs APGD-DLR for plain TRADES), hypersphere / prototype training 4-7 and defenses that
#: collapsed under AutoAttack far more (../shared/EVAL_NOTES.md, "Pitfalls").
PGD_AA_GAP_THRESHOLD = 0.04
#: flag when PGD at eps = 1 (any image in [0, 1]^d reachable) leaves more than 2% accuracy
UNBOUNDED_THRESHOLD = 0.02


def noise_tolerance(n: int) -> float:
    """Allowed violation of an ordering that should hold between two accuracies on the same n points.

    One binomial standard error at p = 1/2, 0.5 / sqrt(n) (1.6 points at n = 1000: the noise
    EVAL_NOTES gives for 1k-point subsets), and never less than one point (1 / n). Both accuracies
    are measured on the same points, so this is generous: the attacks' own randomness, not sampling
    noise, is all that can reorder them.
    """
    return max(0.5 / math.sqrt(max(n, 1)), 1.0 / max(n, 1))


# ------------------------------------------------------------------------------- result type


@dataclass
class SuiteResult:
    """Rows for the Parquet tables (without the key columns) and flat scalars for trials.parquet."""

    evals: list[dict[str, Any]] = field(default_factory=list)
    corruptions: list[dict[str, Any]] = field(default_factory=list)
    geometry: list[dict[str, Any]] = field(default_factory=list)
    masking: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------- the original AutoAttack and Square


@contextlib.contextmanager
def _own_rng(device: torch.device) -> Iterator[None]:
    """AutoAttack and Square reseed torch's global RNGs (`torch.random.manual_seed(seed)`) and draw
    from them; keep that from leaking into the caller's random state."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


class _WarningLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _capture_warnings(logger_name: str) -> Iterator[list[str]]:
    """AutoAttack reports its own sanity checks (zero gradients, randomized model, ...) as warnings
    on the 'auto-attack' logger: collect them for the trial's summary (`aa_warnings`)."""
    handler = _WarningLog()
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, version: str, seed: int,
               batch_size: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """L-inf AutoAttack (Croce & Hein 2020) with the original code; returns (x_adv, robust, warnings).

    `robust[i]` is True when no attack of the cascade broke point i (False also for points the model
    misclassifies clean). The caller puts the model in eval mode; it runs in fp32 on x's device.
    versions: `apgd` = APGD-CE, APGD-T with standard's settings; `standard` = AutoAttack's own.
    """
    from pyautoattack import AutoAttack  # here, not at the top: only the quick and full levels need it

    if version not in AUTOATTACK_VERSIONS:
        raise ValueError(f"AutoAttack version {version!r}; known: {', '.join(AUTOATTACK_VERSIONS)}")
    if num_classes < 4:
        raise ValueError(f"AutoAttack's targeted DLR loss needs at least 4 classes, got {num_classes}")
    if version == "standard":
        attack = AutoAttack(model, version="standard", norm="Linf", eps=eps, seed=seed, device=x.device)
    else:
        attack = AutoAttack(model, attacks=list(AUTOATTACK_VERSIONS[version]), version="custom", norm="Linf",
                            eps=eps, seed=seed, device=x.device)
        attack.apgd.n_restarts = 1  # what _set_version('standard') sets for APGD-CE / APGD-T
        attack.apgd_targeted.n_restarts = 1
    targets = min(9, num_classes - 1)  # standard uses 9 target classes; fewer classes have fewer rivals
    attack.apgd_targeted.n_target_classes = targets
    attack.fab.n_target_classes = targets
    with _own_rng(x.device), _capture_warnings("auto-attack") as warnings:
        x_adv, y_adv = attack.run_standard_evaluation(x, y, batch_size=batch_size)
    return x_adv.detach(), (y_adv == y), list(warnings)


def square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, queries: int, seed: int,
           batch_size: int, rescale_schedule: bool = True) -> torch.Tensor:
    """L-inf Square attack (Andriushchenko et al. 2020; AutoAttack's code), score-based black-box:
    it only queries the model's logits. Returns x_adv; the model must already be in eval mode."""
    from pyautoattack.square import SquareAttack

    attack = SquareAttack(model, p_init=0.8, n_queries=queries, eps=eps, norm="Linf", n_restarts=1, seed=seed,
                          verbose=False, device=x.device, resc_schedule=rescale_schedule)
    out = []
    with _own_rng(x.device), torch.no_grad():
        for lo in range(0, len(x), batch_size):
            out.append(attack.perturb(x[lo:lo + batch_size], y[lo:lo + batch_size]))
    return torch.cat(out) if out else x.clone()


# ------------------------------------------------------------------- per-point, sharded helpers


def _gather(local: torch.Tensor, total: int, env: LocalEnvironment) -> torch.Tensor:
    """Rows of this rank's `shard` slice -> the (total, ...) tensor of all ranks (a sum of zero-padded
    copies, so every rank gets it with one all-reduce)."""
    lo = total * env.rank // env.world_size
    full = torch.zeros((total, *local.shape[1:]), dtype=local.dtype, device=env.device)
    full[lo:lo + len(local)] = local.to(env.device)
    return env.all_reduce_sum(full)


def _gather_flags(local: torch.Tensor, total: int, env: LocalEnvironment) -> torch.Tensor:
    return _gather(local.to(torch.long), total, env).bool()


Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def _correct(net: Classifier, x: torch.Tensor, y: torch.Tensor, attack: Attack | None, *, batch_size: int,
             precision: Precision, seed: int, rank: int, features: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-point correctness (and features) on x, attacked batch by batch like `evaluate.correct_counts`
    (same generator seed, same batches), so the same attack gives the same points."""
    generator = torch.Generator(device=x.device).manual_seed(seed * 7919 + rank)
    flags, feats = [], []
    for lo in range(0, len(x), batch_size):
        xb, yb = x[lo:lo + batch_size], y[lo:lo + batch_size]
        if attack is not None:
            xb = attack(net, xb, yb, generator)
        with torch.no_grad(), precision.autocast():
            if features:
                z = net.features(xb)
                logits = net.head(z)
                feats.append(z.float())
            else:
                logits = net(xb)
        flags.append(logits.argmax(1) == yb)
    empty = torch.zeros(0, dtype=torch.bool, device=x.device)
    return (torch.cat(flags) if flags else empty), (torch.cat(feats) if feats else None)


def _zero_gradient(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Per point: is the fp32 input gradient of the CE loss exactly zero (AutoAttack's own check)?"""
    out = []
    for lo in range(0, len(x), batch_size):
        xb = x[lo:lo + batch_size].detach().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(net(xb).float(), y[lo:lo + batch_size], reduction="sum")
            (grad,) = torch.autograd.grad(loss, xb)
        out.append(grad.flatten(1).abs().sum(1) == 0)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=x.device)


def _local(split: Split, env: LocalEnvironment) -> tuple[torch.Tensor, torch.Tensor]:
    part = shard(split, env.rank, env.world_size)
    return to_float(part.images.to(env.device)), part.labels.to(env.device)


def _eval_row(suite: str, attack: str, *, eps: float, steps: int, restarts: int, n: int, accuracy: float,
              loss: str = "ce", split: str = "test", **extra: Any) -> dict[str, Any]:
    return {"suite": suite, "split": split, "attack": attack, "loss": loss, "eps": float(eps), "steps": int(steps),
            "restarts": int(restarts), "n": int(n), "accuracy": float(accuracy), **extra}


def _as_row(result: EvalResult, suite: str) -> dict[str, Any]:
    """An EvalResult as an evals row labelled with the suite level that produced it."""
    return {**result.as_row(), "suite": suite}


def _mean(flags: torch.Tensor) -> float:
    return int(flags.sum()) / len(flags) if len(flags) else float("nan")


# ---------------------------------------------------------------------------- threat model


def threat_model_evals(net: Classifier, test: Split, cfg: ExperimentConfig, env: LocalEnvironment,
                       precision: Precision) -> list[EvalResult]:
    """Clean, FGSM, PGD-k (CE) and CW-inf (PGD on the C&W margin) at the threat model's eps:
    the four rows `experiment.test_evaluation` produced, computed the same way."""
    common = dict(env=env, batch_size=cfg.eval_batch_size, precision=precision, seed=cfg.seed)
    eps, step, k, restarts = cfg.eval_eps, cfg.eval_step, cfg.eval_attack_steps, cfg.eval_restarts
    return [
        evaluate_attack(net, test, name="clean", attack=None, eps=0.0, steps=0, restarts=0, **common),
        evaluate_attack(net, test, name="fgsm", attack=fgsm_attack(eps, precision), eps=eps, steps=1,
                        restarts=1, **common),
        evaluate_attack(net, test, name="pgd", attack=pgd_attack(eps, step, k, precision, restarts=restarts),
                        eps=eps, steps=k, restarts=restarts, **common),
        evaluate_attack(net, test, name="cw_inf",
                        attack=pgd_attack(eps, step, k, precision, restarts=restarts, loss="cw"),
                        eps=eps, steps=k, restarts=restarts, loss="cw", **common),
    ]


# ---------------------------------------------------------------------------- masking checks


def _check(name: str, value: float, threshold: float, flagged: bool, detail: str, n: int) -> dict[str, Any]:
    return {"check": name, "value": float(value), "threshold": float(threshold), "flagged": bool(flagged),
            "detail": detail, "n": int(n)}


def check_eps_monotone(eps: Sequence[float], accuracy: Sequence[float], n: int) -> dict[str, Any]:
    """PGD accuracy must not rise with eps: value = the largest rise between consecutive eps."""
    pairs = sorted(zip(eps, accuracy))
    rises = [(b[1] - a[1], a[0], b[0]) for a, b in zip(pairs, pairs[1:])]
    rise, lo, hi = max(rises, default=(0.0, float("nan"), float("nan")))
    tol = noise_tolerance(n)
    return _check("eps_monotone", rise, tol, rise > tol,
                  f"largest accuracy rise {rise:+.4f} from eps {lo:.4g} to {hi:.4g}; curve "
                  + ", ".join(f"{e:.4g}:{a:.4f}" for e, a in pairs), n)


def check_steps_monotone(name: str, few: tuple[str, float], many: tuple[str, float], n: int) -> dict[str, Any]:
    """A stronger PGD (more steps / restarts) must not give higher accuracy than a weaker one."""
    rise = many[1] - few[1]
    tol = noise_tolerance(n)
    return _check(name, rise, tol, rise > tol, f"{many[0]} {many[1]:.4f} vs {few[0]} {few[1]:.4f}", n)


def check_eps0_equals_clean(eps0_accuracy: float, clean_accuracy: float, n: int) -> dict[str, Any]:
    """PGD with eps = 0 must leave every input unchanged: any difference is a bug or a random model."""
    diff = abs(eps0_accuracy - clean_accuracy)
    return _check("eps0_equals_clean", diff, 0.0, diff > 0,
                  f"PGD eps=0 {eps0_accuracy:.4f} vs clean {clean_accuracy:.4f}", n)


def check_pgd_aa_gap(pgd_accuracy: float, aa_accuracy: float, n: int, version: str) -> dict[str, Any]:
    """PGD-CE minus AutoAttack on the same points; flagged above PGD_AA_GAP_THRESHOLD (or the noise
    tolerance where n is so small that it exceeds that)."""
    gap = pgd_accuracy - aa_accuracy
    threshold = max(PGD_AA_GAP_THRESHOLD, noise_tolerance(n))
    return _check("pgd_aa_gap", gap, threshold, gap > threshold,
                  f"PGD-CE {pgd_accuracy:.4f} vs AutoAttack {version} {aa_accuracy:.4f}", n)


def check_black_box(square_accuracy: float, white_box_accuracy: float, n: int, queries: int) -> dict[str, Any]:
    """A black-box attack must not beat the white-box ones on the same points: value = white-box
    accuracy minus Square accuracy."""
    diff = white_box_accuracy - square_accuracy
    tol = noise_tolerance(n)
    return _check("black_box_vs_white_box", diff, tol, diff > tol,
                  f"Square ({queries} queries) {square_accuracy:.4f} vs white-box (PGD and AutoAttack, "
                  f"per point) {white_box_accuracy:.4f}", n)


def check_unbounded(accuracy: float, n: int, steps: int) -> dict[str, Any]:
    """PGD at eps = 1 can reach any image, so accuracy must fall to about 0."""
    return _check("unbounded_eps", accuracy, UNBOUNDED_THRESHOLD, accuracy > UNBOUNDED_THRESHOLD,
                  f"PGD-{steps} at eps=1.0 (step {2.5 / steps:.4g}) leaves accuracy {accuracy:.4f}", n)


def check_zero_gradients(fraction: float, n: int) -> dict[str, Any]:
    """Points whose fp32 input gradient of the CE loss is exactly zero (AutoAttack flags any)."""
    return _check("zero_gradients", fraction, 0.0, fraction > 0,
                  f"{round(fraction * n)} of {n} clean points have an all-zero CE input gradient", n)


def check_fgsm_vs_pgd(fgsm_accuracy: float, pgd_accuracy: float, n: int) -> dict[str, Any]:
    """Iterative PGD must be at least as strong as single-step FGSM."""
    return check_steps_monotone("fgsm_vs_pgd", ("FGSM", fgsm_accuracy), ("PGD", pgd_accuracy), n)


# ------------------------------------------------------------------------------- corruptions


def corruption_plan(cfg: ExperimentConfig, info: DatasetInfo) -> tuple[str | None, str]:
    """(source, note): `cifar10-c` / `cifar100-c` from cfg.corruption_root, `generated-c` from the
    offline generator, or None with the reason nothing can run."""
    if cfg.corruption_root and cfg.dataset in RELEASED_CORRUPTION_SOURCES:
        return RELEASED_CORRUPTION_SOURCES[cfg.dataset], f"released files in {cfg.corruption_root}"
    note = ""
    if cfg.corruption_root:
        note = f"corruption_root ignored: no released corrupted test set for dataset {cfg.dataset!r}; "
    if tuple(info.image_shape) != (3, 32, 32):
        return None, note + (f"generated corruptions need (3, 32, 32) images (CIFAR-10-C constants); "
                             f"{cfg.dataset!r} has {tuple(info.image_shape)}")
    return "generated-c", note + "offline generator (dpnp_ray.corruptions), not the released CIFAR-C files"


def check_inputs(cfg: ExperimentConfig) -> None:
    """Fail before training on suite inputs that cannot work (a corruption_root without the files)."""
    level = SUITE_LEVELS.get(cfg.eval_suite)
    if level.corruptions and cfg.corruption_root and cfg.dataset in RELEASED_CORRUPTION_SOURCES:
        if not corruptions.available_cifar_c(cfg.corruption_root):
            raise ValueError(
                f"corruption_root={cfg.corruption_root!r} holds no CIFAR-C <corruption>.npy files; put the "
                f"released {RELEASED_CORRUPTION_SOURCES[cfg.dataset]} files there, or set corruption_root='' "
                "to use the offline generator (reported as 'generated-c')")


def corrupted_sets(cfg: ExperimentConfig, data: DatasetSplits, source: str
                   ) -> tuple[Split, Iterator[tuple[str, int, Split]]]:
    """(the clean points, lazily every (corruption, severity, corrupted points)) for a source."""
    if source == "generated-c":
        clean = subsample(data.test, cfg.eval_corruption_n)
        images = to_float(clean.images)

        def generated() -> Iterator[tuple[str, int, Split]]:
            for name in corruptions.GENERATED_BENCHMARK:
                for severity in corruptions.SEVERITIES:
                    corrupted = corruptions.corrupt(images, name, severity, CORRUPTION_SEED)
                    yield name, severity, Split(corrupted, clean.labels)

        return clean, generated()
    # released files: the first n test images in test-set order (the files follow it)
    n = cfg.eval_corruption_n if 0 < cfg.eval_corruption_n < len(data.test) else len(data.test)
    clean = Split(data.test.images[:n], data.test.labels[:n])
    present = corruptions.available_cifar_c(cfg.corruption_root)
    names = [c for c in corruptions.CIFAR_C_CORRUPTIONS if c in present]  # the 15 of the benchmark mean

    def released() -> Iterator[tuple[str, int, Split]]:
        for name in names:
            for severity in corruptions.SEVERITIES:
                images, labels = corruptions.load_cifar_c(cfg.corruption_root, name, severity, n)
                yield name, severity, Split(images, labels)

    return clean, released()


def corruption_rows(net: Classifier, sets: Iterator[tuple[str, int, Split]], *, source: str,
                    env: LocalEnvironment, batch_size: int, precision: Precision,
                    clean_labels: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """Clean-forward accuracy on each corrupted set (sharded like every evaluation).

    With `clean_labels`, each row also records the fraction of the set's labels equal to them
    (`label_agreement`): 1.0 unless released files belong to another data set or order.
    """
    rows = []
    for name, severity, split in sets:
        correct, total = _count(net, split, env, batch_size, precision)
        row = {"source": source, "corruption": name, "severity": int(severity), "n": total,
               "accuracy": correct / max(total, 1)}
        if clean_labels is not None:
            row["label_agreement"] = float((split.labels.cpu() == clean_labels.cpu()).float().mean())
        rows.append(row)
    return rows


def _count(net: Classifier, split: Split, env: LocalEnvironment, batch_size: int,
           precision: Precision) -> tuple[int, int]:
    x, y = _local(split, env)
    flags, _ = _correct(net, x, y, None, batch_size=batch_size, precision=precision, seed=0, rank=env.rank)
    counts = env.all_reduce_sum(torch.stack([flags.sum(), torch.tensor(len(flags), device=flags.device)]))
    return int(counts[0]), int(counts[1])


# ---------------------------------------------------------------------------------- geometry


def prototypes_of(net: Classifier) -> tuple[torch.Tensor, str]:
    """The class prototypes and where they come from: the DPNP head's c_j, or for a linear softmax
    head its weight rows w_j (the closest analogue: logit_j = <z, w_j> + b_j)."""
    if net.has_prototypes:
        return net.head.prototypes().detach().float(), "prototype_head"
    if isinstance(net.head, nn.Linear):
        return net.head.weight.detach().float(), "linear_weight"
    raise TypeError(f"geometry: head {type(net.head).__name__} has neither prototypes nor linear weights")


def geometry_rows(features: dict[str, torch.Tensor], labels: torch.Tensor, net: Classifier,
                  num_classes: int, attrs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per feature set (split name -> features of the same labelled points)."""
    prototypes, source = prototypes_of(net)
    rows = []
    for split, z in features.items():
        metrics = geometry_metrics(z.float().cpu(), labels.cpu(), prototypes.cpu(), num_classes)
        rows.append({"split": split, "n": int(len(labels)), "prototype_source": source, **attrs.get(split, {}),
                     **{k: _scalar(v) for k, v in metrics.items()}})
    return rows


def _scalar(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item()
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


# ----------------------------------------------------------------------------------- driver


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[f"seconds_{part}"] = self.seconds.get(f"seconds_{part}", 0.0) + time.perf_counter() - started


def run_suite(net: Classifier, data: DatasetSplits, cfg: ExperimentConfig, env: LocalEnvironment,
              precision: Precision, *, level: SuiteLevel | None = None) -> SuiteResult:
    """Evaluate a trained model at `level` (default: cfg.eval_suite). The model runs in eval mode."""
    cfg = cfg.resolved()
    level = level or SUITE_LEVELS.get(cfg.eval_suite)
    timer = _Timer()
    result = SuiteResult(summary={"eval_suite": level.name})
    test = subsample(data.test, cfg.eval_n)
    with eval_mode(net):
        with timer("threat_model"):
            basic = threat_model_evals(net, test, cfg, env, precision)
        result.evals = [_as_row(e, level.name) for e in basic]
        acc = {e.attack: e.accuracy for e in basic}
        if level.diagnostics:
            result.masking.append(check_fgsm_vs_pgd(acc["fgsm"], acc["pgd"], basic[0].n))
        if level.strong_pgd is not None:
            with timer("strong_pgd"):
                _strong_pgd(net, test, cfg, level, env, precision, acc["pgd"], result)
        if level.autoattack is not None or level.diagnostics:
            _attack_subset(net, test, data.info, cfg, level, env, precision, timer, result)
        if level.corruptions:
            with timer("corruptions"):
                _corruptions(net, data, cfg, env, precision, result)
    if level.diagnostics:
        flagged = [row["check"] for row in result.masking if row["flagged"]]
        result.summary.update(masking_flags=len(flagged), any_masking_flag=bool(flagged),
                              masking_flagged_checks=",".join(flagged))
    result.summary.update(timer.seconds)
    return result


def _strong_pgd(net, test, cfg, level, env, precision, pgd_k_accuracy, result: SuiteResult) -> None:
    steps, restarts = level.strong_pgd
    if (steps, restarts) != (cfg.eval_attack_steps, cfg.eval_restarts):
        row = evaluate_attack(net, test, name="pgd", attack=pgd_attack(cfg.eval_eps, cfg.eval_step, steps, precision,
                                                                       restarts=restarts),
                              eps=cfg.eval_eps, steps=steps, restarts=restarts, env=env, batch_size=cfg.eval_batch_size,
                              precision=precision, seed=cfg.seed)
        result.evals.append(_as_row(row, level.name))
        result.summary[f"pgd{steps}x{restarts}_acc"] = row.accuracy
        result.masking.append(check_steps_monotone(
            f"steps_monotone_{steps}x{restarts}", (f"PGD-{cfg.eval_attack_steps}", pgd_k_accuracy),
            (f"PGD-{steps}x{restarts}", row.accuracy), row.n))


def _attack_subset(net, test: Split, info: DatasetInfo, cfg: ExperimentConfig, level: SuiteLevel,
                   env: LocalEnvironment, precision: Precision, timer: _Timer, result: SuiteResult) -> None:
    """Everything that runs on the cfg.eval_aa_n attack subset, with per-point results gathered."""
    sub = subsample(test, cfg.eval_aa_n)
    n = len(sub)
    x, y = _local(sub, env)
    suite, eps, step, k, restarts, bs = (level.name, cfg.eval_eps, cfg.eval_step, cfg.eval_attack_steps,
                                         cfg.eval_restarts, cfg.eval_batch_size)
    common = dict(batch_size=bs, precision=precision, seed=cfg.seed, rank=env.rank)
    summary = result.summary
    with timer("pgd_subset"):
        clean_local, z_clean = _correct(net, x, y, None, features=level.geometry, **common)
        pgd_local, z_adv = _correct(net, x, y, pgd_attack(eps, step, k, precision, restarts=restarts),
                                    features=level.geometry, **common)
        clean_ok, pgd_ok = _gather_flags(clean_local, n, env), _gather_flags(pgd_local, n, env)
    summary.update(attack_subset_n=n, pgd_acc_subset=_mean(pgd_ok), clean_acc_subset=_mean(clean_ok))
    white_box_ok = pgd_ok

    if level.autoattack is not None:
        with timer("autoattack"):
            version = level.autoattack
            aa_local = torch.zeros(0, dtype=torch.bool, device=env.device)
            warnings: list[str] = []
            if len(x):
                x_adv, aa_local, warnings = autoattack(net, x, y, eps=eps, version=version, seed=cfg.seed,
                                                       batch_size=bs, num_classes=info.num_classes)
                excess = float((x_adv - x).abs().amax()) - eps
                if excess > 1e-5 or float(x_adv.min()) < 0 or float(x_adv.max()) > 1:
                    raise RuntimeError(f"AutoAttack returned points outside the threat model (L-inf excess "
                                       f"{excess:.2e}, range [{float(x_adv.min())}, {float(x_adv.max())}])")
            aa_ok = _gather_flags(aa_local, n, env)
        aa_acc = _mean(aa_ok)
        steps = AUTOATTACK_ITERATIONS
        result.evals.append(_eval_row(suite, "autoattack", eps=eps, steps=steps, restarts=1, n=n, accuracy=aa_acc,
                                      loss="+".join(AUTOATTACK_VERSIONS[version]), version=version))
        white_box_ok = pgd_ok & aa_ok
        import pyautoattack

        summary.update(aa_acc=aa_acc, aa_version=version, aa_n=n, pgd_aa_gap=_mean(pgd_ok) - aa_acc,
                       aa_code=f"pyautoattack {pyautoattack.__version__}",
                       aa_warnings=" | ".join(dict.fromkeys(warnings)))
        result.masking.append(check_pgd_aa_gap(_mean(pgd_ok), aa_acc, n, version))

    if level.diagnostics:
        _diagnostics(net, sub, x, y, cfg, level, env, precision, timer, result, clean_ok, pgd_ok, white_box_ok)

    if level.geometry:
        with timer("geometry"):
            dim = prototypes_of(net)[0].shape[1]
            empty = torch.zeros(0, dim, device=env.device)
            features = {"test": _gather(z_clean if z_clean is not None else empty, n, env),
                        "test_pgd": _gather(z_adv if z_adv is not None else empty, n, env)}
            attrs = {"test": {"attack": "none", "eps": 0.0, "steps": 0, "accuracy": _mean(clean_ok)},
                     "test_pgd": {"attack": "pgd", "eps": float(eps), "steps": k, "accuracy": _mean(pgd_ok)}}
            result.geometry = geometry_rows(features, sub.labels.to(env.device), net, info.num_classes, attrs)


def _diagnostics(net, sub: Split, x, y, cfg: ExperimentConfig, level: SuiteLevel, env: LocalEnvironment,
                 precision: Precision, timer: _Timer, result: SuiteResult, clean_ok, pgd_ok, white_box_ok) -> None:
    """The eps curve, PGD-(factor k), PGD at eps = 1, zero gradients and Square, and their checks."""
    n, suite, eps, step, k, restarts = len(sub), level.name, cfg.eval_eps, cfg.eval_step, cfg.eval_attack_steps, \
        cfg.eval_restarts
    common = dict(batch_size=cfg.eval_batch_size, precision=precision, seed=cfg.seed, rank=env.rank)

    def accuracy(attack: Attack | None) -> float:
        local, _ = _correct(net, x, y, attack, **common)
        return _mean(_gather_flags(local, n, env))

    with timer("eps_curve"):
        curve = {}
        for m in sorted(set(cfg.eval_eps_curve) | {1.0}):  # always through the threat model's eps
            # step scaled with eps (the eps / step ratio of the threat-model PGD); m = 1 is that PGD
            curve[m] = _mean(pgd_ok) if m == 1.0 else accuracy(
                pgd_attack(m * eps, m * step, k, precision, restarts=restarts))
            result.evals.append(_eval_row(suite, "pgd_eps_curve", eps=m * eps, steps=k, restarts=restarts, n=n,
                                          accuracy=curve[m], step_size=m * step))
    clean_acc = _mean(clean_ok)
    result.masking.append(check_eps_monotone([m * eps for m in curve], list(curve.values()), n))
    if 0.0 in curve:
        result.masking.append(check_eps0_equals_clean(curve[0.0], clean_acc, n))

    with timer("steps_check"):
        many = level.steps_factor * k
        acc_many = accuracy(pgd_attack(eps, step, many, precision, restarts=restarts))
    result.evals.append(_eval_row(suite, "pgd_steps_check", eps=eps, steps=many, restarts=restarts, n=n,
                                  accuracy=acc_many))
    result.masking.append(check_steps_monotone("steps_monotone", (f"PGD-{k}", _mean(pgd_ok)),
                                               (f"PGD-{many}", acc_many), n))

    with timer("unbounded"):
        u = level.unbounded_steps
        acc_unbounded = accuracy(pgd_attack(1.0, 2.5 / u, u, precision))
    result.evals.append(_eval_row(suite, "pgd_unbounded", eps=1.0, steps=u, restarts=1, n=n,
                                  accuracy=acc_unbounded, step_size=2.5 / u))
    result.masking.append(check_unbounded(acc_unbounded, n, u))

    zero = _gather_flags(_zero_gradient(net, x, y, cfg.eval_batch_size), n, env)
    result.masking.append(check_zero_gradients(_mean(zero) if n else 0.0, n))

    if level.square_queries > 0:
        with timer("square"):
            m = level.square_n if 0 < level.square_n < n else n
            index = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))[:m].sort().values
            chosen = Split(sub.images[index], sub.labels[index])
            xs, ys = _local(chosen, env)
            local = torch.zeros(0, dtype=torch.bool, device=env.device)
            if len(xs):
                x_sq = square(net, xs, ys, eps=eps, queries=level.square_queries, seed=cfg.seed,
                              batch_size=cfg.eval_batch_size, rescale_schedule=level.square_rescale_schedule)
                local, _ = _correct(net, x_sq, ys, None, **common)
            square_ok = _gather_flags(local, m, env)
        square_acc = _mean(square_ok)
        white_box = _mean(white_box_ok[index.to(white_box_ok.device)])
        result.evals.append(_eval_row(suite, "square", eps=eps, steps=level.square_queries, restarts=1, n=m,
                                      accuracy=square_acc, loss="margin"))
        result.summary.update(square_acc=square_acc, square_n=m, square_queries=level.square_queries,
                              white_box_acc_square_subset=white_box)
        result.masking.append(check_black_box(square_acc, white_box, m, level.square_queries))


def _corruptions(net, data: DatasetSplits, cfg: ExperimentConfig, env: LocalEnvironment, precision: Precision,
                 result: SuiteResult) -> None:
    source, note = corruption_plan(cfg, data.info)
    result.summary.update(corruption_source=source or "none", corruption_note=note)
    if source is None:
        return
    clean, sets = corrupted_sets(cfg, data, source)
    rows = corruption_rows(net, sets, source=source, env=env, batch_size=cfg.eval_batch_size, precision=precision,
                           clean_labels=clean.labels)
    correct, total = _count(net, clean, env, cfg.eval_batch_size, precision)
    result.corruptions = rows
    result.summary.update(
        corruption_acc=sum(r["accuracy"] for r in rows) / len(rows) if rows else float("nan"),
        corruption_clean_acc=correct / max(total, 1), corruption_n=total,
        corruption_count=len({r["corruption"] for r in rows}),
        corruption_label_agreement=min((r["label_agreement"] for r in rows), default=float("nan")))
