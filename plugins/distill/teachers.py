"""Teacher initialisers.

* ``random`` — a network at a fresh random initialisation, determined by ``seed`` alone (docs/paper.md#objective);
* ``checkpoint`` — a trained network: the ``student`` or ``teacher`` of an earlier rtlab run (``path`` = its run
  folder or one of its checkpoints), a plain weights file — safetensors, or a torch ``.pt``/``.pth``/``.bin``
  state dict, read with ``torch.load(weights_only=True)`` so that no pickled code runs — holding a whole network
  or a bare timm backbone (whose head then starts at ``seed``'s init), or timm's pretrained weights for the backbone
  (``pretrained=true``; needs the Hugging Face Hub);
* ``restart`` — the converged student of an earlier run becomes the new frozen teacher (docs/paper.md#fig-18: the second
  round); the student initialiser then starts the new student from it as usual.

Every teacher starts in eval mode with no gradients; the updater's ``bn_mode`` decides what its batch norm does.
The checkpoint reading is :func:`framework.api.load_network_checkpoint`, usable by any plugin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from framework.api import freeze, hookimpl, load_network_checkpoint, load_network_state, RtlabError

WHICH = ("student", "teacher")


@dataclass
class RandomTeacherOptions:
    seed: int = 0  # the teacher is determined by this seed alone


class RandomTeacher:
    """A randomly initialised teacher, in eval mode (BatchNorm uses its initial statistics), never trained."""

    def __init__(self, opts: RandomTeacherOptions) -> None:
        self.opts = opts

    def build(self, run):
        return freeze(run.new_network(self.opts.seed))


@dataclass
class CheckpointTeacherOptions:
    # an rtlab run folder, a checkpoint (base, .json or .safetensors) or a weights file (.safetensors, or a torch
    # .pt/.pth/.bin state dict: loaded with weights_only=True, pickled objects are refused)
    path: Optional[str] = None
    which: str = "student"  # the network of an rtlab checkpoint to use: student | teacher
    encoder_only: bool = False  # load only the backbone; the head keeps the init from seed
    pretrained: bool = False  # timm's pretrained backbone weights instead of path (needs the Hub)
    seed: int = 0  # init of whatever the checkpoint does not hold (e.g. the head under a bare backbone)


def _pretrained_backbone_state(run) -> dict:
    import timm

    from framework.api import to_options

    opts = to_options(run.cfg.backbone)
    try:
        model = timm.create_model(opts.name, pretrained=True, num_classes=0, in_chans=run.data.channels,
                                  **opts.kwargs)
    except Exception as exc:  # offline, no weights for this model, …
        raise RtlabError(f"timm has no pretrained weights for '{opts.name}' here ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:120]}); the Hugging Face Hub must be reachable, or give "
                         "teacher.path=WEIGHTS.safetensors") from None
    return model.state_dict()


class CheckpointTeacher:
    """A trained teacher: a network of an earlier run, a weights file, or timm's pretrained backbone."""

    def __init__(self, opts: CheckpointTeacherOptions) -> None:
        if opts.which not in WHICH:
            raise RtlabError(f"teacher.which must be student or teacher, got '{opts.which}'")
        if not opts.path and not opts.pretrained:
            raise RtlabError("teacher=checkpoint needs teacher.path=RUN_DIR (or a checkpoint/weights file) or "
                             "teacher.pretrained=true")
        self.opts = opts

    def build(self, run):
        net = run.new_network(self.opts.seed)
        if self.opts.pretrained:
            load_network_state(net.encoder, _pretrained_backbone_state(run), "", f"timm:{run.cfg.backbone.name}")
            run.summary["teacher_checkpoint"] = f"timm pretrained {run.cfg.backbone.name}"
        else:
            meta = load_network_checkpoint(net, self.opts.path, self.opts.which, self.opts.encoder_only)
            run.summary["teacher_checkpoint"] = {"path": str(self.opts.path), "which": self.opts.which,
                                                 "step": meta.get("step"), "epoch": meta.get("epoch")}
        return freeze(net)


@dataclass
class RestartTeacherOptions:
    path: Optional[str] = None  # the run folder (or checkpoint) of the previous round


class RestartTeacher:
    """The converged student of the previous round becomes the frozen teacher (docs/paper.md#fig-18)."""

    def __init__(self, opts: RestartTeacherOptions) -> None:
        if not opts.path:
            raise RtlabError("teacher=restart needs teacher.path=RUN_DIR, the folder of the previous round's run")
        self.opts = opts

    def build(self, run):
        net = run.new_network(0)
        meta = load_network_checkpoint(net, self.opts.path, "student")
        previous = meta.get("restart_round", 1)
        run.summary["restart_round"] = previous + 1
        run.summary["teacher_checkpoint"] = {"path": str(self.opts.path), "which": "student",
                                             "step": meta.get("step"), "epoch": meta.get("epoch")}
        return freeze(net)


@hookimpl
def rtlab_register(registry):
    registry.add("teacher", "random", RandomTeacher, RandomTeacherOptions)
    registry.add("teacher", "checkpoint", CheckpointTeacher, CheckpointTeacherOptions)
    registry.add("teacher", "restart", RestartTeacher, RestartTeacherOptions)


@hookimpl
def rtlab_checkpoint_save(run, tensors, meta):
    if "restart_round" in run.summary:
        meta["restart_round"] = run.summary["restart_round"]
