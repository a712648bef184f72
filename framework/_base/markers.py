"""pluggy's markers for the project ``rtlab``: ``hookspec`` declares a hook, ``hookimpl`` implements one."""

from __future__ import annotations

import pluggy

PROJECT = "rtlab"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
