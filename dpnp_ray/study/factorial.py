"""The 2^k factorial ablation's cells: which components of Adv-DPNP switch, and how a cell is named.

Pure naming, no Ray: the study layer registers every cell as an ablation variant (ablation_grid.py), the
analysis reads a cell's levels back from its name (analysis/factorial.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Factor:
    """One switchable component of Adv-DPNP for a factorial ablation: the config field and its two levels,
    `on` (the paper's method) and `off` (the component removed)."""

    field: str
    on: Any
    off: Any


FACTORS: dict[str, Factor] = {
    "ppa": Factor("use_ppa", True, False),
    "npr": Factor("use_npr", True, False),
    "cons": Factor("use_consistency", True, False),
    "cleanupd": Factor("prototype_update", "clean", "adversarial"),  # prototypes learn from clean data only
    "learned": Factor("prototype_mode", "learned", "fixed_simplex"),  # prototypes learned at all
}
"""The factors of `factorial:` (docs/method.md#factorial-ablation), in the order cell names list them."""
REFERENCE_CELL = "full"
"""the ablation's variant with every factor at the paper's level: the factorial's all-on cell"""
FACTORIAL_PREFIX = "factorial:"
"""`--variants factorial:ppa,npr,cons` asks for every cell of the 2^k design over those factors."""


def cell_name(levels: dict[str, bool]) -> str:
    """The variant of one factorial cell: 'fac_ppa1_npr0_cons1_cleanupd1_learned1' (1: the paper's level);
    factors not given are at their paper's level. The cell with every factor at the paper's level is `full`."""
    if all(levels.get(name, True) for name in FACTORS):
        return REFERENCE_CELL
    return "fac_" + "_".join(f"{name}{int(levels.get(name, True))}" for name in FACTORS)


def cell_levels(variant: str) -> dict[str, bool] | None:
    """A factorial cell's levels by factor (True: the paper's level), or None for any other variant."""
    if variant == REFERENCE_CELL:
        return {name: True for name in FACTORS}
    parts = variant.split("_")
    if parts[0] != "fac" or len(parts) != len(FACTORS) + 1:
        return None
    levels = {}
    for name, part in zip(FACTORS, parts[1:]):
        if part not in (f"{name}0", f"{name}1"):
            return None
        levels[name] = part.endswith("1")
    return levels


def cell_overrides(variant: str) -> dict[str, Any]:
    """The config overrides of a factorial cell: each factor's field at the cell's level."""
    return {FACTORS[f].field: FACTORS[f].on if on else FACTORS[f].off for f, on in cell_levels(variant).items()}


def factorial_cells(factors: list[str]) -> list[str]:
    """Every cell of the 2^k design over `factors`, the all-on cell (`full`, the paper's method) first."""
    unknown = [f for f in factors if f not in FACTORS]
    if unknown or not factors or len(set(factors)) != len(factors):
        raise ValueError(f"{FACTORIAL_PREFIX}{','.join(factors)}: name distinct factors among {', '.join(FACTORS)}")
    cells = []
    for code in range(2 ** len(factors)):
        cells.append(cell_name({f: not (code >> i) & 1 for i, f in enumerate(factors)}))
    return cells


def expand_variants(names: list[str]) -> list[str]:
    """Variant names with each `factorial:f1,f2,...` replaced by its cells (duplicates dropped, order kept)."""
    expanded: list[str] = []
    for name in names:
        cells = factorial_cells(name[len(FACTORIAL_PREFIX):].split(",")) if isinstance(name, str) \
            and name.startswith(FACTORIAL_PREFIX) else [name]
        expanded += [c for c in cells if c not in expanded]
    return expanded


def design_factors(variants: list[str]) -> list[str]:
    """The factors that take both levels among the factorial cells of `variants` (none: no factorial)."""
    levels = [cell_levels(v) for v in variants if cell_levels(v) is not None]
    return [f for f in FACTORS if len({lv[f] for lv in levels}) == 2]
