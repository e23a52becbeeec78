"""Latent-space geometry of prototype classifiers, as pure functions of tensors.

Notation: f (N, d) features, y (N,) integer labels in 0..C-1, p (C, d) prototypes (the classifier's
weights), mu_c the mean feature of class c, n_c its number of samples, P the classes with n_c > 0.
All distances are Euclidean; everything is computed in float64 on the inputs' device and returned as
Python floats (or float64 tensors), detached from any graph. `geometry_rows` applies them to a
trained classifier's features and prototypes, as rows of geometry.parquet.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..models import Classifier


def _as_f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def _check_features(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    if features.ndim != 2:
        raise ValueError(f"features of shape {tuple(features.shape)}: expected (N, d)")
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(f"labels of shape {tuple(labels.shape)}: expected ({features.shape[0]},) to match features")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels of dtype {labels.dtype}: expected integer class indices")
    if features.shape[0] == 0:
        raise ValueError("no samples: features is empty")
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes}: must be >= 1")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels span [{labels.min().item()}, {labels.max().item()}]: expected 0..{num_classes - 1}")
    if labels.device != features.device:
        raise ValueError(f"labels on {labels.device}, features on {features.device}: put both on one device")


def _check_prototypes(prototypes: torch.Tensor) -> None:
    if prototypes.ndim != 2 or prototypes.shape[0] < 2:
        raise ValueError(f"prototypes of shape {tuple(prototypes.shape)}: expected (C, d) with C >= 2")


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """mu_c = (1 / n_c) sum_{i: y_i = c} f_i, shape (C, d), float64; rows of absent classes are NaN."""
    _check_features(features, labels, num_classes)
    f, labels = _as_f64(features), labels.long()
    sums = torch.zeros(num_classes, f.shape[1], dtype=torch.float64, device=f.device).index_add_(0, labels, f)
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    return sums / counts[:, None]  # 0 / 0 = NaN for absent classes


def _present(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(labels.long(), minlength=num_classes) > 0


def intra_class_compactness(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """(1 / |P|) sum_{c in P} (1 / n_c) sum_{i: y_i = c} ||f_i - mu_c||: mean distance to the class mean,
    averaged over classes (not samples), so each present class weighs the same."""
    means = class_means(features, labels, num_classes)
    labels = labels.long()
    dist = (_as_f64(features) - means[labels]).norm(dim=1)
    per_class = torch.zeros(num_classes, dtype=torch.float64, device=dist.device).index_add_(0, labels, dist)
    counts = torch.bincount(labels, minlength=num_classes)
    present = counts > 0
    return (per_class[present] / counts[present]).mean().item()


def inter_class_separation(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """(2 / (|P| (|P| - 1))) sum_{a < b in P} ||mu_a - mu_b||: mean pairwise distance between class means.

    NaN when fewer than two classes are present (no pair to measure).
    """
    means = class_means(features, labels, num_classes)[_present(labels, num_classes)]
    if means.shape[0] < 2:
        return math.nan
    return torch.pdist(means).mean().item()


def compactness_separation_ratio(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """intra_class_compactness / inter_class_separation (lower is better separated); NaN with < 2 classes."""
    separation = inter_class_separation(features, labels, num_classes)
    compactness = intra_class_compactness(features, labels, num_classes)
    if math.isnan(separation):
        return math.nan
    if separation == 0:
        return math.inf if compactness > 0 else math.nan
    return compactness / separation


def prototype_angles(prototypes: torch.Tensor) -> torch.Tensor:
    """theta_ij = angle(p_i, p_j) in degrees, (C, C) float64, diagonal 0.

    Computed as 2 atan2(||u_i - u_j||, ||u_i + u_j||) with u = p / ||p||, which stays accurate near
    0 and 180 degrees where arccos(u_i . u_j) loses half the digits.
    """
    if prototypes.ndim != 2:
        raise ValueError(f"prototypes of shape {tuple(prototypes.shape)}: expected (C, d)")
    p = _as_f64(prototypes)
    norms = p.norm(dim=1)
    if (norms == 0).any():
        raise ValueError(f"prototypes {torch.nonzero(norms == 0).flatten().tolist()} are zero vectors: "
                         f"their angles are undefined")
    u = p / norms[:, None]
    diff = (u[:, None] - u[None]).norm(dim=-1)
    summ = (u[:, None] + u[None]).norm(dim=-1)
    return torch.rad2deg(2 * torch.atan2(diff, summ))


def simplex_angle_deg(num_classes: int) -> float:
    """Pairwise angle of the regular simplex of C points centred at the origin: arccos(-1 / (C - 1))."""
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes}: a simplex angle needs C >= 2")
    return math.degrees(math.acos(-1.0 / (num_classes - 1)))


def prototype_angle_stats(prototypes: torch.Tensor) -> dict[str, float]:
    """Angles between the C prototypes, over the C (C - 1) / 2 pairs i < j.

    min_angle_deg = min theta_ij, mean_angle_deg = mean theta_ij,
    simplex_angle_deg = arccos(-1 / (C - 1)) (the regular simplex: the most spread-out C unit vectors,
    pairwise cosine -1 / (C - 1)), simplex_deviation_deg = mean |theta_ij - simplex_angle_deg|
    (0 for a regular simplex). The simplex needs d >= C - 1; for d < C - 1 it is not attainable and
    the deviation is still reported but cannot reach 0.
    """
    _check_prototypes(prototypes)
    c = prototypes.shape[0]
    angles = prototype_angles(prototypes)
    i, j = torch.triu_indices(c, c, offset=1, device=angles.device)
    pairs = angles[i, j]
    simplex = simplex_angle_deg(c)
    return {
        "min_angle_deg": pairs.min().item(),
        "mean_angle_deg": pairs.mean().item(),
        "simplex_angle_deg": simplex,
        "simplex_deviation_deg": (pairs - simplex).abs().mean().item(),
    }


def prototype_margins(features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor) -> dict[str, float]:
    """Distances of each sample to its own prototype and to the nearest rival.

    d_own_i = ||f_i - p_{y_i}||, d_rival_i = min_{k != y_i} ||f_i - p_k||, margin_i = d_rival_i - d_own_i.
    Returns mean_dist_own, mean_dist_rival, mean_margin (means over samples) and frac_positive_margin
    = mean_i [margin_i > 0], the accuracy of the nearest-prototype rule with ties counted as errors.
    """
    _check_prototypes(prototypes)
    _check_features(features, labels, prototypes.shape[0])
    if features.shape[1] != prototypes.shape[1]:
        raise ValueError(f"features have d={features.shape[1]}, prototypes d={prototypes.shape[1]}")
    f, p, labels = _as_f64(features), _as_f64(prototypes), labels.long()
    dist = (f[:, None] - p[None]).norm(dim=-1)  # exact, no |a|^2 + |b|^2 - 2ab cancellation
    own = dist.gather(1, labels.view(-1, 1)).squeeze(1)
    rival = dist.scatter(1, labels.view(-1, 1), math.inf).min(dim=1).values
    margin = rival - own
    return {
        "mean_dist_own": own.mean().item(),
        "mean_dist_rival": rival.mean().item(),
        "mean_margin": margin.mean().item(),
        "frac_positive_margin": (margin > 0).to(torch.float64).mean().item(),
    }


def geometry_metrics(features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor,
                     num_classes: int) -> dict[str, float]:
    """All of the above as one flat dict of floats (keys are valid Parquet column names):

    intra_class_compactness, inter_class_separation, compactness_separation_ratio,
    min_angle_deg, mean_angle_deg, simplex_angle_deg, simplex_deviation_deg,
    mean_dist_own, mean_dist_rival, mean_margin, frac_positive_margin.
    """
    if prototypes.ndim != 2 or prototypes.shape[0] != num_classes:
        raise ValueError(f"prototypes of shape {tuple(prototypes.shape)}: expected ({num_classes}, d)")
    return {
        "intra_class_compactness": intra_class_compactness(features, labels, num_classes),
        "inter_class_separation": inter_class_separation(features, labels, num_classes),
        "compactness_separation_ratio": compactness_separation_ratio(features, labels, num_classes),
        **prototype_angle_stats(prototypes),
        **prototype_margins(features, labels, prototypes),
    }


# ------------------------------------------------------------------ rows of geometry.parquet


def prototypes_of(net: Classifier) -> tuple[torch.Tensor, str]:
    """The class prototypes and where they come from: the DPNP head's c_j, or for a linear softmax
    head its weight rows w_j (the closest analogue: logit_j = <z, w_j> + b_j)."""
    if net.has_prototypes:
        return net.head.prototypes().detach().float(), "prototype_head"
    if isinstance(net.head, nn.Linear):
        return net.head.weight.detach().float(), "linear_weight"
    raise TypeError(f"geometry: head {type(net.head).__name__} has neither prototypes nor linear weights")


def geometry_rows(features: dict[str, torch.Tensor], labels: torch.Tensor, net: Classifier,
                  num_classes: int, attrs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per feature set (split name -> features of the same labelled points), with the
    split's `attrs` (attack, eps, ...) and `geometry_metrics` against the model's prototypes."""
    prototypes, source = prototypes_of(net)
    rows = []
    for split, z in features.items():
        metrics = geometry_metrics(z.float().cpu(), labels.cpu(), prototypes.cpu(), num_classes)
        rows.append({"split": split, "n": int(len(labels)), "prototype_source": source, **attrs.get(split, {}),
                     **metrics})
    return rows
