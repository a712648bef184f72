"""The shape of the code base that plugin authors and readers rely on: a small core without import cycles that
never imports the built-in plugins, a short loop, and plugin folders that say what they hold."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from conftest import ROOT
from framework.plugin_manager import DEFAULT_PLUGINS

FRAMEWORK = ROOT / "framework"
PLUGINS = ROOT / "plugins"


def _runtime_imports(path: Path) -> set[str]:
    """Modules ``path`` imports when it runs (module level or inside functions), not under ``TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for child in node.body for n in ast.walk(child)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from framework import distributed`
    return found


def _framework_graph() -> dict[str, set[str]]:
    modules = {f"framework.{p.stem}": p for p in FRAMEWORK.glob("*.py") if p.stem != "__init__"}
    return {m: {i for i in _runtime_imports(p) if i in modules and i != m} for m, p in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_framework_has_no_import_cycle():
    assert _cycle(_framework_graph()) is None


def test_framework_never_imports_plugins():
    offenders = {p.name: sorted(i for i in _runtime_imports(p) | _all_imports(p) if i.split(".")[0] == "plugins")
                 for p in FRAMEWORK.glob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def _all_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | {
        n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}


def test_the_loop_is_short_and_no_core_module_is_long():
    sizes = {p.name: len(p.read_text().splitlines()) for p in FRAMEWORK.glob("*.py")}
    assert sizes["run.py"] <= 250, sizes["run.py"]
    assert not {name: n for name, n in sizes.items() if n > 400}


def test_every_plugin_module_is_a_listed_plugin_or_a_declared_helper():
    """Each concern folder's docstring names its modules as plugins or helpers; the plugins are exactly the
    built-in list, and a plugin registers under its module's short name."""
    listed = set(DEFAULT_PLUGINS)
    for folder in sorted(p for p in PLUGINS.iterdir() if (p / "__init__.py").exists()):
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text())) or ""
        assert "plugin" in doc.lower(), f"plugins/{folder.name}/__init__.py does not say what the folder holds"
        for module in sorted(folder.glob("*.py")):
            if module.stem == "__init__":
                continue
            dotted = f"plugins.{folder.name}.{module.stem}"
            assert f"``{module.stem}``" in doc, f"plugins/{folder.name}/__init__.py does not describe {module.stem}"
            hooks = "@hookimpl" in module.read_text()
            assert hooks == (dotted in listed), f"{dotted}: hook implementations and DEFAULT_PLUGINS disagree"
    for dotted in listed:
        importlib.import_module(dotted)  # every listed plugin exists


def test_builtin_plugins_keep_their_short_names(pm):
    names = {info.name for info in pm.plugin_infos() if info.builtin}
    assert {"knn", "linear_probe", "distillation", "backbones", "metrics_log", "compare", "dino", "analysis"} <= names
    assert names == {m.rsplit(".", 1)[-1] for m in DEFAULT_PLUGINS}
