"""Networks: a timm backbone (through its family adapter) followed by a head, built reproducibly from a seed."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from framework._base.errors import RtlabError, unknown_name
from framework._base.options import BackboneOptions
from framework._base.registry import Component, Registry, to_options
from framework._nets.checkpoint import (
    TORCH_SUFFIXES,
    load_checkpoint,
    load_torch_weights,
    resolve_checkpoint,
    unwrap_state_dict,
)


class BackboneAdapter(Protocol):
    """Adapts one family of timm models (component kind ``backbone_adapter``).

    The adapter with the highest ``priority`` whose ``matches`` accepts a model name handles that backbone.
    """

    priority: int

    def matches(self, model_name: str, module: str) -> bool:
        """Whether this adapter handles ``model_name`` (``module`` is the timm module that defines it)."""

    def create(self, options: Any, in_chans: int, input_size: tuple[int, int]) -> nn.Module:
        """A timm model without classifier (``num_classes=0``) whose forward returns (B, D) embeddings."""

    def hint(self, options: Any, input_size: tuple[int, int]) -> str:
        """The option that makes this backbone accept ``input_size`` when it does not."""

    # optional: ``resolve(options, input_size) -> options`` with every automatic choice (``stem=auto``,
    # ``patch_size=None``) replaced by the value ``create`` uses for ``input_size``; checkpoints record it


def timm_module(model_name: str) -> str:
    """The timm module that defines ``model_name`` (its family), e.g. ``resnet`` or ``vision_transformer``."""
    import timm  # lazy: timm takes ~1 s to import; only what builds or lists backbones pays it

    return timm.models.model_entrypoint(model_name).__module__.rsplit(".", 1)[-1]


def known_backbones() -> frozenset[str]:
    """Every timm model name registered in this process (built-in plugins add the paper's CIFAR nets)."""
    import timm  # lazy: timm takes ~1 s to import; only what builds or lists backbones pays it

    return frozenset(timm.list_models())  # ~5 ms


def adapters(registry: Registry) -> list[Component]:
    return sorted(registry.components("backbone_adapter"), key=lambda c: -c.factory.priority)


def adapter_for(registry: Registry, model_name: str) -> Component:
    module = timm_module(model_name)
    for comp in adapters(registry):
        if comp.factory.matches(model_name, module):
            return comp
    raise RtlabError(f"no backbone adapter handles '{model_name}' (timm module {module}); "
                     "install or write a plugin that registers a backbone_adapter")


def backbone_options(registry: Registry, node: Any) -> BackboneOptions:
    """Backbone settings as its family adapter's options dataclass (from a config node, dataclass or mapping)."""
    opts = to_options(node)
    if isinstance(opts, dict):
        name = opts.get("name")
        if name not in known_backbones():
            raise unknown_name("backbone", str(name), known_backbones())
        try:
            return adapter_for(registry, name).options(**opts)
        except TypeError as exc:
            raise RtlabError(f"backbone '{name}' settings do not fit its adapter ({exc})") from None
    return opts


def resolved_backbone_options(registry: Registry, options: Any, input_size: tuple[int, int]) -> BackboneOptions:
    """The backbone settings with the family adapter's automatic choices made for ``input_size`` (a small-input
    stem, a patch size): rebuilding from them gives the same architecture even where the automatic rules differ."""
    opts = backbone_options(registry, options)
    adapter = adapter_for(registry, opts.name).factory
    resolve = getattr(adapter, "resolve", None)
    return resolve(opts, tuple(input_size)) if resolve is not None else opts


def create_backbone(registry: Registry, options: Any, in_chans: int, input_size: tuple[int, int]
                    ) -> tuple[nn.Module, int]:
    """The backbone for ``options`` and its embedding width, checked with a dry forward pass."""
    opts: BackboneOptions = backbone_options(registry, options)
    if opts.name not in known_backbones():
        raise unknown_name("backbone", opts.name, known_backbones(), "(list them with: rtlab backbones PATTERN)")
    adapter = adapter_for(registry, opts.name).factory
    scheme = registry.build("init", {"name": opts.init})
    h, w = input_size
    try:  # the family's own (base) init first, then the scheme's
        model = adapter.create(dataclasses.replace(opts, init=getattr(scheme, "base", "timm")), in_chans, input_size)
        scheme.apply(model)
    except RtlabError:
        raise
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise RtlabError(f"backbone '{opts.name}' could not be built for {in_chans}x{h}x{w} inputs "
                         f"({_short(exc)}); {adapter.hint(opts, input_size)}") from None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, in_chans, h, w))
    except (RuntimeError, AssertionError, ValueError, IndexError) as exc:
        raise RtlabError(f"backbone '{opts.name}' cannot take {in_chans}x{h}x{w} inputs ({_short(exc)}); "
                         f"{adapter.hint(opts, input_size)}") from None
    model.train(was_training)
    if out.ndim != 2:
        raise RtlabError(f"backbone '{opts.name}' returns {tuple(out.shape[1:])}-shaped features, not a vector; "
                         "choose a model with global pooling or set backbone.kwargs.global_pool=avg")
    return model, int(out.shape[1])


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}"


class Network(nn.Module):
    """An encoder (timm backbone, no classifier) followed by a head; ``embed`` is what probes measure."""

    def __init__(self, encoder: nn.Module, head: nn.Module, embed_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.embed_dim = embed_dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def build_network(registry: Registry, backbone: Any, head: Any, in_chans: int, input_size: tuple[int, int],
                  seed: int) -> Network:
    """Backbone + head initialised under ``seed`` alone (the global RNG is left untouched), on the CPU."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder, dim = create_backbone(registry, backbone, in_chans, input_size)
        head_module = registry.build("head", head, in_dim=dim)
    return Network(encoder, head_module, dim)


def freeze(net: nn.Module) -> nn.Module:
    """No gradients, eval mode (BatchNorm uses its running statistics)."""
    net.requires_grad_(False)
    net.eval()
    return net


def clone(net: nn.Module) -> nn.Module:
    """An independent deep copy (never an alias)."""
    return copy.deepcopy(net)


def has_batchnorm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def _named_params(x: "nn.Module | dict[str, torch.Tensor]") -> dict[str, torch.Tensor]:
    return dict(x.named_parameters()) if isinstance(x, nn.Module) else dict(x)


def parameter_distance(a: "nn.Module | dict[str, torch.Tensor]", b: "nn.Module | dict[str, torch.Tensor]"
                       ) -> float:
    """‖θ_a − θ_b‖₂ over the parameters both share by name (modules or name → tensor mappings)."""
    pa, pb = _named_params(a), _named_params(b)
    total = torch.zeros((), dtype=torch.float64)
    for name, p in pa.items():
        if name in pb:
            total += (p.detach().double().cpu() - pb[name].detach().double().cpu()).pow(2).sum()
    return float(total.sqrt())


def load_network_state(net: nn.Module, tensors: dict[str, torch.Tensor], prefix: str, source: str) -> nn.Module:
    """Load the ``prefix``-ed entries of a checkpoint into ``net``; a different architecture is refused with the
    keys and shapes that differ."""
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not state:
        parts = sorted({k.split(".", 1)[0] for k in tensors})
        raise RtlabError(f"checkpoint {source} has no '{prefix.rstrip('.')}' weights (it holds: {', '.join(parts)})")
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        detail = []
        if shapes:
            k = shapes[0]
            detail.append(f"{len(shapes)} shape(s) differ, e.g. {k}: {tuple(state[k].shape)} in the checkpoint vs "
                          f"{tuple(own[k].shape)} here")
        if missing:
            detail.append(f"{len(missing)} key(s) missing, e.g. {missing[0]}")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
        raise RtlabError(f"checkpoint {source} is of another architecture ({'; '.join(detail)}); use the backbone, "
                         "head and data settings of the run that wrote it")
    net.load_state_dict(state)
    return net


def network_state(tensors: dict[str, torch.Tensor], which: str) -> tuple[dict[str, torch.Tensor], str]:
    """The state of one network in a checkpoint's tensors and where it goes (``""``: the whole network,
    ``"encoder"``: the backbone only).

    rtlab checkpoints hold ``student.*`` and ``teacher.*``: ``which`` picks one. A plain weights file holds either
    a whole network (``encoder.*`` and ``head.*`` keys) or a bare backbone (a timm state dict).
    """
    prefix = f"{which}."
    if any(k.startswith(prefix) for k in tensors):
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, ""
    if any(k.startswith(("student.", "teacher.")) for k in tensors):
        raise RtlabError(f"the checkpoint holds no '{which}' network; choose student or teacher")
    if any(k.startswith("encoder.") for k in tensors):
        return dict(tensors), ""
    return dict(tensors), "encoder"


def load_network_checkpoint(net: "Network", path: Any, which: str = "student", encoder_only: bool = False
                            ) -> dict[str, Any]:
    """Load ``which`` network (``student``/``teacher``) of an rtlab run or checkpoint — or a plain weights file:
    safetensors, or a torch ``.pt``/``.pth``/``.bin``/``.ckpt`` state dict read with ``torch.load(weights_only=True)``
    (never unpickling code) — into ``net`` in place; returns the checkpoint's metadata. ``encoder_only`` keeps
    ``net``'s head. A different architecture is refused with the keys and shapes that differ."""

    base = resolve_checkpoint(path)
    if Path(base).suffix in TORCH_SUFFIXES:
        tensors, meta = unwrap_state_dict(load_torch_weights(Path(base))), {}
    else:
        tensors, meta = load_checkpoint(base)
    state, part = network_state(tensors, which)
    if encoder_only and part == "":
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        part = "encoder"
    target = net.encoder if part == "encoder" else net
    load_network_state(target, state, "", str(base))
    return meta


def forward_views(net: nn.Module, views: "list[torch.Tensor]") -> "list[torch.Tensor]":
    """``net`` applied to every view; consecutive views of one shape go through the network as one batch (their
    batch-norm statistics are shared, as in DINO's multi-crop wrapper)."""
    outs: list[torch.Tensor] = []
    i = 0
    while i < len(views):
        j = i + 1
        while j < len(views) and views[j].shape == views[i].shape:
            j += 1
        if j - i == 1:
            outs.append(net(views[i]))
        else:
            outs.extend(net(torch.cat(views[i:j])).chunk(j - i))
        i = j
    return outs


def network_from_checkpoint(registry: Registry, path: Any, part: str = "student") -> tuple[Network, dict]:
    """The ``part`` network ("student" or "teacher") of an rtlab checkpoint, rebuilt from the backbone, head and
    input shape recorded in it (so stems and strides match the run that wrote it), and its metadata."""

    tensors, meta = load_checkpoint(path)
    missing = [k for k in ("backbone", "head", "data") if k not in meta]
    if missing:
        raise RtlabError(f"checkpoint {path} does not record its {', '.join(missing)} settings; it was not written "
                         "by an rtlab run")
    data = meta["data"]
    net = build_network(registry, meta["backbone"], meta["head"], int(data["channels"]), tuple(data["size"]),
                        seed=0)
    load_network_state(net, tensors, f"{part}.", str(path))
    return net, meta
