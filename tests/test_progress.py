"""Progress of long phases: a periodic log line with count, share, time and ETA when the output is not a terminal,
a bar on a terminal, nothing for short phases; ``rtlab report`` reuses the embeddings a run saved, skips the panel
with ``--no-embedding`` and takes ``--threads``."""

from __future__ import annotations

import io
import json
import time

import pytest

from framework.api import Progress, progress


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_long_phase_logs_a_line_with_eta_every_interval():
    out, clock = io.StringIO(), Clock()
    with Progress("extracting features (student)", 50_000, "images", stream=out, every=30, clock=clock) as p:
        for _ in range(10):
            clock.t += 10
            p.update(5_000)
    lines = out.getvalue().splitlines()
    assert lines == [
        "rtlab: extracting features (student): 15,000/50,000 images (30%), 30 s, ETA 1 min 10 s",
        "rtlab: extracting features (student): 30,000/50,000 images (60%), 1 min 0 s, ETA 40 s",
        "rtlab: extracting features (student): 45,000/50,000 images (90%), 1 min 30 s, ETA 10 s",
        "rtlab: extracting features (student): done, 50,000 images in 1 min 40 s",
    ]


def test_a_short_phase_says_nothing_and_a_count_without_total_has_no_eta(monkeypatch):
    out, clock = io.StringIO(), Clock()
    for _ in progress(range(3), "quick", stream=out, every=30, clock=clock):
        clock.t += 1
    assert out.getvalue() == ""
    with Progress("decoding", None, "rows", stream=out, every=5, clock=clock) as p:
        clock.t += 6
        p.update(2048)
    assert out.getvalue().splitlines()[0] == "rtlab: decoding: 2,048 rows, 6 s"
    monkeypatch.setenv("RTLAB_PROGRESS", "0")
    quiet = io.StringIO()
    with Progress("off", 10, stream=quiet, every=0, clock=clock) as p:
        clock.t += 100
        p.update(5)
    assert quiet.getvalue() == ""


def test_a_terminal_gets_a_bar_with_rate_and_eta():
    out = io.StringIO()
    with Progress("t-SNE", 4, "projections", stream=out, bar=True, delay=0) as p:
        time.sleep(0.2)  # past tqdm's minimum refresh interval
        p.update(2)
    text = out.getvalue()
    assert "t-SNE" in text and "2/4" in text and "projections" in text


def test_report_reuses_the_runs_embeddings_and_skips_the_panel_on_request(tmp_path, monkeypatch):
    from framework.cli import main
    from plugins.tracking import embedding_panel
    from tiny_runs import fit

    fit(tmp_path, "checkpoint.final=true")
    saved = tmp_path / "features" / "embedding.safetensors"
    assert saved.exists()  # the run saved its panel's embeddings

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the report rebuilt a network although the run saved its embeddings")

    monkeypatch.setattr(embedding_panel, "_from_checkpoint", no_rebuild)
    assert main(["report", str(tmp_path), "--threads", "1"]) == 0
    assert (tmp_path / "plots" / "embedding.png").stat().st_size > 10_000
    (tmp_path / "plots" / "embedding.png").unlink()
    assert main(["report", str(tmp_path), "--no-embedding"]) == 0
    assert not (tmp_path / "plots" / "embedding.png").exists()
    assert "![knn](plots/knn.png)" in (tmp_path / "report.md").read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["test_images"] == 128


def test_report_threads_must_be_positive(tmp_path, capsys):
    from framework.cli import main
    from tiny_runs import fit

    fit(tmp_path)
    assert main(["report", str(tmp_path), "--threads", "0"]) == 2
    assert capsys.readouterr().err.strip().endswith("--threads must be a positive number of threads, got 0")


@pytest.mark.parametrize("seconds,text", [(5, "5 s"), (125, "2 min 5 s"), (3720, "1 h 2 min")])
def test_durations_read_naturally(seconds, text):
    from framework._base.progress import duration

    assert duration(seconds) == text


def test_probes_and_decoding_log_their_progress(monkeypatch, capsys, caplog):
    """With output that is not a terminal, every long phase logs ``rtlab: <phase>: done/total unit (share), time,
    ETA``; ``RTLAB_PROGRESS_EVERY=0`` makes each step log one."""
    import logging

    import numpy as np
    import torch

    from framework.api import DataOptions
    from framework._data.data import decode_images
    from plugins.probes.knn import KNNOptions, KNNProbe
    from plugins.probes.linear_probe import LinearProbe, LinearProbeOptions
    from framework.api import Features

    caplog.set_level(logging.INFO, logger="rtlab")
    monkeypatch.setenv("RTLAB_PROGRESS_EVERY", "0")
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(300, 8, generator=g), torch.randn(100, 8, generator=g)
    feats = Features("student", train, torch.arange(300) % 3, test, torch.arange(100) % 3, 3)
    KNNProbe(KNNOptions(chunk=40)).evaluate(feats, None)
    LinearProbe(LinearProbeOptions(epochs=2, standardized=False)).evaluate(feats, None)

    import datasets

    ds = datasets.Dataset.from_dict({"image": np.zeros((5, 4, 4), dtype=np.uint8)})
    decode_images(ds, "image", DataOptions(), "dataset 'toy' (train split)", chunk=2)
    text = capsys.readouterr().err + caplog.text
    assert "rtlab: k-NN probe (student): 40/100 test images (40%)" in text
    assert "rtlab: k-NN probe (student): 80/100 test images (80%)" in text and "ETA" in text
    assert "rtlab: linear probe (student): 1/2 epochs (50%)" in text
    assert "rtlab: decoding dataset 'toy' (train split): 2/5 images (40%)" in text
    assert "rtlab: decoding dataset 'toy' (train split): done, 5 images in" in text


def test_feature_extraction_and_the_bn_control_log_their_progress(tmp_path, monkeypatch, capsys, caplog):
    import logging

    from tiny_runs import fit

    caplog.set_level(logging.INFO, logger="rtlab")
    monkeypatch.setenv("RTLAB_PROGRESS_EVERY", "0")
    fit(tmp_path, "eval.batch_size=64", "evaluator=[knn]")
    text = capsys.readouterr().err + caplog.text
    for target in ("teacher", "student"):
        assert f"rtlab: features of {target} (train split): 64/256 images (25%)" in text, text[-3000:]
        assert f"rtlab: features of {target} (test split): done, 128 images in" in text
    assert "rtlab: re-estimating the teacher's BatchNorm statistics (BN control): 128/256 images (50%)" in text
    assert "rtlab: k-NN probe (student): done, 128 test images in" in text
