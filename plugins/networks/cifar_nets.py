"""The paper's extra networks, registered as timm models so they too are "a backbone by name".

* ``vgg11_nobn`` … ``vgg19_nobn`` — torchvision's VGG configurations A/B/D/E with ReLU and **no normalisation**,
  no classifier and no adaptive pooling, as in the paper (App. E.1). The embedding is the 512-channel map after
  the last max-pool, globally averaged (on 32x32 inputs that map is 1x1, so this equals the paper's flatten).
  Max-pools round up (``ceil_mode``) so 28x28 inputs work too; on even sizes such as 32 this changes nothing.
* ``cifar_resnet20`` … ``cifar_resnet110`` — the CIFAR ResNets of He et al. (2016), Table 5's ResNet20*/56*:
  a 3x3 stem of 16 channels, three stages of basic blocks (16, 32, 64 channels, stride 2 between stages) with
  1x1-conv + BN projection shortcuts where the shape changes, global average pooling to a 64-d embedding.
  ResNet20 has 271,824 and ResNet56 855,120 parameters without classifier, as the paper's Table 5.

All of them take ``norm_layer`` (``backbone.norm``, docs/paper.md#fig-11): VGGs then put it after every conv.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from timm.models import register_model
from torch import nn

from framework.api import hookimpl

VGG_CFGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512,
              "M"),
}


class PooledNet(nn.Module):
    """The part of timm's model interface rtlab uses: ``forward_features`` (subclasses) → ``forward_head`` (global
    pooling, then the classifier, or the pooled embedding with ``num_classes=0``)."""

    def _classifier(self, channels: int, num_classes: int, global_pool: str) -> None:
        self.num_features = channels
        self.global_pool = global_pool
        self.fc = nn.Linear(channels, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():  # torchvision-style init: Kaiming-normal fan-out convs, zero biases
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3)) if self.global_pool == "avg" else x.flatten(1)
        return x if pre_logits else self.fc(x)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class VGGNoBN(PooledNet):
    """VGG features without normalisation; ``num_classes=0`` returns the pooled 512-d embedding."""

    def __init__(self, cfg: tuple, in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg",
                 norm_layer: Optional[Callable[..., nn.Module]] = None, **_: Any) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                layers.append(nn.Conv2d(c, v, 3, padding=1))
                if norm_layer is not None:
                    layers.append(norm_layer(v))
                layers.append(nn.ReLU(inplace=True))
                c = v
        self.features = nn.Sequential(*layers)
        self._classifier(c, num_classes, global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


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


class CifarBasicBlock(nn.Module):
    """Two 3x3 convs with norm and ReLU; a 1x1-conv + norm projection shortcut where the shape changes."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, norm_layer: Callable[..., nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(out_chs)
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_chs != out_chs:
            self.shortcut = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), norm_layer(out_chs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class CifarResNet(PooledNet):
    """He et al.'s CIFAR ResNet of depth 6n + 2; ``num_classes=0`` returns the pooled 64-d embedding."""

    def __init__(self, depth: int, in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg",
                 norm_layer: Optional[Callable[..., nn.Module]] = None, widths: tuple = (16, 32, 64),
                 **_: Any) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        norm_layer = norm_layer or nn.BatchNorm2d
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = norm_layer(widths[0])
        self.act = nn.ReLU(inplace=True)
        stages = []
        c = widths[0]
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(CifarBasicBlock(c, w, 2 if (i > 0 and j == 0) else 1, norm_layer))
                c = w
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self._classifier(c, num_classes, global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


def _register_cifar_resnet(depth: int):
    """Register ``cifar_resnet<depth>`` with timm (one entry point per name, as timm wants)."""

    def entry(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
        if pretrained:
            raise ValueError(f"cifar_resnet{depth} has no pretrained weights")
        kwargs.pop("pretrained_cfg", None)
        kwargs.pop("pretrained_cfg_overlay", None)
        return CifarResNet(depth, **kwargs)

    entry.__name__ = entry.__qualname__ = f"cifar_resnet{depth}"
    entry.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016)."
    return register_model(entry)


# ResNet20* and ResNet56* are Table 5's (271,824 and 855,120 parameters)
CIFAR_RESNETS = {depth: _register_cifar_resnet(depth) for depth in (20, 32, 44, 56, 110)}


@hookimpl
def rtlab_register(registry):
    """The models above register with timm on import (the generic adapter handles them); list them too."""
    registry.add_kind("timm_model", "a network registered with timm by a plugin (select it with backbone=NAME)")
    for fn in (vgg11_nobn, vgg13_nobn, vgg16_nobn, vgg19_nobn, *CIFAR_RESNETS.values()):
        registry.add("timm_model", fn.__name__, fn)
