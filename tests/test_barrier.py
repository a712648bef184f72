"""Barrier: exact endpoints, BN re-estimation by default, the barrier formula, the comparison figure."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from analysis_helpers import SUP, RunRecorder

from framework._nets.checkpoint import load_checkpoint
from framework._config.compose import compose
from framework._base.errors import RtlabError
from framework._contract.features import bn_control
from framework._contract.plugin_manager import create_plugin_manager
from framework.api import AnalysisContext
from plugins.analysis import run_analysis
from plugins.analysis.barrier import BarrierOptions
from plugins.analysis.interpolation import barrier, classifier_metrics, combine
from plugins.training.supervised import classifier_state


def test_barrier_is_the_largest_rise_above_the_straight_line():
    gammas = [0.0, 0.25, 0.5, 0.75, 1.0]
    assert barrier([0.1, 0.2, 0.5, 0.4, 0.3], gammas) == pytest.approx(0.5 - 0.2)
    assert barrier([0.3, 0.25, 0.2, 0.15, 0.1], gammas) == pytest.approx(0.0)  # on the line: no barrier


def test_combine_gives_the_endpoints_bit_for_bit():
    a = {"w": torch.randn(50), "n": torch.tensor(3)}
    b = {"w": torch.randn(50), "n": torch.tensor(9)}
    assert torch.equal(combine([a, b], [1.0, 0.0])["w"], a["w"])
    assert torch.equal(combine([a, b], [0.0, 1.0])["w"], b["w"])
    assert combine([a, b], [0.5, 0.5])["n"] == 3


def test_bn_reestimation_is_the_default():
    assert BarrierOptions().bn == "reestimate"
    cfg = compose(["experiment=paper_fig9_lmc_cpu"])
    assert cfg.analysis.bn == "reestimate" and cfg.analysis.name == "barrier"


def test_endpoints_reproduce_the_runs_accuracy_exactly(tmp_path):
    """γ = 0 and γ = 1 are the trained networks: with interpolated BN buffers the path's endpoints have exactly the
    accuracy each run reported; with BN re-estimation exactly that of the endpoint after re-estimation."""
    interp = tmp_path / "interpolate"
    base = [*SUP, "analysis.starts=[random]", "analysis.runs=2", "analysis.points=3"]
    run_analysis("barrier", [*base, "analysis.bn=interpolate"], str(interp), create_plugin_manager(autoload=False))
    assert (interp / "eval" / ".lock").read_text() == ""  # the evaluation run's lock is released at the end
    res = json.loads((interp / "analysis.json").read_text())["results"]
    pair = res["starts"]["random"]["pairs"][0]
    n_test = 200
    for end, k in ((0, 0), (-1, 1)):
        summary = json.loads((interp / "random" / f"run_{k}" / "summary.json").read_text())
        correct = round(summary["metrics"]["classifier/student"] * n_test)
        assert round((1 - pair["test_error"][end]) * n_test) == correct
    assert res["starts"]["random"]["test_error_barrier_mean"] == pytest.approx(pair["test_error_barrier"])

    reest = tmp_path / "reestimate"
    for k in range(2):  # the same trained runs: the analysis finds them and does not train again
        shutil.copytree(interp / "random" / f"run_{k}", reest / "random" / f"run_{k}")
    recorder = RunRecorder()
    pm = create_plugin_manager(extra_plugins=[recorder], autoload=False)
    run_analysis("barrier", base, str(reest), pm)
    assert recorder.started == []
    pair = json.loads((reest / "analysis.json").read_text())["results"]["starts"]["random"]["pairs"][0]
    ctx = AnalysisContext("barrier", compose([*base, "+analysis=barrier"], pm.registry), [], reest, pm)
    run = ctx.evaluation_run("check")
    net = run.objective.net
    for end, k in ((0, 0), (-1, 1)):
        net.load_state_dict(classifier_state(load_checkpoint(reest / "random" / f"run_{k}")[0], "run"))
        fresh = bn_control(net, run.data.train.images, run.placement, run.cfg.eval.batch_size)
        m = classifier_metrics(fresh, run.data.test.images, run.data.test.labels, run)
        assert pair["test_error"][end] == m["error"] and pair["test_loss"][end] == m["loss"]
    assert (reest / "plots" / "barrier_test.png").stat().st_size > 10_000


def test_barrier_options_are_checked(tmp_path):
    with pytest.raises(RtlabError, match="analysis.runs"):
        run_analysis("barrier", [*SUP, "analysis.runs=1"], str(tmp_path / "a"), create_plugin_manager(autoload=False))
    with pytest.raises(RtlabError, match="network specification"):
        run_analysis("barrier", [*SUP, "analysis.starts=[studnet:x]"], str(tmp_path / "b"),
                     create_plugin_manager(autoload=False))
