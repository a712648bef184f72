"""The plugin guide's examples run as printed, and the RunView promise matches the Run."""

from __future__ import annotations

import json
import re
import sys
import types

import torch

from conftest import ROOT, TINY
from framework._config.compose import compose
from framework._contract.features import Features
from framework._contract.plugin_manager import create_plugin_manager
from framework._run.loop import Run, run_training
from framework._contract.runview import PUBLIC

GUIDE = (ROOT / "docs" / "plugins.md").read_text()


def _block(first_line: str) -> str:
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", GUIDE, re.S) if first_line in b]
    return code


def _module(name: str, code: str) -> types.ModuleType:
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses look their module up
    exec(compile(code, f"docs/plugins.md:{name}", "exec"), module.__dict__)
    return module


def test_the_drift_analysis_example_studies_a_finished_run(tmp_path):
    drift = _module("rtlab_drift", _block("# rtlab_drift.py"))
    pm = create_plugin_manager(extra_plugins=[drift], autoload=False)
    run_dir = tmp_path / "run"
    summary = run_training(compose([*TINY, "data=digits", "data.train_size=128", "data.test_size=64",
                                    "train.threads=1"], pm.registry), run_dir, pm)
    from plugins.analysis import run_analysis

    folder = run_analysis("drift", [str(run_dir)], pm=pm)
    assert folder.parent == run_dir / "analyses" and folder.name.startswith("drift-")
    record = json.loads((folder / "analysis.json").read_text())
    result = record["results"][str(run_dir)]
    assert record["status"] == "done" and result["step"] == summary["steps"] == 2
    assert result["knn"] == summary["metrics"]["knn/student"]
    assert result["dataset"] == "digits" and result["test_images"] == 64  # the studied run's data, not the default
    assert result["drift"] and all(v > 0 for v in result["drift"].values())  # the student moved from the teacher
    assert "| relative drift |" in (folder / "report.md").read_text()
    import yaml

    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["analysed"] == [str(run_dir.resolve())] and config["data"]["name"] == "digits"
    again = run_analysis("drift", [str(run_dir), "analysis.per_block=false"], pm=pm)  # options: another folder
    assert again != folder and list(json.loads((again / "analysis.json").read_text())["results"].values())[0][
        "drift"].keys() == {"encoder"}


def test_the_effective_rank_example_is_a_number_metric():
    code = _block("class EffectiveRank:")
    module = _module("erank_example", code)
    from framework._base.metrics import MetricKind

    assert module.EffectiveRank.metric_kinds["erank"] == MetricKind.number(higher_is_better=True)
    feats = torch.randn(64, 8)
    values = module.EffectiveRank(None).evaluate(Features("student", feats, torch.zeros(64), feats,
                                                         torch.zeros(64), 2), None)
    assert 6.0 < values["erank"] <= 8.0  # isotropic Gaussian features: close to full rank


def test_run_has_every_member_runview_promises_and_the_guide_lists_them(tmp_path, pm):
    run = Run(compose([*TINY, "data=digits", "data.train_size=64", "data.test_size=32"], pm.registry),
              tmp_path / "r", pm).setup()
    try:
        assert [name for name in PUBLIC if not hasattr(run, name)] == []
    finally:
        run.release()
    table = GUIDE.split("## What a plugin may use of a run", 1)[1].split("\n## ", 1)[0]
    assert [name for name in PUBLIC if f"`{name}" not in table and f" `{name}" not in table] == []
