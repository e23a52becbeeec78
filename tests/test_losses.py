"""Each loss term against a value computed by hand on a tiny example."""

import math

import numpy as np
import pytest
import torch

from dpnp_ray import losses

# Three 2-D prototypes and two samples, chosen so every distance is easy to do by hand.
C = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
Z = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
Y = torch.tensor([0, 1])


def test_cross_entropy_matches_hand_value():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # softmax = (1/4, 3/4)
    assert losses.cross_entropy(logits, torch.tensor([1])).item() == pytest.approx(-math.log(0.75))


def test_ppa_sqeuclidean_and_cosine():
    # ||(2,0)-(1,0)||^2 = 1, ||(0,0)-(0,1)||^2 = 1 -> mean 1
    assert losses.ppa(Z, C, Y).item() == pytest.approx(1.0)
    z = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    # cos((3,0),(1,0)) = 1 -> 0 ; cos((1,1),(0,1)) = 1/sqrt2 -> 1 - 0.7071
    expected = (0 + (1 - 1 / math.sqrt(2))) / 2
    assert losses.ppa(z, C, Y, "cosine").item() == pytest.approx(expected)


def test_npr_prototype_nearest_rival():
    # nearest rival squared distances: c0 -> c1: 2, c1 -> c0 or c2: 2, c2 -> c1: 2 -> NPR = -2
    assert losses.npr_prototype(C).item() == pytest.approx(-2.0)
    c = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    # nearest: 0->1: 1, 1->0: 1, 2->1: 16 -> -(1+1+16)/3 = -6
    assert losses.npr_prototype(c).item() == pytest.approx(-6.0)


def test_npr_prototype_is_maximal_at_regular_simplex():
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    simplex = torch.stack([angles.cos(), angles.sin()], 1)
    squeezed = torch.stack([torch.tensor([0.0, 1.9, 4.0]).cos(), torch.tensor([0.0, 1.9, 4.0]).sin()], 1)
    assert losses.npr_prototype(simplex) < losses.npr_prototype(squeezed)


def test_npr_sample_excludes_own_class():
    # sample 0 (2,0), y=0: rivals c1 (dist^2 5), c2 (9) -> 5 ; sample 1 (0,0), y=1: rivals c0, c2 both 1 -> 1
    assert losses.npr_sample(Z, C, Y).item() == pytest.approx(-(5 + 1) / 2)


def test_kl_and_consistency_directions():
    p = torch.tensor([[0.0, 0.0]])  # softmax (1/2, 1/2)
    q = torch.tensor([[0.0, math.log(3.0)]])  # (1/4, 3/4)
    kl_pq = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    kl_qp = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert losses.kl_divergence(p, q).item() == pytest.approx(kl_pq)
    assert losses.consistency(p, q, "clean_to_adv").item() == pytest.approx(kl_pq)
    assert losses.consistency(p, q, "adv_to_clean").item() == pytest.approx(kl_qp)
    assert losses.consistency(p, q, "symmetric").item() == pytest.approx((kl_pq + kl_qp) / 2)


def test_consistency_detach_clean_stops_gradient_to_clean_logits():
    clean = torch.tensor([[0.3, -0.2]], requires_grad=True)
    adv = torch.tensor([[0.1, 0.5]], requires_grad=True)
    losses.consistency(clean, adv, detach_clean=True).backward()
    assert clean.grad is None and adv.grad.abs().sum() > 0
    clean2 = clean.detach().clone().requires_grad_(True)
    losses.consistency(clean2, adv.detach(), detach_clean=False).backward()
    assert clean2.grad.abs().sum() > 0


def test_trades_loss_is_ce_plus_beta_kl():
    clean = torch.tensor([[1.0, 0.0]])
    adv = torch.tensor([[0.0, 1.0]])
    y = torch.tensor([0])
    expected = losses.cross_entropy(clean, y) + 6.0 * losses.kl_divergence(clean, adv)
    total, ce, kl = losses.trades_loss(clean, adv, y, 6.0)
    assert total.item() == pytest.approx(expected.item())
    assert (ce + 6.0 * kl).item() == pytest.approx(expected.item())
    assert losses.pgd_at_loss(adv, y).item() == pytest.approx(losses.cross_entropy(adv, y).item())


def _mart_by_hand(clean, adv, y, beta):
    """MART in float64, one example at a time, written from the paper's definition."""
    def softmax(row):
        e = np.exp(row - row.max())
        return e / e.sum()

    bce, kl = [], []
    for lc, la, t in zip(clean, adv, y):
        p, q = softmax(lc), softmax(la)
        rival = max((k for k in range(len(q)) if k != t), key=lambda k: q[k])
        bce.append(-math.log(q[t]) - math.log(1 - q[rival]))
        kl.append(sum(p[j] * math.log(p[j] / q[j]) for j in range(len(p))) * (1 - p[t]))
    return np.mean(bce) + beta * np.mean(kl), np.mean(bce), np.mean(kl)


def test_mart_loss_matches_hand_computation():
    clean = np.array([[2.0, 0.5, -1.0], [0.1, 0.3, 1.2], [-0.4, 1.5, 0.2]])
    adv = np.array([[0.5, 1.0, -0.5], [1.4, 0.2, 0.6], [0.3, -0.2, 0.9]])
    y = np.array([0, 2, 1])
    got = losses.mart_loss(torch.tensor(clean), torch.tensor(adv), torch.tensor(y), 6.0)
    want = _mart_by_hand(clean, adv, y, 6.0)
    for g, w in zip(got, want):  # fp32 arithmetic on O(1) values
        assert g.item() == pytest.approx(w, rel=1e-5)
    # The rival is the most probable wrong class, not the most probable class: in row 1 the top class is wrong.
    assert np.argmax(adv[1]) != y[1]


def test_mart_weight_uses_the_clean_true_class_probability_and_gradient_reaches_both():
    clean = torch.tensor([[9.0, 0.0], [0.0, 0.0]], requires_grad=True)  # row 0: p_y ~ 1, so its KL weight ~ 0
    adv = torch.tensor([[0.0, 2.0], [0.0, 2.0]], requires_grad=True)
    y = torch.tensor([0, 0])
    _, _, kl = losses.mart_loss(clean, adv, y, 6.0)
    per_example = losses.kl_per_example(clean, adv)
    p_y = torch.softmax(clean, 1)[:, 0]
    assert kl.item() == pytest.approx(((1 - p_y) * per_example).mean().item(), rel=1e-6)
    assert (1 - p_y[0]).item() < 2e-4 and (1 - p_y[1]).item() == pytest.approx(0.5)
    kl.backward()
    assert clean.grad.abs().sum() > 0 and adv.grad.abs().sum() > 0


def test_mart_margin_term_stays_finite_when_the_rival_is_certain():
    """-log(1 - p'_r) where 1 - p'_r underflows in fp32: log 2 - logsumexp(0, 40, 0) exactly, not inf."""
    _, bce, _ = losses.mart_loss(torch.zeros(1, 3), torch.tensor([[0.0, 40.0, 0.0]]), torch.tensor([0]), 6.0)
    ce = 40.0 + math.log1p(2 * math.exp(-40.0))
    assert bce.item() == pytest.approx(ce - (math.log(2.0) - ce), rel=1e-6)


def test_unknown_forms_are_refused():
    with pytest.raises(ValueError, match="ppa form"):
        losses.ppa(Z, C, Y, "l1")
    with pytest.raises(ValueError, match="consistency direction"):
        losses.consistency(Z, Z, "sideways")
