"""Building a run: checks, data on its device, teacher and student, objective, optimiser, evaluators.

:func:`setup` builds a :class:`framework._run.loop.Run` in place, one concern per step (threads, data, networks,
training, evaluators, precision); each step raises a one-line :class:`RtlabError` for settings that cannot work,
before anything is trained and before the run claims its folder when it can.
"""

from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from framework._base import metrics
from framework._base.errors import RtlabError
from framework._base.metrics import declared_kinds
from framework._base.seeding import stream_seed
from framework._data.data import load_image_data
from framework._nets.device import cpu_bf16_hazards, cpu_load, enable_determinism, safe_cpu_threads
from framework._nets.models import Network, build_network, parameter_distance
from framework._base.clock import Clock
from framework._run.evaluation import BUILTIN_TARGETS, load_probe_datasets
from framework._run.guards import check_parameters
from framework._run.parallel import convert_batchnorm
from framework._run.teacher_check import check_teacher

if TYPE_CHECKING:
    from framework._run.internals import RunInternals as Run

log = logging.getLogger("rtlab")


def new_network(run: "Run", seed: int) -> Network:
    """A freshly initialised backbone + head of the run's architecture, determined by ``seed`` alone (CPU)."""
    return build_network(run.registry, run.cfg.backbone, run.cfg.head, run.data.channels, run.data.size, seed)


def plan(cfg: Any, train_images: int) -> Clock:
    """The training clock of a run over ``train_images`` images: steps per epoch, epochs (``train.epochs``, or
    ``train.sample_budget`` // images), ``train.max_steps``."""
    t = cfg.train
    per_epoch = train_images // t.batch_size if t.drop_last else math.ceil(train_images / t.batch_size)
    epochs = int(t.epochs) if t.sample_budget is None else max(1, int(t.sample_budget) // max(1, train_images))
    return Clock(steps_per_epoch=max(1, per_epoch), epochs=epochs, max_steps=t.max_steps)


def setup(run: "Run") -> None:
    """Build ``run``: checks, data on its device, teacher and student, objective, optimiser, evaluators; a resumed
    run then restores its training state. Nothing is written into the run folder before the run claims it, at the
    end: a setting any component refuses (its factory or its options raise :class:`RtlabError`) leaves no trace."""
    cfg = run.cfg
    run.folder.acquire(run.resume)
    _threads(run)
    if cfg.train.batch_size <= 0 or cfg.train.epochs < 0:
        raise RtlabError("train.batch_size must be positive and train.epochs non-negative")
    if cfg.train.sample_budget is not None and cfg.train.sample_budget <= 0:
        raise RtlabError(f"train.sample_budget must be a positive number of samples, got "
                         f"{cfg.train.sample_budget}")
    _data(run)
    _networks(run)
    _training(run)
    _evaluators(run)
    _precision(run)
    if cfg.train.compile:  # in place: parameter names (and so checkpoints) stay those of the plain modules
        for net in (run.student, run.teacher):
            net.encoder.compile()
            net.head.compile()
    run.init_student = {k: v.detach().clone() for k, v in run.student.named_parameters()}
    run.summary["teacher_student_distance_init"] = parameter_distance(run.student, run.teacher)
    # the folder becomes the run's only now: every component was built (their options checked) and a resumed run's
    # state fits it, so a refused run leaves the folder as it was
    if run.resume:
        run.state.restore(run)
    run.claim()
    if run.teacher_frozen:  # checked here once; the guard skips it while it cannot change
        check_parameters([("teacher", run.teacher)], run.clock.step, run.state.last_good())


def _threads(run: "Run") -> None:
    cfg = run.cfg
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    elif run.device.type == "cpu" and not os.environ.get("RTLAB_KEEP_THREADS"):
        _avoid_oversubscription(run)
    if cfg.train.deterministic:
        enable_determinism(run.device)


def _data(run: "Run") -> None:
    """The training data and the probe datasets on the run's device; the clock's plan follows from their size."""
    cfg = run.cfg
    run.data = load_image_data(run.registry, cfg.data, run.device)
    skipped = run.data.train.skipped + run.data.test.skipped  # data.skip_bad_images=true
    if skipped:
        run.summary["skipped_images"] = {"count": len(skipped), "files": skipped}
    if len(run.data.train) == 0:
        raise RtlabError("the train split is empty; check data.train_size and data.train_split")
    _check_shards(run)
    run.clock = plan(cfg, len(run.data.train))
    run.placement = run.placement.with_(normalize=run.data.normalizer(run.device))
    run.probe_data = load_probe_datasets(run.registry, cfg.eval.datasets, run.data, run.device)
    run.order_gen = torch.Generator().manual_seed(stream_seed(cfg.train.seed, "order"))
    run.aug_gen = torch.Generator(device=run.device).manual_seed(stream_seed(cfg.train.seed, "augment"))


def _networks(run: "Run") -> None:
    """Teacher and student (the teacher checked for degeneracy), their updater."""
    cfg, registry = run.cfg, run.registry
    run.augment = registry.build("augment", cfg.augment)
    run.teacher_init = registry.build("teacher", cfg.teacher)
    run.teacher = run.place(run.teacher_init.build(run))
    run.student_init = registry.build("student", cfg.student)
    run.student = run.place(run.student_init.build(run, run.teacher))
    if run.student is run.teacher or any(
            a is b for a, b in zip(run.student.parameters(), run.teacher.parameters())):
        raise RtlabError("the student initialiser returned the teacher itself; it must return a copy")
    if cfg.train.sync_bn and run.world_size > 1:
        run.teacher, run.student = convert_batchnorm(run.teacher), convert_batchnorm(run.student)
    run.updater = registry.build("updater", cfg.updater)
    if hasattr(run.updater, "setup"):
        run.updater.setup(run)
    check_teacher(run)  # a degenerate random teacher fails here, not silently at chance after training


def _training(run: "Run") -> None:
    """Loss, objective and optimiser over the student's (and the objective's) trainable parameters."""
    cfg, registry = run.cfg, run.registry
    run.loss_fn = registry.build("loss", cfg.loss) if cfg.get("loss") is not None else None
    run.objective = registry.build("objective", cfg.objective)
    extra = list(run.objective.setup(run) or [])
    if cfg.train.sync_bn and run.world_size > 1 and isinstance(run.objective, nn.Module):
        convert_batchnorm(run.objective)
    run.teacher.requires_grad_(False)
    run.student.train()
    run.optimizer_factory = registry.build("optimizer", cfg.optimizer)
    run.trainable = [p for p in run.student.parameters() if p.requires_grad] + extra
    run.optimizer = run.optimizer_factory.build(run.trainable, run)


def _evaluators(run: "Run") -> None:
    """The evaluators, refused before training when the data cannot feed them."""
    cfg, data = run.cfg, run.data
    unknown = [t for t in cfg.eval.targets if t not in BUILTIN_TARGETS]
    if unknown:
        raise RtlabError(f"unknown eval target(s) {', '.join(unknown)}; known: {', '.join(BUILTIN_TARGETS)}")
    run.evaluators = {name: run.registry.build("evaluator", node) for name, node in cfg.evaluator.items()}
    run.results.metric_kinds = declared_kinds(run.evaluators)
    run.summary["metric_kinds"] = metrics.to_json(run.metric_kinds)
    if run.evaluators and not cfg.eval.train_data and not run.probe_data:
        raise RtlabError("eval.train_data=false leaves nothing to probe; name datasets with eval.datasets=[NAME]")
    needs_labels = [n for n, e in run.evaluators.items() if getattr(e, "needs_labels", True)]
    if needs_labels and not (data.train.labelled and data.test.labelled) and not run.probe_data:
        raise RtlabError(f"evaluator(s) {', '.join(needs_labels)} need labels, but dataset '{data.name}' "
                         "has none; set data.label_column=NAME, or train without probes: evaluator=[] (or probe a "
                         "labelled dataset: eval.datasets=[NAME])")
    present = sorted(set(data.train.labels.tolist())) if needs_labels and not run.probe_data else None
    if present is not None and len(present) < 2:
        names = [data.classes[i] if 0 <= i < len(data.classes) else str(i) for i in present]
        raise RtlabError(f"evaluator(s) {', '.join(needs_labels)} need at least 2 classes, but the train split of "
                         f"dataset '{data.name}' has {len(present)} ({', '.join(names)}); add images of "
                         "another class (another class folder), or train without probes: evaluator=[]")


def _precision(run: "Run") -> None:
    """Warnings and fallbacks that depend on the built networks: a one-token ViT, CPU bf16 hazards."""
    _warn_single_patch(run)
    if run.device.type == "cpu" and run.amp_dtype == torch.bfloat16:
        hazards = cpu_bf16_hazards(run.student, run.prepare(run.data.train.images[:2]))
        if hazards:
            run.results.warn(f"train.precision={run.cfg.train.precision} (bf16) switched to fp32: strided convolutions "
                             f"see 1x1 maps ({', '.join(hazards[:3])}), where torch's CPU bf16 backward returns "
                             "non-finite gradients")
            run.placement = run.placement.with_(amp_dtype=None)


def _avoid_oversubscription(run: "Run") -> None:
    """train.threads unset on a CPU already busy with other work: fewer threads (see safe_cpu_threads)."""
    load = cpu_load()
    threads = safe_cpu_threads(torch.get_num_threads(), *load) if load is not None else None
    if threads is not None:
        log.warning("the CPU is busy (load average %.1f on %d cores): training with %d thread(s) instead of "
                    "%d; set train.threads=N to choose", load[1], load[0], threads, torch.get_num_threads())
        torch.set_num_threads(threads)
    run.summary["cpu_threads"] = torch.get_num_threads()


def _warn_single_patch(run: "Run") -> None:
    """A patch-embedding backbone (ViT, DeiT, …) whose patch covers the whole image trains on one token."""
    embed = getattr(run.student.encoder, "patch_embed", None)
    grid = tuple(getattr(embed, "grid_size", None) or ())
    if grid and math.prod(grid) == 1:
        h, w = run.data.size
        run.results.warn(f"backbone '{run.cfg.backbone.name}' sees each {h}x{w} image as a single patch (a 1x1 patch "
                         f"grid: one token, nothing to attend to); set backbone.patch_size to a smaller divisor of {h} "
                         "(e.g. 1), or upsample with data.image_size=N")


def _check_shards(run: "Run") -> None:
    """Every process gets at least one image of every batch."""
    n, bs = len(run.data.train), run.cfg.train.batch_size
    last = n % bs if not run.cfg.train.drop_last and n >= bs else 0
    smallest = min(bs, n) if not last else last
    if run.world_size > 1 and smallest < run.world_size:
        raise RtlabError(f"a batch of {smallest} image(s) cannot be shared by {run.world_size} processes; use "
                         f"train.batch_size >= {run.world_size} and train.drop_last=true (or a train size whose "
                         "last batch has one image per process)")
