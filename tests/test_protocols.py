"""A protocol on every number, and the online linear probe.

* a run records, for each metric, the protocol that produced it — offline or online, k, vote, recipe, lr choice,
  which split fitted the probe, last or best epoch — in ``summary.json`` and with every evaluation in
  ``metrics.jsonl``;
* the online linear probe learns from the training batches' embeddings alongside training, is scored as
  ``online_linear/student``, resumes exactly, and is never pooled with the offline ``linear``;
* ``rtlab compare`` and ``rtlab aggregate`` state the protocols under their tables and refuse to pool numbers whose
  protocols differ, unless told to.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from framework._base import protocols
from framework._base.errors import RtlabError
from tiny_runs import FAST, compose_run, preempted_then_resumed

PROBED = [o for o in FAST if not o.startswith("head.")] + [
    "method=simclr", "head.hidden_dims=[32]", "head.out_dim=16", "evaluator=[knn,linear,online_linear]",
    "evaluator.knn.k=[5,20]", "evaluator.linear.epochs=2", "evaluator.linear.lr=[1e-3,1e-2]",
    "evaluator.online_linear.lr=0.01", "train.epochs=2", "eval.every=1", "eval.before=true", "train.log_every=2",
    "train.threads=1", "eval.targets=[teacher,student]"]


def test_a_run_records_the_protocol_of_every_number(tmp_path):
    run = compose_run(tmp_path, base=PROBED)
    try:
        summary = run.fit()
    finally:
        run.release()
    declared = summary["metric_protocols"]
    assert declared["knn_k5"]["k"] == 5 and declared["knn"]["k"] == 5 and declared["knn_k20"]["k"] == 20
    assert declared["knn"]["vote"] == "majority" and declared["knn"]["fit"] == "train split"
    assert declared["linear"]["lr"] == [1e-3, 1e-2] and declared["linear"]["lr_choice"].startswith("best validation")
    assert declared["linear"]["fit"] == "train split minus the validation images"
    assert declared["online_linear"]["probe"] == "online" and declared["linear"]["probe"] == "offline"
    # every result key of summary.json names its protocol and epoch
    last, best = summary["protocols"]["metrics"], summary["protocols"]["best"]
    assert set(last) == {k for k in summary["metrics"] if "/" in k} and set(best) == set(summary["best"])
    assert last["knn_k20/teacher"] == {**declared["knn_k20"], "epoch": "last"}
    assert best["online_linear/student"]["epoch"] == "best"
    assert last["online_linear/student"]["probe"] == "online" and last["linear/student"]["probe"] == "offline"
    # the online probe: scored after training started (not before), on the student only; its training logged
    assert "online_linear/student" not in run.history[0] and "online_linear/student" in run.history[1]
    assert not any(k.startswith("online_linear/teacher") for k in summary["metrics"])
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert all(0.0 <= r["train/online_linear_acc"] <= 1.0 and r["train/online_linear_loss"] > 0 for r in train)
    evals = [r for r in rows if r["kind"] == "eval"]
    assert all(r["protocols"]["knn_k5"]["k"] == 5 and "online_linear" not in r["protocols"] for r in evals[:1])
    assert evals[-1]["protocols"]["online_linear"] == declared["online_linear"]


def test_the_online_probe_learns_and_resumes_exactly(tmp_path):
    """It learns (training loss falls; on digits its test accuracy beats chance, as the k-NN probe's does), and
    pre-empted after step 5 and resumed, the classifier and its AdamW state end where an uninterrupted run's do."""
    probe = ["method=random_teacher", "evaluator=[online_linear,knn]", "evaluator.online_linear.lr=0.01",
             "train.epochs=8", "train.log_every=1", "train.threads=1", "train.state_steps=1", "train.seed=5",
             "train.deterministic=true"]
    ref = compose_run(tmp_path / "ref", *probe)
    summary = ref.fit()
    ref.release()
    assert summary["metrics"]["online_linear/student"] > 0.3  # 10 classes: chance is 0.1 (k-NN: ~0.43)
    losses = [json.loads(line).get("train/online_linear_loss") for line in
              (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    losses = [v for v in losses if v is not None]
    assert losses[-1] < 0.7 * losses[0]
    resumed = preempted_then_resumed(tmp_path / "run", 5, *probe)
    resumed.fit()
    resumed.release()
    a, b = ref.evaluators["online_linear"].state_dict(), resumed.evaluators["online_linear"].state_dict()
    assert torch.equal(a["classifier"]["weight"], b["classifier"]["weight"])
    assert a["optimizer"]["state"][0]["step"] == b["optimizer"]["state"][0]["step"] == 32
    assert resumed.metrics["online_linear/student"] == summary["metrics"]["online_linear/student"]


def test_protocols_describe_themselves_and_name_their_first_difference():
    knn = {"probe": "offline", "classifier": "k-NN", "k": 20, "vote": "majority", "fit": "train split"}
    assert protocols.describe({**knn, "epoch": "last"}) == ("offline k-NN: k 20, vote majority; fit on the train split; "
                                                            "last epoch")
    assert protocols.first_difference({"a": knn, "b": dict(knn)}) is None
    assert protocols.first_difference({"a": knn, "b": {**knn, "k": 200}}) == "k 20 in a vs k 200 in b"
    with pytest.raises(RtlabError, match="metric_protocols values must be flat dicts"):
        protocols.declared_protocols({"bad": type("E", (), {"metric_protocols": {"m": {"x": {"nested": 1}}}})()})


def test_compare_refuses_cells_measured_with_different_protocols(tmp_path):
    """One method probed with k = 5, the other with k = 20: one line naming both, nothing tabulated; with
    --mixed-protocols the table is written and lists each cell's protocol."""
    from plugins.commands.compare import run_comparison
    from test_compare import TINY_GRID

    grid = [o for o in TINY_GRID if "overrides.dino" not in o] + [
        "compare.methods=[random_teacher,simclr]", '+compare.overrides.simclr=["evaluator.knn.k=5"]']
    out = tmp_path / "cmp"
    with pytest.raises(RtlabError) as refused:
        run_comparison(grid, str(out))
    message = str(refused.value)
    assert "\n" not in message and "knn numbers come from different protocols" in message
    assert "k 20 in random_teacher/test_resnet/seed_0 vs k 5 in simclr/test_resnet/seed_0" in message
    assert "--mixed-protocols" in message and not (out / "compare.md").exists()
    record = run_comparison(grid, str(out), mixed_protocols=True)  # the cells are reused, not trained again
    assert record["trained"] == 0 and record["reused"] == 2
    table = (out / "compare.md").read_text()
    assert "- knn of simclr/test_resnet/seed_0: offline k-NN: k 5" in table
    assert "- linear: offline linear: features raw" in table  # agreed by both cells: one line


def _fake_run(folder, k, knn):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"student": {"alpha": 0.5}, "evaluator": {}}))
    protocol = {"probe": "offline", "classifier": "k-NN", "k": k, "fit": "train split"}
    (folder / "summary.json").write_text(json.dumps({"metrics": {"knn/student": knn}, "best": {},
                                                     "metric_protocols": {"knn": protocol}}))


def test_aggregate_refuses_to_pool_runs_measured_with_different_protocols(tmp_path, capsys):
    from framework.cli.main import main

    _fake_run(tmp_path / "a", 20, 0.6)
    _fake_run(tmp_path / "b", 200, 0.7)
    assert main(["aggregate", str(tmp_path), "--by", "student.alpha"]) == 2
    err = capsys.readouterr().err
    assert "the runs pooled in group student.alpha=0.5 measured knn with different protocols (k 20 in" in err
    assert "--mixed-protocols" in err
    assert main(["aggregate", str(tmp_path), "--by", "student.alpha", "--mixed-protocols"]) == 0
    assert "knn: mixed (--mixed-protocols)" in capsys.readouterr().out
    (tmp_path / "b" / "summary.json").write_text((tmp_path / "a" / "summary.json").read_text())
    assert main(["aggregate", str(tmp_path), "--by", "student.alpha"]) == 0
    assert "- knn: offline k-NN: k 20; fit on the train split; last epoch" in capsys.readouterr().out
