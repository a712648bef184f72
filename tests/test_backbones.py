"""Backbones by name: family adapters for small inputs, the paper's init, the paper's VGG, and fix messages."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from framework.config import compose
from framework.errors import RtlabError
from framework.models import create_backbone

FAMILIES = ["test_resnet", "test_vit", "test_convnext", "test_efficientnet", "mobilenetv3_small_050",
            "regnetx_002", "vgg11_nobn"]


def backbone(pm, name, chans, size, *overrides):
    cfg = compose([f"backbone={name}", *overrides], pm.registry)
    return create_backbone(pm.registry, cfg.backbone, chans, (size, size))


@pytest.mark.parametrize("name", FAMILIES)
def test_families_take_small_grayscale_and_rgb_inputs(pm, name):
    for chans, size in ((1, 28), (3, 32)):
        model, dim = backbone(pm, name, chans, size)
        out = model.eval()(torch.randn(3, chans, size, size))
        assert out.shape == (3, dim) and dim > 0 and torch.isfinite(out).all()


def test_resnet_cifar_stem_and_paper_init(pm):
    model, _ = backbone(pm, "resnet18", 3, 32, "backbone.stem=cifar")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert all(float(b.bn2.weight.detach().min()) == 1.0 for b in model.layer1)  # no zero-initialised last BN
    timm_init, _ = backbone(pm, "resnet18", 3, 32, "backbone.init=timm")
    assert all(float(b.bn2.weight.detach().abs().max()) == 0.0 for b in timm_init.layer1)
    big, _ = backbone(pm, "resnet18", 3, 96)  # stem=auto keeps timm's stem above 64 px
    assert big.conv1.stride == (2, 2) and isinstance(big.maxpool, nn.MaxPool2d)


def test_same_seed_same_network_without_touching_global_rng(pm):
    from framework.models import build_network

    cfg = compose(["backbone=test_resnet", "head.out_dim=16", "head.hidden_dims=[8]", "head.bottleneck_dim=4"],
                  pm.registry)
    state = torch.random.get_rng_state()
    a = build_network(pm.registry, cfg.backbone, cfg.head, 1, (28, 28), seed=5)
    b = build_network(pm.registry, cfg.backbone, cfg.head, 1, (28, 28), seed=5)
    c = build_network(pm.registry, cfg.backbone, cfg.head, 1, (28, 28), seed=6)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_paper_vgg11_without_bn_matches_the_paper_parameter_count(pm):
    model, dim = backbone(pm, "vgg11_nobn", 3, 32)
    assert dim == 512
    assert sum(p.numel() for p in model.parameters()) == 9_220_480  # PAPER.md Table 5
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_vit_patch_size_follows_the_input(pm):
    vit32, _ = backbone(pm, "vit_tiny_patch16_224", 3, 32)
    vit28, _ = backbone(pm, "vit_tiny_patch16_224", 1, 28)
    assert vit32.patch_embed.patch_size == (8, 8)  # the paper's patch 8 on CIFAR
    assert vit28.patch_embed.patch_size == (7, 7)


def test_backbones_that_cannot_take_the_input_say_which_option_fixes_it(pm):
    with pytest.raises(RtlabError) as exc:
        backbone(pm, "vgg11", 1, 28)
    msg = str(exc.value)
    assert "cannot take 1x28x28 inputs" in msg and "backbone=vgg11_nobn" in msg and "data.image_size=32" in msg
    with pytest.raises(RtlabError, match=r"cannot take 1x28x28 inputs .*set backbone.patch_size=1"):
        backbone(pm, "test_convnext", 1, 28, "backbone.patch_size=4")
    model, _ = backbone(pm, "test_resnet", 1, 28, "+backbone.kwargs.drop_path_rate=0.1")  # any timm kwarg
    assert model.layer4[-1].drop_path.drop_prob > 0


def test_backbones_command_lists_timm_and_plugin_models(cli):
    res = cli("backbones", "vgg1*_nobn")
    assert res.returncode == 0
    assert res.stdout.split() == ["vgg11_nobn", "vgg13_nobn", "vgg16_nobn", "vgg19_nobn"]
    res = cli("backbones", "no_such_net_xyz")
    assert res.returncode == 2 and "no timm model matches" in res.stderr
