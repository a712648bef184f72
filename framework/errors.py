"""User-facing errors: one line that names the problem and the fix."""

from __future__ import annotations

import difflib
from typing import Iterable


class RtlabError(Exception):
    """An error caused by the user's input. The CLI prints its message on one line and exits with code 2."""

    exit_code = 2


def close_matches(name: str, choices: Iterable[str], n: int = 5) -> list[str]:
    """Known names that look like ``name`` (case-insensitive, substring matches first)."""
    choices = sorted(set(choices))
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
    subs = [c for c in choices if name.lower() in c.lower()] if len(name) >= 3 else []
    out: list[str] = []
    for c in subs[:n] + [lowered[h] for h in hits]:
        if c not in out:
            out.append(c)
    return out[:n]


def unknown_name(what: str, name: str, known: Iterable[str], hint: str = "") -> RtlabError:
    """``unknown <what> 'name'; did you mean …? known: …`` as an :class:`RtlabError`."""
    known = sorted(set(known))
    close = close_matches(name, known)
    msg = f"unknown {what} '{name}'"
    if close:
        msg += f"; did you mean {', '.join(close)}?"
    if len(known) <= 30:
        msg += f" Known: {', '.join(known) if known else '(none)'}."
    else:
        msg += f" ({len(known)} known)"
    if hint:
        msg += f" {hint}"
    return RtlabError(msg)
