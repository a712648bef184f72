"""Probes: evaluators that score frozen embeddings (kind ``evaluator``), and one that learns alongside training.

Plugins (each registered by its module name):

* ``knn`` — k-nearest-neighbour accuracy, chunked on the device (with an exact bf16 screen on CPUs);
* ``linear_probe`` — linear probes on raw and standardised embeddings (an lr grid chosen on held-out train
  images), logistic regression (``logreg``) and few-shot probes (``fewshot``);
* ``representation`` — representation metrics: ``rankme``, ``cka``, ``alignment`` (and uniformity);
* ``online`` — the online linear probe ``online_linear``: trained on the training batches' detached student
  embeddings at every step, scored on the test split at each evaluation.

Every probe declares, per metric, the protocol that produced it (``metric_protocols``: offline or online, k, vote,
recipe, lr choice, which split fitted it), which runs record beside the numbers.
"""
