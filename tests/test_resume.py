"""Exact resume: a run killed with SIGKILL at random steps and resumed ends exactly like an uninterrupted one."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from conftest import ROOT, TINY
from tiny_runs import Preempted

# 20 steps per epoch x 3 epochs, an evaluation after every epoch, the training state every 3 steps (a kill
# between two states replays the steps since the last one)
KILL_RUN = [*TINY, "data=digits", "data.train_size=320", "data.test_size=100", "train.batch_size=16",
            "train.epochs=3", "eval.every=1", "evaluator.linear.epochs=2", "train.log_every=1",
            "train.state_steps=3", "train.threads=1", "train.deterministic=true"]
TOTAL_STEPS = 60


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "framework.cli", "train", *args], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _train_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written
            pass
    return out


def _kill_at(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 300) -> str:
    """SIGKILL ``proc`` as soon as it has logged optimiser step ``step``; returns its output."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if any(r.get("kind") == "train" and r["step"] >= step for r in _train_records(run_dir)):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed at step {step}:\n{out[-3000:]}"
    return out


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar of a run folder as TensorBoard shows it: (step, value) per tag."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _comparable(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time"} for r in _train_records(run_dir)]


def test_sigkill_twice_then_resume_equals_uninterrupted_run(tmp_path):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    first = rng.randrange(4, TOTAL_STEPS // 2)
    second = rng.randrange(first + 2, TOTAL_STEPS - 4)
    why = f"(kills at steps {first} and {second}; random seed {seed})"
    ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "killed"

    ref = _start([*KILL_RUN, f"hydra.run.dir={ref_dir}"])
    out, _ = ref.communicate(timeout=600)
    assert ref.returncode == 0, out[-3000:]

    _kill_at(_start([*KILL_RUN, f"hydra.run.dir={run_dir}"]), run_dir, first)
    assert (run_dir / "checkpoints" / "last.json").exists(), why
    _kill_at(_start([f"resume={run_dir}"]), run_dir, second)
    final = _start([f"resume={run_dir}"])
    out, _ = final.communicate(timeout=600)
    assert final.returncode == 0, out[-3000:]
    assert "resumed" in out and f"rtlab: resuming {run_dir}" in out, out[-2000:]

    want = json.loads((ref_dir / "summary.json").read_text())
    got = json.loads((run_dir / "summary.json").read_text())
    assert got["metrics"] == want["metrics"], why
    assert got["best"] == want["best"], why
    for key in ("steps", "epochs", "student_distance_from_init", "teacher_student_distance",
                "teacher_student_distance_init"):
        assert got[key] == want[key], (key, why)
    # every logged training step and evaluation, in order, with the same values (and no duplicates)
    assert _comparable(run_dir) == _comparable(ref_dir), why
    # TensorBoard shows each point once, with the uninterrupted run's values (the interrupted attempts' events after
    # the saved state are purged)
    assert _scalars(run_dir) == _scalars(ref_dir), why
    # and bit-identical final weights
    from framework._nets.checkpoint import load_checkpoint

    a, _ = load_checkpoint(ref_dir / "checkpoints" / "final")
    b, _ = load_checkpoint(run_dir / "checkpoints" / "final")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), why


def test_resume_auto_continues_the_unfinished_run_of_the_same_config(tmp_path, monkeypatch, capsys):
    from framework.cli.main import main
    from framework._contract.plugin_manager import create_plugin_manager, get_plugin_manager, set_plugin_manager

    monkeypatch.chdir(tmp_path)  # runs/<name>/<timestamp> goes here
    job = [*TINY, "data=digits", "data.train_size=100", "data.test_size=50", "evaluator=[knn]", "train.threads=1",
           "tensorboard.enabled=false", "train.batch_size=25", "train.epochs=2", "train.log_every=1",
           "train.state_steps=2", "name=requeued"]
    before = get_plugin_manager()
    pm = create_plugin_manager(autoload=False)
    pm.register(Preempted(5), name="preempted")
    set_plugin_manager(pm)
    try:
        assert main(["train", *job, "resume=auto"]) == 130  # first start: a new run, pre-empted at step 5
    finally:
        set_plugin_manager(before)
    assert "found no unfinished run of this configuration; starting a new one" in capsys.readouterr().err
    (first,) = (tmp_path / "runs" / "requeued").iterdir()
    assert not (first / "summary.json").exists()

    assert main(["train", *job, "resume=auto"]) == 0  # the requeued job continues it
    assert f"rtlab: resuming {first}" in capsys.readouterr().err
    assert json.loads((first / "summary.json").read_text())["steps"] == 8
    assert [d.name for d in (tmp_path / "runs" / "requeued").iterdir()] == [first.name]

    time.sleep(1.1)  # run folders are named by the second
    assert main(["train", *job, "teacher.seed=5", "resume=auto"]) == 0  # another config: a run of its own
    assert len(list((tmp_path / "runs" / "requeued").iterdir())) == 2


def test_dino_machinery_resumes_exactly(tmp_path):
    """EMA teacher, centering, teacher-temperature warm-up, multi-crop and the schedules continue bit-exactly from
    a training state saved mid-epoch (in-process: pre-empted after step 5, then resumed)."""
    from tiny_runs import compose_run, preempted_then_resumed

    dino = ["updater=ema", "updater.momentum=0.9", "augment=dino", "augment.local_views=2", "augment.local_size=4",
            "objective.pairing=opposite", "objective.center_momentum=0.9", "loss.teacher_temp_start=0.04",
            "loss.teacher_temp_warmup_epochs=1", "loss.student_temp=0.1", "optimizer.schedule=cosine",
            "optimizer.warmup_epochs=0.5", "optimizer.final_weight_decay=0.1", "optimizer.weight_decay=0.01",
            "optimizer.clip_grad=3", "train.epochs=2", "train.state_steps=1", "train.log_every=1", "evaluator=[]", "train.seed=5"]
    ref = compose_run(tmp_path / "ref", *dino)
    ref.fit()
    ref.release()

    # killed after step 5, mid-epoch 2 (4 steps per epoch)
    resumed = preempted_then_resumed(tmp_path / "run", 5, *dino)
    assert resumed.step == 4  # the state saved before the interrupted step's hooks ran
    assert resumed.objective.centering.center is not None and resumed.objective.centering.center.abs().sum() > 0
    resumed.fit()
    resumed.release()
    assert resumed.step == ref.step
    for (name, a), b in zip(ref.student.state_dict().items(), resumed.student.state_dict().values()):
        assert torch.equal(a, b), name
    for (name, a), b in zip(ref.teacher.state_dict().items(), resumed.teacher.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(ref.objective.centering.center, resumed.objective.centering.center)
