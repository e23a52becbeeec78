"""Loss terms as pure functions of tensors (docs/method.md#losses and #baselines).

Notation: z (N, d) features, c (C, d) prototypes, y (N,) labels, l (N, C) logits.
Nothing here knows about configs, branches or stop-gradients: callers pass the (possibly
detached) tensors each branch should see.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CE = mean_i -log softmax(l_i)[y_i]."""
    return F.cross_entropy(logits.float(), y)


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a_i - b_j||^2 for all pairs, exact (no a^2 + b^2 - 2ab cancellation)."""
    return (a.float().unsqueeze(1) - b.float().unsqueeze(0)).pow(2).sum(-1)


def ppa(z: torch.Tensor, c: torch.Tensor, y: torch.Tensor, form: str = "sqeuclidean") -> torch.Tensor:
    """Positive-prototype alignment.

    sqeuclidean: mean_i ||z_i - c_{y_i}||^2
    cosine:      mean_i (1 - cos(z_i, c_{y_i}))
    """
    own = c[y].float()
    if form == "sqeuclidean":
        return (z.float() - own).pow(2).sum(1).mean()
    if form == "cosine":
        return (1 - F.cosine_similarity(z.float(), own, dim=1)).mean()
    raise ValueError(f"ppa form {form!r}: allowed 'sqeuclidean', 'cosine'")


def _mask_self(d: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Set d[i, index[i]] to +inf so the minimum over a row picks a rival."""
    return d.scatter(1, index.view(-1, 1), float("inf"))


def npr_prototype(c: torch.Tensor) -> torch.Tensor:
    """Negative-prototype repulsion, prototype form.

    NPR(c) = -(1/C) sum_j ||c_j - c_{k(j)}||^2, k(j) = argmin_{k != j} ||c_j - c_k||.
    """
    d = _sq_dists(c, c)
    nearest = _mask_self(d, torch.arange(c.shape[0], device=c.device)).min(dim=1).values
    return -nearest.mean()


def npr_sample(z: torch.Tensor, c: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Negative-prototype repulsion, sample form.

    NPR(z, c) = -mean_i ||z_i - c_{r_i}||^2, r_i = argmin_{k != y_i} ||z_i - c_k||.
    Unbounded below on its own: only use it with a larger PPA weight.
    """
    nearest = _mask_self(_sq_dists(z, c), y).min(dim=1).values
    return -nearest.mean()


def kl_per_example(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_i || q_i) = sum_j p_ij (log p_ij - log q_ij) per row, p and q the softmaxes of the logits (fp32)."""
    log_p = F.log_softmax(p_logits.float(), dim=1)
    log_q = F.log_softmax(q_logits.float(), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1)


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) averaged over the batch: mean_i KL(p_i || q_i)."""
    return kl_per_example(p_logits, q_logits).mean()


def consistency(logits_clean: torch.Tensor, logits_adv: torch.Tensor, direction: str = "clean_to_adv",
                detach_clean: bool = True) -> torch.Tensor:
    """Clean/adversarial consistency.

    clean_to_adv: KL(p || p'); adv_to_clean: KL(p' || p); symmetric: (KL(p||p') + KL(p'||p)) / 2,
    with p = softmax(l_clean) (sg(l_clean) when detach_clean) and p' = softmax(l_adv).
    """
    if detach_clean:
        logits_clean = logits_clean.detach()
    if direction == "clean_to_adv":
        return kl_divergence(logits_clean, logits_adv)
    if direction == "adv_to_clean":
        return kl_divergence(logits_adv, logits_clean)
    if direction == "symmetric":
        return 0.5 * (kl_divergence(logits_clean, logits_adv) + kl_divergence(logits_adv, logits_clean))
    raise ValueError(f"consistency direction {direction!r}: allowed 'clean_to_adv', 'adv_to_clean', 'symmetric'")


def pgd_at_loss(logits_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Madry et al.: CE on adversarial examples."""
    return cross_entropy(logits_adv, y)


def trades_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor,
                beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TRADES (Zhang et al. 2019): CE(clean) + beta * KL(p_clean || p_adv), gradient through both.

    Returns (total, ce, kl) so that callers can log the two terms.
    """
    ce = cross_entropy(logits_clean, y)
    kl = kl_divergence(logits_clean, logits_adv)
    return ce + beta * kl, ce, kl


def mart_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor,
              beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MART (Wang et al. 2020): BCE(p', y) + beta * mean_i KL(p_i || p'_i) * (1 - p_{i,y_i}).

    p = softmax(clean logits), p' = softmax(adversarial logits); the boosted cross-entropy is
    BCE(p', y) = mean_i [-log p'_{i,y_i} - log(1 - max_{k != y_i} p'_{ik})] and the weight 1 - p_y uses
    the clean probability of the true class. The gradient flows through p and p' (as in the authors'
    code). log(1 - p'_r) is computed as logsumexp_{j != r} l'_j - logsumexp_j l'_j: exact, where the
    authors' code writes log(1.0001 - p'_r + 1e-12). Returns (total, bce, weighted kl) for logging.
    """
    lc, la = logits_clean.float(), logits_adv.float()
    rival = la.scatter(1, y.view(-1, 1), float("-inf")).argmax(1)  # the most probable wrong class
    others = la.scatter(1, rival.view(-1, 1), float("-inf"))
    log_not_rival = torch.logsumexp(others, 1) - torch.logsumexp(la, 1)
    bce = cross_entropy(la, y) - log_not_rival.mean()
    p_true = F.softmax(lc, dim=1).gather(1, y.view(-1, 1)).squeeze(1)
    kl = (kl_per_example(lc, la) * (1 - p_true)).mean()
    return bce + beta * kl, bce, kl
