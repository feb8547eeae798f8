"""The steps of deduplicate(): DedupOptions checks, the graph cache, the typed clusters, DedupSummary / summary.json."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sslsearch.dedup import DedupOptions, DedupSummary, deduplicate
from sslsearch.dedup.graph import similar_pairs
from sslsearch.dedup.graph_cache import GraphCache, PairScorer
from sslsearch.dedup.options import DEFAULT_REPORT_CLUSTERS
from sslsearch.edits import EDIT_PRESETS
from sslsearch.errors import InvalidArgumentError, UnknownNameError

from test_dedup import planted  # noqa: F401  (fixture)

# summary.json as written before deduplicate() became a pipeline of steps (commit 65b0703): keys in file order
SUMMARY_KEYS = ["store", "source_root", "encoder", "images", "skipped_when_embedded", "clusters", "images_in_clusters",
                "largest_cluster", "kept", "removed", "removed_by_match", "threshold", "keep_policy", "graph",
                "against", "seconds", "outputs", "sslsearch_version", "created"]
NESTED_KEYS = {
    "encoder": ["spec", "id"],
    "removed_by_match": ["file", "pixels", "near"],
    "threshold": ["value", "method", "score", "density", "calibration"],
    "keep_policy": ["name", "rule"],
    "graph": ["method", "neighbors", "device", "cells", "candidate_pairs", "pairs_at_threshold", "seconds"],
    "outputs": ["clusters", "keep", "remove", "report"],
}
AGAINST_KEYS = ["index", "ntotal", "new_images_duplicating_index", "index_items_matched"]


@pytest.mark.parametrize("arguments, error, message", [
    ({"threshold": 0.0}, InvalidArgumentError, "threshold"),
    ({"threshold": 1.5}, InvalidArgumentError, "threshold"),
    ({"threshold": float("nan")}, InvalidArgumentError, "threshold"),
    ({"threshold": True}, InvalidArgumentError, "threshold"),
    ({"precision": 1.0}, InvalidArgumentError, "precision"),
    ({"keep": "biggest"}, UnknownNameError, "keep policy"),
    ({"score": "cosin"}, UnknownNameError, "did you mean"),
    ({"score": "adjusted", "against": "idx"}, InvalidArgumentError, "--against"),
    ({"edits": "pad,flip"}, UnknownNameError, "edit"),
    ({"method": "approximate"}, UnknownNameError, "graph method"),
    ({"neighbors": 0}, InvalidArgumentError, "--neighbors must be an integer >= 1, got 0; e.g. 16"),
    ({"neighbors": 2.5}, InvalidArgumentError, "--neighbors"),
    ({"report_max_clusters": 0}, InvalidArgumentError, "report_max_clusters"),
])
def test_options_refuse_bad_values(arguments: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        DedupOptions(**arguments)


def test_options_resolve_and_keep_values() -> None:
    options = DedupOptions(threshold=1, neighbors=np.int64(4), edits="classic")
    assert options.threshold == 1.0 and isinstance(options.threshold, float) and options.neighbors == 4
    assert options.edit_names == EDIT_PRESETS["classic"] and not options.calibrating
    assert options.score_for(10) == "cosine"  # auto with a given threshold
    calibrated = DedupOptions()
    assert calibrated.calibrating and calibrated.report_max_clusters == DEFAULT_REPORT_CLUSTERS
    assert calibrated.score_for(1000) == "verified" and calibrated.score_for(10**6) == "adjusted"
    assert DedupOptions(against="idx").score_for(10) == "cosine"
    with pytest.raises(AttributeError):
        calibrated.keep = "first"  # frozen


def test_graph_cache_builds_once_and_rebuilds_lower() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((200, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    timings: dict[str, float] = {}
    graph = GraphCache(vectors, neighbors=6, method="exact", device="cpu", timings=timings)
    high = graph.pairs(0.8)
    again = graph.pairs(0.9)
    assert graph.builds == 1 and "graph" in timings
    assert np.array_equal(again.first, high.first[high.similarity >= 0.9])
    low = graph.pairs(0.5)  # a lower floor needs a new graph
    assert graph.builds == 2 and len(low) > len(high)
    reference = similar_pairs(vectors, 0.5, neighbors=6, method="exact", device="cpu")
    assert np.array_equal(low.first, reference.first) and np.array_equal(low.second, reference.second)
    assert np.allclose(low.similarity, reference.similarity)
    scorer = PairScorer()
    assert scorer.cosine_floor(0.9) == 0.9 and np.array_equal(scorer.scores(low), low.similarity)
    assert np.all(scorer.store_scores(graph, 0.7) >= 0.7) and graph.builds == 2


def test_summary_json_keeps_its_keys(planted, tmp_path: Path) -> None:  # noqa: F811
    store, _ = planted
    result = deduplicate(store, tmp_path / "dups", threshold=0.9, report=True)
    summary = json.loads((tmp_path / "dups" / "summary.json").read_text())
    assert list(summary) == SUMMARY_KEYS
    for key, nested in NESTED_KEYS.items():
        assert list(summary[key]) == nested, key
    assert list(summary["seconds"]) == ["load", "calibration", "graph", "clusters", "write", "report", "total"]
    assert summary["against"] is None and summary["outputs"]["report"] == "report.html"
    assert result.summary == summary
    assert (summary["images"], summary["clusters"], summary["kept"], summary["removed"]) == (20, 4, 15, 5)
    assert summary["graph"]["candidate_pairs"] >= summary["graph"]["pairs_at_threshold"] >= 3


def test_summary_object_round_trips(planted, tmp_path: Path) -> None:  # noqa: F811
    store, _ = planted
    result = deduplicate(store, tmp_path / "dups", threshold=0.95, keep="first")
    from sslsearch.dedup.against import IndexMatches  # noqa: F401  (the type summary.against describes)
    from sslsearch.dedup.summary import AgainstSummary

    summary = DedupSummary(**{**_fields_of(result.summary), "against": AgainstSummary("/idx", 12, 3, 2)})
    written = summary.to_dict()
    assert list(written) == SUMMARY_KEYS and list(written["against"]) == AGAINST_KEYS
    assert written["keep_policy"] == {"name": "first", "rule": "smallest id (first path in sorted order)"}
    summary.write(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == written


def _fields_of(summary: dict) -> dict:
    """DedupSummary's constructor arguments from a summary.json object (threshold as the run's choice)."""
    from sslsearch.dedup.result import ThresholdChoice
    from sslsearch.dedup.summary import GraphSummary

    threshold = summary["threshold"]
    return {
        "store": summary["store"], "source_root": summary["source_root"],
        "encoder_spec": summary["encoder"]["spec"], "encoder_id": summary["encoder"]["id"],
        "images": summary["images"], "skipped_when_embedded": summary["skipped_when_embedded"],
        "clusters": summary["clusters"], "images_in_clusters": summary["images_in_clusters"],
        "largest_cluster": summary["largest_cluster"], "kept": summary["kept"], "removed": summary["removed"],
        "removed_by_match": summary["removed_by_match"],
        "threshold": ThresholdChoice(threshold["value"], threshold["method"], score=threshold["score"]),
        "keep_policy": summary["keep_policy"]["name"], "graph": GraphSummary(**summary["graph"]), "against": None,
        "seconds": summary["seconds"], "report": summary["outputs"]["report"],
        "sslsearch_version": summary["sslsearch_version"], "created": summary["created"],
    }
