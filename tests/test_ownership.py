"""Nothing deletes, restarts, resumes or reports as final a run folder that a live process holds.

The holders are real processes: a helper that takes a folder's run lock as a live run does (and sleeps), or a real
``rtlab compare``. Every command that removes, restarts or resumes a folder checks the lock first — compare (its
folder and each cell), an analysis (its folder and each run it restarts), a sweep job, ``resume=DIR`` and
``resume=auto`` — and refuses with the holder's PID, leaving every file as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, TINY
from framework.cli.main import main
from framework._base.errors import RtlabError

FAST = [*TINY, "data=digits", "data.train_size=100", "data.test_size=50", "evaluator=[knn]",
        "tensorboard.enabled=false", "train.threads=1"]
HOLD = ("import sys, time\nfrom framework._base.runlock import RunLock\nlock = RunLock(sys.argv[1]).acquire()\n"
        "print('held', flush=True)\ntime.sleep(600)\n")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@contextlib.contextmanager
def held(folder: Path):
    """A live process holding ``folder``'s run lock, as a training run does; yields its PID."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                            env=_env())
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _unfinished_run(folder: Path) -> Path:
    """What a run leaves while it trains: its config, Hydra's files, metrics, a training state."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / "checkpoints").mkdir()
    (folder / "config.yaml").write_text("train:\n  epochs: 5\n")
    (folder / ".hydra" / "overrides.yaml").write_text("- train.epochs=5\n")
    (folder / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 3, "epoch": 1.5}) + "\n")
    (folder / "checkpoints" / "last.json").write_text("{}")
    return folder


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished tiny run, made once (copies of it are made unfinished by removing summary.json)."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    assert main(["train", *FAST, "train.epochs=3", "train.max_steps=4", "train.batch_size=50",
                 f"hydra.run.dir={run_dir}"]) == 0
    return run_dir


# ---------------------------------------------------------------------------------------------- the primitive
def test_an_unfinished_folder_is_cleared_only_when_no_live_process_holds_it(tmp_path):
    from framework._base.runlock import clear_unfinished, live_owner

    run = _unfinished_run(tmp_path / "run")
    before = _snapshot(run)
    with held(run) as pid:
        assert live_owner(run)["pid"] == pid
        with pytest.raises(RtlabError, match=f"is in use by a live run \\(PID {pid} on "):
            clear_unfinished(run)
        assert _snapshot(run) == before
    assert live_owner(run) is None  # the holder died (SIGKILL): the kernel dropped its lock
    clear_unfinished(run)
    assert not run.exists()


# -------------------------------------------------------------------------------------------------- compare
GRID = [*(o for o in FAST if not o.startswith("backbone=")), "compare.methods=[random_teacher]", "compare.backbones=[test_resnet]", "compare.seeds=[0]"]


@pytest.mark.parametrize("holder", ["comparison", "cell", "failed cell"])
def test_compare_refuses_what_a_live_process_holds(tmp_path, holder):
    """A second compare of the same folder refuses at once with the first one's PID; a cell a live run holds is
    neither continued nor restarted (a failed one would be). Either way the cell keeps every file."""
    from plugins.commands.compare import run_comparison

    out = tmp_path / "cmp"
    cell = _unfinished_run(out / "cells" / "random_teacher" / "test_resnet" / "seed_0")
    if holder == "failed cell":
        (cell / "error.txt").write_text("step 3, epoch 0\nTraceback …")
    before = _snapshot(cell)
    refusal = {"comparison": f"comparison folder {out} is in use by another rtlab compare \\(PID {{pid}} on .*wait "
                             "for it to finish",
               "cell": f"cell {cell} is in use by a live run \\(PID {{pid}} on .*then run the comparison again"}
    refusal["failed cell"] = refusal["cell"]
    with held(out if holder == "comparison" else cell) as pid:
        with pytest.raises(RtlabError, match=refusal[holder].format(pid=pid)):
            run_comparison(GRID, str(out))
    assert _snapshot(cell) == before


@pytest.mark.slow
def test_two_real_compares_of_the_same_cells(tmp_path, cli):
    """The reported case: the same ``rtlab compare`` started twice. The second refuses with the first's PID while
    the first trains; the first's cell keeps every file."""
    out = tmp_path / "cmp"
    cell = out / "cells" / "random_teacher" / "test_resnet" / "seed_0"
    first = subprocess.Popen([sys.executable, "-m", "framework.cli", "compare", *GRID, "train.epochs=400",
                              "--out", str(out)], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (cell / "metrics.jsonl").exists():
            assert first.poll() is None, first.stdout.read()[-3000:]
            time.sleep(0.2)
        second = cli("compare", *GRID, "train.epochs=400", "--out", str(out))
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"is in use by another rtlab compare (PID {first.pid} on " in second.stderr
        assert "restarting the unfinished cell" not in second.stderr + second.stdout
        assert first.poll() is None  # the first is still training, in its own files
        assert (cell / "metrics.jsonl").exists() and (cell / ".hydra" / "overrides.yaml").exists()
        assert (cell / "config.yaml").exists()
    finally:
        first.send_signal(signal.SIGTERM)
        log, _ = first.communicate(timeout=300)
    assert "FileNotFoundError" not in log and "Traceback" not in log, log[-3000:]
    assert (cell / "checkpoints" / "last.json").exists()  # stopped by the signal with its state saved


# ------------------------------------------------------------------------------------------------- analyses
def test_an_analysis_does_not_restart_a_run_a_live_process_holds(tmp_path, pm):
    from framework._config.compose import compose
    from plugins.analysis import AnalysisContext

    ctx = AnalysisContext("barrier", compose(FAST, pm.registry), FAST, tmp_path / "analysis", pm)
    run = _unfinished_run(tmp_path / "analysis" / "pretrain" / "a")
    before = _snapshot(run)
    with held(run) as pid:
        with pytest.raises(RtlabError, match=f"run {run} of the analysis is in use by a live run \\(PID {pid} "):
            ctx.train("pretrain/a")
    assert _snapshot(run) == before


def test_a_second_analysis_of_the_same_folder_refuses(tmp_path, capsys):
    out = tmp_path / "imp"
    out.mkdir()
    with held(out) as pid:
        code = main(["analyze", "imp", *FAST, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and f"analysis folder {out} is in use by a live process (PID {pid} on " in err, err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written


# ----------------------------------------------------------------------------------------- sweeps and resume
def test_a_sweep_job_refuses_a_folder_a_live_run_holds(tmp_path, pm):
    from framework._config.compose import compose
    from framework.cli.sweeps import job_plan

    run = _unfinished_run(tmp_path / "sweep" / "0")
    with held(run) as pid:
        with pytest.raises(RtlabError, match=f"the sweep's job folder {run} is in use by a live run \\(PID {pid} "):
            job_plan(run, compose(FAST, pm.registry))
    assert job_plan(run, compose(FAST, pm.registry)) == "new"  # free again (another configuration's folder)


def test_resume_refuses_a_run_that_is_still_going(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "summary.json").unlink()
    before = _snapshot(run)
    with held(run) as pid:
        code = main(["train", f"resume={run}"])
    err = capsys.readouterr().err
    assert code == 2 and f"the run in {run} is still going (PID {pid} on " in err, err
    assert _snapshot(run) == before


def test_resume_auto_refuses_the_unfinished_run_that_is_still_going(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    job = [*FAST, "train.max_steps=2", "train.batch_size=50", "name=requeued"]
    assert main(["train", *job]) == 0
    (run,) = (tmp_path / "runs" / "requeued").iterdir()
    (run / "summary.json").unlink()
    with held(run) as pid:
        code = main(["train", *job, "resume=auto"])
    err = capsys.readouterr().err
    assert code == 2 and f"resume=auto: the unfinished run of this configuration in {run} is still going (PID " \
                          f"{pid} on " in err, err
    assert len(list((tmp_path / "runs" / "requeued").iterdir())) == 1  # no new run either


# ------------------------------------------------------------------------------------------------- reports
def test_report_of_a_live_run_refuses_or_says_in_progress(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "summary.json").unlink()
    (run / "report.md").unlink(missing_ok=True)
    with held(run) as pid:
        assert main(["report", str(run)]) == 2
        err = capsys.readouterr().err
        assert f"the run in {run} is in progress (epoch 2 of 3, PID {pid}); its report would not be final" in err
        assert "--force" in err and not (run / "report.md").exists()
        assert main(["report", str(run), "--force"]) == 0
        assert f"**In progress, epoch 2 of 3 (PID {pid}): these are not final results.**" in (
            run / "report.md").read_text()
    assert main(["report", str(run)]) == 0  # nobody holds it: stopped, and the report says how to go on
    assert f"**Unfinished: stopped in epoch 2 of 3 without a summary; continue it with 'rtlab train resume={run}'" \
           in (run / "report.md").read_text()
    assert "In progress" not in (run / "report.md").read_text()
