"""The plugin listing kept on disk, so ``rtlab --help`` and ``rtlab plugins`` answer without importing torch.

Loading the plugins imports torch, timm and the rest (≈ 7 s on an idle 2-core machine); the listing they produce
(plugins, components, presets, settings, hooks, commands) only changes when their code does. Every command that
loads the plugins stores the listing under a key made of everything it depends on: the rtlab version, the Python
interpreter, the plugin environment variables (``RTLAB_*``), the built-in plugin list, the size and modification
time of every source file of ``framework/`` and ``plugins/``, and each ``rtlab`` entry point with its package
version and source files. A different key is a miss: the plugins load and the listing is stored again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from framework import __version__
from framework._base.files import atomic_write_json, cache_dir
from framework._contract.plugin_manager import DEFAULT_PLUGINS, ENTRY_POINT_GROUP

KEEP = 8  # listings kept (one per key: environments sharing the cache folder do not evict each other)
_IGNORED_ENV = {"RTLAB_CACHE_DIR", "RTLAB_LOG_LEVEL"}


def _sources(package: str) -> list[str]:
    """(path, size, mtime) of every ``.py`` file of a top-level package or module, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return [f"{package}:missing"]
    if spec is None:
        return [f"{package}:missing"]
    roots = list(spec.submodule_search_locations or []) or ([spec.origin] if spec.origin else [])
    out = []
    for root in roots:
        files = [Path(root)] if Path(root).is_file() else sorted(Path(root).rglob("*.py"))
        for f in files:
            try:
                st = f.stat()
            except OSError:
                continue
            out.append(f"{f}:{st.st_size}:{st.st_mtime_ns}")
    return out


def key() -> str:
    """What the plugin listing depends on, hashed (see the module docstring)."""
    parts = [__version__, sys.executable, sys.version, *DEFAULT_PLUGINS]
    parts += sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith("RTLAB_") and k not in _IGNORED_ENV)
    parts += _sources("framework") + _sources("plugins")
    for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = f"{ep.dist.name}=={ep.dist.version}" if ep.dist is not None else "?"
        parts += [f"ep:{ep.name}={ep.value}:{dist}", *_sources(ep.value.split(":")[0].split(".")[0])]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _path(k: str) -> Path:
    return cache_dir() / f"plugin-listing-{k[:24]}.json"


def load() -> dict[str, Any] | None:
    """The stored listing (``plugins``: as ``rtlab plugins --json`` prints it, ``commands``: name → help) when its
    key is current, else None."""
    k = key()
    try:
        data = json.loads(_path(k).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != k:
        return None
    return data


def store(plugins: list[dict[str, Any]], commands: dict[str, str]) -> None:
    """Keep the listing for the next ``rtlab --help`` / ``rtlab plugins`` (atomically; the oldest beyond
    :data:`KEEP` are removed; a read-only cache folder is skipped)."""
    k = key()
    path = _path(k)
    try:
        atomic_write_json(path, {"key": k, "plugins": plugins, "commands": commands}, sync_dir=False)
        old = sorted(path.parent.glob("plugin-listing-*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for stale in old[KEEP:]:
            stale.unlink(missing_ok=True)
    except OSError:
        pass
