"""The k-NN similarity graph: exact against brute force, partitioned against exact, edge cases."""
from __future__ import annotations

import numpy as np
import pytest

from sslsearch.dedup.graph import resolve_method, similar_pairs
from sslsearch.errors import InvalidArgumentError, UnknownNameError


def planted(n: int, dim: int = 32, copies: int = 40, seed: int = 0) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """Clustered unit vectors with ``copies`` planted near-duplicate pairs (similarity ~0.95-0.99)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(2, n // 50), dim))
    x = centers[rng.integers(0, len(centers), n)] + rng.standard_normal((n, dim))
    sources = rng.choice(n - copies, copies, replace=False)
    targets = np.arange(n - copies, n)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[targets] = x[sources] + rng.uniform(0.1, 0.3, (copies, 1)) * rng.standard_normal((copies, dim)) / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), {(int(min(a, b)), int(max(a, b))) for a, b in zip(sources, targets)}


def brute_force(x: np.ndarray, floor: float, k: int) -> set[tuple[int, int]]:
    """Pairs (i<j) where j is among i's k nearest (or i among j's) with similarity >= floor."""
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    found = set()
    for i in range(len(x)):
        for j in np.argsort(-sims[i], kind="stable")[:k]:
            if sims[i, j] >= floor:
                found.add((min(i, int(j)), max(i, int(j))))
    return found


@pytest.mark.parametrize("floor,k", [(0.9, 4), (0.5, 8), (0.97, 1)])
def test_exact_graph_matches_brute_force(floor: float, k: int) -> None:
    x, _ = planted(400)
    pairs = similar_pairs(x, floor, neighbors=k, method="exact", device="cpu")
    got = set(zip(pairs.first.tolist(), pairs.second.tolist()))
    expected = brute_force(x, floor, k)
    # Ties at the k-th place may resolve either way; with continuous data there are none.
    assert got == expected
    assert np.all(pairs.first < pairs.second)
    np.testing.assert_allclose(pairs.similarity, np.einsum("id,id->i", x[pairs.first], x[pairs.second]), atol=1e-5)
    assert pairs.method == "exact" and pairs.neighbors == k


def test_partitioned_graph_finds_planted_pairs_like_exact() -> None:
    x, truth = planted(3000, copies=100, seed=1)
    exact = similar_pairs(x, 0.85, method="exact", device="cpu")
    approx = similar_pairs(x, 0.85, method="partitioned", device="cpu", seed=0)
    exact_set = set(zip(exact.first.tolist(), exact.second.tolist()))
    approx_set = set(zip(approx.first.tolist(), approx.second.tolist()))
    assert truth <= exact_set
    assert len(approx_set & exact_set) / len(exact_set) >= 0.95
    assert len(truth & approx_set) / len(truth) >= 0.95
    assert approx.method == "partitioned" and approx.cells > 1
    np.testing.assert_allclose(approx.similarity, np.einsum("id,id->i", x[approx.first], x[approx.second]), atol=1e-5)
    again = similar_pairs(x, 0.85, method="partitioned", device="cpu", seed=0)
    assert np.array_equal(again.first, approx.first) and np.array_equal(again.second, approx.second)


def test_identical_vectors_and_tiny_inputs() -> None:
    same = np.tile(np.array([[0.6, 0.8]], np.float32), (5, 1))
    pairs = similar_pairs(same, 0.99, neighbors=2, method="exact", device="cpu")
    assert len(pairs) >= 4  # enough edges to connect all five
    assert len(similar_pairs(same[:1], 0.5, device="cpu")) == 0
    assert len(similar_pairs(np.zeros((0, 2), np.float32), 0.5, device="cpu")) == 0
    above = pairs.above(1.5)
    assert len(above) == 0


def test_bad_arguments() -> None:
    x, _ = planted(50, copies=5)
    with pytest.raises(InvalidArgumentError, match="2-D"):
        similar_pairs(x[0], 0.9)
    with pytest.raises(InvalidArgumentError, match="neighbors"):
        similar_pairs(x, 0.9, neighbors=0)
    with pytest.raises(UnknownNameError, match="exact"):
        similar_pairs(x, 0.9, method="exactly")


@pytest.mark.parametrize("method,n,device,expected", [
    ("auto", 10, "cpu", "exact"), ("auto", 10_000_000, "cpu", "partitioned"), ("auto", 10_000_000, "cuda", "exact"),
    ("exact", 10_000_000, "cpu", "exact"), ("partitioned", 10, "cpu", "partitioned"),
])
def test_resolve_method(method: str, n: int, device: str, expected: str) -> None:
    assert resolve_method(method, n, device) == expected
