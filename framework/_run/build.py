"""Building a run: checks, data on its device, teacher and student, objective, optimiser, evaluators.

:class:`RunBuild` is the part of :class:`framework.api.Run` that sets it up (``setup``) and the helpers every
other part uses to put tensors and networks on the run's device in its precision and memory format.
"""

from __future__ import annotations

import contextlib
import os
import json
import logging
import math
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from framework._nets import distributed
from framework._base import metrics
from framework._base.files import atomic_write_text
from framework._data.data import load_image_data
from framework._nets.device import cpu_bf16_hazards, cpu_load, enable_determinism, safe_cpu_threads
from framework._base.errors import RtlabError
from framework._run.evaluation import load_probe_datasets
from framework._base.metrics import declared_kinds
from framework._run.guards import check_parameters
from framework._nets.models import Network, build_network, parameter_distance
from framework._run.parallel import convert_batchnorm, loss_forward
from framework._base.runlock import RunLock
from framework._base.seeding import stream_seed
from framework._run.teacher_check import check_teacher

log = logging.getLogger("rtlab")


class RunBuild:
    """Setup and placement (a part of :class:`framework.api.Run`)."""

    @property
    def device(self) -> torch.device:
        return self.placement.device

    @property
    def dtype(self) -> torch.dtype:
        return self.placement.dtype

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return self.placement.amp_dtype

    def autocast(self) -> contextlib.AbstractContextManager:
        return self.placement.autocast()

    def prepare(self, images: torch.Tensor, normalize: Any = None) -> torch.Tensor:
        """uint8 or [0, 1] images → normalised float on the run's device, in the run's memory format.
        ``normalize`` defaults to the training data's normalisation (probe datasets bring their own)."""
        return self.placement.prepare(images, normalize)

    def new_network(self, seed: int) -> Network:
        """A freshly initialised backbone + head, determined by ``seed`` alone (built on the CPU)."""
        return build_network(self.registry, self.cfg.backbone, self.cfg.head, self.data.channels, self.data.size,
                             seed)

    def views_of(self, batch: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(this process's shard of the global ``batch``, its views). Random views are drawn for the global batch,
        so that every process's stream advances alike and each image gets the views one process would give it."""
        if self.world_size == 1 or getattr(self.augment, "deterministic", False):
            index = distributed.shard(batch)
            images = self.data.train.batch(index).float().div_(255.0)  # prefetched by host/disk storage
            return index, [self.prepare(v) for v in self.augment.views(images, self.aug_gen)]
        images = self.data.train.batch(batch).float().div_(255.0)
        views = self.augment.views(images, self.aug_gen)
        index = distributed.shard(batch)
        start = sum(len(s) for s in batch.tensor_split(self.world_size)[:self.rank])
        return index, [self.prepare(v[start:start + len(index)]) for v in views]

    def forward_loss(self, views: list[torch.Tensor], index: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The objective's loss on this process's views (through DistributedDataParallel with several processes:
        :mod:`framework._run.parallel`)."""
        if self._loss_forward is None:
            self._loss_forward = loss_forward(self)
        return self._loss_forward(views, index)

    def place(self, net: nn.Module) -> nn.Module:
        return self.placement.place(net)

    @property
    def epochs(self) -> int:
        """Epochs to train: ``train.epochs``, or ``train.sample_budget`` // train images when a budget is set."""
        budget = self.cfg.train.sample_budget
        if budget is None:
            return int(self.cfg.train.epochs)
        return max(1, int(budget) // len(self.data.train))

    @property
    def steps_per_epoch(self) -> int:
        n, bs = len(self.data.train), self.cfg.train.batch_size
        return n // bs if self.cfg.train.drop_last else math.ceil(n / bs)

    @property
    def total_steps(self) -> int:
        total = self.steps_per_epoch * self.epochs
        if self.cfg.train.max_steps is not None:
            total = min(total, self.cfg.train.max_steps)
        return total

    @property
    def out_of_steps(self) -> bool:
        return self.cfg.train.max_steps is not None and self.step >= self.cfg.train.max_steps

    @property
    def teacher_frozen(self) -> bool:
        return bool(getattr(self.updater, "frozen", False))

    def components(self) -> dict[str, Any]:
        """The run's components by role (``evaluator.<name>`` for evaluators): what the state protocol saves."""
        parts = {"teacher": self.teacher_init, "student": self.student_init, "updater": self.updater,
                 "objective": self.objective, "loss": self.loss_fn, "augment": self.augment,
                 "optimizer": self.optimizer_factory}
        parts.update({f"evaluator.{name}": e for name, e in self.evaluators.items()})
        return parts

    def setup(self):
        cfg = self.cfg
        if self.is_main:
            self.lock = RunLock(self.out_dir).acquire()
            self._check_folder()
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        elif self.device.type == "cpu" and not os.environ.get("RTLAB_KEEP_THREADS"):
            self._avoid_oversubscription()
        if cfg.train.deterministic:
            enable_determinism(self.device)
        if cfg.train.batch_size <= 0 or cfg.train.epochs < 0:
            raise RtlabError("train.batch_size must be positive and train.epochs non-negative")
        if cfg.train.sample_budget is not None and cfg.train.sample_budget <= 0:
            raise RtlabError(f"train.sample_budget must be a positive number of samples, got "
                             f"{cfg.train.sample_budget}")
        if not self.resume:  # a fresh folder is ours once _check_folder found no other run in it
            self.claim()

        self.data = load_image_data(self.registry, cfg.data, self.device)
        skipped = self.data.train.skipped + self.data.test.skipped  # data.skip_bad_images=true
        if skipped:
            self.summary["skipped_images"] = {"count": len(skipped), "files": skipped}
        if len(self.data.train) == 0:
            raise RtlabError("the train split is empty; check data.train_size and data.train_split")
        self._check_shards()
        self.placement = self.placement.with_(normalize=self.data.normalizer(self.device))
        self.probe_data = load_probe_datasets(self.registry, cfg.eval.datasets, self.data, self.device)
        self.order_gen = torch.Generator().manual_seed(stream_seed(cfg.train.seed, "order"))
        self.aug_gen = torch.Generator(device=self.device).manual_seed(stream_seed(cfg.train.seed, "augment"))
        self.augment = self.registry.build("augment", cfg.augment)
        self.teacher_init = self.registry.build("teacher", cfg.teacher)
        self.teacher = self.place(self.teacher_init.build(self))
        self.student_init = self.registry.build("student", cfg.student)
        self.student = self.place(self.student_init.build(self, self.teacher))
        if self.student is self.teacher or any(
                a is b for a, b in zip(self.student.parameters(), self.teacher.parameters())):
            raise RtlabError("the student initialiser returned the teacher itself; it must return a copy")
        if cfg.train.sync_bn and self.world_size > 1:
            self.teacher, self.student = convert_batchnorm(self.teacher), convert_batchnorm(self.student)
        self.updater = self.registry.build("updater", cfg.updater)
        if hasattr(self.updater, "setup"):
            self.updater.setup(self)
        check_teacher(self)  # a degenerate random teacher fails here, not silently at chance after training
        self.loss_fn = self.registry.build("loss", cfg.loss) if cfg.get("loss") is not None else None
        self.objective = self.registry.build("objective", cfg.objective)
        extra = list(self.objective.setup(self) or [])
        if cfg.train.sync_bn and self.world_size > 1 and isinstance(self.objective, nn.Module):
            convert_batchnorm(self.objective)
        self.teacher.requires_grad_(False)
        self.student.train()
        self.optimizer_factory = self.registry.build("optimizer", cfg.optimizer)
        self.trainable = [p for p in self.student.parameters() if p.requires_grad] + extra
        self.optimizer = self.optimizer_factory.build(self.trainable, self)
        self.evaluators = {name: self.registry.build("evaluator", node) for name, node in cfg.evaluator.items()}
        self.metric_kinds = declared_kinds(self.evaluators)
        self.summary["metric_kinds"] = metrics.to_json(self.metric_kinds)
        if self.evaluators and not self.cfg.eval.train_data and not self.probe_data:
            raise RtlabError("eval.train_data=false leaves nothing to probe; name datasets with eval.datasets=[NAME]")
        needs_labels = [n for n, e in self.evaluators.items() if getattr(e, "needs_labels", True)]
        if needs_labels and not (self.data.train.labelled and self.data.test.labelled) and not self.probe_data:
            raise RtlabError(f"evaluator(s) {', '.join(needs_labels)} need labels, but dataset '{self.data.name}' "
                             "has none; set data.label_column=NAME, or train without probes: evaluator=[] (or probe a "
                             "labelled dataset: eval.datasets=[NAME])")
        present = sorted(set(self.data.train.labels.tolist())) if needs_labels and not self.probe_data else None
        if present is not None and len(present) < 2:
            names = [self.data.classes[i] if 0 <= i < len(self.data.classes) else str(i) for i in present]
            raise RtlabError(f"evaluator(s) {', '.join(needs_labels)} need at least 2 classes, but the train split of "
                             f"dataset '{self.data.name}' has {len(present)} ({', '.join(names)}); add images of "
                             "another class (another class folder), or train without probes: evaluator=[]")
        self._warn_single_patch()
        if self.device.type == "cpu" and self.amp_dtype == torch.bfloat16:
            hazards = cpu_bf16_hazards(self.student, self.prepare(self.data.train.images[:2]))
            if hazards:
                msg = (f"train.precision={cfg.train.precision} (bf16) switched to fp32: strided convolutions see 1x1 "
                       f"maps ({', '.join(hazards[:3])}), where torch's CPU bf16 backward returns non-finite gradients")
                log.warning(msg)
                self.summary.setdefault("warnings", []).append(msg)
                self.placement = self.placement.with_(amp_dtype=None)
        if cfg.train.compile:  # in place: parameter names (and so checkpoints) stay those of the plain modules
            for net in (self.student, self.teacher):
                net.encoder.compile()
                net.head.compile()
        self._init_student = {k: v.detach().clone() for k, v in self.student.named_parameters()}
        self.summary["teacher_student_distance_init"] = parameter_distance(self.student, self.teacher)
        if self.resume:  # a resumed folder is ours once its training state fits this run
            self.restore()
            self.claim()
        if self.teacher_frozen:  # checked here once; check_finite skips it while it cannot change
            check_parameters([("teacher", self.teacher)], self.step, self._last_good())
        return self

    def _avoid_oversubscription(self) -> None:
        """train.threads unset on a CPU already busy with other work: fewer threads (see safe_cpu_threads)."""
        load = cpu_load()
        threads = safe_cpu_threads(torch.get_num_threads(), *load) if load is not None else None
        if threads is not None:
            log.warning("the CPU is busy (load average %.1f on %d cores): training with %d thread(s) instead of "
                        "%d; set train.threads=N to choose", load[1], load[0], threads, torch.get_num_threads())
            torch.set_num_threads(threads)
        self.summary["cpu_threads"] = torch.get_num_threads()

    def claim(self) -> None:
        """From here on the run folder is this run's: its ``config.yaml`` and ``plugins.json`` are written, then
        whatever the caller writes on claiming (Hydra's files). Until then a refused run leaves the folder as it
        was, byte for byte; ``error.txt`` too is only written into a claimed folder."""
        self.claimed = True
        if not self.is_main:
            return
        atomic_write_text(self.out_dir / "config.yaml", OmegaConf.to_yaml(self.cfg, resolve=True))
        atomic_write_text(self.out_dir / "plugins.json", json.dumps(self.pm.listing(), indent=2))
        if self._on_claim is not None:
            self._on_claim()

    def _warn_single_patch(self) -> None:
        """A patch-embedding backbone (ViT, DeiT, …) whose patch covers the whole image trains on one token."""
        embed = getattr(self.student.encoder, "patch_embed", None)
        grid = tuple(getattr(embed, "grid_size", None) or ())
        if grid and math.prod(grid) == 1:
            h, w = self.data.size
            msg = (f"backbone '{self.cfg.backbone.name}' sees each {h}x{w} image as a single patch (a 1x1 patch "
                   f"grid: one token, nothing to attend to); set backbone.patch_size to a smaller divisor of {h} "
                   "(e.g. 1), or upsample with data.image_size=N")
            log.warning(msg)
            self.summary.setdefault("warnings", []).append(msg)

    def _check_shards(self) -> None:
        """Every process gets at least one image of every batch."""
        n, bs = len(self.data.train), self.cfg.train.batch_size
        last = n % bs if not self.cfg.train.drop_last and n >= bs else 0
        smallest = min(bs, n) if not last else last
        if self.world_size > 1 and smallest < self.world_size:
            raise RtlabError(f"a batch of {smallest} image(s) cannot be shared by {self.world_size} processes; use "
                             f"train.batch_size >= {self.world_size} and train.drop_last=true (or a train size whose "
                             "last batch has one image per process)")

    def _check_folder(self) -> None:
        """A fresh run never writes into the results of another one."""
        if self.resume:
            return
        taken = [n for n in ("summary.json", "metrics.jsonl", "checkpoints") if (self.out_dir / n).exists()]
        if taken:
            raise RtlabError(f"run folder {self.out_dir} already holds a run ({', '.join(taken)}); continue it with "
                             f"'rtlab train resume={self.out_dir}' or choose another folder (hydra.run.dir=…)")
