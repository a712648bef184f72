"""load_run: a finished run's configuration, results, data and networks, as an analysis or a notebook reads them —
the numbers it gives back are the run's own."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY
from framework.api import (
    Features,
    RtlabError,
    compose,
    create_plugin_manager,
    embed,
    load_run,
    run_training,
)
from plugins.analysis import run_analysis
from plugins.probes.knn import KNNOptions, KNNProbe

SETTING = [*TINY, "data=digits", "data.train_size=96", "data.test_size=48", "evaluator=[knn]", "train.threads=1",
           "train.precision=fp32", "eval.layers=[-1,-2]", "checkpoint.every=1", "train.epochs=2", "eval.every=1"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    pm = create_plugin_manager(autoload=False)
    run_dir = tmp_path_factory.mktemp("loaded") / "run"
    summary = run_training(compose(SETTING, pm.registry), run_dir, pm)
    return run_dir, summary, pm


def test_a_loaded_run_gives_back_the_runs_own_numbers(finished):
    run_dir, summary, pm = finished
    run = load_run(run_dir, pm.registry, device="cpu")
    assert run.finished and run.metrics == summary["metrics"] and run.cfg.data.name == "digits"
    assert [row["epoch"] for row in run.history()] == [0, 1, 2]
    assert {"final", "last", "epoch_1", "epoch_2"} <= set(run.checkpoints())
    assert (len(run.data.train), len(run.data.test)) == (96, 48)
    # the k-NN probe on the loaded student's embeddings (embedding and the stage before) is the run's own result
    feats = run.embed("student", "train", layers=[-1, -2])
    test = run.embed("student", "test", layers=[-1, -2])
    for layer, suffix in ((-1, ""), (-2, ".L-2")):
        f = Features("student", feats[layer], run.data.train.labels, test[layer], run.data.test.labels,
                     run.data.num_classes)
        assert KNNProbe(KNNOptions()).evaluate(f, None)["knn"] == pytest.approx(
            summary["metrics"][f"knn/student{suffix}"], abs=1e-6)
    # an earlier checkpoint is another network; the teacher is the frozen random init at every checkpoint
    assert not torch.equal(run.embed("student", checkpoint="epoch_1"), test[-1])
    assert torch.equal(run.embed("teacher", checkpoint="epoch_1"), run.embed("teacher"))
    net = run.network("student")
    assert not net.training
    assert torch.equal(embed(net, run.data.test.images, placement=run.placement), test[-1])


def test_bad_requests_are_one_line(finished, tmp_path):
    run_dir, _, pm = finished
    run = load_run(run_dir, pm.registry, device="cpu")
    with pytest.raises(RtlabError, match=r"has no checkpoint 'epoch_9' \(it has: .*final"):
        run.network("student", "epoch_9")
    with pytest.raises(RtlabError, match="not 'head'"):
        run.network("head")
    with pytest.raises(RtlabError, match="split must be train or test"):
        run.embed(split="val")
    with pytest.raises(RtlabError, match="is not a run folder"):
        load_run(tmp_path)


def test_rtlab_analyze_takes_run_folders_and_refuses_what_is_neither(finished, tmp_path, cli):
    run_dir, _, pm = finished
    res = cli("analyze", "landscape", str(tmp_path / "nothing"))
    assert res.returncode == 2 and "is neither a run folder nor an override" in res.stderr
    assert "Traceback" not in res.stderr
    (tmp_path / "empty").mkdir()
    res = cli("analyze", "landscape", str(tmp_path / "empty"))
    assert res.returncode == 2 and "is a folder but not a run folder (no config.yaml)" in res.stderr
    with pytest.raises(RtlabError, match="selects a component or a preset"):
        run_analysis("landscape", [str(run_dir), "loss=ce"], str(tmp_path / "x"), pm)
    assert not (tmp_path / "x").exists()
