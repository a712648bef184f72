"""A resumed torchrun run restores component state on every rank, not only on the rank that fires hooks.

Two gloo processes train a DINO-centred distillation run and a supervised run; once straight through and once
stopped after 3 steps (its state saved there) and resumed from ``checkpoints/last``. Each rank dumps its own objective state (the centre,
the classifier) and student weights at the end: the resumed run must equal the uninterrupted one on both ranks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT

# test_vit has no BatchNorm: running statistics are per process (each normalises its own shard) and only rank 0's
# are saved, which would hide what this test checks.
COMMON = ["data=digits", "data.train_size=256", "data.test_size=64", "train.batch_size=64", "train.epochs=2",
          "evaluator=[]", "train.precision=fp32", "progress.enabled=false", "train.threads=1"]
CASES = {
    # the teacher cache is off: each process caches its own shard's rows and only rank 0's are saved (see docs/resume.md)
    "dino_centre": ["backbone=test_vit", "head.hidden_dims=[64]", "head.bottleneck_dim=32", "head.out_dim=128",
                    "objective.center_momentum=0.9", "objective.cache_teacher=false"],
    "supervised": ["experiment=supervised_fashion_mnist_cpu", "backbone=test_vit"],
}

SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from omegaconf import open_dict
    from safetensors.torch import save_file
    from framework._nets import distributed
    from framework._config.compose import compose
    from framework._run.loop import Run
    from framework._run.state import pack

    distributed.init(prefer_cuda=False)
    out, stop, *overrides = sys.argv[1:]
    stop = int(stop)
    cfg = compose(overrides)
    with open_dict(cfg):
        cfg.train.state_steps = stop  # the training state is written at the step the run is stopped
    for resume in ([False, True] if stop else [False]):
        run = Run(cfg, out, resume=resume).setup()
        train_step = run.train_step
        def stopping(batch, train_step=train_step, run=run, first=not resume):
            if first and stop and run.step == stop:
                raise KeyboardInterrupt  # killed after step `stop`, as a pre-empted job would be
            return train_step(batch)
        run.train_step = stopping
        try:
            run.fit()
        except KeyboardInterrupt:
            pass
        finally:
            run.release()
    tensors = {}
    pack(run.objective.state_dict(), "objective", tensors)
    tensors.update({f"student.{k}": v for k, v in run.student.state_dict().items()})
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items() if v is not None},
              f"{out}/rank{run.rank}.safetensors")
""")


def _torchrun(tmp_path, out, stop, overrides):
    script = tmp_path / "resume_ranks.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(out), str(stop), *overrides],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return [load_file(out / f"rank{r}.safetensors") for r in range(2)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_resumed_torchrun_run_restores_component_state_on_every_rank(tmp_path, case):
    overrides = [*COMMON, *CASES[case]]
    straight = _torchrun(tmp_path, tmp_path / "straight", 0, overrides)
    resumed = _torchrun(tmp_path, tmp_path / "resumed", 3, overrides)
    component = "objective.center" if case == "dino_centre" else "objective.classifier.weight"
    for rank in range(2):
        a, b = straight[rank], resumed[rank]
        assert component in a and a.keys() == b.keys()
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-6), f"rank {rank}: {key} differs after resuming"
