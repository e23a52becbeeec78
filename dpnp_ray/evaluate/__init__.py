"""Evaluation of trained models, one concern per module:

accuracy       accuracy on a split, clean or under an attack, sharded across workers; the per-point worst case
suite          the robustness suite every finished trial goes through (`run_suite`), part after part
suite_levels   what each level of the suite runs (`SUITE_LEVELS`), and its inputs checked before training
suite_context  what the suite's parts share: the model, config and device they read, the result they write
suite_timing   seconds per part of the suite, and the time left from an earlier evaluation
attack_subset  the test points the expensive attacks run on, with their clean and PGD-k results
subset_parts   what runs on the attack subset: AutoAttack, adaptive attacks, diagnostics, worst case, geometry
checks         the gradient-masking checks, as arithmetic on measured accuracies
external       the original AutoAttack and Square code, wrapped (RNG isolation, warning capture)
corruptions    common corruptions: the released CIFAR-C files, the offline generator, the suite's sets
geometry       latent-space geometry of prototype classifiers
"""

from .accuracy import (EvalResult, PointFlags, correct_counts, correct_per_point, eval_row, 
                       fgsm_attack, pgd_attack, prototype_margin_attack, shard, subsample, targeted_rivals_attack,
                       worst_case)
from .external import autoattack, square
from .suite import SUITE_LEVELS, SuiteLevel, SuiteResult, check_inputs, run_suite

__all__ = [
    "EvalResult", "PointFlags", "correct_counts", "correct_per_point", "eval_row", "fgsm_attack",
    "pgd_attack", "prototype_margin_attack", "shard", "subsample", "targeted_rivals_attack", "worst_case",
    "autoattack", "square", "SUITE_LEVELS", "SuiteLevel", "SuiteResult", "check_inputs", "run_suite",
]
