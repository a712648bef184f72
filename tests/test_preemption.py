"""Pre-emption: a signal stops a run after the current step with its training state saved; resuming it gives the
uninterrupted run's metrics and weights exactly."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from framework import hookimpl
from framework._nets.checkpoint import load_checkpoint
from framework._base.errors import RunInterrupted
from conftest import TINY
from test_resume import _start, _train_records
from tiny_runs import compose_run, fit

# 2 epochs of 8 steps, every step logged, probes after training, no periodic state (the signal writes it)
RUN = ["data.train_size=256", "train.batch_size=32", "train.epochs=2", "train.log_every=1", "train.state_every=0",
       "train.deterministic=true", "checkpoint.final=true", "evaluator=[knn]"]


class SignalAt:
    """Sends the process ``signals`` when optimiser step ``step`` has been logged (as a scheduler would)."""

    def __init__(self, step: int, *signals: int) -> None:
        self.step, self.signals = step, signals

    @hookimpl
    def rtlab_step_end(self, run, metrics):
        if run.step == self.step:
            for sig in self.signals:
                os.kill(os.getpid(), sig)


def _interrupted(out: Path, step: int, *signals: int):
    run = compose_run(out, *RUN)
    run.pm.register(SignalAt(step, *signals), name="signal_at")
    try:
        with pytest.raises(RunInterrupted) as info:
            run.fit()
    finally:
        run.pm.unregister(name="signal_at")
        run.preemption.uninstall()
        run.release()
    return info.value


def _records(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "time"}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sigterm_mid_epoch_saves_the_step_and_resume_equals_the_uninterrupted_run(tmp_path):
    want = fit(tmp_path / "ref", *RUN)
    err = _interrupted(tmp_path / "run", 5, signal.SIGTERM)  # step 5 of 8: mid-epoch
    out = tmp_path / "run"
    assert "SIGTERM stopped the run at step 5" in str(err) and f"resume={out}" in str(err)
    assert err.exit_code == 4
    _, meta = load_checkpoint(out / "checkpoints" / "last")
    assert (meta["step"], meta["position"]) == (5, 5)
    assert not (out / "summary.json").exists() and not (out / "error.txt").exists()  # unfinished, nothing failed
    assert [r["step"] for r in _records(out) if r["kind"] == "train"] == [1, 2, 3, 4, 5]  # nothing after the step

    got = compose_run(out, *RUN, resume=True).fit()
    assert got["interrupted"] == [{"step": 5, "signal": "SIGTERM"}]
    for key in ("metrics", "best", "steps", "epochs", "student_distance_from_init", "teacher_student_distance"):
        assert got[key] == want[key], key
    assert _records(out) == _records(tmp_path / "ref")  # every logged step and evaluation, in order
    a, _ = load_checkpoint(tmp_path / "ref" / "checkpoints" / "final")
    b, _ = load_checkpoint(out / "checkpoints" / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_handler_before_the_run_is_called_after_the_state_is_written(tmp_path):
    """submitit's requeue is the Python handler installed before the run: it runs once the state is on disk."""
    seen = []

    def requeue(signum, frame):
        _, meta = load_checkpoint(tmp_path / "run" / "checkpoints" / "last")
        seen.append((signum, meta["step"]))

    before = signal.signal(signal.SIGUSR1, requeue)
    try:
        _interrupted(tmp_path / "run", 3, signal.SIGUSR1)
        assert seen == [(signal.SIGUSR1, 3)]
        assert signal.getsignal(signal.SIGUSR1) is requeue  # put back after the run
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under `nohup ... &`
    run = compose_run(tmp_path / "run", *RUN)
    run.pm.register(SignalAt(2, signal.SIGINT, signal.SIGINT), name="signal_at")
    try:
        with pytest.raises(KeyboardInterrupt):
            run.fit()
    finally:
        run.pm.unregister(name="signal_at")
        run.preemption.uninstall()
        run.release()
    assert signal.getsignal(signal.SIGINT) is before  # the handler from before the run is back


@pytest.mark.slow
def test_rtlab_train_exits_4_on_sigterm_within_one_step_and_resumes(tmp_path):
    """The CLI: exit code 4 and one line; nothing trained after the step in flight; ``resume=`` finishes the run
    (that the resumed run equals the uninterrupted one is the in-process test above)."""
    run_dir = tmp_path / "run"
    cli_run = [*TINY, "data=digits", "data.train_size=320", "data.test_size=64", "train.batch_size=16",
               "train.epochs=2", "evaluator=[knn]", "train.log_every=1", "train.threads=1", "train.state_every=0"]
    proc = _start([*cli_run, f"hydra.run.dir={run_dir}"])
    deadline, sent = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:
        steps = [r["step"] for r in _train_records(run_dir) if r.get("kind") == "train"]
        if steps and steps[-1] >= 5:  # epoch 1 of 20 steps
            proc.send_signal(signal.SIGTERM)
            sent = steps[-1]
            break
        time.sleep(0.002)
    out, _ = proc.communicate(timeout=120)
    assert sent is not None and proc.returncode == 4, out[-3000:]
    assert "rtlab: error: SIGTERM stopped the run at step" in out and "Traceback" not in out, out[-3000:]
    _, meta = load_checkpoint(run_dir / "checkpoints" / "last")
    logged = [r["step"] for r in _train_records(run_dir) if r.get("kind") == "train"]
    assert logged[-1] == meta["step"] and sent <= meta["step"] <= sent + 2  # the step in flight, then the state
    assert not (run_dir / "summary.json").exists()
    final = _start([f"resume={run_dir}"])
    out, _ = final.communicate(timeout=600)
    assert final.returncode == 0, out[-3000:]
    assert [r["step"] for r in _train_records(run_dir) if r.get("kind") == "train"] == list(range(1, 41))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 40 and summary["interrupted"] == [{"step": meta["step"], "signal": "SIGTERM"}]
