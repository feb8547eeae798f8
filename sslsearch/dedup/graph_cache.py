"""The store's k-NN graph for dedup: which one (``choose_graph_method``), built once at the lowest floor asked for
(``GraphCache``), and the score its pairs are cut on (``PairScorer``).

Graph methods: the in-memory ``exact`` and ``partitioned`` graphs of ``graph.py`` (every vector in
memory), and two through an IVF index of the store (``index_pairs.py``), built by dedup in a
temporary folder inside DUPS and removed at the end — the store streams in chunks and only
candidate pairs are held:

* ``ivf``: each row searched in the index, visiting at most ``IVF_GRAPH_NPROBE`` inverted lists;
* ``join``: each inverted list joined with its nearby lists by matrix products (``cell_join.py``)
  over a list-order copy of the store on disk (in the same temporary folder), on an on-disk
  index of about ``JOIN_LIST_ROWS`` rows a list. Per row it beats the search once lists hold
  thousands of rows (10M × 384, 4,096 lists: 1,168-1,265 rows/s vs 221 for the search alone, same
  run); on 1M rows the search was faster (docs/scale.md).

``auto`` picks an index graph when a ``memory_budget`` is given, the run needs no vector but those
of cluster members (a given cosine threshold, no ``--against``), and the in-memory graph's estimated
memory (``in_memory_graph_bytes``) exceeds the budget: ``join`` from ``JOIN_MIN_ROWS`` rows, ``ivf``
below.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidArgumentError, unknown_name
from .density import DensityAdjustment
from .exact import EXACT_CANDIDATE_SIMILARITY
from .graph import GRAPH_METHODS, SimilarPairs, similar_pairs

INDEX_GRAPH_METHODS: tuple[str, ...] = ("ivf", "join")  # graphs through an index of the store (the store streamed)
DEDUP_GRAPH_METHODS: tuple[str, ...] = (*GRAPH_METHODS, *INDEX_GRAPH_METHODS)
# Inverted lists the ivf graph visits per row, at most (the index card's nprobe when lower). The card's value is
# tuned for recall@10 of *all* neighbours, which on unclustered data means every list (200k random 128-d vectors:
# nprobe 2048 of 2048, > 10 min); a near duplicate sits far closer than those. Measured on those 200k vectors with
# 2,000 planted copies (cosine 0.979-0.99, threshold 0.97): nprobe 4 / 8 / 16 / 32 found 1998 / 1999 / 2000 / 2000
# of the 2,000 pairs in 12.6 / 18.3 / 28.8 / 55.1 s (2 contended cores); the partitioned graph found 1974 in 8 s.
IVF_GRAPH_NPROBE = 16
# The join's index: one list per this many rows (the measured 10M point had 2,441), so that its products are large.
JOIN_LIST_ROWS = 2_500
# auto's crossover from the search to the join: measured at 1M rows (search 559 s, recall 0.81; join 663-1,254 s) and
# at 10M (join 5.3x faster per row); the point in between is not measured.
JOIN_MIN_ROWS = 5_000_000
MIN_TRAIN_PER_LIST = 39  # faiss k-means's minimum training points per list
FAISS_TILE_BYTES = 4096 * 1024 * 4  # faiss.knn scores 4,096 queries × 1,024 database rows at a time


def in_memory_graph_bytes(images: int, dim: int, neighbors: int) -> int:
    """Estimated memory of the in-memory k-NN graph on CPU: every vector (float32), each row's k-NN results
    (float32 score + int64 id) and faiss's 4,096 × 1,024 tile of scores.

    Example:
        >>> in_memory_graph_bytes(1_000_000, 384, 16) // 2**20  # MiB
        1675
    """
    return images * dim * 4 + images * (neighbors + 1) * 12 + FAISS_TILE_BYTES


def check_graph_method(method: str) -> str:
    """Return ``method`` if one of ``DEDUP_GRAPH_METHODS``, else raise UnknownNameError."""
    if method not in DEDUP_GRAPH_METHODS:
        raise unknown_name("graph method", method, DEDUP_GRAPH_METHODS)
    return method


def choose_graph_method(method: str, *, images: int, dim: int, neighbors: int, score: str, needs_all_vectors: bool,
                        memory_budget_bytes: int | None) -> str:
    """The graph a dedup run builds: ``ivf`` or ``join`` (through an index), or ``method`` as given for the
    in-memory graph (which resolves ``auto`` to exact or partitioned by size and device, ``graph.resolve_method``).
    A pure function.

    Args:
        method: auto, exact, partitioned, ivf or join.
        images, dim: the store's size.
        neighbors: k of the graph.
        score: the run's score (cosine, adjusted or verified).
        needs_all_vectors: the run reads every vector anyway (calibration, ``--against``).
        memory_budget_bytes: the run's memory budget, or None.

    Raises:
        UnknownNameError: an unknown method.
        InvalidArgumentError: ``ivf`` or ``join`` with the adjusted or verified score (they need the
            in-memory graph).

    Example:
        >>> choose_graph_method("auto", images=10**7, dim=384, neighbors=16, score="cosine",
        ...                     needs_all_vectors=False, memory_budget_bytes=4 * 10**9)
        'join'
        >>> choose_graph_method("auto", images=2 * 10**6, dim=384, neighbors=16, score="cosine",
        ...                     needs_all_vectors=False, memory_budget_bytes=10**9)
        'ivf'
    """
    check_graph_method(method)
    if method in INDEX_GRAPH_METHODS:
        if score != "cosine":
            raise InvalidArgumentError(f"--method {method} finds cosine-similar pairs through an index, so it cannot "
                                       f"give the {score} score (which needs the in-memory graph); pass --score "
                                       "cosine, or --method auto")
        return method
    if method == "auto" and memory_budget_bytes is not None and score == "cosine" and not needs_all_vectors \
            and in_memory_graph_bytes(images, dim, neighbors) > memory_budget_bytes:
        return "join" if images >= JOIN_MIN_ROWS else "ivf"
    return method


class GraphCache:
    """One k-NN graph serves calibration (the store's pairs above its floor) and the clusters.

    The graph is built on the first ask and rebuilt only when a later ask needs a lower floor; each
    ask gets the built graph cut at its own floor. Build time is added to ``timings["graph"]``.

    Example:
        >>> vectors = np.eye(3, 4, dtype=np.float32)
        >>> graph = GraphCache(vectors, neighbors=2, method="exact", device="cpu")
        >>> len(graph.pairs(0.5)), graph.builds
        (0, 1)
    """

    def __init__(self, vectors: np.ndarray, *, neighbors: int, method: str, device: str, seed: int = 0,
                 record_neighbors: int = 0, progress: bool | None = None,
                 timings: dict[str, float] | None = None, store_dir: str | os.PathLike[str] | None = None,
                 workdir: str | os.PathLike[str] | None = None, memory_budget: str | int | None = None) -> None:
        if method in INDEX_GRAPH_METHODS and (store_dir is None or workdir is None):
            raise InvalidArgumentError(f"the {method} graph needs the store directory and a folder for its index; "
                                       "pass store_dir and workdir")
        self.vectors = vectors
        self.neighbors = neighbors
        self.method = method
        self.device = device
        self.seed = seed
        self.record_neighbors = record_neighbors
        self.progress = progress
        self.timings = timings if timings is not None else {}
        self.store_dir = store_dir
        self.workdir = workdir
        self.memory_budget = memory_budget
        self.builds = 0
        self._built: SimilarPairs | None = None
        self._index_dir: Path | None = None

    def pairs(self, floor: float) -> SimilarPairs:
        """The graph's pairs with cosine similarity >= ``floor`` (building the graph at ``floor`` if needed)."""
        if self._built is None or self._built.min_similarity > floor:
            began = time.perf_counter()
            if self.method in INDEX_GRAPH_METHODS:
                self._built = self._index_pairs(floor)
            else:
                self._built = similar_pairs(self.vectors, floor, neighbors=self.neighbors, method=self.method,
                                            device=self.device, seed=self.seed,
                                            record_neighbors=self.record_neighbors, progress=self.progress)
            self.builds += 1
            self.timings["graph"] = self.timings.get("graph", 0.0) + time.perf_counter() - began
        return self._built.above(floor)

    def _index_pairs(self, floor: float) -> SimilarPairs:
        from ..index.build import build_index
        from ..index.io import read_card
        from ..store import EmbeddingStore
        from .index_pairs import similar_pairs_from_index

        began = time.perf_counter()
        join = self.method == "join"
        if self._index_dir is None:  # an IVF index of the store, on disk when a budget bounds memory (or to join)
            self._index_dir = Path(tempfile.mkdtemp(prefix=".graph-index-", dir=self.workdir))
            rows = len(EmbeddingStore.open(self.store_dir)) if join else 0
            # lists of ~JOIN_LIST_ROWS; under 39 rows (what k-means needs for one list) the automatic single list
            nlist = max(1, rows // JOIN_LIST_ROWS) if join and rows >= MIN_TRAIN_PER_LIST else None
            build_index(self.store_dir, self._index_dir, kind="ivf", memory_budget=self.memory_budget,
                        on_disk=join or self.memory_budget is not None, overwrite=True, progress=self.progress,
                        seed=self.seed, nlist=nlist)
        if join:  # the list-order copy goes into the index's temporary folder, removed with it
            found = similar_pairs_from_index(self.store_dir, self._index_dir, floor, neighbors=self.neighbors,
                                             method="join", memory_budget=self.memory_budget,
                                             work_dir=self._index_dir, progress=self.progress)
        else:
            tuned = int(read_card(self._index_dir).search_params.get("nprobe", IVF_GRAPH_NPROBE))
            found = similar_pairs_from_index(self.store_dir, self._index_dir, floor, neighbors=self.neighbors,
                                             nprobe=min(tuned, IVF_GRAPH_NPROBE), memory_budget=self.memory_budget,
                                             progress=self.progress)
        # the index build counts as graph time; the method is named as the option names it
        return dataclasses.replace(found, method=self.method, seconds=time.perf_counter() - began)

    def close(self) -> None:
        """Remove the index graph's temporary index (nothing for the in-memory graphs)."""
        if self._index_dir is not None:
            shutil.rmtree(self._index_dir, ignore_errors=True)
            self._index_dir = None


@dataclass(frozen=True)
class PairScorer:
    """The score graph pairs are cut on: cosine similarity, or with ``density`` the density-adjusted score."""

    density: DensityAdjustment | None = None

    def cosine_floor(self, score_floor: float) -> float:
        """The graph floor that keeps every pair scoring >= ``score_floor`` (and the exact-duplicate candidates)."""
        floor = self.density.cosine_floor(score_floor) if self.density is not None else score_floor
        return min(floor, EXACT_CANDIDATE_SIMILARITY)

    def scores(self, pairs: SimilarPairs) -> np.ndarray:
        """(m,) float32 scores of ``pairs``."""
        if self.density is None:
            return pairs.similarity
        return self.density.pair_scores(pairs.first, pairs.second, pairs.similarity)

    def store_scores(self, graph: GraphCache, floor: float) -> np.ndarray:
        """The scores >= ``floor`` of the store's graph pairs (what store calibration counts)."""
        found = self.scores(graph.pairs(self.cosine_floor(floor)))
        return found[found >= floor]
