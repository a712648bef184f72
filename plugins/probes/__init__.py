"""Probes: evaluators that score frozen embeddings (kind ``evaluator``).

Plugins (each registered by its module name):

* ``knn`` — k-nearest-neighbour accuracy, chunked on the device (with an exact bf16 screen on CPUs);
* ``linear_probe`` — linear probes on raw and standardised embeddings.
"""
