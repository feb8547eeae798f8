"""Index.search / search_ids / search_images / search_arrays: results, self-exclusion, encoder checks, bad input."""
from __future__ import annotations

import json
import shutil

import faiss
import numpy as np
import pytest

from index_helpers import brute_force, held_out_queries, make_store
from sslsearch.errors import EncoderMismatchError, InputNotFoundError, InvalidArgumentError, StoreError
from sslsearch.index import Neighbor, SearchResult, build_index, load_index
from sslsearch.index.search import search_query_file

N = 1_500


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A flat and an HNSW index over one store whose vectors 10 and 11 are identical (a duplicate)."""
    root = tmp_path_factory.mktemp("search")
    from sslsearch.index.synthetic import synthetic_embeddings

    vectors = synthetic_embeddings(N, 32, intrinsic_dim=12, n_clusters=20, seed=0)
    vectors[11] = vectors[10]
    make_store(root / "emb", N, vectors=vectors)
    build_index(root / "emb", root / "flat", kind="flat", device="cpu", eval_queries=50, progress=False)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # a deterministic graph
    try:
        build_index(root / "emb", root / "hnsw", kind="hnsw", device="cpu", eval_queries=50, progress=False)
    finally:
        faiss.omp_set_num_threads(threads)
    return root, vectors


def test_search_vectors_returns_typed_results(setup):
    root, vectors = setup
    index = load_index(root / "flat")
    queries = held_out_queries(N, 5)
    results = index.search(queries, k=4)
    assert len(results) == 5 and all(isinstance(r, SearchResult) for r in results)
    expected = brute_force(queries, vectors, 4)
    for row, result in enumerate(results):
        assert result.query == f"row:{row}" and result.skipped is None
        assert [n.id for n in result.neighbors] == expected[row].tolist()
        assert [n.rank for n in result.neighbors] == [1, 2, 3, 4]
        assert all(isinstance(n, Neighbor) and n.path == f"c{n.id % 7}/{n.id}.png" for n in result.neighbors)
        scores = [n.score for n in result.neighbors]
        assert scores == sorted(scores, reverse=True) and -1 <= scores[-1] <= scores[0] <= 1.0001
    # queries are normalised: a scaled query has the same neighbours and cosine scores
    scaled = index.search(queries[:1] * 7.5, k=4, names=["mine"])[0]
    assert scaled.query == "mine" and [n.id for n in scaled.neighbors] == expected[0].tolist()
    assert scaled.neighbors[0].score == pytest.approx(results[0].neighbors[0].score, abs=1e-5)
    # a single (dim,) vector is one query; the dict form is JSON-ready
    assert index.search(queries[0], k=2)[0].to_dict()["neighbors"][0]["id"] == expected[0, 0]


def test_search_arrays_is_the_raw_faiss_call(setup):
    root, _ = setup
    index = load_index(root / "hnsw")
    queries = held_out_queries(N, 20)
    plain = faiss.read_index(str(root / "hnsw" / "index.faiss"))
    scores, ids = index.search_arrays(queries, 10)
    raw_scores, raw_ids = plain.search(queries, 10)
    np.testing.assert_array_equal(ids, raw_ids)
    np.testing.assert_allclose(scores, raw_scores)
    assert index.search_arrays(queries.astype(np.float64), 10)[1].tolist() == ids.tolist()


@pytest.mark.parametrize("name", ["flat", "hnsw"])
def test_search_ids_leaves_the_query_out(setup, name):
    root, vectors = setup
    index = load_index(root / name)
    results = index.search_ids([10, 42], k=5)
    assert [r.query for r in results] == ["id:10", "id:42"]
    first, second = results
    assert 10 not in [n.id for n in first.neighbors] and len(first.neighbors) == 5
    assert first.neighbors[0].id == 11 and first.neighbors[0].score == pytest.approx(1.0, abs=1e-5)  # its duplicate
    assert 42 not in [n.id for n in second.neighbors]
    if name == "flat":
        assert [n.id for n in second.neighbors] == brute_force(vectors[42:43], vectors, 6)[0, 1:].tolist()
    with pytest.raises(InvalidArgumentError, match="not in store"):
        index.search_ids([N + 5], k=3)
    with pytest.raises(InvalidArgumentError, match=f"use -k {N - 1}"):
        index.search_ids([1], k=N)


def test_bad_k_and_dims(setup):
    root, _ = setup
    index = load_index(root / "flat")
    queries = held_out_queries(N, 2)
    for k in (0, -3):
        with pytest.raises(InvalidArgumentError, match="k must be > 0"):
            index.search(queries, k=k)
    with pytest.raises(InvalidArgumentError, match=f"more than the {N:,} vectors"):
        index.search_arrays(queries, N + 1)
    assert len(index.search(queries, k=N)[0].neighbors) == N  # k = n is allowed
    with pytest.raises(EncoderMismatchError, match="dim 31.*dim 32.*timm:synthetic"):
        index.search(queries[:, :31], k=3)
    with pytest.raises(EncoderMismatchError, match="timm:synthetic"):
        index.search_arrays(np.zeros((2, 33), np.float32), 3)
    with pytest.raises(InvalidArgumentError, match="zero or not finite"):
        index.search(np.zeros((1, 32)), k=3)
    with pytest.raises(InvalidArgumentError, match="numbers"):
        index.search(np.array([["a"] * 32]), k=3)


def test_other_encoder_is_refused(setup, tmp_path):
    root, _ = setup
    index = load_index(root / "flat")
    other = {"id": "enc-ffffffffffffffff", "spec": "timm:other", "dim": 32}
    with pytest.raises(EncoderMismatchError, match="timm:synthetic"):
        index.search(held_out_queries(N, 2), k=3, encoder=other)
    make_store(tmp_path / "other", 20, encoder=other)
    with pytest.raises(EncoderMismatchError, match="built with timm:synthetic"):
        search_query_file(index, tmp_path / "other", k=3)
    make_store(tmp_path / "same", 20, vectors=setup[1][:20])  # same encoder: rows are named by their paths
    results = search_query_file(index, tmp_path / "same", k=3)
    assert [r.query for r in results[:2]] == ["c0/0.png", "c1/1.png"] and results[0].neighbors[0].id == 0


def test_query_files(setup, tmp_path):
    root, _ = setup
    index = load_index(root / "flat")
    np.save(tmp_path / "q.npy", held_out_queries(N, 3))
    assert len(search_query_file(index, tmp_path / "q.npy", k=2)) == 3
    np.save(tmp_path / "wrong.npy", np.ones((3, 16), np.float32))
    with pytest.raises(EncoderMismatchError, match="dim 16"):
        search_query_file(index, tmp_path / "wrong.npy", k=2)
    (tmp_path / "text.npy").write_text("not numpy")
    with pytest.raises(InvalidArgumentError, match="not a readable .npy"):
        search_query_file(index, tmp_path / "text.npy", k=2)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidArgumentError):
        search_query_file(index, tmp_path / "objects.npy", k=2)
    with pytest.raises(InputNotFoundError):
        search_query_file(index, tmp_path / "missing.npy", k=2)


def test_moved_store_hides_paths_but_search_works(setup, tmp_path):
    root, _ = setup
    shutil.copytree(root / "flat", tmp_path / "idx")

    card = json.loads((tmp_path / "idx" / "index.json").read_text())
    card["store"]["path"] = str(tmp_path / "gone")
    (tmp_path / "idx" / "index.json").write_text(json.dumps(card))
    index = load_index(tmp_path / "idx")
    result = index.search(held_out_queries(N, 1), k=3)[0]
    assert all(n.path is None for n in result.neighbors) and "not readable" in index.store_note
    with pytest.raises(StoreError, match="needs the store"):
        index.search_ids([1], k=3)


@pytest.mark.gpu
def test_flat_search_on_cuda_matches_cpu(setup):
    root, _ = setup
    queries = held_out_queries(N, 50)
    cpu = load_index(root / "flat").search_arrays(queries, 10)[1]
    gpu = load_index(root / "flat", device="cuda").search_arrays(queries, 10)[1]
    assert (cpu == gpu).mean() > 0.99


@pytest.mark.parametrize("sparse_ids", [False, True])
def test_torch_exact_path_matches_faiss_flat(tmp_path, sparse_ids):
    """The flat-index path used when only torch sees a GPU, exercised on the CPU."""
    import torch

    from sslsearch.index.io import read_index_files
    from sslsearch.index.search import Index

    ids = np.arange(600) * 3 + 1 if sparse_ids else None
    make_store(tmp_path / "emb", 600, ids=ids)
    build_index(tmp_path / "emb", tmp_path / "idx", kind="flat", device="cpu", eval_queries=10, progress=False)
    faiss_index, card = read_index_files(tmp_path / "idx")
    on_torch = Index(faiss_index, card, tmp_path / "idx", exact_device=torch.device("cpu"))
    queries = held_out_queries(600, 20)
    expected = load_index(tmp_path / "idx").search_arrays(queries, 5)
    got = on_torch.search_arrays(queries, 5)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-6)
