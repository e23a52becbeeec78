"""The ablation's variants: which arms of Adv-DPNP exist (each a set of config overrides), the default grid, and
the cells of the factorial design. Pure naming, no Ray."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..registry import Registry
from .factorial import FACTORS, cell_overrides, factorial_cells


@dataclass(frozen=True)
class AblationVariant:
    """One arm of the ablation: overrides of the study's base config."""

    overrides: dict[str, Any] = field(default_factory=dict)
    in_default_grid: bool = True  # run when no --variants are given
    listed: bool = True  # named in --help and errors (a factorial cell is not: FACTORIAL_PREFIX says how to ask)


ABLATION_VARIANTS: Registry[AblationVariant] = Registry("ablation variant")
ABLATION_VARIANTS.register("full")(AblationVariant())  # the paper's Adv-DPNP
ABLATION_VARIANTS.register("no_npr")(AblationVariant({"use_npr": False}))
ABLATION_VARIANTS.register("no_consistency")(AblationVariant({"use_consistency": False}))
ABLATION_VARIANTS.register("no_ppa")(AblationVariant({"use_ppa": False}))
ABLATION_VARIANTS.register("proto_adversarial")(AblationVariant({"prototype_update": "adversarial"}))
ABLATION_VARIANTS.register("proto_both")(AblationVariant({"prototype_update": "both"}))
ABLATION_VARIANTS.register("pgd_at")(AblationVariant({"method": "pgd_at"}))
ABLATION_VARIANTS.register("trades")(AblationVariant({"method": "trades"}))
ABLATION_VARIANTS.register("mart")(AblationVariant({"method": "mart"}))
# Mechanism controls (docs/method.md#mechanism-controls). hybrid_linear has no prototypes, so PPA and NPR
# cannot apply; its overrides say so, so that its rows do not claim terms it never computed.
ABLATION_VARIANTS.register("fixed_simplex")(AblationVariant({"prototype_mode": "fixed_simplex"}, in_default_grid=False))
ABLATION_VARIANTS.register("hybrid_linear")(
    AblationVariant({"method": "hybrid_linear", "use_ppa": False, "use_npr": False}, in_default_grid=False))
ABLATION_VARIANTS.register("proto_ce")(AblationVariant({"method": "proto_ce"}, in_default_grid=False))
ABLATION_VARIANTS.register("dpnp_clean")(AblationVariant({"method": "dpnp"}, in_default_grid=False))
# The feature head (docs/feature_head.md); the default is `linear`, so `head_linear` equals `full` today.
ABLATION_VARIANTS.register("head_none")(AblationVariant({"feature_head": "none"}, in_default_grid=False))
ABLATION_VARIANTS.register("head_linear")(AblationVariant({"feature_head": "linear"}, in_default_grid=False))
ABLATION_VARIANTS.register("head_no_final_relu")(
    AblationVariant({"feature_head": "no_final_relu"}, in_default_grid=False))


for _cell in factorial_cells(list(FACTORS))[1:]:  # the first, every factor on, is `full`
    ABLATION_VARIANTS.register(_cell)(AblationVariant(cell_overrides(_cell), in_default_grid=False, listed=False))

LISTED_VARIANTS: tuple[str, ...] = tuple(n for n in ABLATION_VARIANTS.names() if ABLATION_VARIANTS.get(n).listed)

DEFAULT_VARIANTS: tuple[str, ...] = tuple(name for name in ABLATION_VARIANTS.in_registration_order()
                                          if ABLATION_VARIANTS.get(name).in_default_grid)


def variant_overrides() -> dict[str, dict[str, Any]]:
    """Every registered variant's config overrides, by name."""
    return {name: ABLATION_VARIANTS.get(name).overrides for name in ABLATION_VARIANTS}
