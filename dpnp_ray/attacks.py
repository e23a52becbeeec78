"""L-inf attacks on [0, 1] pixels: FGSM and PGD with restarts, CE / CW-margin / KL / targeted objectives.

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

from .losses import kl_per_example
from .registry import Registry

AttackLoss = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
ATTACK_LOSSES: Registry[AttackLoss] = Registry("attack loss")
"""name -> f(scores, y, reference) returning the per-example loss the attack maximizes. `scores` are the
attacked model's outputs (logits, or `PrototypeScores`); `reference` is a per-example extra input: the
clean logits for "kl", the target classes for "targeted"."""


def _wide(scores: torch.Tensor) -> torch.Tensor:
    """Scores in fp32, or wider when they already are (bf16 / fp16 logits are widened)."""
    return scores if scores.dtype in (torch.float32, torch.float64) else scores.float()


@ATTACK_LOSSES.register("ce")
def ce_loss(logits: torch.Tensor, y: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction="none")


@ATTACK_LOSSES.register("cw")
def cw_margin_loss(logits: torch.Tensor, y: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """C&W margin -(l_y - max_{j != y} l_j): positive exactly when the point is misclassified."""
    logits = _wide(logits)
    own = logits.gather(1, y.view(-1, 1)).squeeze(1)
    rival = logits.scatter(1, y.view(-1, 1), float("-inf")).max(dim=1).values
    return rival - own


@ATTACK_LOSSES.register("kl")
def kl_loss(logits: torch.Tensor, y: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """KL(softmax(reference) || softmax(logits)) per example: the TRADES attack objective."""
    if reference is None:
        raise ValueError("attack loss 'kl' needs reference (clean) logits")
    return kl_per_example(reference, logits)


@ATTACK_LOSSES.register("targeted")
def targeted_margin_loss(scores: torch.Tensor, y: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """s_t - s_y for the target class t = reference[i] of each example: positive once t outscores y."""
    if reference is None:
        raise ValueError("attack loss 'targeted' needs reference = the target class of each example")
    scores = _wide(scores)
    return (scores.gather(1, reference.view(-1, 1)) - scores.gather(1, y.view(-1, 1))).squeeze(1)


# ------------------------------------------------------------------------ prototype classifiers


def prototype_scores(z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """-||z_i - c_k||^2 for every example i and prototype k, in fp32 or wider: the nearest prototype scores highest."""
    dtype = torch.promote_types(torch.promote_types(z.dtype, prototypes.dtype), torch.float32)
    z, prototypes = z.to(dtype), prototypes.to(dtype)
    with torch.autocast(z.device.type, enabled=False):  # the expansion cancels: never in bf16 / fp16
        return -((z * z).sum(1, keepdim=True) - 2 * z @ prototypes.t() + (prototypes * prototypes).sum(1))


def prototype_margin(z: torch.Tensor, prototypes: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||z - c_y||^2 - min_{k != y} ||z - c_k||^2 per example: positive exactly when a rival prototype is
    nearer than the own one. It is the C&W margin of `prototype_scores`, which is how the attack computes it."""
    return cw_margin_loss(prototype_scores(z, prototypes), y)


class PrototypeScores(nn.Module):
    """A prototype classifier seen through its geometry: forward(x) = `prototype_scores`(features(x), c).

    PGD on this module with loss "cw" maximizes `prototype_margin` (the feature-space attack), with loss
    "targeted" the margin to one chosen rival prototype. With prototypes of equal norm (both of
    PrototypeHead's constraints keep them on the sphere) the nearest prototype is the class of largest
    logit, for dot and cosine logits alike, so argmax of these scores is the classifier's decision.
    `classifier` needs `features(x)` and `head.prototypes()` (models.Classifier with a PrototypeHead).
    """

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return prototype_scores(self.classifier.features(x), self.classifier.head.prototypes())


def rival_targets(scores: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """(n, min(k, C - 1)) classes other than y, highest score first: for `PrototypeScores` the k nearest
    rival prototypes, for logits the top-k rival logits."""
    if k < 1:
        raise ValueError(f"rival_targets: k={k} must be >= 1")
    k = min(k, scores.shape[1] - 1)
    return scores.float().scatter(1, y.view(-1, 1), float("-inf")).topk(k, dim=1).indices


def targeted_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor, *, eps: float,
                 step_size: float, steps: int, restarts: int = 1, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
    """The per-point worst target: early-stopping PGD on the "targeted" loss towards targets[:, 0], then
    towards targets[:, 1] for the points still classified correctly, and so on. A point keeps the first
    perturbation that misclassifies it (by `model`'s argmax), else the last target's."""
    best = x.detach().clone()
    alive = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for j in range(targets.shape[1]):
        index = alive.nonzero().squeeze(1)
        if index.numel() == 0:
            break
        x_adv = pgd(model, x[index], y[index], eps=eps, step_size=step_size, steps=steps, loss="targeted",
                    restarts=restarts, generator=generator, reference=targets[index, j], early_stop=True)
        best[index] = x_adv
        with torch.no_grad():
            alive[index] = model(x_adv).argmax(1) == y[index]
    return best


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
        reference: torch.Tensor | None = None, early_stop: bool = False, compact_every: int = 2) -> torch.Tensor:
    """L-inf projected gradient ascent (Madry et al.) with restarts.

    Each restart: delta ~ U(-eps, eps) (or 0), then `steps` times
    delta <- clip_[-eps, eps](delta + step_size * sign(grad)), with x + delta clipped to [0, 1].
    Across restarts each example keeps a misclassifying perturbation if any restart found one,
    else the one with the highest final loss: the per-point worst case.

    early_stop=True (robust-accuracy evaluation, never training): a point is broken as soon as any
    iterate misclassifies it; that iterate is frozen and returned, and later restarts skip the point.
    Points never broken follow exactly the plain trajectory, so the returned points are never weaker
    than plain PGD's final iterates on the same seed. Every `compact_every` steps the broken points
    are dropped from the batch (one host sync), which is where the compute is saved.
    """
    if eps < 0 or step_size < 0 or steps < 0 or restarts < 1 or compact_every < 0:
        raise ValueError(f"pgd: eps={eps}, step_size={step_size}, steps={steps}, restarts={restarts}, "
                         f"compact_every={compact_every} out of range")
    loss_fn = ATTACK_LOSSES.get(loss)
    x = x.detach()
    # clamp(min(max(a, x - eps), x + eps), 0, 1) == clamp(a, lo, hi) exactly (x is in [0, 1]): bounds
    # computed once, then every step updates x_adv in place.
    lo, hi = (x - eps).clamp_(0, 1), (x + eps).clamp_(0, 1)
    if early_stop:
        return _pgd_early_stop(model, x, y, lo, hi, eps=eps, step_size=step_size, steps=steps, loss_fn=loss_fn,
                               random_start=random_start, restarts=restarts, generator=generator,
                               reference=reference, compact_every=compact_every)
    best = x.clone()
    best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
    best_wrong = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        x_adv = _start(x, eps, random_start, generator)
        for _ in range(steps):
            grad, _, _ = _input_grad(model, x_adv, y, loss_fn, reference)
            x_adv.add_(grad.sign_(), alpha=step_size)
            torch.clamp(x_adv, lo, hi, out=x_adv)
        if restarts == 1:
            return x_adv
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


def _start(x: torch.Tensor, eps: float, random_start: bool, generator: torch.Generator | None) -> torch.Tensor:
    """The first iterate of a restart: x + U(-eps, eps) clipped to [0, 1], or a copy of x."""
    if random_start and eps > 0:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + (2 * noise - 1) * eps).clamp_(0, 1)
    return x.clone()


def _pgd_early_stop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, *,
                    eps: float, step_size: float, steps: int, loss_fn: AttackLoss, random_start: bool,
                    restarts: int, generator: torch.Generator | None, reference: torch.Tensor | None,
                    compact_every: int) -> torch.Tensor:
    """`pgd` with early exit: the per-point worst case over every iterate of every restart.

    The random start of each restart is drawn for the whole batch (the same draws as plain PGD)
    and then restricted to the points still unbroken.
    """
    n = x.shape[0]
    view = (-1, *[1] * (x.dim() - 1))
    best = x.clone()
    best_loss = torch.full((n,), float("-inf"), device=x.device)
    broken = torch.zeros(n, dtype=torch.bool, device=x.device)
    for restart in range(restarts):
        start = _start(x, eps, random_start, generator)
        index = torch.arange(n, device=x.device) if restart == 0 else (~broken).nonzero().squeeze(1)
        if index.numel() == 0:
            break
        x_adv, alive = start[index], torch.ones(index.numel(), dtype=torch.bool, device=x.device)
        y_a, lo_a, hi_a = y[index], lo[index], hi[index]
        ref_a = None if reference is None else reference[index]
        for t in range(steps):
            grad, _, logits = _input_grad(model, x_adv, y_a, loss_fn, ref_a)
            alive &= logits.argmax(1) == y_a
            # Broken points keep the iterate that broke them; the others take the plain PGD step.
            step = x_adv.add(grad.sign_(), alpha=step_size)
            torch.clamp(step, lo_a, hi_a, out=step)
            x_adv = torch.where(alive.view(view), step, x_adv)
            if compact_every and (t + 1) % compact_every == 0 and t + 1 < steps:
                best[index] = torch.where(alive.view(view), best[index], x_adv)
                broken[index] = ~alive
                keep = alive.nonzero().squeeze(1)  # the host sync: how many points are left
                index, x_adv, alive, y_a, lo_a, hi_a = (v[keep] for v in (index, x_adv, alive, y_a, lo_a, hi_a))
                ref_a = None if ref_a is None else ref_a[keep]
                if index.numel() == 0:
                    break
        if index.numel() and restarts > 1:
            # The final iterate is an iterate too; its loss ranks the restarts of unbroken points.
            with torch.no_grad():
                logits = model(x_adv)
                final_loss = loss_fn(logits, y_a, ref_a)
                alive &= logits.argmax(1) == y_a
            better = ~alive | (final_loss > best_loss[index])
            # the highest final loss so far (not the last restart's): the rule plain pgd follows
            best_loss[index] = torch.where(alive & better, final_loss, best_loss[index])
            best[index] = torch.where(better.view(view), x_adv, best[index])
        elif index.numel():
            best[index] = x_adv
        broken[index] = ~alive
    return best
