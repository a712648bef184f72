"""rtlab's built-in plugins, grouped by concern. Each plugin module is registered through the same path as a
third-party plugin (``DEFAULT_PLUGINS`` of the plugin manager), under its module's short name.

==============  ====================================================================================
folder          provides
==============  ====================================================================================
``networks/``   backbone adapters, the paper's extra timm models, projection heads
``data/``       dataset sources, batched augmentations
``distill/``    teacher and student initialisers, teacher updaters, the distillation objective, losses
``training/``   optimisers and schedules, the supervised objective, the collapse guard
``probes/``     evaluators: k-NN and linear probes
``tracking/``   trackers on the life-cycle hooks: metrics.jsonl, TensorBoard, progress bar, checkpoints
``methods/``    SSL methods as ``method=NAME`` presets with their objectives
``analysis/``   the ``analysis`` kind, ``rtlab analyze``, IMP, barrier and landscape analyses
``commands/``   ``rtlab aggregate``, ``bench``, ``compare``, ``report``
==============  ====================================================================================

Each folder's ``__init__`` says which of its modules are plugins and which are helpers.
"""
