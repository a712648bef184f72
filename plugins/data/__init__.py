"""Data: dataset sources and the batched augmentations applied on the training device.

Plugins (each registered by its module name):

* ``datasets`` — dataset sources (kind ``dataset``): any Hugging Face dataset, image folders, offline built-ins;
* ``gaussian_inputs`` — the ``gaussian`` source of pure-noise images (docs/paper.md#fig-4);
* ``augmentations`` — augmentations (kind ``augment``): identity, the paper's DINO views, multi-crop, …

Helpers (not plugins): ``augment_ops`` — small composable batched image ops, usable without rtlab's loop.
"""
