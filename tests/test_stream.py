"""data.storage=stream: parquet shards decoded while training give the runs the decoded cache gives."""

from __future__ import annotations

import json

import pytest
import torch

from framework._data import streaming
from framework._config.compose import compose
from framework._data.data import load_image_data
from framework._base.errors import RtlabError
from conftest import write_parquet
from tiny_runs import fit, preempted_then_resumed


@pytest.fixture
def parquet(tmp_path):
    root = tmp_path / "pq"
    write_parquet(root / "train.parquet", 150, seed=0)
    write_parquet(root / "test.parquet", 45, seed=1)
    return root


def _numbers(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("wall_time_s", "train_time_s", "images_per_s",
                                                           "data_storage", "versions")}


def test_buffered_order_is_a_seeded_permutation_within_the_buffer_bound():
    n, buffer = 1000, 64
    a = streaming.buffered_order(n, buffer, torch.Generator().manual_seed(3))
    assert torch.equal(a, streaming.buffered_order(n, buffer, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, streaming.buffered_order(n, buffer, torch.Generator().manual_seed(4)))
    assert torch.equal(a.sort().values, torch.arange(n))
    # where each row was read: shards (of shard_rows(buffer) rows) in the order the same generator draws first
    size = streaming.shard_rows(buffer)
    shards = torch.randperm(-(-n // size), generator=torch.Generator().manual_seed(3))
    read_at = torch.empty(n, dtype=torch.long)
    read_at[torch.cat([torch.arange(s * size, min(n, (s + 1) * size)) for s in shards.tolist()])] = torch.arange(n)
    lag = read_at[a] - torch.arange(n)
    assert int(lag.max()) <= buffer  # no row is emitted more than a buffer after it was read: bounded memory
    assert float((read_at[a] - torch.arange(n)).abs().float().mean()) > buffer / 8  # and rows are really mixed
    with pytest.raises(RtlabError, match="data.shuffle_buffer must be a positive number of rows, got 0"):
        streaming.buffered_order(n, 0, torch.Generator())


def test_the_reader_holds_at_most_a_buffer_of_decoded_rows(pm, tmp_path):
    write_parquet(tmp_path / "pq" / "train.parquet", 600, row_group=50)
    cfg = compose(["data=hf", f"data.path={tmp_path / 'pq'}", "data.train_size=null", "data.test_fraction=0.1",
                   "data.storage=stream", "data.shuffle_buffer=64", "data.workers=0"], pm.registry)
    train = load_image_data(pm.registry, cfg.data).train
    order = train.order(torch.Generator().manual_seed(0))
    batches = [order[i:i + 20] for i in range(0, len(order), 20)]
    for index in train.ahead(batches):
        assert torch.equal(train.batch(index), train.images[index])
    # the buffer, one shard (16 rows) and one batch: not the 540 rows of the split
    assert 64 < train.reader.peak_held <= 64 + 16 + 20


def test_stream_trains_exactly_like_disk_and_device_with_the_same_shuffle_buffer(tmp_path, parquet):
    runs = {}
    for name, extra in (("device", ["data.storage=device"]), ("disk", ["data.storage=disk"]),
                        ("stream", ["data.storage=stream", "data.workers=1"]),
                        ("stream_in_process", ["data.storage=stream", "data.workers=0"])):
        summary = fit(tmp_path / name, "data=hf", f"data.path={parquet}", "data.train_size=null",
                      "data.test_size=null", "data.shuffle_buffer=40", "augment=identity", "train.batch_size=16",
                      "train.epochs=2", "train.deterministic=true", "train.threads=1", *extra)
        runs[name] = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["data_storage"] == extra[0].split("=")[1]
    assert runs["stream"]["metrics"]["knn/student"] > 0.5, runs["stream"]["metrics"]  # it learnt the classes
    for name in ("device", "stream", "stream_in_process"):
        assert _numbers(runs[name]) == _numbers(runs["disk"]), name
    # a full permutation (no buffer) is another order: the buffer is what made the runs agree
    other = fit(tmp_path / "permuted", "data=hf", f"data.path={parquet}", "data.storage=disk", "augment=identity",
                "data.train_size=null", "data.test_size=null", "train.batch_size=16", "train.epochs=2",
                "train.deterministic=true", "train.threads=1")
    assert other["teacher_student_distance"] != runs["disk"]["teacher_student_distance"]


def test_stream_selects_the_rows_the_decode_selects(pm, tmp_path):
    """Hold-out (no test split), a stratified subset and grayscale images: the same rows, labels and pixels."""
    root = tmp_path / "gray"
    write_parquet(root / "train.parquet", 120, mode="L", row_group=25)
    over = ["data=hf", f"data.path={root}", "data.train_size=60", "data.test_fraction=0.25", "data.image_size=8"]
    disk = load_image_data(pm.registry, compose(over + ["data.storage=disk"], pm.registry).data)
    stream = load_image_data(pm.registry, compose(over + ["data.storage=stream"], pm.registry).data)
    assert stream.extra["storage"] == "stream" and stream.classes == disk.classes == ["c0", "c1", "c2"]
    assert stream.train.images.shape == disk.train.images.shape == (60, 1, 8, 8)
    for split in ("train", "test"):
        a, b = getattr(stream, split), getattr(disk, split)
        assert torch.equal(a.labels, b.labels) and torch.equal(a.images[:], b.images[:]), split
    assert stream.mean == disk.mean and stream.std == disk.std
    index = torch.tensor([7, 3, 59, 0])
    assert torch.equal(stream.train.batch(index), disk.train.images[index])
    import pickle  # worker processes may be spawned (forkserver is Python 3.14's default): the split pickles

    again = pickle.loads(pickle.dumps(stream.train.images))
    assert torch.equal(again[index], disk.train.images[index])


def test_a_resumed_stream_continues_exactly(tmp_path, parquet):
    over = ["data=hf", f"data.path={parquet}", "data.storage=stream", "data.workers=0", "data.shuffle_buffer=40",
            "data.train_size=null", "data.test_size=null", "train.batch_size=16", "train.epochs=2",
            "train.deterministic=true", "train.threads=1", "train.state_steps=1", "train.log_every=1"]
    want = fit(tmp_path / "straight", *over)
    resumed = preempted_then_resumed(tmp_path / "resumed", 13, *over)  # mid-epoch 2 (10 steps per epoch)
    assert (resumed.step, resumed.position) == (12, 2)  # the state saved before step 13's hooks ran
    got = resumed.fit()
    for key in ("metrics", "teacher_student_distance", "student_distance_from_init", "steps"):
        assert got[key] == want[key], key


def test_stream_refuses_what_it_cannot_read(pm, tmp_path, imagefolder):
    def load(*over):
        return load_image_data(pm.registry, compose(list(over), pm.registry).data)

    with pytest.raises(RtlabError, match="cannot stream: data.storage=stream reads parquet files .*use "
                                         "data.storage=disk"):
        load("data=imagefolder", f"data.path={imagefolder}", "data.storage=stream")
    write_parquet(tmp_path / "bad" / "train.parquet", 30, bad_row=17)
    with pytest.raises(RtlabError, match="needs the decoded cache"):
        load("data=hf", f"data.path={tmp_path / 'bad'}", "data.storage=stream", "data.skip_bad_images=true")
    data = load("data=hf", f"data.path={tmp_path / 'bad'}", "data.storage=stream", "data.test_fraction=0.2")
    with pytest.raises(RtlabError, match=r"row \d+ cannot be decoded .*use data.storage=disk "
                                         "data.skip_bad_images=true"):
        data.train.images[:], data.test.images[:]  # row 17 is in one of them
    (tmp_path / "arrow").mkdir()
    (tmp_path / "arrow" / "train.arrow").write_bytes(b"")
    with pytest.raises(RtlabError, match="data.storage=stream reads parquet files; .* has .arrow: use "
                                         "data.storage=disk"):
        streaming.stream_files_of(str(tmp_path / "arrow"))
    with pytest.raises(RtlabError, match="is not a local file or folder and the Hub is offline; give local "
                                         "parquet files"):
        load("data=hf", "data.path=someone/imagenet", "data.storage=stream")


def test_auto_streams_what_would_not_fit_the_disk_and_says_why(pm, parquet, monkeypatch, caplog):
    import logging

    cfg = compose(["data=hf", f"data.path={parquet}", "data.train_size=null", "data.test_size=null"], pm.registry)
    monkeypatch.setenv("RTLAB_MAX_DISK_BYTES", "10K")  # 195 images of 3x12x12 are 84 KB decoded
    with caplog.at_level(logging.INFO):
        data = load_image_data(pm.registry, cfg.data)
    assert data.extra["storage"] == "stream" and isinstance(data.train.images, streaming.StreamImages)
    assert "data.storage=auto chose stream" in caplog.text and "RTLAB_MAX_DISK_BYTES" in caplog.text
    monkeypatch.setenv("RTLAB_MAX_DISK_BYTES", "1M")
    decoded = load_image_data(pm.registry, cfg.data)
    assert decoded.extra["storage"] == "device" and torch.equal(decoded.train.images, data.train.images[:])
    monkeypatch.setenv("RTLAB_MAX_DISK_BYTES", "10K")  # once decoded, the cache entry is used whatever the budget
    assert load_image_data(pm.registry, cfg.data).extra["storage"] == "device"
