"""Which plugin a finished run's components came from (its ``plugins.json``), for messages about run folders whose
plugins are no longer installed: ``loss 'nmse' came from plugin extras 0.1.0, which is not installed``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from framework._base import paths
from framework._base.errors import RtlabError
from framework._base.registry import Registry

LISTING = paths.PLUGINS


def recorded_components(folder: Path) -> Iterator[tuple[str, str, str, str]]:
    """(kind, name, plugin, version) of every component the run in ``folder`` had loaded."""
    try:
        listing = json.loads((Path(folder) / LISTING).read_text())
    except (OSError, ValueError):
        return
    for plugin in listing if isinstance(listing, list) else []:
        for comp in plugin.get("components", []):
            yield comp.get("kind", "?"), comp.get("name", "?"), plugin.get("name", "?"), plugin.get("version", "")


def _selected_names(node: Any) -> set[str]:
    """Component names a config selects: every ``name`` value and the keys of multi-component groups."""
    names: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("name"), str):
            names.add(node["name"])
        for key, value in node.items():
            if isinstance(value, dict) and "name" in value:
                names.add(str(key))
            names |= _selected_names(value)
    elif isinstance(node, list):
        for value in node:
            names |= _selected_names(value)
    return names


def check_recorded_plugins(folder: Path, registry: Registry, config: Any) -> None:
    """Refuse, naming the plugin, when ``config`` (the run's settings as plain data) selects a component that the
    run's ``plugins.json`` attributes to a plugin that is not loaded now."""
    selected = _selected_names(config)
    for kind, name, plugin, version in recorded_components(folder):
        if name not in selected or not registry.has_kind(kind) or registry.has(kind, name):
            continue
        what = kind.replace("_", " ")
        raise RtlabError(f"{what} '{name}' came from plugin {plugin} {version}".rstrip() + ", which is not installed"
                         f" (recorded in {Path(folder) / LISTING}); install that plugin again to use {folder}")
