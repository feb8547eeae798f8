"""Tests for sslsearch.dedup.cell_join: near-duplicate pairs by joining an IVF index's lists, vs the exact graph."""
from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np
import pytest

from index_helpers import make_store, planted_copies
from sslsearch.dedup.cell_join import cell_join_pairs
from sslsearch.dedup.graph import similar_pairs
from sslsearch.dedup.index_pairs import similar_pairs_from_index
from sslsearch.errors import InvalidArgumentError, UnknownNameError
from sslsearch.index.build import build_index
from sslsearch.index.search import load_index
from sslsearch.store import EmbeddingStore

N, DIM, DUPLICATES, NLIST = 6_000, 32, 150, 32
FLOOR = 0.97


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, Path, np.ndarray, set[tuple[int, int]]]:
    """A float16 store whose last 150 rows are noisy copies of earlier rows; its on-disk IVF32,SQ8 index."""
    vectors, sources = planted_copies(N, DIM, DUPLICATES, seed=7, cluster_seed=4)
    root = tmp_path_factory.mktemp("cell_join")
    stored = make_store(root / "emb", N, DIM, vectors=vectors, dtype="float16", shard_rows=1_000)
    build_index(root / "emb", root / "idx", on_disk=True, workers=1, nlist=NLIST, progress=False)
    pairs = {(int(min(a, b)), int(max(a, b))) for a, b in zip(sources, range(N - DUPLICATES, N))}
    return root / "emb", root / "idx", stored, pairs


def _set(pairs) -> set[tuple[int, int]]:
    return set(zip(pairs.first.tolist(), pairs.second.tolist()))


def test_joining_every_list_gives_exactly_the_exact_graph(planted):
    store, index, vectors, _ = planted
    exact = similar_pairs(vectors, FLOOR, method="exact", device="cpu")
    # every other list is "nearby": only the boundary test prunes, and it must lose nothing
    found = similar_pairs_from_index(store, index, FLOOR, method="join", cell_neighbors=NLIST - 1)
    assert found.method == "index-join" and found.cells == NLIST and found.details["lists_joined"] == NLIST
    assert _set(found) == _set(exact) and len(exact) > 1_000
    np.testing.assert_allclose(found.similarity, np.sum(vectors[found.first] * vectors[found.second], axis=1),
                               atol=1e-5)  # exact similarities of the stored (float16) vectors
    assert np.all(found.first < found.second) and np.all(found.similarity >= FLOOR)


def test_planted_duplicates_are_found_with_a_few_nearby_lists(planted):
    store, index, vectors, planted_pairs = planted
    found = _set(similar_pairs_from_index(store, index, FLOOR, method="join", cell_neighbors=4))
    assert len(found & planted_pairs) == len(planted_pairs)
    truth = _set(similar_pairs(vectors, FLOOR, method="exact", device="cpu"))
    assert len(found & truth) / len(truth) >= 0.95
    own_list_only = _set(similar_pairs_from_index(store, index, FLOOR, method="join", cell_neighbors=0))
    assert len(own_list_only & truth) < len(found & truth)  # the nearby lists matter: the test can fail


def test_the_boundary_test_prunes_and_the_stats_add_up(planted):
    store, index, _, _ = planted
    loaded = load_index(index)
    ivf = faiss.extract_index_ivf(loaded.faiss_index)
    first, second, similarity, stats = cell_join_pairs(EmbeddingStore.open(store), ivf, FLOOR, neighbors=16,
                                                       cell_neighbors=8)
    assert 0 < stats.pruned_share < 1 and 0 < stats.partner_pruned_share < 1
    assert stats.cell_neighbors == 8 and stats.cells == NLIST
    assert stats.candidates >= len(first) > 0 and stats.flops > 0 and stats.copy_buckets == 1
    assert len(first) == len(second) == len(similarity)


def test_a_small_budget_copies_through_bucket_files_with_the_same_pairs(planted, tmp_path):
    store, index, _, _ = planted
    loaded = load_index(index)
    ivf = faiss.extract_index_ivf(loaded.faiss_index)
    opened = EmbeddingStore.open(store)
    one = cell_join_pairs(opened, ivf, FLOOR, neighbors=16, cell_neighbors=4)
    # half the budget for the copy (32 kB), buckets of half that: 250 float16 rows of 32 dims, 24 bucket files
    many = cell_join_pairs(opened, ivf, FLOOR, neighbors=16, cell_neighbors=4, memory_budget_bytes=64_000,
                           work_dir=tmp_path / "scratch", chunk_rows=500)
    assert many[3].copy_buckets == -(-N // 250) and one[3].copy_buckets == 1
    for a, b in zip(one[:3], many[:3]):
        np.testing.assert_array_equal(a, b)
    assert os.listdir(tmp_path / "scratch") == []  # the list-order copy is removed


def test_bad_arguments_and_a_flat_index_are_refused(planted, tmp_path):
    store, index, _, _ = planted
    with pytest.raises(UnknownNameError, match="search"):
        similar_pairs_from_index(store, index, FLOOR, method="hash")
    flat = tmp_path / "flat"
    build_index(store, flat, kind="flat", progress=False)
    with pytest.raises(InvalidArgumentError, match="use method='search'"):
        similar_pairs_from_index(store, flat, FLOOR, method="join")
    with pytest.raises(InvalidArgumentError, match="cell_neighbors"):
        similar_pairs_from_index(store, index, FLOOR, method="join", cell_neighbors=-1)


def test_joining_some_lists_gives_the_pairs_of_their_rows(planted):
    store, index, _, _ = planted
    loaded = load_index(index)
    ivf = faiss.extract_index_ivf(loaded.faiss_index)
    opened = EmbeddingStore.open(store)
    every = cell_join_pairs(opened, ivf, FLOOR, neighbors=16, cell_neighbors=4)
    some = cell_join_pairs(opened, ivf, FLOOR, neighbors=16, cell_neighbors=4, lists=[3, 1, 3])
    members = np.concatenate([faiss.rev_swig_ptr(ivf.invlists.get_ids(c), ivf.invlists.list_size(c)).copy()
                              for c in (1, 3)])
    assert some[3].lists_joined == 2 and some[3].rows_joined == len(members) and every[3].rows_joined == N
    touching = np.isin(some[0], members) | np.isin(some[1], members)
    assert touching.all() and 0 < len(some[0]) < len(every[0])
    assert set(zip(some[0].tolist(), some[1].tolist())) <= set(zip(every[0].tolist(), every[1].tolist()))
    with pytest.raises(InvalidArgumentError, match="lists must be in"):
        cell_join_pairs(opened, ivf, FLOOR, neighbors=16, lists=[NLIST])
