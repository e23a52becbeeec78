"""Evaluation of trained models: accuracy under attack, the robustness suite, and what it measures."""

from .accuracy import (EvalResult, correct_counts, evaluate_attack, fgsm_attack, pgd_attack, shard,
                       subsample)
from .suite import SUITE_LEVELS, SuiteLevel, SuiteResult, check_inputs, run_suite, threat_model_evals
