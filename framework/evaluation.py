"""Evaluation targets and batched feature extraction; evaluators receive the features, never the loop.

Targets (``eval.targets``):

* ``teacher`` — the teacher's encoder embedding;
* ``teacher_bn`` — the BN control: the teacher with its weights unchanged and only its BatchNorm running
  statistics re-estimated on the training images. The student trains in train mode, so its BN statistics move
  while an eval-mode random teacher keeps the identity statistics; only the gain beyond this control is the
  distillation effect. A teacher without BatchNorm is its own control;
* ``student`` — the student's encoder embedding;
* ``input`` — the flattened normalised pixels (the paper's "input" baseline).

Layers (``eval.layers``, default ``[-1]``): ``-1`` is the embedding (the encoder's pooled output, what every probe
measured before); any other entry is an intermediate representation from timm's ``forward_intermediates`` —
an int is its index (negative from the end: ``-2`` is the stage before the last) and a string a stage's name in the
backbone's ``feature_info`` (``layer3``) — global-average-pooled to (B, C). Such a target is ``<target>.L<i>`` or
``<target>.<name>`` (``knn/student.L-2``, ``linear/teacher.layer3@cifar100``); ``input`` has no layers.

Probe datasets: the training data (when it has labels) and every ``eval.datasets`` entry (transfer probing).
Metric keys are ``<metric>/<target>`` for the training data and ``<metric>/<target>@<key>`` for the others, e.g.
``linear/student@cifar100``. A probe dataset is resized to the training images' size and converted to their
number of channels unless its entry sets ``image_size``/``channels``, and normalised with its own statistics.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

from framework import distributed
from framework.errors import PluginError, RtlabError
from framework.models import clone, has_batchnorm, parameter_distance

if TYPE_CHECKING:
    from framework.data import ImageData, Normalize
    from framework.registry import Registry
    from framework.run import Run

log = logging.getLogger("rtlab")

BUILTIN_TARGETS = ("teacher", "teacher_bn", "student", "input")


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
    layer: Any = -1
    # the test embedding of another target (``teacher``, ``student``, ``student_init``: the student's initial
    # weights) at the same layer on the same dataset, extracted once per evaluation (representation comparisons)
    peer: Callable[[str], torch.Tensor] | None = None

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])

    def other(self, target: str) -> torch.Tensor:
        if self.peer is None:
            raise RtlabError(f"the features of {self.target} carry no peers; '{target}' is not available")
        return self.peer(target)


def layer_suffix(layer: Any) -> str:
    """``""`` for the embedding (-1), ``.L-2`` for an index, ``.layer3`` for a stage name (see the module doc)."""
    if isinstance(layer, bool) or not isinstance(layer, (int, str)) or layer == "" or (
            isinstance(layer, str) and any(c in layer for c in "/@")):
        raise RtlabError(f"eval.layers entries must be ints (-1 = the embedding, -2 = the stage before the last) or "
                         f"stage names without '/' or '@', got {layer!r}")
    return "" if layer == -1 else f".L{layer}" if isinstance(layer, int) else f".{layer}"


def check_layers(layers: Sequence[Any]) -> list[Any]:
    suffixes = [layer_suffix(layer) for layer in layers]
    if not layers or len(set(suffixes)) != len(suffixes):
        raise RtlabError(f"eval.layers must be a non-empty list without repeats (eval.layers=[-1,-2]), got "
                         f"{list(layers)}")
    return list(layers)


def layer_embedder(net: nn.Module, layer: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """``net``'s representation at ``layer`` (see the module doc), pooled to (B, C)."""
    if layer == -1:
        return net.embed
    enc = net.encoder
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

    def embed(x: torch.Tensor) -> torch.Tensor:
        out = enc.forward_intermediates(x, indices=[index], intermediates_only=True)[0]
        return out.mean(tuple(range(2, out.dim()))) if out.dim() > 2 else out  # global average pooling

    return embed


@torch.no_grad()
def extract(embed: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, run: "Run",
            normalize: "Normalize | None" = None) -> torch.Tensor:
    """``embed`` of every uint8 image, normalised (by default as in training) and batched, as float32 rows."""
    out = []
    bs = run.cfg.eval.batch_size
    share = distributed.shard(images)  # with torchrun: this process's rows; the others embed the rest
    for i in range(0, len(share), bs):
        x = run.prepare(share[i:i + bs], normalize)
        with run.autocast():
            out.append(embed(x).float())
    return distributed.gather_rows(torch.cat(out)) if out else torch.zeros(0, 0, device=images.device)


@torch.no_grad()
def bn_control(teacher: nn.Module, run: "Run") -> nn.Module:
    """A copy of ``teacher`` whose BatchNorm running statistics are re-estimated on the training images."""
    net = clone(teacher)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    net.train()
    images = run.data.train.images
    bs = run.cfg.eval.batch_size
    for i in range(0, len(images), bs):
        with run.autocast():
            net.encoder(run.prepare(images[i:i + bs]))
    return net.eval()


def initial_student(run: "Run") -> nn.Module:
    """The student with its initial weights (``run._init_student``) and fresh BatchNorm statistics (those of a
    just-built network)."""
    net = clone(run.student)
    with torch.no_grad():
        params = dict(net.named_parameters())
        for name, value in run._init_student.items():
            params[name].copy_(value)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
    return net.eval()


def target_embedder(run: "Run", target: str, cache: dict[str, Any] | None = None, layer: Any = -1
                    ) -> Callable[[torch.Tensor], torch.Tensor]:
    """How to embed normalised images for ``target`` at ``layer``; ``cache`` keeps the BN control (and the initial
    student) for one evaluation."""
    if target == "input":
        if layer != -1:
            raise RtlabError("the input target has no layers")
        return lambda x: x.flatten(1)
    cache = {} if cache is None else cache
    if target == "teacher":
        net = run.teacher
    elif target == "student":
        net = run.student
    elif target == "teacher_bn":
        if "teacher_bn" not in cache:
            cache["teacher_bn"] = bn_control(run.teacher, run) if has_batchnorm(run.teacher) else run.teacher
        net = cache["teacher_bn"]
    elif target == "student_init":
        if "student_init" not in cache:
            cache["student_init"] = initial_student(run)
        net = cache["student_init"]
    else:
        raise KeyError(target)
    return layer_embedder(net, layer)


class _EvalMode:
    """The student and teacher in eval mode for the block, their modes restored after."""

    def __init__(self, run: "Run") -> None:
        self.modes = [(m, m.training) for m in (run.student, run.teacher)]

    def __enter__(self) -> None:
        for m, _ in self.modes:
            m.eval()

    def __exit__(self, *exc: Any) -> None:
        for m, mode in self.modes:
            m.train(mode)


def features(run: "Run", target: str, data: "ImageData | None" = None, cache: dict[str, Any] | None = None,
             layer: Any = -1) -> Features:
    """Embeddings of the train and test split of ``data`` (default: the training data) for ``target`` at ``layer``,
    with the networks in eval mode. Their ``other(target)`` gives another target's test embedding (cached in
    ``cache`` for the evaluation)."""
    data = run.data if data is None else data
    normalize = None if data is run.data else data.normalizer(run.device)
    cache = {} if cache is None else cache
    with _EvalMode(run):
        embed = target_embedder(run, target, cache, layer)
        train = extract(embed, data.train.images, run, normalize)
        test = extract(embed, data.test.images, run, normalize)
    cache[("test", id(data), target, str(layer))] = test

    def peer(other: str) -> torch.Tensor:
        key = ("test", id(data), other, str(layer))
        if key not in cache:
            with _EvalMode(run):
                cache[key] = extract(target_embedder(run, other, cache, layer), data.test.images, run, normalize)
        return cache[key]

    return Features(target, train, data.train.labels, test, data.test.labels, data.num_classes, run.cfg.eval.seed,
                    layer, peer)


def load_probe_datasets(registry: "Registry", specs: Sequence[Any], train_data: "ImageData",
                        device: torch.device) -> dict[str, "ImageData"]:
    """The ``eval.datasets`` entries as decoded datasets on ``device``, by metric key (see the module doc)."""
    from framework.config import dataset_node
    from framework.data import load_image_data

    out: dict[str, ImageData] = {}
    h, w = train_data.size
    for spec in specs:
        key, node = dataset_node(registry, spec)
        if key in out:
            raise RtlabError(f"eval.datasets names '{key}' twice; give one entry another key ({{preset: ..., "
                             "key: NAME}})")
        if "/" in key or "@" in key:
            raise RtlabError(f"eval.datasets key '{key}' must not contain '/' or '@'")
        if node.get("image_size") is None and h == w:
            node.image_size = h
        if node.get("channels") is None:
            node.channels = train_data.channels
        data = load_image_data(registry, node, device)
        if not data.train.labelled or not data.test.labelled:
            raise RtlabError(f"probe dataset '{key}' has no labels; eval.datasets needs labelled data "
                             f"(set its label_column)")
        out[key] = data
    return out


# ------------------------------------------------------------------------------------------------- the run's part
class RunEvaluation:
    """Evaluation points and failure-tolerant calls (a part of :class:`framework.run.Run`)."""

    def probe_sets(self) -> dict[str, ImageData]:
        """The datasets the evaluators probe, by metric suffix: ``""`` is the training data (skipped when it has no
        labels or ``eval.train_data`` is false), then every ``eval.datasets`` entry."""
        sets = {"": self.data} if self.data.train.labelled and self.cfg.eval.train_data else {}
        return {**sets, **self.probe_data}

    def evaluate(self, epoch: int) -> dict[str, float]:
        """Run every evaluator on every target of every probe dataset; frozen targets are evaluated only the first
        time. The results also hold the parameter distances ``teacher_student_distance`` and
        ``student_distance_from_init`` (no ``/``: they are not accuracies). A failing evaluator is recorded in the
        summary and training goes on."""
        for exc in self.call_each("rtlab_evaluate_start", run=self, epoch=epoch):
            self.record_error("rtlab_evaluate_start", exc)
        results: dict[str, float] = {
            "teacher_student_distance": parameter_distance(self.student, self.teacher),
            "student_distance_from_init": parameter_distance(self.student, self._init_student),
        }
        cache: dict[Any, Any] = {}
        layers = check_layers(self.cfg.eval.layers)
        points = [(t, layer) for t in self.cfg.eval.targets for layer in layers if t != "input" or layer == -1]
        for key, data in self.probe_sets().items() if self.evaluators else ():
            for target, layer in points:
                name = target + layer_suffix(layer) + (f"@{key}" if key else "")
                frozen = target == "input" or (target in ("teacher", "teacher_bn") and self.teacher_frozen)
                if frozen and any(k.endswith(f"/{name}") for k in self.metrics):
                    continue
                try:  # every rank embeds its share; all get every row
                    feats = features(self, target, data, cache, layer)
                except Exception as exc:  # an optional part: recorded, training goes on
                    self.record_error(f"feature extraction for eval target '{name}' at epoch {epoch}", exc)
                    continue
                for ename, evaluator in (self.evaluators.items() if self.is_main else ()):
                    try:
                        values = evaluator.evaluate(feats, self)
                    except Exception as exc:
                        plugin = self.registry.get("evaluator", ename).plugin
                        self.record_error(f"evaluator '{ename}' (plugin {plugin}) on {name} at epoch {epoch}", exc)
                        continue
                    for metric, value in values.items():
                        results[f"{metric}/{name}"] = float(value)
                del feats
        del cache
        results = distributed.broadcast(results)
        self.metrics.update(results)
        self.history.append({"epoch": epoch, "step": self.step, **results})
        for exc in self.call_each("rtlab_evaluate_end", run=self, epoch=epoch, results=results):
            self.record_error("rtlab_evaluate_end", exc)
        return results

    def call_each(self, hook_name: str, **kwargs: Any) -> list[Exception]:
        """Every implementation of an after-training hook, failures collected (rank 0 only)."""
        return self.pm.call_each(hook_name, **kwargs) if self.is_main else []

    def record_error(self, where: str, exc: BaseException) -> None:
        """Note a failed optional part (evaluator, analysis, a plugin after training) in the summary and the log."""
        if isinstance(exc, (PluginError, RtlabError)) and where.startswith("rtlab_"):
            message = str(exc)
        else:
            detail = " ".join(str(exc).split())[:300]
            message = f"{where} failed: {type(exc).__name__}" + (f": {detail}" if detail else "")
        log.error("%s", message)
        log.debug("%s", "".join(traceback.format_exception(exc)))
        self.summary.setdefault("errors", []).append({"step": self.step, "error": message})

    def _eval_due(self, epoch: int) -> bool:
        every = self.cfg.eval.every
        return epoch == self.epochs or (every > 0 and epoch % every == 0)
