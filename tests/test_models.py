import pytest
import torch

from dpnp_ray.models import BACKBONES, Normalize, PrototypeHead, build_model, prototype_logits


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
