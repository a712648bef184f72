"""A failing analysis is reported like a failing hook, a refused one leaves nothing behind, options show their help,
and folders name the plugins they need."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from framework import hookimpl
from framework.cli.main import main
from framework._base.errors import PluginError, RtlabError
from framework._contract.plugin_manager import create_plugin_manager
from framework.api import AnalysisOptions
from plugins.analysis import declare_kind, render_folder, run_analysis


@dataclass
class FlakyOptions(AnalysisOptions):
    mode: str = "crash"  # crash: a ZeroDivisionError | refuse: an RtlabError at once
    widths: list = field(default_factory=lambda: [1, 2])  # how wide


class Flaky:
    def __init__(self, opts: FlakyOptions) -> None:
        if opts.mode not in ("crash", "refuse", "ok"):
            raise RtlabError(f"analysis.mode must be crash, refuse or ok, got '{opts.mode}'")
        self.opts = opts

    def run(self, ctx):
        if self.opts.mode == "refuse":
            raise RtlabError("analysis.widths must be sorted")
        if self.opts.mode == "crash":
            (ctx.out_dir / "partial.txt").write_text("half of the work")
            return {"value": 1 / 0}
        return {"value": 1}

    def render(self, out_dir, results):
        return f"value {results['value']}"


class FlakyPlugin:
    __name__ = "flaky_plugin"

    @hookimpl
    def rtlab_register(self, registry):
        declare_kind(registry)
        registry.add("analysis", "flaky", Flaky, FlakyOptions)


@pytest.fixture
def flaky_pm():
    return create_plugin_manager(extra_plugins=[FlakyPlugin()], autoload=False)


def test_a_crashing_analysis_is_recorded_and_named(flaky_pm, tmp_path):
    out = tmp_path / "a"
    with pytest.raises(PluginError) as err:
        run_analysis("flaky", [], str(out), flaky_pm)
    message = str(err.value)
    assert message.startswith("analysis 'flaky' (plugin flaky_plugin) failed: ZeroDivisionError: division by zero")
    assert str(out / "error.txt") in message and "\n" not in message
    record = json.loads((out / "analysis.json").read_text())
    assert record["status"] == "failed" and record["error"] == message
    assert "ZeroDivisionError" in (out / "error.txt").read_text()
    assert (out / "partial.txt").exists()  # what the analysis wrote stays
    with pytest.raises(RtlabError, match=r"has not finished \(failed\)"):
        render_folder(out, flaky_pm.registry)
    run_analysis("flaky", ["analysis.mode=ok"], str(tmp_path / "b"), flaky_pm)  # other options: another folder
    assert json.loads((tmp_path / "b" / "analysis.json").read_text())["status"] == "done"


def test_a_refused_analysis_creates_no_folder(flaky_pm, tmp_path):
    for bad in (["analysis.mode=sideways"], ["analysis.mode=refuse"]):
        with pytest.raises(RtlabError):
            run_analysis("flaky", bad, str(tmp_path / "out"), flaky_pm)
        assert not (tmp_path / "out").exists()


def test_analysis_help_shows_each_option_with_its_comment(capsys):
    with pytest.raises(SystemExit):
        main(["analyze", "imp", "--help"])
    text = capsys.readouterr().out
    assert "analysis.rounds=5" in text and "pruning rounds after the dense run" in text
    assert "analysis.fraction=0.2" in text and "of the remaining weights pruned per round" in text


def test_a_folder_names_the_missing_plugin_its_components_came_from(tmp_path, capsys):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "config.yaml").write_text("loss:\n  name: nmse\n")
    (run / ".hydra" / "overrides.yaml").write_text("- loss=nmse\n")
    (run / "plugins.json").write_text(json.dumps([{"name": "extras", "version": "0.1.0",
                                                   "components": [{"kind": "loss", "name": "nmse"}]}]))
    assert main(["train", f"resume={run}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rtlab: error: loss 'nmse' came from plugin extras 0.1.0, which is not installed")
    assert len(err.splitlines()) == 1


def test_an_unknown_analysis_says_how_analyses_are_run(flaky_pm):
    with pytest.raises(RtlabError, match=r"unknown analysis 'imb'; did you mean imp\?.*rtlab analyze NAME"):
        flaky_pm.registry.get("analysis", "imb")
