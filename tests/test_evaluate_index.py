"""Index sweep: recall against faiss's own evaluation helper, monotone in nprobe, the operating point, --apply."""
from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
from faiss.contrib.evaluation import knn_intersection_measure
from PIL import Image

from evaluate_helpers import OTHER_ENCODER, clustered, write_store
from sslsearch.errors import EncoderMismatchError, InvalidArgumentError
from sslsearch.evaluate import PLOT_SIZE, plot_recall_qps, sweep_index
from sslsearch.index.build import build_index
from sslsearch.index.io import read_card, read_index_files


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """A 3,000-vector store and an IVF index over it (built by the index package)."""
    root = tmp_path_factory.mktemp("indexed")
    vectors, labels = clustered(100, 30, 24, spread=0.8, seed=9)
    store = write_store(root / "emb", vectors, list(labels))
    build_index(store, root / "ivf", kind="ivf", device="cpu", eval_queries=200, progress=False)
    return root, store, vectors


def test_recall_matches_faiss_evaluation_and_grows_with_nprobe(indexed, tmp_path):
    root, store, vectors = indexed
    queries = np.random.default_rng(1).normal(size=(150, 24)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    result = sweep_index(root / "ivf", store, queries=queries, k=10, values=[1, 2, 8, 10**6], repeats=1,
                         n_single_queries=20, device="cpu")
    index, card = read_index_files(root / "ivf")
    nlist = faiss.extract_index_ivf(index).nlist
    _, exact_ids = faiss.knn(queries, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)
    for setting in result.settings:
        faiss.extract_index_ivf(index).nprobe = min(setting.value, nlist)
        _, found = index.search(queries, 10)
        assert setting.recall == pytest.approx(knn_intersection_measure(found, exact_ids))
        assert setting.qps_batch > 0 and setting.qps_single > 0
    recalls = [s.recall for s in result.settings]
    assert recalls == sorted(recalls)  # IVF probes a superset of lists as nprobe grows
    assert recalls[-1] == pytest.approx(1.0)  # all lists probed: exact
    assert result.queries_from == "150 given query vectors"


@pytest.mark.parametrize("given", [False, True])
def test_a_store_beyond_memory_is_streamed_with_the_same_recalls(indexed, monkeypatch, given):
    import sslsearch.evaluate.index_sweep as index_sweep

    root, store, _ = indexed
    queries = np.random.default_rng(2).normal(size=(60, 24)).astype(np.float32) if given else None
    options = dict(queries=queries, n_queries=120, k=10, values=[1, 4, 10**6], repeats=1, n_single_queries=5,
                   device="cpu")
    whole = sweep_index(root / "ivf", store, **options)
    read_all = []
    monkeypatch.setattr(index_sweep, "IN_MEMORY_MAX_BYTES", 0)
    monkeypatch.setattr(index_sweep.EmbeddingStore, "read_all", lambda *a, **kw: read_all.append(1))
    streamed = sweep_index(root / "ivf", store, **options)
    assert not read_all  # never all vectors at once
    assert [s.recall for s in streamed.settings] == [s.recall for s in whole.settings]
    assert streamed.settings[-1].recall == pytest.approx(1.0) and streamed.queries_from == whole.queries_from
    assert any("streamed" in note for note in streamed.notes) and not any("streamed" in n for n in whole.notes)


def test_operating_point_and_apply(indexed, tmp_path):
    root, store, _ = indexed
    result = sweep_index(root / "ivf", store, target_recall=0.9, n_queries=200, n_single_queries=10, repeats=1,
                         apply=True, device="cpu")
    point = result.operating_point
    assert point is not None and point.recall >= 0.9 and result.applied
    assert all(s.recall < 0.9 for s in result.settings if s.value < point.value)  # the smallest that meets it
    card = read_card(root / "ivf")
    assert card.search_params == {"nprobe": point.value}
    assert card.recall_at_10 == pytest.approx(point.recall)
    assert card.tuning[-1]["source"] == "sslsearch bench index --apply"
    read_index_files(root / "ivf")  # card and index file still belong together
    path = plot_recall_qps(result, tmp_path / "recall.png")
    assert path.stat().st_size > 1000 and Image.open(path).size == PLOT_SIZE


def test_unreachable_target_leaves_the_card_alone(indexed):
    root, store, _ = indexed
    before = (root / "ivf" / "index.json").read_text()
    with pytest.raises(InvalidArgumentError, match="no setting reaches recall@10 1.0"):
        sweep_index(root / "ivf", store, target_recall=1.0, values=[1], n_queries=100, n_single_queries=5,
                    repeats=1, apply=True, device="cpu")
    assert (root / "ivf" / "index.json").read_text() == before


def test_store_from_the_card_and_mismatches(indexed, tmp_path):
    root, store, vectors = indexed
    assert sweep_index(root / "ivf", values=[4], n_queries=50, n_single_queries=5, repeats=1,
                       device="cpu").ntotal == len(vectors)
    other = write_store(tmp_path / "other", vectors, None, encoder=OTHER_ENCODER)
    with pytest.raises(EncoderMismatchError, match="timm:other"):
        sweep_index(root / "ivf", other, values=[4])
    smaller = write_store(tmp_path / "smaller", vectors[:100], None)
    with pytest.raises(InvalidArgumentError, match="holds 3000 vectors"):
        sweep_index(root / "ivf", smaller, values=[4])
    with pytest.raises(InvalidArgumentError, match="--apply needs k = 10"):
        sweep_index(root / "ivf", store, k=5, apply=True)


def test_hnsw_and_flat_parameters(tmp_path):
    vectors, labels = clustered(40, 5, 16, seed=2)
    store = write_store(tmp_path / "emb", vectors, list(labels))
    build_index(store, tmp_path / "hnsw", kind="hnsw", device="cpu", eval_queries=20, progress=False)
    build_index(store, tmp_path / "flat", kind="flat", device="cpu", eval_queries=20, progress=False)
    hnsw = sweep_index(tmp_path / "hnsw", store, values=[16, 64], n_queries=50, n_single_queries=5, repeats=1)
    assert [s.label for s in hnsw.settings] == ["efSearch=16", "efSearch=64"]
    flat = sweep_index(tmp_path / "flat", store, n_queries=50, n_single_queries=5, repeats=1, apply=True)
    assert [s.label for s in flat.settings] == ["(no parameter)"] and flat.settings[0].recall == 1.0
    assert json.loads((tmp_path / "flat" / "index.json").read_text())["search_params"] == {}
