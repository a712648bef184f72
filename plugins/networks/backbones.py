"""Backbone adapters: how each timm family takes small inputs and how it is initialised.

``backbone.norm`` swaps the normalisation layers (BatchNorm / GroupNorm8 / InstanceNorm / LayerNorm / Identity,
:mod:`plugins.networks.norm_layers`) of families that take a ``norm_layer`` (timm ResNets, the paper's CIFAR nets); the
others refuse it.

Init schemes (``backbone.init``; components of kind ``init``, so a plugin adds its own: it names the family init
it starts from, ``base``, and ``apply(model)`` re-initialises after it):

* ``paper`` (default) — the paper's torchvision-style init: every conv Kaiming-normal (fan-out, ReLU) with zero
  bias, every norm layer weight 1 / bias 0, and no zero-initialised residual branches (timm's
  ``zero_init_last`` is turned off; ConvNeXt layer scale starts at 1 instead of 1e-6). Linear layers keep the
  family's init. A zero-initialised last BN makes every residual block an identity map, which turns a random
  teacher into a near-identity of the stem.
* ``timm`` — the family's own timm init, unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import timm
from torch import nn

from framework.api import BackboneOptions, hookimpl, RtlabError
from plugins.networks.norm_layers import norm_layer

SMALL_INPUT = 64  # inputs up to this many pixels a side get the small-input adaptations under "auto"


def paper_init_(model: nn.Module) -> None:
    """Kaiming-normal (fan-out, ReLU) convs with zero bias; norm layers weight 1, bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
                            nn.modules.instancenorm._InstanceNorm)):
            if getattr(m, "weight", None) is not None:
                nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


def _refuse_norm(opts: BackboneOptions, family: str) -> None:
    if opts.norm is not None:
        raise RtlabError(f"backbone.norm is not supported for {family} ('{opts.name}'); it works for ResNets and "
                         "the paper's CIFAR nets (vgg11_nobn, cifar_resnet20, …)")


def _check_norm_swapped(model: nn.Module, opts: BackboneOptions) -> nn.Module:
    """Refuse a model that took ``norm_layer`` but did not use it (some families swallow unknown arguments)."""
    if opts.norm is not None and not any(isinstance(m, norm_layer(opts.norm)) for m in model.modules()):
        _refuse_norm(opts, "this model")
    return model


def _check_init(opts: BackboneOptions) -> None:
    if opts.init not in ("paper", "timm"):  # the base of the chosen init scheme (framework.api InitScheme)
        raise RtlabError(f"an init scheme must start from the family's 'paper' or 'timm' init, got base "
                         f"'{opts.init}'; fix the scheme's base attribute")
    if opts.stem not in ("auto", "cifar", "timm"):
        raise RtlabError(f"backbone.stem must be auto, cifar or timm, got '{opts.stem}'")


def small_stem(opts: BackboneOptions, input_size: tuple[int, int]) -> bool:
    """Whether the family's small-input stem applies (stem=cifar, or auto with inputs up to 64 px)."""
    return opts.stem == "cifar" or (opts.stem == "auto" and max(input_size) <= SMALL_INPUT)


def _create(name: str, in_chans: int, **kwargs: Any) -> nn.Module:
    return timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)


def _create_tolerant(name: str, in_chans: int, optional: dict[str, Any], **kwargs: Any) -> nn.Module:
    """Create with the ``optional`` keyword arguments the family accepts (``zero_init_last``, ``img_size``),
    dropping each one its constructor rejects."""
    optional = dict(optional)
    while True:
        try:
            return _create(name, in_chans, **optional, **kwargs)
        except TypeError as exc:
            rejected = [k for k in optional if f"'{k}'" in str(exc)]
            if not rejected:
                raise
            for k in rejected:
                optional.pop(k)


def _upsample_hint(input_size: tuple[int, int]) -> str:
    side = max(input_size)
    bigger = next((s for s in (32, 64, 96, 128, 160, 224) if s > side), 224)
    return f"upsample the images with data.image_size={bigger} (or larger) or pick another backbone"


# ---------------------------------------------------------------------------------------------- init schemes
@dataclass
class FamilyInitOptions:
    pass


class FamilyInit:
    """``backbone.init=paper|timm``: the family adapters implement both (they know which layers a family zero-inits
    and how its grouped convs count fan-out), so the scheme itself adds nothing after them."""

    def __init__(self, opts: Any) -> None:
        self.base = opts.name

    def apply(self, model: nn.Module) -> None:
        pass


# ----------------------------------------------------------------------------------------------------- generic
@dataclass
class TimmBackboneOptions(BackboneOptions):
    pass


class GenericAdapter:
    """Any timm model: ``img_size`` follows the input where the family accepts it; ``init=paper`` re-initialises
    convs and norms and turns ``zero_init_last`` off where the family has it."""

    priority = 0

    def matches(self, model_name: str, module: str) -> bool:
        return True

    def create(self, opts: BackboneOptions, in_chans: int, input_size: tuple[int, int]) -> nn.Module:
        _check_init(opts)
        optional: dict[str, Any] = {"img_size": tuple(input_size)}  # transformers sized for the input
        if opts.init == "paper":
            optional["zero_init_last"] = False
        for key in list(optional):
            if key in opts.kwargs:
                optional.pop(key)
        kwargs = dict(opts.kwargs)
        if opts.norm is not None:
            kwargs["norm_layer"] = norm_layer(opts.norm)
        try:
            model = _check_norm_swapped(_create_tolerant(opts.name, in_chans, optional, **kwargs), opts)
        except (TypeError, AssertionError, ValueError, KeyError):
            if opts.norm is not None:  # the family cannot build itself around a plain norm layer
                _refuse_norm(opts, "this model")
            raise
        if opts.init == "paper":
            paper_init_(model)
        return model

    def hint(self, opts: BackboneOptions, input_size: tuple[int, int]) -> str:
        if timm.models.model_entrypoint(opts.name).__module__.endswith(".vgg"):
            return "use the paper's CIFAR VGG (backbone=vgg11_nobn) or " + _upsample_hint(input_size)
        return _upsample_hint(input_size)


# ------------------------------------------------------------------------------------------------------ ResNet
@dataclass
class ResNetBackboneOptions(BackboneOptions):
    pass


class ResNetAdapter:
    """timm ResNets (resnet18, resnet10t, seresnet, resnext, …). Small-input stem: the CIFAR stem — a 3x3
    stride-1 first conv (deep stems: their first conv's stride set to 1) and no max-pool."""

    priority = 10

    def matches(self, model_name: str, module: str) -> bool:
        return module == "resnet"

    def resolve(self, opts: ResNetBackboneOptions, input_size: tuple[int, int]) -> ResNetBackboneOptions:
        """``stem=auto`` resolved to the stem this input gets (what checkpoints record)."""
        return dataclasses.replace(opts, stem="cifar" if small_stem(opts, input_size) else "timm")

    def create(self, opts: ResNetBackboneOptions, in_chans: int, input_size: tuple[int, int]) -> nn.Module:
        _check_init(opts)
        kwargs = dict(opts.kwargs)
        if opts.init == "paper":
            kwargs.setdefault("zero_init_last", False)
        if opts.norm is not None:
            kwargs["norm_layer"] = norm_layer(opts.norm)
        model = _check_norm_swapped(_create(opts.name, in_chans, **kwargs), opts)
        if small_stem(opts, input_size):
            self._cifar_stem(model, in_chans)
        if opts.init == "paper":
            paper_init_(model)
        return model

    @staticmethod
    def _cifar_stem(model: nn.Module, in_chans: int) -> None:
        conv1 = model.conv1
        if isinstance(conv1, nn.Conv2d):
            model.conv1 = nn.Conv2d(in_chans, conv1.out_channels, 3, 1, 1, bias=False)
        else:  # deep stems (resnet10t, resnet50d, …): keep the 3x3 convs, drop the first stride
            first = next(m for m in conv1.modules() if isinstance(m, nn.Conv2d))
            first.stride = (1, 1)
        model.maxpool = nn.Identity()

    def hint(self, opts: ResNetBackboneOptions, input_size: tuple[int, int]) -> str:
        if opts.stem != "cifar":
            return "set backbone.stem=cifar (3x3 stride-1 stem, no max-pool) or " + _upsample_hint(input_size)
        return _upsample_hint(input_size)


# --------------------------------------------------------------------------------------------------------- ViT
@dataclass
class ViTBackboneOptions(BackboneOptions):
    # None: with the small-input stem, the largest divisor of the input size, at most the model's patch size,
    # that leaves >= 4 patches a side (32 px -> 8 as in the paper, 28 px -> 7, 224 px -> 16); with stem=timm the
    # model's own patch size where it divides the input into >= 4 patches a side, else the same rule
    patch_size: Optional[int] = None
    dynamic_img_size: bool = False  # accept any input size (position embeddings interpolated)


class ViTAdapter:
    """timm Vision Transformers (vit_*, deit_*): the image size follows the input. Small-input stem: a patch
    size that leaves at least 4 patches a side."""

    priority = 10
    modules = ("vision_transformer", "deit")

    def matches(self, model_name: str, module: str) -> bool:
        return module in self.modules

    @staticmethod
    def auto_patch(model_patch: int, input_size: tuple[int, int]) -> int:
        h, w = input_size
        for p in range(min(model_patch, h, w), 0, -1):
            if h % p == 0 and w % p == 0 and h // p >= 4 and w // p >= 4:
                return p
        return 1

    def resolve(self, opts: ViTBackboneOptions, input_size: tuple[int, int]) -> ViTBackboneOptions:
        """``patch_size=None`` resolved to the patch size this input gets (what checkpoints record)."""
        if opts.patch_size is not None:
            return opts
        model_patch = _model_patch_size(opts.name)
        fits = all(side % model_patch == 0 and side // model_patch >= 4 for side in input_size)
        keep = opts.stem == "timm" or (opts.stem == "auto" and not small_stem(opts, input_size))
        patch = model_patch if keep and fits else self.auto_patch(model_patch, input_size)
        return dataclasses.replace(opts, patch_size=patch)

    def create(self, opts: ViTBackboneOptions, in_chans: int, input_size: tuple[int, int]) -> nn.Module:
        _check_init(opts)
        _refuse_norm(opts, "Vision Transformers")
        patch = self.resolve(opts, input_size).patch_size
        kwargs = {"img_size": tuple(input_size), "patch_size": patch, **opts.kwargs}
        if opts.dynamic_img_size:
            kwargs["dynamic_img_size"] = True
        return _create(opts.name, in_chans, **kwargs)  # transformers: paper and timm init coincide

    def hint(self, opts: ViTBackboneOptions, input_size: tuple[int, int]) -> str:
        return (f"set backbone.patch_size to a divisor of {input_size[0]} (e.g. "
                f"{self.auto_patch(16, input_size)}) or backbone.dynamic_img_size=true")


def _model_patch_size(name: str) -> int:
    try:
        cfg = timm.models.get_pretrained_cfg(name)
        size = getattr(cfg, "input_size", (3, 224, 224))[-1]
    except Exception:
        size = 224
    import re

    m = re.search(r"patch(\d+)", name)
    return int(m.group(1)) if m else max(1, size // 14)


# ---------------------------------------------------------------------------------------------------- ConvNeXt
@dataclass
class ConvNeXtBackboneOptions(BackboneOptions):
    # stem stride; None: timm's 4, or 1 (total stride 8 instead of 32) for inputs under 32 px
    patch_size: Optional[int] = None


class ConvNeXtAdapter:
    """timm ConvNeXt; ``init=paper`` starts layer scale at 1. Small-input stem: a stride-1 patchify stem
    (total stride 8 instead of 32) for inputs under 32 px."""

    priority = 10

    def matches(self, model_name: str, module: str) -> bool:
        return module == "convnext"

    @staticmethod
    def total_stride(patch: int) -> int:
        # timm's ConvNeXt downsamples in its first stage too unless the stem has stride 1 or 4
        return 8 if patch == 1 else 32 if patch in (2, 4) else patch * 8

    @classmethod
    def auto_patch(cls, input_size: tuple[int, int]) -> int:
        side = min(input_size)
        return 4 if side // cls.total_stride(4) >= 1 else 1

    def resolve(self, opts: ConvNeXtBackboneOptions, input_size: tuple[int, int]) -> ConvNeXtBackboneOptions:
        """``patch_size=None`` resolved to the stem stride this input gets (what checkpoints record)."""
        if opts.patch_size is not None:
            return opts
        patch = self.auto_patch(input_size)
        if opts.stem == "timm" or not small_stem(opts, input_size):
            patch = 4 if min(input_size) // self.total_stride(4) >= 1 else patch
        return dataclasses.replace(opts, patch_size=patch)

    def create(self, opts: ConvNeXtBackboneOptions, in_chans: int, input_size: tuple[int, int]) -> nn.Module:
        _check_init(opts)
        _refuse_norm(opts, "ConvNeXt")
        patch = self.resolve(opts, input_size).patch_size
        kwargs = {"patch_size": patch, **opts.kwargs}
        model = _create(opts.name, in_chans, **kwargs)
        if opts.init == "paper":
            paper_init_(model)
            for block in model.modules():  # layer scale, where the model has it (not ConvNeXt V2), starts at 1
                gamma = getattr(block, "gamma", None)
                if isinstance(gamma, nn.Parameter) and "ls_init_value" not in opts.kwargs:
                    nn.init.ones_(gamma)
        return model

    def hint(self, opts: ConvNeXtBackboneOptions, input_size: tuple[int, int]) -> str:
        return f"set backbone.patch_size={self.auto_patch(input_size)} or " + _upsample_hint(input_size)


# ---------------------------------------------------------------------------------------------- EfficientNet
@dataclass
class EfficientNetBackboneOptions(BackboneOptions):
    # eval-mode BatchNorm gains: each BN's running variance set so that it scales its input to unit RMS (measured in
    # one pass over a fixed standard-normal batch at the input size); false keeps timm's running statistics (0, 1),
    # with which a random network in eval mode shrinks the signal ~5x per stage (embeddings ~1e-7 or smaller)
    calibrate_bn: bool = True


class EfficientNetAdapter:
    """timm's EfficientNet builder families (efficientnet_*, mobilenetv2/v3/v4, mixnet, mnasnet, lcnet, …): depthwise
    convs, squeeze-excite gates and BatchNorm. Small-input stem: a stride-1 stem conv (total stride 16 instead of
    32) for inputs up to 64 px.

    These networks rely on BatchNorm to keep their activations in scale. A random teacher runs in eval mode, where a
    fresh BN (running mean 0, variance 1) is the identity; each stage's first block (an SE gate of ~0.5 at init and
    fan-out-scaled 1x1 convs, no shortcut) then shrinks the signal ~5x, so the embeddings of a random
    efficientnet_b0 are ~1e-7 (timm init) or ~1e-15 (torchvision's fan-out, which ignores groups and makes
    depthwise kernels sqrt(channels) too small): every image maps to numerically the same point. The adapter
    therefore (1) under ``init=paper`` computes the fan-out of grouped convs per group (TensorFlow's and timm's
    rule), and (2) sets every BN's running variance so that it scales its input to unit RMS (``calibrate_bn``):
    a per-layer gain like LSUV's, from a fixed noise batch, so the network stays a function of its seed alone.
    """

    priority = 10
    modules = ("efficientnet", "mobilenetv3", "hardcorenas")

    def matches(self, model_name: str, module: str) -> bool:
        return module in self.modules

    def resolve(self, opts: EfficientNetBackboneOptions, input_size: tuple[int, int]) -> EfficientNetBackboneOptions:
        """``stem=auto`` resolved to the stem this input gets (what checkpoints record)."""
        return dataclasses.replace(opts, stem="cifar" if small_stem(opts, input_size) else "timm")

    def create(self, opts: EfficientNetBackboneOptions, in_chans: int, input_size: tuple[int, int]) -> nn.Module:
        _check_init(opts)
        _refuse_norm(opts, "EfficientNets and MobileNets")
        model = _create(opts.name, in_chans, **opts.kwargs)
        stem = getattr(model, "conv_stem", None)
        if small_stem(opts, input_size) and isinstance(stem, nn.Conv2d):
            stem.stride = (1, 1)
        if opts.init == "paper":
            paper_init_(model)
            for m in model.modules():
                if isinstance(m, nn.Conv2d) and m.groups > 1:
                    fan_out = m.out_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                    nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
        if opts.calibrate_bn:
            calibrate_bn_gains_(model, in_chans, input_size)
        return model

    def hint(self, opts: EfficientNetBackboneOptions, input_size: tuple[int, int]) -> str:
        return _upsample_hint(input_size)


def calibrate_bn_gains_(model: nn.Module, in_chans: int, input_size: tuple[int, int], batch: int = 16) -> None:
    """Set each BatchNorm's running variance to the mean square of its input in eval mode (running mean 0), layer
    after layer in one forward pass over a fixed standard-normal batch; the global RNG is not touched."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]

    def set_gain(module: nn.Module, args: tuple) -> None:
        module.running_mean.zero_()
        module.running_var.fill_(max(float(args[0].detach().double().pow(2).mean()), 1e-12))

    was_training = model.training
    model.eval()
    hooks = [bn.register_forward_pre_hook(set_gain) for bn in bns]
    try:
        noise = torch.randn(batch, in_chans, *input_size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            model(noise)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


@hookimpl
def rtlab_register(registry):
    registry.add("init", "paper", FamilyInit, FamilyInitOptions, doc="the paper's init: Kaiming fan-out convs, norm "
                 "weight 1 / bias 0, no zero-initialised residual branches (each family adapter knows its details)")
    registry.add("init", "timm", FamilyInit, FamilyInitOptions, doc="the family's own timm init, unchanged")
    registry.add("backbone_adapter", "efficientnet", EfficientNetAdapter(), EfficientNetBackboneOptions)
    registry.add("backbone_adapter", "timm", GenericAdapter(), TimmBackboneOptions)
    registry.add("backbone_adapter", "resnet", ResNetAdapter(), ResNetBackboneOptions)
    registry.add("backbone_adapter", "vit", ViTAdapter(), ViTBackboneOptions)
    registry.add("backbone_adapter", "convnext", ConvNeXtAdapter(), ConvNeXtBackboneOptions)

