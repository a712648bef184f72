"""Supervised training as one more objective of the same loop (docs/paper.md#fig-8: the IMP and LMC fine-tuning).

* objective ``supervised`` — cross-entropy of a fresh linear classifier on the student's encoder against the
  labels of the batch (``run.data.train.labels[index]``). The classifier is created by the objective (seeded by
  ``classifier_seed``, so runs that differ only in ``train.seed`` start from the same classifier) and trained
  with the encoder; the student's projection head is not used (pair with ``head=identity``). With
  ``classifier_from=CHECKPOINT`` the classifier starts from a supervised checkpoint instead (with
  ``student=checkpoint`` on the same file this continues from epoch l of a supervised run);
* evaluator ``classifier`` — test accuracy of that classifier on the student's encoder (metric ``classifier``);
* checkpoints of supervised runs carry the classifier as ``classifier.*`` tensors, so every checkpoint is a
  complete classifier network (:func:`classifier_state` reads it back).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from framework.api import hookimpl, load_checkpoint, prefixed, RtlabError, strip_prefix

CLASSIFIER_PREFIX = "classifier."


class ClassifierNet(nn.Module):
    """An encoder followed by a linear classifier: the network supervised analyses train, prune and interpolate.

    It shares its modules with the run (``run.student.encoder`` and the objective's classifier); its state keys
    are ``encoder.*`` and ``classifier.*``.
    """

    def __init__(self, encoder: nn.Module, classifier: nn.Linear) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(x))


def classifier_state(tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The ``ClassifierNet`` state (``encoder.*``, ``classifier.*``) held by a supervised checkpoint."""
    encoder = strip_prefix(tensors, "student.encoder.")
    head = strip_prefix(tensors, CLASSIFIER_PREFIX)
    if not encoder or not head:
        raise RtlabError(f"checkpoint {source} holds no classifier network (it was not written by a run with "
                         "objective=supervised); start from its encoder with student:PATH instead")
    return {**prefixed(encoder, "encoder."), **prefixed(head, "classifier.")}


def load_classifier(classifier: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load the ``classifier.*`` entries of a checkpoint into ``classifier`` (mask buffers only where it has them)."""
    state = strip_prefix(tensors, CLASSIFIER_PREFIX)
    own = classifier.state_dict()
    if not state or any(k not in state for k in own):
        raise RtlabError(f"checkpoint {source} has no classifier; it must come from a run with "
                         "objective=supervised")
    shapes = {k: (tuple(state[k].shape), tuple(v.shape)) for k, v in own.items()}
    if any(a != b for a, b in shapes.values()):
        raise RtlabError(f"the classifier in {source} does not fit this run ({shapes}); use a checkpoint of the "
                         "same backbone and dataset")
    classifier.load_state_dict({k: state[k] for k in own})


@dataclass
class SupervisedOptions:
    classifier_seed: int = 0  # init of the fresh linear classifier (independent of train.seed)
    classifier_from: Optional[str] = None  # a supervised checkpoint whose classifier to start from
    label_smoothing: float = 0.0


class Supervised:
    """Cross-entropy of a linear classifier on the student's encoder, with the dataset's labels."""

    def __init__(self, opts: SupervisedOptions) -> None:
        if not 0.0 <= opts.label_smoothing < 1.0:
            raise RtlabError(f"objective.label_smoothing must be in [0, 1), got {opts.label_smoothing}")
        self.opts = opts
        self.classifier: nn.Linear
        self.net: ClassifierNet

    def setup(self, run):
        if not run.data.train.labelled or not run.data.num_classes:
            raise RtlabError("objective=supervised needs labels, but the train split has none; set "
                             "data.label_column")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.opts.classifier_seed)
            classifier = nn.Linear(run.student.embed_dim, run.data.num_classes)
        if self.opts.classifier_from:
            tensors, _ = load_checkpoint(self.opts.classifier_from)
            load_classifier(classifier, tensors, self.opts.classifier_from)
        self.classifier = run.place(classifier)
        self.net = ClassifierNet(run.student.encoder, self.classifier)
        return list(self.classifier.parameters())

    # The classifier trains with the student: it is training state, restored on every rank by framework/_run/state.py.
    def state_dict(self):
        return {"classifier": self.classifier.state_dict()}

    def load_state_dict(self, state):
        self.classifier.load_state_dict(state["classifier"])

    def loss(self, run, views, index):
        labels = run.data.train.labels[index]
        total = None
        correct = None
        for view in views:
            logits = self.net(view).float()
            value = F.cross_entropy(logits, labels, label_smoothing=self.opts.label_smoothing)
            hits = (logits.detach().argmax(1) == labels).float().mean()
            total = value if total is None else total + value
            correct = hits if correct is None else correct + hits
        n = len(views)
        return total / n, {"accuracy": correct / n}


@dataclass
class ClassifierEvalOptions:
    pass


class ClassifierAccuracy:
    """Test accuracy of the supervised objective's classifier on the target's embeddings (metric ``classifier``)."""

    def __init__(self, opts: ClassifierEvalOptions) -> None:
        self.opts = opts

    def evaluate(self, features, run):
        classifier = getattr(run.objective, "classifier", None)
        if not isinstance(classifier, nn.Module):
            raise RtlabError("evaluator=classifier needs an objective with a classifier (objective=supervised)")
        with torch.no_grad():
            logits = classifier(features.test)
        return {"classifier": float((logits.argmax(1) == features.test_labels).float().mean())}


def is_supervised(run) -> bool:
    return isinstance(getattr(run, "objective", None), Supervised)


@hookimpl
def rtlab_register(registry):
    registry.add("objective", "supervised", Supervised, SupervisedOptions)
    registry.add("evaluator", "classifier", ClassifierAccuracy, ClassifierEvalOptions)


@hookimpl
def rtlab_checkpoint_save(run, tensors, meta):
    """Weight checkpoints (``final``, ``epoch_N``) carry the classifier for the analyses that reload them; the
    training state has it through the objective's ``state_dict``."""
    if is_supervised(run) and meta.get("kind") == "weights":
        tensors.update(prefixed(run.objective.classifier.state_dict(), CLASSIFIER_PREFIX))
        meta["classifier"] = {"classes": run.data.num_classes, "in_dim": run.student.embed_dim}
