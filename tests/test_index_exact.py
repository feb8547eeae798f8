"""Exact search: against numpy brute force, ties by id, streaming inputs, padding, errors, GPU."""
from __future__ import annotations

import numpy as np
import pytest

from index_helpers import brute_force, make_store
from sslsearch.errors import InvalidArgumentError, UnknownNameError
from sslsearch.index.exact import exact_search, recall_at_k
from sslsearch.index.synthetic import synthetic_embeddings
from sslsearch.store import EmbeddingStore, StoreBatch


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return synthetic_embeddings(3_000, 32, intrinsic_dim=12, n_clusters=20, seed=3)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
@pytest.mark.parametrize("block_size", [100, 1_024, 100_000])
def test_matches_brute_force(vectors, backend, block_size):
    queries = synthetic_embeddings(40, 32, intrinsic_dim=12, n_clusters=20, seed=4)
    scores, ids = exact_search(queries, vectors, 10, backend=backend, block_size=block_size, device="cpu")
    expected = brute_force(queries, vectors, 10)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (40, 10)
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ vectors.T, expected, axis=1), rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_ties_go_to_smallest_id(backend):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((50, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    database = np.repeat(base, 5, axis=0)  # every vector five times: ties straddle every cut
    for k in (3, 7, 12):
        _, ids = exact_search(database[::5], database, k, backend=backend, block_size=64, device="cpu")
        for row, query in enumerate(range(0, len(database), 5)):
            assert ids[row, :5].tolist()[:min(k, 5)] == list(range(query, query + min(k, 5)))
        again = exact_search(database[::5], database, k, backend=backend, block_size=64, device="cpu")[1]
        np.testing.assert_array_equal(ids, again)


def test_streamed_batches_keep_their_ids(vectors):
    ids = np.arange(len(vectors)) * 3 + 1000
    batches = [StoreBatch(ids[s:s + 700], vectors[s:s + 700], {}) for s in range(0, len(vectors), 700)]
    scores, found = exact_search(vectors[:20], iter(batches), 5, device="cpu")
    np.testing.assert_array_equal(found, ids[brute_force(vectors[:20], vectors, 5)])
    pairs = ((b.ids, b.embeddings) for b in batches)
    np.testing.assert_array_equal(exact_search(vectors[:20], pairs, 5, device="cpu")[1], found)


def test_store_as_database(tmp_path):
    stored = make_store(tmp_path / "emb", 500, 16, ids=np.arange(500) + 7, dtype="float16")
    _, found = exact_search(stored[:10], EmbeddingStore.open(tmp_path / "emb"), 4, block_size=128, device="cpu")
    np.testing.assert_array_equal(found, brute_force(stored[:10], stored, 4) + 7)


def test_fewer_rows_than_k_are_padded():
    database = np.eye(3, 8, dtype=np.float32)
    scores, ids = exact_search(database[:1], database, 5, device="cpu")
    assert ids[0, :3].tolist() == [0, 1, 2] and ids[0, 3:].tolist() == [-1, -1]
    assert np.isneginf(scores[0, 3:]).all()


def test_errors(vectors):
    with pytest.raises(InvalidArgumentError, match="k must be > 0"):
        exact_search(vectors[:2], vectors, 0)
    with pytest.raises(InvalidArgumentError, match="dim"):
        exact_search(vectors[:2, :16], vectors, 3, device="cpu")
    with pytest.raises(InvalidArgumentError, match="shape"):
        exact_search(np.zeros((2, 3, 4), np.float32), vectors, 3)
    with pytest.raises(UnknownNameError, match="torch"):
        exact_search(vectors[:2], vectors, 3, backend="blas")


def test_recall_at_k():
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert recall_at_k(truth, truth) == 1.0
    assert recall_at_k(np.array([[1, 2, -1, -1], [8, 7, 9, 10]]), truth) == pytest.approx(0.5)


@pytest.mark.gpu
def test_cuda_matches_cpu(vectors):
    import torch

    cpu = exact_search(vectors[:100], vectors, 10, device="cpu")
    gpu = exact_search(vectors[:100], vectors, 10, device="cuda")
    assert recall_at_k(gpu[1], cpu[1]) > 0.999
    resident = (torch.arange(len(vectors), device="cuda"), torch.from_numpy(vectors).cuda())
    np.testing.assert_array_equal(exact_search(vectors[:100], [resident], 10, device="cuda")[1], gpu[1])


@pytest.mark.parametrize("backend", ["auto", "torch", "faiss"])
def test_any_backend_agrees_on_float16_and_strided_databases(vectors, backend):
    # the faiss path scores a float32 C-contiguous array in one call and anything else block by block
    queries = vectors[:25]
    half = vectors.astype(np.float16)
    strided = np.asfortranarray(vectors)
    expected = brute_force(queries, half.astype(np.float32), 10)
    np.testing.assert_array_equal(exact_search(queries, half, 10, backend=backend, block_size=512, device="cpu")[1],
                                  expected)
    np.testing.assert_array_equal(exact_search(queries, strided, 10, backend=backend, block_size=512,
                                               device="cpu")[1], brute_force(queries, vectors, 10))


@pytest.mark.parametrize("ids, self_ids, k, expected", [
    ([[3, 7, 5]], [3], 2, [[7, 5]]),            # own id first: dropped
    ([[7, 3, 5]], [3], 2, [[7, 5]]),            # own id second (a duplicate scored as high): dropped where it is
    ([[7, 8, 5]], [3], 2, [[7, 8]]),            # own id absent (ties or an approximate miss): the last hit goes
    ([[1, 2, 3, 4]], [2], 2, [[1, 3]]),         # more columns than k + 1: cut to k
    ([[0, 1], [1, 0]], [0, 1], 1, [[1], [0]]),  # row by row
])
def test_drop_self_matches(ids, self_ids, k, expected) -> None:
    from sslsearch.index.exact import drop_self_matches, drop_self_matches_with_scores

    ids, self_ids = np.array(ids, np.int64), np.array(self_ids, np.int64)
    assert drop_self_matches(ids, self_ids, k).tolist() == expected
    scores = -ids.astype(np.float32) / 10  # a score that names its id
    kept_scores, kept_ids = drop_self_matches_with_scores(scores, ids, self_ids, k)
    assert kept_ids.tolist() == expected and np.allclose(kept_scores, -kept_ids / 10)


def test_leave_one_out_search_matches_brute_force_without_the_query(vectors: np.ndarray) -> None:
    from sslsearch.index.exact import drop_self_matches

    queries, ids = vectors[:50], np.arange(50)
    found = drop_self_matches(exact_search(queries, vectors, 11)[1], ids, 10)
    scores = queries @ vectors.T
    scores[np.arange(50), ids] = -np.inf
    assert recall_at_k(found, np.argsort(-scores, axis=1)[:, :10]) == 1.0
