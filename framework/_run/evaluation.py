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
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

from framework._base.keys import format_key, format_point, parse_key
from framework._contract.features import Features, bn_control, check_layers, eval_mode, extract, layer_embedder
from framework._config.compose import dataset_node
from framework._data.data import load_image_data
from framework._nets import distributed
from framework._base.errors import RtlabError
from framework._nets.models import clone, has_batchnorm, parameter_distance

if TYPE_CHECKING:
    from framework._data.data import ImageData
    from framework._base.registry import Registry
    from framework._run.internals import RunInternals as Run

log = logging.getLogger("rtlab")

BUILTIN_TARGETS = ("teacher", "teacher_bn", "student", "input")


def initial_student(run: "Run") -> nn.Module:
    """The student with its initial weights (``run.init_student``) and fresh BatchNorm statistics (those of a
    just-built network)."""
    net = clone(run.student)
    with torch.no_grad():
        params = dict(net.named_parameters())
        for name, value in run.init_student.items():
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
            cache["teacher_bn"] = (bn_control(run.teacher, run.data.train.images, run.placement, run.cfg.eval.batch_size)
                                   if has_batchnorm(run.teacher) else run.teacher)
        net = cache["teacher_bn"]
    elif target == "student_init":
        if "student_init" not in cache:
            cache["student_init"] = initial_student(run)
        net = cache["student_init"]
    else:
        raise KeyError(target)
    return layer_embedder(net, layer)


def features(run: "Run", target: str, data: "ImageData | None" = None, cache: dict[str, Any] | None = None,
             layer: Any = -1) -> Features:
    """Embeddings of the train and test split of ``data`` (default: the training data) for ``target`` at ``layer``,
    with the networks in eval mode. Their ``other(target)`` gives another target's test embedding (cached in
    ``cache`` for the evaluation)."""
    data = run.data if data is None else data
    normalize = None if data is run.data else data.normalizer(run.device)
    cache = {} if cache is None else cache
    bs = run.cfg.eval.batch_size
    with eval_mode(run.student, run.teacher):
        embedder = target_embedder(run, target, cache, layer)
        train = extract(embedder, data.train.images, run.placement, bs, normalize)
        test = extract(embedder, data.test.images, run.placement, bs, normalize)
    cache[("test", id(data), target, str(layer))] = test

    def peer(other: str) -> torch.Tensor:
        key = ("test", id(data), other, str(layer))
        if key not in cache:
            with eval_mode(run.student, run.teacher):
                cache[key] = extract(target_embedder(run, other, cache, layer), data.test.images, run.placement, bs,
                                     normalize)
        return cache[key]

    return Features(target, train, data.train.labels, test, data.test.labels, data.num_classes, run.cfg.eval.seed,
                    layer, peer)


def load_probe_datasets(registry: "Registry", specs: Sequence[Any], train_data: "ImageData",
                        device: torch.device) -> dict[str, "ImageData"]:
    """The ``eval.datasets`` entries as decoded datasets on ``device``, by metric key (see the module doc)."""
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


# ------------------------------------------------------------------------------------------ evaluation points
def probe_sets(run: "Run") -> dict[str, "ImageData"]:
    """The datasets the evaluators probe, by dataset key: ``None`` is the training data (skipped when it has
    no labels or ``eval.train_data`` is false), then every ``eval.datasets`` entry."""
    sets: dict = {None: run.data} if run.data.train.labelled and run.cfg.eval.train_data else {}
    return {**sets, **run.probe_data}


def evaluate(run: "Run", epoch: int) -> dict[str, float]:
    """Run every evaluator on every target of every probe dataset; frozen targets are evaluated only the first
    time. The results also hold the parameter distances ``teacher_student_distance`` and
    ``student_distance_from_init`` (no ``/``: they are not accuracies). A failing evaluator is recorded in the
    summary and training goes on."""
    for exc in run.call_each("rtlab_evaluate_start", run=run, epoch=epoch):
        run.record_error("rtlab_evaluate_start", exc)
    results: dict[str, float] = {
        "teacher_student_distance": parameter_distance(run.student, run.teacher),
        "student_distance_from_init": parameter_distance(run.student, run.init_student),
    }
    cache: dict[Any, Any] = {}
    measured = {key.point for key in map(parse_key, run.metrics) if key is not None}
    layers = check_layers(run.cfg.eval.layers)
    points = [(t, layer) for t in run.cfg.eval.targets for layer in layers if t != "input" or layer == -1]
    for dataset, data in probe_sets(run).items() if run.evaluators else ():
        for target, layer in points:
            point = format_point(target, layer, dataset)
            frozen = target == "input" or (target in ("teacher", "teacher_bn") and run.teacher_frozen)
            if frozen and point in measured:  # a frozen target is measured once
                continue
            try:  # every rank embeds its share; all get every row
                feats = features(run, target, data, cache, layer)
            except Exception as exc:  # an optional part: recorded, training goes on
                run.record_error(f"feature extraction for eval target '{point}' at epoch {epoch}", exc)
                continue
            for name, evaluator in (run.evaluators.items() if run.is_main else ()):
                try:
                    values = evaluator.evaluate(feats, run)
                except Exception as exc:
                    plugin = run.registry.get("evaluator", name).plugin
                    run.record_error(f"evaluator '{name}' (plugin {plugin}) on {point} at epoch {epoch}", exc)
                    continue
                for metric, value in values.items():
                    results[format_key(metric, target, layer, dataset)] = float(value)
            del feats
    del cache
    results = distributed.broadcast(results)
    run.results.add_evaluation(epoch, run.clock.step, results)
    for exc in run.call_each("rtlab_evaluate_end", run=run, epoch=epoch, results=results):
        run.record_error("rtlab_evaluate_end", exc)
    return results


def eval_due(run: "Run", epoch: int) -> bool:
    every = run.cfg.eval.every
    return epoch == run.clock.epochs or (every > 0 and epoch % every == 0)
