"""What the run's collaborators use of the run beyond the public :class:`RunView`: a typing protocol only.

The loop's :class:`framework._run.loop.Run` implements it; the collaborators (building, training state, evaluation,
results, pre-emption) are typed with it instead of importing the loop, so the package has no import cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from framework._contract.runview import RunView

if TYPE_CHECKING:
    import torch


class RunInternals(RunView, Protocol):
    hook: Any  # the plugin manager's hooks on rank 0, no-ops elsewhere
    resume: bool
    guard: Any  # framework._run.guards.Guard
    folder: Any  # framework._run.folder.RunFolder
    state: Any  # framework._run.state.TrainingState
    results: Any  # framework._run.results.Results
    preemption: Any  # framework._run.preemption.Preemption
    # the parts setup builds besides RunView's
    probe_data: dict[str, Any]
    teacher_init: Any
    student_init: Any
    optimizer_factory: Any
    trainable: list["torch.nn.Parameter"]
    order_gen: "torch.Generator"
    perm: "torch.Tensor | None"  # the open epoch's data order (None between epochs)
    init_student: dict[str, "torch.Tensor"]  # the student's parameters before training

    def call_each(self, hook_name: str, **kwargs: Any) -> list[Exception]:
        """Every implementation of an after-training hook, failures collected (rank 0 only)."""
