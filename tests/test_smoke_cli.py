"""The CLI end to end on tiny offline data: the files a run writes and what summary.json holds."""

from __future__ import annotations

import json

from conftest import TINY


def test_train_writes_run_folder(cli, tmp_path):
    out = tmp_path / "run"
    res = cli("train", *TINY, "data=digits", "data.train_size=300", "data.test_size=100",
              f"hydra.run.dir={out}")
    assert res.returncode == 0, res.stderr[-2000:]
    for name in ("config.yaml", "plugins.json", "metrics.jsonl", "summary.json", "checkpoints/final.json",
                 "checkpoints/final.safetensors"):
        assert (out / name).exists(), name
    assert list(out.glob("events.out.tfevents.*")), "TensorBoard events missing"
    summary = json.loads((out / "summary.json").read_text())
    for metric in ("knn", "linear", "linear_std"):
        for target in ("teacher", "teacher_bn", "student", "input"):
            value = summary["metrics"][f"{metric}/{target}"]
            assert 0.0 <= value <= 1.0
    assert summary["student_distance_from_init"] > 0.0
    assert "teacher (BN control)" in res.stdout


def test_seed_sweep_with_the_joblib_launcher(cli, tmp_path):
    """A Hydra multirun through the joblib launcher (parallel processes): one finished run per seed, each with
    its own teacher."""
    res = cli("train", "-m", *TINY, "data=digits", "data.train_size=100", "data.test_size=50", "evaluator=[knn]",
              "tensorboard.enabled=false", "train.threads=1", "teacher.seed=0,1", "hydra/launcher=joblib",
              "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path}")
    assert res.returncode == 0, res.stderr[-3000:]
    runs = sorted(p.parent for p in tmp_path.glob("*/summary.json"))
    assert [p.name for p in runs] == ["0", "1"]
    from omegaconf import OmegaConf

    assert [OmegaConf.load(p / "config.yaml").teacher.seed for p in runs] == [0, 1]
    teachers = [json.loads((p / "summary.json").read_text())["metrics"]["knn/teacher"] for p in runs]
    assert all(0.0 < t <= 1.0 for t in teachers)
