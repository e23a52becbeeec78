"""The original code of AutoAttack and Square (PyPI `pyautoattack`), wrapped for the suite.

Both reseed torch's global RNGs and draw from them (`_own_rng` keeps that from reaching the caller);
AutoAttack reports its own sanity checks as log warnings (`_capture_warnings` keeps them). They run in
fp32 on the device of their inputs; the caller puts the model in eval mode (AutoAttack never does).
`pyautoattack` is imported when an attack runs, not with this module: the basic level never needs it.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch
from torch import nn

#: AutoAttack versions as this project names them -> the attacks of AutoAttack's cascade, in order
AUTOATTACK_VERSIONS: dict[str, tuple[str, ...]] = {
    "apgd": ("apgd-ce", "apgd-t"),
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
}
AUTOATTACK_ITERATIONS = 100  # APGD and FAB iterations in both versions (AutoAttack's defaults)
AUTOATTACK_NORMS = ("Linf", "L2")  # the threat models the suite runs AutoAttack under (its `norm`)


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


def autoattack_code_version() -> str:
    """The AutoAttack code that ran, for the trial's summary (`aa_code`)."""
    import pyautoattack

    return f"pyautoattack {pyautoattack.__version__}"


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, version: str, seed: int,
               batch_size: int, num_classes: int, norm: str = "Linf") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """AutoAttack (Croce & Hein 2020) with the original code, in the `norm` ball of radius eps (L-inf by
    default, or L2); returns (x_adv, robust, warnings).

    `robust[i]` is True when no attack of the cascade broke point i (False also for points the model
    misclassifies clean). The caller puts the model in eval mode; it runs in fp32 on x's device.
    versions: `apgd` = APGD-CE, APGD-T with standard's settings; `standard` = AutoAttack's own.
    """
    from pyautoattack import AutoAttack

    if version not in AUTOATTACK_VERSIONS:
        raise ValueError(f"AutoAttack version {version!r}; known: {', '.join(AUTOATTACK_VERSIONS)}")
    if norm not in AUTOATTACK_NORMS:
        raise ValueError(f"AutoAttack norm {norm!r}; known: {', '.join(AUTOATTACK_NORMS)}")
    if num_classes < 4:
        raise ValueError(f"AutoAttack's targeted DLR loss needs at least 4 classes, got {num_classes}")
    if version == "standard":
        attack = AutoAttack(model, version="standard", norm=norm, eps=eps, seed=seed, device=x.device)
    else:
        attack = AutoAttack(model, attacks=list(AUTOATTACK_VERSIONS[version]), version="custom", norm=norm,
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
