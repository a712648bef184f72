"""``rtlab bench --methods``: every SSL method's rtlab step against a bare PyTorch loop with lightly's loss.

For each method, one run of ``experiment=compare_cifar10_cpu`` with the method and its per-method overrides (the
configuration ``rtlab compare`` trains), on random 3x32x32 images held on the device, and beside it a **bare loop**
written as lightly's examples are: the same networks (copies of the run's student, teacher and predictor at their
initial weights), the same views (the method's augmentation object, its own generator), the same optimiser (AdamW
with the run's settings and kernel; gradient clipping where the method clips), the same EMA update (the run's
momentum schedule, multi-tensor ``lerp``) and **lightly's loss module** for the method (``NTXentLoss``,
``DINOLoss``, ``SwaVLoss``, ``DCLLoss``, ``MMCRLoss``, …; plain PyTorch for the three losses lightly lacks or implements otherwise:
the random teacher's cross-entropy, MoCo v3's ctr and NNCLR's Eq. 2 with lightly's ``NNMemoryBankModule``).

The two loops alternate segment by segment in one process (the bare loop runs at every rtlab epoch end, as in
``rtlab bench``'s step rows), so a change of machine load hits both alike; the first segment warms up and is
dropped; medians are reported with rtlab's time per step over the bare loop's (1.0: no overhead). lightly is a
test dependency (``pip install -e .[dev]``); without it the command says so.
"""

from __future__ import annotations

import copy
import math
import statistics
import tempfile
from typing import Any, Callable

import torch
import torch.nn.functional as F

from framework.api import RtlabError

PRESET = "compare_cifar10_cpu"


def _lightly():
    try:
        import lightly.loss as loss
        from lightly.models.modules import NNMemoryBankModule
    except ImportError:
        raise RtlabError("rtlab bench --methods compares with lightly's losses: pip install lightly (or "
                         "pip install -e .[dev])") from None
    return loss, NNMemoryBankModule


def _ce(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return -(F.softmax(teacher, -1) * F.log_softmax(student, -1)).sum(-1).mean()


def _info_nce(rows: torch.Tensor, columns: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = F.normalize(rows, dim=1) @ F.normalize(columns, dim=1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(rows), device=rows.device))


class BareMethod:
    """A plain training loop for one method on copies of the run's networks, with lightly's loss."""

    def __init__(self, run, method: str) -> None:
        self.run, self.method = run, method
        self.student = copy.deepcopy(run.student).train()
        self.teacher = copy.deepcopy(run.teacher)
        predictor = getattr(run.objective, "predictor", None)
        self.predictor = copy.deepcopy(predictor) if predictor is not None else None
        params = [p for p in self.student.parameters() if p.requires_grad]
        if self.predictor is not None:
            params += list(self.predictor.parameters())
        group = run.optimizer.param_groups[0]
        kernel = {"fused": True} if run.optimizer.defaults.get("fused") else {"foreach": True}
        self.opt = torch.optim.AdamW(params, lr=group["lr"], weight_decay=group["weight_decay"],
                                     betas=group.get("betas", (0.9, 0.999)), eps=group.get("eps", 1e-8), **kernel)
        self.params = params
        self.clip = float(getattr(run.optimizer_factory.opts, "clip_grad", 0.0) or 0.0)
        updater = run.cfg.updater
        self.ema = None
        if updater.name == "ema":
            self.ema = ([p.data for p in self.teacher.parameters()], [p.data for p in self.student.parameters()])
            self.momentum = (float(updater.momentum), float(updater.final_momentum))
        self.augment = run.augment
        self.gen = torch.Generator(device=run.device).manual_seed(1)
        self.images = run.data.train.images
        self.normalize = run.data.normalizer(run.device)
        self.global_views = getattr(run.augment, "global_views", None)
        self.step = 0
        self.loss = self._loss_fn(run.cfg)

    # ------------------------------------------------------------------------------------------------ losses
    def _loss_fn(self, cfg) -> Callable[[list[torch.Tensor]], torch.Tensor]:
        L, NNMemoryBankModule = _lightly()
        o, m, s, t, pred = cfg.objective, self.method, self.student, self.teacher, self.predictor
        device = self.run.device

        def ema_targets(views):
            with torch.no_grad():
                return [t(v) for v in views]

        if m == "random_teacher":
            def fn(views):
                with torch.no_grad():
                    target = t(views[0])
                return _ce(s(views[0]), target)
        elif m == "dino":
            crit = L.DINOLoss(output_dim=int(cfg.head.out_dim), student_temp=float(cfg.loss.student_temp),
                              center_momentum=float(o.center_momentum)).to(device)

            def fn(views):
                from plugins.distill.losses import teacher_temperature

                g = self.global_views or 2
                with torch.no_grad():
                    targets = list(t(torch.cat(views[:g])).chunk(g))
                outs = list(s(torch.cat(views[:g])).chunk(g))
                if len(views) > g:
                    outs += list(s(torch.cat(views[g:])).chunk(len(views) - g))
                tau = teacher_temperature(self.run.loss_fn.opts, self.step / self.run.steps_per_epoch)
                return crit(targets, outs, teacher_temp=tau)
        elif m in ("byol", "simsiam"):
            crit = L.NegativeCosineSimilarity()

            def fn(views):
                z = [s(v) for v in views]
                p = [pred(x) for x in z]
                target = ema_targets(views) if m == "byol" else [x.detach() for x in z]
                return 0.5 * (crit(p[0], target[1]) + crit(p[1], target[0]))
        elif m in ("simclr", "dcl", "dclw"):
            crit = {"simclr": lambda: L.NTXentLoss(temperature=float(o.temperature)),
                    "dcl": lambda: L.DCLLoss(temperature=float(o.temperature)),
                    "dclw": lambda: L.DCLWLoss(temperature=float(o.temperature), sigma=float(o.sigma))}[m]()

            def fn(views):
                z0, z1 = s(torch.cat(views[:2])).chunk(2)
                return crit(z0, z1)
        elif m in ("barlow_twins", "vicreg"):
            crit = (L.BarlowTwinsLoss(lambda_param=float(o.lambd)) if m == "barlow_twins" else
                    L.VICRegLoss(lambda_param=float(o.invariance_weight), mu_param=float(o.variance_weight),
                                 nu_param=float(o.covariance_weight)))

            def fn(views):
                return crit(s(views[0]), s(views[1]))
        elif m == "moco_v2":
            dim = int(cfg.head.out_dim)
            crit = L.NTXentLoss(temperature=float(o.temperature), memory_bank_size=(int(o.queue_size), dim)).to(device)

            def fn(views):
                with torch.no_grad():
                    key = t(views[1])
                return crit(s(views[0]), key)
        elif m == "moco_v3":
            tau = float(o.temperature)

            def fn(views):
                q = [pred(s(v)) for v in views]
                k = ema_targets(views)
                return 2 * tau * (_info_nce(q[0], k[1], tau) + _info_nce(q[1], k[0], tau))
        elif m == "nnclr":
            bank = NNMemoryBankModule(size=(int(o.support_size), int(cfg.head.out_dim))).to(device)
            tau = float(o.temperature)

            def fn(views):
                z = [s(v) for v in views]
                p = [pred(x) for x in z]
                with torch.no_grad():
                    nn0 = bank(F.normalize(z[0], dim=1), update=False)
                    nn1 = bank(F.normalize(z[1], dim=1), update=False)
                    bank(F.normalize(z[0], dim=1), update=True)
                return 0.5 * (_info_nce(nn0, p[1], tau) + _info_nce(nn1, p[0], tau))
        elif m == "swav":
            crit = L.SwaVLoss(temperature=float(o.temperature), sinkhorn_iterations=int(o.sinkhorn_iterations),
                              sinkhorn_epsilon=float(o.epsilon))
            head = s.head

            def fn(views):
                with torch.no_grad():
                    head.last.weight.copy_(F.normalize(head.last.weight, dim=1))
                g = self.global_views or 2
                groups = [views[:g]] + ([views[g:]] if len(views) > g else [])
                scores = []
                for group in groups:
                    z = F.normalize(head.mlp(s.encoder(torch.cat(group))), dim=1)
                    scores += list(head.last(z).chunk(len(group)))
                return crit(scores[:g], scores[g:])
        elif m == "tico":
            crit = L.TiCoLoss(beta=float(o.beta), rho=float(o.rho))

            def fn(views):
                with torch.no_grad():
                    key = t(views[1])
                return crit(s(views[0]), key)
        elif m == "mmcr":
            crit = L.MMCRLoss(lmda=float(o.lmbda))

            def fn(views):
                online = F.normalize(s(torch.cat(views)), dim=-1).chunk(len(views))
                with torch.no_grad():
                    momentum = F.normalize(t(torch.cat(views)), dim=-1).chunk(len(views))
                return crit(torch.stack(online, 1), torch.stack(momentum, 1))
        elif m == "wmse":
            crit = L.WMSELoss(embedding_dim=int(cfg.head.out_dim), w_size=int(o.w_size), num_samples=2,
                              eps=float(o.eps)).to(device)

            def fn(views):
                return crit(s(torch.cat(views[:2])))
        else:
            raise RtlabError(f"rtlab bench --methods has no bare loop for method '{m}'")
        return fn

    # ------------------------------------------------------------------------------------------------- steps
    def steps(self, n: int, batch: int) -> None:
        for i in range(n):
            idx = torch.arange(i * batch, (i + 1) * batch, device=self.images.device) % len(self.images)
            images = self.images[idx].float().div_(255.0)
            views = [self.normalize(v) for v in self.augment.views(images, self.gen)]
            loss = self.loss(views)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.clip:
                torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
            self.opt.step()
            if self.ema is not None:
                base, final = self.momentum
                progress = min(self.step / max(self.run.total_steps, 1), 1.0)
                momentum = final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
                if momentum < 1.0:
                    with torch.no_grad():
                        torch._foreach_lerp_(self.ema[0], self.ema[1], 1.0 - momentum)
            self.step += 1


def method_overrides(method: str, batch: int, steps: int, repeats: int, device: str) -> list[str]:
    """The compared configuration of ``method`` (``experiment=compare_cifar10_cpu`` and its per-method overrides)
    on random images; the probes run once, after the timed segments, on the student only."""
    from framework.api import compose, create_plugin_manager

    pm = create_plugin_manager(autoload=False)
    cfg = compose([f"experiment={PRESET}"], pm.registry)
    extra = list(cfg.compare.overrides.get(method, []))
    return [f"experiment={PRESET}", f"method={method}", *extra,
            "data=random_images", f"data.num_train={batch * steps}", "data.num_test=8", "data.cache=false",
            f"train.batch_size={batch}", f"train.epochs={repeats + 1}", f"train.device={device}",
            "train.precision=fp32", f"train.log_every={10 ** 9}", "eval.before=false", "eval.every=0",
            "eval.targets=[student]", "checkpoint.final=false", "tensorboard.enabled=false", "progress.enabled=false",
            "train.drop_last=true", "train.state_every=0"]


def bench_method(method: str, batch: int, steps: int, repeats: int, device: str) -> dict[str, Any]:
    """rtlab's step time for ``method`` against the bare lightly loop (medians of ``repeats`` segments of
    ``steps`` steps, alternated)."""
    from framework.api import Run, compose, create_plugin_manager
    from plugins.commands.bench import _Interleave

    _lightly()
    pm = create_plugin_manager(autoload=False)
    cfg = compose(method_overrides(method, batch, steps, repeats, device), pm.registry)
    if method == "random_teacher":  # like for like: the bare loop runs the teacher every step
        cfg.objective.cache_teacher = False
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(cfg, tmp, pm).setup()
        try:
            bare = BareMethod(run, method)
            probe = _Interleave(bare, steps, batch, run.device)
            pm.register(probe, name="bench-methods")
            run.fit()
        finally:
            run.release()
    rtlab, plain = probe.rtlab[1:], probe.bare[1:]  # the first segment warms up
    ratio = statistics.median(rtlab) / statistics.median(plain)
    return {"method": method, "batch": batch, "steps": steps, "repeats": repeats,
            "backbone": str(cfg.backbone.name), "device": str(run.device),
            "rtlab_img_s": round(batch * steps / statistics.median(rtlab), 1),
            "bare_img_s": round(batch * steps / statistics.median(plain), 1),
            "rtlab_over_bare": round(ratio, 3),
            "segments": {"rtlab": [round(x, 4) for x in rtlab], "bare": [round(x, 4) for x in plain]}}


def bench_methods(names: list[str], batch: int, steps: int, repeats: int, device: str) -> list[dict[str, Any]]:
    """One row per method (every registered method when ``names`` is empty), printed as it is measured."""
    from framework.api import create_plugin_manager
    from plugins.methods import method_names

    names = names or method_names(create_plugin_manager(autoload=False).registry)
    print(f"{'method':<16}{'backbone':<12}{'batch':>6}  {'bare img/s':>11}{'rtlab img/s':>12}{'rtlab/bare':>11}",
          flush=True)
    rows = []
    for m in names:
        r = bench_method(m, batch, steps, repeats, device)
        rows.append(r)
        print(f"{m:<16}{r['backbone']:<12}{batch:>6}  {r['bare_img_s']:>11.1f}{r['rtlab_img_s']:>12.1f}"
              f"{r['rtlab_over_bare']:>11.3f}   ({r['device']}, lightly's loss)", flush=True)
    return rows

