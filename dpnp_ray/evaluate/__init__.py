"""Evaluation of trained models, one concern per module:

accuracy     accuracy on a split, clean or under PGD / FGSM, sharded across workers; evals rows
suite        the robustness suite every finished trial goes through (`run_suite`, its levels)
checks       the gradient-masking checks, as arithmetic on measured accuracies
external     the original AutoAttack and Square code, wrapped (RNG isolation, warning capture)
corruptions  common corruptions: the released CIFAR-C files, the offline generator, the suite's sets
geometry     latent-space geometry of prototype classifiers
"""

from .accuracy import (EvalResult, correct_counts, correct_per_point, eval_row, evaluate_attack, fgsm_attack,
                       pgd_attack, shard, subsample)
from .external import autoattack, square
from .suite import SUITE_LEVELS, SuiteLevel, SuiteResult, check_inputs, run_suite, threat_model_evals

__all__ = [
    "EvalResult", "correct_counts", "correct_per_point", "eval_row", "evaluate_attack", "fgsm_attack", "pgd_attack",
    "shard", "subsample", "autoattack", "square", "SUITE_LEVELS", "SuiteLevel", "SuiteResult", "check_inputs",
    "run_suite", "threat_model_evals",
]
