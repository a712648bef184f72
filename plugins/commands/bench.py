"""``rtlab bench``: the rtlab distillation step against a bare PyTorch loop, and the probes against scikit-learn.

Everything is measured side by side in one process on the current device, so the ratios hold even on a busy
machine:

* **bound** — the same computation (backbone + head + CE loss + AdamW: student forward/backward, teacher forward)
  as a bare loop over device-resident uint8 batches, no framework;
* **step** — rtlab's distillation step through the real run loop (``Run.fit``), same networks, batch and input;
* **cached** — the same with the frozen teacher's head input computed once per image (``objective.cache_teacher``);
* **knn / linear** — rtlab's probes against scikit-learn's brute-force k-NN and logistic regression;
* **flops** — the step's FLOPs (``torch.utils.flop_counter.FlopCounterMode``) over its time, against the device's
  matmul peak sampled between the timed segments (fp32 and bf16);
* **optimizer** — one AdamW update of the case's student parameters with the run's gradients, torch's multi-tensor
  (``foreach``) kernel against the fused one (the run's on CUDA and the CPU);
* **precision** — every case at each ``--precision`` (default fp32 and auto: bf16 on GPUs and bf16-capable CPUs).

The bound and the rtlab loop alternate segment by segment (a hook runs the bound at every rtlab epoch end), so
load changes hit both alike. ``--out FILE`` writes the table as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from framework.api import __version__, DataOptions, hookimpl, RtlabError


# ----------------------------------------------------------------------------------------- synthetic data source
@dataclass
class RandomImagesOptions(DataOptions):
    num_train: int = 2048
    num_test: int = 512
    channels_in: int = 3  # channels of the generated images
    size: int = 32
    classes: int = 10
    image_seed: int = 0


class RandomImages:
    """Uniform random uint8 images with random labels (throughput measurements only: nothing to learn)."""

    def __init__(self, opts: RandomImagesOptions) -> None:
        self.opts = opts

    def cache_key(self) -> str:
        return "random-images:1"  # the images are a function of the options, which the cache key holds

    def load(self):
        import datasets

        o = self.opts
        rng = np.random.default_rng(o.image_seed)
        shape = (o.channels_in, o.size, o.size)
        features = datasets.Features(image=datasets.Array3D(shape, "uint8"),
                                     label=datasets.ClassLabel(num_classes=o.classes))
        out = {}
        for split, n in (("train", o.num_train), ("test", o.num_test)):
            images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
            labels = rng.integers(0, o.classes, n)
            out[split] = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
        return out


# -------------------------------------------------------------------------------------------------- the cases
@dataclass
class BenchCase:
    backbone: str
    channels: int
    size: int
    out_dim: int
    stem: str = "auto"

    @property
    def input(self) -> str:
        return f"{self.channels}x{self.size}x{self.size}"


PRESETS = {
    # CPU: the acceptance cases of the performance issue, at a batch a 2-core machine runs in seconds.
    "cpu": dict(batch=64, steps=4, repeats=3, knn=(50_000, 10_000, 512), extract=(4096, 1024), cases=[
        BenchCase("resnet18", 3, 32, 65536, "cifar"), BenchCase("resnet18", 3, 32, 4096, "cifar"),
        BenchCase("resnet10t", 1, 28, 65536, "timm"), BenchCase("resnet10t", 1, 28, 4096, "timm")]),
    # GPU: CIFAR-scale, the paper's batch.
    "gpu": dict(batch=256, steps=20, repeats=5, knn=(50_000, 10_000, 512), extract=(50_000, 10_000), cases=[
        BenchCase("resnet18", 3, 32, 65536, "cifar"), BenchCase("resnet18", 3, 32, 4096, "cifar"),
        BenchCase("vgg11_nobn", 3, 32, 65536, "auto"), BenchCase("resnet10t", 1, 28, 65536, "timm")]),
}


@dataclass
class BenchResult:
    backbone: str
    input: str
    out_dim: int
    batch: int
    device: str
    dtype: str
    bound_img_s: float
    step_img_s: float
    cached_img_s: Optional[float]
    step_over_bound: float  # time per step, rtlab / bare loop (1.0 = no overhead)
    cached_over_step: Optional[float]  # time per step, cached / uncached rtlab
    precision: str = "auto"  # the requested train.precision (dtype: what the run used)
    gflop_per_step: Optional[float] = None  # FLOPs of one uncached step (student fwd + bwd, teacher fwd), 1e9
    gflops: Optional[float] = None  # gflop_per_step / rtlab's median step time
    peak_gflops: Optional[float] = None  # the device's measured matmul peak at this dtype
    fraction_of_peak: Optional[float] = None  # gflops / peak_gflops
    optimizer: dict[str, Any] = field(default_factory=dict)  # foreach vs fused AdamW update (see bench_optimizer)
    # time per step of the bare fp32 loop / the bare loop at this precision, alternated in one run (None at fp32)
    bound_speedup_over_fp32: Optional[float] = None
    segments: dict[str, list[float]] = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Bound:
    """The bare loop: same networks and data as the run, plain PyTorch."""

    def __init__(self, run, dtype: Any = "run") -> None:
        self.run = run
        self.student = run.new_network(run.cfg.student.seed if "seed" in run.cfg.student else 1)
        self.teacher = run.new_network(run.cfg.teacher.seed)
        self.student, self.teacher = run.place(self.student), run.place(self.teacher).eval().requires_grad_(False)
        self.student.train()
        kernel = {"fused": True} if run.optimizer.defaults.get("fused") else {"foreach": True}  # the run's
        self.opt = torch.optim.AdamW(self.student.parameters(), lr=1e-3, weight_decay=0.0, **kernel)
        self.images = run.data.train.images
        self.mean = torch.tensor(run.data.mean, device=run.device).view(1, -1, 1, 1)
        self.std = torch.tensor(run.data.std, device=run.device).view(1, -1, 1, 1)
        self.channels_last = run.cfg.train.channels_last
        self.dtype = run.amp_dtype if dtype == "run" else dtype  # the autocast dtype (None: fp32)

    def steps(self, n: int, batch: int) -> None:
        for i in range(n):
            idx = torch.arange(i * batch, (i + 1) * batch, device=self.images.device) % len(self.images)
            x = (self.images[idx].float().div_(255.0) - self.mean) / self.std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(x.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                with torch.no_grad():
                    t = self.teacher(x)
                s = self.student(x)
                loss = -(F.softmax(t.float(), -1) * F.log_softmax(s.float(), -1)).sum(-1).mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()


class _Interleave:
    """A throw-away plugin: at every rtlab epoch end, time the bare loop for the same number of steps."""

    def __init__(self, bound: _Bound, steps: int, batch: int, device: torch.device,
                 reference: _Bound | None = None) -> None:
        self.bound, self.steps, self.batch, self.device = bound, steps, batch, device
        self.reference = reference  # a bare fp32 loop timed alongside, for load-robust precision ratios
        self.peak_dtype: Any = None  # set: sample the matmul peak at this dtype after every segment
        self.peaks: list[float] = []
        self.rtlab: list[float] = []
        self.bare: list[float] = []
        self.bare_fp32: list[float] = []
        self._mark = 0.0

    @hookimpl
    def rtlab_run_start(self, run):
        self.bound.steps(1, self.batch)  # warm-up of the bare loop
        if self.reference is not None:
            self.reference.steps(1, self.batch)
        _sync(self.device)
        self._mark = time.perf_counter()

    @hookimpl
    def rtlab_epoch_end(self, run, epoch):
        _sync(self.device)
        now = time.perf_counter()
        self.rtlab.append(now - self._mark)
        self.bound.steps(self.steps, self.batch)
        _sync(self.device)
        done = time.perf_counter()
        self.bare.append(done - now)
        if self.reference is not None:
            self.reference.steps(self.steps, self.batch)
            _sync(self.device)
            self.bare_fp32.append(time.perf_counter() - done)
        if self.peak_dtype is not None:
            self.peaks.append(matmul_peak(self.device, self.peak_dtype, repeats=3))
        self._mark = time.perf_counter()


def _median_rate(times: list[float], images: int) -> float:
    return images / statistics.median(times)


def step_flops(bound: "_Bound", batch: int) -> float:
    """FLOPs of one bare step (student forward and backward, teacher forward), counted by torch's FlopCounterMode
    (matrix products and convolutions; elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        bound.steps(1, batch)
    return float(counter.get_total_flops())


_OPERANDS: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}


def matmul_peak(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> float:
    """The device's achievable matmul rate now, in GFLOP/s at ``dtype``: the best of ``repeats`` square products
    (n = 2048 on the CPU, 8192 on a GPU) with the current thread setting. The bench samples it between the timed
    segments, so a change of machine load hits the peak and the step alike."""
    key = (str(device), str(dtype))
    if key not in _OPERANDS:
        n = 8192 if device.type == "cuda" else 2048
        g = torch.Generator(device="cpu").manual_seed(0)
        _OPERANDS[key] = (torch.randn(n, n, generator=g).to(device, dtype),
                          torch.randn(n, n, generator=g).to(device, dtype))
        _OPERANDS[key][0] @ _OPERANDS[key][1]  # warm-up
    a, b = _OPERANDS[key]
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * a.shape[0] ** 3 / best / 1e9


def bench_optimizer(params: list[torch.nn.Parameter], repeats: int = 5) -> dict[str, Any]:
    """One AdamW update (lr 1e-3, wd 0) of copies of ``params`` with their current gradients, foreach against
    fused, alternated ``repeats`` times (medians); the largest difference of the updated weights, in units of
    the float32 spacing of the weight or of the update (lr), whichever is larger (ulp), says whether the two
    kernels agree."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return {}
    device = params[0].device
    fused_ok = device.type == "cuda"
    if device.type == "cpu":
        from plugins.training.optimizers import cpu_fused_adamw_available

        fused_ok = cpu_fused_adamw_available()
    kinds = ["foreach", "fused"] if fused_ok else ["foreach"]
    copies, opts = {}, {}
    for kind in kinds:
        copies[kind] = [torch.nn.Parameter(p.detach().clone()) for p in params]
        for c, p in zip(copies[kind], params):
            c.grad = p.grad.detach().clone()
        opts[kind] = torch.optim.AdamW(copies[kind], lr=1e-3, weight_decay=0.0, **{kind: True})
        opts[kind].step()  # creates the state; the first step is not timed
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(repeats):
        for kind in kinds:
            _sync(device)
            t0 = time.perf_counter()
            opts[kind].step()
            _sync(device)
            times[kind].append(time.perf_counter() - t0)
    out: dict[str, Any] = {"params": sum(p.numel() for p in params), "tensors": len(params),
                           "foreach_ms": round(1e3 * statistics.median(times["foreach"]), 2)}
    if fused_ok:
        out["fused_ms"] = round(1e3 * statistics.median(times["fused"]), 2)
        out["speedup"] = round(statistics.median(times["foreach"]) / statistics.median(times["fused"]), 2)
        worst = 0.0
        with torch.no_grad():
            for a, b in zip(copies["foreach"], copies["fused"]):
                # the spacing of the weight, or of the update (~lr) for weights that cross zero
                spacing = torch.finfo(a.dtype).eps * a.abs().clamp_min(1e-3)
                worst = max(worst, float(((a - b).abs() / spacing).max()))
        out["max_diff_ulp"] = round(worst, 2)
    return out


def bench_case(case: BenchCase, batch: int, steps: int, repeats: int, device: str, precision: str,
               cached: bool = True) -> BenchResult:
    """Step throughput of rtlab vs the bare loop (and with teacher caching) for one case."""
    from framework.api import compose, create_plugin_manager, Run

    overrides = [
        f"backbone={case.backbone}", f"backbone.stem={case.stem}", f"head.out_dim={case.out_dim}",
        "data=random_images", f"data.num_train={batch * steps}", "data.num_test=8",
        f"data.channels_in={case.channels}", f"data.size={case.size}", "data.cache=false",
        f"train.batch_size={batch}", f"train.epochs={repeats + 1}", f"train.device={device}",
        f"train.precision={precision}", f"train.log_every={10 ** 9}", "eval.before=false", "eval.every=0",
        "evaluator=[]", "checkpoint.final=false", "tensorboard.enabled=false", "progress.enabled=false",
        "train.drop_last=true", "student=copy", "train.state_every=0",
    ]
    results: dict[str, list[float]] = {}
    for mode in (["uncached", "cached"] if cached else ["uncached"]):
        pm = create_plugin_manager(autoload=False)
        cfg = compose(overrides + [f"objective.cache_teacher={'true' if mode == 'cached' else 'false'}"],
                      pm.registry)
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            run = Run(cfg, tmp, pm).setup()
            bound = _Bound(run)
            reference = _Bound(run, dtype=None) if mode == "uncached" and run.amp_dtype is not None else None
            probe = _Interleave(bound, steps, batch, run.device, reference)
            if mode == "uncached":
                probe.peak_dtype = run.amp_dtype or torch.float32
            pm.register(probe, name="bench-interleave")
            run.fit()
            if mode == "uncached":
                flops = step_flops(bound, batch)
                optimizer = bench_optimizer(run.trainable)
                peaks = probe.peaks[1:] or probe.peaks
        results[f"rtlab_{mode}"] = probe.rtlab[1:]  # epoch 1 warms up
        results[f"bare_{mode}"] = probe.bare[1:]
        if probe.bare_fp32:
            results["bare_fp32_uncached"] = probe.bare_fp32[1:]
        amp = run.amp_dtype
        dtype = str(amp).replace("torch.", "") if amp else "float32"
        dev = str(run.device)
    n = batch * steps
    bound_times = results["bare_uncached"] + results.get("bare_cached", [])
    bound = _median_rate(bound_times, n)
    step = _median_rate(results["rtlab_uncached"], n)
    cached_rate = _median_rate(results["rtlab_cached"], n) if cached else None
    # ratios from each run's own interleaved bound, so drift between the two runs cancels
    step_ratio = statistics.median(results["rtlab_uncached"]) / statistics.median(results["bare_uncached"])
    cached_ratio = None
    if cached:
        cached_ratio = (statistics.median(results["rtlab_cached"]) / statistics.median(results["bare_cached"])
                        ) / step_ratio
    # the bare loop at this precision against the bare fp32 loop, alternated segment by segment in the same run
    bound_speedup = None
    if results.get("bare_fp32_uncached"):
        bound_speedup = (statistics.median(results["bare_fp32_uncached"])
                         / statistics.median(results["bare_uncached"]))
    gflop = flops / 1e9
    achieved = gflop / statistics.median(results["rtlab_uncached"]) * steps
    peak = statistics.median(peaks)  # sampled between the segments the step was timed in
    return BenchResult(case.backbone, case.input, case.out_dim, batch, dev, dtype, round(bound, 1), round(step, 1),
                       round(cached_rate, 1) if cached_rate else None, round(step_ratio, 3),
                       round(cached_ratio, 3) if cached_ratio else None, precision, round(gflop, 3),
                       round(achieved, 2), round(peak, 1), round(achieved / peak, 4), optimizer,
                       round(bound_speedup, 3) if bound_speedup else None, results)


# ------------------------------------------------------------------------------------------------------ probes
def _device(name: str) -> torch.device:
    return torch.device(name if name != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))


def _clusters(n_train: int, n_test: int, dim: int, classes: int, noise: float, seed: int):
    """Gaussian class clusters (train features, labels, test features, labels) on the CPU."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g)
    ytr = torch.randint(0, classes, (n_train,), generator=g)
    yte = torch.randint(0, classes, (n_test,), generator=g)
    return (centers[ytr] + noise * torch.randn(n_train, dim, generator=g), ytr,
            centers[yte] + noise * torch.randn(n_test, dim, generator=g), yte)


def bench_knn(n_train: int, n_test: int, dim: int, k: int, device: str, classes: int = 10,
              repeats: int = 3, threads: int | None = None) -> dict[str, Any]:
    """rtlab's chunked k-NN (as the probe runs it, and with every distance in fp32) against scikit-learn's brute
    force on the same clustered features."""
    from sklearn.neighbors import KNeighborsClassifier

    from plugins.probes.knn import bf16_screening_pays, knn_predict, knn_predict_ks

    dev = _device(device)
    xtr, ytr, xte, yte = _clusters(n_train, n_test, dim, classes, noise=2.0, seed=0)
    xtr_d, ytr_d, xte_d = xtr.to(dev), ytr.to(dev), xte.to(dev)

    for screen in ("auto", "off"):  # warm-up
        knn_predict(xtr_d[:5000], ytr_d[:5000], xte_d[:100], k=k, num_classes=classes, screen=screen)

    def ours(screen: str) -> tuple[torch.Tensor, float]:
        _sync(dev)
        t0 = time.perf_counter()
        pred = knn_predict(xtr_d, ytr_d, xte_d, k=k, num_classes=classes, screen=screen)
        _sync(dev)
        return pred.cpu(), time.perf_counter() - t0

    def sklearn() -> tuple[np.ndarray, float]:
        from threadpoolctl import threadpool_limits

        t0 = time.perf_counter()
        with threadpool_limits(limits=threads):  # None: no limit; else the same threads as torch
            ref = KNeighborsClassifier(n_neighbors=k, algorithm="brute", n_jobs=threads or -1)
            pred = ref.fit(xtr.numpy(), ytr.numpy()).predict(xte.numpy())
        return pred, time.perf_counter() - t0

    ks = sorted({10, k, 200})

    list_stats: dict[str, int] = {}

    def ours_ks(kk: list[int]) -> float:  # every k of the list from one search of the largest (knn.k=[10,20,200])
        _sync(dev)
        t0 = time.perf_counter()
        knn_predict_ks(xtr_d, ytr_d, xte_d, kk, num_classes=classes, stats=list_stats if kk == ks else None)
        _sync(dev)
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {"auto": [], "list": [], "max_k": [], "off": [], "sklearn": []}
    for _ in range(repeats):  # interleaved, medians: a load change hits all of them alike
        ours_pred, t = ours("auto")
        times["auto"].append(t)
        times["list"].append(ours_ks(ks))
        times["max_k"].append(ours_ks([max(ks)]))
        exact, t = ours("off")
        times["off"].append(t)
        ref_pred, t = sklearn()
        times["sklearn"].append(t)
    rtlab_s, list_s, max_k_s, exact_s, sklearn_s = (statistics.median(times[key]) for key in (
        "auto", "list", "max_k", "off", "sklearn"))
    ours = ours_pred.numpy()
    return {"n_train": n_train, "n_test": n_test, "dim": dim, "k": k, "device": str(dev),
            "screen": "bf16" if bf16_screening_pays(dev) else "off",
            "repeats": repeats, "rtlab_s": round(rtlab_s, 3), "rtlab_fp32_s": round(exact_s, 3),
            "sklearn_s": round(sklearn_s, 3), "speedup": round(sklearn_s / rtlab_s, 2),
            "k_list": ks, "rtlab_list_s": round(list_s, 3), "rtlab_max_k_s": round(max_k_s, 3),
            "list_over_max_k": round(list_s / max_k_s, 3), "list_over_single": round(list_s / rtlab_s, 3),
            "list_rescored": round(list_stats.get("rescored", 0) / n_test, 4),
            "times_s": {key: [round(t, 3) for t in v] for key, v in times.items()},
            "agreement": round(float((ours == ref_pred).mean()), 4),
            "agreement_fp32": round(float((ours == exact.numpy()).mean()), 4),
            "rtlab_acc": round(float((ours == yte.numpy()).mean()), 4),
            "sklearn_acc": round(float((ref_pred == yte.numpy()).mean()), 4)}


def bench_linear(n_train: int, n_test: int, dim: int, device: str, classes: int = 10) -> dict[str, Any]:
    """rtlab's linear probe (AdamW, 10 epochs, on device) against scikit-learn's logistic regression."""
    from sklearn.linear_model import LogisticRegression

    from plugins.probes.linear_probe import train_linear_probe

    dev = _device(device)
    xtr, ytr, xte, yte = _clusters(n_train, n_test, dim, classes, noise=3.0, seed=1)
    t0 = time.perf_counter()
    acc = train_linear_probe(xtr.to(dev), ytr.to(dev), xte.to(dev), yte.to(dev), classes)
    _sync(dev)
    rtlab_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = LogisticRegression(max_iter=100).fit(xtr.numpy(), ytr.numpy())
    sk_acc = float(ref.score(xte.numpy(), yte.numpy()))
    sklearn_s = time.perf_counter() - t0
    return {"n_train": n_train, "n_test": n_test, "dim": dim, "rtlab_s": round(rtlab_s, 3),
            "sklearn_s": round(sklearn_s, 3), "rtlab_acc": round(acc, 4), "sklearn_acc": round(sk_acc, 4)}


# -------------------------------------------------------------------------------------------- feature extraction
def bench_extraction(n_train: int, n_test: int, batch: int, repeats: int, device: str, precision: str,
                     backbone: str = "resnet18", stem: str = "cifar") -> dict[str, Any]:
    """rtlab's feature extraction of the teacher (``framework.api.features``: both splits, as an evaluation does)
    against a bare ``torch.no_grad()`` forward of the same network over the same uint8 images, at the same batch
    and precision, in ``repeats`` back-to-back pairs of alternating order; the ratio is the median of the pairs'
    ratios."""
    import tempfile

    from framework.api import Run, compose, create_plugin_manager, features

    overrides = [f"backbone={backbone}", f"backbone.stem={stem}", "data=random_images",
                 f"data.num_train={n_train}", f"data.num_test={n_test}", "data.cache=false", f"eval.batch_size={batch}",
                 f"train.device={device}", f"train.precision={precision}", "train.epochs=0", "evaluator=[]",
                 "checkpoint.final=false", "tensorboard.enabled=false", "progress.enabled=false"]
    pm = create_plugin_manager(autoload=False)
    cfg = compose(overrides, pm.registry)
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(cfg, tmp, pm).setup()
        net = run.teacher.eval()
        images = [run.data.train.images, run.data.test.images]
        mean = torch.tensor(run.data.mean, device=run.device).view(1, -1, 1, 1)
        std = torch.tensor(run.data.std, device=run.device).view(1, -1, 1, 1)
        dtype = run.amp_dtype

        def bare() -> None:
            with torch.no_grad(), torch.autocast(run.device.type, dtype=dtype or torch.float32,
                                                 enabled=dtype is not None):
                for split in images:
                    for i in range(0, len(split), batch):
                        x = (split[i:i + batch].float().div_(255.0) - mean) / std
                        if cfg.train.channels_last:
                            x = x.contiguous(memory_format=torch.channels_last)
                        net.encoder(x).float()

        def timed(fn) -> float:
            _sync(run.device)
            t0 = time.perf_counter()
            fn()
            _sync(run.device)
            return time.perf_counter() - t0

        timed(bare)  # warm-up
        rtlab_s, bare_s = [], []
        for i in range(repeats):  # pairs in alternating order (ABBA…), so a drifting load hits both alike
            if i % 2:
                bare_s.append(timed(bare))
            rtlab_s.append(timed(lambda: features(run, "teacher")))
            if not i % 2:
                bare_s.append(timed(bare))
        dev = str(run.device)
    n = n_train + n_test
    return {"backbone": backbone, "images": n, "batch": batch, "device": dev,
            "dtype": str(dtype).replace("torch.", "") if dtype else "float32",
            "rtlab_img_s": round(_median_rate(rtlab_s, n), 1), "bare_img_s": round(_median_rate(bare_s, n), 1),
            # the median of the pairs' ratios: each pair ran back to back, under (nearly) the same load
            "rtlab_over_bare": round(statistics.median(r / b for r, b in zip(rtlab_s, bare_s)), 3),
            "segments": {"rtlab": rtlab_s, "bare": bare_s}}


# --------------------------------------------------------------------------------------------------- command
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="case list and sizes")
    parser.add_argument("--backbone", help="measure only this backbone (with --input and --out-dim)")
    parser.add_argument("--input", default="3x32x32", help="CxHxW of the synthetic images for --backbone")
    parser.add_argument("--stem", default="auto", help="backbone.stem for --backbone")
    parser.add_argument("--out-dim", type=int, nargs="+", help="head output dims for --backbone")
    parser.add_argument("--batch", type=int, help="batch size (preset's by default)")
    parser.add_argument("--steps", type=int, help="steps per timed segment")
    parser.add_argument("--repeats", type=int, help="timed segments per method (medians are reported)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", nargs="+", default=["fp32", "auto"],
                        help="train.precision values to measure every case at (auto | fp32 | bf16 | fp16; default: "
                        "fp32 auto, where auto is bf16 on GPUs and bf16-capable CPUs; one that resolves to an "
                        "already measured dtype is skipped)")
    parser.add_argument("--no-cache", action="store_true", help="skip the teacher-caching measurement")
    parser.add_argument("--no-probes", action="store_true", help="skip the k-NN / linear-probe comparison")
    parser.add_argument("--knn", type=int, nargs=3, metavar=("N_TRAIN", "N_TEST", "DIM"),
                        help="k-NN problem size (preset's by default: 50000 10000 512)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch and scikit-learn alike (default: all "
                        "cores; 1 measures reliably on a machine shared with other jobs)")
    parser.add_argument("--data", action="store_true", help="measure the data path instead: steps/s with "
                        "data.storage=device, host, disk and stream, interleaved (first case, or --backbone)")
    parser.add_argument("--methods", nargs="*", metavar="METHOD",
                        help="measure SSL methods instead: each method's step (experiment=compare_cifar10_cpu with "
                        "its per-method overrides, random images) against a bare loop with lightly's loss; no names: "
                        "every registered method")
    parser.add_argument("--extract", action="store_true", help="measure feature extraction instead: rtlab's "
                        "evaluation path for the teacher against a bare torch.no_grad() forward, img/s (first case's "
                        "backbone, or --backbone)")
    parser.add_argument("--extract-images", type=int, nargs=2, metavar=("N_TRAIN", "N_TEST"),
                        help="images embedded per --extract segment (preset's by default: cpu 4096 1024, gpu 50000 "
                        "10000, CIFAR-10's size)")
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")


def _cases(args: argparse.Namespace) -> list[BenchCase]:
    if not args.backbone:
        return list(PRESETS[args.preset]["cases"])
    try:
        c, h, w = (int(v) for v in args.input.lower().split("x"))
    except ValueError:
        raise RtlabError(f"--input must look like 3x32x32, got '{args.input}'") from None
    if h != w:
        raise RtlabError("--input must be square (CxSxS)")
    return [BenchCase(args.backbone, c, h, d, args.stem) for d in (args.out_dim or [65536])]


def run_bench(args: argparse.Namespace) -> int:
    import timm

    if args.threads is not None:
        if args.threads <= 0:
            raise RtlabError(f"--threads must be positive, got {args.threads}")
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    batch = args.batch or preset["batch"]
    steps = args.steps or preset["steps"]
    repeats = args.repeats or preset["repeats"]
    report: dict[str, Any] = {"results": [], "preset": args.preset, "batch": batch, "steps": steps,
                              "repeats": repeats,
                              "versions": {"rtlab": __version__, "torch": torch.__version__,
                                           "timm": timm.__version__, "python": platform.python_version()},
                              "threads": torch.get_num_threads(), "machine": platform.machine()}
    if args.methods is not None:
        from plugins.commands.bench_methods import bench_methods

        report["methods"] = bench_methods(list(args.methods), batch, steps, repeats, args.device)
        return _write(report, args.out)
    if args.data:
        from plugins.commands.bench_data import bench_data_path, print_data_path

        case = _cases(args)[0]
        report["data_path"] = bench_data_path(case.backbone, case.channels, case.size, case.out_dim, case.stem,
                                              batch, steps, repeats, args.device, args.precision[0])
        print_data_path(report["data_path"])
        return _write(report, args.out)
    if args.extract:
        case = _cases(args)[0]
        n_train, n_test = args.extract_images or preset["extract"]
        if min(n_train, n_test) <= 0:
            raise RtlabError(f"--extract-images needs two positive counts, got {n_train} {n_test}")
        report["extraction"] = []
        for precision in args.precision:
            r = bench_extraction(n_train, n_test, 1024, repeats, args.device, precision, case.backbone, case.stem)
            report["extraction"].append(r)
            print(f"extraction {r['backbone']} {r['images']} images, batch {r['batch']}, {r['dtype']} on "
                  f"{r['device']}: rtlab {r['rtlab_img_s']} img/s, bare no_grad forward {r['bare_img_s']} img/s, "
                  f"rtlab/bare time {r['rtlab_over_bare']}", flush=True)
        return _write(report, args.out)
    from framework.api import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    precisions: list[tuple[str, Any]] = []
    for p in args.precision:
        dtype = resolve_dtype(p, device)
        if all(dtype != d for _, d in precisions):
            precisions.append((p, dtype))
    report["peak_gflops"] = {str(d).replace("torch.", ""): round(matmul_peak(device, d), 1)
                             for d in (torch.float32, torch.bfloat16)}
    print(f"matmul peak on {device} at the start: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in
                                                             report["peak_gflops"].items())
          + " (each case's own is sampled between its segments)", flush=True)
    print(f"{'backbone':<14}{'input':<10}{'out_dim':>8}{'batch':>6}{'dtype':>10}  {'bound img/s':>12}"
          f"{'rtlab img/s':>12}{'cached img/s':>13}{'rtlab/bound':>12}{'cached/rtlab':>13}{'GFLOP/step':>11}"
          f"{'GFLOP/s':>9}{'of peak':>8}", flush=True)
    report["precision_speedup"] = []
    for case in _cases(args):
        by_precision: dict[str, BenchResult] = {}
        for precision, _ in precisions:
            r = bench_case(case, batch, steps, repeats, args.device, precision, cached=not args.no_cache)
            by_precision[precision] = r
            report["results"].append({k: v for k, v in asdict(r).items()})
            cached = f"{r.cached_img_s:>13.1f}" if r.cached_img_s else f"{'-':>13}"
            ratio = f"{r.cached_over_step:>13.3f}" if r.cached_over_step else f"{'-':>13}"
            print(f"{r.backbone:<14}{r.input:<10}{r.out_dim:>8}{r.batch:>6}{r.dtype:>10}  {r.bound_img_s:>12.1f}"
                  f"{r.step_img_s:>12.1f}{cached}{r.step_over_bound:>12.3f}{ratio}{r.gflop_per_step:>11.2f}"
                  f"{r.gflops:>9.1f}{100 * r.fraction_of_peak:>7.1f}%   ({r.device}, precision={precision})",
                  flush=True)
            o = r.optimizer
            if o.get("fused_ms") is not None:
                print(f"    AdamW update of {o['params']:,} parameters: foreach {o['foreach_ms']} ms, fused "
                      f"{o['fused_ms']} ms ({o['speedup']}x), largest difference {o['max_diff_ulp']} ulp", flush=True)
        if "fp32" in by_precision and len(by_precision) > 1:
            base = by_precision["fp32"]
            for precision, r in by_precision.items():
                if precision == "fp32":
                    continue
                speedup = round(base.step_img_s and r.step_img_s / base.step_img_s, 3)
                report["precision_speedup"].append({"backbone": r.backbone, "input": r.input, "out_dim": r.out_dim,
                                                    "precision": precision, "dtype": r.dtype,
                                                    "fp32_img_s": base.step_img_s, "img_s": r.step_img_s,
                                                    "step_speedup": speedup,
                                                    "bound_speedup": r.bound_speedup_over_fp32})
                print(f"    {precision} ({r.dtype}) step {speedup}x the fp32 step (rtlab runs one after the "
                      f"other); bare loops alternated in one run: {r.bound_speedup_over_fp32}x", flush=True)
    if not args.no_probes:
        n_train, n_test, dim = args.knn or preset["knn"]
        report["knn"] = bench_knn(n_train, n_test, dim, 20, args.device, repeats=repeats, threads=args.threads)
        kn = report["knn"]
        print(f"k-NN {n_train}x{n_test}x{dim}, k=20: rtlab {kn['rtlab_s']} s (screen {kn['screen']}; all-fp32 "
              f"{kn['rtlab_fp32_s']} s, same predictions: {kn['agreement_fp32']}), scikit-learn brute "
              f"{kn['sklearn_s']} s ({kn['speedup']}x), agreement {kn['agreement']}; k={kn['k_list']} in one pass "
              f"{kn['rtlab_list_s']} s ({kn['list_over_max_k']}x k={max(kn['k_list'])} alone, "
              f"{kn['list_over_single']}x k={kn['k']}; votes re-scored in fp32: {kn['list_rescored']:.1%} of queries)",
              flush=True)
        report["linear"] = bench_linear(min(n_train, 50_000), min(n_test, 10_000), dim, args.device)
        ln = report["linear"]
        print(f"linear probe {ln['n_train']}x{ln['dim']}: rtlab {ln['rtlab_s']} s (acc {ln['rtlab_acc']}), "
              f"scikit-learn LogisticRegression {ln['sklearn_s']} s (acc {ln['sklearn_acc']})", flush=True)
    return _write(report, args.out)


def _write(report: dict[str, Any], out: Optional[Path]) -> int:
    if out:
        from framework.api import atomic_write_text

        atomic_write_text(out, json.dumps(report, indent=2))
        print(f"wrote {out}", file=sys.stderr)
    return 0


@hookimpl
def rtlab_register(registry):
    registry.add("dataset", "random_images", RandomImages, RandomImagesOptions)


@hookimpl
def rtlab_add_commands(commands):
    commands.add("bench", "rtlab's step vs a bare PyTorch loop, and probes vs scikit-learn (JSON with --out)",
                 configure, run_bench)
