"""The shape of the code base that plugin authors and readers rely on: a small core without import cycles that
never imports the built-in plugins, a short loop, and plugin folders that say what they hold."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from conftest import ROOT
from framework._contract.plugin_manager import DEFAULT_PLUGINS

FRAMEWORK = ROOT / "framework"
PLUGINS = ROOT / "plugins"


# The packages of framework/, lowest first: each imports only itself and those before it (``api``, the public
# face, sits on top; the root package module imports only ``_base``).
LAYERS = ("_base", "_nets", "_data", "_contract", "_config", "_run", "cli", "api")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> dict[str, int]:
    """Every framework module ``path`` imports, with the line: at module level, inside functions and under
    ``TYPE_CHECKING`` alike (a typing-only import is still a dependency a reader follows)."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from framework._nets import distributed` names a module
                full = f"{node.module}.{alias.name}"
                found.setdefault(full if full in known else node.module, node.lineno)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                found.setdefault(alias.name, node.lineno)
    return {m: line for m, line in found.items() if m in known}


def _framework_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in FRAMEWORK.rglob("*.py")}


def _framework_graph() -> dict[str, set[str]]:
    modules = _framework_modules()
    return {m: set(_imports(p, set(modules))) - {m} for m, p in modules.items()}


def _layer(module: str) -> str | None:
    """The package of a framework module; None for the root package module. ``python -m framework`` is an entry
    point like the face, on top."""
    parts = module.split(".")
    return None if len(parts) == 1 else "api" if parts[1] == "__main__" else parts[1]


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


def _upward_imports() -> list[str]:
    modules = _framework_modules()
    bad = []
    for m, p in sorted(modules.items()):
        for dep, line in _imports(p, set(modules)).items():
            here, there = _layer(m), _layer(dep)
            if there is None or there == here:
                continue
            rank = LAYERS.index(here) if here is not None else 0  # the root module may import _base only
            if LAYERS.index(there) > rank:
                bad.append(f"{p.relative_to(ROOT)}:{line} imports {dep}")
    return bad


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_framework_has_no_import_cycle():
    """No cycle between any two modules, counting imports inside functions and under TYPE_CHECKING."""
    assert _cycle(_framework_graph()) is None


def test_the_layer_check_sees_typing_and_function_level_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from framework._run.loop import Run\n"
                      "def f():\n    from framework.cli import main\n")
    assert set(_imports(source, {"framework._run.loop", "framework.cli"})) == {"framework._run.loop", "framework.cli"}


def test_framework_packages_import_only_downwards():
    assert LAYERS == tuple(sorted({_layer(m) for m in _framework_modules() if _layer(m)}, key=LAYERS.index))
    assert _upward_imports() == []


def test_plugins_import_only_the_public_face():
    """Built-in plugins use framework.api and nothing else of framework, as a third-party plugin would."""
    known = set(_framework_modules())
    offenders = {}
    for path in sorted(PLUGINS.rglob("*.py")):
        used = sorted(m for m in _imports(path, known) if m != "framework.api")
        if used:
            offenders[str(path.relative_to(ROOT))] = used
    assert offenders == {}


def test_the_public_face_exports_what_it_lists():
    import framework.api as api

    assert len(set(api.__all__)) == len(api.__all__)
    assert [n for n in api.__all__ if not hasattr(api, n)] == []


def test_framework_never_imports_plugins():
    offenders = {p.name: sorted(i for i in _all_imports(p) if i.split(".")[0] == "plugins")
                 for p in FRAMEWORK.rglob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def _all_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | {
        n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}


def test_the_loop_is_short_and_no_core_module_is_long():
    sizes = {str(p.relative_to(FRAMEWORK)): len(p.read_text().splitlines()) for p in FRAMEWORK.rglob("*.py")}
    assert sizes["_run/loop.py"] <= 250, sizes["_run/loop.py"]
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


def test_every_lazy_import_says_why():
    """An import inside a function hides a dependency; it stays only where it keeps `rtlab --help` free of torch or
    defers a heavy library (timm, datasets), and then says so: `# lazy: …` on its line, or a module-level
    `# Lazy imports: …` note for a module whose functions all import lazily."""
    unexplained = []
    for path in sorted(FRAMEWORK.rglob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        if any(line.startswith("# Lazy imports:") for line in lines):
            continue
        for fn in ast.walk(ast.parse(text)):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)) and "# lazy:" not in lines[node.lineno - 1]:
                        unexplained.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert unexplained == []
