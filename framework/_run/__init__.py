"""The run: the loop (``loop``) and its collaborators — building, the training clock and state, evaluation points,
results, data parallelism, pre-emption, guards — plus opening a finished run (``opened``). Imports the layers below.
Internal: plugins import from ``framework.api``."""
