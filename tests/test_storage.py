"""Data at any scale: storage modes give identical runs, a cache hit never rescans, decodes resume after a kill."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, write_class_images
from framework._data import datacache
from framework._config.compose import compose
from framework._data.data import load_image_data
from framework._base.errors import RtlabError
from tiny_runs import fit

def _numbers(summary: dict) -> dict:
    """The summary's results: metrics, best values, distances (not timings, not the storage's name)."""
    return {k: v for k, v in summary.items() if k not in ("wall_time_s", "train_time_s", "images_per_s",
                                                           "data_storage", "versions")}


@pytest.fixture
def folder(tmp_path):
    write_class_images(tmp_path / "imgs" / "train", classes=3, per_class=30, size=12)
    write_class_images(tmp_path / "imgs" / "test", classes=3, per_class=8, size=12)
    return tmp_path / "imgs"


def test_device_host_and_disk_storage_train_identically(tmp_path, folder):
    runs = {}
    for mode in ("device", "host", "disk"):
        summary = fit(tmp_path / mode, "data=imagefolder", f"data.path={folder}", f"data.storage={mode}",
                      "data.train_size=null", "data.test_size=null", "augment=identity", "train.batch_size=16",
                      "train.epochs=2", "train.deterministic=true", "train.threads=1")
        runs[mode] = json.loads((tmp_path / mode / "summary.json").read_text())
        assert runs[mode]["data_storage"] == mode and summary["data_storage"] == mode
    assert any(k.startswith("knn") for k in runs["device"]["metrics"]), runs["device"]["metrics"]
    assert _numbers(runs["host"]) == _numbers(runs["device"])
    assert _numbers(runs["disk"]) == _numbers(runs["device"])


def test_auto_picks_disk_under_a_memory_cap_and_says_why(pm, folder, monkeypatch, caplog):
    cfg = compose(["data=imagefolder", f"data.path={folder}"], pm.registry)
    assert load_image_data(pm.registry, cfg.data).extra["storage"] == "device"
    monkeypatch.setenv("RTLAB_MAX_DEVICE_BYTES", "10K")
    with caplog.at_level(logging.INFO):
        data = load_image_data(pm.registry, cfg.data)
    assert data.extra["storage"] == "disk" and isinstance(data.train.images, datacache.DiskImages)
    assert "data.storage=auto chose disk" in caplog.text and "RTLAB_MAX_DEVICE_BYTES" in caplog.text
    index = torch.tensor([5, 0, 77, 6, 7, 8])
    device = load_image_data(pm.registry, compose(["data=imagefolder", f"data.path={folder}",
                                                   "data.storage=device"], pm.registry).data)
    assert torch.equal(data.train.batch(index), device.train.images[index])
    assert torch.equal(data.train.images[3:9], device.train.images[3:9])
    monkeypatch.setenv("RTLAB_MAX_DEVICE_BYTES", "lots")
    with pytest.raises(RtlabError, match="RTLAB_MAX_DEVICE_BYTES='lots' is not a size"):
        load_image_data(pm.registry, cfg.data)


def test_a_cache_hit_does_not_load_the_dataset_and_a_changed_file_is_noticed(pm, folder, monkeypatch):
    import datasets

    cfg = compose(["data=imagefolder", f"data.path={folder}"], pm.registry)
    first = load_image_data(pm.registry, cfg.data)

    def no_scan(*args, **kwargs):
        raise AssertionError("datasets rescanned the folder on a cache hit")

    monkeypatch.setattr(datasets, "load_dataset", no_scan)
    again = load_image_data(pm.registry, cfg.data)
    assert torch.equal(first.train.images, again.train.images) and again.classes == first.classes
    victim = next((folder / "train" / "class_1").iterdir())
    os.utime(victim, ns=(1, 1))  # a changed file: another listing, another entry
    with pytest.raises(AssertionError, match="rescanned"):
        load_image_data(pm.registry, cfg.data)


KILLER = """
import os, signal, sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
from framework._data import data
from framework._data import datacache
from framework._config.compose import compose
from tiny_runs import plugin_manager
datacache.DECODE_CHUNK = 8
real = data.decode_chunks
def dying(*args, **kwargs):
    for i, item in enumerate(real(*args, **kwargs)):
        if i == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        yield item
data.decode_chunks = dying
pm = plugin_manager()
data.load_image_data(pm.registry, compose(["data=imagefolder", "data.path={folder}"], pm.registry).data)
"""


def test_a_decode_killed_midway_resumes_at_its_first_unfinished_chunk(pm, folder, tmp_path, monkeypatch):
    env = {**os.environ, "RTLAB_CACHE_DIR": str(tmp_path / "killed")}
    script = KILLER.format(root=str(ROOT), tests=str(ROOT / "tests"), folder=folder)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    partial = next((tmp_path / "killed" / "data").glob("*.partial"))
    assert json.loads((partial / "train.progress.json").read_text())["done"] == 24  # 3 chunks of 8 were written

    import framework._data.data as data_module

    monkeypatch.setattr(datacache, "DECODE_CHUNK", 8)
    starts = []
    real = data_module.decode_chunks

    def counting(*args, **kwargs):
        starts.append(kwargs.get("start", 0))
        return real(*args, **kwargs)

    monkeypatch.setattr(data_module, "decode_chunks", counting)
    cfg = compose(["data=imagefolder", f"data.path={folder}"], pm.registry)
    monkeypatch.setenv("RTLAB_CACHE_DIR", str(tmp_path / "killed"))
    resumed = load_image_data(pm.registry, cfg.data)
    assert starts == [24, 0]  # train continued at image 24; test had not started
    monkeypatch.setenv("RTLAB_CACHE_DIR", str(tmp_path / "whole"))
    whole = load_image_data(pm.registry, cfg.data)
    assert torch.equal(resumed.train.images, whole.train.images)
    (a,), (b,) = ([p for p in (tmp_path / d / "data").iterdir() if p.is_dir()] for d in ("killed", "whole"))
    for name in ("train.images", "train.labels", "test.images", "test.labels", "meta.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert not list((tmp_path / "killed" / "data").glob("*.partial"))


def test_disk_images_read_rows_in_any_order(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (50, 3, 4, 5), dtype=np.uint8)
    arr.tofile(tmp_path / "x.images")
    disk = datacache.DiskImages(tmp_path / "x.images", arr.shape)
    index = torch.tensor([49, 3, 4, 5, 0, 0, 17, 18, -1])
    assert np.array_equal(disk[index].numpy(), arr[index.numpy()])
    assert np.array_equal(disk[10:20].numpy(), arr[10:20]) and disk.shape == arr.shape
    halves = disk.tensor_split(2)
    assert [len(h) for h in halves] == [25, 25] and np.array_equal(halves[1][0:3].numpy(), arr[25:28])
    with pytest.raises(IndexError):
        disk[torch.tensor([50])]
    (tmp_path / "y.images").write_bytes(arr.tobytes()[:-1])
    with pytest.raises(RtlabError, match="delete its folder to decode again"):
        datacache.DiskImages(tmp_path / "y.images", arr.shape)


def test_storage_must_be_a_known_mode(pm, folder):
    cfg = compose(["data=imagefolder", f"data.path={folder}", "data.storage=ram"], pm.registry)
    with pytest.raises(RtlabError, match="data.storage must be one of auto, device, host, disk, got 'ram'"):
        load_image_data(pm.registry, cfg.data)
    assert Path(ROOT / "framework" / "run.py").read_text().count("\n") <= 250
