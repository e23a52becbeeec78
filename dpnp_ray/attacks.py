"""L-inf attacks on [0, 1] pixels: FGSM and PGD with restarts, CE / CW-margin / KL objectives.

Attacks take a model and tensors and return tensors. They never call `.item()` or copy to
the host inside the step loop, take gradients with respect to the input only (parameters
accumulate nothing), and draw random starts from an explicit `torch.Generator`.
The caller decides the model's mode; `eval_mode` is the context manager for it.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Registry

AttackLoss = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
ATTACK_LOSSES: Registry[AttackLoss] = Registry("attack loss")
"""name -> f(logits, y, reference_logits) returning the per-example loss the attack maximizes."""


@ATTACK_LOSSES.register("ce")
def ce_loss(logits: torch.Tensor, y: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction="none")


@ATTACK_LOSSES.register("cw")
def cw_margin_loss(logits: torch.Tensor, y: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """C&W margin -(l_y - max_{j != y} l_j): positive exactly when the point is misclassified."""
    logits = logits.float()
    own = logits.gather(1, y.view(-1, 1)).squeeze(1)
    rival = logits.scatter(1, y.view(-1, 1), float("-inf")).max(dim=1).values
    return rival - own


@ATTACK_LOSSES.register("kl")
def kl_loss(logits: torch.Tensor, y: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """KL(softmax(reference) || softmax(logits)) per example: the TRADES attack objective."""
    if reference is None:
        raise ValueError("attack loss 'kl' needs reference (clean) logits")
    log_p = F.log_softmax(reference.float(), dim=1)
    log_q = F.log_softmax(logits.float(), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1)


@contextlib.contextmanager
def eval_mode(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Put the model (BatchNorm, dropout) in eval mode for the block, then restore each module's mode."""
    if not enabled:
        yield model
        return
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: AttackLoss,
                reference: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient of the summed per-example loss w.r.t. x only; also returns the loss and logits."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        loss = loss_fn(logits, y, reference)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return grad, loss.detach(), logits.detach()


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, loss: str = "ce",
         reference: torch.Tensor | None = None) -> torch.Tensor:
    """Fast gradient sign method: x + eps * sign(grad), clipped to [0, 1]."""
    grad, _, _ = _input_grad(model, x, y, ATTACK_LOSSES.get(loss), reference)
    return (x + eps * grad.sign()).clamp(0, 1).detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float, steps: int,
        loss: str = "ce", random_start: bool = True, restarts: int = 1, generator: torch.Generator | None = None,
        reference: torch.Tensor | None = None) -> torch.Tensor:
    """L-inf projected gradient ascent (Madry et al.) with restarts.

    Each restart: delta ~ U(-eps, eps) (or 0), then `steps` times
    delta <- clip_[-eps, eps](delta + step_size * sign(grad)), with x + delta clipped to [0, 1].
    Across restarts each example keeps a misclassifying perturbation if any restart found one,
    else the one with the highest final loss: the per-point worst case.
    """
    if eps < 0 or step_size < 0 or steps < 0 or restarts < 1:
        raise ValueError(f"pgd: eps={eps}, step_size={step_size}, steps={steps}, restarts={restarts} out of range")
    loss_fn = ATTACK_LOSSES.get(loss)
    x = x.detach()
    best = x.clone()
    best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
    best_wrong = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        if random_start and eps > 0:
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_adv = (x + (2 * noise - 1) * eps).clamp(0, 1)
        else:
            x_adv = x.clone()
        for _ in range(steps):
            grad, _, _ = _input_grad(model, x_adv, y, loss_fn, reference)
            x_adv = x_adv + step_size * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
        if restarts == 1:
            return x_adv.detach()
        with torch.no_grad():
            logits = model(x_adv)
            final_loss = loss_fn(logits, y, reference)
            wrong = logits.argmax(1) != y
        # Prefer a misclassifying restart; among equals, the larger loss.
        better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (final_loss > best_loss))
        best = torch.where(better.view(-1, *[1] * (x.dim() - 1)), x_adv, best)
        best_loss = torch.where(better, final_loss, best_loss)
        best_wrong = best_wrong | wrong
    return best.detach()
