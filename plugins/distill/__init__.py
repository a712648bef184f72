"""Teacher–student distillation: the paper's objective and its parts.

Plugins (each registered by its module name):

* ``teachers`` — teacher initialisers (kind ``teacher``): random, from a checkpoint, …;
* ``students`` — student initialisers (kind ``student``): random, close to the teacher (docs/paper.md#student-init);
* ``updaters`` — teacher updaters (kind ``updater``): frozen, EMA, previous epoch;
* ``distillation`` — the ``distillation`` objective (docs/paper.md#objective), with its centre as module state;
* ``losses`` — losses between student and teacher outputs (kind ``loss``).
"""
