"""Bad input ends with exit code 2 and exactly one line on stderr that names the problem and the fix.

Most cases call ``framework.cli.main`` in this process (the same code path as the command, minus the interpreter
start); a few go through a real ``rtlab`` subprocess to show the whole command behaves the same.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import TINY, write_class_images
from framework.cli.main import main

FAST = [*TINY, "data=digits", "data.train_size=100", "data.test_size=50", "evaluator=[knn]",
        "tensorboard.enabled=false", "train.threads=1"]

# (overrides, fragments the one error line must contain)
CASES = {
    # names: close matches and the known names
    "unknown backbone": (["backbone=resnet1800"], ["unknown backbone 'resnet1800'", "did you mean resnet18",
                                                   "rtlab backbones"]),
    "unknown teacher": (["teacher=randm"], ["unknown teacher 'randm'; did you mean random?"]),
    "unknown dataset": (["data=cifar"], ["unknown data option 'cifar'; did you mean cifar10, cifar100?", "select with data=NAME"]),
    "unknown evaluator": (["evaluator=[knn,linaer]"], ["unknown evaluator 'linaer'; did you mean linear?"]),
    "unknown setting": (["train.epoch=3"], ["unknown config key 'train.epoch'; did you mean train.epochs?"]),
    "unknown eval target": (["eval.targets=[teachr]"], ["unknown eval target(s) teachr; known: teacher"]),
    # types and ranges
    "wrong type int": (["train.epochs=abc"], ["invalid value for train.epochs: Value 'abc'",
                                             "could not be converted to Integer"]),
    "wrong type bool": (["train.deterministic=maybe"], ["invalid value for train.deterministic: Value 'maybe' is "
                                                        "not a valid bool"]),
    "unparsable override": (["train.epochs=[1"], ["cannot parse overrides"]),
    "batch size 0": (["train.batch_size=0"], ["train.batch_size must be a positive batch size, got 0"]),
    "log_every 0": (["train.log_every=0"], ["train.log_every must be a positive number of steps, got 0"]),
    "eval batch 0": (["eval.batch_size=0"], ["eval.batch_size must be a positive batch size"]),
    "empty subset": (["data.train_size=0"], ["data.train_size must be null (all) or a positive number of images"]),
    "test fraction": (["data.test_fraction=1.5"], ["data.test_fraction must be a fraction between 0 and 1"]),
    "alpha out of range": (["student.alpha=2"], ["student.alpha must be in [0, 1], got 2.0"]),
    "negative lr": (["optimizer.lr=-1"], ["optimizer.lr must be positive, got -1.0"]),
    "zero temperature": (["loss.teacher_temp=0"], ["loss.teacher_temp, loss.student_temp and loss.teacher_temp_start must be positive"]),
    "unknown precision": (["train.precision=fp8"], ["train.precision must be auto, fp32, bf16, fp16 or fp64, got 'fp8'"]),
    "no cuda": (["train.device=cuda"], ["no CUDA device is available; use train.device=cpu"]),
    "unknown schedule": (["optimizer.schedule=linear"], ["optimizer.schedule must be one of constant, cosine"]),
    "unknown init": (["backbone.init=xavier"], ["unknown init 'xavier'", "known: paper, timm", "(choose with backbone.init=NAME)"]),
    "knn k": (["evaluator.knn.k=0"], ["evaluator.knn.k must be a positive integer or a list of distinct ones"]),
    "knn metric": (["evaluator.knn.metric=cos"], ["evaluator.knn.metric must be l2 or cosine"]),
    "head out_dim": (["head.out_dim=0"], ["head.out_dim must be positive"]),
    # data
    "missing image column": (["data.image_column=pixels"], ["has no column 'pixels' (columns: image, label)",
                                                            "fix data.image_column"]),
    "missing label column": (["data.label_column=y"], ["has no column 'y'", "fix data.label_column"]),
    "missing train split": (["data.train_split=validation"], ["has no split 'validation' (splits: train)",
                                                              "set data.train_split"]),
    "missing test split": (["data.test_split=valid"], ["has no split 'valid'", "set data.test_split"]),
    "channels": (["data.channels=2"], ["data.channels must be null (keep), 1 or 3, got 2"]),
    "normalisation channels": (["data.mean=[0.5,0.5,0.5]", "data.std=[0.5,0.5,0.5]"],
                               ["data.mean/data.std have 3 values for 1-channel images"]),
    "image too small": (["backbone=vit_tiny_patch16_224", "backbone.patch_size=16"],
                        ["cannot take 1x8x8 inputs", "set backbone.patch_size to a divisor of 8"]),
    "hub offline": (["data=hf", "data.path=uoft-cs/cifar10"], ["from the Hugging Face Hub while offline",
                                                              "use local data instead: data=imagefolder"]),
    "debian dataset missing": (["data=fashion_mnist", "data.path=/nonexistent/fashion-mnist"],
                               ["apt-get install dataset-fashion-mnist"]),
    "imagefolder without path": (["data=imagefolder"], ["data=imagefolder needs data.path=DIR"]),
    "imagefolder path missing": (["data=imagefolder", "data.path=/nonexistent/images"],
                                 ["data.path /nonexistent/images is not a folder"]),
}


def run_main(capsys, args):
    """``rtlab ARGS`` in this process: (exit code, the error lines, all of stderr)."""
    code = main(list(args))
    err = capsys.readouterr().err
    return code, [ln for ln in err.splitlines() if ln.startswith("rtlab: error: ")], err


def assert_one_line_error(code, lines, err, fragments, expected_code=2):
    assert code == expected_code, err[-2000:]
    assert len(lines) == 1, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_override(case, capsys, tmp_path):
    overrides, fragments = CASES[case]
    code, lines, err = run_main(capsys, ["train", *FAST, *overrides, f"hydra.run.dir={tmp_path / 'run'}"])
    assert_one_line_error(code, lines, err, fragments)
    assert not (tmp_path / "run" / "summary.json").exists()


def _saved_dataset(path, columns):
    import datasets

    datasets.Dataset.from_dict(columns).save_to_disk(str(path))
    return path


def test_dataset_without_image_column(capsys, tmp_path):
    path = _saved_dataset(tmp_path / "ds", {"height": [1.0, 2.0, 3.0] * 10, "label": [0, 1, 0] * 10})
    code, lines, err = run_main(capsys, ["train", *FAST, "data=hf", f"data.path={path}",
                                         f"hydra.run.dir={tmp_path / 'run'}"])
    assert_one_line_error(code, lines, err, ["has no image column (columns: height, label)",
                                             "set data.image_column=NAME"])


def test_probe_on_dataset_without_labels(capsys, tmp_path):
    import datasets

    images = np.random.default_rng(0).integers(0, 255, (40, 8, 8), dtype=np.uint8)
    features = datasets.Features(image=datasets.Array2D((8, 8), "uint8"))
    datasets.Dataset.from_dict({"image": images}, features=features).save_to_disk(str(tmp_path / "ds"))
    code, lines, err = run_main(capsys, ["train", *FAST, "data=hf", f"data.path={tmp_path / 'ds'}",
                                         f"hydra.run.dir={tmp_path / 'run'}"])
    assert_one_line_error(code, lines, err, ["evaluator(s) knn need labels", "has none",
                                             "set data.label_column=NAME, or train without probes: evaluator=[]"])


def test_images_of_different_sizes(capsys, tmp_path):
    write_class_images(tmp_path / "img" / "train", classes=2, per_class=3, size=16)
    write_class_images(tmp_path / "img" / "test", classes=2, per_class=2, size=16, seed=1)
    (tmp_path / "img" / "train" / "class_0" / "0.png").unlink()
    write_class_images(tmp_path / "img" / "train", classes=1, per_class=1, size=12, seed=3)  # class_0/0.png
    code, lines, err = run_main(capsys, ["train", *FAST, "data=imagefolder", f"data.path={tmp_path / 'img'}",
                                         f"hydra.run.dir={tmp_path / 'run'}"])
    assert_one_line_error(code, lines, err, ["has images of different sizes", "set data.image_size=N"])


def test_folder_of_another_run_is_not_overwritten(capsys, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"kind": "train"}\n')
    code, lines, err = run_main(capsys, ["train", *FAST, f"hydra.run.dir={run_dir}"])
    assert_one_line_error(code, lines, err, ["already holds a run", f"resume={run_dir}"])
    assert (run_dir / "metrics.jsonl").read_text() == '{"kind": "train"}\n'


def test_run_folder_in_use_by_a_live_run(capsys, tmp_path):
    from framework._base.runlock import RunLock

    run_dir = tmp_path / "run"
    with RunLock(run_dir):  # this very process holds it, as a live run would
        code, lines, err = run_main(capsys, ["train", *FAST, f"hydra.run.dir={run_dir}"])
    assert_one_line_error(code, lines, err, ["is in use by a live run", f"PID {os.getpid()}"])


# ----------------------------------------------------------------------------------------------------- resume
RESUME_CASES = {
    "resume without value": (["resume="], ["resume= needs a value"]),
    "resume missing folder": (["resume=/nonexistent/run"], ["no such run folder"]),
    "resume and multirun": (["resume=auto", "-m"], ["cannot be combined with -m/--multirun"]),
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_bad_resume_argument(case, capsys):
    args, fragments = RESUME_CASES[case]
    code, lines, err = run_main(capsys, ["train", *args])
    assert_one_line_error(code, lines, err, fragments)


def test_resume_of_a_folder_that_is_no_run(capsys, tmp_path):
    code, lines, err = run_main(capsys, ["train", f"resume={tmp_path}"])
    assert_one_line_error(code, lines, err, ["is not the folder of an rtlab run"])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny run (with its training state), made once for the resume checks below."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", *FAST, "train.max_steps=2", f"hydra.run.dir={run_dir}"]) == 0
    return run_dir


def _copy(run_dir, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(run_dir, dst)
    return dst


def test_resume_finished_run_without_changes(finished_run, capsys):
    code, lines, err = run_main(capsys, ["train", f"resume={finished_run}"])
    assert_one_line_error(code, lines, err, ["already finished", "train.epochs=N"])


def test_resume_with_another_backbone_names_the_keys(finished_run, capsys, tmp_path):
    run_dir = _copy(finished_run, tmp_path)
    code, lines, err = run_main(capsys, ["train", f"resume={run_dir}", "backbone=resnet10t"])
    assert_one_line_error(code, lines, err, ["checkpoint", "last.json is of another architecture",
                                             "shape(s) differ, e.g. encoder.", "unexpected key(s), e.g.",
                                             "use the backbone, head and data settings of the run that wrote it"])


def test_resume_when_the_configs_changed(finished_run, capsys, tmp_path):
    run_dir = _copy(finished_run, tmp_path)
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("seed: 0", "seed: 5", 1))
    code, lines, err = run_main(capsys, ["train", f"resume={run_dir}", "train.max_steps=3"])
    assert_one_line_error(code, lines, err, ["changed since the run started", "was 5, is now 0",
                                             "to resume it as it was"])


def test_resume_with_hydra_run_dir(finished_run, capsys, tmp_path):
    code, lines, err = run_main(capsys, ["train", f"resume={finished_run}", f"hydra.run.dir={tmp_path}"])
    assert_one_line_error(code, lines, err, ["drop hydra.run.dir"])
    code, lines, err = run_main(capsys, ["train", "resume=auto", f"hydra.run.dir={finished_run}"])
    assert_one_line_error(code, lines, err, [f"to continue the run in {finished_run}, write resume={finished_run} "
                                             "and drop hydra.run.dir"])


def test_resume_from_corrupted_state_names_the_file(finished_run, capsys, tmp_path):
    run_dir = _copy(finished_run, tmp_path)
    state = run_dir / "checkpoints" / "last.safetensors"
    blob = bytearray(state.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    state.write_bytes(bytes(blob))
    code, lines, err = run_main(capsys, ["train", f"resume={run_dir}", "train.max_steps=3"])
    assert_one_line_error(code, lines, err, [f"checkpoint {state} is corrupted or truncated"])


def test_resume_from_truncated_metadata_names_the_file(finished_run, capsys, tmp_path):
    run_dir = _copy(finished_run, tmp_path)
    meta = run_dir / "checkpoints" / "last.json"
    meta.write_text(meta.read_text()[:200])
    code, lines, err = run_main(capsys, ["train", f"resume={run_dir}", "train.max_steps=3"])
    assert_one_line_error(code, lines, err, [f"checkpoint metadata {meta} is corrupted"])


def test_real_command_unknown_backbone(cli):
    res = cli("train", "backbone=resnet1800")
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("rtlab: error: ")]
    assert_one_line_error(res.returncode, lines, res.stderr, ["unknown backbone 'resnet1800'"])


def test_real_command_error_during_setup(cli, tmp_path):
    res = cli("train", *FAST, "data.label_column=y", f"hydra.run.dir={tmp_path / 'run'}")
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("rtlab: error: ")]
    assert_one_line_error(res.returncode, lines, res.stderr, ["has no column 'y'", "fix data.label_column"])
    # refused while the run was being built: it never claimed the folder, so it wrote nothing there
    assert not any((tmp_path / "run" / n).exists() for n in ("summary.json", "plugins.json", "config.yaml",
                                                            "error.txt", ".lock"))
