"""Tests for sslsearch.dedup.index_pairs: near-duplicate pairs through an on-disk IVF index vs the exact graph."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index_helpers import make_store, planted_copies
from sslsearch.dedup.graph import similar_pairs
from sslsearch.dedup.index_pairs import similar_pairs_from_index
from sslsearch.errors import InvalidArgumentError, StoreError
from sslsearch.index.build import build_index

N, DIM, DUPLICATES = 10_000, 32, 200
FLOOR = 0.97


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """A store whose last 200 rows are noisy copies of 200 random earlier rows; its on-disk IVF-SQ8 index."""
    vectors, sources = planted_copies(N, DIM, DUPLICATES, seed=5, cluster_seed=3)
    root = tmp_path_factory.mktemp("dedup_index")
    stored = make_store(root / "emb", N, DIM, vectors=vectors, shard_rows=2_000)
    build_index(root / "emb", root / "idx", on_disk=True, workers=2, progress=False)
    return root / "emb", root / "idx", stored, sources


def test_pairs_match_the_exact_graph_with_exact_similarities(planted):
    store, index, vectors, _ = planted
    found = similar_pairs_from_index(store, index, FLOOR)
    exact = similar_pairs(vectors, FLOOR, method="exact", device="cpu")
    truth = set(zip(exact.first.tolist(), exact.second.tolist()))
    mine = set(zip(found.first.tolist(), found.second.tolist()))
    # the synthetic clusters are dense: tens of thousands of natural pairs above the floor, where
    # the 16 nearest differ slightly between exact and IVF-SQ8 rankings
    assert len(mine & truth) / len(truth) >= 0.9
    planted_pairs = {(int(min(a, b)), int(max(a, b))) for a, b in zip(planted[3], range(N - DUPLICATES, N))}
    assert planted_pairs <= truth
    assert len(mine & planted_pairs) / DUPLICATES >= 0.98
    assert np.all(found.similarity >= FLOOR)  # re-scored exactly: nothing below the floor
    expected = np.sum(vectors[found.first] * vectors[found.second], axis=1)
    np.testing.assert_allclose(found.similarity, expected, atol=1e-5)
    assert found.method == "index" and found.cells > 0 and np.all(found.first < found.second)


def test_an_index_of_another_store_is_refused(planted, tmp_path):
    store, index, _, _ = planted
    other = tmp_path / "other"
    make_store(other, 500, DIM, seed=9)
    with pytest.raises(StoreError, match="rebuild it"):
        similar_pairs_from_index(other, index, FLOOR)
    with pytest.raises(InvalidArgumentError):
        similar_pairs_from_index(store, index, FLOOR, neighbors=0)


def test_rescoring_in_several_passes_gives_the_same_pairs(planted):
    store, index, _, _ = planted
    one_pass = similar_pairs_from_index(store, index, FLOOR)
    # 200 kB for vectors: groups of ~800 rows, several passes over the store
    many = similar_pairs_from_index(store, index, FLOOR, memory_budget=400_000)
    np.testing.assert_array_equal(many.first, one_pass.first)
    np.testing.assert_array_equal(many.second, one_pass.second)
    np.testing.assert_array_equal(many.similarity, one_pass.similarity)
