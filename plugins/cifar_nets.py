"""The paper's extra networks, registered as timm models so they too are "a backbone by name".

* ``vgg11_nobn`` … ``vgg19_nobn`` — torchvision's VGG configurations A/B/D/E with ReLU and **no normalisation**,
  no classifier and no adaptive pooling, as in the paper (App. E.1). The embedding is the 512-channel map after
  the last max-pool, globally averaged (on 32x32 inputs that map is 1x1, so this equals the paper's flatten).
  Max-pools round up (``ceil_mode``) so 28x28 inputs work too; on even sizes such as 32 this changes nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import register_model
from torch import nn

from framework import hookimpl

VGG_CFGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512,
              "M"),
}


class VGGNoBN(nn.Module):
    """VGG features without normalisation; ``num_classes=0`` returns the pooled 512-d embedding."""

    def __init__(self, cfg: tuple, in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg",
                 **_: Any) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.num_features = c
        self.global_pool = global_pool
        self.fc = nn.Linear(c, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3)) if self.global_pool == "avg" else x.flatten(1)
        return x if pre_logits else self.fc(x)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _vgg(arch: str, pretrained: bool, **kwargs: Any) -> VGGNoBN:
    if pretrained:
        raise ValueError(f"{arch}_nobn has no pretrained weights")
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    return VGGNoBN(VGG_CFGS[arch], **kwargs)


@register_model
def vgg11_nobn(pretrained: bool = False, **kwargs: Any) -> VGGNoBN:
    """VGG11 (config A) without batch norm, as in the paper (9,220,480 parameters for 3 input channels)."""
    return _vgg("vgg11", pretrained, **kwargs)


@register_model
def vgg13_nobn(pretrained: bool = False, **kwargs: Any) -> VGGNoBN:
    """VGG13 (config B) without batch norm (Table 5)."""
    return _vgg("vgg13", pretrained, **kwargs)


@register_model
def vgg16_nobn(pretrained: bool = False, **kwargs: Any) -> VGGNoBN:
    """VGG16 (config D) without batch norm (Table 5)."""
    return _vgg("vgg16", pretrained, **kwargs)


@register_model
def vgg19_nobn(pretrained: bool = False, **kwargs: Any) -> VGGNoBN:
    """VGG19 (config E) without batch norm (Table 5)."""
    return _vgg("vgg19", pretrained, **kwargs)


@hookimpl
def rtlab_register(registry):
    """The models above register with timm on import (the generic adapter handles them); list them too."""
    registry.add_kind("timm_model", "a network registered with timm by a plugin (select it with backbone=NAME)")
    for fn in (vgg11_nobn, vgg13_nobn, vgg16_nobn, vgg19_nobn):
        registry.add("timm_model", fn.__name__, fn)
