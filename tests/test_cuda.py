"""What only a CUDA GPU can check: bf16 autocast, fused AdamW, channels-last, ``train.compile``, deterministic
kernels, the probes and the teacher cache on the device. Marked ``cuda`` and skipped without a GPU (CI collects
them); ``tools/gpu_check.sh`` runs them first on a GPU machine (docs/performance.md)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import write_class_images
from tiny_runs import FAST, compose_run

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (tools/gpu_check.sh)")]


@pytest.fixture(scope="module")
def gpu(tmp_path_factory):
    """The tiny runs' settings on the GPU, on 32x32 class images (3 visible classes, 240 train / 60 test): no
    scikit-learn, which the GPU image may lack (the digits need it)."""
    root = tmp_path_factory.mktemp("classes")
    write_class_images(root / "train", per_class=80, size=32, seed=0)
    write_class_images(root / "test", per_class=20, size=32, seed=1)
    return ["train.device=cuda", "backbone.stem=timm", "data=imagefolder", f"data.path={root}"]


def run_on_gpu(out, gpu, *overrides):
    base = [o for o in FAST if not o.startswith("data")]
    return compose_run(out, *gpu, *overrides, base=base)


def losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return torch.tensor([r["train/loss"] for r in rows if r["kind"] == "train"])


def test_auto_precision_is_bf16_autocast_and_trains(tmp_path, gpu):
    run = run_on_gpu(tmp_path, gpu, "train.precision=auto", "evaluator=[knn]", "train.log_every=1")
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    assert run.amp_dtype is torch.bfloat16 and run.device.type == "cuda"
    summary = run.fit()
    assert summary["precision"] == "bfloat16" and summary["device"].startswith("cuda")
    assert torch.isfinite(losses(tmp_path)).all() and summary["student_distance_from_init"] > 0
    assert next(run.student.parameters()).dtype == torch.float32  # autocast: the weights stay fp32


def test_adamw_is_fused_and_sgd_too_on_cuda(tmp_path, gpu):
    run = run_on_gpu(tmp_path / "adamw", gpu)
    assert run.optimizer.defaults.get("fused") is True
    sgd = run_on_gpu(tmp_path / "sgd", gpu, "optimizer=sgd")
    assert sgd.optimizer.defaults.get("fused") is True
    assert run.fit()["steps"] > 0 and sgd.fit()["student_distance_from_init"] > 0


def test_channels_last_networks_and_inputs(tmp_path, gpu):
    run = run_on_gpu(tmp_path, gpu, "train.channels_last=true")
    convs = [m.weight for m in run.student.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    x = run.prepare(run.data.train.images[:4])
    assert x.is_cuda and x.is_contiguous(memory_format=torch.channels_last)
    plain = run_on_gpu(tmp_path / "plain", gpu, "train.channels_last=false")
    assert not plain.prepare(plain.data.train.images[:4]).is_contiguous(memory_format=torch.channels_last)


def test_compiled_run_trains_like_the_eager_one(tmp_path, gpu):
    common = ["train.precision=fp32", "train.log_every=1", "evaluator=[]", "train.max_steps=3"]
    eager = run_on_gpu(tmp_path / "eager", gpu, *common)
    eager.fit()
    compiled = run_on_gpu(tmp_path / "compiled", gpu, *common, "train.compile=true")
    compiled.fit()
    torch.testing.assert_close(losses(tmp_path / "compiled"), losses(tmp_path / "eager"), rtol=1e-3, atol=1e-5)
    # compiled in place: parameter (and so checkpoint) names are the eager ones
    assert [n for n, _ in compiled.student.named_parameters()] == [n for n, _ in eager.student.named_parameters()]


@pytest.fixture
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


def test_deterministic_runs_are_bit_identical(tmp_path, restore_determinism, gpu):
    common = ["train.precision=auto", "train.deterministic=true", "train.log_every=1", "evaluator=[]"]
    a = run_on_gpu(tmp_path / "a", gpu, *common)
    a.fit()
    b = run_on_gpu(tmp_path / "b", gpu, *common)
    b.fit()
    assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    assert torch.equal(losses(tmp_path / "a"), losses(tmp_path / "b"))
    for (name, pa), (_, pb) in zip(a.student.state_dict().items(), b.student.state_dict().items()):
        assert torch.equal(pa, pb), name


def test_probes_on_the_device_match_the_cpu():
    from plugins.probes.knn import knn_predict
    from plugins.probes.linear_probe import train_linear_probe

    g = torch.Generator().manual_seed(0)
    centers = torch.randn(10, 64, generator=g) * 2
    ytr, yte = torch.randint(0, 10, (4000,), generator=g), torch.randint(0, 10, (1000,), generator=g)
    xtr = centers[ytr] + torch.randn(4000, 64, generator=g)
    xte = centers[yte] + torch.randn(1000, 64, generator=g)
    cpu = knn_predict(xtr, ytr, xte, k=20, num_classes=10, screen="off")
    on_gpu = knn_predict(xtr.cuda(), ytr.cuda(), xte.cuda(), k=20, num_classes=10)
    assert on_gpu.is_cuda and (on_gpu.cpu() == cpu).float().mean() > 0.999  # fp32 on both; ties may break apart
    acc_gpu = train_linear_probe(xtr.cuda(), ytr.cuda(), xte.cuda(), yte.cuda(), 10)
    acc_cpu = train_linear_probe(xtr, ytr, xte, yte, 10)
    assert acc_gpu > 0.8 and abs(acc_gpu - acc_cpu) < 0.02


def test_a_run_probes_on_the_device(tmp_path, gpu):
    summary = run_on_gpu(tmp_path, gpu, "evaluator=[knn,linear]", "eval.targets=[student,input]").fit()
    for key in ("knn/student", "linear/student", "knn/input", "linear/input"):
        assert 0.5 < summary["metrics"][key] <= 1.0, key  # 3 visible classes: far above chance


def test_teacher_cache_lives_on_the_device_and_is_exact(tmp_path, gpu):
    common = ["train.precision=fp32", "train.log_every=1", "evaluator=[]", "train.epochs=2"]
    cached = run_on_gpu(tmp_path / "cached", gpu, *common, "objective.cache_teacher=true")
    summary = cached.fit()
    plain = run_on_gpu(tmp_path / "plain", gpu, *common, "objective.cache_teacher=false")
    plain.fit()
    assert summary["teacher_cache"] == "on"
    assert all(t.is_cuda for t in cached.objective.cache.filled)
    torch.testing.assert_close(losses(tmp_path / "cached"), losses(tmp_path / "plain"), rtol=1e-5, atol=1e-6)
