"""IMP: global magnitude pruning, masks that hold through training, sparsity per round, resuming, the plot."""

from __future__ import annotations

import json

import pytest
import torch
from analysis_helpers import SUP, RunRecorder
from torch import nn

from framework import hookimpl
from framework._nets.checkpoint import load_checkpoint
from framework._base.errors import RtlabError
from framework._contract.plugin_manager import create_plugin_manager
from plugins.analysis import run_analysis
from plugins.analysis.pruning import attach_masks, global_magnitude_masks, masks_of, prunable_names


def test_global_magnitude_pruning_removes_the_smallest_remaining_weights():
    weights = {"a": torch.tensor([[0.1, -5.0], [0.3, 2.0]]), "b": torch.tensor([-0.2, 4.0, 0.05, -3.0])}
    first = global_magnitude_masks(weights, {}, 0.25)  # 2 of 8: |0.05| and |0.1|, across both tensors
    assert first["a"].tolist() == [[0, 1], [1, 1]] and first["b"].tolist() == [1, 1, 0, 1]
    second = global_magnitude_masks(weights, first, 0.5)  # 3 of the 6 still alive: 0.2, 0.3, 2.0
    assert second["a"].tolist() == [[0, 1], [0, 0]] and second["b"].tolist() == [0, 1, 0, 1]
    with pytest.raises(RtlabError, match="fraction"):
        global_magnitude_masks(weights, {}, 1.0)


def test_prunable_selections():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    assert prunable_names(net, "weights") == ["0.weight", "3.weight"]
    assert prunable_names(net, "all") == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]
    with pytest.raises(RtlabError, match="analysis.prune"):
        prunable_names(net, "conv")


class MaskWatcher:
    """Checks, at every forward pass of every pruned layer, that the weights it uses are zero where pruned."""

    def __init__(self) -> None:
        self.checks = 0
        self.moved = 0

    def _check(self, module, args, output):
        for param in module._rtlab_masked:
            weight, mask = getattr(module, param), getattr(module, param + "_mask")
            assert torch.all(weight[mask == 0] == 0), "a pruned weight was used"
        self.checks += 1

    @hookimpl
    def rtlab_run_start(self, run):
        for module in run.objective.net.modules():
            if getattr(module, "_rtlab_masked", None):
                module.register_forward_hook(self._check)

    @hookimpl
    def rtlab_step_end(self, run, metrics):
        # right after an optimiser step a pruned weight may be non-zero: the optimiser does not know about masks
        for module in run.objective.net.modules():
            for param in getattr(module, "_rtlab_masked", ()):
                mask = getattr(module, param + "_mask")
                self.moved += int((getattr(module, param)[mask == 0] != 0).sum())


class InterruptRound:
    """Stops the analysis in the middle of round 2, like a killed job."""

    @hookimpl
    def rtlab_epoch_end(self, run, epoch):
        if run.out_dir.name == "round_02":
            raise KeyboardInterrupt


def test_imp_masks_sparsity_resume_and_plot(tmp_path):
    out = tmp_path / "imp"
    overrides = [*SUP, "analysis.rounds=3", "analysis.rewind=[random]", "train.log_every=1"]
    watcher = MaskWatcher()
    pm = create_plugin_manager(extra_plugins=[watcher, InterruptRound()], autoload=False)
    with pytest.raises(KeyboardInterrupt):
        run_analysis("imp", overrides, str(out), pm)
    assert (out / "random" / "round_01" / "summary.json").exists()
    assert not (out / "random" / "round_02" / "summary.json").exists()
    assert json.loads((out / "analysis.json").read_text())["status"] == "interrupted"  # resumed by the same command
    assert watcher.checks > 0 and watcher.moved > 0

    recorder = RunRecorder()
    pm = create_plugin_manager(extra_plugins=[recorder, watcher], autoload=False)
    run_analysis("imp", overrides, str(out), pm)
    assert [p.name for p in recorder.started] == ["round_02", "round_03"]  # dense and round 1 were kept

    record = json.loads((out / "analysis.json").read_text())
    rows = record["results"]["lines"]["random"]
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    for r in rows:
        assert r["sparsity"] == pytest.approx(1 - 0.8 ** r["round"], abs=2e-4)
        assert 0.0 <= r["last"] <= r["best"] <= 1.0
    # the checkpoint of the last round holds its pruned weights at exactly zero
    tensors, _ = load_checkpoint(out / "random" / "round_03")
    masks = {k[:-len("_mask")]: v for k, v in tensors.items() if k.endswith("_mask")}
    assert masks and "classifier.weight" in masks
    assert all(torch.all(tensors[name][mask == 0] == 0) for name, mask in masks.items())
    assert (out / "plots" / "imp.png").stat().st_size > 10_000
    assert "| random | 3 | 51.2 |" in (out / "report.md").read_text()


def test_masks_survive_a_copy_and_travel_in_the_state():
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    attach_masks(net, {"0.weight": torch.tensor([[1.0, 0, 1], [0, 1, 1], [1, 1, 0]])})
    assert net[0].weight[0, 1] == 0 and "0.weight_mask" in net.state_dict()
    import copy

    twin = copy.deepcopy(net)
    with torch.no_grad():
        twin[0].weight.fill_(1.0)
    twin(torch.ones(1, 3))  # the copy's own masks, not the original's, are applied
    assert twin[0].weight.sum() == 6 and net[0].weight[0, 1] == 0
    assert list(masks_of(twin)) == ["0.weight"]
