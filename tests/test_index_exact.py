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
