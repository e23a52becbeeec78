"""The robustness evaluation suite every finished trial goes through.

`run_suite(net, data, cfg, env, precision)` returns a `SuiteResult`: rows for evals.parquet,
corruptions.parquet, geometry.parquet and masking.parquet (without the study/trial/variant/seed
key columns, which the caller adds) and flat scalars for trials.parquet. What runs is a
`SuiteLevel`, looked up by `cfg.eval_suite` in `SUITE_LEVELS`:

basic   clean, FGSM, PGD-k (cfg.eval_attack_steps / eval_step / eval_restarts) and CW-inf (PGD on
        the C&W margin) on cfg.eval_n test points (`_threat_model`).
quick   basic, plus on the "attack subset" (cfg.eval_aa_n points drawn from those eval_n):
        AutoAttack `apgd` (APGD-CE then APGD-T, 9 targets, 100 iterations, 1 restart: standard's
        settings for those two attacks) from the original code (`external.autoattack`), in fp32;
        the attacks that know the model (`_adaptive`): PGD-k on the prototype margin ("feature_margin",
        prototype heads only) and targeted PGD-k over the cfg.eval_rival_targets nearest rivals
        ("targeted_rivals"); a PGD-k accuracy-vs-eps curve ("pgd_eps_curve") at eps = m * cfg.eval_eps for m in
        cfg.eval_eps_curve and m = 1, step scaled with eps; PGD-2k ("pgd_steps_check"); PGD at
        eps = 1 ("pgd_unbounded"); a cheap black-box Square attack ("square"); the gradient-masking
        checks (`checks`); geometry (`geometry.geometry_rows`) of the clean ("test") and PGD-k
        ("test_pgd") features of the attack subset, against the prototypes (a linear head's weight
        rows for the baselines, prototype_source = "linear_weight"); common corruptions on
        cfg.eval_corruption_n points (`corruptions.corruption_plan`): the released files (source
        "cifar10-c" / "cifar100-c") when cfg.corruption_root is set and the dataset is cifar10 /
        cifar100, else the offline generator's 14 benchmark corruptions x 5 severities (source
        GENERATED_DATASET_NAME, fixed seed CORRUPTION_SEED), which needs 3x32x32 images (digits gets
        no corruption rows; summary says why); the per-point worst case over clean and every attack
        at eval_eps on the subset's points ("worst_case", `_worst_case`).
full    quick with AutoAttack `standard` (APGD-CE, APGD-T, FAB-T, Square 5000 queries: AutoAttack's
        cascade, the per-point worst case) instead of `apgd`, PGD-50 with 10 restarts on the eval_n
        points, and Square with 5000 queries on the whole attack subset; on the attack subset an
        APGD-CE + APGD-T accuracy-vs-eps curve ("apgd_eps_curve", AutoAttack `apgd` at eps = m *
        cfg.eval_eps for m in cfg.eval_aa_eps_curve) and the L2 threat model: AutoAttack `apgd` in the L2
        ball of radius cfg.eval_l2_eps ("autoattack" row with norm "L2"). Neither enters the worst case
        (other threat models than eval_eps L-inf).

Rows of evals.parquet carry suite = the level that ran; "autoattack" rows add `version` (apgd /
standard) and name the cascade in `loss`; every row has `norm` (Linf, or L2); "feature_margin" and
"targeted_rivals" rows add `scores` (prototype_distance / logits), targeted_rivals also `targets` (k); the
"worst_case" row lists its attacks in `loss`; "square" rows put the query budget in `steps`; eps-curve
and unbounded rows add `step_size`. The summary holds clean/fgsm/pgd/cw (via experiment.summary_metrics),
aa_acc, aa_version, aa_n, pgd_aa_gap (PGD-k CE minus AutoAttack on the attack subset), aa_warnings,
worst_case_acc, worst_case_n, worst_case_attacks (the attacks it is the worst case of), square_acc, corruption_acc (mean over corruptions x severities), corruption_clean_acc (same points),
corruption_source, masking_flags (count), any_masking_flag, masking_flagged_checks and seconds_<part>
(wall seconds on this rank).

Every attack and accuracy count here runs at the `precision` passed in (run_experiment passes
cfg.eval_precision, fp32 by default); AutoAttack and Square always run in fp32.

Sharding: every rank evaluates its slice of each point set (`accuracy.shard`) and per-point results
are gathered with `env.all_reduce_sum`, so every rank returns the same rows. AutoAttack and Square
run per rank on their slice: their random starts depend on the batch they see, so results can
differ in the last digits between world sizes (they are still the same attacks on the same points).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import eval_mode
from ..config import ExperimentConfig
from ..data import DatasetInfo, DatasetSplits, Split
from ..devices import Precision
from ..distributed import LocalEnvironment
from ..models import Classifier
from ..registry import Registry
from .accuracy import (Attack, EvalResult, PointFlags, correct_counts, correct_per_point, eval_row, fgsm_attack,
                       fraction, gather, gather_flags, local_points, pgd_attack, prototype_margin_attack, subsample,
                       subsample_index, targeted_rivals_attack, worst_case)
from .checks import (check_black_box, check_eps0_equals_clean, check_eps_monotone, check_fgsm_vs_pgd,
                     check_pgd_aa_gap, check_steps_monotone, check_unbounded, check_zero_gradients)
from .corruptions import (GENERATED_DATASET_NAME, RELEASED_CORRUPTION_SOURCES, available_cifar_c,
                          corrupted_sets, corruption_plan, corruption_rows)
from .external import AUTOATTACK_ITERATIONS, AUTOATTACK_VERSIONS, autoattack, autoattack_code_version, square
from .geometry import geometry_rows, prototypes_of

# ------------------------------------------------------------------------------------ levels


@dataclass(frozen=True)
class SuiteLevel:
    """What one level of the suite runs. Tests and scripts may pass a modified copy to `run_suite`
    (e.g. `dataclasses.replace(SUITE_LEVELS.get("quick"), square_queries=200)`)."""

    name: str
    autoattack: str | None = None  # a key of AUTOATTACK_VERSIONS, or None
    adaptive: bool = False  # the prototype-margin PGD and the targeted PGD over the nearest rivals
    diagnostics: bool = False  # eps curve, PGD-2k, unbounded PGD, Square and the masking checks
    geometry: bool = False
    corruptions: bool = False
    strong_pgd: tuple[int, int] | None = None  # (steps, restarts) of an extra PGD on the eval_n points
    square_queries: int = 0  # stand-alone Square (black-box) for the masking check; 0: skip it
    square_n: int = 0  # points of the attack subset it runs on; 0: all of them
    square_rescale_schedule: bool = True  # Square's own option: fit its p schedule to few queries
    unbounded_steps: int = 50  # PGD at eps = 1 with step 2.5 / steps (Madry et al.'s rule)
    aa_eps_curve: bool = False  # APGD-CE + APGD-T at eps = m * eval_eps, m in cfg.eval_aa_eps_curve
    l2: bool = False  # APGD-CE + APGD-T in the L2 ball of radius cfg.eval_l2_eps
    steps_factor: int = 2  # the steps check compares PGD-k with PGD-(factor * k)

    @property
    def attack_subset(self) -> bool:
        """Whether anything runs on the attack subset (cfg.eval_aa_n points)."""
        return self.autoattack is not None or self.diagnostics or self.adaptive or self.aa_eps_curve or self.l2


SUITE_LEVELS: Registry[SuiteLevel] = Registry("eval suite level")
SUITE_LEVELS.register("basic")(SuiteLevel("basic"))
SUITE_LEVELS.register("quick")(SuiteLevel(
    "quick", autoattack="apgd", adaptive=True, diagnostics=True, geometry=True, corruptions=True,
    square_queries=1000, square_n=500))
SUITE_LEVELS.register("full")(SuiteLevel(
    "full", autoattack="standard", adaptive=True, diagnostics=True, geometry=True, corruptions=True, strong_pgd=(50, 10),
    square_queries=5000, square_n=0, square_rescale_schedule=False, unbounded_steps=100, aa_eps_curve=True,
    l2=True))


def check_inputs(cfg: ExperimentConfig) -> None:
    """Fail before training on suite inputs that cannot work (a corruption_root without the files)."""
    level = SUITE_LEVELS.get(cfg.eval_suite)
    if level.corruptions and cfg.corruption_root and cfg.dataset in RELEASED_CORRUPTION_SOURCES:
        if not available_cifar_c(cfg.corruption_root):
            raise ValueError(
                f"corruption_root={cfg.corruption_root!r} holds no CIFAR-C <corruption>.npy files; put the "
                f"released {RELEASED_CORRUPTION_SOURCES[cfg.dataset]} files there, or set corruption_root='' "
                f"to use the offline generator (reported as {GENERATED_DATASET_NAME!r})")


# ------------------------------------------------------------------------ result and context


@dataclass
class SuiteResult:
    """Rows for the Parquet tables (without the key columns) and flat scalars for trials.parquet.
    `subset_flags` (in memory only, not written): each attack at eval_eps -> its per-point results on the
    attack subset, the inputs of the per-point worst case. `points`: for each evals row (by its position),
    the positions in the test split of the points it ran on and whether the model was right on each
    (points.parquet, `accuracy.points_table`); rows enter through `add_eval` so the two cannot disagree."""

    evals: list[dict[str, Any]] = field(default_factory=list)
    corruptions: list[dict[str, Any]] = field(default_factory=list)
    geometry: list[dict[str, Any]] = field(default_factory=list)
    masking: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    subset_flags: dict[str, PointFlags] = field(default_factory=dict)
    points: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def add_eval(self, row: dict[str, Any], split_index: torch.Tensor, ok: torch.Tensor) -> None:
        """An evals row and its per-point results (positions in the test split, right or not)."""
        if len(split_index) != len(ok) or row["n"] != len(ok):
            raise ValueError(f"{row['attack']}: {len(ok)} per-point results for n={row['n']} on "
                             f"{len(split_index)} positions")
        self.points.append((len(self.evals), split_index.detach().cpu(), ok.detach().cpu()))
        self.evals.append(row)


SUBSET_PARTS = ("pgd_subset", "autoattack", "other_threat_models", "adaptive", "eps_curve", "steps_check", "unbounded",
                "square", "geometry")
"""the suite's parts that run on the attack subset (eval_aa_n points); the others run on eval_n points
(corruptions: on eval_corruption_n)"""


def part_estimates(earlier: dict[str, Any], earlier_cfg: dict[str, Any], cfg: ExperimentConfig, test_size: int
                   ) -> dict[str, float]:
    """Seconds each part of the suite should take under `cfg`, from an earlier evaluation of the same model
    (`earlier`: its summary with seconds_<part>, under `earlier_cfg`): each part's seconds scaled by how many
    more points it runs on now (all attacks cost about the same per point at a fixed level). Parts the earlier
    evaluation did not run have no estimate."""
    def points(config: dict[str, Any], field: str) -> int:
        n = int(config.get(field) or 0)
        return min(n, test_size) if n > 0 else test_size

    now = cfg.to_dict()
    estimates = {}
    for key, seconds in earlier.items():
        if not key.startswith("seconds_") or not isinstance(seconds, (int, float)) or key == "seconds_corruptions":
            continue
        part = key[len("seconds_"):]
        field = "eval_aa_n" if part in SUBSET_PARTS else "eval_n"
        estimates[part] = float(seconds) * points(now, field) / max(points(earlier_cfg, field), 1)
    return estimates


class _Timer:
    """Wall seconds per part of the suite, as summary["seconds_<part>"]; with `log`, a line as each part starts
    saying the time so far and, where `estimates` (part -> seconds, part_estimates) know the parts, about how
    long those still to run will take (scaled by how the parts done so far compared with their estimates)."""

    def __init__(self, log: Callable[[str], None] | None = None, estimates: dict[str, float] | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self.log = log
        self.estimates = dict(estimates or {})
        self.started = time.perf_counter()

    def time_left(self) -> float | None:
        """Seconds the estimated parts not yet timed should take, calibrated by the timed ones; None if none."""
        done = [p for p in self.estimates if f"seconds_{p}" in self.seconds and self.estimates[p] > 0]
        pace = (sum(self.seconds[f"seconds_{p}"] for p in done) / sum(self.estimates[p] for p in done)) if done else 1.0
        left = [self.estimates[p] for p in self.estimates if f"seconds_{p}" not in self.seconds]
        return pace * sum(left) if left else None

    @contextlib.contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        started = time.perf_counter()
        if self.log is not None:
            left = self.time_left()
            estimate = f"; about {_duration(left)} left for the parts an earlier evaluation timed" if left else ""
            self.log(f"evaluate: {part} ({_duration(started - self.started)} so far{estimate})")
        try:
            yield
        finally:
            self.seconds[f"seconds_{part}"] = self.seconds.get(f"seconds_{part}", 0.0) + time.perf_counter() - started


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else (
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")


@dataclass(frozen=True)
class SuiteContext:
    """What every part of the suite needs: the model (in eval mode), the resolved config, where it runs,
    the level that runs and the dataset's description; `timer` collects the parts' wall seconds."""

    net: Classifier
    cfg: ExperimentConfig
    env: LocalEnvironment
    precision: Precision
    level: SuiteLevel
    info: DatasetInfo
    timer: _Timer = field(default_factory=_Timer)

    def correct(self, x: torch.Tensor, y: torch.Tensor, attack: Attack | None, *, features: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-point correctness (and features) on this rank's points, with the suite's batch size and seed."""
        return correct_per_point(self.net, x, y, attack, env=self.env, batch_size=self.cfg.eval_batch_size,
                                 precision=self.precision, seed=self.cfg.seed, features=features)

    def correct_all(self, x: torch.Tensor, y: torch.Tensor, attack: Attack | None, n: int) -> torch.Tensor:
        """`correct` without features, gathered: per point of all n points of every rank."""
        local, _ = self.correct(x, y, attack)
        return gather_flags(local, n, self.env)

    def pgd(self, eps: float, step_size: float, steps: int, restarts: int = 1) -> Attack:
        return pgd_attack(eps, step_size, steps, self.precision, restarts=restarts)

    def row(self, attack: str, **columns: Any) -> dict[str, Any]:
        """An evals row labelled with the level that runs."""
        return eval_row(attack, suite=self.level.name, **columns)


@dataclass(frozen=True)
class _AttackSubset:
    """The attack subset with its clean and PGD-k results: per point over all ranks (`*_ok`) and
    this rank's shard on the device (x, y, and the features geometry needs)."""

    points: Split
    split_index: torch.Tensor  # the positions of `points` in the test split
    x: torch.Tensor
    y: torch.Tensor
    clean_ok: torch.Tensor
    pgd_ok: torch.Tensor
    z_clean: torch.Tensor | None
    z_pgd: torch.Tensor | None

    @property
    def n(self) -> int:
        return len(self.points)


# ----------------------------------------------------------------------------------- driver


def run_suite(net: Classifier, data: DatasetSplits, cfg: ExperimentConfig, env: LocalEnvironment,
              precision: Precision, *, level: SuiteLevel | None = None, log: Callable[[str], None] | None = None,
              estimates: dict[str, float] | None = None) -> SuiteResult:
    """Evaluate a trained model at `level` (default: cfg.eval_suite). The model runs in eval mode. With `log`, a
    progress line as each part starts (with the time left, from `estimates`: see part_estimates)."""
    cfg = cfg.resolved()
    level = level or SUITE_LEVELS.get(cfg.eval_suite)
    ctx = SuiteContext(net, cfg, env, precision, level, data.info, _Timer(log, estimates))
    result = SuiteResult(summary={"eval_suite": level.name})
    test = subsample(data.test, cfg.eval_n)
    test_index = subsample_index(len(data.test), cfg.eval_n)  # positions of `test` in the test split
    with eval_mode(net):
        with ctx.timer("threat_model"):
            basic, test_flags = _threat_model(net, test, cfg, env, precision)
        for e in basic:
            result.add_eval(e.as_row(level.name), test_index, test_flags[e.attack])
        acc = {e.attack: e.accuracy for e in basic}
        if level.diagnostics:
            result.masking.append(check_fgsm_vs_pgd(acc["fgsm"], acc["pgd"], basic[0].n))
        if level.strong_pgd is not None:
            with ctx.timer("strong_pgd"):
                test_flags.update(_strong_pgd(ctx, test, test_index, acc["pgd"], result))
        if level.attack_subset:
            _attack_subset(ctx, test, test_index, test_flags, result)
        if level.corruptions:
            with ctx.timer("corruptions"):
                _corruptions(ctx, data, result)
    if level.diagnostics:
        flagged = [row["check"] for row in result.masking if row["flagged"]]
        result.summary.update(masking_flags=len(flagged), any_masking_flag=bool(flagged),
                              masking_flagged_checks=",".join(flagged))
    result.summary.update(ctx.timer.seconds)
    return result


def _threat_model(net: Classifier, test: Split, cfg: ExperimentConfig, env: LocalEnvironment, precision: Precision
                  ) -> tuple[list[EvalResult], dict[str, torch.Tensor]]:
    """Clean, FGSM, PGD-k (CE) and CW-inf (PGD on the C&W margin) at the threat model's eps (the basic level,
    and the first four rows of every level), and each attack's per-point results on the test points (all ranks)."""
    eps, step, k, restarts = cfg.eval_eps, cfg.eval_step, cfg.eval_attack_steps, cfg.eval_restarts
    attacks = [  # name, attack, eps, steps, restarts, loss
        ("clean", None, 0.0, 0, 0, "ce"),
        ("fgsm", fgsm_attack(eps, precision), eps, 1, 1, "ce"),
        ("pgd", pgd_attack(eps, step, k, precision, restarts=restarts), eps, k, restarts, "ce"),
        ("cw_inf", pgd_attack(eps, step, k, precision, restarts=restarts, loss="cw"), eps, k, restarts, "cw"),
    ]
    x, y = local_points(test, env)
    rows, flags = [], {}
    with eval_mode(net):
        for name, attack, attack_eps, steps, attack_restarts, loss in attacks:
            local, _ = correct_per_point(net, x, y, attack, env=env, batch_size=cfg.eval_batch_size,
                                         precision=precision, seed=cfg.seed)
            flags[name] = gather_flags(local, len(test), env)
            accuracy = int(flags[name].sum()) / max(len(test), 1)
            rows.append(EvalResult(name, attack_eps, steps, attack_restarts, len(test), accuracy, "test", loss))
    return rows, flags


def _strong_pgd(ctx: SuiteContext, test: Split, test_index: torch.Tensor, pgd_k_accuracy: float,
                result: SuiteResult) -> dict[str, torch.Tensor]:
    """The level's extra PGD (steps x restarts) on the eval_n points, checked against PGD-k; returns its
    per-point results under the name pgd_<steps>x<restarts> (nothing when it is PGD-k itself)."""
    cfg = ctx.cfg
    steps, restarts = ctx.level.strong_pgd
    if (steps, restarts) == (cfg.eval_attack_steps, cfg.eval_restarts):
        return {}
    x, y = local_points(test, ctx.env)
    ok = ctx.correct_all(x, y, ctx.pgd(cfg.eval_eps, cfg.eval_step, steps, restarts), len(test))
    row = EvalResult("pgd", cfg.eval_eps, steps, restarts, len(test), int(ok.sum()) / max(len(test), 1))
    result.add_eval(row.as_row(ctx.level.name), test_index, ok)
    result.summary[f"pgd{steps}x{restarts}_acc"] = row.accuracy
    result.masking.append(check_steps_monotone(
        f"steps_monotone_{steps}x{restarts}", (f"PGD-{cfg.eval_attack_steps}", pgd_k_accuracy),
        (f"PGD-{steps}x{restarts}", row.accuracy), row.n))
    return {f"pgd_{steps}x{restarts}": ok}


# ---------------------------------------------------------------------------- attack subset


def _attack_subset(ctx: SuiteContext, test: Split, test_index: torch.Tensor, test_flags: dict[str, torch.Tensor],
                   result: SuiteResult) -> None:
    """Everything that runs on the cfg.eval_aa_n attack subset, with per-point results gathered, and the
    per-point worst case over every attack at eval_eps that ran on its points (`_worst_case`).

    `test_flags`: per-point results of the attacks that ran on all test points (the subset is drawn
    from them); `result.subset_flags` collects every attack's results on the subset's points."""
    index = subsample_index(len(test), ctx.cfg.eval_aa_n)
    subset = _clean_and_pgd(ctx, Split(test.images[index], test.labels[index]), test_index[index])
    n, everywhere = subset.n, torch.arange(subset.n, device=ctx.env.device)
    result.summary.update(attack_subset_n=n, pgd_acc_subset=fraction(subset.pgd_ok),
                          clean_acc_subset=fraction(subset.clean_ok))
    flags = result.subset_flags
    flags.update({name: PointFlags(everywhere, ok[index.to(ok.device)]) for name, ok in test_flags.items()})
    flags["pgd_subset"] = PointFlags(everywhere, subset.pgd_ok)  # PGD-k again: other random starts on these points
    if ctx.level.autoattack is not None:
        flags["autoattack"] = PointFlags(everywhere, _autoattack(ctx, subset, result))
    if ctx.level.aa_eps_curve or ctx.level.l2:
        with ctx.timer("other_threat_models"):
            _other_threat_models(ctx, subset, result)
    if ctx.level.adaptive:
        with ctx.timer("adaptive"):
            flags.update({name: PointFlags(everywhere, ok) for name, ok in _adaptive(ctx, subset, result).items()})
    if ctx.level.diagnostics:
        _diagnostics(ctx, subset, flags, result)
    _worst_case(ctx, subset, flags, result)
    if ctx.level.geometry:
        with ctx.timer("geometry"):
            result.geometry = _geometry(ctx, subset)


def _clean_and_pgd(ctx: SuiteContext, points: Split, split_index: torch.Tensor) -> _AttackSubset:
    """Clean and PGD-k correctness of every point of the subset (and this rank's features for geometry)."""
    cfg, env, n = ctx.cfg, ctx.env, len(points)
    x, y = local_points(points, env)
    with ctx.timer("pgd_subset"):
        clean_local, z_clean = ctx.correct(x, y, None, features=ctx.level.geometry)
        pgd_local, z_pgd = ctx.correct(x, y, ctx.pgd(cfg.eval_eps, cfg.eval_step, cfg.eval_attack_steps,
                                                     cfg.eval_restarts), features=ctx.level.geometry)
        clean_ok, pgd_ok = gather_flags(clean_local, n, env), gather_flags(pgd_local, n, env)
    return _AttackSubset(points, split_index, x, y, clean_ok, pgd_ok, z_clean, z_pgd)


def _autoattack(ctx: SuiteContext, subset: _AttackSubset, result: SuiteResult) -> torch.Tensor:
    """AutoAttack at the level's version on the subset; returns per point: did the point survive it?"""
    eps, version = ctx.cfg.eval_eps, ctx.level.autoattack
    with ctx.timer("autoattack"):
        aa_ok, warnings = _run_autoattack(ctx, subset, eps=eps, version=version, norm="Linf")
    n, aa_acc, pgd_acc = subset.n, fraction(aa_ok), fraction(subset.pgd_ok)
    result.add_eval(ctx.row("autoattack", eps=eps, steps=AUTOATTACK_ITERATIONS, restarts=1, n=n, accuracy=aa_acc,
                            loss="+".join(AUTOATTACK_VERSIONS[version]), version=version), subset.split_index, aa_ok)
    result.summary.update(aa_acc=aa_acc, aa_version=version, aa_n=n, pgd_aa_gap=pgd_acc - aa_acc,
                          aa_code=autoattack_code_version(), aa_warnings=" | ".join(dict.fromkeys(warnings)))
    return aa_ok


def _run_autoattack(ctx: SuiteContext, subset: _AttackSubset, *, eps: float, version: str, norm: str
                    ) -> tuple[torch.Tensor, list[str]]:
    """AutoAttack `version` in the `norm` ball of radius eps on this rank's share of the subset, its output
    checked to lie in the threat model; returns (per point of the whole subset: survived?, its warnings)."""
    cfg, env, x = ctx.cfg, ctx.env, subset.x
    local = torch.zeros(0, dtype=torch.bool, device=env.device)
    warnings: list[str] = []
    if len(x):
        x_adv, local, warnings = autoattack(ctx.net, x, subset.y, eps=eps, version=version, seed=cfg.seed,
                                            batch_size=cfg.eval_batch_size, num_classes=ctx.info.num_classes,
                                            norm=norm)
        delta = (x_adv - x).flatten(1)
        size = delta.abs().amax() if norm == "Linf" else delta.norm(dim=1).amax()
        excess = float(size) - eps
        if excess > 1e-5 or float(x_adv.min()) < 0 or float(x_adv.max()) > 1:
            raise RuntimeError(f"AutoAttack returned points outside the threat model ({norm} excess "
                               f"{excess:.2e}, range [{float(x_adv.min())}, {float(x_adv.max())}])")
    return gather_flags(local, subset.n, env), warnings


def _other_threat_models(ctx: SuiteContext, subset: _AttackSubset, result: SuiteResult) -> None:
    """APGD-CE + APGD-T (AutoAttack `apgd`) on the subset at other budgets than the threat model's: the L-inf
    curve at eps = m * eval_eps (m in cfg.eval_aa_eps_curve; m = 0 is clean accuracy, no attack) and the L2
    ball of radius cfg.eval_l2_eps. Summary: aa_l2_acc, aa_l2_eps."""
    cfg, n, version = ctx.cfg, subset.n, "apgd"
    loss = "+".join(AUTOATTACK_VERSIONS[version])
    if ctx.level.aa_eps_curve:
        for m in sorted(set(cfg.eval_aa_eps_curve)):
            eps = m * cfg.eval_eps
            ok = subset.clean_ok if eps == 0 else _run_autoattack(ctx, subset, eps=eps, version=version,
                                                                  norm="Linf")[0]
            result.add_eval(ctx.row("apgd_eps_curve", eps=eps, steps=AUTOATTACK_ITERATIONS, restarts=1, n=n,
                                    accuracy=fraction(ok), loss=loss, version=version), subset.split_index, ok)
    if ctx.level.l2:
        ok = subset.clean_ok if cfg.eval_l2_eps == 0 else _run_autoattack(ctx, subset, eps=cfg.eval_l2_eps,
                                                                         version=version, norm="L2")[0]
        result.add_eval(ctx.row("autoattack", eps=cfg.eval_l2_eps, steps=AUTOATTACK_ITERATIONS, restarts=1, n=n,
                                accuracy=fraction(ok), loss=loss, version=version, norm="L2"), subset.split_index, ok)
        result.summary.update(aa_l2_acc=fraction(ok), aa_l2_eps=cfg.eval_l2_eps)


def _adaptive(ctx: SuiteContext, subset: _AttackSubset, result: SuiteResult) -> dict[str, torch.Tensor]:
    """The attacks that know the model, on the subset, with PGD-k's eps, step, steps and restarts: the
    prototype-margin PGD (prototype heads only: a linear head's weights do not decide by distance) and
    the targeted PGD over the cfg.eval_rival_targets nearest rivals. Returns their per-point results."""
    cfg, n = ctx.cfg, subset.n
    eps, step, k, restarts = cfg.eval_eps, cfg.eval_step, cfg.eval_attack_steps, cfg.eval_restarts
    scores = "prototype_distance" if ctx.net.has_prototypes else "logits"
    flags = {}
    if ctx.net.has_prototypes:
        flags["feature_margin"] = ctx.correct_all(
            subset.x, subset.y, prototype_margin_attack(eps, step, k, ctx.precision, restarts=restarts), n)
        result.add_eval(ctx.row("feature_margin", eps=eps, steps=k, restarts=restarts, n=n,
                                accuracy=fraction(flags["feature_margin"]), loss="prototype_margin", scores=scores),
                        subset.split_index, flags["feature_margin"])
    rivals = min(cfg.eval_rival_targets, ctx.info.num_classes - 1)
    flags["targeted_rivals"] = ctx.correct_all(
        subset.x, subset.y, targeted_rivals_attack(eps, step, k, ctx.precision, rivals=rivals, restarts=restarts), n)
    result.add_eval(ctx.row("targeted_rivals", eps=eps, steps=k, restarts=restarts, n=n,
                            accuracy=fraction(flags["targeted_rivals"]), loss="targeted", scores=scores,
                            targets=rivals), subset.split_index, flags["targeted_rivals"])
    return flags


def _worst_case(ctx: SuiteContext, subset: _AttackSubset, flags: dict[str, PointFlags], result: SuiteResult) -> None:
    """The per-point worst case over `flags` (clean and every attack at eval_eps on the subset's points):
    an evals row, worst_case_acc in the summary, and the PGD-vs-strongest-attack masking check."""
    n, eps = subset.n, ctx.cfg.eval_eps
    worst_ok = worst_case(flags, n)
    worst = fraction(worst_ok)
    names = ",".join(flags)
    result.add_eval(ctx.row("worst_case", eps=eps, steps=0, restarts=0, n=n, accuracy=worst, loss=names),
                    subset.split_index, worst_ok)
    result.summary.update(worst_case_acc=worst, worst_case_n=n, worst_case_attacks=names)
    if ctx.level.autoattack is not None:
        result.masking.append(check_pgd_aa_gap(fraction(subset.pgd_ok), worst, n,
                                               f"per-point worst case of {len(flags)} attacks"))


def _diagnostics(ctx: SuiteContext, subset: _AttackSubset, flags: dict[str, PointFlags], result: SuiteResult) -> None:
    """The eps curve, PGD-(factor k), PGD at eps = 1, zero gradients and Square, and their checks; adds the
    attacks at eval_eps (PGD-(factor k), Square) to `flags`."""
    cfg, env, level, n = ctx.cfg, ctx.env, ctx.level, subset.n
    eps, step, k, restarts = cfg.eval_eps, cfg.eval_step, cfg.eval_attack_steps, cfg.eval_restarts
    pgd_acc, clean_acc = fraction(subset.pgd_ok), fraction(subset.clean_ok)

    def correct(attack: Attack) -> torch.Tensor:
        return ctx.correct_all(subset.x, subset.y, attack, n)

    with ctx.timer("eps_curve"):
        curve = {}
        for m in sorted(set(cfg.eval_eps_curve) | {1.0}):  # always through the threat model's eps
            # step scaled with eps (the eps / step ratio of the threat-model PGD); m = 1 is that PGD
            ok = subset.pgd_ok if m == 1.0 else correct(ctx.pgd(m * eps, m * step, k, restarts))
            curve[m] = fraction(ok)
            result.add_eval(ctx.row("pgd_eps_curve", eps=m * eps, steps=k, restarts=restarts, n=n,
                                    accuracy=curve[m], step_size=m * step), subset.split_index, ok)
    result.masking.append(check_eps_monotone([m * eps for m in curve], list(curve.values()), n))
    if 0.0 in curve:
        result.masking.append(check_eps0_equals_clean(curve[0.0], clean_acc, n))

    with ctx.timer("steps_check"):
        many = level.steps_factor * k
        many_ok = ctx.correct_all(subset.x, subset.y, ctx.pgd(eps, step, many, restarts), n)
        flags["pgd_steps_check"] = PointFlags(torch.arange(n, device=env.device), many_ok)
        acc_many = fraction(many_ok)
    result.add_eval(ctx.row("pgd_steps_check", eps=eps, steps=many, restarts=restarts, n=n, accuracy=acc_many),
                    subset.split_index, many_ok)
    result.masking.append(check_steps_monotone("steps_monotone", (f"PGD-{k}", pgd_acc), (f"PGD-{many}", acc_many), n))

    with ctx.timer("unbounded"):
        u = level.unbounded_steps
        unbounded_ok = correct(ctx.pgd(1.0, 2.5 / u, u))
        acc_unbounded = fraction(unbounded_ok)
    result.add_eval(ctx.row("pgd_unbounded", eps=1.0, steps=u, restarts=1, n=n, accuracy=acc_unbounded,
                            step_size=2.5 / u), subset.split_index, unbounded_ok)
    result.masking.append(check_unbounded(acc_unbounded, n, u))

    zero = gather_flags(_zero_gradient(ctx.net, subset.x, subset.y, cfg.eval_batch_size), n, env)
    result.masking.append(check_zero_gradients(fraction(zero) if n else 0.0, n))

    if level.square_queries > 0:
        _square(ctx, subset, flags, result)


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


def _square(ctx: SuiteContext, subset: _AttackSubset, flags: dict[str, PointFlags], result: SuiteResult) -> None:
    """Black-box Square on level.square_n points of the subset, against the per-point worst case of the
    white-box attacks in `flags` on them; adds Square's results to `flags`."""
    cfg, env, level, n = ctx.cfg, ctx.env, ctx.level, subset.n
    white_box_ok = worst_case(flags, n)
    with ctx.timer("square"):
        m = level.square_n if 0 < level.square_n < n else n
        index = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))[:m].sort().values
        xs, ys = local_points(Split(subset.points.images[index], subset.points.labels[index]), env)
        local = torch.zeros(0, dtype=torch.bool, device=env.device)
        if len(xs):
            x_sq = square(ctx.net, xs, ys, eps=cfg.eval_eps, queries=level.square_queries, seed=cfg.seed,
                          batch_size=cfg.eval_batch_size, rescale_schedule=level.square_rescale_schedule)
            local, _ = ctx.correct(x_sq, ys, None)
        square_ok = gather_flags(local, m, env)
    flags["square"] = PointFlags(index.to(env.device), square_ok)
    square_acc = fraction(square_ok)
    white_box = fraction(white_box_ok[index.to(white_box_ok.device)])
    result.add_eval(ctx.row("square", eps=cfg.eval_eps, steps=level.square_queries, restarts=1, n=m,
                            accuracy=square_acc, loss="margin"), subset.split_index[index], square_ok)
    result.summary.update(square_acc=square_acc, square_n=m, square_queries=level.square_queries,
                          white_box_acc_square_subset=white_box)
    result.masking.append(check_black_box(square_acc, white_box, m, level.square_queries))


def _geometry(ctx: SuiteContext, subset: _AttackSubset) -> list[dict[str, Any]]:
    """Geometry rows of the clean and PGD-k features of the subset (gathered from every rank)."""
    env, n = ctx.env, subset.n
    empty = torch.zeros(0, prototypes_of(ctx.net)[0].shape[1], device=env.device)
    features = {"test": gather(subset.z_clean if subset.z_clean is not None else empty, n, env),
                "test_pgd": gather(subset.z_pgd if subset.z_pgd is not None else empty, n, env)}
    attrs = {"test": {"attack": "none", "eps": 0.0, "steps": 0, "accuracy": fraction(subset.clean_ok)},
             "test_pgd": {"attack": "pgd", "eps": float(ctx.cfg.eval_eps), "steps": ctx.cfg.eval_attack_steps,
                          "accuracy": fraction(subset.pgd_ok)}}
    return geometry_rows(features, subset.points.labels.to(env.device), ctx.net, ctx.info.num_classes, attrs)


# ------------------------------------------------------------------------------ corruptions


def _corruptions(ctx: SuiteContext, data: DatasetSplits, result: SuiteResult) -> None:
    """corruptions.parquet rows and the corruption summary (mean accuracy, clean accuracy, source)."""
    cfg, env = ctx.cfg, ctx.env
    source, note = corruption_plan(cfg, data.info)
    result.summary.update(corruption_source=source or "none", corruption_note=note)
    if source is None:
        return
    clean, sets = corrupted_sets(cfg, data, source)
    rows = corruption_rows(ctx.net, sets, source=source, env=env, batch_size=cfg.eval_batch_size,
                           precision=ctx.precision, clean_labels=clean.labels)
    correct, total = correct_counts(ctx.net, clean, None, env=env, batch_size=cfg.eval_batch_size,
                                    precision=ctx.precision)
    result.corruptions = rows
    result.summary.update(
        corruption_acc=sum(r["accuracy"] for r in rows) / len(rows) if rows else float("nan"),
        corruption_clean_acc=correct / max(total, 1), corruption_n=total,
        corruption_count=len({r["corruption"] for r in rows}),
        corruption_label_agreement=min((r["label_agreement"] for r in rows), default=float("nan")))
