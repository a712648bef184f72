"""Evaluation targets and batched feature extraction; evaluators receive the features, never the loop.

Targets (``eval.targets``):

* ``teacher`` — the teacher's encoder embedding;
* ``teacher_bn`` — the BN control: the teacher with its weights unchanged and only its BatchNorm running
  statistics re-estimated on the training images. The student trains in train mode, so its BN statistics move
  while an eval-mode random teacher keeps the identity statistics; only the gain beyond this control is the
  distillation effect. A teacher without BatchNorm is its own control;
* ``student`` — the student's encoder embedding;
* ``input`` — the flattened normalised pixels (the paper's "input" baseline).

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

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])


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


def target_embedder(run: "Run", target: str, cache: dict[str, Any] | None = None
                    ) -> Callable[[torch.Tensor], torch.Tensor]:
    """How to embed normalised images for ``target``; ``cache`` keeps the BN control for one evaluation."""
    if target == "teacher":
        return run.teacher.embed
    if target == "student":
        return run.student.embed
    if target == "teacher_bn":
        cache = {} if cache is None else cache
        if "teacher_bn" not in cache:
            cache["teacher_bn"] = bn_control(run.teacher, run) if has_batchnorm(run.teacher) else run.teacher
        return cache["teacher_bn"].embed
    if target == "input":
        return lambda x: x.flatten(1)
    raise KeyError(target)


def features(run: "Run", target: str, data: "ImageData | None" = None, cache: dict[str, Any] | None = None
             ) -> Features:
    """Embeddings of the train and test split of ``data`` (default: the training data) for ``target``, with the
    networks in eval mode."""
    data = run.data if data is None else data
    normalize = None if data is run.data else data.normalizer(run.device)
    modes = [(m, m.training) for m in (run.student, run.teacher)]
    for m, _ in modes:
        m.eval()
    try:
        embed = target_embedder(run, target, cache)
        train = extract(embed, data.train.images, run, normalize)
        test = extract(embed, data.test.images, run, normalize)
    finally:
        for m, mode in modes:
            m.train(mode)
    return Features(target, train, data.train.labels, test, data.test.labels, data.num_classes, run.cfg.eval.seed)


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
        results: dict[str, float] = {
            "teacher_student_distance": parameter_distance(self.student, self.teacher),
            "student_distance_from_init": parameter_distance(self.student, self._init_student),
        }
        cache: dict[str, Any] = {}
        for key, data in self.probe_sets().items() if self.evaluators else ():
            for target in self.cfg.eval.targets:
                name = f"{target}@{key}" if key else target
                frozen = target == "input" or (target in ("teacher", "teacher_bn") and self.teacher_frozen)
                if frozen and any(k.endswith(f"/{name}") for k in self.metrics):
                    continue
                try:
                    feats = features(self, target, data, cache)  # every rank embeds its share; all get every row
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
