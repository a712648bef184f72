"""Checkpoints of the run (safetensors + JSON, atomic): every ``checkpoint.every`` epochs and at the end.

``checkpoints/final`` holds the final student and teacher; ``checkpoints/epoch_N`` the periodic ones and those
listed in ``checkpoint.epochs`` (e.g. the rewind points of lottery-ticket analyses). ``checkpoints/last``, the
training state for resume, is the core's (``train.state_every``/``train.state_steps``).

``rtlab checkpoint PATH…`` checks checkpoints (every file complete, hashes match) and describes them;
``--to-safetensors OUT`` converts a ``.pt``/``.pth``/``.bin`` weights file (read with ``weights_only=True``,
never unpickling code) into an rtlab checkpoint.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

from framework.api import hookimpl, RtlabError


@dataclass
class CheckpointSettings:
    every: int = 0  # epochs between periodic checkpoints (0 = none)
    final: bool = True  # write checkpoints/final at the end of training
    epochs: List[int] = field(default_factory=list)  # also write checkpoints/epoch_N after these epochs


@hookimpl
def rtlab_register(registry):
    registry.add_settings("checkpoint", CheckpointSettings)


@hookimpl
def rtlab_epoch_end(run, epoch):
    every = run.cfg.checkpoint.every
    if (every and epoch % every == 0) or epoch in run.cfg.checkpoint.epochs:
        run.save_checkpoint(f"epoch_{epoch}")


@hookimpl
def rtlab_summarize(run, summary):
    if run.cfg.checkpoint.final:
        path = run.save_checkpoint("final")
        summary["checkpoint"] = str(path.relative_to(run.out_dir).with_suffix(""))


# ------------------------------------------------------------------------------------------ rtlab checkpoint
def describe(path: str) -> str:
    """One line about a checkpoint after it loaded completely (hash checked where there is one)."""
    from framework.api import load_weights

    tensors, meta = load_weights(path)
    params = sum(t.numel() for t in tensors.values())
    parts = [f"{path}: ok", f"{len(tensors)} tensors", f"{params:,} values"]
    if meta.get("kind"):
        parts.append(str(meta["kind"]))
    if "step" in meta:
        parts.append(f"step {meta['step']}, epoch {meta.get('epoch')}")
    backbone = meta.get("backbone")
    if isinstance(backbone, dict) and backbone.get("name"):
        parts.append(f"backbone {backbone['name']}")
    return ", ".join(parts)


def _configure(parser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="run folder, rtlab checkpoint (NAME, NAME.json or NAME.safetensors), .safetensors, "
                             ".pt/.pth/.bin file")
    parser.add_argument("--to-safetensors", metavar="OUT",
                        help="write the tensors of one PATH as the rtlab checkpoint OUT (OUT.safetensors + OUT.json)")


def _run(args) -> int:
    from framework.api import load_weights, save_checkpoint

    if args.to_safetensors and len(args.paths) != 1:
        raise RtlabError("--to-safetensors converts one file at a time; give a single PATH")
    for path in args.paths:
        print(describe(path))
    if args.to_safetensors:
        tensors, meta = load_weights(args.paths[0])
        out = save_checkpoint(Path(args.to_safetensors), tensors,
                              {**meta, "kind": meta.get("kind", "weights"), "converted_from": args.paths[0]})
        print(f"wrote {out} and {out.with_suffix('.safetensors')}", file=sys.stderr)
    return 0


@hookimpl
def rtlab_add_commands(commands):
    commands.add("checkpoint", "check that checkpoints are complete and describe them; convert .pt/.pth files "
                 "safely (--to-safetensors)", _configure, _run)
