"""The DINO projection head with the paper's L2 bottleneck (PAPER.md §2.3).

``f(x) = V·(W h + b) / ‖W h + b‖₂`` where ``h`` is the MLP output: MLP (GELU, no norm) → linear to the
bottleneck → feature normalisation → last linear layer. Every part is switchable:

* ``weight_norm`` — normalise each row of the last layer to unit length (gain fixed at 1) as the paper's text
  describes. **Off by default**: in the released reference code this normalisation was a no-op, so the
  published numbers were produced without it (PAPER.md §2.7). ``weight_norm=true`` gives the described model.
* ``feature_norm`` — the L2 normalisation of the bottleneck output.

Head ``identity``: no head at all (supervised runs, whose objective puts a classifier on the encoder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from framework import hookimpl
from framework.errors import RtlabError


@dataclass
class DinoHeadOptions:
    hidden_dims: List[int] = field(default_factory=lambda: [2048, 2048])  # MLP widths ([] = no MLP)
    bottleneck_dim: int = 256  # linear layer into the L2 bottleneck (0 = none)
    out_dim: int = 65536  # m, the output (softmax) dimension
    activation: str = "gelu"  # gelu | relu
    batchnorm: bool = False  # BatchNorm1d after each hidden linear (DINO's use_bn)
    feature_norm: bool = True  # L2-normalise the bottleneck output
    weight_norm: bool = False  # unit-norm rows of the last layer (paper text); the published runs had none
    bottleneck_bias: bool = True
    last_bias: bool = False
    init_std: float = 0.02  # trunc-normal std of every linear weight; biases start at 0


class DinoHead(nn.Module):
    """MLP → L2 bottleneck → last layer."""

    def __init__(self, in_dim: int, opts: DinoHeadOptions) -> None:
        super().__init__()
        if opts.out_dim <= 0:
            raise RtlabError(f"head.out_dim must be positive, got {opts.out_dim}")
        if opts.activation not in ("gelu", "relu"):
            raise RtlabError(f"head.activation must be gelu or relu, got '{opts.activation}'")
        act = nn.GELU if opts.activation == "gelu" else nn.ReLU
        layers: list[nn.Module] = []
        dim = in_dim
        for width in opts.hidden_dims:
            layers.append(nn.Linear(dim, width))
            if opts.batchnorm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(act())
            dim = width
        if opts.bottleneck_dim:
            layers.append(nn.Linear(dim, opts.bottleneck_dim, bias=opts.bottleneck_bias))
            dim = opts.bottleneck_dim
        self.mlp = nn.Sequential(*layers)
        self.feature_norm = opts.feature_norm
        self.weight_norm = opts.weight_norm
        self.last = nn.Linear(dim, opts.out_dim, bias=opts.last_bias)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=opts.init_std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the last layer (normalised bottleneck output)."""
        z = self.mlp(x)
        return F.normalize(z, dim=-1, eps=1e-6) if self.feature_norm else z

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """The last layer applied to a bottleneck output."""
        w = F.normalize(self.last.weight, dim=1) if self.weight_norm else self.last.weight
        return F.linear(z, w, self.last.bias)

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


@hookimpl
def rtlab_register(registry):
    registry.add("head", "dino", dino_head, DinoHeadOptions)
    registry.add("head", "identity", identity_head, IdentityHeadOptions)
