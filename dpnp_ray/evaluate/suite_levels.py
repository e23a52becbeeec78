"""The suite's levels: what each level runs (`SuiteLevel`), the registry `run_suite` looks them up in by
cfg.eval_suite (`SUITE_LEVELS`: basic, quick, full; see suite.py for what each part measures), and the check
that a level's inputs exist before training starts (`check_inputs`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ExperimentConfig
from ..registry import Registry
from .corruptions import GENERATED_DATASET_NAME, RELEASED_CORRUPTION_SOURCES, available_cifar_c


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
