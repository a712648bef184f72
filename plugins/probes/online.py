"""Online linear probe (evaluator ``online_linear``): a classifier that learns alongside training.

As solo-learn's and stable-pretraining's online classifiers: a linear layer on the student's encoder embeddings,
trained with one AdamW step per training step on that step's batch — the embeddings the objective's own forward
pass computed for the augmented global views, detached (the probe never changes the network), with the images'
labels. Under data parallelism every process gathers all processes' rows and takes the same step, so the classifier
is the one one process would train. At every evaluation it scores the test split's student embeddings (eval mode):
``online_linear/student``. Its training accuracy and loss on the batches are logged every step
(``train/online_linear_acc``, ``train/online_linear_loss``).

Its number is not an offline probe's: it is trained on augmented training views while the network moves, for as
many steps as the run has, and its protocol (``probe: online``) says so in ``summary.json``; ``rtlab compare`` and
``rtlab aggregate`` never pool it with ``linear``. The classifier and its optimiser state are training state: a
resumed run continues them exactly. It starts at the first training step, so there is no online number before
training (``eval.before``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from framework.api import ACCURACY, RtlabError, distributed, hookimpl, stream_seed


@dataclass
class OnlineLinearOptions:
    lr: float = 1e-3  # AdamW's learning rate
    weight_decay: float = 0.0


class OnlineLinear:
    """A linear classifier trained on the training batches' detached student embeddings."""

    metric_kinds = {"online_linear": ACCURACY}

    def __init__(self, opts: OnlineLinearOptions) -> None:
        if opts.lr <= 0 or opts.weight_decay < 0:
            raise RtlabError(f"evaluator.online_linear.lr must be positive and weight_decay >= 0, got {opts.lr} and "
                             f"{opts.weight_decay}")
        self.opts = opts
        self.classifier: torch.nn.Linear | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._restored: dict[str, Any] | None = None
        self.metric_protocols = {"online_linear": {
            "probe": "online", "classifier": "linear", "features": "raw", "optimizer": "AdamW", "lr": opts.lr,
            "lr_choice": "fixed", "weight_decay": opts.weight_decay, "batch": "every training batch, once",
            "fit": "training batches (the student's detached embeddings of the augmented global views)",
            "scored_on": "test split"}}

    def _build(self, dim: int, classes: int, seed: int, like: torch.Tensor) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            layer = torch.nn.Linear(dim, classes)
        self.classifier = layer.to(like.device, like.dtype)
        self.optimizer = torch.optim.AdamW(self.classifier.parameters(), lr=self.opts.lr,
                                           weight_decay=self.opts.weight_decay, foreach=True)

    def _ready(self, like: torch.Tensor) -> bool:
        """Whether a classifier exists (one restored from a training state is rebuilt on ``like``'s device)."""
        if self.classifier is None and self._restored:
            weight = self._restored["classifier"]["weight"]
            self._build(weight.shape[1], weight.shape[0], 0, like)
            self.classifier.load_state_dict(self._restored["classifier"])
            self.optimizer.load_state_dict(self._restored["optimizer"])
            self._restored = None
        return self.classifier is not None

    def observe(self, run: Any, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        x, y = distributed.gather_rows(embeddings), distributed.gather_rows(labels)  # the global batch
        if not self._ready(x):
            self._build(x.shape[1], run.data.num_classes, stream_seed(run.cfg.train.seed, "online_linear"), x)
        with torch.enable_grad():
            logits = self.classifier(x.to(self.classifier.weight.dtype))
            loss = F.cross_entropy(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.step()
        return {"online_linear_acc": (logits.argmax(1) == y).float().mean().detach(),
                "online_linear_loss": loss.detach()}

    def evaluate(self, features, run):
        training_data = features.test_labels is run.data.test.labels  # not an eval.datasets entry
        if not self._ready(features.test) or features.target != "student" or features.layer != -1 \
                or not training_data:
            return {}
        with torch.no_grad():
            w = self.classifier.weight
            correct = sum(int((self.classifier(features.test[i:i + 4096].to(w.dtype)).argmax(1)
                               == features.test_labels[i:i + 4096]).sum()) for i in range(0, len(features.test), 4096))
        return {"online_linear": correct / max(len(features.test), 1)}

    # the classifier and its optimiser are training state (framework.api Stateful)
    def state_dict(self) -> dict[str, Any]:
        if self.classifier is None:
            return dict(self._restored or {})
        return {"classifier": self.classifier.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.classifier = self.optimizer = None
        self._restored = dict(state) or None  # rebuilt on the run's device at its next use


@hookimpl
def rtlab_register(registry):
    registry.add("evaluator", "online_linear", OnlineLinear, OnlineLinearOptions,
                 doc="online linear probe: trained on the training batches' detached student embeddings, scored on "
                     "the test split at each evaluation")
