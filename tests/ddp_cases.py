"""Tiny runs whose two-process training must equal one process on the global batch (tests/test_distributed.py).

117 digits in batches of 32: three shards of 16 + 16 and a last batch of 21 shared 11 + 10 (unequal shards);
float64, so that the comparison is tight; ``train.sync_bn=true`` (BatchNorm of the global batch: the
projectors of SimCLR, Barlow Twins, VICReg, BYOL and most newer methods have BatchNorm; one process ignores the
setting). Every method with a global statistic has a case: negatives, queues and support sets of the global batch,
Sinkhorn codes, whitening, running covariances.
"""

from __future__ import annotations

BASE = ["backbone=test_vit", "data=digits", "data.train_size=117", "data.test_size=32", "train.batch_size=32",
        "train.epochs=1", "train.log_every=1", "train.precision=fp64", "train.sync_bn=true", "train.threads=1",
        "eval.every=0", "eval.before=false", "evaluator=[]", "progress.enabled=false", "tensorboard.enabled=false",
        "checkpoint.final=true"]

_DINO_HEAD = ["head.hidden_dims=[32]", "head.bottleneck_dim=16", "head.out_dim=32"]
_PROJECTOR = ["head.hidden_dims=[32]", "head.out_dim=16"]

CASES = {
    "random_teacher": ["method=random_teacher", *_DINO_HEAD],
    "dino": ["method=dino", *_DINO_HEAD, "augment.local_views=2", "augment.local_size=4",
             "optimizer.freeze_last_layer_epochs=0"],
    "simclr": ["method=simclr", *_PROJECTOR],
    "barlow_twins": ["method=barlow_twins", *_PROJECTOR],
    "vicreg": ["method=vicreg", *_PROJECTOR],
    "byol": ["method=byol", *_PROJECTOR, "objective.predictor_hidden_dims=[32]"],
    # queues and support sets receive the global batch's rows on every process (40: wraps within the run)
    "moco_v2": ["method=moco_v2", *_PROJECTOR, "objective.queue_size=40"],
    "moco_v3": ["method=moco_v3", *_PROJECTOR, "objective.predictor_hidden_dims=[32]"],
    "nnclr": ["method=nnclr", *_PROJECTOR, "objective.predictor_hidden_dims=[32]", "objective.support_size=40"],
    # Sinkhorn over the global batch and the queue (full after the first step), prototypes trained from the start
    "swav": ["method=swav", *_DINO_HEAD, "augment.local_views=2", "augment.local_size=4",
             "objective.queue_length=32", "objective.queue_start_epoch=0", "optimizer.freeze_last_layer_epochs=0"],
    "dcl": ["method=dcl", *_PROJECTOR],
    "dclw": ["method=dclw", *_PROJECTOR],
    "tico": ["method=tico", *_PROJECTOR],  # the running covariance of the global batch
    "wmse": ["method=wmse", "head.hidden_dims=[32]", "head.out_dim=4", "objective.w_size=8"],  # whitened globally
    # MMCR's two terms apart: at step 1 the momentum network is the student's copy, so each image's 2k rows are
    # k rows twice and its matrix has zero singular values, where the nuclear norm's gradient (a subgradient) is
    # any direction in their null space: float noise of the reductions' order picks another one on two processes
    # (train/loss 4e-5 apart from step 2 on, measured). Apart, each term is exact: the global batch's centroids
    # with the momentum views, and each image's nuclear norm over the online views.
    "mmcr": ["method=mmcr", *_PROJECTOR, "augment.global_views=3", "objective.lmbda=0"],
    "mmcr_local": ["method=mmcr", *_PROJECTOR, "augment.global_views=3", "objective.momentum_views=false"],
    # the online probe trains on the global batch's embeddings: its logged loss and accuracy follow one process
    "online_probe": ["method=simclr", *_PROJECTOR, "evaluator=[online_linear]"],
}
