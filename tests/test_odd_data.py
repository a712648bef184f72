"""Odd data and odd settings end in one line that names the file, the row or the split — or just work.

String and missing labels, a column of image paths, an empty split, a truncated shard (decode and stream), a
file name that is not UTF-8, a symlink loop, a damaged or read-only stream cache, values that cannot be (NaN,
infinite sizes, a head or a batch that cannot fit in memory), and file-system errors whose fix depends on the
path (the run folder, the Hugging Face cache, rtlab's cache, a data file that cannot be read).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, TINY, write_class_images, write_parquet
from framework.cli.main import main
from framework._config.compose import compose
from framework._data.data import load_image_data
from framework._base.errors import RtlabError

FAST = [*TINY, "data=digits", "data.train_size=100", "data.test_size=50", "evaluator=[knn]",
        "tensorboard.enabled=false", "train.threads=1"]


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _labelled_parquet(path: Path, labels: list, label_type: str = "string") -> None:
    """A parquet whose label column is a plain value column (strings, numbers, None), image i of value 20*i%250."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value(label_type)})
    images = [{"bytes": _png(20 * i % 250), "path": None} for i in range(len(labels))]
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(str(path))


def _load(pm, *over):
    return load_image_data(pm.registry, compose(["data.workers=0", *over], pm.registry).data)


def _one_line(capsys, args, fragments, code=2):
    got = main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("rtlab: error: ")]
    assert got == code and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# ------------------------------------------------------------------------------------------------------- labels
@pytest.mark.parametrize("storage", ["disk", "stream"])
def test_string_labels_work_with_a_subset_and_a_hold_out(pm, tmp_path, storage):
    _labelled_parquet(tmp_path / "pq" / "train.parquet", ["cat", "dog", "bird"] * 20)
    data = _load(pm, "data=hf", f"data.path={tmp_path / 'pq'}", "data.train_size=30", "data.test_fraction=0.2",
                 "data.test_size=null", f"data.storage={storage}")
    assert data.classes == ["bird", "cat", "dog"]
    assert len(data.train) == 30 and len(data.test) == 12
    for split in (data.train, data.test):  # stratified: every class in proportion
        assert torch.bincount(split.labels.cpu(), minlength=3).tolist() == [len(split) // 3] * 3


@pytest.mark.parametrize("storage", ["disk", "stream"])
def test_a_row_without_a_label_is_named(pm, tmp_path, storage):
    _labelled_parquet(tmp_path / "pq" / "train.parquet", ["cat", "dog", None] + ["cat", "dog", "bird"] * 9)
    with pytest.raises(RtlabError, match=r"dataset 'hf' \(train split\): row 2 has no label \(None in column "
                                         r"'label'\); give every row a label, or leave those rows out"):
        _load(pm, "data=hf", f"data.path={tmp_path / 'pq'}", "data.train_size=12", f"data.storage={storage}")


def test_a_missing_number_label_and_a_test_label_the_train_split_lacks_are_named(pm, tmp_path):
    _labelled_parquet(tmp_path / "nan" / "train.parquet", [0.0, 1.0, float("nan"), 1.0] * 5, "float64")
    with pytest.raises(RtlabError, match=r"row 2 \(and 4 more rows\) has no label \(nan in column 'label'\)"):
        _load(pm, "data=hf", f"data.path={tmp_path / 'nan'}")
    _labelled_parquet(tmp_path / "new" / "train.parquet", ["cat", "dog"] * 10)
    _labelled_parquet(tmp_path / "new" / "test.parquet", ["cat", "dog", "cow"] * 2)
    with pytest.raises(RtlabError, match=r"dataset 'hf' \(test split\): row 2 has label 'cow', which no train image "
                                         r"has \(classes: cat, dog\)"):
        _load(pm, "data=hf", f"data.path={tmp_path / 'new'}")


def test_labels_of_mixed_types_are_refused():
    from framework._data.selection import class_names

    with pytest.raises(RtlabError, match=r"column 'label' of dataset 'x' mixes label types \(int, str\)"):
        class_names({"label": __import__("datasets").Value("string")}, "label", np.array([1, "a"], dtype=object),
                    "dataset 'x'")


# --------------------------------------------------------------------------------------------- parquet files
@pytest.mark.parametrize("storage", ["disk", "stream"])
def test_a_truncated_shard_is_named(capsys, tmp_path, storage):
    root = tmp_path / "pq"
    write_parquet(root / "train.parquet", 60)
    write_parquet(root / "test.parquet", 30, seed=1)
    blob = (root / "test.parquet").read_bytes()
    (root / "test.parquet").write_bytes(blob[: len(blob) // 2])
    _one_line(capsys, ["train", *FAST, "data=hf", f"data.path={root}", f"data.storage={storage}",
                       f"hydra.run.dir={tmp_path / 'run'}"],
              [f"cannot read parquet file {root / 'test.parquet'} (ArrowInvalid: ", "it is truncated or corrupted: "
               "copy or download it again, or remove it"])


@pytest.mark.parametrize("storage", ["disk", "stream"])
def test_an_empty_split_is_named(capsys, tmp_path, storage):
    import pyarrow.parquet as pq

    root = tmp_path / "pq"
    write_parquet(root / "train.parquet", 60)
    pq.write_table(pq.read_table(root / "train.parquet").slice(0, 0), root / "test.parquet")
    _one_line(capsys, ["train", *FAST, "data=hf", f"data.path={root}", f"data.storage={storage}",
                       f"hydra.run.dir={tmp_path / 'run'}"],
              [f"the test split is empty: {root / 'test.parquet'} hold(s) no rows; add images to it, or remove it "
               "(without a test split, data.test_fraction of the train split is held out)"])


@pytest.mark.parametrize("storage", ["disk", "stream"])
def test_a_column_of_image_paths_is_read_from_the_files(pm, tmp_path, storage):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_class_images(tmp_path / "files", classes=2, per_class=10, size=8)
    paths = sorted((tmp_path / "files").rglob("*.png"))
    rows = {"image": [str(p.relative_to(tmp_path)) if i % 2 else str(p) for i, p in enumerate(paths)],
            "label": [int("class_1" in str(p)) for p in paths]}
    pq.write_table(pa.table(rows), tmp_path / "paths.parquet")  # relative paths: from the parquet's folder
    data = _load(pm, "data=hf", f"data.path={tmp_path / 'paths.parquet'}", "data.train_size=null",
                 "data.test_size=null", f"data.storage={storage}")
    images = torch.cat([data.train.images[:], data.test.images[:]]).float()
    want = torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1) for p in paths]).float()
    assert images.shape == want.shape
    assert float(images.mean()) == pytest.approx(float(want.mean()))


@pytest.mark.parametrize("storage", ["disk", "stream"])
def test_image_bytes_without_the_image_feature_are_read(pm, tmp_path, storage):
    """Parquet written by other tools: an image column of encoded bytes, or of {bytes, path} records without the
    ``Image`` feature's metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = [20 * i % 250 for i in range(20)]
    for kind, column in (("binary", [_png(v) for v in values]),
                         ("struct", [{"bytes": _png(v), "path": None} for v in values])):
        pq.write_table(pa.table({"image": column, "label": [i % 2 for i in range(20)]}), tmp_path / f"{kind}.parquet")
        data = _load(pm, "data=hf", f"data.path={tmp_path / f'{kind}.parquet'}", "data.train_size=null",
                     "data.test_size=null", f"data.storage={storage}")
        got = torch.cat([data.train.images[:], data.test.images[:]])
        assert sorted(got[:, 0, 0, 0].tolist()) == sorted(values), kind


@pytest.mark.parametrize("storage", ["disk", "stream"])
def test_a_row_without_an_image_is_named(pm, tmp_path, storage):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    rows = {"image": [None if i == 3 else {"bytes": _png(i), "path": None} for i in range(20)],
            "label": [i % 2 for i in range(20)]}
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "none.parquet"))
    over = ["data=hf", f"data.path={tmp_path / 'none.parquet'}", "data.train_size=null", "data.test_size=null",
            "data.test_fraction=0.1", f"data.storage={storage}"]
    with pytest.raises(RtlabError, match=r"dataset 'hf' \(train split\): row \d+ (has no image \(an empty value in "
                                         r"column 'image'\)|cannot be decoded \(ValueError: an empty value, no image)"):
        data = _load(pm, *over)
        data.train.images[:], data.test.images[:]
    if storage == "disk":  # or left out like an unreadable file
        data = _load(pm, *over, "data.skip_bad_images=true")
        assert len(data.train) + len(data.test) == 19


# ------------------------------------------------------------------------------------------------ image folders
def test_odd_folder_entries_are_named(capsys, tmp_path):
    def folder(name):
        root = tmp_path / name
        write_class_images(root / "train", classes=2, per_class=4, size=8)
        write_class_images(root / "test", classes=2, per_class=2, size=8, seed=1)
        return root

    def train(root, fragments):
        _one_line(capsys, ["train", *FAST, "data=imagefolder", f"data.path={root}",
                           f"hydra.run.dir={tmp_path / 'runs' / root.name}"], fragments)

    bad = folder("utf8")
    name = os.fsencode(bad / "train" / "class_0") + b"/\xff\xfe.png"
    os.rename(os.fsencode(bad / "train" / "class_0" / "0.png"), name)
    train(bad, [f"the file name {name!r} is not valid UTF-8; rename it"])
    loop = folder("loop")
    (loop / "train" / "class_0" / "up").symlink_to("..")
    train(loop, [f"symlink loop under {loop}: {loop}/train/class_0/up leads back to {loop}/train, a folder it is "
                 "inside; remove that link"])
    own = folder("self")
    (own / "train" / "class_1" / "me").symlink_to("me")
    train(own, [f"the symlink {own}/train/class_1/me loops; remove it or fix its target"])
    broken = folder("broken")
    (broken / "test" / "class_0" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    train(broken, [f"the symlink {broken}/test/class_0/gone.png points to {tmp_path / 'nowhere.png'}, which is "
                   "missing; remove it or fix its target"])


# -------------------------------------------------------------------------------------------- the stream cache
def test_a_damaged_stream_statistics_file_is_computed_again(pm, tmp_path, caplog):
    write_parquet(tmp_path / "pq" / "train.parquet", 60)
    over = ["data=hf", f"data.path={tmp_path / 'pq'}", "data.storage=stream"]
    first = _load(pm, *over)
    files = sorted((Path(os.environ["RTLAB_CACHE_DIR"]) / "stream").glob("*.json"), key=os.path.getmtime)
    files[-1].write_text("")  # emptied (a full disk, a killed copy)
    with caplog.at_level("WARNING"):
        again = _load(pm, *over)
    assert again.mean == first.mean and again.std == first.std
    assert "ignoring the damaged channel statistics" in caplog.text
    assert json.loads(files[-1].read_text())["mean"] == list(first.mean)  # rewritten


# ------------------------------------------------------------------------------------------------------- values
def test_non_finite_values_and_sizes_that_cannot_fit_are_refused_before_anything_runs(capsys, tmp_path, monkeypatch):
    run = f"hydra.run.dir={tmp_path / 'run'}"
    _one_line(capsys, ["train", *FAST, "optimizer.lr=nan", run], ["optimizer.lr is nan; give a finite number"])
    _one_line(capsys, ["train", *FAST, "loss.teacher_temp=-inf", run], ["loss.teacher_temp is -inf; give a finite"])
    _one_line(capsys, ["train", *FAST, "data.image_size=100000", run],
              ["data.image_size=100000 makes a batch of 64 images", "GiB of memory available; lower data.image_size "
               "(or train.batch_size)"])
    _one_line(capsys, ["train", *FAST, "head.out_dim=10000000000", run],
              ["the DINO head (head.out_dim=10000000000) has 3.3e+11 parameters: 2 copies (teacher and student) need",
               "lower head.out_dim (or head.bottleneck_dim, head.hidden_dims)"])
    assert not (tmp_path / "run" / "checkpoints").exists()
    for value in ("inf", "-1G", "lots"):
        monkeypatch.setenv("RTLAB_MAX_DEVICE_BYTES", value)
        _one_line(capsys, ["train", *FAST, run], [f"RTLAB_MAX_DEVICE_BYTES='{value}' is not a size; give bytes or a "
                                                   "number with K/M/G/T (e.g. 8G)"])
    monkeypatch.delenv("RTLAB_MAX_DEVICE_BYTES")
    monkeypatch.setenv("RTLAB_LOG_LEVEL", "VERBOSE")
    from framework._config.limits import check_environment

    with pytest.raises(RtlabError, match="RTLAB_LOG_LEVEL='VERBOSE' is not a log level; use DEBUG, INFO, WARNING"):
        check_environment()


# -------------------------------------------------------------------------------------------------- the file system
def test_a_file_system_error_names_the_operation_and_the_fix_for_its_path(tmp_path, monkeypatch):
    import errno

    from framework.cli.runfolder import os_error_line

    run = tmp_path / "run"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("RTLAB_CACHE_DIR", str(tmp_path / "rtlab"))

    def line(path, code=errno.EACCES):
        return os_error_line(OSError(code, os.strerror(code), str(path)), run)

    assert line(run / "metrics.jsonl", errno.EROFS) == (f"cannot write {run}/metrics.jsonl (read-only file system); "
                                                         "choose a writable run folder with hydra.run.dir=DIR")
    assert line(tmp_path / "hf" / "datasets" / "x.lock") == (
        f"cannot write the Hugging Face cache {tmp_path}/hf/datasets/x.lock (permission denied); set HF_HOME (or "
        "HF_DATASETS_CACHE) to a writable folder")
    assert line(tmp_path).startswith(f"cannot write the Hugging Face cache {tmp_path} ")  # a folder above it
    assert line(tmp_path / "rtlab" / "stream") == (f"cannot write rtlab's cache {tmp_path}/rtlab/stream (permission "
                                                   "denied); set RTLAB_CACHE_DIR to a writable folder")
    data = tmp_path.parent / f"{tmp_path.name}-data"
    data.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == data else real(p, mode))
    assert line(data) == (f"cannot read {data} (permission denied); make it readable for your user (chmod), or leave "
                          "it out of data.path")


def _as_another_user() -> list[str]:
    """The command prefix that runs a process as an unprivileged user (root ignores permission bits)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv to run as an unprivileged user")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _cli_as_user(args: list[str], env: dict) -> subprocess.CompletedProcess:
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg", "RTLAB_KEEP_THREADS": "1", **env}
    return subprocess.run([*_as_another_user(), sys.executable, "-m", "framework.cli", *args], capture_output=True,
                          text=True, env=full, timeout=600, cwd="/")


@pytest.fixture
def shared_tmp():
    """A folder another user can reach (pytest's own is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="rtlab-user-"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_an_unreadable_folder_is_a_read(capsys, tmp_path, monkeypatch):
    import framework._data.datacache

    root = tmp_path / "img"
    write_class_images(root / "train", classes=2, per_class=4, size=8)
    write_class_images(root / "test", classes=2, per_class=2, size=8, seed=1)
    real = os.scandir

    def scandir(path):  # as root no permission bits stop a read; what scandir says to a user without them
        if Path(path) == root / "train" / "class_1":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(framework._data.datacache.os, "scandir", scandir)
    _one_line(capsys, ["train", *FAST, "data=imagefolder", f"data.path={root}", f"hydra.run.dir={tmp_path / 'run'}"],
              [f"cannot read the folder {root}/train/class_1 (permission denied); make it readable for your user "
               "(chmod), or move it out of data.path"])


@pytest.mark.slow
def test_permissions_as_a_user_meets_them(shared_tmp):
    """Real processes of an unprivileged user: an unreadable class folder is a read; a read-only HOME is the
    Hugging Face cache's problem; a read-only rtlab cache falls back (the stream trains, its statistics unkept)."""
    prefix = _as_another_user()
    if prefix and subprocess.run([*prefix, sys.executable, "-c", "import torch, framework"], capture_output=True,
                                 env={"PYTHONPATH": str(ROOT)}, cwd="/").returncode:
        pytest.skip("the unprivileged user cannot run this interpreter")
    home, rocache = shared_tmp / "home", shared_tmp / "rocache"
    for folder in ("runs", "hf", "home", "rocache"):
        (shared_tmp / folder).mkdir()
    images = shared_tmp / "img"
    write_class_images(images / "train", classes=2, per_class=6, size=8)
    write_class_images(images / "test", classes=2, per_class=2, size=8, seed=1)
    write_parquet(shared_tmp / "pq" / "train.parquet", 60)
    for p in [shared_tmp, *shared_tmp.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o555)
    (shared_tmp / "runs").chmod(0o777), (shared_tmp / "hf").chmod(0o777)
    (images / "train" / "class_1").chmod(0)
    run = [*FAST, "train.max_steps=2", "data.train_size=null", "data.test_size=null"]

    res = _cli_as_user(["train", *run, "data=imagefolder", f"data.path={images}",
                        f"hydra.run.dir={shared_tmp / 'runs' / 'a'}"], {"HOME": str(home), "HF_HOME": str(
                            shared_tmp / "hf"), "RTLAB_CACHE_DIR": str(shared_tmp / "hf" / "rtlab")})
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert f"cannot read the folder {images}/train/class_1 (permission denied); make it readable for your user " \
           "(chmod), or move it out of data.path" in res.stderr

    res = _cli_as_user(["train", *run, "data=hf", f"data.path={shared_tmp / 'pq'}",
                        f"hydra.run.dir={shared_tmp / 'runs' / 'b'}"], {"HOME": str(home)})
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert f"cannot write the Hugging Face cache {home}/.cache (permission denied); set HF_HOME (or " \
           "HF_DATASETS_CACHE) to a writable folder" in res.stderr

    res = _cli_as_user(["train", *run, "data=hf", f"data.path={shared_tmp / 'pq'}", "data.storage=stream",
                        f"hydra.run.dir={shared_tmp / 'runs' / 'c'}"],
                       {"HOME": str(home), "HF_HOME": str(shared_tmp / "hf"), "RTLAB_CACHE_DIR": str(rocache)})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "could not keep the channel statistics in" in res.stdout + res.stderr
    assert json.loads((shared_tmp / "runs" / "c" / "summary.json").read_text())["steps"] == 1  # 48 rows, batch 64
