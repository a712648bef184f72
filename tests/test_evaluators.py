"""Probes against reference implementations."""

from __future__ import annotations

import numpy as np
import torch

from plugins.knn import knn_predict
from plugins.linear_probe import standardize, train_linear_probe


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
