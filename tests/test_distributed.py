"""Data parallelism on the CPU (gloo): two processes follow the one-process trajectory on the global batch.

* DistributedDataParallel with global collectives: random_teacher, DINO (centre all-reduced), SimCLR (negatives of
  the global batch), Barlow Twins and VICReg (statistics of the global batch), BYOL (global BatchNorm,
  ``train.sync_bn``) trained by two processes in one process group end with the one-process losses and weights,
  unequal last shards included (tests/ddp_cases.py);
* launchers: ``torchrun --nnodes=2`` (two rendezvous on localhost, one process each) and ``srun`` without torchrun
  (SLURM's variables set by hand for two local processes) run the CLI and reproduce the one-process run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, write_parquet
from ddp_cases import BASE, CASES

# No batch-coupled layers (test_vit: LayerNorm; the DINO head has no BatchNorm): the CLI runs below must equal the
# one-process run up to float summation order.
COMMON = ["backbone=test_vit", "head.hidden_dims=[64]", "head.bottleneck_dim=32", "head.out_dim=128",
          "data=digits", "data.train_size=192", "data.test_size=64", "train.batch_size=64", "train.epochs=2",
          "train.log_every=1", "eval.every=1", "evaluator=[knn]", "train.precision=fp32", "progress.enabled=false",
          "train.threads=1"]


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "framework.cli", "train", *args]


def _wait(procs: list[subprocess.Popen]) -> None:
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """The one-process run of COMMON (in this process: the CLI composes the same configuration)."""
    from tiny_runs import fit

    out = tmp_path_factory.mktemp("single") / "run"
    threads = torch.get_num_threads()
    try:
        fit(out, base=COMMON)
    finally:
        torch.set_num_threads(threads)
    return out


def _same_run(single: Path, ddp: Path, atol: float = 1e-5) -> None:
    one, two = _rows(single, "train"), _rows(ddp, "train")
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, 7))  # rank 0 logs, once
    losses = torch.tensor([[a["train/loss"], b["train/loss"]] for a, b in zip(one, two)])
    assert torch.allclose(losses[:, 0], losses[:, 1], rtol=1e-5, atol=1e-6), losses
    assert [r["knn/student"] for r in _rows(single, "eval")] == [r["knn/student"] for r in _rows(ddp, "eval")]
    summary = json.loads((ddp / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["train_images"] == 192
    a = load_file(single / "checkpoints" / "final.safetensors")
    b = load_file(ddp / "checkpoints" / "final.safetensors")
    assert a.keys() == b.keys()  # the plain modules' names: no DDP "module." prefix
    assert all(torch.allclose(a[k], b[k], atol=atol) for k in a)


def test_torchrun_two_nodes_on_localhost_match_one_process(single, tmp_path):
    """Two torchrun invocations (node ranks 0 and 1, one process each) meet at one rendezvous port. Also across
    storage modes: the two processes read their shards of each batch from the decoded cache file
    (data.storage=disk) while the one process holds the images in memory."""
    ddp, port = tmp_path / "ddp", _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
                               "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
                               "-m", "framework.cli", "train", *COMMON, "data.storage=disk", f"hydra.run.dir={ddp}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=tmp_path)
             for rank in (0, 1)]
    _wait(procs)
    _same_run(single, ddp)
    assert json.loads((ddp / "summary.json").read_text())["data_storage"] == "disk"


def test_torchrun_streaming_parquet_shards_matches_one_process_reading_the_cache(tmp_path):
    """Two processes stream their rows of each batch from parquet shards (data.storage=stream, a decoding worker
    each) and follow the one process that reads the decoded cache in the same shuffle-buffer order."""
    from tiny_runs import fit

    root = tmp_path / "pq"
    write_parquet(root / "train.parquet", 192, row_group=30)
    write_parquet(root / "test.parquet", 64, seed=1)
    common = [o for o in COMMON if not o.startswith("data")] + [
        "data=hf", f"data.path={root}", "data.train_size=null", "data.test_size=null", "data.shuffle_buffer=48"]
    one, ddp, threads = tmp_path / "one", tmp_path / "ddp", torch.get_num_threads()
    try:
        fit(one, "data.storage=disk", base=common)
    finally:
        torch.set_num_threads(threads)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "framework.cli", "train", *common, "data.storage=stream", "data.workers=1",
                          f"hydra.run.dir={ddp}"], capture_output=True, text=True, env=_env(), cwd=tmp_path,
                         timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    # up to float summation order: AdamW's first steps turn ~1e-7 gradient differences into ~1e-5 weight
    # differences (a batch or an order out of place would move weights by the learning rate, 1e-3)
    _same_run(one, ddp, atol=5e-5)
    assert json.loads((ddp / "summary.json").read_text())["data_storage"] == "stream"


@pytest.mark.slow
def test_srun_environment_without_torchrun_matches_one_process(single, tmp_path):
    """What ``srun --ntasks=2 rtlab train …`` gives each task: SLURM's variables, no torchrun."""
    ddp, port = tmp_path / "ddp", str(_free_port())
    procs = [subprocess.Popen(_cli(*COMMON, f"hydra.run.dir={ddp}"), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                              env=_env(SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NTASKS="2",
                                       SLURM_STEP_ID="0", SLURM_JOB_ID="4242", SLURM_NODELIST="localhost",
                                       MASTER_PORT=port))
             for rank in (0, 1)]
    _wait(procs)
    _same_run(single, ddp)


@pytest.fixture(scope="module")
def method_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Every case of tests/ddp_cases.py: one process (in this one) and two processes (one torchrun launch)."""
    from tiny_runs import fit

    root = tmp_path_factory.mktemp("methods")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(ROOT / "tests" / "ddp_worker.py"), str(root / "two"), *CASES],
                         capture_output=True, text=True, env=_env(), cwd=root, timeout=900)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    threads = torch.get_num_threads()
    try:
        for name, overrides in CASES.items():
            fit(root / "one" / name, *overrides, base=BASE)
    finally:
        torch.set_num_threads(threads)
    return root / "one", root / "two"


@pytest.mark.parametrize("method", list(CASES))
def test_two_processes_equal_one_process_on_the_global_batch(method_runs, method):
    one, two = (d / method for d in method_runs)
    a, b = _rows(one, "train"), _rows(two, "train")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]  # the last batch: shards of 11 and 10
    for key in a[0]:
        if key.startswith("train/") and key != "train/lr":
            x, y = torch.tensor([r[key] for r in a]), torch.tensor([r[key] for r in b])
            assert torch.allclose(x, y, rtol=1e-5, atol=1e-6), (key, x, y)
    wa = load_file(one / "checkpoints" / "final.safetensors")
    wb = load_file(two / "checkpoints" / "final.safetensors")
    assert wa.keys() == wb.keys()
    # per-shard negatives / statistics instead of global ones move weights by 0.1-0.5 here
    worst = max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa if wa[k].is_floating_point())
    assert worst < 1e-4, worst
    assert json.loads((two / "summary.json").read_text())["world_size"] == 2


def test_slurm_variables_and_node_lists():
    from framework._nets.distributed import first_host, slurm_env

    assert first_host("gpu[07-09,12],cpu1") == "gpu07"
    assert first_host("node3,node4") == "node3" and first_host("localhost") == "localhost"
    task = {"SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4", "SLURM_STEP_ID": "0",
            "SLURM_NODELIST": "a-[001-002]", "SLURM_JOB_ID": "123"}
    assert slurm_env(task) == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "a-001",
                               "MASTER_PORT": "20123"}
    batch_script = {k: v for k, v in task.items() if k != "SLURM_STEP_ID"}
    assert slurm_env(batch_script) == {}  # the batch script of a 4-task job is one process
    assert slurm_env({**task, "WORLD_SIZE": "4"}) == {}  # torchrun inside srun sets its own
    assert slurm_env({**task, "SLURM_NTASKS": "1"}) == {}


def test_a_batch_too_small_for_every_process_is_refused():
    from types import SimpleNamespace

    from framework._run.build import _check_shards
    from framework._base.errors import RtlabError

    def check(n, batch_size, drop_last, world_size=2):
        run = SimpleNamespace(data=SimpleNamespace(train=range(n)), world_size=world_size,
                              cfg=SimpleNamespace(train=SimpleNamespace(batch_size=batch_size, drop_last=drop_last)))
        _check_shards(run)

    check(117, 32, False)  # last batch 21: shards of 11 and 10
    check(65, 64, True)  # the last image is dropped
    with pytest.raises(RtlabError, match="a batch of 1 image"):
        check(65, 64, False)
    with pytest.raises(RtlabError, match="cannot be shared by 4 processes"):
        check(64, 2, False, world_size=4)
