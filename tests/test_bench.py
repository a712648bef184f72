"""rtlab bench writes the table the performance checks read (tiny sizes: this checks the plumbing, not speed)."""

from __future__ import annotations

import json

import pytest


def test_bench_writes_the_documented_keys(cli, tmp_path):
    out = tmp_path / "bench.json"
    res = cli("bench", "--backbone", "test_resnet", "--input", "1x16x16", "--out-dim", "64", "128", "--batch", "8",
              "--steps", "1", "--repeats", "1", "--knn", "600", "100", "16", "--out", str(out),
              env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(out.read_text())
    from framework._nets.device import cpu_has_bf16_units

    precisions = ["fp32", "auto"] if cpu_has_bf16_units() else ["fp32"]  # auto = fp32 elsewhere: measured once
    assert [(r["out_dim"], r["precision"]) for r in report["results"]] == [(d, p) for d in (64, 128)
                                                                          for p in precisions]
    assert report["peak_gflops"]["float32"] > 0 and report["peak_gflops"]["bfloat16"] > 0
    for r in report["results"]:
        assert r["backbone"] == "test_resnet" and r["input"] == "1x16x16" and r["batch"] == 8
        assert r["bound_img_s"] > 0 and r["step_img_s"] > 0 and r["cached_img_s"] > 0
        assert r["step_over_bound"] > 0 and r["cached_over_step"] > 0
        assert r["device"] == "cpu" and r["dtype"] == ("float32" if r["precision"] == "fp32" else "bfloat16")
        # FLOPs of the step: test_resnet at 16 px plus the head, 8 images, forward + backward + teacher forward
        assert 0.1 < r["gflop_per_step"] < 10 and r["gflops"] > 0
        assert r["fraction_of_peak"] == pytest.approx(r["gflops"] / r["peak_gflops"], rel=0.02)
        opt = r["optimizer"]
        assert opt["params"] > 10 ** 6 and opt["foreach_ms"] > 0
        if "fused_ms" in opt:
            assert opt["fused_ms"] > 0 and opt["max_diff_ulp"] < 64  # the two kernels agree
        assert (r["bound_speedup_over_fp32"] is None) == (r["precision"] == "fp32")
    assert len(report["precision_speedup"]) == 2 * (len(precisions) - 1)
    knn = report["knn"]
    assert knn["rtlab_s"] > 0 and knn["sklearn_s"] > 0 and knn["agreement"] > 0.99
    assert knn["agreement_fp32"] == 1.0 and knn["rtlab_fp32_s"] > 0  # the bf16 screen changes no prediction
    assert knn["k_list"] == [10, 20, 200] and knn["rtlab_list_s"] > 0 and knn["list_over_max_k"] > 0
    assert 0 <= knn["list_rescored"] <= 1  # the share of test rows whose votes went to the fp32 re-scoring
    assert report["versions"]["torch"] and "linear" in report
    assert "rtlab/bound" in res.stdout and "GFLOP/s" in res.stdout and "matmul peak" in res.stdout


def test_bench_rejects_a_malformed_input_shape(cli):
    res = cli("bench", "--backbone", "test_resnet", "--input", "16", "--no-probes")
    assert res.returncode == 2 and "--input must look like 3x32x32" in res.stderr


def test_bench_data_path_times_every_storage_mode(cli, tmp_path):
    out = tmp_path / "bench.json"
    res = cli("bench", "--data", "--backbone", "test_resnet", "--input", "3x16x16", "--out-dim", "64", "--batch", "8",
              "--steps", "2", "--repeats", "1", "--threads", "1", "--out", str(out), env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads(out.read_text())["data_path"]
    assert r["backbone"] == "test_resnet" and r["batch"] == 8 and r["device"] == "cpu"
    assert set(r["steps_per_s"]) == {"device", "host", "disk", "stream"} and all(v > 0 for v in r["steps_per_s"].values())
    assert r["over_device"]["device"] == 1.0 and len(r["segments_s"]["disk"]) == 1
    assert "vs device" in res.stdout


def test_bench_extract_times_rtlab_extraction_against_a_bare_forward(cli, tmp_path):
    out = tmp_path / "bench.json"
    res = cli("bench", "--extract", "--backbone", "test_resnet", "--input", "3x16x16", "--extract-images", "64", "32",
              "--repeats", "2", "--threads", "1", "--precision", "fp32", "--out", str(out),
              env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    (r,) = json.loads(out.read_text())["extraction"]
    assert r["backbone"] == "test_resnet" and r["images"] == 96 and r["dtype"] == "float32" and r["device"] == "cpu"
    assert len(r["segments"]["rtlab"]) == len(r["segments"]["bare"]) == 2
    assert r["rtlab_img_s"] > 0 and r["bare_img_s"] > 0 and r["rtlab_over_bare"] > 0
    assert "bare no_grad forward" in res.stdout
    bad = cli("bench", "--extract", "--backbone", "test_resnet", "--extract-images", "0", "8")
    assert bad.returncode == 2 and "--extract-images needs two positive counts" in bad.stderr
