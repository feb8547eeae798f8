"""Monitors: collapse detection on synthetic statistics, leave-one-out k-NN against brute force."""
from __future__ import annotations

import math

import pytest
import torch

from sslsearch.ssl.monitor import CollapseMonitor, embedding_spread, knn_leave_one_out_accuracy

LOG_K = math.log(1024)


def test_spread_of_collapsed_and_spread_embeddings() -> None:
    assert embedding_spread(torch.ones(16, 8) + 1e-7 * torch.randn(16, 8)) < 0.01
    assert embedding_spread(torch.randn(4096, 8)) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize(("values", "kind"), [
    ({"spread": 0.01, "loss": 5.0}, "embeddings"),
    ({"teacher_entropy": 0.99 * LOG_K, "teacher_mean_entropy": LOG_K, "log_prototypes": LOG_K, "loss": 3.0},
     "uniform"),
    ({"teacher_entropy": 0.01, "teacher_mean_entropy": 0.001, "log_prototypes": LOG_K, "loss": 3.0},
     "one_prototype"),
    ({"teacher_entropy": 2.0, "teacher_mean_entropy": 5.0, "log_prototypes": LOG_K, "loss": LOG_K * 1.001},
     "loss_at_log_k"),
])
def test_each_collapse_kind_is_reported_once(values: dict, kind: str) -> None:
    monitor = CollapseMonitor(grace_steps=10, repeat_every=3)
    monitor.observe(**values)
    assert monitor.check(step=5) == []  # within the grace period
    monitor.observe(**values)
    warnings = monitor.check(step=20)
    assert [w["kind"] for w in warnings] == [kind] and warnings[0]["hint"]
    monitor.observe(**values)
    assert monitor.check(step=30) == []  # not repeated at once
    for step in (40, 50):
        monitor.observe(**values)
        again = monitor.check(step=step)
    assert [w["kind"] for w in again] == [kind]


def test_healthy_statistics_raise_nothing() -> None:
    monitor = CollapseMonitor()
    monitor.observe(spread=0.6, teacher_entropy=2.0, teacher_mean_entropy=6.5, log_prototypes=LOG_K, loss=4.0)
    assert monitor.check(step=100) == []


def brute_force_knn(features: torch.Tensor, labels: torch.Tensor, k: int, temperature: float) -> float:
    features = torch.nn.functional.normalize(features.double(), dim=1)
    correct = 0
    for i in range(len(features)):
        scores = sorted(((float(features[i] @ features[j]), j) for j in range(len(features)) if j != i), reverse=True)
        votes: dict[int, float] = {}
        for score, j in scores[:k]:
            votes[int(labels[j])] = votes.get(int(labels[j]), 0.0) + math.exp(score / temperature)
        correct += max(votes, key=votes.get) == int(labels[i])
    return correct / len(features)


@pytest.mark.parametrize("k", [1, 5, 20])
def test_leave_one_out_knn_matches_brute_force(k: int) -> None:
    generator = torch.Generator().manual_seed(k)
    labels = torch.randint(0, 3, (40,), generator=generator)
    features = torch.randn(40, 6, generator=generator) + 1.5 * torch.nn.functional.one_hot(labels, 6).float()
    expected = brute_force_knn(features, labels, k, 0.07)
    assert knn_leave_one_out_accuracy(features, labels, k=k, temperature=0.07, block=7) == pytest.approx(expected)
