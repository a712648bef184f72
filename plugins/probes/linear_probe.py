"""Linear probe on frozen embeddings (docs/paper.md#evaluation-protocol), on the device.

A fresh ``nn.Linear(D, classes)`` (PyTorch's default init, seeded by ``eval.seed``) is trained with AdamW
(lr 1e-3, betas (0.9, 0.999), weight decay 0.01 — PyTorch's AdamW defaults, as the reference code) for 10
epochs of shuffled batches of 256 with cross-entropy, then scored on the test split. Two variants:

* ``linear`` — raw features, what the paper reports;
* ``linear_std`` — features standardised with the train split's mean and std (the reference code logged this
  too). Random embeddings have tiny norms and the raw probe underfits them within 10 epochs.

Protocols of other papers (docs/experiments.md#probe-protocols):

* ``lr=[1e-4,1e-3,1e-2]`` — a learning-rate grid: one head per lr, all trained at once as one batched product
  (weights (G, D, C), ``torch.baddbmm``) on the train split minus a seeded validation split (``val_fraction``) held
  out from the *training* images; the head with the best validation accuracy is chosen and ``linear`` is its test
  accuracy. The test split is only scored, never used to choose. Also ``linear_lr`` (the chosen lr) and
  ``linear_val_lr<lr>`` (every head's validation accuracy);
* ``logreg`` — multinomial logistic regression fitted by L-BFGS for a sweep of inverse regularisation strengths C
  (scikit-learn's convention), all C at once, chosen on the same kind of validation split (small data);
* ``fewshot`` — n labelled images per class drawn from the train split, ``draws`` times (seeded), an L-BFGS
  logistic regression per draw (all draws at once); the mean and std of the test accuracy over the draws.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, List, Sequence

import torch
import torch.nn.functional as F

from framework.api import hookimpl, MetricKind, one_cpu_thread, RtlabError


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
    with one_cpu_thread():
        yield


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


def validation_split(n: int, fraction: float, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit rows, validation rows) of ``n`` training rows: a seeded random ``fraction`` is held out (at least one row
    each side)."""
    if not 0 < fraction < 1:
        raise RtlabError(f"the validation fraction must lie in (0, 1), got {fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919)).to(device)
    n_val = min(max(1, round(fraction * n)), n - 1)
    return perm[n_val:], perm[:n_val]


def _accuracies(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Accuracy of every head (weight (G, D, C), bias (G, 1, C)) on the rows ``x`` with labels ``y`` (G,)."""
    correct = torch.zeros(len(weight), device=x.device)
    with torch.no_grad():
        for i in range(0, len(x), 4096):
            xb = x[i:i + 4096]
            logits = torch.baddbmm(bias, xb.expand(len(weight), -1, -1), weight)
            correct += (logits.argmax(2) == y[i:i + 4096]).sum(1)
    return correct / max(len(x), 1)


def _init_heads(g: int, d: int, c: int, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``g`` copies of nn.Linear(d, c)'s default init (uniform ±1/√d), seeded: every head starts alike."""
    gen = torch.Generator().manual_seed(seed)
    bound = 1 / d ** 0.5
    w = (torch.rand(d, c, generator=gen) * 2 - 1) * bound
    b = (torch.rand(1, c, generator=gen) * 2 - 1) * bound
    return (w.expand(g, d, c).clone().to(device).requires_grad_(),
            b.expand(g, 1, c).clone().to(device).requires_grad_())


def train_linear_grid(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
                      num_classes: int, lrs: Sequence[float], epochs: int = 10, batch_size: int = 256,
                      weight_decay: float = 0.01, seed: int = 0, val_fraction: float = 0.1) -> dict[str, Any]:
    """A linear head per learning rate, trained concurrently with AdamW on the train split minus a held-out
    validation split; the head with the best validation accuracy (the first on ties) is chosen. Returns ``acc``
    (its test accuracy), ``lr``, ``val`` (every head's validation accuracy) and ``test`` (every head's test
    accuracy: for inspection, never used to choose)."""
    with _few_threads(train.device):
        fit, val = validation_split(len(train), val_fraction, seed, train.device)
        g, d = len(lrs), train.shape[1]
        w, b = _init_heads(g, d, num_classes, seed, train.device)
        lr = torch.tensor(list(lrs), dtype=train.dtype, device=train.device).view(g, 1, 1)
        state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in (w, b)]
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        gen = torch.Generator().manual_seed(seed)
        x_fit, y_fit = train[fit], train_labels[fit]
        step = 0
        for _ in range(epochs):
            perm = torch.randperm(len(fit), generator=gen).to(train.device)
            for i in range(0, len(fit), batch_size):
                idx = perm[i:i + batch_size]
                logits = torch.baddbmm(b, x_fit[idx].expand(g, -1, -1), w)  # (G, B, C): every head in one product
                loss = F.cross_entropy(logits.flatten(0, 1), y_fit[idx].repeat(g)) * g  # sum of per-head means
                gw, gb = torch.autograd.grad(loss, (w, b))
                step += 1
                with torch.no_grad():  # AdamW (PyTorch's algorithm) with one lr per head
                    for p, grad, (m, v) in zip((w, b), (gw, gb), state):
                        p.mul_(1 - lr * weight_decay)
                        m.mul_(beta1).add_(grad, alpha=1 - beta1)
                        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                        denom = (v / (1 - beta2 ** step)).sqrt_().add_(eps)
                        p.sub_(lr / (1 - beta1 ** step) * m / denom)
        val_acc = _accuracies(w, b, train[val], train_labels[val].expand(g, -1))
        test_acc = _accuracies(w, b, test, test_labels.expand(g, -1))
    best = int(val_acc.argmax())
    return {"acc": float(test_acc[best]), "lr": float(lrs[best]), "val": [float(v) for v in val_acc],
            "test": [float(t) for t in test_acc]}


def lbfgs_heads(x: torch.Tensor, y: torch.Tensor, num_classes: int, c: Sequence[float], max_iter: int = 100
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regressions fitted by L-BFGS, one per inverse regularisation strength in ``c``
    (scikit-learn's objective divided by C·n: mean cross-entropy + ||W||² / (2·C·n), bias unpenalised), all at once.
    ``x`` is (N, D) shared by every head or (G, N, D) one set per head, ``y`` (N,) or (G, N)."""
    g = len(c)
    xs = x.expand(g, -1, -1) if x.dim() == 2 else x
    ys = (y.expand(g, -1) if y.dim() == 1 else y).flatten()
    n, d = xs.shape[1], xs.shape[2]
    w = torch.zeros(g, d, num_classes, device=x.device, requires_grad=True)
    b = torch.zeros(g, 1, num_classes, device=x.device, requires_grad=True)
    penalty = (1.0 / (2 * torch.tensor(list(c), dtype=x.dtype, device=x.device) * n)).view(g, 1, 1)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=10, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure():
        opt.zero_grad(set_to_none=True)
        logits = torch.baddbmm(b, xs, w)
        # the heads are independent: the sum of their objectives has each one's minimum as its minimum
        loss = F.cross_entropy(logits.flatten(0, 1), ys) * g + (penalty * w.pow(2)).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def _lrs(value: Any, name: str) -> list[float] | None:
    """A grid option as a list of positive floats (None for a scalar)."""
    if not isinstance(value, Sequence) or isinstance(value, str):
        if not isinstance(value, (int, float)) or value <= 0:
            raise RtlabError(f"{name} must be a positive number or a list of them, got {value}")
        return None
    values = list(value)
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values):
        raise RtlabError(f"{name} must be a positive number or a non-empty list of them ({name}=[1e-4,1e-3,1e-2]), "
                         f"got {value}")
    return [float(v) for v in values]


@dataclass
class LinearProbeOptions:
    epochs: int = 10
    batch_size: int = 256
    lr: Any = 1e-3  # a number, or a grid [1e-4, 1e-3, 1e-2] chosen on a validation split of the train images
    weight_decay: float = 0.01
    val_fraction: float = 0.1  # with an lr grid: the share of the train images held out to choose the lr
    raw: bool = True  # report `linear` (raw features, the paper's number)
    standardized: bool = True  # report `linear_std` (standardised features)


def _needs_labels(features, probe: str) -> None:
    if features.train_labels.min() < 0:
        raise RtlabError(f"the {probe} needs labels, but the dataset has none; set data.label_column "
                         "or drop the probe with evaluator=[]")


class LinearProbe:
    """Linear-probe accuracy on raw (``linear``) and standardised (``linear_std``) embeddings."""

    def __init__(self, opts: LinearProbeOptions) -> None:
        if opts.epochs <= 0 or opts.batch_size <= 0:
            raise RtlabError("evaluator.linear.epochs and batch_size must be positive")
        self.grid = _lrs(opts.lr, "evaluator.linear.lr")
        if self.grid is not None and not 0 < opts.val_fraction < 1:
            raise RtlabError(f"evaluator.linear.val_fraction must lie in (0, 1), got {opts.val_fraction}")
        self.metric_kinds = ({"linear_lr": MetricKind.number(), "linear_std_lr": MetricKind.number()}
                             if self.grid else {})
        self.opts = opts

    def evaluate(self, features, run):
        _needs_labels(features, "linear probe")
        o = self.opts
        out = {}
        variants = []
        if o.raw:
            variants.append(("linear", features.train, features.test))
        if o.standardized:
            variants.append(("linear_std", *standardize(features.train, features.test)))
        with torch.enable_grad():
            for name, tr, te in variants:
                if self.grid is None:
                    out[name] = train_linear_probe(tr, features.train_labels, te, features.test_labels,
                                                   features.num_classes, o.epochs, o.batch_size, o.lr,
                                                   o.weight_decay, features.seed)
                    continue
                res = train_linear_grid(tr, features.train_labels, te, features.test_labels, features.num_classes,
                                        self.grid, o.epochs, o.batch_size, o.weight_decay, features.seed,
                                        o.val_fraction)
                out[name] = res["acc"]
                out[f"{name}_lr"] = res["lr"]
                out.update({f"{name}_val_lr{lr:g}": acc for lr, acc in zip(self.grid, res["val"])})
        return out


@dataclass
class LogRegOptions:
    C: List[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0])  # inverse regularisation sweep
    max_iter: int = 100  # L-BFGS iterations
    val_fraction: float = 0.2  # share of the train images held out to choose C
    standardized: bool = True  # standardise the features with the train split's statistics first


class LogRegProbe:
    """Logistic regression (L-BFGS, C chosen on a held-out validation split of the train images): ``logreg`` (test
    accuracy of the chosen C), ``logreg_c`` (the chosen C)."""

    metric_kinds = {"logreg_c": MetricKind.number()}

    def __init__(self, opts: LogRegOptions) -> None:
        self.cs = _lrs(list(opts.C), "evaluator.logreg.C")
        if opts.max_iter <= 0 or not 0 < opts.val_fraction < 1:
            raise RtlabError("evaluator.logreg.max_iter must be positive and val_fraction lie in (0, 1)")
        self.opts = opts

    def evaluate(self, features, run):
        _needs_labels(features, "logistic-regression probe")
        o = self.opts
        tr, te = standardize(features.train, features.test) if o.standardized else (features.train, features.test)
        with _few_threads(tr.device):
            fit, val = validation_split(len(tr), o.val_fraction, features.seed, tr.device)
            w, b = lbfgs_heads(tr[fit], features.train_labels[fit], features.num_classes, self.cs, o.max_iter)
            val_acc = _accuracies(w, b, tr[val], features.train_labels[val].expand(len(self.cs), -1))
            best = int(val_acc.argmax())
            test_acc = _accuracies(w[best:best + 1], b[best:best + 1], te, features.test_labels[None])
        return {"logreg": float(test_acc[0]), "logreg_c": self.cs[best]}


@dataclass
class FewShotOptions:
    shots: List[int] = field(default_factory=lambda: [5])  # labelled train images per class
    draws: int = 5  # independent draws of the few-shot train sets (seeded by eval.seed)
    C: float = 1.0  # inverse regularisation of the L-BFGS logistic regression
    max_iter: int = 100
    standardized: bool = True


class FewShotProbe:
    """Few-shot logistic regression: per n in ``shots``, ``fewshot_n<n>`` (mean test accuracy over the draws) and
    ``fewshot_n<n>_std`` (their sample standard deviation, a fraction)."""

    def __init__(self, opts: FewShotOptions) -> None:
        if not opts.shots or any(int(n) <= 0 for n in opts.shots) or opts.draws <= 0 or opts.C <= 0:
            raise RtlabError("evaluator.fewshot.shots must be positive ints, draws and C positive")
        self.metric_kinds = {f"fewshot_n{int(n)}_std": MetricKind.number(higher_is_better=False) for n in opts.shots}
        self.opts = opts

    def evaluate(self, features, run):
        _needs_labels(features, "few-shot probe")
        o = self.opts
        tr, te = standardize(features.train, features.test) if o.standardized else (features.train, features.test)
        labels = features.train_labels
        classes = features.num_classes
        by_class = [torch.nonzero(labels == c).flatten().cpu() for c in range(classes)]
        out = {}
        with _few_threads(tr.device):
            for n in (int(v) for v in o.shots):
                if min(len(rows) for rows in by_class) < n:
                    raise RtlabError(f"evaluator.fewshot.shots: a class has fewer than {n} train images")
                gen = torch.Generator().manual_seed(features.seed * 1000 + n)
                picks = torch.stack([torch.cat([rows[torch.randperm(len(rows), generator=gen)[:n]]
                                                for rows in by_class])
                                     for _ in range(o.draws)]).to(tr.device)  # (draws, n·classes)
                w, b = lbfgs_heads(tr[picks], labels[picks], classes, [o.C] * o.draws, o.max_iter)
                acc = _accuracies(w, b, te, features.test_labels.expand(o.draws, -1))
                out[f"fewshot_n{n}"] = float(acc.mean())
                out[f"fewshot_n{n}_std"] = float(acc.std()) if o.draws > 1 else 0.0
        return out


@hookimpl
def rtlab_register(registry):
    registry.add("evaluator", "linear", LinearProbe, LinearProbeOptions)
    registry.add("evaluator", "logreg", LogRegProbe, LogRegOptions)
    registry.add("evaluator", "fewshot", FewShotProbe, FewShotOptions)
