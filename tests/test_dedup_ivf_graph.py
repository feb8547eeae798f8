"""deduplicate() with the index graphs (ivf: search an IVF index of the store; join: join its lists): forced, chosen by
--memory-budget, refused."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from index_helpers import make_store
from sslsearch.dedup import deduplicate
from sslsearch.dedup.graph_cache import choose_graph_method, in_memory_graph_bytes
from sslsearch.errors import InvalidArgumentError, UnknownNameError

N, DIM, COPIES = 3_000, 32, 60
THRESHOLD = 0.97


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, set[tuple[int, int]]]:
    """Random unit vectors (no natural pair near 0.97) whose last 60 rows are near copies (cosine ~0.985) of others."""
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sources = rng.choice(N - COPIES, COPIES, replace=False)
    copies = vectors[sources] + rng.normal(0, 0.03, (COPIES, DIM)).astype(np.float32)
    vectors[N - COPIES:] = copies / np.linalg.norm(copies, axis=1, keepdims=True)
    store = tmp_path_factory.mktemp("ivf_graph") / "emb"
    make_store(store, N, DIM, vectors=vectors, shard_rows=1_000)
    return store, {(int(s), int(c)) for s, c in zip(sources, range(N - COPIES, N))}


def _pairs(out: Path) -> set[tuple[int, int]]:
    import pyarrow.parquet as pq

    table = pq.read_table(out / "clusters.parquet").to_pydict()
    members: dict[int, list[int]] = {}
    for cluster, identifier in zip(table["cluster_id"], table["id"]):
        members.setdefault(cluster, []).append(identifier)
    return {(min(group), max(group)) for group in members.values() if len(group) == 2}


def test_forced_ivf_graph_finds_the_planted_pairs(planted, tmp_path: Path) -> None:
    store, truth = planted
    ivf = deduplicate(store, tmp_path / "ivf", threshold=THRESHOLD, method="ivf")
    exact = deduplicate(store, tmp_path / "exact", threshold=THRESHOLD, method="exact")
    assert _pairs(tmp_path / "exact") == truth  # the data: exactly the planted pairs reach the threshold
    found = _pairs(tmp_path / "ivf")
    assert len(found & truth) / len(truth) >= 0.95 and found <= truth
    summary = json.loads((tmp_path / "ivf" / "summary.json").read_text())
    assert summary["graph"]["method"] == "ivf" and summary["graph"]["cells"] > 0
    assert ivf.removed == len(found) and exact.removed == COPIES
    assert not any(p.name.startswith(".graph-index") for p in (tmp_path / "ivf").iterdir())  # the index is removed
    # the same clusters carry the same similarities to their keepers
    by_id = {m.id: m.similarity for c in exact.clusters for m in c.members}
    assert all(m.similarity == pytest.approx(by_id[m.id], abs=1e-6) for c in ivf.clusters for m in c.members)


def test_forced_join_graph_finds_the_planted_pairs_and_leaves_no_copy(planted, tmp_path: Path, monkeypatch) -> None:
    import sslsearch.dedup.graph_cache as graph_cache
    import sslsearch.index.build as build

    store, truth = planted
    monkeypatch.setattr(graph_cache, "JOIN_LIST_ROWS", 500)  # six lists of ~500 rows: pairs across lists too
    lists: list[int | None] = []
    build_index = build.build_index
    monkeypatch.setattr(build, "build_index", lambda *a, **kw: (lists.append(kw["nlist"]), build_index(*a, **kw))[1])
    joined = deduplicate(store, tmp_path / "join", threshold=THRESHOLD, method="join")
    found = _pairs(tmp_path / "join")
    assert len(found & truth) / len(truth) >= 0.95 and found <= truth
    summary = joined.summary["graph"]
    assert summary["method"] == "join" and summary["cells"] == 6 and lists == [6]
    assert not any(p.name.startswith(".graph-index") for p in (tmp_path / "join").iterdir())  # index and copy removed
    assert joined.removed == len(found)


@pytest.mark.parametrize("n", [2, 5, 60])
def test_join_graph_on_a_tiny_store(tmp_path: Path, n: int) -> None:
    vectors = np.random.default_rng(n).standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[1] = vectors[0]
    make_store(tmp_path / "emb", n, DIM, vectors=vectors)
    result = deduplicate(tmp_path / "emb", tmp_path / "dups", threshold=THRESHOLD, method="join")
    assert result.summary["graph"]["method"] == "join" and result.removed == 1


def test_memory_budget_picks_the_ivf_graph_for_auto(planted, tmp_path: Path, monkeypatch) -> None:
    import sslsearch.dedup.run as run

    store, truth = planted
    reads: list[bool] = []
    read_store = run.read_store
    monkeypatch.setattr(run, "read_store", lambda *a, **kw: (reads.append(kw["vectors"]), read_store(*a, **kw))[1])
    needed = in_memory_graph_bytes(N, DIM, 16)
    small = deduplicate(store, tmp_path / "small", threshold=THRESHOLD, memory_budget=needed // 2)
    large = deduplicate(store, tmp_path / "large", threshold=THRESHOLD, memory_budget=needed * 2)
    assert small.summary["graph"]["method"] == "ivf" and large.summary["graph"]["method"] == "exact"
    assert reads == [False, True]  # the ivf run read no vector up front (only its clusters' members', later)
    assert len(_pairs(tmp_path / "small") & truth) / len(truth) >= 0.95
    assert _pairs(tmp_path / "large") == truth


@pytest.mark.parametrize("method, score, needs_all, budget, expected", [
    ("auto", "cosine", False, None, "auto"),  # no budget: the in-memory graph, as before
    ("auto", "cosine", False, 10**12, "auto"),  # it fits
    ("auto", "cosine", False, 10**6, "ivf"),  # it does not
    ("auto", "cosine", True, 10**6, "auto"),  # calibration or --against read every vector anyway
    ("auto", "adjusted", False, 10**6, "auto"),  # the adjusted score needs the in-memory graph
    ("exact", "cosine", False, 10**6, "exact"),  # an explicit method is kept
    ("ivf", "cosine", True, None, "ivf"),
    ("join", "cosine", True, None, "join"),
])
def test_choose_graph_method(method, score, needs_all, budget, expected) -> None:
    assert choose_graph_method(method, images=100_000, dim=384, neighbors=16, score=score,
                               needs_all_vectors=needs_all, memory_budget_bytes=budget) == expected


def test_auto_joins_from_millions_of_rows() -> None:
    from sslsearch.dedup.graph_cache import JOIN_MIN_ROWS

    def pick(images: int) -> str:
        return choose_graph_method("auto", images=images, dim=384, neighbors=16, score="cosine",
                                   needs_all_vectors=False, memory_budget_bytes=10**6)

    assert pick(JOIN_MIN_ROWS - 1) == "ivf" and pick(JOIN_MIN_ROWS) == "join"


@pytest.mark.parametrize("method", ["ivf", "join"])
def test_index_graphs_refuse_scores_they_cannot_give(planted, tmp_path: Path, method: str) -> None:
    store, _ = planted
    with pytest.raises(InvalidArgumentError, match=f"--method {method} .*--score cosine"):
        deduplicate(store, tmp_path / "a", threshold=THRESHOLD, method=method, score="adjusted")
    with pytest.raises(UnknownNameError, match="ivf"):
        deduplicate(store, tmp_path / "b", threshold=THRESHOLD, method="ivx")
    with pytest.raises(InvalidArgumentError, match="memory size"):
        deduplicate(store, tmp_path / "c", threshold=THRESHOLD, memory_budget="lots")


def test_cli_methods_ivf_join_and_memory_budget(planted, tmp_path: Path, capsys) -> None:
    from test_dedup import run_cli

    store, truth = planted
    code, out, _ = run_cli(["dedup", str(store), "--out", str(tmp_path / "a"), "--threshold", str(THRESHOLD),
                            "--memory-budget", "10MB", "--json"], capsys)
    summary = json.loads(out)
    assert code == 0 and summary["graph"]["method"] == "ivf" and summary["removed"] >= 0.95 * len(truth)
    code, out, _ = run_cli(["dedup", str(store), "--out", str(tmp_path / "j"), "--threshold", str(THRESHOLD),
                            "--method", "join", "--json"], capsys)
    summary = json.loads(out)
    assert code == 0 and summary["graph"]["method"] == "join" and summary["removed"] >= 0.95 * len(truth)
    code, _, err = run_cli(["dedup", str(store), "--out", str(tmp_path / "b"), "--method", "ivf", "--score",
                            "adjusted"], capsys)
    assert code == 1 and "--score cosine" in err and len(err.strip().splitlines()) == 1


def test_nprobe_is_capped_and_a_stale_index_is_cleared_by_overwrite(planted, tmp_path: Path, monkeypatch) -> None:
    import sslsearch.dedup.index_pairs as index_pairs
    from sslsearch.dedup.graph_cache import IVF_GRAPH_NPROBE
    from sslsearch.errors import OutputExistsError

    store, _ = planted
    asked: list[int] = []
    search = index_pairs.similar_pairs_from_index
    monkeypatch.setattr(index_pairs, "similar_pairs_from_index",
                        lambda *a, **kw: (asked.append(kw["nprobe"]), search(*a, **kw))[1])
    out = tmp_path / "dups"
    (out / ".graph-index-left").mkdir(parents=True)  # as an interrupted ivf run leaves it
    (out / ".graph-index-left" / "index.faiss").write_bytes(b"stale")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        deduplicate(store, out, threshold=THRESHOLD, method="ivf")
    deduplicate(store, out, threshold=THRESHOLD, method="ivf", overwrite=True)
    assert not (out / ".graph-index-left").exists() and (out / "summary.json").is_file()
    assert len(asked) == 1 and 1 <= asked[0] <= IVF_GRAPH_NPROBE


def test_graph_cache_examples() -> None:
    import doctest

    import sslsearch.dedup.graph_cache as graph_cache

    failed, attempted = doctest.testmod(graph_cache, raise_on_error=False, verbose=False)
    assert attempted >= 4 and failed == 0
