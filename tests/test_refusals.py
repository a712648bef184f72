"""Nothing lost, nothing cryptic: a refused command leaves a finished run byte for byte as it was, and every bad
input or broken environment (a corrupt image, a read-only folder, a full disk, …) ends with one line that names
the problem and the fix, with the documented exit code."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from conftest import TINY, write_class_images
from framework.cli.main import main

FAST = [*TINY, "data=digits", "data.train_size=100", "data.test_size=50", "evaluator=[knn]",
        "tensorboard.enabled=false", "train.threads=1"]


def run_main(capsys, args):
    """``rtlab ARGS`` in this process: (exit code, the error lines, all of stderr)."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, [ln for ln in err.splitlines() if ln.startswith("rtlab: error: ")], err


def assert_one_line(code, lines, err, fragments, expected_code=2):
    assert code == expected_code, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    shown = [ln for ln in err.split("\n") if ln.strip() and "\r" not in ln]  # progress bars redraw with \r
    assert len(shown) <= 4, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def digest(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (hidden ones included) → the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------- a finished run stays untouched
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (with its training state and final checkpoint) and the digest of its folder."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", *FAST, "train.max_steps=2", f"hydra.run.dir={run_dir}"]) == 0
    (run_dir / ".lock").unlink()  # as in a copy without hidden files: a refusal must not even leave a lock file
    files = digest(run_dir)
    assert {".hydra/overrides.yaml", ".hydra/config.yaml", ".hydra/hydra.yaml", "config.yaml", "summary.json",
            "checkpoints/last.json", "cli.log"} <= set(files)
    return run_dir, files


REFUSALS = {
    # (arguments, with RUN for the finished run folder; fragments of the one error line)
    "resume with another backbone": (["train", "resume=RUN", "backbone=resnet10t"],
                                     ["last.json is of another architecture", "use the backbone, head and data "
                                      "settings of the run that wrote it"]),
    "resume with another head": (["train", "resume=RUN", "head.out_dim=64"],
                                 ["last.json is of another architecture", "(128, 32) in the checkpoint vs (64, 32) here"]),
    "resume without changes": (["train", "resume=RUN"], ["already finished", "train.epochs=N"]),
    "new run into it": (["train", *FAST, "hydra.run.dir=RUN", "train.seed=7"],
                        ["already holds a run (summary.json, metrics.jsonl, checkpoints)", "resume=", "hydra.run.dir="]),
    "report with a mistyped target": (["report", "RUN", "--target", "teachr"],
                                      ["unknown target 'teachr'; did you mean teacher", "known: input, student",
                                       "(choose with --target NAME)"]),
    "analysis into it": (["analyze", "imp", "--out", "RUN"], ["holds a training run, not an analysis", "--out DIR"]),
    "analysis with a bad option": (["analyze", "imp", "analysis.levles=2", "--out", "RUN"],
                                   ["unknown config key 'analysis.levles'"]),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_refused_command_leaves_the_finished_run_byte_for_byte(case, finished, capsys):
    run_dir, before = finished
    args, fragments = REFUSALS[case]
    args = [a.replace("RUN", str(run_dir)) if "RUN" in a else a for a in args]
    code, lines, err = run_main(capsys, args)
    assert_one_line(code, lines, err, fragments)
    assert digest(run_dir) == before


def test_an_allowed_resume_rewrites_the_config_and_the_overrides(finished, capsys, tmp_path):
    """The other side of the rule: once the run owns the folder, Hydra's files name what it now runs."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(finished[0], run_dir)
    assert main(["train", f"resume={run_dir}", "train.epochs=2", "train.max_steps=3"]) == 0
    overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "train.max_steps=3" in overrides and "train.max_steps=2" not in overrides
    assert "max_steps: 3" in (run_dir / "config.yaml").read_text()
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 3
    hydra_yaml = (run_dir / ".hydra" / "hydra.yaml").read_text()
    assert "output_subdir: .hydra" in hydra_yaml and "hydra.output_subdir=null" not in hydra_yaml
    assert "resumed" in (run_dir / "cli.log").read_text() or (run_dir / "cli.log").stat().st_size > 0


# --------------------------------------------------------------------------------------------- corrupt images
def _imagefolder_with_a_truncated_jpeg(root: Path) -> Path:
    write_class_images(root / "train", classes=2, per_class=6, size=16, suffix=".jpg")
    write_class_images(root / "test", classes=2, per_class=3, size=16, suffix=".jpg", seed=1)
    bad = root / "train" / "class_1" / "2.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    return bad


def test_a_truncated_image_is_named(capsys, tmp_path):
    bad = _imagefolder_with_a_truncated_jpeg(tmp_path / "img")
    code, lines, err = run_main(capsys, ["train", *FAST, "data=imagefolder", f"data.path={tmp_path / 'img'}",
                                         f"hydra.run.dir={tmp_path / 'run'}"])
    assert_one_line(code, lines, err, [f"cannot decode image {bad}", "replace or delete that file",
                                       "data.skip_bad_images=true"])


def test_skip_bad_images_leaves_them_out_and_lists_them(tmp_path):
    bad = _imagefolder_with_a_truncated_jpeg(tmp_path / "img")
    run_dir = tmp_path / "run"
    assert main(["train", *FAST, "data=imagefolder", f"data.path={tmp_path / 'img'}", "data.skip_bad_images=true",
                 "train.batch_size=4", f"hydra.run.dir={run_dir}"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["skipped_images"] == {"count": 1, "files": [str(bad)]}
    assert summary["train_images"] == 11 and summary["test_images"] == 6
    assert summary["steps"] == 3  # 11 images in batches of 4
    again = tmp_path / "again"  # from the data cache this time: the list comes with the decoded tensors
    assert main(["train", *FAST, "data=imagefolder", f"data.path={tmp_path / 'img'}", "data.skip_bad_images=true",
                 "train.batch_size=4", "train.max_steps=1", f"hydra.run.dir={again}"]) == 0
    assert json.loads((again / "summary.json").read_text())["skipped_images"] == summary["skipped_images"]


# ------------------------------------------------------------------------------------------ the file system
def test_a_read_only_run_folder_is_refused_before_anything_runs(capsys, tmp_path, monkeypatch):
    import framework.cli.runfolder

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # as root no permission bits stop a write; emulate a read-only mount by what access(2) would say there
    monkeypatch.setattr(framework.cli.runfolder.os, "access",
                        lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    code, lines, err = run_main(capsys, ["train", *FAST, f"hydra.run.dir={locked / 'run'}"])
    assert_one_line(code, lines, err, [f"cannot write the run folder {locked / 'run'}: {locked} is read-only",
                                       "hydra.run.dir=DIR"])
    assert not (locked / "run").exists()


def test_a_read_only_file_during_the_run_is_one_line(capsys, tmp_path, monkeypatch):
    import framework._run.folder

    def read_only(path, text, sync_dir=True):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(framework._run.folder, "atomic_write_text", read_only)
    run_dir = tmp_path / "run"
    code, lines, err = run_main(capsys, ["train", *FAST, f"hydra.run.dir={run_dir}"])
    assert_one_line(code, lines, err, [f"cannot write {run_dir}/config.yaml (read-only file system)",
                                       "hydra.run.dir=DIR"])


def test_a_full_disk_keeps_the_last_good_state_and_the_run_resumes(capsys, tmp_path, monkeypatch):
    """The disk fills up while the third training state is written: half a file, then ENOSPC. The state of step 2
    stays intact (no half file, no leftover), the error is one line, and once there is space the run resumes."""
    import framework._nets.checkpoint

    run_dir = tmp_path / "run"
    state = run_dir / "checkpoints"
    real_fdopen = os.fdopen
    calls = {"n": 0, "before": None}

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[:len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        if ".last.pending.safetensors." in os.readlink(f"/proc/self/fd/{fd}"):
            calls["n"] += 1
            if calls["n"] == 3:
                calls["before"] = {k: v for k, v in digest(state).items() if not k.startswith(".")}
                return FullDisk(f)
        return f

    monkeypatch.setattr(framework._nets.checkpoint.os, "fdopen", fdopen)
    args = ["train", *FAST, "train.batch_size=16", "train.max_steps=4", "train.state_steps=1",
            f"hydra.run.dir={run_dir}"]
    code, lines, err = run_main(capsys, args)
    monkeypatch.undo()
    assert_one_line(code, lines, err, [f"no space left on device while saving the training state {state}/last at "
                                       "step 3", "the last good state checkpoints/last (step 2) is kept",
                                       f"free some space, then continue with 'rtlab train resume={run_dir}'"])
    assert digest(state) == calls["before"]  # the step-2 state, and nothing half-written beside it
    assert sorted(p.name for p in state.iterdir()) == ["last.json", "last.safetensors"]
    assert json.loads((state / "last.json").read_text())["meta"]["step"] == 2
    assert main(["train", f"resume={run_dir}"]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 4


# ------------------------------------------------------------------------------------------ misleading inputs
def test_a_one_class_imagefolder_says_probes_need_two_classes(capsys, tmp_path):
    write_class_images(tmp_path / "img" / "train", classes=1, per_class=6, size=16)
    write_class_images(tmp_path / "img" / "test", classes=1, per_class=3, size=16, seed=1)
    code, lines, err = run_main(capsys, ["train", *FAST, "data=imagefolder", f"data.path={tmp_path / 'img'}",
                                         f"hydra.run.dir={tmp_path / 'run'}"])
    assert_one_line(code, lines, err, ["evaluator(s) knn need at least 2 classes", "has 1 (class_0)",
                                       "add images of another class", "evaluator=[]"])
    assert "has none" not in lines[0]


class _RunsCode:
    """Unpickling this would create a file: the proof that nothing was unpickled is that the file is absent."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_torch_state_dict_as_teacher_path_is_loaded_safely(finished, capsys, tmp_path):
    from framework._nets.checkpoint import load_checkpoint, strip_prefix

    run_dir, _ = finished
    teacher = strip_prefix(load_checkpoint(run_dir / "checkpoints" / "final")[0], "teacher.")
    teacher = {k: v + 0.5 if v.is_floating_point() else v for k, v in teacher.items()}  # no seed's random init
    pt = tmp_path / "teacher.pt"
    torch.save({"state_dict": teacher, "epoch": 3}, pt)  # how training scripts save (timm, Lightning)
    out = tmp_path / "run"
    assert main(["train", *FAST, "teacher=checkpoint", f"teacher.path={pt}", "train.max_steps=1",
                 f"hydra.run.dir={out}"]) == 0
    used = strip_prefix(load_checkpoint(out / "checkpoints" / "final")[0], "teacher.")
    assert set(used) == set(teacher)
    assert all(torch.equal(used[k], teacher[k]) for k in teacher)

    marker = tmp_path / "unpickled"
    evil = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": _RunsCode(marker)}, evil)
    code, lines, err = run_main(capsys, ["train", *FAST, "teacher=checkpoint", f"teacher.path={evil}",
                                         f"hydra.run.dir={tmp_path / 'run2'}"])
    assert_one_line(code, lines, err, [f"{evil} holds pickled Python objects", "rtlab never unpickles them",
                                       "torch.save(model.state_dict(), ...)"])
    assert not marker.exists()


def test_a_vit_on_a_single_patch_warns(tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", *FAST, "backbone=test_vit", "backbone.patch_size=8", "train.max_steps=1",
                 f"hydra.run.dir={run_dir}"]) == 0
    warnings = json.loads((run_dir / "summary.json").read_text())["warnings"]
    assert any("sees each 8x8 image as a single patch (a 1x1 patch grid: one token" in w
               and "set backbone.patch_size to a smaller divisor of 8" in w for w in warnings), warnings
    assert any("single patch" in line for line in (run_dir / "cli.log").read_text().splitlines())


# ---------------------------------------------------------------------------------------------------- the docs
# fragments of the messages above as the tests see them printed; docs/troubleshooting.md must quote each
DOCUMENTED = [
    "already holds a run (", "holds a training run, not an analysis; give the analysis its own folder with --out DIR",
    "(choose with --target NAME)", "; did you mean teacher, teacher_bn? known: input, student, teacher, teacher_bn.",
    "replace or delete that file, or leave unreadable images out with data.skip_bad_images=true",
    "need at least 2 classes, but the train split of dataset '", "add images of another class (another class folder), "
    "or train without probes: evaluator=[]", "is read-only; choose a writable folder with hydra.run.dir=DIR",
    "(read-only file system); choose a writable run folder with hydra.run.dir=DIR",
    "no space left on device while saving the training state ", "is kept: free some space, then continue with "
    "'rtlab train resume=", "holds pickled Python objects", "image as a single patch (a 1x1 patch grid: one token, "
    "nothing to attend to); set backbone.patch_size to a smaller divisor of",
]


def test_the_new_messages_are_in_the_troubleshooting_page():
    page = " ".join((Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md").read_text().split())
    missing = [m for m in DOCUMENTED if m not in page]
    assert not missing, missing


def test_a_refused_run_removes_only_a_lock_file_it_created(tmp_path):
    from framework._base.runlock import RunLock

    fresh = RunLock(tmp_path / "fresh").acquire()
    fresh.release(discard=True)
    assert not (tmp_path / "fresh" / ".lock").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / ".lock").write_text("")
    old = RunLock(tmp_path / "old").acquire()
    old.release(discard=True)
    assert (tmp_path / "old" / ".lock").read_text() == ""
    again = RunLock(tmp_path / "fresh").acquire()  # a lock file removed under a waiting opener is made anew
    assert (tmp_path / "fresh" / ".lock").exists()
    again.release()
