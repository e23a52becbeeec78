"""The dual-branch step: where gradients go, what each switch removes, one backward per step."""

import pytest
import torch

from dpnp_ray import losses
from dpnp_ray.steps import DualBranchForward
from dpnp_ray.models import build_model
from dpnp_ray.devices import Precision
from dpnp_ray.steps import LOSSES, PROTOTYPE_DETACH, method_loss, train_step
from dpnp_ray.methods import METHODS

from .support.nets import batch, cfg_of, make_net

FP32 = Precision.choose("fp32", torch.device("cpu"))


def grads(cfg, x, x_adv, y, seed=0):
    """Gradients of the full training loss w.r.t. prototypes and the extractor."""
    net = make_net(cfg.uses_prototypes, seed)
    forward = DualBranchForward(net)
    dc, da = PROTOTYPE_DETACH[cfg.prototype_update]
    loss, terms = method_loss(forward(x, x_adv, detach_clean=dc, detach_adv=da), y, cfg)
    loss.backward()
    proto = net.head.raw.grad.clone() if net.has_prototypes else None
    extractor = torch.cat([p.grad.flatten() for p in net.backbone.parameters() if p.grad is not None])
    return proto, extractor, terms


@pytest.mark.parametrize("npr_form, extra", [("prototype", {}), ("sample", {"lambda_ppa": 0.5, "lambda_npr": 0.1})])
def test_clean_update_prototypes_get_no_gradient_from_adversarial_branch(npr_form, extra):
    cfg = cfg_of(prototype_update="clean", npr_form=npr_form, **extra)
    x, y = batch(0)
    x_adv1, _ = batch(1)
    x_adv2, _ = batch(2)
    p1, e1, _ = grads(cfg, x, x_adv1, y)
    p2, e2, _ = grads(cfg, x, x_adv2, y)
    # Changing only the adversarial inputs leaves the prototype gradient exactly unchanged...
    assert torch.equal(p1, p2)
    assert p1.abs().sum() > 0
    # ...while the extractor's gradient changes: it learns from the adversarial branch too.
    assert not torch.allclose(e1, e2)


def test_adversarial_branch_gradient_to_prototypes_is_exactly_zero():
    """Backpropagate the adversarial-branch terms alone: prototypes get 0 (clean), non-zero (adversarial)."""
    x, y = batch(0)
    x_adv, _ = batch(1)
    for update, expect_zero in [("clean", True), ("adversarial", False), ("both", False)]:
        cfg = cfg_of(prototype_update=update)
        net = make_net()
        dc, da = PROTOTYPE_DETACH[update]
        _, terms = method_loss(DualBranchForward(net)(x, x_adv, detach_clean=dc, detach_adv=da), y, cfg)
        adv_part = terms["ce_adv"] + cfg.lambda_ppa * terms["ppa_adv"] + cfg.lambda_cons * terms["cons"]
        adv_part.backward()
        g = net.head.raw.grad
        if expect_zero:
            assert g is None or torch.count_nonzero(g) == 0, update
        else:
            assert g is not None and g.abs().sum() > 0, update
        extractor = [p.grad for p in net.backbone.parameters()]
        assert all(e is not None for e in extractor) and sum(e.abs().sum() for e in extractor) > 0


def test_adversarial_update_clean_branch_gives_no_prototype_gradient_except_npr():
    x, y = batch(0)
    x_adv, _ = batch(1)
    cfg = cfg_of(prototype_update="adversarial", use_npr=False)
    net = make_net()
    dc, da = PROTOTYPE_DETACH["adversarial"]
    _, terms = method_loss(DualBranchForward(net)(x, x_adv, detach_clean=dc, detach_adv=da), y, cfg)
    (terms["ce"] + cfg.lambda_ppa * terms["ppa"]).backward()
    assert net.head.raw.grad is None or torch.count_nonzero(net.head.raw.grad) == 0


@pytest.mark.parametrize("switch, weight, names", [
    ("use_ppa", "lambda_ppa", ["ppa", "ppa_adv"]),
    ("use_npr", "lambda_npr", ["npr"]),
    ("use_consistency", "lambda_cons", ["cons"]),
])
def test_switching_a_term_off_removes_exactly_that_term(switch, weight, names):
    x, y = batch(0)
    x_adv, _ = batch(1)
    full = cfg_of()
    off = cfg_of(**{switch: False})
    _, _, terms_full = grads(full, x, x_adv, y)
    _, _, terms_off = grads(off, x, x_adv, y)
    assert not any(n in terms_off for n in names)
    removed = 0.0
    for n in names:
        scale = full.beta_adv if n.endswith("_adv") else 1.0
        removed += scale * getattr(full, weight) * terms_full[n].item()
    assert terms_full["total"].item() - terms_off["total"].item() == pytest.approx(removed, rel=1e-5, abs=1e-6)
    # every other term is unchanged
    for k in terms_off:
        if k != "total":
            assert terms_off[k].item() == pytest.approx(terms_full[k].item(), rel=1e-6)


def test_composite_equals_paper_formula():
    x, y = batch(0)
    x_adv, _ = batch(1)
    cfg = cfg_of(lambda_ppa=0.3, lambda_npr=0.2, lambda_cons=0.7, beta_adv=0.5)
    _, _, t = grads(cfg, x, x_adv, y)
    expected = (t["ce"] + 0.3 * t["ppa"] + 0.2 * t["npr"] + 0.5 * (t["ce_adv"] + 0.3 * t["ppa_adv"])
                + 0.7 * t["cons"])
    assert t["total"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_dpnp_method_is_clean_only_and_baselines_have_linear_heads():
    x, y = batch(0)
    net = make_net()
    _, terms = method_loss(DualBranchForward(net)(x, None), y, cfg_of(method="dpnp"))
    assert set(terms) == {"ce", "ppa", "npr", "total"}
    for method, expected in [("pgd_at", {"ce_adv", "total"}), ("trades", {"ce", "trades_kl", "total"})]:
        cfg = cfg_of(method=method)
        assert not cfg.uses_prototypes
        lin = make_net(prototypes=False)
        x_adv, _ = batch(1)
        _, terms = method_loss(DualBranchForward(lin)(None if method == "pgd_at" else x, x_adv), y, cfg)
        assert set(terms) == expected


def test_every_method_loss_is_registered_and_every_loss_is_used():
    assert {METHODS.get(m).loss for m in METHODS} == set(LOSSES.names())


@pytest.mark.parametrize("method", METHODS.names())
def test_train_step_runs_one_backward_and_updates(method, monkeypatch):
    cfg = cfg_of(method=method, train_attack_steps=2)
    net = make_net(cfg.uses_prototypes)
    forward = DualBranchForward(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    calls = []
    real_backward = torch.autograd.backward
    monkeypatch.setattr(torch.autograd, "backward", lambda *a, **k: (calls.append(1), real_backward(*a, **k))[1])
    before = [p.detach().clone() for p in net.parameters()]
    x, y = batch(0)
    stats = train_step(forward, net, x, y, cfg, eps=0.1, optimizer=opt, precision=FP32,
                       generator=torch.Generator().manual_seed(0))
    assert len(calls) == 1
    assert all(not v.requires_grad for v in stats.values())
    assert torch.isfinite(stats["loss_total"])
    changed = [not torch.equal(b, p) for b, p in zip(before, net.parameters())]
    assert all(changed), "every parameter is updated"
    spec = METHODS.get(method)
    assert net.has_prototypes == spec.prototype_head
    assert ("correct_clean" in stats) == spec.clean_branch  # the branches the method runs
    assert ("correct_adv" in stats) == spec.adversarial


def test_projected_prototypes_stay_on_the_sphere():
    cfg = cfg_of(prototype_constraint="project", train_attack_steps=1)
    torch.manual_seed(0)
    net = build_model(backbone="small_cnn", num_classes=3, in_channels=1, mean=(0.5,), std=(0.5,),
                      prototype_head=True, prototype_radius=2.0, prototype_constraint="project")
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    x, y = batch(0)
    train_step(DualBranchForward(net), net, x, y, cfg, eps=0.1, optimizer=opt, precision=FP32)
    assert torch.allclose(net.head.prototypes().norm(dim=1), torch.full((3,), 2.0), atol=1e-5)
    normalized = make_net()
    assert torch.allclose(normalized.head.prototypes().norm(dim=1), torch.full((3,), 2.0), atol=1e-5)



def clipped_update(grad_clip_norm: float, scaler=None) -> list[torch.Tensor]:
    """The parameter change of one train_step with plain SGD at lr 1 (the update is minus the used gradient)."""
    cfg = cfg_of(grad_clip_norm=grad_clip_norm, train_attack_steps=1)
    net = make_net()
    before = [p.detach().clone() for p in net.parameters()]
    x, y = batch(0)
    train_step(DualBranchForward(net), net, x, y, cfg, eps=0.1, optimizer=torch.optim.SGD(net.parameters(), lr=1.0),
               precision=FP32, generator=torch.Generator().manual_seed(0), scaler=scaler)
    return [p.detach() - b for p, b in zip(net.parameters(), before)]


def norm(tensors: list[torch.Tensor]) -> float:
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in tensors)))


def test_gradient_clip_bounds_the_step_and_keeps_its_direction():
    free, never = clipped_update(0.0), clipped_update(1e30)
    assert all(torch.equal(a, b) for a, b in zip(free, never)), "a clip above the norm changes nothing"
    limit = norm(free) / 4
    clipped = clipped_update(limit)
    # clip_grad_norm_ scales by c / (|g| + 1e-6); the rest is fp32 rounding of the parameters' differences
    assert norm(clipped) == pytest.approx(limit, rel=1e-4)
    cosine = sum(float((a.double() * b.double()).sum()) for a, b in zip(clipped, free)) / (norm(clipped) * norm(free))
    assert cosine == pytest.approx(1.0, abs=1e-6)


def test_gradient_clip_acts_on_the_unscaled_gradient_under_a_grad_scaler():
    """fp16's scaler multiplies the loss by 2^10 here: the clip must see the true gradient, so the step is c."""
    limit = norm(clipped_update(0.0)) / 4
    clipped = clipped_update(limit, scaler=torch.amp.GradScaler("cpu", init_scale=2.0 ** 10))
    assert norm(clipped) == pytest.approx(limit, rel=1e-4)

# ---------------------------------------------------------------------------- MART and the mechanism controls
def two_steps(cfg, net):
    """Two real training steps (attack included); returns the last step's stats."""
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    for seed in (0, 1):
        x, y = batch(seed)
        stats = train_step(DualBranchForward(net), net, x, y, cfg, eps=0.1, optimizer=opt, precision=FP32,
                           generator=g)
    return stats


def test_mart_terms_and_its_attack_is_pgd_on_ce_whatever_train_attack_loss_says():
    from dpnp_ray.steps import training_adversary

    x, y = batch(0)
    net = make_net(prototypes=False)
    args = (net, x, y)
    mart = training_adversary(*args, cfg_of(method="mart", train_attack_loss="cw", train_attack_steps=3), 0.1,
                              torch.Generator().manual_seed(5), FP32)
    ce = training_adversary(*args, cfg_of(method="pgd_at", train_attack_loss="ce", train_attack_steps=3), 0.1,
                            torch.Generator().manual_seed(5), FP32)
    cw = training_adversary(*args, cfg_of(method="pgd_at", train_attack_loss="cw", train_attack_steps=3), 0.1,
                            torch.Generator().manual_seed(5), FP32)
    assert torch.equal(mart, ce) and not torch.equal(mart, cw)
    cfg = cfg_of(method="mart", mart_beta=2.5)
    _, terms = method_loss(DualBranchForward(net)(x, mart), y, cfg)
    assert set(terms) == {"mart_bce", "mart_kl", "total"}
    assert terms["total"].item() == pytest.approx((terms["mart_bce"] + 2.5 * terms["mart_kl"]).item(), rel=1e-6)


def test_hybrid_linear_is_the_composite_loss_without_prototype_terms_on_a_linear_head():
    x, y = batch(0)
    x_adv, _ = batch(1)
    cfg = cfg_of(method="hybrid_linear", lambda_cons=0.7, beta_adv=0.5)  # use_ppa / use_npr left on: no prototypes
    net = make_net(prototypes=False)
    _, terms = method_loss(DualBranchForward(net)(x, x_adv), y, cfg)
    assert set(terms) == {"ce", "ce_adv", "cons", "total"}
    expected = terms["ce"] + 0.5 * terms["ce_adv"] + 0.7 * terms["cons"]
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    # The same numbers as Adv-DPNP's formula with PPA and NPR off, computed by the same function.
    assert torch.equal(terms["cons"], losses.consistency(net(x), net(x_adv)))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    stats = two_steps(cfg, net)
    assert isinstance(net.head, torch.nn.Linear) and {"loss_ce", "loss_ce_adv", "loss_cons"} <= set(stats)
    assert all(not torch.equal(before[n], p) for n, p in net.named_parameters())  # head and extractor train


def test_proto_ce_is_adversarial_ce_on_prototype_logits_and_trains_the_prototypes():
    x, y = batch(0)
    x_adv, _ = batch(1)
    cfg = cfg_of(method="proto_ce")  # prototype_update='clean' by default: the only branch must still train c
    net = make_net()
    _, terms = method_loss(DualBranchForward(net)(None, x_adv), y, cfg)
    assert set(terms) == {"ce_adv", "total"}
    assert terms["total"].item() == pytest.approx(losses.cross_entropy(net(x_adv), y).item(), rel=1e-6)
    before = net.head.raw.detach().clone()
    stats = two_steps(cfg, net)
    assert "correct_clean" not in stats and not torch.equal(before, net.head.raw)
    assert net.head.raw.grad.abs().sum() > 0


def test_fixed_simplex_prototypes_never_change_while_the_extractor_trains():
    cfg = cfg_of(prototype_mode="fixed_simplex", train_attack_steps=2)
    torch.manual_seed(0)
    net = build_model(backbone="small_cnn", num_classes=3, in_channels=1, mean=(0.5,), std=(0.5,),
                      prototype_head=True, prototype_radius=2.0, prototype_mode="fixed_simplex")
    simplex = net.head.prototypes().clone()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    stats = two_steps(cfg, net)
    assert torch.equal(net.head.prototypes(), simplex)
    assert all(not n.startswith("head.") for n in before)  # the head holds no parameter at all
    assert all(not torch.equal(before[n], p) for n, p in net.named_parameters())
    assert {"loss_ce", "loss_ppa", "loss_ce_adv", "loss_cons"} <= set(stats)
    # NPR of a regular simplex is at its minimum -2 C a^2 / (C - 1) and carries no gradient.
    assert stats["loss_npr"].item() == pytest.approx(-2 * 3 * 2.0 ** 2 / 2, rel=1e-5)
