"""Teacher–student distillation: the paper's objective and its parts.

Plugins (each registered by its module name):

* ``teachers`` — teacher initialisers (kind ``teacher``): random, from a checkpoint, …;
* ``students`` — student initialisers (kind ``student``): random, close to the teacher (PAPER.md §2.2);
* ``updaters`` — teacher updaters (kind ``updater``): frozen, EMA, previous epoch;
* ``distillation`` — the ``distillation`` objective (PAPER.md §2.1, §2.4), with its centre as module state;
* ``losses`` — losses between student and teacher outputs (kind ``loss``).
"""
