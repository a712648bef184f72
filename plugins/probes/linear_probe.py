"""Linear probe on frozen embeddings (PAPER.md §3), on the device.

A fresh ``nn.Linear(D, classes)`` (PyTorch's default init, seeded by ``eval.seed``) is trained with AdamW
(lr 1e-3, betas (0.9, 0.999), weight decay 0.01 — PyTorch's AdamW defaults, as the reference code) for 10
epochs of shuffled batches of 256 with cross-entropy, then scored on the test split. Two variants:

* ``linear`` — raw features, what the paper reports;
* ``linear_std`` — features standardised with the train split's mean and std (the reference code logged this
  too). Random embeddings have tiny norms and the raw probe underfits them within 10 epochs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from framework import hookimpl
from framework.errors import RtlabError


def train_linear_probe(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor,
                       test_labels: torch.Tensor, num_classes: int, epochs: int = 10, batch_size: int = 256,
                       lr: float = 1e-3, weight_decay: float = 0.01, seed: int = 0) -> float:
    """Test accuracy of a linear classifier trained on ``train`` features."""
    with _few_threads(train.device):
        return _train_linear_probe(train, train_labels, test, test_labels, num_classes, epochs, batch_size, lr,
                                   weight_decay, seed)


@contextlib.contextmanager
def _few_threads(device: torch.device):
    """One CPU thread for the probe's tiny matmuls: more only adds OpenMP synchronisation (measured 12x slower
    with 2 threads than with 1 on a busy 2-core machine: 14.9 s vs 1.3 s for 2 epochs of 50k x 512)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_linear_probe(train, train_labels, test, test_labels, num_classes, epochs, batch_size, lr, weight_decay,
                        seed) -> float:
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = torch.nn.Linear(train.shape[1], num_classes)
    clf = clf.to(train.device)
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=weight_decay, foreach=True)
    n = len(train)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(train.device)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(clf(train[idx]), train_labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        correct = sum(int((clf(test[i:i + 4096]).argmax(1) == test_labels[i:i + 4096]).sum())
                      for i in range(0, len(test), 4096))
    return correct / max(len(test), 1)


def standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = train.mean(0, keepdim=True)
    std = train.std(0, keepdim=True).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


@dataclass
class LinearProbeOptions:
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    raw: bool = True  # report `linear` (raw features, the paper's number)
    standardized: bool = True  # report `linear_std` (standardised features)


class LinearProbe:
    """Linear-probe accuracy on raw (``linear``) and standardised (``linear_std``) embeddings."""

    def __init__(self, opts: LinearProbeOptions) -> None:
        if opts.epochs <= 0 or opts.batch_size <= 0:
            raise RtlabError("evaluator.linear.epochs and batch_size must be positive")
        self.opts = opts

    def evaluate(self, features, run):
        if features.train_labels.min() < 0:
            raise RtlabError("the linear probe needs labels, but the dataset has none; set data.label_column "
                             "or drop the probe with evaluator=[]")
        o = self.opts
        out = {}
        args = dict(num_classes=features.num_classes, epochs=o.epochs, batch_size=o.batch_size, lr=o.lr,
                    weight_decay=o.weight_decay, seed=features.seed)
        with torch.enable_grad():
            if o.raw:
                out["linear"] = train_linear_probe(features.train, features.train_labels, features.test,
                                                   features.test_labels, **args)
            if o.standardized:
                tr, te = standardize(features.train, features.test)
                out["linear_std"] = train_linear_probe(tr, features.train_labels, te, features.test_labels,
                                                       **args)
        return out


@hookimpl
def rtlab_register(registry):
    registry.add("evaluator", "linear", LinearProbe, LinearProbeOptions)
