"""Where an analysis starts: network specifications shared by every analysis.

A specification is ``[LABEL=]KIND[:SOURCE]``:

* ``random`` or ``random:SEED`` — a fresh initialisation from ``SEED`` (default 0);
* ``student:SOURCE`` / ``teacher:SOURCE`` — the student or teacher network of an rtlab checkpoint (for
  supervised runs: its encoder, with a fresh classifier);
* ``supervised:SOURCE`` — a checkpoint of a supervised run: encoder *and* classifier (e.g. epoch l of a
  supervised run).

``SOURCE`` is a checkpoint (``runs/X/checkpoints/epoch_2``), a run folder (its ``checkpoints/final``), or
``@NAME[/CHECKPOINT]``: the run ``NAME`` of the analysis's own ``analysis.pretrain`` section (trained first,
inside the analysis folder), at ``CHECKPOINT`` (default ``final``; ``initial`` is the network before training).
``LABEL`` names the curve in plots and tables (default: the specification itself).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from framework.api import load_checkpoint, paths, RtlabError, strip_prefix

KINDS = ("random", "student", "teacher", "supervised")
SPEC_HELP = ("a network is random[:SEED], student:SOURCE, teacher:SOURCE or supervised:SOURCE, where SOURCE is a "
             "checkpoint, a run folder or @NAME[/CHECKPOINT] (a run of analysis.pretrain)")


@dataclass(frozen=True)
class NetworkSpec:
    """One parsed specification; ``source`` is unresolved (``@NAME/...`` or a path)."""

    text: str
    kind: str
    source: Optional[str] = None
    seed: int = 0
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.text

    @property
    def slug(self) -> str:
        """A folder name for runs that start here."""
        text = re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9._-]+", "_", self.name)).strip("_.")
        return text[:80] or "start"


def parse_spec(text: str) -> NetworkSpec:
    """A :class:`NetworkSpec` from ``[LABEL=]KIND[:SOURCE]``; bad input raises :class:`RtlabError`."""
    raw = str(text).strip()
    label = ""
    if "=" in raw.split(":", 1)[0]:
        label, raw = (part.strip() for part in raw.split("=", 1))
    kind, _, source = raw.partition(":")
    if kind not in KINDS:
        raise RtlabError(f"'{text}' is not a network specification; {SPEC_HELP}")
    if kind == "random":
        try:
            seed = int(source) if source else 0
        except ValueError:
            raise RtlabError(f"'{text}': random takes an integer seed (random:3)") from None
        return NetworkSpec(raw, kind, None, seed, label)
    if not source:
        raise RtlabError(f"'{text}' names no checkpoint; write {kind}:runs/RUN/checkpoints/final or {kind}:@NAME")
    return NetworkSpec(raw, kind, source, 0, label)


def resolve_source(source: str, pretrained: Callable[[str], Path]) -> Path:
    """The checkpoint a source names; ``pretrained(NAME)`` returns (training it first) a pretrain run's folder."""
    if source.startswith("@"):
        name, _, checkpoint = source[1:].partition("/")
        return paths.checkpoint(pretrained(name), checkpoint or paths.FINAL)
    return Path(source).expanduser()


def start_overrides(spec: NetworkSpec, pretrained: Callable[[str], Path]) -> list[str]:
    """Hydra overrides that make a supervised run start at ``spec`` (same encoder, same classifier init)."""
    if spec.kind == "random":
        return ["student=independent", f"student.seed={spec.seed}"]
    path = _quoted(resolve_source(spec.source or "", pretrained))
    weights = "teacher" if spec.kind == "teacher" else "student"
    out = ["student=checkpoint", f"student.path={path}", f"student.weights={weights}"]
    if spec.kind == "supervised":
        out.append(f"objective.classifier_from={path}")
    return out


def network_state(spec: NetworkSpec, pretrained: Callable[[str], Path],
                  fresh: Optional[Callable[[int], torch.nn.Module]]) -> dict[str, torch.Tensor]:
    """The full network (encoder + head) state of ``spec``; ``fresh(seed)`` builds a random network."""
    if spec.kind == "random":
        if fresh is None:
            raise RtlabError(f"'{spec.text}': a random network needs the architecture of a run")
        return {k: v.detach().clone() for k, v in fresh(spec.seed).state_dict().items()}
    if spec.kind == "supervised":
        raise RtlabError(f"'{spec.text}': this analysis needs a student or teacher network, not a supervised one")
    path = resolve_source(spec.source or "", pretrained)
    tensors, _ = load_checkpoint(path)
    state = strip_prefix(tensors, f"{spec.kind}.")
    if not state:
        raise RtlabError(f"checkpoint {path} has no {spec.kind} network")
    return state


def _quoted(path: Path) -> str:
    text = str(path).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"
