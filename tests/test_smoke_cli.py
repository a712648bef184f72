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
