"""Probes against reference implementations."""

from __future__ import annotations

import numpy as np
import torch

import pytest

from framework.errors import RtlabError
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
