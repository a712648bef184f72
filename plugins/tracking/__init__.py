"""Tracking: life-cycle hook plugins that write and show a run's outputs.

Plugins (each registered by its module name):

* ``metrics_log`` — ``metrics.jsonl``;
* ``tensorboard_log`` — TensorBoard event files;
* ``progress`` — the tqdm progress bar;
* ``checkpointing`` — ``checkpoints/epoch_N`` and ``checkpoints/final``;
* ``results_table`` — the table printed at the end of a run;
* ``embedding_panel`` — the PCA / t-SNE panel of ``rtlab report``, and the test embeddings a run saves for it;
* ``trackers`` — the ``tracker`` kind (``tracker=wandb``, ``tracker=[wandb,mlflow]``) and what every tracker logs;
* ``wandb_tracker``, ``mlflow_tracker`` — the trackers ``wandb`` and ``mlflow`` (optional extras).

Helpers (not plugins): ``plotting`` — headless matplotlib shared by every rtlab plot; ``per_run`` — the state a
tracker keeps per live run (a file, a writer), opened on first use and closed once.
"""
