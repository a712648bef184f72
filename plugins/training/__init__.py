"""Training: optimisers, the supervised objective, and guards that watch the loop.

Plugins (each registered by its module name):

* ``optimizers`` — optimisers with lr/wd schedules, gradient clipping, last-layer freezing (kind ``optimizer``);
* ``supervised`` — supervised training as one more objective (docs/paper.md#fig-8), used by the IMP and LMC analyses;
* ``collapse_guard`` — warns when the student's embeddings stop varying across images.
"""
