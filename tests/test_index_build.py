"""Index build: every kind against exact search (recall floors), the card, ids, output-dir rules, damaged files."""
from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from index_helpers import brute_force, held_out_queries, make_store, recall
from sslsearch.errors import IndexFileError, InputNotFoundError, InvalidArgumentError, OutputExistsError, StoreError
from sslsearch.index import build_index, load_index
from sslsearch.index.io import read_card, read_index_files
from sslsearch.store import manifest_hash


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    """One OpenMP thread: deterministic HNSW graphs, and no spinning thread pairs on a shared 2-core box."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.mark.parametrize("kind, n, dim, floor", [
    ("flat", 800, 32, 1.0),
    ("hnsw", 3_000, 32, 0.95),
    ("ivf", 4_000, 32, 0.93),
    ("ivfpq", 10_240, 16, 0.35),  # 4 one-byte codes per 16-dim vector (16× smaller): lossy, the floor says so
])
def test_kinds_against_exact_search(tmp_path, kind, n, dim, floor):
    stored = make_store(tmp_path / "emb", n, dim)
    card = build_index(tmp_path / "emb", tmp_path / "idx", kind=kind, memory_budget=None, device="cpu",
                       eval_queries=200, progress=False)
    assert card.kind == kind and card.ntotal == n and card.dim == dim and card.metric == "ip"
    assert card.n_eval_queries == 200 and card.recall_k == 10
    assert card.recall_at_10 >= (0.95 if kind in ("flat", "hnsw", "ivf") else floor)
    index = load_index(tmp_path / "idx")
    queries = held_out_queries(n, 100, dim)
    scores, ids = index.search_arrays(queries, 10)
    truth = brute_force(queries, stored, 10)
    measured = recall(ids, truth)
    assert measured >= floor
    assert abs(measured - card.recall_at_10) < 0.1  # the card's figure holds for queries it never saw
    assert ids.dtype == np.int64 and scores.shape == (100, 10)
    if kind == "flat":
        np.testing.assert_array_equal(ids, truth)
    # the file is plain faiss: same results without sslsearch, ids = store ids
    plain = faiss.read_index(str(tmp_path / "idx" / "index.faiss"))
    np.testing.assert_array_equal(plain.search(queries, 10)[1], ids)


def test_card_contents(tmp_path):
    make_store(tmp_path / "emb", 2_500)
    card = build_index(tmp_path / "emb", tmp_path / "idx", kind="hnsw", device="cpu", eval_queries=100,
                       progress=False)
    on_disk = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert on_disk == json.loads(json.dumps(card.to_dict()))
    assert on_disk["factory"] == "IDMap,HNSW32,Flat" and on_disk["encoder"]["id"] == "enc-test0000000000"
    assert on_disk["store"]["manifest_sha256"] == manifest_hash(tmp_path / "emb")
    assert on_disk["store"]["rows"] == 2_500
    assert on_disk["size_bytes"] == (tmp_path / "idx" / "index.faiss").stat().st_size
    assert on_disk["build_seconds"] > 0 and on_disk["peak_memory_bytes"] >= 0
    assert on_disk["faiss_version"] == faiss.__version__ and on_disk["sslsearch_version"]
    # tuning: the chosen efSearch is the first measured setting reaching the target
    points = on_disk["tuning"]
    chosen = next(p for p in points if p["recall"] >= 0.95)
    assert chosen["search_params"] == on_disk["search_params"] and chosen is points[-1]
    assert on_disk["recall_at_10"] == chosen["recall"]
    # QPS of every tuning search (one batch of the 100 eval queries); the card's QPS is the chosen one's
    assert all(p["qps_batch"] > 0 for p in points) and card.qps == chosen["qps_batch"]
    assert any(f"{card.qps:,.0f} queries/s" in line for line in card.summary_lines())
    plain = faiss.read_index(str(tmp_path / "idx" / "index.faiss"))
    assert faiss.downcast_index(plain.index).hnsw.efSearch == on_disk["search_params"]["efSearch"]
    assert "held-out" in on_disk["recall_definition"]
    assert read_card(tmp_path / "idx") == card
    assert not [p.name for p in (tmp_path / "idx").iterdir() if p.name not in ("index.faiss", "index.json")]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_sparse_store_ids_are_faiss_ids(tmp_path, kind):
    ids = np.arange(1_600) * 5 + 3  # ids with gaps (skipped files), not in 0..n-1
    stored = make_store(tmp_path / "emb", 1_600, ids=ids)
    card = build_index(tmp_path / "emb", tmp_path / "idx", kind=kind, device="cpu", eval_queries=50, progress=False)
    assert card.factory.startswith("IDMap,") == (kind != "ivf")
    found = faiss.read_index(str(tmp_path / "idx" / "index.faiss")).search(stored[:20], 1)[1][:, 0]
    np.testing.assert_array_equal(found, ids[:20])
    hits = load_index(tmp_path / "idx").search_ids([int(ids[5])], k=3)[0].neighbors
    assert int(ids[5]) not in [h.id for h in hits] and all(h.path == f"c{h.id % 7}/{h.id}.png" for h in hits)


def test_float16_store_and_single_vector(tmp_path):
    make_store(tmp_path / "emb", 1, dtype="float16")
    card = build_index(tmp_path / "emb", tmp_path / "idx", device="cpu", progress=False)
    assert card.factory == "Flat" and card.ntotal == 1 and card.recall_at_10 is None and card.n_eval_queries == 0
    with pytest.raises(InvalidArgumentError, match="k=2 is more than the 1"):
        load_index(tmp_path / "idx").search_arrays(np.ones((1, 32), np.float32), 2)


def test_budget_picks_compressed_index_and_errors(tmp_path):
    make_store(tmp_path / "emb", 12_000, 16, shard_rows=5_000)
    card = build_index(tmp_path / "emb", tmp_path / "idx", memory_budget="250KB", device="cpu", eval_queries=50,
                       progress=False)
    assert card.kind == "ivfpq" and "memory budget" in card.reason
    assert card.build_params["memory_budget_bytes"] == 250_000 and card.factory == "IVF256,PQ4"
    with pytest.raises(InvalidArgumentError, match="at least"):
        build_index(tmp_path / "emb", tmp_path / "small", memory_budget="100KB", device="cpu", progress=False)
    assert not (tmp_path / "small").exists()  # nothing written when the choice fails


def test_output_directory_rules(tmp_path):
    make_store(tmp_path / "emb", 300)
    build_index(tmp_path / "emb", tmp_path / "idx", device="cpu", progress=False)
    before = (tmp_path / "idx" / "index.json").read_bytes()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        build_index(tmp_path / "emb", tmp_path / "idx", device="cpu", progress=False)
    assert (tmp_path / "idx" / "index.json").read_bytes() == before
    build_index(tmp_path / "emb", tmp_path / "idx", kind="hnsw", device="cpu", overwrite=True, progress=False)
    assert read_card(tmp_path / "idx").kind == "hnsw"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="other file"):
        build_index(tmp_path / "emb", tmp_path / "other", device="cpu", overwrite=True, progress=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"
    with pytest.raises(OutputExistsError):
        build_index(tmp_path / "emb", tmp_path / "emb", device="cpu", progress=False)


def test_bad_stores(tmp_path):
    with pytest.raises(InputNotFoundError):
        build_index(tmp_path / "missing", tmp_path / "idx", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="manifest"):
        build_index(tmp_path / "empty", tmp_path / "idx", progress=False)


@pytest.fixture
def built(tmp_path):
    make_store(tmp_path / "emb", 400)
    build_index(tmp_path / "emb", tmp_path / "idx", device="cpu", eval_queries=20, progress=False)
    return tmp_path / "idx"


def test_corrupted_index_file(built):
    path = built / "index.faiss"
    data = bytearray(path.read_bytes())
    data[:8] = b"garbage!"
    path.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="corrupted"):
        load_index(built)


def test_truncated_index_file(built):
    path = built / "index.faiss"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(IndexFileError, match="does not match its card"):
        load_index(built)


def test_card_that_does_not_match_the_file(built, tmp_path):
    card = json.loads((built / "index.json").read_text())
    (built / "index.json").write_text(json.dumps({**card, "ntotal": 999}))
    with pytest.raises(IndexFileError, match="does not match its card"):
        read_index_files(built)
    (built / "index.json").write_text(json.dumps({k: v for k, v in card.items() if k != "dim"}))
    with pytest.raises(IndexFileError, match="lacks field 'dim'"):
        load_index(built)
    (built / "index.json").write_text("{not json")
    with pytest.raises(IndexFileError, match="not valid JSON"):
        load_index(built)
    (built / "index.json").unlink()
    with pytest.raises(IndexFileError, match="interrupted"):
        load_index(built)
    with pytest.raises(InputNotFoundError):
        load_index(tmp_path / "nowhere")
