"""The component registry and the plugin manager: names, attribution, errors, blocking."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from framework import hookimpl
from framework._base.errors import RtlabError, close_matches
from framework._contract.plugin_manager import DEFAULT_PLUGINS, create_plugin_manager
from framework._base.registry import Registry


def test_unknown_component_lists_close_matches(pm):
    with pytest.raises(RtlabError) as exc:
        pm.registry.get("student", "interpolate")
    msg = str(exc.value)
    assert "unknown student 'interpolate'" in msg
    assert "interpolated" in msg and "copy" in msg and "student=NAME" in msg
    assert "\n" not in msg


def test_close_matches_prefers_substrings_and_typos():
    names = ["resnet18", "resnet10t", "vit_tiny_patch16_224", "convnext_atto"]
    assert close_matches("resnt18", names)[0] == "resnet18"
    assert "vit_tiny_patch16_224" in close_matches("vit_tiny", names)


def test_every_builtin_component_is_attributed_to_its_plugin(pm):
    listing = {p["name"]: p for p in pm.listing()}
    assert set(listing) == {m.rsplit(".", 1)[-1] for m in DEFAULT_PLUGINS}
    assert {"kind": "teacher", "name": "random"} in listing["teachers"]["components"]
    assert {"kind": "evaluator", "name": "knn"} in listing["knn"]["components"]
    assert listing["tensorboard_log"]["settings"] == ["tensorboard"]
    assert all(p["builtin"] and p["version"] for p in listing.values())


def test_duplicate_names_and_bad_options_are_refused():
    registry = Registry()
    registry.current_plugin = "first"

    @dataclass
    class Opts:
        x: int = 1

    registry.add("loss", "mine", lambda o: o, Opts)
    registry.current_plugin = "second"
    with pytest.raises(RtlabError, match="contributed twice: by first and by second"):
        registry.add("loss", "mine", lambda o: o, Opts)
    with pytest.raises(TypeError, match="must be a dataclass"):
        registry.add("loss", "other", lambda o: o, dict)
    with pytest.raises(RtlabError, match="already taken"):
        registry.add_settings("train", Opts)


def test_blocked_plugins_are_not_loaded(monkeypatch):
    monkeypatch.setenv("RTLAB_BLOCK_PLUGINS", "tensorboard_log,knn")
    pm = create_plugin_manager(autoload=False)
    names = {p["name"] for p in pm.listing()}
    assert "tensorboard_log" not in names and "knn" not in names
    assert "tensorboard" not in pm.registry.settings
    with pytest.raises(RtlabError, match="unknown evaluator 'knn'"):
        pm.registry.get("evaluator", "knn")


def test_late_plugin_contributes_components_immediately(pm):
    @dataclass
    class ScaledOpts:
        scale: float = 2.0

    class LatePlugin:
        @hookimpl
        def rtlab_register(self, registry):
            registry.add("loss", "scaled", lambda o: o, ScaledOpts)

    pm.register(LatePlugin(), name="late")
    comp = pm.registry.get("loss", "scaled")
    assert comp.plugin == "late"
    built = pm.registry.build("loss", _named(ScaledOpts, "scaled", scale=3.0))
    assert built.scale == 3.0


def _named(cls, name, **kwargs):
    from framework._base.registry import Component, node_class

    node = node_class(Component("loss", name, None, cls, "x"))
    return node(**kwargs)
