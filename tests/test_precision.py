"""train.precision=auto: bf16 autocast on CPUs with bf16 units unless the network hits torch's CPU bf16 hazard
(then fp32, with a warning), fp32 on other CPUs; explicit precisions are kept."""

from __future__ import annotations

import pytest
import torch

import framework._nets.device as device
from framework._nets.device import cpuinfo_has_bf16, resolve_dtype
from tiny_runs import compose_run

CPU = torch.device("cpu")
ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n"
ICELAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n"
SAPPHIRE = "flags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8\n"


def test_cpu_flags_name_the_bf16_units():
    assert cpuinfo_has_bf16(ZEN4) and cpuinfo_has_bf16(SAPPHIRE)
    assert not cpuinfo_has_bf16(ICELAKE) and not cpuinfo_has_bf16("")
    assert not cpuinfo_has_bf16("model name\t: avx512_bf16 lookalike\n")  # only the flags line counts


@pytest.mark.parametrize("units, want", [(True, torch.bfloat16), (False, None)])
def test_auto_is_bf16_only_on_cpus_with_bf16_units(monkeypatch, units, want):
    monkeypatch.setattr(device, "cpu_has_bf16_units", lambda: units)
    assert resolve_dtype("auto", CPU) is want
    assert resolve_dtype("fp32", CPU) is None and resolve_dtype("bf16", CPU) is torch.bfloat16


def test_auto_run_uses_bf16_where_the_network_is_safe(monkeypatch, tmp_path):
    monkeypatch.setattr(device, "cpu_has_bf16_units", lambda: True)
    # digits at 32 px with timm's stem: no strided convolution sees a 1x1 map
    run = compose_run(tmp_path, "train.precision=auto", "data.image_size=32", "backbone.stem=timm",
                      "evaluator=[]")
    assert run.amp_dtype is torch.bfloat16
    summary = run.fit()
    assert summary["precision"] == "bfloat16" and not summary.get("warnings")


def test_auto_run_falls_back_to_fp32_on_the_bf16_hazard(monkeypatch, tmp_path):
    monkeypatch.setattr(device, "cpu_has_bf16_units", lambda: True)
    run = compose_run(tmp_path, "train.precision=auto", "evaluator=[]")  # 8x8 digits: 1x1 maps in layer 3/4
    assert run.amp_dtype is None
    summary = run.fit()
    assert summary["precision"] == "fp32"
    assert any("switched to fp32" in w and "1x1 maps" in w for w in summary["warnings"])


def test_auto_run_is_fp32_without_bf16_units(monkeypatch, tmp_path):
    monkeypatch.setattr(device, "cpu_has_bf16_units", lambda: False)
    run = compose_run(tmp_path, "train.precision=auto", "data.image_size=32", "backbone.stem=timm",
                      "evaluator=[]")
    assert run.amp_dtype is None and run.fit()["precision"] == "fp32"
