"""Commands: ``rtlab`` sub-commands contributed through ``rtlab_add_commands``.

Plugins (each registered by its module name):

* ``aggregate`` — ``rtlab aggregate``: mean ± std of run results grouped by config values;
* ``bench`` — ``rtlab bench``: the step against a bare PyTorch loop, probes against scikit-learn;
* ``compare`` — ``rtlab compare``: SSL methods × backbones × seeds, one table;
* ``export`` — ``rtlab export``: a trained network as a folder timm and the Hugging Face Hub load, with a model card;
* ``probe`` — ``rtlab probe``: rtlab's evaluation of a network rtlab did not train (exports, timm, lightly, …);
* ``report`` — ``rtlab report``: plots and a Markdown summary of runs and analyses;
* ``verify`` — ``rtlab verify``: train a preset and check the results it expects.

Helpers (not plugins): ``bench_data`` — the data-path case of ``rtlab bench`` (``--data``); ``bench_methods`` —
every SSL method's step against a bare loop with lightly's loss (``rtlab bench --methods``).
"""
