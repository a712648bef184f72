"""CIFAR-10 through the normal front door, from a local copy: ``data=cifar10 data.path=DIR``, ``data=hf``, one
parquet file, ``RTLAB_CIFAR10=DIR``, and a training run on it.

The data is a few hundred rows sliced (with pyarrow) from the shared parquet copy of CIFAR-10 that CI keeps beside
the checkout (``shared/data/cifar10/{train,test}.parquet`` in the checkout or a folder above it); without it these
tests are skipped.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from framework._config.compose import compose
from framework._data.data import load_image_data
from framework._base.errors import RtlabError
from tiny_runs import compose_run

from conftest import ROOT

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def shared_cifar10():
    """The shared CIFAR-10 folder in the checkout or the nearest folder above it that has one, else None."""
    for folder in (ROOT, *ROOT.parents):
        candidate = folder / "shared" / "data" / "cifar10"
        if (candidate / "train.parquet").is_file() and (candidate / "test.parquet").is_file():
            return candidate
    return None


SHARED = shared_cifar10()
needs_cifar = pytest.mark.skipif(SHARED is None, reason="no shared/data/cifar10 beside the checkout")

SIZES = {"train": 300, "test": 200}


@pytest.fixture(scope="module")
def cifar_slice(tmp_path_factory):
    """The first 300 train and 200 test rows of the shared parquet files (their HF features kept), as a folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path_factory.mktemp("cifar10")
    for split, n in SIZES.items():
        source = pq.ParquetFile(SHARED / f"{split}.parquet")
        batch = next(source.iter_batches(batch_size=n))
        pq.write_table(pa.Table.from_batches([batch], schema=source.schema_arrow), out / f"{split}.parquet")
    return out


def rows(folder, split):
    import pyarrow.parquet as pq

    return pq.read_table(folder / f"{split}.parquet").to_pydict()


def load(pm, *overrides):
    cfg = compose(list(overrides), pm.registry)
    return load_image_data(pm.registry, cfg.data)


@needs_cifar
def test_cifar10_preset_loads_a_local_folder(pm, cifar_slice):
    from PIL import Image

    data = load(pm, "data=cifar10", f"data.path={cifar_slice}")
    assert data.train.images.shape == (300, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.test.images.shape == (200, 3, 32, 32)
    assert data.classes == CIFAR_CLASSES
    assert data.mean == (0.4914, 0.4822, 0.4465)  # the preset's statistics, not re-estimated
    for split in ("train", "test"):
        table = rows(cifar_slice, split)
        got = getattr(data, split)
        assert got.labels.tolist() == table["label"]
        for i in (0, SIZES[split] - 1):  # the pixels are the JPEG's, decoded once
            want = np.asarray(Image.open(io.BytesIO(table["image"][i]["bytes"]))
                              .convert("RGB")).transpose(2, 0, 1)
            assert torch.equal(got.images[i], torch.from_numpy(np.ascontiguousarray(want)))


@needs_cifar
def test_hf_source_reads_the_folder_and_one_parquet_file(pm, cifar_slice):
    folder = load(pm, "data=cifar10", f"data.path={cifar_slice}")
    hf = load(pm, "data=hf", f"data.path={cifar_slice}")
    assert torch.equal(hf.train.images, folder.train.images) and torch.equal(hf.test.labels, folder.test.labels)
    assert hf.classes == CIFAR_CLASSES and hf.mean != folder.mean  # no preset statistics: estimated from the data
    one = load(pm, "data=hf", f"data.path={cifar_slice / 'train.parquet'}", "data.test_fraction=0.2")
    assert len(one.train) == 240 and len(one.test) == 60  # no test file: a stratified 20 % is held out
    assert torch.bincount(one.test.labels, minlength=10).sum() == 60


@needs_cifar
def test_environment_variable_points_the_preset_at_a_local_copy(pm, cifar_slice, monkeypatch):
    monkeypatch.setenv("RTLAB_CIFAR10", str(cifar_slice))
    data = load(pm, "data=cifar10", "data.train_size=100")
    assert len(data.train) == 100 and len(data.test) == 200
    share = np.bincount(rows(cifar_slice, "train")["label"], minlength=10) * 100 / 300
    got = torch.bincount(data.train.labels, minlength=10).numpy()
    assert np.abs(got - share).max() < 1  # a stratified subset of the local copy


def test_cifar10_offline_without_a_path_names_data_path(pm, monkeypatch):
    monkeypatch.delenv("RTLAB_CIFAR10", raising=False)
    with pytest.raises(RtlabError, match=r"while offline .*data\.path=DIR"):
        load(pm, "data=cifar10")


@needs_cifar
def test_a_run_trains_and_probes_on_local_cifar10(tmp_path, cifar_slice):
    summary = compose_run(tmp_path, "data=cifar10", f"data.path={cifar_slice}", "evaluator=[knn]",
                          "eval.targets=[student,input]").fit()
    assert summary["train_images"] == 256 and summary["test_images"] == 128  # the tiny runs' stratified subsets
    assert 0.0 <= summary["metrics"]["knn/student"] <= 1.0
    assert summary["metrics"]["knn/input"] > 0.1  # above chance on real images, even with 300 of them
    assert summary["student_distance_from_init"] > 0
