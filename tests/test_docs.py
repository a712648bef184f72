"""The docs keep up with the code: every hook documented, the README's commands are the ones CI runs."""

from __future__ import annotations

import inspect
import re
import subprocess
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


def test_every_public_name_is_documented_on_the_api_page():
    """docs/api.md lists every name framework.api exports, so the face and its page cannot drift apart."""
    import framework.api as api

    page = (ROOT / "docs" / "api.md").read_text()
    missing = [n for n in api.__all__ if n != "__version__" and not re.search(rf"`{re.escape(n)}\b", page)]
    assert missing == []


def _project_files() -> list[Path]:
    """The repository's files outside tests/: git's tracked and new (not ignored) files, or a walk without git."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout.decode()
        names = [n for n in out.split("\0") if n]
    except (OSError, subprocess.CalledProcessError):  # a source tree without git (an unpacked sdist)
        skip = {".git", ".venv", "runs", "outputs", "multirun", "build", "dist", "__pycache__"}
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                 if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]
    return [ROOT / n for n in names if not n.startswith("tests/") and (ROOT / n).is_file()]


def test_nothing_outside_the_tests_cites_the_private_paper_notes():
    """Users do not have the developers' PAPER.md: docs, configs and code cite docs/paper.md instead."""
    files = _project_files()
    assert ROOT / "docs" / "paper.md" in files and ROOT / "README.md" in files
    assert [str(p.relative_to(ROOT)) for p in files if b"PAPER.md" in p.read_bytes()] == []


def _anchors(page: str) -> set[str]:
    """GitHub's heading anchors (lower case, punctuation dropped, spaces to hyphens) and explicit <a id>s."""
    headings = re.findall(r"^#+ (.+)$", page, re.M)
    slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
    return slugs | set(re.findall(r'<a id="([^"]+)">', page))


def test_every_citation_of_the_paper_page_names_a_section_it_has():
    page = (ROOT / "docs" / "paper.md").read_text()
    anchors = _anchors(page)
    assert {"evaluation-protocol", "table-1", "table-5", "fig-4", "fig-8", "alpha-in-float32"} <= anchors
    cited = {(f"docs/paper.md#{a}", str(p.relative_to(ROOT))) for p in _project_files()
             if p.suffix in {".md", ".py", ".yaml", ".sh"} for a in re.findall(r"paper\.md#([\w-]+)", p.read_text())}
    cited |= {(f"#{a}", "docs/paper.md") for a in re.findall(r"\]\(#([\w-]+)\)", page)}
    assert len(cited) > 50
    assert sorted(c for c in cited if c[0].split("#")[1] not in anchors) == []
