"""Every error message quoted in docs/troubleshooting.md is one the code really prints.

A quoted message is compared with the string literals of framework/ and plugins/ word by word: a formatted value
in the code (``{path}``) matches any words of the quote, ``…``/``...`` in the quote skips text, and upper-case
placeholders in the quote (``DIR``, ``NAME``) stand for a formatted value. A message whose wording changed in the
code, or that no code prints any more, fails the test with its closest text.
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache

from conftest import ROOT

WILD = "\x00"
TOKEN = re.compile(r"\w+|[^\w\s]")


def _text(node: ast.AST) -> str | None:
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else " _WILD_ " for v in node.values)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _tokens(text: str) -> list[str]:
    return [WILD if t == "_WILD_" else t for t in TOKEN.findall(text)]


def _templates() -> list[list[str]]:
    """Every string literal of the code as tokens, and per function all its literals in source order joined by
    formatted values (messages built piece by piece: ``msg += f"; did you mean {…}?"``)."""
    out = []
    for folder in ("framework", "plugins"):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                text = _text(node)
                if text is not None and len(text) >= 12:
                    out.append(_tokens(text))
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    parts = sorted(((n.lineno, n.col_offset), t) for n in ast.walk(node)
                                   if isinstance(n, (ast.JoinedStr, ast.Constant)) and (t := _text(n)))
                    out.append(_tokens(" _WILD_ ".join(t for _, t in parts)))
    return out


def _matches(doc: list[str], code: list[str]) -> bool:
    """Whether ``doc`` equals a contiguous stretch of ``code``, a formatted value absorbing any words of the quote
    (its upper-case placeholders among them). The stretch must be mostly literal text (at least three literal
    tokens, more than the formatted values it uses), so a template of bare values matches nothing. The quote may
    start inside a formatted value: its leading punctuation and first word."""
    none = -10 ** 6

    @lru_cache(maxsize=None)
    def at(i: int, j: int) -> tuple[int, int]:  # (literal tokens, formatted values) of the best match of doc[i:]
        if i == len(doc):
            return 0, 0
        if j == len(code):
            return none, 0
        if code[j] == WILD:
            lit, wild = max((at(k, j + 1) for k in range(i, len(doc) + 1)), key=lambda m: m[0] - m[1])
            return lit, wild + 1
        if doc[i] != code[j]:
            return none, 0
        lit, wild = at(i + 1, j + 1)
        return lit + 1, wild

    lead = next((k for k, t in enumerate(doc) if t[0].isalnum()), len(doc)) + 1
    starts = [(0, j) for j in range(len(code)) if code[j] != WILD]
    starts += [(i, j) for j in range(1, len(code)) if code[j - 1] == WILD for i in range(1, min(lead, len(doc)) + 1)]
    return any(lit >= 3 and lit > wild for lit, wild in (at(i, j) for i, j in starts))


def _placeholder(token: str) -> bool:
    return token.isupper() and token.isalpha() and len(token) <= 4 or token in ("NAME", "PATH", "KIND", "HOOK")


def quoted_messages() -> list[str]:
    """Backticked messages of the first column of every table row (at least four words)."""
    found = []
    for line in (ROOT / "docs" / "troubleshooting.md").read_text().splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split(" | ")[0]
        found += [m for m in re.findall(r"`([^`]+)`", cell) if len(m.split()) >= 4]
    return found


def _chunks(message: str) -> list[list[str]]:
    parts = re.split(r"…|\.\.\.", message)
    return [toks for toks in (TOKEN.findall(p) for p in parts) if len(toks) >= 3]


def test_the_matcher_tells_real_messages_from_stale_ones():
    code = [TOKEN.findall("no images found under ") + [WILD] + TOKEN.findall("; check data.path")]
    ok = TOKEN.findall("no images found under DIR; check data.path")
    stale = TOKEN.findall("no pictures found under DIR; check data.path")
    assert any(_matches(ok, c) for c in code) and not any(_matches(stale, c) for c in code)


# Quoted text that OmegaConf, not rtlab, writes (rtlab passes its validation message through).
THIRD_PARTY = ("is not a valid bool", "is not a ListConfig", "could not be converted to")


def test_every_quoted_message_is_printed_by_the_code():
    templates = _templates()
    assert len(quoted_messages()) > 40
    missing = []
    for message in quoted_messages():
        if any(text in message for text in THIRD_PARTY):
            continue
        for chunk in _chunks(message):
            if not any(_matches(chunk, t) for t in templates):
                missing.append(" ".join(chunk))
    assert not missing, "\n".join(missing)
