"""Backbones as rtlab built them, under a timm model name: what ``rtlab export`` needs where timm alone cannot
rebuild an architecture.

rtlab's backbone adapters change some models beyond what timm's constructor arguments say: the small-input stem of
ResNets (a 3x3 stride-1 first conv, no max-pool) and EfficientNets (a stride-1 stem), a swapped norm layer. An
export of such a network names the timm model ``rtlab_backbone`` with the resolved backbone options as its
arguments::

    timm.create_model("rtlab_backbone", backbone={"name": "resnet18", "stem": "cifar", …}, in_chans=1,
                      input_size=[28, 28], pretrained=True, pretrained_cfg_overlay=dict(file=".../model.safetensors"))

which builds the network through the same adapters (so rtlab must be installed and this module imported:
``import plugins.networks.adapted``) and loads the weights with timm's own loader. :func:`load_weights_if_pretrained`
gives the paper's CIFAR nets (:mod:`plugins.networks.cifar_nets`) the same ``pretrained=True`` path.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from timm.models import load_pretrained, register_model, resolve_pretrained_cfg
from torch import nn

from framework.api import hookimpl

# timm registers these with the entry points below: the weights hold no classifier, and a 1-channel export's first
# conv already has one input channel (no first_conv: timm then leaves it as it is)
default_cfgs = {"rtlab_backbone": {"num_classes": 0, "input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5),
                                   "std": (0.5, 0.5, 0.5), "crop_pct": 1.0, "interpolation": "bilinear"}}


def load_weights_if_pretrained(model: nn.Module, variant: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    """Give ``model`` (built by an rtlab timm entry point) its pretrained config and, with ``pretrained=True``, the
    weights that config names (``pretrained_cfg_overlay=dict(file=…)``, an export folder, a Hub repo), loaded by
    timm's own loader."""
    cfg = resolve_pretrained_cfg(variant, kwargs.pop("pretrained_cfg", None), kwargs.pop("pretrained_cfg_overlay", None))
    model.pretrained_cfg = model.default_cfg = cfg.to_dict()
    if pretrained:
        load_pretrained(model, model.pretrained_cfg, num_classes=int(kwargs.get("num_classes", 0)),
                        in_chans=int(kwargs.get("in_chans", 3)), cache_dir=kwargs.get("cache_dir"))
    return model


@register_model
def rtlab_backbone(pretrained: bool = False, backbone: Optional[dict] = None, input_size: Optional[Sequence[int]] = None,
                   in_chans: int = 3, num_classes: int = 0, **kwargs: Any) -> nn.Module:
    """A backbone built by rtlab's adapters from its resolved options (``backbone``) for ``input_size`` inputs."""
    from framework.api import create_backbone, get_plugin_manager, RtlabError

    if not backbone or not input_size:
        raise RtlabError("rtlab_backbone needs backbone={...} (the resolved backbone options an rtlab checkpoint "
                         "records) and input_size=[H, W]; load an rtlab export with timm.create_model('local-dir:"
                         "FOLDER', pretrained=True)")
    model, _ = create_backbone(get_plugin_manager().registry, dict(backbone), int(in_chans), tuple(input_size))
    if num_classes:
        model.reset_classifier(num_classes)
    return load_weights_if_pretrained(model, "rtlab_backbone", pretrained,
                                      {**kwargs, "num_classes": num_classes, "in_chans": in_chans})


@hookimpl
def rtlab_register(registry):
    registry.add_kind("timm_model", "a network registered with timm by a plugin (select it with backbone=NAME)")
    registry.add("timm_model", "rtlab_backbone", rtlab_backbone)
