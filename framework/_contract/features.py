"""Embeddings of any network at any stage, in or out of a run: what probes and analyses measure.

:func:`embed` is the public entry: ``embed(network, images, layers=[-1, -2])`` gives the encoder's embedding
(``-1``) and pooled intermediate stages of an rtlab :class:`Network` (or any timm backbone) for uint8 images, batched
and in eval mode, the way a run's evaluation computes them. Layers follow :mod:`framework._base.keys`: ``-1`` is the
embedding (the encoder's pooled output); any other int indexes timm's ``forward_intermediates`` stages (negative from
the end) and a string names a stage of the backbone's ``feature_info`` (``layer3``); intermediate maps are
global-average-pooled to (B, C).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
from torch import nn

from framework._base.errors import RtlabError
from framework._base.keys import EMBEDDING, Layer, check_layer, layer_suffix
from framework._nets import distributed
from framework._nets.models import clone
from framework._nets.placement import Placement


@dataclass
class Features:
    """Train and test embeddings of one target, with labels, on the run's device (float32)."""

    target: str
    train: torch.Tensor
    train_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    seed: int = 0
    layer: Any = EMBEDDING
    # the test embedding of another target (``teacher``, ``student``, ``student_init``: the student's initial
    # weights) at the same layer on the same dataset, extracted once per evaluation (representation comparisons)
    peer: Optional[Callable[[str], torch.Tensor]] = None

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])

    def other(self, target: str) -> torch.Tensor:
        if self.peer is None:
            raise RtlabError(f"the features of {self.target} carry no peers; '{target}' is not available")
        return self.peer(target)


def check_layers(layers: Sequence[Any]) -> list[Layer]:
    """``eval.layers`` as a list of valid, distinct layers."""
    suffixes = [layer_suffix(layer) for layer in layers]
    if not layers or len(set(suffixes)) != len(suffixes):
        raise RtlabError(f"eval.layers must be a non-empty list without repeats (eval.layers=[-1,-2]), got "
                         f"{list(layers)}")
    return list(layers)


def layer_embedder(net: nn.Module, layer: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """``net``'s representation at ``layer`` (see the module doc), pooled to (B, C). ``net`` is a
    :class:`Network` (encoder + head) or a bare timm backbone."""
    layer = check_layer(layer)
    enc = getattr(net, "encoder", net)
    if layer == EMBEDDING:
        return getattr(net, "embed", enc)
    if not hasattr(enc, "forward_intermediates") or not hasattr(enc, "feature_info"):
        raise RtlabError(f"eval.layers={layer!r} needs a timm backbone with forward_intermediates; "
                         f"{type(enc).__name__} has none (use eval.layers=[-1])")
    names = [info["module"] for info in enc.feature_info]
    if isinstance(layer, str):
        if layer not in names:
            raise RtlabError(f"eval.layers: the backbone has no stage '{layer}'; its stages are {', '.join(names)}")
        index = names.index(layer)
    elif -len(names) <= layer < len(names):
        index = layer % len(names)
    else:
        raise RtlabError(f"eval.layers: index {layer} is out of range; the backbone has {len(names)} stages "
                         f"({', '.join(names)})")

    def embed_at(x: torch.Tensor) -> torch.Tensor:
        out = enc.forward_intermediates(x, indices=[index], intermediates_only=True)[0]
        return out.mean(tuple(range(2, out.dim()))) if out.dim() > 2 else out  # global average pooling

    return embed_at


@contextlib.contextmanager
def eval_mode(*nets: nn.Module) -> Iterator[None]:
    """``nets`` in eval mode for the block, their modes restored after."""
    modes = [(m, m.training) for m in nets]
    for m, _ in modes:
        m.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.train(mode)


@torch.no_grad()
def extract(embedder: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, placement: Placement,
            batch_size: int = 1024, normalize: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
            ) -> torch.Tensor:
    """``embedder`` of every uint8 image, prepared by ``placement`` (normalised with ``normalize`` or the
    placement's own) in batches, as float32 rows. Under torchrun each process embeds its share and every process
    gets all rows."""
    out = []
    share = distributed.shard(images)
    for i in range(0, len(share), batch_size):
        x = placement.prepare(share[i:i + batch_size], normalize)
        with placement.autocast():
            out.append(embedder(x).float())
    return distributed.gather_rows(torch.cat(out)) if out else torch.zeros(0, 0, device=images.device)


@torch.no_grad()
def bn_control(net: nn.Module, images: torch.Tensor, placement: Placement, batch_size: int = 1024) -> nn.Module:
    """A copy of ``net`` whose BatchNorm running statistics are re-estimated on ``images`` (the BN control: the
    weights unchanged, only the statistics the data would give them)."""
    net = clone(net)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    net.train()
    encoder = getattr(net, "encoder", net)
    for i in range(0, len(images), batch_size):
        with placement.autocast():
            encoder(placement.prepare(images[i:i + batch_size]))
    return net.eval()


def embed(network: nn.Module, images: torch.Tensor, layers: Union[Layer, Sequence[Layer]] = EMBEDDING, *,
          placement: Optional[Placement] = None, batch_size: int = 256,
          normalize: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
          ) -> Union[torch.Tensor, dict[Layer, torch.Tensor]]:
    """Embeddings of ``images`` (uint8 (N, C, H, W), or [0, 1] floats) by ``network`` in eval mode, as float32 rows.

    ``layers`` is one layer (returns a tensor) or a list (returns ``{layer: tensor}``); see the module doc.
    ``placement`` defaults to the network's device in fp32; ``normalize`` to no normalisation beyond [0, 1] — pass
    the run's (``load_run(folder).data.normalizer(device)``) to match what the run's probes saw.
    """
    if placement is None:
        param = next(network.parameters(), None)
        placement = Placement(param.device if param is not None else torch.device("cpu"))
    wanted = [layers] if isinstance(layers, (int, str)) else list(layers)
    out = {}
    with eval_mode(network):
        for layer in check_layers(wanted):
            out[layer] = extract(layer_embedder(network, layer), images, placement, batch_size, normalize)
    return out[wanted[0]] if isinstance(layers, (int, str)) else out
