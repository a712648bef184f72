"""The DINO projection head with the paper's L2 bottleneck (docs/paper.md#architectures, App. B.2).

``f(x) = V·(W h + b) / ‖W h + b‖₂`` where ``h`` is the MLP output: MLP (GELU, no norm) → linear into the
bottleneck (``lin1``) → feature normalisation (``fn1``) → last linear layer (``lin2``). Every part is switchable:

* ``bottleneck_dim`` — width of ``lin1``; 0 removes it (the last layer then reads the MLP output);
* ``bottleneck_bias`` / ``last_bias`` — biases of ``lin1`` / ``lin2``;
* ``bottleneck_weight_norm`` (``wn1``) / ``weight_norm`` (``wn2``) — unit-norm rows of ``lin1`` / ``lin2``, gain
  fixed at 1. ``weight_norm`` is **off by default**: in the released reference code weight normalisation was a
  no-op, so the published numbers were made without it (docs/paper.md#weight-norm). ``weight_norm=true`` gives the model
  the paper's text describes;
* ``feature_norm`` (``fn1``) — the L2 normalisation of the bottleneck output;
* ``output_norm`` (``fn2``) — an L2 normalisation of the output itself;
* ``layout`` — all six at once in the reference code's notation ``wn1/lin1/fn1/wn2/lin2/fn2``, each part
  ``wn``/``-``, ``l``/``lb`` (linear without/with bias)/``-``, ``fn``/``-``: e.g. ``-/lb/fn/wn/l/-`` (the paper's
  default), ``-/-/-/-/l/fn`` (one linear layer, then feature norm). Fig. 12 sweeps these strings. When set, it
  overrides the six individual switches.

Head ``identity``: no head at all (supervised runs, whose objective puts a classifier on the encoder).

Head ``mlp``: the projection MLP of the joint-embedding methods (SimCLR, BYOL, SimSiam, Barlow Twins, VICReg):
``hidden_dims`` linear layers, each followed by BatchNorm (``batchnorm``) and the activation, then a linear layer to
``out_dim``, optionally followed by BatchNorm (``output_batchnorm``, SimSiam). PyTorch's default initialisation.
The method plugins register it again under their own names with their papers' widths (``head=byol``, …).
:class:`MLP` is usable on its own (the BYOL and SimSiam predictors are MLPs too).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from framework.api import hookimpl, RtlabError


@dataclass
class DinoHeadOptions:
    hidden_dims: List[int] = field(default_factory=lambda: [2048, 2048])  # MLP widths ([] = no MLP)
    bottleneck_dim: int = 256  # linear layer into the L2 bottleneck (0 = none)
    out_dim: int = 65536  # m, the output (softmax) dimension
    activation: str = "gelu"  # gelu | relu
    batchnorm: bool = False  # BatchNorm1d after each hidden linear (DINO's use_bn)
    feature_norm: bool = True  # fn1: L2-normalise the bottleneck output
    weight_norm: bool = False  # wn2: unit-norm rows of the last layer (paper text); the published runs had none
    bottleneck_bias: bool = True
    last_bias: bool = False
    bottleneck_weight_norm: bool = False  # wn1: unit-norm rows of the bottleneck layer
    output_norm: bool = False  # fn2: L2-normalise the output
    layout: Optional[str] = None  # "wn1/lin1/fn1/wn2/lin2/fn2", e.g. "-/lb/fn/wn/l/-"; overrides the switches
    init_std: float = 0.02  # trunc-normal std of every linear weight; biases start at 0


def apply_layout(opts: DinoHeadOptions) -> DinoHeadOptions:
    """``opts`` with the six bottleneck switches read from ``opts.layout`` (unchanged when it is None)."""
    if opts.layout is None:
        return opts
    parts = opts.layout.split("/")
    allowed = (("wn", "-"), ("l", "lb", "-"), ("fn", "-"))
    if len(parts) != 6 or any(p not in allowed[i % 3] for i, p in enumerate(parts)):
        raise RtlabError(f"head.layout '{opts.layout}' is not wn1/lin1/fn1/wn2/lin2/fn2 with parts wn|-, l|lb|-, "
                         "fn|- (e.g. -/lb/fn/wn/l/-)")
    wn1, lin1, fn1, wn2, lin2, fn2 = parts
    if lin2 == "-":
        raise RtlabError(f"head.layout '{opts.layout}' removes the last layer; the head needs lin2 (l or lb)")
    if lin1 == "-" and wn1 == "wn":
        raise RtlabError(f"head.layout '{opts.layout}' normalises the weights of a bottleneck layer it removes")
    return replace(opts, bottleneck_dim=opts.bottleneck_dim if lin1 != "-" else 0, bottleneck_bias=lin1 == "lb",
                   bottleneck_weight_norm=wn1 == "wn", feature_norm=fn1 == "fn", weight_norm=wn2 == "wn",
                   last_bias=lin2 == "lb", output_norm=fn2 == "fn")


def activation_layer(name: str) -> type[nn.Module]:
    """The activation module class of ``head.activation``."""
    if name not in ("gelu", "relu"):
        raise RtlabError(f"head.activation must be gelu or relu, got '{name}'")
    return nn.GELU if name == "gelu" else nn.ReLU


class NormalizedLinear(nn.Linear):
    """A linear layer whose weight rows are optionally normalised to unit length in the forward pass."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool, weight_norm: bool) -> None:
        super().__init__(in_dim, out_dim, bias=bias)
        self.weight_norm = weight_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.normalize(self.weight, dim=1) if self.weight_norm else self.weight
        return F.linear(x, w, self.bias)


class DinoHead(nn.Module):
    """MLP → L2 bottleneck → last layer."""

    def __init__(self, in_dim: int, opts: DinoHeadOptions) -> None:
        super().__init__()
        opts = apply_layout(opts)
        if opts.out_dim <= 0:
            raise RtlabError(f"head.out_dim must be positive, got {opts.out_dim}")
        act = activation_layer(opts.activation)
        layers: list[nn.Module] = []
        dim = in_dim
        for width in opts.hidden_dims:
            layers.append(nn.Linear(dim, width))
            if opts.batchnorm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(act())
            dim = width
        if opts.bottleneck_dim:
            layers.append(NormalizedLinear(dim, opts.bottleneck_dim, opts.bottleneck_bias,
                                           opts.bottleneck_weight_norm))
            dim = opts.bottleneck_dim
        self.mlp = nn.Sequential(*layers)
        self.feature_norm = opts.feature_norm
        self.output_norm = opts.output_norm
        self.last = NormalizedLinear(dim, opts.out_dim, opts.last_bias, opts.weight_norm)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=opts.init_std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def weight_norm(self) -> bool:
        return self.last.weight_norm

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the last layer (normalised bottleneck output)."""
        z = self.mlp(x)
        return F.normalize(z, dim=-1, eps=1e-6) if self.feature_norm else z

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """The last layer (and the output normalisation) applied to a bottleneck output."""
        y = self.last(z)
        return F.normalize(y, dim=-1, eps=1e-6) if self.output_norm else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.bottleneck(x))


def dino_head(opts: DinoHeadOptions, in_dim: int) -> DinoHead:
    """DINO projection head: MLP → L2 bottleneck → (optionally weight-normalised) last layer."""
    return DinoHead(in_dim, opts)


@dataclass
class IdentityHeadOptions:
    pass


def identity_head(opts: IdentityHeadOptions, in_dim: int) -> nn.Module:
    """No projection head: the network's output is the encoder embedding (supervised runs add a classifier)."""
    return nn.Identity()


@dataclass
class MLPHeadOptions:
    hidden_dims: List[int] = field(default_factory=lambda: [2048])  # hidden linear layers ([] = one linear layer)
    out_dim: int = 128
    batchnorm: bool = True  # BatchNorm1d after every hidden linear layer
    activation: str = "relu"  # relu | gelu
    output_bias: bool = True  # bias of the last linear layer
    output_batchnorm: bool = False  # BatchNorm1d on the output (SimSiam's projector)
    output_affine: bool = True  # learnable scale and shift of that output BatchNorm


class MLP(nn.Sequential):
    """Linear → [BN] → activation, for every hidden width, then linear → [BN]; ``out_dim`` is the output width."""

    def __init__(self, in_dim: int, opts: MLPHeadOptions) -> None:
        if opts.out_dim <= 0 or any(w <= 0 for w in opts.hidden_dims):
            raise RtlabError(f"head.out_dim and head.hidden_dims must be positive, got {opts.out_dim} and "
                             f"{list(opts.hidden_dims)}")
        act = activation_layer(opts.activation)
        layers: list[nn.Module] = []
        dim = in_dim
        for width in opts.hidden_dims:
            # a bias followed by BatchNorm is cancelled by the normalisation
            layers.append(nn.Linear(dim, width, bias=not opts.batchnorm))
            if opts.batchnorm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(act())
            dim = width
        layers.append(nn.Linear(dim, opts.out_dim, bias=opts.output_bias and not opts.output_batchnorm))
        if opts.output_batchnorm:
            layers.append(nn.BatchNorm1d(opts.out_dim, affine=opts.output_affine))
        super().__init__(*layers)
        self.out_dim = opts.out_dim


def mlp_head(opts: MLPHeadOptions, in_dim: int) -> MLP:
    """Projection MLP (linear, BN, ReLU, …, linear) of the joint-embedding SSL methods."""
    return MLP(in_dim, opts)


@hookimpl
def rtlab_register(registry):
    registry.add("head", "dino", dino_head, DinoHeadOptions)
    registry.add("head", "identity", identity_head, IdentityHeadOptions)
    registry.add("head", "mlp", mlp_head, MLPHeadOptions)
