"""Probes: evaluators that score frozen embeddings (kind ``evaluator``).

Plugins (each registered by its module name):

* ``knn`` — k-nearest-neighbour accuracy, chunked on the device (with an exact bf16 screen on CPUs);
* ``linear_probe`` — linear probes on raw and standardised embeddings (an lr grid chosen on held-out train
  images), logistic regression (``logreg``) and few-shot probes (``fewshot``);
* ``representation`` — representation metrics: ``rankme``, ``cka``, ``alignment`` (and uniformity).
"""
