"""Method ``dino`` — self-distillation with no labels (Caron et al., "Emerging Properties in Self-Supervised Vision
Transformers", ICCV 2021), assembled from rtlab's components as in DINO's ``main_dino.py``:

* teacher = exponential moving average of the student, momentum 0.996 → 1 on a cosine schedule, BatchNorm with
  batch statistics (``updater=ema``, ``bn_mode=from_data``); both start from one random init (``student=copy``);
* DINO head (3-layer MLP 2048-2048, L2 bottleneck 256, weight-normalised last layer of 65,536 outputs,
  ``head.weight_norm=true``);
* multi-crop: 2 global + 10 local crops with DINO's colour pipeline (``augment=dino``); the teacher sees the global
  crops, the student every crop, every student crop is compared with every *other* teacher crop
  (``objective.pairing=opposite``);
* centering of the teacher's outputs (momentum 0.9) and sharpening: teacher temperature warmed up linearly from
  0.04 to 0.07 over 30 epochs, student temperature 0.1 (``loss=ce``);
* the optimisation details the method needs for stability: weight decay 0.04 → 0.4 (cosine, none on biases and
  norms), gradient clipping at 3, last layer frozen during the first epoch.

The learning rate, its warm-up and schedule, the batch size and the number of epochs are the experiment's (DINO:
AdamW, lr 5e-4 · batch/256, 10 warm-up epochs, cosine; see the ``paper_dino_cifar10`` preset).
"""

from __future__ import annotations

from framework.api import hookimpl
from plugins.methods import add_method


@hookimpl
def rtlab_register(registry):
    add_method(registry, "dino",
               {"teacher": "random", "student": "copy", "updater": "ema", "objective": "distillation", "loss": "ce",
                "head": "dino", "augment": "dino"},
               {"updater": {"momentum": 0.996, "final_momentum": 1.0, "bn_mode": "from_data"},
                "objective": {"pairing": "opposite", "center_momentum": 0.9},
                "loss": {"teacher_temp": 0.07, "teacher_temp_start": 0.04, "teacher_temp_warmup_epochs": 30,
                         "student_temp": 0.1},
                "head": {"weight_norm": True},
                "optimizer": {"weight_decay": 0.04, "final_weight_decay": 0.4, "decay_bias_and_norm": False,
                              "clip_grad": 3.0, "freeze_last_layer_epochs": 1}},
               doc="EMA teacher, centering, sharpening, multi-crop (Caron et al., ICCV 2021)")
