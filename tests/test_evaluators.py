"""Probes against reference implementations."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import pytest

from framework._base.errors import RtlabError
from plugins.probes.knn import knn_neighbours, knn_predict
from plugins.probes.linear_probe import standardize, train_linear_probe


def test_knn_l2_majority_vote_matches_scikit_learn():
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(0)
    train = rng.normal(size=(500, 16)).astype(np.float32)
    labels = rng.integers(0, 5, 500)
    train[:, 0] += labels  # some signal
    test = rng.normal(size=(200, 16)).astype(np.float32)
    test[:, 0] += rng.integers(0, 5, 200)
    ref = KNeighborsClassifier(n_neighbors=20, algorithm="brute").fit(train, labels).predict(test)
    ours = knn_predict(torch.from_numpy(train), torch.from_numpy(labels), torch.from_numpy(test), k=20,
                       num_classes=5, chunk=64).numpy()
    assert (ours == ref).mean() >= 0.99  # float ties in distance order may differ in a rare row


def _exact_neighbours(train, test, k, metric):
    """The k nearest rows by float64 distances (ground truth)."""
    train, test = train.double(), test.double()
    if metric == "cosine":
        score = torch.nn.functional.normalize(test, dim=1) @ torch.nn.functional.normalize(train, dim=1).T
    else:
        score = -torch.cdist(test, train)
    return score.topk(k, dim=1).indices


def _features(kind, rng):
    n, d = 3000, 64
    if kind == "clusters":  # typical embeddings: class clusters
        centers = rng.normal(size=(10, d)) * 2
        x = centers[rng.integers(0, 10, n + 300)] + rng.normal(size=(n + 300, d))
    elif kind == "offset":  # a large common offset and tiny spread: rounding relative to the norm is coarse
        x = 100.0 + rng.normal(size=(n + 300, d)) * 0.1
    elif kind == "heavy":  # heavy-tailed coordinates of very different scales
        x = rng.standard_cauchy(size=(n + 300, d)) * np.logspace(-3, 3, d)
    else:  # isotropic noise: all distances nearly equal, the hardest case for a screen
        x = rng.normal(size=(n + 300, d))
    x = torch.from_numpy(x.astype(np.float32))
    return x[:n], x[n:]


@pytest.mark.parametrize("kind", ["clusters", "offset", "heavy", "noise"])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_bf16_screened_knn_finds_the_exact_neighbours(kind, metric):
    """The bf16 screen with fp32 re-scoring returns the neighbours of the all-fp32 computation (its error bound is
    rigorous, so no neighbour is lost), whatever the feature distribution; for L2 these are the float64 ones."""
    train, test = _features(kind, np.random.default_rng(7))
    assert len(train) > 16 * 20  # large enough for the screen to run (it skips tiny problems)

    def neighbours(screen):
        found = list(knn_neighbours(train, test, 20, metric, 128, screen=screen))
        return torch.cat([top for top, _ in found]), torch.cat([idx for _, idx in found])

    def differing(a, b):
        return sum(set(x.tolist()) != set(y.tolist()) for x, y in zip(a, b))

    (got_scores, got), (want_scores, want) = neighbours("bf16"), neighbours("off")
    # the k best scores, best first, are those of the fp32 computation (a lost neighbour would show as a lower one)
    assert torch.allclose(got_scores, want_scores, rtol=1e-5, atol=1e-5 * float(want_scores.abs().max()))
    if not (metric == "cosine" and kind == "offset"):  # there every score rounds to 1.0 in fp32: all ties
        assert differing(got, want) <= 2  # a rare exact tie may order differently
    if metric == "l2":  # centring keeps fp32 accurate here (the cosine of a large offset is beyond fp32 itself)
        assert differing(got, _exact_neighbours(train, test, 20, metric)) <= 2


def test_knn_cosine_weighted_is_scale_invariant():
    rng = np.random.default_rng(1)
    train = torch.from_numpy(rng.normal(size=(300, 8)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 3, 300))
    test = torch.from_numpy(rng.normal(size=(50, 8)).astype(np.float32))
    a = knn_predict(train, labels, test, k=10, metric="cosine", vote="weighted")
    b = knn_predict(train * 7.0, labels, test * 0.1, k=10, metric="cosine", vote="weighted")
    assert torch.equal(a, b)


def test_linear_probe_learns_separable_data_and_standardisation_rescues_tiny_features():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (800,), generator=g)
    centers = torch.randn(4, 32, generator=g) * 3
    x = centers[labels] + torch.randn(800, 32, generator=g)
    acc = train_linear_probe(x[:600], labels[:600], x[600:], labels[600:], 4, epochs=60, seed=0)
    assert acc > 0.95
    tiny = x * 1e-3  # like random embeddings: the raw probe underfits in 10 epochs
    raw = train_linear_probe(tiny[:600], labels[:600], tiny[600:], labels[600:], 4, epochs=10, seed=0)
    tr, te = standardize(tiny[:600], tiny[600:])
    std = train_linear_probe(tr, labels[:600], te, labels[600:], 4, epochs=10, seed=0)
    assert std > raw + 0.2
    again = train_linear_probe(tr, labels[:600], te, labels[600:], 4, epochs=10, seed=0)
    assert again == std  # seeded


def test_knn_list_of_k_is_one_search_with_the_single_k_answers():
    """k=[10,20,200] answers, for every k, what a probe with that k alone answers (exact and bf16-screened), and
    the probe reports knn_k<k> with knn the first k; a scalar k keeps the single key."""
    from types import SimpleNamespace

    from plugins.probes.knn import KNNOptions, KNNProbe, knn_predict_ks

    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 24, generator=g)
    y, yt = torch.randint(0, 5, (4000,), generator=g), torch.randint(0, 5, (300,), generator=g)
    x = centers[y] + 1.5 * torch.randn(4000, 24, generator=g)
    xt = centers[yt] + 1.5 * torch.randn(300, 24, generator=g)
    for screen in ("off", "bf16"):
        for vote, metric in (("majority", "l2"), ("weighted", "cosine")):
            many = knn_predict_ks(x, y, xt, [10, 20, 200], metric, vote, screen=screen)
            for k in (10, 20, 200):
                assert torch.equal(many[k], knn_predict(x, y, xt, k, metric, vote, screen=screen)), (screen, k)
    feats = SimpleNamespace(train=x, train_labels=y, test=xt, test_labels=yt, num_classes=5)
    out = KNNProbe(KNNOptions(k=[20, 10, 200])).evaluate(feats, None)
    assert set(out) == {"knn", "knn_k10", "knn_k20", "knn_k200"} and out["knn"] == out["knn_k20"]
    single = KNNProbe(KNNOptions(k=10)).evaluate(feats, None)
    assert single == {"knn": out["knn_k10"]}
    for bad in ([10, 10], [0], [], 2.5):
        with pytest.raises(RtlabError, match="evaluator.knn.k must be a positive integer"):
            KNNProbe(KNNOptions(k=bad))


@pytest.mark.parametrize("kind", ["clusters", "noise"])
@pytest.mark.parametrize("vote, metric, temperature", [("majority", "l2", 0.07), ("weighted", "cosine", 0.07),
                                                       ("weighted", "l2", 0.07), ("majority", "cosine", 0.07),
                                                       ("weighted", "cosine", 0.01)])  # exp(1/0.01) overflows
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("n, ks", [(5000, [1, 10, 200]), (9000, [1, 10, 64])])  # 64 of 563 blocks: τ from pairs
def test_knn_list_from_one_screened_search_votes_as_separate_fp32_runs(kind, vote, metric, temperature, dense, n,
                                                                      ks, monkeypatch):
    """A k list from one bf16-screened search predicts, for every k, what an all-fp32 run with that k alone
    predicts — for the queries whose votes the bounds decide and for those re-scored in fp32 (by gathering
    their candidates, or by one fp32 product: both forced here)."""
    import plugins.probes.knn as knn

    monkeypatch.setattr(knn, "DENSE_RESCORE", 10 ** 9 if dense else 1)
    g = torch.Generator().manual_seed(1)
    y, yt = torch.randint(0, 6, (n,), generator=g), torch.randint(0, 6, (300,), generator=g)
    x, xt = torch.randn(n, 32, generator=g), torch.randn(300, 32, generator=g)
    if kind == "clusters":  # most votes clear, some contested
        centers = torch.randn(6, 32, generator=g)
        x, xt = centers[y] + 1.5 * x, centers[yt] + 1.5 * xt
    stats = {}
    many = knn.knn_predict_ks(x, y, xt, ks, metric, vote, temperature, chunk=128, screen="bf16", stats=stats)
    assert stats["screened"] == 300
    if kind == "clusters" and temperature > 0.05:
        assert 0 < stats["rescored"] < 60  # the bounds decide most votes, not all
    for k in ks:
        alone = knn.knn_predict(x, y, xt, k, metric, vote, temperature, screen="off")
        assert torch.equal(many[k], alone), (k, int((many[k] != alone).sum()))


def _planted(seed=0):
    """Two classes. Train: coordinate 1 carries the label. Test: coordinate 1 carries it with the sign flipped
    (a test-only signal), so the head that learnt the train signal scores ~0 on test while an untrained one ~50 %."""
    g = torch.Generator().manual_seed(seed)
    y, yt = torch.randint(0, 2, (800,), generator=g), torch.randint(0, 2, (400,), generator=g)
    x = torch.randn(800, 6, generator=g) * 0.3
    xt = torch.randn(400, 6, generator=g) * 0.3
    x[:, 1] += 2.0 * y - 1
    xt[:, 1] -= 2.0 * yt - 1
    return x, y, xt, yt


def test_linear_lr_grid_chooses_on_held_out_train_images_never_the_test_split():
    from plugins.probes.linear_probe import train_linear_grid

    x, y, xt, yt = _planted()
    lrs = [1e-7, 1e-2, 1e-1]
    res = train_linear_grid(x, y, xt, yt, 2, lrs, epochs=5, batch_size=64, seed=0)
    assert max(res["test"]) > 0.3 and res["test"][0] == max(res["test"])  # on test, the untrained head wins …
    assert res["lr"] in (1e-2, 1e-1) and min(res["val"][1:]) > 0.95 > res["val"][0]  # … validation picks a trained one
    assert res["acc"] == res["test"][lrs.index(res["lr"])] < 0.1  # and linear/X is that head's (bad) test accuracy
    # the choice does not move when the test labels do
    again = train_linear_grid(x, y, xt, 1 - yt, 2, lrs, epochs=5, batch_size=64, seed=0)
    assert again["lr"] == res["lr"] and again["val"] == res["val"]


def test_linear_probe_with_an_lr_grid_reports_the_choice_and_every_validation_accuracy():
    from types import SimpleNamespace

    from framework._base.metrics import MetricKind
    from plugins.probes.linear_probe import LinearProbe, LinearProbeOptions

    x, y, xt, yt = _planted(1)
    feats = SimpleNamespace(train=x, train_labels=y, test=xt, test_labels=yt, num_classes=2, seed=0)
    probe = LinearProbe(LinearProbeOptions(lr=[1e-3, 1e-2, 1e-1], epochs=3))
    out = probe.evaluate(feats, None)
    assert set(out) == {"linear", "linear_lr", "linear_std", "linear_std_lr", *(
        f"{v}_val_lr{lr}" for v in ("linear", "linear_std") for lr in ("0.001", "0.01", "0.1"))}
    assert out["linear_lr"] in (1e-3, 1e-2, 1e-1) and probe.metric_kinds["linear_lr"] == MetricKind.number()
    scalar = LinearProbe(LinearProbeOptions()).evaluate(feats, None)
    assert set(scalar) == {"linear", "linear_std"}  # a scalar lr: today's probe and keys
    with pytest.raises(RtlabError, match="evaluator.linear.lr must be a positive number"):
        LinearProbe(LinearProbeOptions(lr=[1e-3, -1]))


def test_logreg_matches_scikit_learn_and_fewshot_reports_mean_and_std():
    from types import SimpleNamespace

    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    from plugins.probes.linear_probe import FewShotOptions, FewShotProbe, LogRegOptions, LogRegProbe, lbfgs_heads

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)
    y = torch.tensor(digits.target)
    tr, te = standardize(x[:1200], x[1200:])
    w, b = lbfgs_heads(tr, y[:1200], 10, [0.1, 1.0], max_iter=200)
    ours = [float(((te @ w[i] + b[i]).argmax(1) == y[1200:]).float().mean()) for i in range(2)]
    for i, c in enumerate((0.1, 1.0)):
        ref = LogisticRegression(C=c, max_iter=1000).fit(tr.numpy(), y[:1200].numpy()).score(te.numpy(), y[1200:])
        assert abs(ours[i] - ref) < 0.015, (c, ours[i], ref)
    feats = SimpleNamespace(train=x[:1200], train_labels=y[:1200], test=x[1200:], test_labels=y[1200:],
                            num_classes=10, seed=0)
    out = LogRegProbe(LogRegOptions()).evaluate(feats, None)
    assert out["logreg"] > 0.9 and out["logreg_c"] in LogRegOptions().C
    few = FewShotProbe(FewShotOptions(shots=[1, 5], draws=4)).evaluate(feats, None)
    assert set(few) == {"fewshot_n1", "fewshot_n1_std", "fewshot_n5", "fewshot_n5_std"}
    assert 0.3 < few["fewshot_n1"] < few["fewshot_n5"] < out["logreg"] and 0 < few["fewshot_n5_std"] < 0.1
    assert FewShotProbe(FewShotOptions(shots=[1], draws=4)).evaluate(feats, None)["fewshot_n1"] == few["fewshot_n1"]


def test_representation_metrics_follow_their_definitions():
    from plugins.probes.representation import alignment, linear_cka, rankme, uniformity

    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 16, generator=g)
    assert rankme(x[:, :1].repeat(1, 16)) == pytest.approx(1.0, abs=1e-3)  # collapse: rank 1
    assert 14 < rankme(x) <= 16  # isotropic: nearly the dimension
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    assert linear_cka(x, 3 * x @ q + 1) == pytest.approx(1.0, abs=1e-9)  # invariant to rotation, scale, shift
    assert linear_cka(x, torch.randn(500, 8, generator=g)) < 0.1
    labels = torch.arange(500) % 5
    u = F.normalize(x, dim=1)
    brute = np.mean([float((u[i] - u[j]).pow(2).sum()) for i in range(500) for j in range(500)
                     if i != j and labels[i] == labels[j]])
    assert alignment(x, labels, 5) == pytest.approx(brute, rel=1e-6)
    pair = torch.cdist(u, u).pow(2)
    off = ~torch.eye(500, dtype=torch.bool)
    assert uniformity(x) == pytest.approx(float(torch.exp(-2 * pair[off]).mean().log()), rel=1e-5)


def test_one_run_with_every_protocol_writes_the_documented_keys(tmp_path):
    """The acceptance run, tiny: a k list, an lr grid, two layers and the representation metrics."""
    import json

    from framework._base.metrics import from_summary
    from tiny_runs import fit

    s = fit(tmp_path, "evaluator=[knn,linear,rankme,cka,alignment]", "evaluator.knn.k=[10,20,200]",
            "evaluator.linear.lr=[1e-3,1e-2,1e-1]", "evaluator.linear.epochs=2", "eval.layers=[-1,-2]")
    m = json.loads((tmp_path / "summary.json").read_text())["metrics"]
    assert m == s["metrics"] and not s.get("errors")
    for t in ("teacher", "teacher_bn", "student", "teacher.L-2", "student.L-2"):
        for metric in ("knn", "knn_k10", "knn_k20", "knn_k200", "linear", "linear_lr", "linear_val_lr0.01",
                       "linear_std", "rankme", "uniformity", "alignment"):
            assert f"{metric}/{t}" in m, f"{metric}/{t}"
        assert m[f"knn/{t}"] == m[f"knn_k10/{t}"] and m[f"linear_lr/{t}"] in (1e-3, 1e-2, 1e-1)
    assert "knn/input" in m and "knn/input.L-2" not in m  # pixels have no layers
    assert 0 <= m["cka_teacher/student"] <= 1 and 0 <= m["cka_init/student"] <= 1 and "cka_teacher/teacher" not in m
    assert m["cka_teacher/student"] == pytest.approx(m["cka_init/student"], abs=1e-3)  # α = 1e-10: init = teacher
    kinds = from_summary(s)
    assert not kinds["rankme"].accuracy and not kinds["uniformity"].higher_is_better and not kinds["linear_lr"].accuracy


def test_bad_layers_name_the_problem():
    import timm
    from torch import nn

    from framework._contract.features import check_layers, layer_embedder
    from framework._nets.models import Network

    with pytest.raises(RtlabError, match="without repeats"):
        check_layers([-1, -1])
    with pytest.raises(RtlabError, match="eval.layers entries must be ints"):
        check_layers([-1, "a/b"])
    net = Network(timm.create_model("test_resnet", num_classes=0), nn.Identity(), 0)
    names = [info["module"] for info in net.encoder.feature_info]
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(layer_embedder(net, names[-2])(x), layer_embedder(net, -2)(x))  # a name or its index
    assert layer_embedder(net, -2)(x).shape == (2, net.encoder.feature_info[-2]["num_chs"])
    with pytest.raises(RtlabError, match="no stage 'nope'; its stages are"):
        layer_embedder(net, "nope")
    with pytest.raises(RtlabError, match="out of range"):
        layer_embedder(net, -40)
