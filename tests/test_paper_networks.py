"""The paper's networks and head ablations: Table 5 parameter counts, the norm-layer swap, the bottleneck layouts
of Fig. 12."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from framework._base.errors import RtlabError
from framework._nets.models import adapter_for, create_backbone
from plugins.networks.heads import DinoHead, DinoHeadOptions
from tiny_runs import plugin_manager


def backbone(name, **kw):
    reg = plugin_manager().registry
    opts = adapter_for(reg, name).options(name=name, **kw)
    return create_backbone(reg, opts, 3, (32, 32))


@pytest.mark.parametrize("name, count", [("cifar_resnet20", 271_824), ("cifar_resnet56", 855_120),
                                         ("vgg13_nobn", 9_404_992), ("vgg16_nobn", 14_714_688)])
def test_table5_parameter_counts(name, count):
    model, dim = backbone(name)
    assert sum(p.numel() for p in model.parameters()) == count
    assert dim == (64 if "resnet" in name else 512)


@pytest.mark.parametrize("norm, layer", [("groupnorm8", nn.GroupNorm), ("layernorm", nn.GroupNorm),
                                         ("instancenorm", nn.GroupNorm), ("identity", nn.Identity)])
def test_norm_swap(norm, layer):
    model, _ = backbone("cifar_resnet20", norm=norm)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    norms = [m for m in model.modules() if isinstance(m, layer)]
    assert norms
    if norm != "identity":
        groups = {"groupnorm8": lambda c: c // 8, "layernorm": lambda c: 1, "instancenorm": lambda c: c}[norm]
        assert all(m.num_groups == groups(m.num_channels) for m in norms)
    vgg, _ = backbone("vgg11_nobn", norm="batchnorm")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in vgg.modules()) == 8
    with pytest.raises(RtlabError, match="backbone.norm is not supported"):
        backbone("vit_tiny_patch16_224", norm="layernorm")
    with pytest.raises(RtlabError, match="did you mean"):
        backbone("cifar_resnet20", norm="groupnorm")


@pytest.mark.parametrize("layout, expect", [
    ("-/lb/fn/wn/l/-", dict(bottleneck=True, bias=True, fn=True, wn1=False, wn2=True, last_bias=False, fn2=False)),
    ("wn/lb/-/wn/l/-", dict(bottleneck=True, bias=True, fn=False, wn1=True, wn2=True, last_bias=False, fn2=False)),
    ("-/lb/-/-/l/fn", dict(bottleneck=True, bias=True, fn=False, wn1=False, wn2=False, last_bias=False, fn2=True)),
    ("-/-/-/-/l/fn", dict(bottleneck=False, bias=False, fn=False, wn1=False, wn2=False, last_bias=False, fn2=True)),
    ("-/l/-/-/lb/-", dict(bottleneck=True, bias=False, fn=False, wn1=False, wn2=False, last_bias=True, fn2=False)),
])
def test_bottleneck_layouts(layout, expect):
    head = DinoHead(32, DinoHeadOptions(hidden_dims=[16], bottleneck_dim=8, out_dim=64, layout=layout))
    last_in = head.last.in_features
    assert last_in == (8 if expect["bottleneck"] else 16)
    if expect["bottleneck"]:
        assert (head.mlp[-1].bias is not None) == expect["bias"]
        assert head.mlp[-1].weight_norm == expect["wn1"]
    assert head.feature_norm == expect["fn"] and head.last.weight_norm == expect["wn2"]
    assert (head.last.bias is not None) == expect["last_bias"] and head.output_norm == expect["fn2"]
    out = head(torch.randn(5, 32))
    if expect["fn2"]:
        assert torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-5)
    if expect["wn2"]:
        with torch.no_grad():
            head.last.weight.mul_(3.0)  # weight norm makes the output independent of the row scale
        assert torch.allclose(head(torch.randn(5, 32, generator=torch.Generator().manual_seed(0))),
                              head(torch.randn(5, 32, generator=torch.Generator().manual_seed(0))))


def test_bad_layouts():
    for bad in ("-/lb/fn/wn/l", "-/lb/fn/wn/-/-", "x/lb/fn/wn/l/-", "wn/-/-/-/l/-"):
        with pytest.raises(RtlabError, match="head.layout"):
            DinoHead(8, DinoHeadOptions(layout=bad, out_dim=4, hidden_dims=[]))
