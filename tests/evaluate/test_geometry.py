"""Tests of dpnp_ray.evaluate.geometry against values worked out by hand on tiny fixed examples."""

from __future__ import annotations

import math

import pytest
import torch

from dpnp_ray.evaluate import geometry as G
from dpnp_ray.models import build_model


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def labels(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


# Class 0: (0,0), (2,0), (1,3) -> mean (1,1), distances sqrt2, sqrt2, 2.
# Class 2: (10,0), (14,0)      -> mean (12,0), distances 2, 2. Class 1 absent.
FEATS = t([[0, 0], [2, 0], [1, 3], [10, 0], [14, 0]])
LABELS = labels([0, 0, 0, 2, 2])


def test_class_means():
    means = G.class_means(FEATS, LABELS, 3)
    assert means.dtype == torch.float64 and means.shape == (3, 2)
    assert means[0].tolist() == [1.0, 1.0] and means[2].tolist() == [12.0, 0.0]
    assert torch.isnan(means[1]).all()


def test_intra_class_compactness_averages_over_classes():
    expected = ((2 * math.sqrt(2) + 2) / 3 + 2) / 2  # classes weigh the same, whatever their size
    assert G.intra_class_compactness(FEATS, LABELS, 3) == pytest.approx(expected, rel=1e-12)


def test_inter_class_separation():
    assert G.inter_class_separation(FEATS, LABELS, 3) == pytest.approx(math.sqrt(122), rel=1e-12)
    # three class means at (0,0), (3,0), (0,4): pairwise 3, 4, 5
    f = t([[0, 0], [3, 0], [0, 4], [-1, 0], [4, 0], [0, 5], [1, 0], [2, 0], [0, 3]])
    y = labels([0, 1, 2, 0, 1, 2, 0, 1, 2])
    assert G.inter_class_separation(f, y, 3) == pytest.approx(4.0, rel=1e-12)
    # compactness: class 0 {0,-1,1} -> 2/3, class 1 {3,4,2} -> 2/3, class 2 {4,5,3} -> 2/3
    assert G.intra_class_compactness(f, y, 3) == pytest.approx(2 / 3, rel=1e-12)
    assert G.compactness_separation_ratio(f, y, 3) == pytest.approx((2 / 3) / 4, rel=1e-12)


def test_ratio():
    expected = ((2 * math.sqrt(2) + 2) / 3 + 2) / 2 / math.sqrt(122)
    assert G.compactness_separation_ratio(FEATS, LABELS, 3) == pytest.approx(expected, rel=1e-12)


def test_single_class():
    f, y = t([[0, 0], [0, 2]]), labels([1, 1])
    assert G.intra_class_compactness(f, y, 4) == pytest.approx(1.0)
    assert math.isnan(G.inter_class_separation(f, y, 4))
    assert math.isnan(G.compactness_separation_ratio(f, y, 4))


def test_coincident_means():
    f, y = t([[1, 0], [-1, 0], [0, 1], [0, -1]]), labels([0, 0, 1, 1])  # both means at the origin
    assert G.inter_class_separation(f, y, 2) == 0.0
    assert G.compactness_separation_ratio(f, y, 2) == math.inf


def test_angles_three_at_120_degrees():
    p = t([[math.cos(a), math.sin(a)] for a in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)]) * t([[1], [2], [0.5]])
    angles = G.prototype_angles(p)
    assert angles.shape == (3, 3) and angles.dtype == torch.float64
    assert torch.diagonal(angles).tolist() == [0.0, 0.0, 0.0]
    off = angles[~torch.eye(3, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, 120.0), atol=1e-5)  # float32 inputs
    stats = G.prototype_angle_stats(p)
    assert stats["min_angle_deg"] == pytest.approx(120, abs=1e-5)
    assert stats["mean_angle_deg"] == pytest.approx(120, abs=1e-5)
    assert stats["simplex_angle_deg"] == pytest.approx(120, abs=1e-12)
    assert stats["simplex_deviation_deg"] == pytest.approx(0, abs=1e-5)


def test_square_of_four_in_2d():
    # adjacent pairs 90 degrees (4 of them), opposite pairs 180 (2); simplex for C=4 is arccos(-1/3).
    p = torch.tensor([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float64)
    simplex = math.degrees(math.acos(-1 / 3))
    stats = G.prototype_angle_stats(p)
    assert stats["min_angle_deg"] == pytest.approx(90, abs=1e-12)
    assert stats["mean_angle_deg"] == pytest.approx(120, abs=1e-12)
    assert stats["simplex_angle_deg"] == pytest.approx(109.47122063449069, abs=1e-12) == simplex
    assert stats["simplex_deviation_deg"] == pytest.approx((4 * (simplex - 90) + 2 * (180 - simplex)) / 6, abs=1e-12)


def test_regular_tetrahedron_is_the_simplex():
    p = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64)
    stats = G.prototype_angle_stats(p * 3.0)
    assert stats["simplex_deviation_deg"] == pytest.approx(0, abs=1e-12)
    assert stats["min_angle_deg"] == pytest.approx(stats["simplex_angle_deg"], abs=1e-12)


def test_two_opposite_prototypes():
    stats = G.prototype_angle_stats(torch.tensor([[2.0, 0.0], [-1.0, 0.0]]))
    assert stats["simplex_angle_deg"] == 180.0
    assert stats["min_angle_deg"] == pytest.approx(180, abs=1e-12)
    assert stats["simplex_deviation_deg"] == pytest.approx(0, abs=1e-12)


def test_small_angles_are_accurate():
    a = 1e-7  # arccos(cos a) would return 0 here
    p = torch.tensor([[1.0, 0.0], [math.cos(a), math.sin(a)]], dtype=torch.float64)
    assert G.prototype_angles(p)[0, 1].item() == pytest.approx(math.degrees(a), rel=1e-6)


def test_zero_prototype_rejected():
    with pytest.raises(ValueError, match="zero vectors"):
        G.prototype_angles(t([[1, 0], [0, 0]]))
    with pytest.raises(ValueError, match="C >= 2"):
        G.prototype_angle_stats(t([[1, 0]]))


# Prototypes (0,0), (4,0), (0,4), all shifted by (1,1) so none is the zero vector (distances do not
# see the shift; angles would be undefined at the origin).
SHIFT = t([[1, 1]])
PROTOS = t([[0, 0], [4, 0], [0, 4]]) + SHIFT
# sample        label  d_own   d_rival              margin
# (1,0)         0      1       min(3, sqrt17) = 3   2
# (3,0)         0      3       1                    -2
# (0,3)         2      1       min(3, 5) = 3        2
# (2,2)         1      sqrt8   min(sqrt8, sqrt8)    0  (a tie: not positive)
M_FEATS = t([[1, 0], [3, 0], [0, 3], [2, 2]]) + SHIFT
M_LABELS = labels([0, 0, 2, 1])


def test_prototype_margins():
    m = G.prototype_margins(M_FEATS, M_LABELS, PROTOS)
    r8 = math.sqrt(8)
    assert m["mean_dist_own"] == pytest.approx((1 + 3 + 1 + r8) / 4, rel=1e-7)
    assert m["mean_dist_rival"] == pytest.approx((3 + 1 + 3 + r8) / 4, rel=1e-7)
    assert m["mean_margin"] == pytest.approx(0.5, abs=1e-7)
    assert m["frac_positive_margin"] == 0.5


def test_geometry_metrics_is_flat_and_consistent():
    f = torch.cat([M_FEATS, t([[1, 6]])])
    y = torch.cat([M_LABELS, labels([2])])
    out = G.geometry_metrics(f, y, PROTOS, 3)
    assert list(out) == ["intra_class_compactness", "inter_class_separation", "compactness_separation_ratio",
                         "min_angle_deg", "mean_angle_deg", "simplex_angle_deg", "simplex_deviation_deg",
                         "mean_dist_own", "mean_dist_rival", "mean_margin", "frac_positive_margin"]
    assert all(isinstance(v, float) for v in out.values())
    assert all(k.isidentifier() and k == k.lower() for k in out)
    assert out["intra_class_compactness"] == G.intra_class_compactness(f, y, 3)
    assert out["inter_class_separation"] == G.inter_class_separation(f, y, 3)
    assert out == {**out, **G.prototype_angle_stats(PROTOS), **G.prototype_margins(f, y, PROTOS)}


def test_inputs_with_grad_and_int32_labels():
    f = FEATS.clone().requires_grad_(True)
    assert G.intra_class_compactness(f, LABELS.int(), 3) == pytest.approx(G.intra_class_compactness(FEATS, LABELS, 3))
    m = G.prototype_margins(M_FEATS, M_LABELS.int(), PROTOS.clone().requires_grad_(True))
    assert m["frac_positive_margin"] == 0.5


def test_input_errors():
    with pytest.raises(ValueError, match="expected 0..2"):
        G.class_means(FEATS, labels([0, 0, 0, 2, 3]), 3)
    with pytest.raises(ValueError, match="labels of shape"):
        G.class_means(FEATS, labels([0, 0]), 3)
    with pytest.raises(ValueError, match="integer"):
        G.class_means(FEATS, LABELS.float(), 3)
    with pytest.raises(ValueError, match="empty"):
        G.intra_class_compactness(torch.zeros(0, 2), labels([]), 3)
    with pytest.raises(ValueError, match=r"expected \(N, d\)"):
        G.class_means(torch.zeros(5), LABELS, 3)
    with pytest.raises(ValueError, match="d=3"):
        G.prototype_margins(M_FEATS, M_LABELS, torch.ones(3, 3))
    with pytest.raises(ValueError, match=r"expected \(4, d\)"):
        G.geometry_metrics(M_FEATS, M_LABELS, PROTOS, 4)


def test_geometry_of_a_linear_head_uses_its_weight_rows():
    torch.manual_seed(0)
    net = build_model(backbone="small_cnn", num_classes=10, in_channels=1, mean=(0.3,), std=(0.4,),
                      prototype_head=False).eval()
    x, y = torch.rand(40, 1, 8, 8), torch.arange(40) % 10
    with torch.no_grad():
        z = net.features(x)
    rows = G.geometry_rows({"test": z}, y, net, 10, {})
    assert rows[0]["prototype_source"] == "linear_weight" and rows[0]["n"] == 40
    assert 0 <= rows[0]["frac_positive_margin"] <= 1
