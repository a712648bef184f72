"""``rtlab probe SOURCE [OVERRIDES]``: rtlab's evaluation of a network rtlab did not train; docs/probing.md.

SOURCE is anything ``teacher.path`` reads (:func:`framework.api.load_network_checkpoint`): an ``rtlab export``
folder or another timm model folder (``config.json`` + ``model.safetensors``: the backbone is read from it), an
rtlab run or checkpoint, or a weights file — safetensors, or a torch ``.pt``/``.pth``/``.bin``/``.ckpt`` state
dict as lightly, solo-learn, Lightning or a plain ``torch.save`` write it (read with ``weights_only=True``;
wrappers such as ``state_dict.``, ``module.`` and ``backbone.`` are found, and a backbone saved as an
``nn.Sequential`` is matched by position and shape). For a weights file give the architecture: ``backbone=NAME``
(and ``backbone.stem=timm`` for an ImageNet-style stem on small images).

The probe is an ordinary run folder (``runs/probe/<time>/``) with no training: ``train.epochs=0``, the network
loaded as the teacher and copied into the student, and the configured evaluation — every evaluator, ``eval.layers``,
``eval.datasets``, the protocol in ``config.yaml``, the final table, ``summary.json`` — on ``data=`` any dataset.
The network's results are the ``student`` row (``knn/student``); ``eval.targets`` adds ``teacher_bn`` (the
network with its batch-norm statistics re-estimated on the probe data) and defaults to ``[student, input]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from framework.api import RtlabError, hookimpl, paths

WHICH = ("student", "teacher")


def _value(v: Any) -> str:
    """A Hydra override value for a JSON value."""
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str) and not v.replace("_", "").replace("-", "").replace(".", "").isalnum():
        return "'" + v.replace("'", "\\'") + "'"
    return str(v)


def _recorded_backbone(source: Path) -> dict | None:
    """The resolved backbone options an rtlab run folder's final checkpoint, or an rtlab checkpoint, records."""
    record = paths.final(source).with_suffix(".json") if source.is_dir() else source.with_suffix(".json")
    try:
        return json.loads(record.read_text())["meta"]["backbone"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def backbone_overrides(source: str) -> list[str]:
    """The ``backbone=…`` overrides of a source that says what it is: a model folder's ``config.json`` (an ``rtlab
    export``: the resolved options it records; another timm folder: its architecture and constructor arguments) or
    an rtlab run's checkpoint; nothing for weights files."""
    path = Path(source).expanduser() / "config.json"
    recorded = _recorded_backbone(Path(source).expanduser())
    if recorded is not None:
        return _as_overrides(recorded)
    if not path.is_file():
        return []
    try:
        config = json.loads(path.read_text())
        args = dict(config.get("model_args") or {})
        options = (config.get("rtlab") or {}).get("backbone") or (
            args["backbone"] if config["architecture"] == "rtlab_backbone" else
            {"name": config["architecture"], "stem": "timm", "init": "timm",
             "kwargs": {k: v for k, v in args.items() if k not in ("num_classes", "in_chans")}})
    except (ValueError, KeyError, TypeError) as exc:
        raise RtlabError(f"{path} is not a timm model config ({type(exc).__name__}: {exc}); give the backbone with "
                         "backbone=NAME and the weights file as SOURCE") from None
    return _as_overrides(options)


def _as_overrides(options: dict) -> list[str]:
    return [f"backbone={options['name']}"] + [f"backbone.{k}={_value(v)}" for k, v in options.items()
                                              if k != "name" and not (k == "kwargs" and not v)]


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def probe_overrides(source: str, which: str, overrides: list[str]) -> list[str]:
    """The ``rtlab train`` overrides of a probe: the defaults below, then the user's (which replace them)."""
    if which not in WHICH:
        raise RtlabError(f"--which must be student or teacher, got '{which}'")
    if not Path(source).expanduser().exists():
        raise RtlabError(f"rtlab probe: {source} does not exist; give a model folder, an rtlab run or checkpoint, "
                         "or a weights file (.safetensors, .pt, .pth, .bin, .ckpt)")
    path = str(Path(source).expanduser().resolve()).replace("'", "\\'")
    fixed = ["train.epochs=0", "train.sample_budget=null", "teacher=checkpoint", f"teacher.path='{path}'",
             f"teacher.which={which}", "teacher.encoder_only=true", "student=copy"]
    given = {_key(o) for o in overrides}
    clash = [o for o in overrides if _key(o) in {_key(f) for f in fixed}]
    if clash:
        raise RtlabError(f"rtlab probe evaluates SOURCE without training and sets {_key(clash[0])} itself; drop "
                         f"{clash[0]} (to train from this network: rtlab train teacher=checkpoint teacher.path=SOURCE)")
    defaults = ["name=probe", "checkpoint.final=false", "eval.targets=[student,input]", *backbone_overrides(source)]
    return fixed + [o for o in defaults if _key(o) not in given] + list(overrides)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE",
                        help="a model folder (rtlab export, timm), an rtlab run or checkpoint, or a weights file")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides: data=…, backbone=… (for a weights file), "
                        "evaluator=[…], eval.layers=[…], hydra.run.dir=…")
    parser.add_argument("--which", default="student", choices=WHICH,
                        help="the network of an rtlab run or checkpoint (default: student)")


def command(args: argparse.Namespace) -> int:
    from framework.api import train_command

    overrides = probe_overrides(args.source, args.which, list(args.overrides))
    code = train_command(overrides)
    if code == 0:
        same = [o for o in overrides if o.startswith(("teacher.path", "backbone"))]
        print("rtlab probe: to distil from this network: rtlab train teacher=checkpoint teacher.encoder_only=true "
              + " ".join(same), file=sys.stderr)
    return code


@hookimpl
def rtlab_add_commands(commands):
    commands.add("probe", "rtlab's evaluation of a network rtlab did not train (an export, timm, lightly, "
                 "solo-learn weights)", configure, command)
