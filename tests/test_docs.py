"""The docs keep up with the code: every hook documented, the README's commands are the ones CI runs."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from framework._contract import hookspecs

ROOT = Path(__file__).resolve().parents[1]


def hook_names() -> list[str]:
    return [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("rtlab_")]


def test_every_hook_has_a_docstring_and_a_section_in_the_hook_reference():
    reference = (ROOT / "docs" / "hooks.md").read_text()
    names = hook_names()
    assert len(names) >= 10
    for name in names:
        assert (getattr(hookspecs, name).__doc__ or "").strip(), f"{name} has no docstring"
        assert re.search(rf"^### `?{name}`?", reference, re.M), f"{name} is not documented in docs/hooks.md"


def _fenced_commands(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", text, re.S)]


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = _fenced_commands(readme)
    test_cmd = next(b for b in blocks if "pytest" in b)
    assert test_cmd in ci
    install = next(b for b in blocks if "rtlab train" in b)
    for step in ("pip install torch==2.14.1 torchvision==0.29.1", "pip install -e '.[dev]'"):
        assert step in install and step.replace("pip install", "pip install -q") in ci


def test_every_doc_page_is_reachable_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, f"README does not link docs/{page.name}"
