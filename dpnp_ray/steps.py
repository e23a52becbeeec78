"""The dual-branch forward and one optimisation step for every method (Adv-DPNP among them).

`method_loss` maps a config onto the pure loss terms of losses.py through the loss its
method names (methods.METHODS -> LOSSES); `train_step` makes the training adversary, runs one
forward of both branches, and does one backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from . import losses
from .attacks import eval_mode, pgd
from .config import ExperimentConfig
from .devices import Precision
from .methods import METHODS
from .models import Classifier
from .registry import Registry


@dataclass
class BranchOutputs:
    """What one training forward produces; absent branches are None."""

    z: torch.Tensor | None
    logits: torch.Tensor | None
    z_adv: torch.Tensor | None
    logits_adv: torch.Tensor | None
    prototypes: torch.Tensor | None  # live (not detached) c, for the NPR term


class DualBranchForward(nn.Module):
    """The one module DDP wraps: both branches run in a single forward call.

    DDP syncs gradients for parameters reached from its wrapper's forward; running the clean
    and the adversarial pass inside one call (separate backbone passes, so BatchNorm sees
    each batch on its own) keeps one backward per step correct under DDP.
    `detach_clean` / `detach_adv` stop the gradient to the prototypes in that branch.
    """

    def __init__(self, net: Classifier):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor | None, x_adv: torch.Tensor | None = None,
                detach_clean: bool = False, detach_adv: bool = True) -> BranchOutputs:
        net = self.net
        c = net.head.prototypes() if net.has_prototypes else None

        def branch(inputs: torch.Tensor | None, detach: bool):
            if inputs is None:
                return None, None
            z = net.features(inputs)
            if c is None:
                return z, net.head(z)
            return z, net.head.logits(z, c.detach() if detach else c)

        z, logits = branch(x, detach_clean)
        z_adv, logits_adv = branch(x_adv, detach_adv)
        return BranchOutputs(z, logits, z_adv, logits_adv, c)


#: prototype_update -> (stop-gradient on c in the clean branch, in the adversarial branch)
PROTOTYPE_DETACH = {"clean": (False, True), "adversarial": (True, False), "both": (False, False)}


def prototype_detach(cfg: ExperimentConfig) -> tuple[bool, bool]:
    """(stop-gradient on c in the clean branch, in the adversarial branch) for cfg's method.

    Two-branch methods follow prototype_update (PROTOTYPE_DETACH); a method that runs one branch
    (dpnp: clean only, proto_ce: adversarial only) trains its prototypes from that branch.
    """
    method = METHODS.get(cfg.method)
    if not (method.adversarial and method.clean_branch):
        return False, False
    return PROTOTYPE_DETACH[cfg.prototype_update]

MethodLoss = Callable[[BranchOutputs, torch.Tensor, ExperimentConfig], tuple[torch.Tensor, dict[str, torch.Tensor]]]
LOSSES: Registry[MethodLoss] = Registry("method loss")
"""name (a `Method.loss` in methods.METHODS) -> loss(out, y, cfg) returning the total and its named terms."""


@LOSSES.register("adv_dpnp")
def adv_dpnp_loss(out: BranchOutputs, y: torch.Tensor, cfg: ExperimentConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = L_clean + beta_adv * L_adv + lambda_cons * KL (docs/method.md#dual-branch-step); also `dpnp` (clean only).

    L_clean = CE(z, c) + lambda_ppa PPA(z, c) + lambda_npr NPR,  L_adv = CE(z', c) + lambda_ppa PPA(z', c)
    [+ lambda_npr NPR(z', c) for the sample form], where each branch sees c or sg(c) according to
    prototype_update. The prototype-form NPR depends on c alone, so it always sees the live c
    (it belongs to whichever branch updates the prototypes). Switched-off terms are not computed;
    a linear head (hybrid_linear) has no prototypes, so PPA and NPR drop out there.
    """
    c = out.prototypes
    detach_clean, detach_adv = prototype_detach(cfg)
    c_clean = c.detach() if detach_clean and c is not None else c
    c_adv = c.detach() if detach_adv and c is not None else c
    use_ppa = cfg.use_ppa and cfg.lambda_ppa > 0 and c is not None
    use_npr = cfg.use_npr and cfg.lambda_npr > 0 and c is not None
    terms: dict[str, torch.Tensor] = {}

    terms["ce"] = losses.cross_entropy(out.logits, y)
    total = terms["ce"]
    if use_ppa:
        terms["ppa"] = losses.ppa(out.z, c_clean, y, cfg.ppa_form)
        total = total + cfg.lambda_ppa * terms["ppa"]
    if use_npr:
        if cfg.npr_form == "prototype":
            terms["npr"] = losses.npr_prototype(c)
        else:
            terms["npr"] = losses.npr_sample(out.z, c_clean, y)
        total = total + cfg.lambda_npr * terms["npr"]

    if out.logits_adv is not None:
        adv_total = terms["ce_adv"] = losses.cross_entropy(out.logits_adv, y)
        if use_ppa:
            terms["ppa_adv"] = losses.ppa(out.z_adv, c_adv, y, cfg.ppa_form)
            adv_total = adv_total + cfg.lambda_ppa * terms["ppa_adv"]
        if use_npr and cfg.npr_form == "sample":
            terms["npr_adv"] = losses.npr_sample(out.z_adv, c_adv, y)
            adv_total = adv_total + cfg.lambda_npr * terms["npr_adv"]
        total = total + cfg.beta_adv * adv_total
        if cfg.use_consistency and cfg.lambda_cons > 0:
            terms["cons"] = losses.consistency(out.logits, out.logits_adv, cfg.consistency_direction,
                                               cfg.consistency_detach_clean)
            total = total + cfg.lambda_cons * terms["cons"]
    terms["total"] = total
    return total, terms


@LOSSES.register("pgd_at")
def pgd_at_loss(out: BranchOutputs, y: torch.Tensor, cfg: ExperimentConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PGD-AT (Madry et al.): CE on the adversarial examples only."""
    total = losses.pgd_at_loss(out.logits_adv, y)
    return total, {"ce_adv": total, "total": total}


@LOSSES.register("trades")
def trades_loss(out: BranchOutputs, y: torch.Tensor, cfg: ExperimentConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TRADES (Zhang et al. 2019): CE(clean) + trades_beta * KL(p_clean || p_adv)."""
    total, ce, kl = losses.trades_loss(out.logits, out.logits_adv, y, cfg.trades_beta)
    return total, {"ce": ce, "trades_kl": kl, "total": total}


@LOSSES.register("mart")
def mart_loss(out: BranchOutputs, y: torch.Tensor, cfg: ExperimentConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MART (Wang et al. 2020): BCE(p_adv, y) + mart_beta * KL(p_clean || p_adv) * (1 - p_clean,y)."""
    total, bce, kl = losses.mart_loss(out.logits, out.logits_adv, y, cfg.mart_beta)
    return total, {"mart_bce": bce, "mart_kl": kl, "total": total}


def method_loss(out: BranchOutputs, y: torch.Tensor, cfg: ExperimentConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss of cfg.method and its named terms."""
    return LOSSES.get(METHODS.get(cfg.method).loss)(out, y, cfg)


def training_adversary(net: Classifier, x: torch.Tensor, y: torch.Tensor, cfg: ExperimentConfig, eps: float,
                       generator: torch.Generator | None, precision: Precision) -> torch.Tensor:
    """The training attack (docs/method.md#training-attack): L-inf PGD on the prototype logits, prototypes fixed.

    Runs on the unwrapped network (no DDP hooks), BatchNorm in eval mode unless
    attack_bn_mode='train'. A method's own attack objective (TRADES: KL to the clean
    prediction) replaces cfg.train_attack_loss.
    """
    reference = None
    loss = METHODS.get(cfg.method).attack_loss or cfg.train_attack_loss
    with eval_mode(net, enabled=cfg.attack_bn_mode == "eval"), precision.autocast():
        if loss == "kl":  # KL to the clean prediction needs that prediction
            with torch.no_grad():
                reference = net(x)
        # The step size follows the scheduled eps: eps_t / 4 by default, 2/255 at 8/255.
        step_size = cfg.train_step_size * eps / cfg.eps if cfg.eps else 0.0
        return pgd(net, x, y, eps=eps, step_size=step_size,
                   steps=cfg.train_attack_steps, loss=loss, random_start=cfg.train_attack_random_start,
                   generator=generator, reference=reference)


def train_step(forward: nn.Module, net: Classifier, x: torch.Tensor, y: torch.Tensor, cfg: ExperimentConfig, *,
               eps: float, optimizer: torch.optim.Optimizer, precision: Precision,
               generator: torch.Generator | None = None, scaler: Any = None) -> dict[str, torch.Tensor]:
    """Attack, one forward through `forward` (a DualBranchForward, maybe DDP-wrapped), one backward, the
    gradient-norm clip (cfg.grad_clip_norm; docs/method.md#gradient-clipping), one step.

    Returns detached per-batch tensors (loss terms, correct counts); nothing is synced to the host.
    """
    method = METHODS.get(cfg.method)
    x_adv = training_adversary(net, x, y, cfg, eps, generator, precision) if method.adversarial else None
    clean_input = x if method.clean_branch else None
    detach_clean, detach_adv = prototype_detach(cfg)
    with precision.autocast():
        out: BranchOutputs = forward(clean_input, x_adv, detach_clean=detach_clean, detach_adv=detach_adv)
    loss, terms = method_loss(out, y, cfg)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        if cfg.grad_clip_norm > 0:
            scaler.unscale_(optimizer)  # clip the true gradient, not the scaled one
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if cfg.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip_norm)
        optimizer.step()
    if net.has_prototypes:
        net.head.project_()
    stats = {f"loss_{k}": v.detach() for k, v in terms.items()}
    if out.logits is not None:
        stats["correct_clean"] = (out.logits.argmax(1) == y).sum()
    if out.logits_adv is not None:
        stats["correct_adv"] = (out.logits_adv.argmax(1) == y).sum()
    return stats
