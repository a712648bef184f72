"""The training state: everything a run needs to continue after a crash exactly as if it had never stopped.

``checkpoints/last`` (safetensors + JSON, see :mod:`framework._nets.checkpoint`) holds

* the student and teacher (weights and buffers), the optimiser's state;
* every random stream: torch's global CPU (and CUDA) generators, Python's ``random``, NumPy's global generator,
  the run's data-order and augmentation generators;
* the position in the data: the current epoch's permutation and how many of its batches were trained;
* counters (step, epoch), the evaluation history and latest metrics, the summary so far, and the partial sums
  of the training metrics not yet logged;
* the state of every **stateful component**: a component (teacher initialiser, student initialiser, updater,
  objective, loss, augmentation, optimiser factory, evaluator) with ``state_dict()`` and
  ``load_state_dict(state)`` methods is saved and restored automatically — an ``nn.Module`` component
  qualifies as it is. ``state_dict()`` may hold tensors, numbers, strings, ``None`` and (nested) lists,
  tuples and dicts; tensors go to the safetensors file, the rest to the JSON;
* whatever plugins add through the ``rtlab_checkpoint_save`` hook (and restore in ``rtlab_checkpoint_load``).

The state is captured only at step boundaries, after the finiteness guard passed, so a saved state is always
a good one.
"""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch

from framework._nets.checkpoint import checkpoint_paths, load_checkpoint, save_checkpoint
from framework._base.errors import RtlabError
from framework._nets.models import load_network_state
from framework._base import paths
from framework._base.files import NO_SPACE

if TYPE_CHECKING:
    from framework._run.internals import RunInternals as Run

log = logging.getLogger("rtlab")

STATE_KIND = "train_state"
STATE_VERSION = 1


# ------------------------------------------------------------------------------------------------------ packing
def pack(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``obj`` as JSON, with each tensor moved to ``tensors[<dotted path>]`` and replaced by a reference."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach()
        return {"$tensor": key}
    if isinstance(obj, np.ndarray):
        return {"$ndarray": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"$float": repr(obj)}
    if isinstance(obj, tuple):
        return {"$tuple": [pack(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [pack(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: pack(v, f"{key}.{k}", tensors) for k, v in obj.items()}
        return {"$items": [[pack(k, f"{key}.k{i}", tensors), pack(v, f"{key}.{k}", tensors)]
                           for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, torch.dtype):
        return {"$dtype": str(obj).replace("torch.", "")}
    raise RtlabError(f"state entry '{key}' is a {type(obj).__name__}; a state_dict may hold tensors, numbers, "
                     "strings, None, lists, tuples and dicts")


def unpack(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The inverse of :func:`pack`."""
    if isinstance(obj, list):
        return [unpack(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "$tensor" in obj:
        try:
            return tensors[obj["$tensor"]]
        except KeyError:
            raise RtlabError(f"the training state lacks tensor '{obj['$tensor']}'; the checkpoint is incomplete"
                             ) from None
    if "$ndarray" in obj:
        return np.asarray(obj["$ndarray"], dtype=obj["dtype"])
    if "$float" in obj:
        return float(obj["$float"])
    if "$tuple" in obj:
        return tuple(unpack(v, tensors) for v in obj["$tuple"])
    if "$items" in obj:
        return {unpack(k, tensors): unpack(v, tensors) for k, v in obj["$items"]}
    if "$dtype" in obj:
        return getattr(torch, obj["$dtype"])
    return {k: unpack(v, tensors) for k, v in obj.items()}


# ---------------------------------------------------------------------------------------------------- randomness
def global_rng_state() -> dict[str, Any]:
    """torch's global generators (CPU and every initialised CUDA device), Python's and NumPy's."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuples(state["python"]))
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def _as_tuples(obj: Any) -> Any:
    """Python's random state is nested tuples (JSON turns them into lists when written by older versions)."""
    return tuple(_as_tuples(v) for v in obj) if isinstance(obj, (list, tuple)) else obj


# ----------------------------------------------------------------------------------------------- stateful parts
def is_stateful(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


def components(run: "Run") -> dict[str, Any]:
    """The run's components by role (``evaluator.<name>`` for evaluators)."""
    parts = {"teacher": run.teacher_init, "student": run.student_init, "updater": run.updater,
             "objective": run.objective, "loss": run.loss_fn, "augment": run.augment, "optimizer": run.optimizer_factory}
    return {**parts, **{f"evaluator.{name}": e for name, e in run.evaluators.items()}}


def stateful_components(run: "Run") -> dict[str, Any]:
    """The run's components that carry state across steps, by a stable name (``evaluator.knn``, …)."""
    found: dict[str, Any] = {}
    for name, obj in components(run).items():
        if obj is not None and is_stateful(obj) and not isinstance(obj, torch.optim.Optimizer):
            found[name] = obj
    found["run.step_metrics"] = run.guard.step_metrics  # the partial window of training metrics not yet logged
    return found


# ------------------------------------------------------------------------------------------------ capture/restore
def capture(run: "Run") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, metadata) of ``run`` at the current step boundary."""
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in (("student", run.student), ("teacher", run.teacher)):
        for k, v in module.state_dict().items():
            tensors[f"{prefix}.{k}"] = v
    components = {name: pack(obj.state_dict(), f"component.{name}", tensors)
                  for name, obj in stateful_components(run).items()}
    meta = {
        **run.results.checkpoint_meta(run),
        "kind": STATE_KIND,
        "state_version": STATE_VERSION,
        "perm": pack(run.perm, "data.perm", tensors) if run.perm is not None else None,
        **run.results.state(),
        "optimizer": pack(run.optimizer.state_dict(), "optimizer", tensors),
        "generators": pack({"order": run.order_gen.get_state(), "augment": run.aug_gen.get_state()},
                           "rng.run", tensors),
        "rng": pack(global_rng_state(), "rng.global", tensors),
        "components": components,
    }
    return tensors, meta


def restore(run: "Run", tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], source: str) -> None:
    """Put the state captured by :func:`capture` back into a freshly set-up ``run``."""
    if meta.get("kind") != STATE_KIND:
        raise RtlabError(f"{source} is not a training state (kind '{meta.get('kind')}'); resume needs "
                         f"checkpoints/{paths.STATE}")
    load_network_state(run.student, dict(tensors), "student.", source)
    load_network_state(run.teacher, dict(tensors), "teacher.", source)
    try:
        run.optimizer.load_state_dict(unpack(meta["optimizer"], tensors))
    except (ValueError, KeyError, RuntimeError) as exc:
        raise RtlabError(f"the optimiser state in {source} does not fit this run ({' '.join(str(exc).split())}"
                         "); resume with the optimizer and objective settings the run was started with") from None
    components = stateful_components(run)
    saved = meta.get("components", {})
    if set(saved) != set(components):
        raise RtlabError(f"{source} holds the state of components {sorted(saved)}, this run has "
                         f"{sorted(components)}; resume with the settings the run was started with")
    for name, obj in components.items():
        obj.load_state_dict(unpack(saved[name], tensors))
    perm = unpack(meta["perm"], tensors) if meta.get("perm") is not None else None
    if perm is not None and len(perm) != len(run.data.train):
        raise RtlabError(f"{source} was trained on {len(perm)} images, this run has {len(run.data.train)}; "
                         "resume with the data settings the run was started with")
    run.perm = perm.to(run.device) if perm is not None else None
    run.clock.load(meta)
    run.results.load(meta)
    generators = unpack(meta["generators"], tensors)
    run.order_gen.set_state(generators["order"])
    run.aug_gen.set_state(generators["augment"])
    set_global_rng_state(unpack(meta["rng"], tensors))


# -------------------------------------------------------------------------------------------- the collaborator
class TrainingState:
    """``checkpoints/last`` of one run folder: written at step boundaries, restored by a resumed run."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = paths.state(run_dir)
        self.saved_step: int | None = None  # step of the last state written or restored

    def last_good(self) -> str:
        if self.saved_step is None:
            return "no training state was saved yet"
        return f"the last good state checkpoints/{paths.STATE} (step {self.saved_step}) is kept"

    def restore(self, run: "Run") -> bool:
        """Continue from ``checkpoints/last`` if the folder has one (False: nothing saved yet, start at step 0)."""
        if not checkpoint_paths(self.path)[1].exists():
            if paths.summary(self.run_dir).exists():  # starting over would replace finished results
                raise RtlabError(f"the run in {self.run_dir} finished without a training state (train.state_every=0"
                                 "); it cannot be continued, start a new run")
            log.warning("%s holds no training state yet; starting from step 0", self.run_dir)
            return False
        tensors, meta = load_checkpoint(self.path)
        restore(run, tensors, meta, f"{self.path}.json")
        run.hook.rtlab_checkpoint_load(run=run, tensors=tensors, meta=meta)
        run.resumed_step = self.saved_step = run.clock.step
        log.info("resumed %s at step %d (epoch %d, batch %d)", self.run_dir, run.clock.step, run.clock.epoch + 1,
                 run.clock.position)
        return True

    def save(self, run: "Run") -> Path:
        """Write ``checkpoints/last`` (the full training state) after checking that it is finite."""
        run.guard.check(run)
        if not run.is_main:
            self.saved_step = run.clock.step
            return self.path
        tensors, meta = capture(run)
        run.hook.rtlab_checkpoint_save(run=run, tensors=tensors, meta=meta)
        try:
            path = save_checkpoint(self.path, tensors, meta)
        except OSError as exc:
            if exc.errno not in NO_SPACE:
                raise
            raise RtlabError(f"no space left on device while saving the training state {self.path} at step "
                             f"{run.clock.step}; {self.last_good()}: free some space, then continue with 'rtlab train "
                             f"resume={self.run_dir}'") from None
        self.saved_step = run.clock.step
        return path

    def due(self, run: "Run", epoch_end: bool) -> bool:
        """Whether a state is due now: after ``train.state_every`` epochs (and the last one), every
        ``train.state_steps`` steps."""
        t, clock = run.cfg.train, run.clock
        if epoch_end:
            return bool(t.state_every) and (clock.epoch % t.state_every == 0 or clock.epoch == clock.epochs
                                              or clock.out_of_steps)
        return bool(t.state_steps) and clock.step % t.state_steps == 0
