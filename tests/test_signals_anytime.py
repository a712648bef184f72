"""A scheduler's signal ends ``rtlab`` with exit code 4 and one line whenever it comes — while the data is prepared,
while the run is set up, during an evaluation — and a data-parallel process whose peer is gone says so in one line;
nothing ends with a traceback (an unexplained exception is an internal error with a file to attach), and a reader
that closes the pipe early ends the command quietly. Real processes throughout: the signals are sent by the test
to an ``rtlab`` process at a moment it is known to be in the phase under test (held there by a lock it waits for,
or by a pause a small wrapper puts into the phase)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, TINY
from framework._base.errors import RtlabError

RUN = [*TINY, "data=digits", "data.train_size=128", "data.test_size=64", "evaluator=[knn]", "train.threads=1",
       "tensorboard.enabled=false", "train.batch_size=32"]
# runs the real CLI after putting a pause into one phase: argv = MARKER PHASE rtlab-args…
PAUSED = """
import sys, time
from pathlib import Path

marker, phase = Path(sys.argv[1]), sys.argv[2]

def pause(run=None):
    marker.touch()
    for _ in range(1200):  # an evaluation ends once its run saw the signal; other phases wait for it
        if run is not None and run.preemption.signal is not None:
            return
        time.sleep(0.05)

if phase == "setup":
    import framework._run.build as build
    real_check = build.check_teacher
    build.check_teacher = lambda run: (pause(), real_check(run))
elif phase == "evaluation":
    import framework._run.evaluation as evaluation
    real_evaluate = evaluation.evaluate
    def evaluate(run, epoch):
        if epoch == 1:
            pause(run)
        return real_evaluate(run, epoch)
    evaluation.evaluate = evaluate
from framework.cli.main import main
sys.exit(main(sys.argv[3:]))
"""


def _env(tmp_path: Path, **extra: str) -> dict:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")},
            "PYTHONPATH": str(ROOT), "RTLAB_CACHE_DIR": str(tmp_path / "cache"), **extra}


def _error_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("rtlab: error: ")]


def _finish(proc: subprocess.Popen, code: int = 4) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == code, out[-3000:]
    assert "Traceback" not in out and len(_error_lines(out)) == 1, out[-3000:]
    return _error_lines(out)[0]


def _wait_for(check, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not check():
        assert proc.poll() is None, f"exited before {what}: " + proc.communicate()[0][-3000:]
        assert time.time() < deadline, f"never reached {what}"
        time.sleep(0.05)


def _paused(tmp_path: Path, phase: str, *args: str) -> tuple[subprocess.Popen, Path]:
    marker = tmp_path / f"{phase}.paused"
    proc = subprocess.Popen([sys.executable, "-c", PAUSED, str(marker), phase, "train", *args], cwd=ROOT,
                            env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, marker


def test_a_signal_while_the_data_is_prepared(tmp_path, pm):
    """The run waits for the data cache's entry lock (another process is decoding this dataset) when SIGTERM
    comes: exit code 4 and the line, no error.txt, and the next start decodes and trains."""
    from framework._config.compose import compose
    from framework._data import datacache
    from framework._data.data import _decode_options

    run_dir = tmp_path / "run"
    opts = pm.registry.options("dataset", compose(RUN, pm.registry).data)
    source = pm.registry.build("dataset", opts)
    entry = tmp_path / "cache" / "data" / datacache.entry_key(source.cache_key(), _decode_options(opts, source))
    lock = entry.parent / f"{entry.name}.lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\nf = open(sys.argv[1], 'a+')\n"
                               "fcntl.flock(f, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(600)",
                               str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = subprocess.Popen([sys.executable, "-m", "framework.cli", "train", *RUN, f"hydra.run.dir={run_dir}"],
                                cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

        def waiting() -> bool:  # the run opened the lock file: it waits for it in the data preparation
            fds = Path(f"/proc/{proc.pid}/fd")
            return any(os.path.realpath(fd) == str(lock) for fd in fds.iterdir()) if fds.exists() else False

        _wait_for(waiting, proc, "the data preparation")
        proc.send_signal(signal.SIGTERM)
        line = _finish(proc)
    finally:
        holder.kill()
        holder.wait()
    assert line == (f"rtlab: error: SIGTERM stopped the run in {run_dir} before training started; nothing was "
                    "trained (the data decoded so far is kept): start the same command again")
    assert not (run_dir / "error.txt").exists()
    again = subprocess.run([sys.executable, "-m", "framework.cli", "train", *RUN, f"hydra.run.dir={run_dir}"],
                           cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]


def test_a_signal_while_the_run_is_set_up(tmp_path):
    run_dir = tmp_path / "run"
    proc, marker = _paused(tmp_path, "setup", *RUN, f"hydra.run.dir={run_dir}")
    _wait_for(marker.exists, proc, "the setup")
    proc.send_signal(signal.SIGUSR1)
    line = _finish(proc)
    assert line == (f"rtlab: error: SIGUSR1 stopped the run in {run_dir} before training started; nothing was "
                    "trained (the data decoded so far is kept): start the same command again")


def test_a_signal_during_an_evaluation_stops_the_run_after_it_with_the_state_saved(tmp_path):
    run_dir = tmp_path / "run"
    args = [*RUN, "train.epochs=2", "eval.every=1", "train.state_every=0", "train.log_every=1"]
    proc, marker = _paused(tmp_path, "evaluation", *args, f"hydra.run.dir={run_dir}")
    _wait_for(marker.exists, proc, "the evaluation after epoch 1")
    proc.send_signal(signal.SIGTERM)
    line = _finish(proc)
    assert line == (f"rtlab: error: SIGTERM stopped the run at step 4; its training state is in "
                    f"{run_dir}/checkpoints/last; continue it with 'rtlab train resume={run_dir}'")
    evals = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in evals if r["kind"] == "eval"] == [0, 1]  # the evaluation finished, then the stop
    resumed = subprocess.run([sys.executable, "-m", "framework.cli", "train", f"resume={run_dir}"], cwd=ROOT,
                             env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["interrupted"] == [{"step": 4, "signal": "SIGTERM"}]
    evals = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in evals if r["kind"] == "eval"] == [0, 1, 2]  # none repeated or lost


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_lost_peer_is_one_line_with_the_state_and_the_resume_command(tmp_path):
    """Two data-parallel processes (srun's variables, no torchrun); rank 1 is killed mid-training. Rank 0 stops at
    once with one line: its rank, the step of the last state, the resume command."""
    run_dir, port = tmp_path / "run", str(_free_port())
    args = [*RUN, "data.train_size=640", "train.epochs=3", "train.state_steps=2", "train.log_every=1",
            "train.precision=fp32", f"hydra.run.dir={run_dir}"]
    procs = [subprocess.Popen([sys.executable, "-m", "framework.cli", "train", *args], cwd=tmp_path,
                              env=_env(tmp_path, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NTASKS="2",
                                       SLURM_STEP_ID="0", SLURM_JOB_ID="4243", SLURM_NODELIST="localhost",
                                       MASTER_PORT=port, OMP_NUM_THREADS="1"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    try:
        def trained() -> bool:
            state = run_dir / "checkpoints" / "last.json"
            return state.exists() and json.loads(state.read_text())["meta"]["step"] >= 4

        _wait_for(trained, procs[0], "training")
        procs[1].kill()
        line = _finish(procs[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    step = json.loads((run_dir / "checkpoints" / "last.json").read_text())["meta"]["step"]
    assert line.startswith("rtlab: error: rank 0 of 2 lost the other processes of this job (")
    assert line.endswith(f"one of them stopped or its node was lost; the last training state (step {step}) is in "
                         f"{run_dir}/checkpoints/last: continue with the same launch command and 'rtlab train "
                         f"resume={run_dir}'")


# ------------------------------------------------------------------------------------------------ the boundary
def test_an_unexplained_exception_is_one_line_with_a_file_to_attach(tmp_path, capsys, monkeypatch):
    import framework._run.build as build
    from framework.cli.main import main

    def broken(run):
        raise ValueError("an unexpected state")

    monkeypatch.setattr(build, "check_teacher", broken)
    code = main(["train", *RUN, f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert lines[0].startswith("rtlab: error: internal error: ValueError: an unexpected state; this is a bug in rtlab "
                               "or a plugin, not in your input: please report it with ")
    report = Path(lines[0].split("please report it with ")[1].split(" attached")[0])
    assert "ValueError: an unexpected state" in report.read_text() and "check_teacher" in report.read_text()


def test_an_unknown_log_level_is_one_line(capsys, monkeypatch):
    from framework.cli.main import main

    monkeypatch.setenv("RTLAB_LOG_LEVEL", "VERBOSE")
    assert main(["plugins"]) == 2
    assert capsys.readouterr().err.strip() == ("rtlab: error: RTLAB_LOG_LEVEL='VERBOSE' is not a log level; use "
                                               "DEBUG, INFO, WARNING or ERROR")
    with pytest.raises(RtlabError):
        from framework._config.limits import check_environment

        check_environment()


@pytest.mark.parametrize("command", ["plugins", "backbones res"])
def test_a_reader_that_closes_the_pipe_early_ends_the_command_quietly(tmp_path, command):
    res = subprocess.run(["bash", "-c", f"{sys.executable} -m framework.cli {command} | head -2; "
                                        "echo \"status ${PIPESTATUS[0]}\" >&2"],
                         cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert len(res.stdout.splitlines()) == 2
    assert res.stderr.strip().splitlines()[-1] == "status 0", res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr and "Exception" not in res.stderr
