"""Data-parallel training through torchrun: two gloo processes on the CPU follow the one-process trajectory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from conftest import ROOT

# No batch-coupled layers (test_vit: LayerNorm; the DINO head has no BatchNorm), so the two-process update must
# equal the one-process update on the same global batch up to float summation order.
COMMON = ["backbone=test_vit", "head.hidden_dims=[64]", "head.bottleneck_dim=32", "head.out_dim=128",
          "data=digits", "data.train_size=256", "data.test_size=64", "train.batch_size=64", "train.epochs=2",
          "train.log_every=1", "eval.every=1", "evaluator=[knn]", "train.precision=fp32", "progress.enabled=false"]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _rows(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_two_gloo_processes_match_one_process(tmp_path):
    """Also across storage modes: the two processes read their shards of each batch from the decoded cache file
    (data.storage=disk) while the one process holds the images in memory."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    res = subprocess.run([sys.executable, "-m", "framework.cli", "train", *COMMON, f"hydra.run.dir={single}"],
                         capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "framework.cli", "train", *COMMON, "data.storage=disk", f"hydra.run.dir={ddp}"],
                         capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]

    one, two = _rows(single, "train"), _rows(ddp, "train")
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, 9))  # rank 0 logs, once
    losses = torch.tensor([[a["train/loss"], b["train/loss"]] for a, b in zip(one, two)])
    assert torch.allclose(losses[:, 0], losses[:, 1], rtol=1e-5, atol=1e-6), losses
    assert [r["knn/student"] for r in _rows(single, "eval")] == [r["knn/student"] for r in _rows(ddp, "eval")]

    summary = json.loads((ddp / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["train_images"] == 256 and summary["data_storage"] == "disk"
    from safetensors.torch import load_file

    a = load_file(single / "checkpoints" / "final.safetensors")
    b = load_file(ddp / "checkpoints" / "final.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
