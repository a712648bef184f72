"""The result-key grammar (``<metric>/<target>[.L<i>|.<stage>][@<dataset>]``): one writer, one reader, and every
consumer — the progress bar, the results table, report, aggregate, ``best`` — reading a key the same way."""

from __future__ import annotations

import json

import pytest

from framework.api import (
    ResultKey,
    RtlabError,
    control_key,
    format_key,
    format_point,
    layer_suffix,
    metric_of,
    parse_key,
    parse_point,
)

FORMS = [
    ("knn/student", ResultKey("knn", "student")),
    ("linear_std/teacher_bn", ResultKey("linear_std", "teacher_bn")),
    ("knn/student.L-2", ResultKey("knn", "student", -2)),
    ("knn/student.L0", ResultKey("knn", "student", 0)),
    ("linear/teacher.layer3", ResultKey("linear", "teacher", "layer3")),
    ("knn/student.stages.2", ResultKey("knn", "student", "stages.2")),
    ("linear/student@cifar100", ResultKey("linear", "student", -1, "cifar100")),
    ("knn/student.L-2@cifar100", ResultKey("knn", "student", -2, "cifar100")),
    ("rankme/teacher.stages.2@c.100", ResultKey("rankme", "teacher", "stages.2", "c.100")),
    ("knn/input", ResultKey("knn", "input")),
    ("linear_val_lr0.001/student.L-2@cifar100", ResultKey("linear_val_lr0.001", "student", -2, "cifar100")),
]


@pytest.mark.parametrize("text,key", FORMS)
def test_every_key_form_round_trips(text, key):
    assert parse_key(text) == key
    assert str(key) == text
    assert format_key(key.metric, key.target, key.layer, key.dataset) == text
    assert parse_point(key.point) == (key.target, key.layer, key.dataset)
    assert format_point(key.target, key.layer, key.dataset) == key.point
    assert metric_of(text) == key.metric


def test_keys_that_are_not_results_and_bad_parts():
    assert parse_key("teacher_student_distance") is None
    assert parse_key("knn/") is None and parse_key("/student") is None
    assert metric_of("teacher_student_distance") == "teacher_student_distance"
    for bad in (True, "", "a/b", "x@y", "L-2", "L3", 1.5):
        with pytest.raises(RtlabError, match="eval.layers entries must be ints"):
            layer_suffix(bad)
    with pytest.raises(RtlabError, match="probe dataset key"):
        format_key("knn", "student", -1, "a/b")
    assert layer_suffix(-1) == "" and layer_suffix(-2) == ".L-2" and layer_suffix("layer3") == ".layer3"


def test_controls_keep_the_layer_and_the_dataset():
    assert control_key("knn/student.L-2@cifar100", "teacher_bn") == "knn/teacher_bn.L-2@cifar100"
    assert control_key("knn/student@cifar100", "input") == "knn/input@cifar100"
    assert control_key("knn/student.L-2", "input") is None  # pixels have no layers
    assert control_key("knn/teacher", "input") is None


def test_every_consumer_reads_a_layer_key_of_a_probe_dataset(tmp_path, capsys):
    """The progress bar, the results table, report and best all keep ``knn/student.L-2@cifar100``."""
    from types import SimpleNamespace

    from framework._run.results import best
    from plugins.commands.report import metric_series
    from plugins.tracking import progress
    from plugins.tracking.results_table import format_table

    key = "knn/student.L-2@cifar100"
    results = {"knn/student": 0.5, key: 0.4, "knn/teacher.L-2@cifar100": 0.3, "teacher_student_distance": 2.0}
    table = format_table(results)
    assert "student L-2 @ cifar100" in table and "teacher L-2 @ cifar100" in table
    rows = [line.split()[0:4] for line in table.splitlines()[1:]]
    assert rows[0][0] == "student" and len(table.splitlines()) == 4  # training data first, then cifar100 rows
    assert metric_series([{"epoch": 1, **results}])["knn"]["student.L-2@cifar100"] == [(1, 0.4)]
    assert best([{"epoch": 1, **results}, {"epoch": 2, key: 0.45}], {})[key] == 0.45

    written = []
    bar = SimpleNamespace(set_description=lambda *a, **k: None, write=written.append)
    run = SimpleNamespace()
    progress._bars[id(run)] = bar
    try:
        progress.rtlab_evaluate_end(run=run, epoch=1, results=results)
    finally:
        progress._bars.pop(id(run), None)
    assert key in written[0] and "knn/student " in written[0] and "teacher" not in written[0]
    json.dumps(results)  # the keys are plain strings
