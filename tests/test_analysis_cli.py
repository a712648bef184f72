"""`rtlab analyze` as users meet it: the listing, the choice of analysis, network specifications, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from framework.cli.main import main
from framework._base.errors import RtlabError
from plugins.analysis.imp import parse_target
from plugins.analysis.sources import parse_spec, start_overrides


def test_plugins_lists_every_analysis_and_the_commands(capsys):
    assert main(["plugins", "--json"]) == 0
    listing = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    for name in ("imp", "barrier", "landscape"):
        assert {"kind": "analysis", "name": name} in listing[name]["components"]
    assert listing["analysis"]["commands"] == ["analyze"] and listing["report"]["commands"] == ["report"]
    assert {"kind": "objective", "name": "supervised"} in listing["supervised"]["components"]


def test_the_command_chooses_the_analysis(capsys):
    assert main(["analyze", "barrier", "experiment=paper_fig8_imp_cpu"]) == 2
    assert "for analysis 'imp', not 'barrier'" in capsys.readouterr().err
    assert main(["analyze", "imp", "analysis=barrier"]) == 2
    assert "drop the analysis= override" in capsys.readouterr().err
    assert main(["analyze", "imp", "analysis.rouns=3"]) == 2
    assert "rouns" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["analyze", "prune"])
    assert "invalid choice: 'prune'" in capsys.readouterr().err


def test_network_specifications():
    spec = parse_spec("distilled=student:@run/epoch_5")
    assert (spec.label, spec.kind, spec.source, spec.slug) == ("distilled", "student", "@run/epoch_5", "distilled")
    assert parse_spec("random:7").seed == 7 and parse_spec("random").seed == 0
    overrides = start_overrides(parse_spec("supervised:@sup/epoch_2"), lambda name: Path("/r") / name)
    assert overrides == ["student=checkpoint", "student.path='/r/sup/checkpoints/epoch_2'", "student.weights=student",
                         "objective.classifier_from='/r/sup/checkpoints/epoch_2'"]
    assert start_overrides(parse_spec("random:3"), None) == ["student=independent", "student.seed=3"]
    target = parse_target("init=teacher:@d@2")
    assert (target.start.kind, target.start.source, target.epoch) == ("teacher", "@d", 2)
    assert parse_target("student:runs/x@y").epoch == 0
    for bad, hint in (("studnet:x", "network specification"), ("teacher", "names no checkpoint"),
                      ("random:x", "integer seed")):
        with pytest.raises(RtlabError, match=hint):
            parse_spec(bad)
