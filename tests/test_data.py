"""The data path: every supported source, column detection, subsets, decoding, caching, and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import write_class_images
from framework._config.compose import compose
from framework._data.data import load_image_data, stratified_subset
from framework._base.errors import RtlabError


def load(pm, *overrides):
    cfg = compose(list(overrides), pm.registry)
    return load_image_data(pm.registry, cfg.data)


def test_imagefolder_with_train_and_test_folders(pm, imagefolder):
    data = load(pm, "data=imagefolder", f"data.path={imagefolder}")
    assert data.classes == ["class_0", "class_1", "class_2"]
    assert data.train.images.shape == (36, 3, 16, 16) and data.train.images.dtype == torch.uint8
    assert data.test.images.shape == (12, 3, 16, 16)
    assert torch.bincount(data.train.labels).tolist() == [12, 12, 12]
    assert len(data.mean) == 3 and all(0 < s for s in data.std)


def test_grayscale_images_stay_one_channel_and_sizes_can_be_unified(pm, tmp_path):
    write_class_images(tmp_path / "gray" / "train", mode="L", size=20)
    write_class_images(tmp_path / "gray" / "test", mode="L", size=20, per_class=3)
    data = load(pm, "data=imagefolder", f"data.path={tmp_path / 'gray'}")
    assert data.channels == 1 and data.size == (20, 20)
    rgb = load(pm, "data=imagefolder", f"data.path={tmp_path / 'gray'}", "data.channels=3", "data.image_size=12")
    assert rgb.train.images.shape[1:] == (3, 12, 12)
    assert torch.equal(rgb.train.images[:, 0], rgb.train.images[:, 1])


def test_mixed_sizes_ask_for_image_size(pm, tmp_path):
    write_class_images(tmp_path / "mixed" / "train" / "a", classes=1, size=16)
    write_class_images(tmp_path / "mixed" / "train" / "b", classes=1, size=24)
    with pytest.raises(RtlabError, match=r"different sizes .*set data.image_size=N"):
        load(pm, "data=imagefolder", f"data.path={tmp_path / 'mixed'}")
    data = load(pm, "data=imagefolder", f"data.path={tmp_path / 'mixed'}", "data.image_size=16")
    assert data.size == (16, 16)
    assert len(data.test) > 0  # no test folder: a stratified part of train was held out


def test_parquet_files_and_save_to_disk_folders(pm, tmp_path, imagefolder):
    import datasets

    ds = datasets.load_dataset("imagefolder", data_dir=str(imagefolder))
    ds = ds.rename_column("image", "img").rename_column("label", "fine_label")
    (tmp_path / "pq").mkdir()
    for split in ds:
        ds[split].to_parquet(str(tmp_path / "pq" / f"{split}.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    a = load(pm, "data=hf", f"data.path={tmp_path / 'pq'}")
    b = load(pm, "data=hf", f"data.path={tmp_path / 'saved'}")
    c = load(pm, "data=hf", f"data.path={tmp_path / 'pq' / 'train.parquet'}", "data.test_fraction=0.25")
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.train.labels, b.train.labels)
    assert a.classes == ["class_0", "class_1", "class_2"]
    assert len(c.train) == 27 and len(c.test) == 9


def test_columns_are_detected_or_named(pm, tmp_path):
    import datasets

    arr = np.random.default_rng(0).integers(0, 255, (20, 8, 8, 3), dtype=np.uint8)
    ds = datasets.Dataset.from_dict({"pixels_rgb": arr.tolist(), "target_id": [i % 4 for i in range(20)]})
    ds.save_to_disk(str(tmp_path / "odd"))
    with pytest.raises(RtlabError, match=r"no image column \(columns: pixels_rgb, target_id\); set data.image_column"):
        load(pm, "data=hf", f"data.path={tmp_path / 'odd'}")
    data = load(pm, "data=hf", f"data.path={tmp_path / 'odd'}", "data.image_column=pixels_rgb",
                "data.label_column=target_id")
    assert data.channels == 3 and data.num_classes == 4
    with pytest.raises(RtlabError, match="has no column 'nope'"):
        load(pm, "data=hf", f"data.path={tmp_path / 'odd'}", "data.image_column=nope")


def test_stratified_subset_keeps_class_proportions_and_is_seeded():
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    idx = stratified_subset(labels, 40, seed=0)
    assert np.bincount(labels[idx]).tolist() == [20, 10, 6, 4]
    assert np.array_equal(idx, stratified_subset(labels, 40, seed=0))
    assert not np.array_equal(idx, stratified_subset(labels, 40, seed=1))
    assert np.all(np.diff(idx) > 0)


def test_builtin_digits_and_fashion_mnist_subsets(pm):
    digits = load(pm, "data=digits")
    assert len(digits.train) + len(digits.test) == 1797 and digits.size == (8, 8) and digits.channels == 1
    fm = load(pm, "data=fashion_mnist", "data.train_size=500", "data.test_size=200")
    assert fm.train.images.shape == (500, 1, 28, 28) and len(fm.test) == 200
    assert torch.bincount(fm.train.labels).tolist() == [50] * 10
    assert fm.classes[0] == "T-shirt/top"


def test_decoded_tensors_are_cached_by_fingerprint(pm, imagefolder, monkeypatch):
    first = load(pm, "data=imagefolder", f"data.path={imagefolder}")
    import framework._data.data as data_module

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although cached")

    monkeypatch.setattr(data_module, "decode_chunks", no_decoding)
    second = load(pm, "data=imagefolder", f"data.path={imagefolder}")
    assert torch.equal(first.train.images, second.train.images)
    with pytest.raises(AssertionError, match="decoded again"):
        load(pm, "data=imagefolder", f"data.path={imagefolder}", "data.cache=false")


def test_missing_data_errors_name_the_fix(pm, tmp_path):
    with pytest.raises(RtlabError, match="apt-get install dataset-fashion-mnist"):
        load(pm, "data=fashion_mnist", f"data.path={tmp_path / 'none'}")
    with pytest.raises(RtlabError, match="needs data.path=DIR"):
        load(pm, "data=imagefolder")
    with pytest.raises(RtlabError, match="while offline .*data=imagefolder"):
        load(pm, "data=hf", "data.path=uoft-cs/cifar10")
    with pytest.raises(RtlabError, match="no split 'validation'"):
        load(pm, "data=digits", "data.test_split=validation")
