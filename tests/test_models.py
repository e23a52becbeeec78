import math

import pytest
import torch

from dpnp_ray.config import ConfigError, ExperimentConfig
from dpnp_ray.models import (BACKBONES, FEATURE_HEADS, Normalize, PrototypeHead, build_model, prototype_logits,
                             regular_simplex)


#: the feature widths of the shipped backbones (a backbone added later is held to its own out_dim)
KNOWN_WIDTHS = {"small_cnn": 128, "resnet18": 512, "preact_resnet18": 512, "wrn_34_10": 640}


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_backbone_gives_features_and_logits(name):
    torch.manual_seed(0)
    net = build_model(backbone=name, num_classes=10, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3,
                      prototype_head=True)
    dim = net.backbone.out_dim
    assert dim == KNOWN_WIDTHS.get(name, dim)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        net.eval()
        assert net.features(x).shape == (2, dim)
        assert net(x).shape == (2, 10)


def test_known_widths_are_registered():
    assert set(KNOWN_WIDTHS) <= set(BACKBONES.names())


def test_unknown_backbone_lists_known():
    with pytest.raises(KeyError, match="unknown backbone 'vgg16'; known: " + ", ".join(BACKBONES.names())):
        BACKBONES.get("vgg16")


def test_normalization_lives_inside_the_model():
    norm = Normalize((0.5, 0.25), (0.5, 0.25))
    x = torch.tensor([0.5, 0.25]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    assert torch.allclose(norm(x), torch.zeros(1, 2, 2, 2))


def test_prototypes_are_the_classifier_weights_on_the_sphere():
    head = PrototypeHead(4, 3, radius=2.5)
    c = head.prototypes()
    assert torch.allclose(c.norm(dim=1), torch.full((4,), 2.5))
    z = torch.randn(5, 3)
    assert torch.allclose(head(z), z @ c.t())  # dot logits: <z, c_j>
    cos = prototype_logits(z, c, "cosine", scale=10.0)
    expected = 10.0 * torch.nn.functional.cosine_similarity(z.unsqueeze(1), c.unsqueeze(0), dim=2)
    assert torch.allclose(cos, expected, atol=1e-5)
    assert [n for n, _ in head.named_parameters()] == ["raw"]  # no separate linear layer


def test_feature_projection_sets_prototype_dimension():
    net = build_model(backbone="small_cnn", num_classes=10, in_channels=1, mean=(0.5,), std=(0.5,),
                      prototype_head=True, feature_dim=9)
    assert net.head.prototypes().shape == (10, 9)
    assert net.features(torch.rand(2, 1, 8, 8)).shape == (2, 9)


# ---------------------------------------------------------------------------- feature heads
def _seeded_model(backbone: str, feature_head: str, feature_dim: int = 0, seed: int = 0):
    torch.manual_seed(seed)
    net = build_model(backbone=backbone, num_classes=10, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3,
                      prototype_head=True, feature_dim=feature_dim, feature_head=feature_head)
    return net.eval()


@pytest.mark.parametrize("head", FEATURE_HEADS.names())
@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_backbone_and_feature_head_gives_features_and_logits(name, head):
    net = _seeded_model(name, head)
    dim = net.backbone.out_dim
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert net.features(x).shape == (2, dim)
        assert net(x).shape == (2, 10)
        assert net.head.prototypes().shape == (10, dim)
    assert isinstance(net.projection, torch.nn.Linear) == (head == "linear")
    projected = _seeded_model(name, head, feature_dim=7)
    with torch.no_grad():
        assert projected.features(x).shape == (2, 7)


def test_config_default_feature_head_is_the_one_the_ablation_chose():
    assert ExperimentConfig().feature_head == "linear"  # docs/feature_head.md
    assert set(FEATURE_HEADS.names()) == {"none", "linear", "no_final_relu"}


@pytest.mark.parametrize("name", BACKBONES.names())
def test_only_the_default_head_keeps_features_non_negative(name):
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        assert (_seeded_model(name, "none").features(x) >= 0).all()  # ReLU then mean: never negative
        for head in ("linear", "no_final_relu"):
            assert (_seeded_model(name, head).features(x) < 0).any(), head


@pytest.mark.parametrize("name", BACKBONES.names())
def test_no_final_relu_removes_exactly_the_last_relu(name):
    """Same seed, same parameters; the default head's map is the ReLU of the other's, bit for bit."""
    default, signed = _seeded_model(name, "none"), _seeded_model(name, "no_final_relu")
    default_state, signed_state = default.state_dict(), signed.state_dict()
    assert list(default_state) == list(signed_state)
    assert all(torch.equal(default_state[k], signed_state[k]) for k in default_state)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(default.backbone.feature_map(x), torch.relu(signed.backbone.feature_map(x)))


def test_default_path_is_the_unchanged_model():
    """No feature_head argument builds what the `none` head builds: same modules, parameters, outputs."""
    torch.manual_seed(3)
    implicit = build_model(backbone="small_cnn", num_classes=10, in_channels=1, mean=(0.5,), std=(0.5,),
                           prototype_head=True).eval()
    torch.manual_seed(3)
    explicit = build_model(backbone="small_cnn", num_classes=10, in_channels=1, mean=(0.5,), std=(0.5,),
                           prototype_head=True, feature_head="none").eval()
    assert isinstance(implicit.projection, torch.nn.Identity)
    assert [n for n, _ in implicit.named_modules()] == [n for n, _ in explicit.named_modules()]
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(implicit(x), explicit(x))
        pooled = torch.relu(implicit.backbone.layers[:-1](implicit.normalize(x)))
        last = implicit.backbone.layers[-1]
        expected = torch.relu(last[1](last[0](pooled))).mean(dim=(2, 3))  # conv, BN, ReLU, average pool
        assert torch.equal(implicit.features(x), expected)


def test_linear_head_projects_to_the_backbone_width_without_relu():
    net = _seeded_model("small_cnn", "linear")
    assert (net.projection.in_features, net.projection.out_features) == (128, 128)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(net.features(x), net.projection(net.backbone(net.normalize(x))))


def test_unknown_feature_head_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError, match="feature_head.*'relu'.*'linear', 'no_final_relu', 'none'"):
        ExperimentConfig.from_dict({"feature_head": "relu"})


# ---------------------------------------------------------------------------- fixed simplex
@pytest.mark.parametrize("classes, dim", [(2, 1), (3, 2), (3, 5), (10, 9), (10, 128)])
def test_regular_simplex_has_equal_norms_equal_distances_and_zero_sum(classes, dim):
    c = regular_simplex(classes, dim, radius=1.7).double()
    assert c.shape == (classes, dim)
    assert torch.allclose(c.norm(dim=1), torch.full((classes,), 1.7, dtype=torch.float64), rtol=1e-6)
    d = torch.cdist(c, c)[~torch.eye(classes, dtype=torch.bool)]
    # On the sphere of radius a with C equidistant points summing to 0: ||c_j - c_k||^2 = 2 a^2 C / (C - 1).
    expected = math.sqrt(2 * 1.7 ** 2 * classes / (classes - 1))
    assert torch.allclose(d, torch.full_like(d, expected), rtol=1e-6)
    assert c.sum(0).abs().max() < 1e-5


def test_regular_simplex_refuses_too_few_dimensions():
    with pytest.raises(ValueError, match="dim >= 9"):
        regular_simplex(10, 8, 1.0)


def test_fixed_simplex_head_is_a_buffer_not_a_parameter():
    net = build_model(backbone="small_cnn", num_classes=4, in_channels=1, mean=(0.5,), std=(0.5,),
                      prototype_head=True, prototype_radius=2.0, prototype_mode="fixed_simplex")
    assert list(net.head.parameters()) == []
    assert "head.fixed" in net.state_dict()  # exported and loaded with the model
    assert torch.equal(net.head.prototypes(), regular_simplex(4, 128, 2.0))
    assert not net.head.prototypes().requires_grad


def test_fixed_simplex_with_too_small_a_feature_dim_is_a_config_error():
    with pytest.raises(ConfigError, match="prototype_mode='fixed_simplex' needs feature_dim >= 9"):
        ExperimentConfig.from_dict({"dataset": "digits", "prototype_mode": "fixed_simplex", "feature_dim": 5})
    ExperimentConfig.from_dict({"dataset": "digits", "prototype_mode": "fixed_simplex", "feature_dim": 9})
