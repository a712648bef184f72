"""``rtlab`` sub-commands that plugins contribute through the ``rtlab_add_commands`` hook."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

from framework._base.errors import RtlabError


@dataclass
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


class CommandSet:
    """Sub-commands; plugins add theirs through the ``rtlab_add_commands`` hook."""

    def __init__(self) -> None:
        self.commands: dict[str, Command] = {}

    def add(self, name: str, help: str, configure: Callable[[argparse.ArgumentParser], None],
            run: Callable[[argparse.Namespace], int | None]) -> None:
        if name in self.commands:
            raise RtlabError(f"command '{name}' is contributed twice")
        self.commands[name] = Command(name, help, configure, run)
