"""The training batches' embeddings, for evaluators that learn alongside training (online probes).

An evaluator with an ``observe(run, embeddings, labels)`` method is called at every training step, right after the
objective's forward pass, on every process (outside autocast), with the student encoder's embeddings of this process's images in that step — detached, as the objective's
own forward pass computed them (no extra forward), the views of the largest size only (the global crops of a
multi-crop augmentation), concatenated view after view — and their labels. What it returns (detached tensors) is
logged with the step's training metrics as ``train/<name>``. Without such an evaluator nothing is hooked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

import torch

if TYPE_CHECKING:
    from framework._run.internals import RunInternals as Run


class EmbeddingTap:
    """A forward hook on the student's encoder that keeps its outputs during a training step."""

    def __init__(self, encoder: torch.nn.Module, observers: list[Any]) -> None:
        self.observers = observers
        self.rows: Optional[list[torch.Tensor]] = None  # None: outside a training step
        self.size = -1
        self.handle = encoder.register_forward_hook(self._keep)

    def _keep(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        if self.rows is None or not isinstance(output, torch.Tensor):
            return
        size = int(args[0].shape[-1]) if args and isinstance(args[0], torch.Tensor) else 0
        if size > self.size:  # a larger view: the smaller ones seen before were local crops
            self.rows, self.size = [], size
        if size == self.size:
            self.rows.append(output.detach())

    def around(self, forward: Callable[..., Any], run: "Run") -> Callable[..., Any]:
        """``forward`` (the loop's ``(views, index) -> (loss, logs)``) with the observers fed on the way: their logs
        join the step's."""
        def observed(views: list[torch.Tensor], index: torch.Tensor) -> Any:
            self.rows, self.size = [], -1
            loss, logs = forward(views, index)
            with torch.autocast(run.device.type, enabled=False):
                return loss, {**logs, **self.observe(run, index)}

        return observed

    def observe(self, run: "Run", index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Hand the step's embeddings and labels to the observers; their logs."""
        rows, self.rows = self.rows, None
        if not rows:
            return {}
        embeddings = torch.cat(rows)
        embeddings = embeddings.float() if embeddings.dtype in (torch.float16, torch.bfloat16) else embeddings
        labels = run.data.train.labels[index]
        labels = labels.repeat(len(embeddings) // max(len(labels), 1))
        logs: dict[str, torch.Tensor] = {}
        for evaluator in self.observers:
            logs.update(evaluator.observe(run, embeddings[:len(labels)], labels) or {})
        return logs


def embedding_tap(run: "Run") -> Optional[EmbeddingTap]:
    """A tap for the run's observing evaluators, or None when none observes."""
    observers = [e for e in run.evaluators.values() if callable(getattr(e, "observe", None))]
    return EmbeddingTap(run.student.encoder, observers) if observers else None
