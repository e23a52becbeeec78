"""Backbones, the DPNP prototype head, and the classifier that joins them.

Every model takes images in [0, 1] pixel space and normalises them itself, so attacks
never need to know a dataset's mean and std.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")
"""name -> factory(in_channels, final_relu=True) returning a module with an `out_dim` attribute.

Every backbone ends in ReLU then global average pooling; `final_relu=False` drops that last
ReLU (features may then be negative) and changes nothing else, parameters included.
"""


# ---------------------------------------------------------------------------- layers
class Normalize(nn.Module):
    """(x - mean) / std per channel; lives inside the model so attacks work on [0, 1] pixels."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@BACKBONES.register("small_cnn")
class SmallCNN(nn.Module):
    """Three conv blocks and global average pooling: for digits (8x8) and tests, any input size."""

    out_dim = 128

    def __init__(self, in_channels: int = 1, final_relu: bool = True):
        super().__init__()

        def block(cin: int, cout: int, stride: int, relu: bool = True) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                *([nn.ReLU()] if relu else []),
            )

        self.layers = nn.Sequential(block(in_channels, 32, 1), block(32, 64, 2), block(64, 128, 2, final_relu))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer's output before pooling."""
        return self.layers(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.final_relu = True  # False only in the network's last block (ResNet18(final_relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(out) if self.final_relu else out


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, drop: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.drop = drop
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = F.relu(self.bn2(out))
        if self.drop > 0:
            out = F.dropout(out, self.drop, self.training)
        return self.conv2(out) + shortcut


def _stage(block: type, cin: int, cout: int, count: int, stride: int, **kw) -> tuple[nn.Sequential, int]:
    layers = []
    for s in [stride] + [1] * (count - 1):
        layers.append(block(cin, cout, s, **kw))
        cin = cout
    return nn.Sequential(*layers), cout


@BACKBONES.register("resnet18")
class ResNet18(nn.Module):
    """CIFAR ResNet-18 (3x3 stem, no max-pool), 512-d features."""

    out_dim = 512

    def __init__(self, in_channels: int = 3, final_relu: bool = True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        stages, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            stage, cin = _stage(BasicBlock, cin, cout, 2, stride)
            stages.append(stage)
        self.stages = nn.Sequential(*stages)
        self.stages[-1][-1].final_relu = final_relu

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's output before pooling."""
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))


@BACKBONES.register("preact_resnet18")
class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 (He et al. 2016; Rice et al.'s robust-overfitting setup), 512-d."""

    out_dim = 512

    def __init__(self, in_channels: int = 3, final_relu: bool = True):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        stages, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            stage, cin = _stage(PreActBlock, cin, cout, 2, stride)
            stages.append(stage)
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(512)
        self.final_relu = final_relu

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The final BN (and ReLU) output before pooling."""
        out = self.bn(self.stages(self.stem(x)))
        return F.relu(out) if self.final_relu else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))


class WideResNet(nn.Module):
    """WideResNet-depth-width (Zagoruyko & Komodakis), pre-activation blocks."""

    def __init__(self, in_channels: int = 3, depth: int = 34, width: int = 10, drop: float = 0.0,
                 final_relu: bool = True):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth={depth}: must be 6n+4")
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        stages, cin = [], widths[0]
        for cout, stride in zip(widths[1:], (1, 2, 2)):
            stage, cin = _stage(PreActBlock, cin, cout, n, stride, drop=drop)
            stages.append(stage)
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(widths[-1])
        self.out_dim = widths[-1]
        self.final_relu = final_relu

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The final BN (and ReLU) output before pooling."""
        out = self.bn(self.stages(self.stem(x)))
        return F.relu(out) if self.final_relu else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))


@BACKBONES.register("wrn_34_10")
def wrn_34_10(in_channels: int = 3, final_relu: bool = True) -> WideResNet:
    """WideResNet-34-10, 640-d features: the field's large CIFAR model."""
    return WideResNet(in_channels, depth=34, width=10, final_relu=final_relu)


# ---------------------------------------------------------------------------- feature heads
@dataclass(frozen=True)
class FeatureHead:
    """How the features z are read off the backbone (docs/method.md#feature-head)."""

    final_relu: bool  # keep the backbone's last ReLU (features >= 0 unless projected)
    projection: bool  # always a linear projection (to feature_dim, or the backbone's width if 0)


FEATURE_HEADS: Registry[FeatureHead] = Registry("feature head")
FEATURE_HEADS.register("none")(FeatureHead(final_relu=True, projection=False))  # a projection only if feature_dim
FEATURE_HEADS.register("linear")(FeatureHead(final_relu=True, projection=True))
FEATURE_HEADS.register("no_final_relu")(FeatureHead(final_relu=False, projection=False))


# ---------------------------------------------------------------------------- heads
def prototype_logits(z: torch.Tensor, prototypes: torch.Tensor, form: str = "dot", scale: float = 1.0) -> torch.Tensor:
    """Logits from features and prototypes (the prototypes are the classifier weights).

    dot:    l_ij = <z_i, c_j>
    cosine: l_ij = s * cos(z_i, c_j)
    """
    if form == "dot":
        return z @ prototypes.t()
    if form == "cosine":
        return scale * F.normalize(z, dim=1) @ F.normalize(prototypes, dim=1).t()
    raise ValueError(f"logit form {form!r}: allowed 'dot', 'cosine'")


def regular_simplex(num_classes: int, dim: int, radius: float) -> torch.Tensor:
    """C points in R^d (d >= C - 1) at norm `radius`, every pair the same distance apart, summing to 0.

    The centred one-hot vectors e_j - 1/C span the (C - 1)-dimensional plane orthogonal to the all-ones
    vector; their coordinates in an orthonormal basis of that plane (its leading right singular vectors)
    keep every inner product, so they fit in C - 1 dimensions; the other d - C + 1 coordinates are 0.
    """
    if num_classes < 2 or dim < num_classes - 1:
        raise ValueError(f"a regular simplex of {num_classes} prototypes needs num_classes >= 2 and "
                         f"dim >= {num_classes - 1}; got dim={dim}")
    centered = torch.eye(num_classes, dtype=torch.float64) - 1.0 / num_classes
    basis = torch.linalg.svd(centered).Vh[: num_classes - 1]
    points = torch.zeros(num_classes, dim, dtype=torch.float64)
    points[:, : num_classes - 1] = centered @ basis.t()
    return (radius * F.normalize(points, dim=1)).float()


class PrototypeHead(nn.Module):
    """One prototype per class on a sphere of radius alpha; also the classifier weights.

    constraint="normalize": c_j = alpha * v_j / ||v_j|| (holds by construction).
    constraint="project": c_j = v_j, projected back onto the sphere after each optimizer step
    (call `project_()`).
    fixed_simplex=True: c is a regular simplex of radius alpha held in a buffer: no parameter, never trained.
    """

    def __init__(self, num_classes: int, dim: int, radius: float, logit_form: str = "dot",
                 logit_scale: float = 10.0, constraint: str = "normalize", fixed_simplex: bool = False):
        super().__init__()
        if constraint not in ("normalize", "project"):
            raise ValueError(f"prototype constraint {constraint!r}: allowed 'normalize', 'project'")
        self.radius = radius
        self.logit_form = logit_form
        self.logit_scale = logit_scale
        self.constraint = constraint
        self.fixed_simplex = fixed_simplex
        if fixed_simplex:
            self.register_buffer("fixed", regular_simplex(num_classes, dim, radius))
        else:
            raw = torch.randn(num_classes, dim)
            self.raw = nn.Parameter(radius * F.normalize(raw, dim=1))

    def prototypes(self) -> torch.Tensor:
        if self.fixed_simplex:
            return self.fixed
        if self.constraint == "normalize":
            return self.radius * F.normalize(self.raw, dim=1)
        return self.raw

    @torch.no_grad()
    def project_(self) -> None:
        if self.constraint == "project" and not self.fixed_simplex:
            self.raw.copy_(self.radius * F.normalize(self.raw, dim=1))

    def logits(self, z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        return prototype_logits(z, prototypes, self.logit_form, self.logit_scale)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.logits(z, self.prototypes())


class Classifier(nn.Module):
    """normalize -> backbone -> optional linear projection -> head. forward(x) gives logits."""

    def __init__(self, normalize: Normalize, backbone: nn.Module, head: nn.Module,
                 projection: nn.Module | None = None):
        super().__init__()
        self.normalize = normalize
        self.backbone = backbone
        self.projection = projection if projection is not None else nn.Identity()
        self.head = head

    @property
    def has_prototypes(self) -> bool:
        return isinstance(self.head, PrototypeHead)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.backbone(self.normalize(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(*, backbone: str, num_classes: int, in_channels: int, mean: Sequence[float],
                std: Sequence[float], prototype_head: bool, feature_dim: int = 0, prototype_radius: float = 3.0,
                logit_form: str = "dot", logit_scale: float = 10.0, prototype_constraint: str = "normalize",
                feature_head: str = "none", prototype_mode: str = "learned") -> Classifier:
    """A classifier with a prototype head (DPNP methods) or a softmax linear head (baselines).

    feature_head (FEATURE_HEADS): none: backbone, ReLU, pooling (and a linear projection if
    feature_dim > 0); linear: always a linear projection, no ReLU after it; no_final_relu: the
    backbone's last ReLU removed. prototype_mode: learned, or fixed_simplex (PrototypeHead).
    """
    if prototype_mode not in ("learned", "fixed_simplex"):
        raise ValueError(f"prototype_mode {prototype_mode!r}: allowed 'learned', 'fixed_simplex'")
    kind = FEATURE_HEADS.get(feature_head)
    body = BACKBONES.get(backbone)(in_channels, final_relu=kind.final_relu)
    dim = body.out_dim
    projection = None
    if feature_dim or kind.projection:
        projection = nn.Linear(dim, feature_dim or dim)
        dim = feature_dim or dim
    if prototype_head:
        head: nn.Module = PrototypeHead(num_classes, dim, prototype_radius, logit_form, logit_scale, prototype_constraint,
                                        fixed_simplex=prototype_mode == "fixed_simplex")
    else:
        head = nn.Linear(dim, num_classes)
    return Classifier(Normalize(mean, std), body, head, projection)
