"""Guards against silent failure in the training loop, at no cost per step.

The loop never synchronises with the device between logs. :class:`StepMetrics` keeps the per-step training
metrics as device tensors and checks them only when they are logged or a training state is saved: a non-finite
loss is then reported with the exact step it first appeared, and the parameters are checked too. A
:class:`TrainingDiverged` error stops the run before anything non-finite reaches a checkpoint, so the last
good one is kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping

import torch
from torch import nn

from framework._base.errors import TrainingDiverged

if TYPE_CHECKING:
    from framework._run.internals import RunInternals

DIVERGED_FIX = ("lower optimizer.lr, add a warm-up (optimizer.warmup_epochs=1) or check the data normalisation "
                "(data.mean/data.std)")


class StepMetrics:
    """The training metrics of the steps since the last log: device-side sums and the per-step losses."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}  # steps that reported each key
        self.losses: list[torch.Tensor] = []
        self.first_step = 0  # the step number of losses[0]

    def __len__(self) -> int:
        return len(self.losses)

    def add(self, step: int, logs: Mapping[str, torch.Tensor]) -> None:
        """Record the metrics of optimiser step ``step`` (1-based); no host synchronisation."""
        if not self.losses:
            self.first_step = step
        self.losses.append(logs["train/loss"])
        for k, v in logs.items():  # a key may come only on some steps (diagnostics of logged steps)
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
            self.counts[k] = self.counts.get(k, 0) + 1

    def check(self, last_good: str) -> None:
        """Raise :class:`TrainingDiverged` naming the first step whose loss is not finite."""
        if not self.losses:
            return
        finite = torch.isfinite(torch.stack([x.float() for x in self.losses]))
        if bool(finite.all()):
            return
        i = int((~finite).nonzero()[0, 0])
        value = float(self.losses[i])
        step = self.first_step + i
        raise TrainingDiverged(f"training diverged: the loss became {value} at step {step}; stopped, {last_good}. "
                               f"Fix: {DIVERGED_FIX}", step)

    def flush(self) -> dict[str, float]:
        """Mean of every metric over the steps that reported it since the last log (host floats); starts a new
        window."""
        out = {k: float(v) / self.counts[k] for k, v in self.sums.items()}
        self.sums, self.counts, self.losses = {}, {}, []
        return out

    # state: partial windows survive a restart so the logged means equal an uninterrupted run's
    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "counts": dict(self.counts), "losses": list(self.losses),
                "first_step": self.first_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sums = {k: v.to(self.device) for k, v in state["sums"].items()}
        self.counts = {k: int(v) for k, v in state.get("counts", {}).items()}
        for k in self.sums:  # states written before per-key counts: every key came every step
            self.counts.setdefault(k, len(state["losses"]))
        self.losses = [v.to(self.device) for v in state["losses"]]
        self.first_step = int(state["first_step"])


def check_parameters(modules: Iterable[tuple[str, nn.Module]], step: int, last_good: str) -> None:
    """Raise :class:`TrainingDiverged` when a parameter or buffer of any module holds NaN or infinity."""
    for owner, module in modules:
        named = [(k, t) for k, t in module.state_dict().items() if t.is_floating_point()]
        if not named:
            continue
        # fast path, one read of every tensor: a NaN or infinity makes its tensor's sum non-finite (a sum of
        # finite values overflows only near 3e38, and then the exact check below clears it)
        sums = torch.stack([t.sum(dtype=torch.float32) for _, t in named])
        if bool(torch.isfinite(sums).all()):
            continue
        for k, t in named:
            if not bool(torch.isfinite(t).all()):
                raise TrainingDiverged(f"training diverged: {owner} parameter '{k}' is not finite after step {step}; "
                                       f"stopped, {last_good}. Fix: {DIVERGED_FIX}", step)

class Guard:
    """The run's finiteness checks: the training metrics since the last log (:class:`StepMetrics`) and the weights,
    checked when metrics are logged and before any state or checkpoint is written — once per step."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.step_metrics = StepMetrics(device)
        self.checked_step = -1  # the last step check() cleared

    def check(self, run: "RunInternals") -> None:
        """Stop with :class:`TrainingDiverged` when a logged loss or a weight is not finite."""
        if self.checked_step == run.clock.step:  # a log and a state save after one step: checked once
            return
        last_good = run.state.last_good()
        self.step_metrics.check(last_good)
        self.check_networks(run, include_frozen=False)
        self.checked_step = run.clock.step

    @staticmethod
    def check_networks(run: "RunInternals", include_frozen: bool) -> None:
        """The student's (and, unless it is frozen and was checked at setup, the teacher's) weights are finite."""
        nets = [("student", run.student)]
        if include_frozen or not run.teacher_frozen:  # a frozen teacher cannot turn non-finite
            nets.append(("teacher", run.teacher))
        check_parameters(nets, run.clock.step, run.state.last_good())
