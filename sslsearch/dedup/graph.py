"""The near-duplicate graph: each vector's k nearest neighbours above a similarity floor, never an N×N matrix.

Two methods, both memory-bounded by chunks:

* ``exact``: ``sslsearch.index.exact.exact_search`` in query chunks: faiss brute-force blocks on
  CPU, blocked torch matmuls on CUDA (``--device cuda``; the auto choice on a GPU at any size).
* ``partitioned`` (CPU beyond ``EXACT_LIMIT_CPU`` rows): spherical k-means cells; every vector is
  a database member of its ``probes`` nearest cells and a query in its nearest one, and each
  cell is one exact k-NN. A near-duplicate pair lands in a shared cell unless the two vectors
  sit on different sides of ``probes`` cell boundaries, so its recall of pairs above a dedup
  threshold is close to 1 (measured against exact search in the tests and ``bench_dedup``)
  at a few percent of the exact cost. Each cell is searched by one worker thread with
  single-threaded faiss (small products lose most of their time to OpenMP barriers otherwise).
"""
from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..devices import resolve_device
from ..errors import InvalidArgumentError, unknown_name
from ..progress import progress_bar

GRAPH_METHODS: tuple[str, ...] = ("auto", "exact", "partitioned")
DEFAULT_NEIGHBORS = 16  # neighbours per image; clusters larger than this still connect through union-find
EXACT_LIMIT_CPU = 50_000  # above this many rows on CPU, auto partitions (exact is O(N²): 100k×384 ≈ 3 min on 2 cores)
DEFAULT_PROBES = 3  # cells each vector joins as a database member in the partitioned graph
QUERY_CHUNK = 4096  # query rows per exact k-NN call on CPU (one progress step)
GPU_QUERY_CHUNK = 262_144  # query rows per exact k-NN call on CUDA (the database streams once per call)
EXACT_DATABASE_BLOCK = 65_536  # database rows scored at once by exact_search


@dataclass(frozen=True)
class SimilarPairs:
    """Pairs of row positions whose cosine similarity is at least ``min_similarity``.

    Attributes:
        first: (m,) int64 row positions, ``first < second`` element-wise, pairs unique.
        second: (m,) int64 row positions.
        similarity: (m,) float32 cosine similarity of each pair.
        min_similarity: the floor the pairs were filtered with.
        neighbors: k of the k-NN graph.
        method: "exact" or "partitioned" (what ran, after resolving "auto").
        device: "cpu" or "cuda[:N]".
        seconds: wall time.
        cells: number of k-means cells (partitioned only, else 0).
        neighbor_similarity: (n, r) float32, each row's similarities to its r nearest other rows in
            the same search, descending (NaN where it had fewer), when ``record_neighbors = r`` was
            asked for (``density.py`` takes backgrounds from it); else None.
        details: what the method measured about itself, when it does (``index-join``: the
            ``cell_join.JoinStats`` as a dict); else None.
    """

    first: np.ndarray
    second: np.ndarray
    similarity: np.ndarray
    min_similarity: float
    neighbors: int
    method: str
    device: str
    seconds: float
    cells: int = 0
    neighbor_similarity: np.ndarray | None = None
    details: dict[str, Any] | None = None

    def __len__(self) -> int:
        return int(self.first.shape[0])

    def above(self, threshold: float) -> "SimilarPairs":
        """The pairs with similarity >= ``threshold`` (same metadata)."""
        return self.where(self.similarity >= threshold, max(threshold, self.min_similarity))

    def where(self, keep: np.ndarray, min_similarity: float | None = None) -> "SimilarPairs":
        """The pairs where the (m,) bool mask ``keep`` is true (same metadata and neighbour similarities)."""
        floor = self.min_similarity if min_similarity is None else min_similarity
        return SimilarPairs(self.first[keep], self.second[keep], self.similarity[keep], floor, self.neighbors,
                            self.method, self.device, self.seconds, self.cells, self.neighbor_similarity)


def resolve_method(method: str, n_rows: int, device: str) -> str:
    """Map ``auto`` to ``exact`` (CUDA, or at most ``EXACT_LIMIT_CPU`` rows) or ``partitioned``."""
    if method not in GRAPH_METHODS:
        raise unknown_name("graph method", method, GRAPH_METHODS)
    if method != "auto":
        return method
    return "exact" if device.startswith("cuda") or n_rows <= EXACT_LIMIT_CPU else "partitioned"


def similar_pairs(vectors: np.ndarray, min_similarity: float, *, neighbors: int = DEFAULT_NEIGHBORS,
                  method: str = "auto", device: str = "auto", probes: int = DEFAULT_PROBES, seed: int = 0,
                  record_neighbors: int = 0, progress: bool | None = None) -> SimilarPairs:
    """The k-NN graph of ``vectors`` reduced to pairs with similarity >= ``min_similarity``.

    Args:
        vectors: (n, d) float32, L2-normalised (cosine similarity = inner product).
        min_similarity: keep pairs at or above this cosine similarity, in (-1, 1].
        neighbors: k nearest neighbours searched per row (the row itself excluded).
        method: "auto", "exact" or "partitioned" (see the module docstring).
        device: "auto", "cpu" or "cuda"; CUDA runs the exact graph as blocked torch matmuls.
        probes: cells each vector joins as a database member (partitioned only); more is slower
            and closer to exact.
        seed: k-means seed (partitioned only); the same seed gives the same pairs.
        record_neighbors: when > 0, also record each row's similarities to its ``record_neighbors``
            nearest other rows (``SimilarPairs.neighbor_similarity``; the search then takes at least
            that many).
        progress: progress bar on stderr (default: when stderr is a terminal).

    Returns:
        The unique pairs (first < second), sorted by (first, second).

    Raises:
        InvalidArgumentError: a bad shape, ``neighbors < 1`` or ``probes < 1``.

    Example:
        >>> pairs = similar_pairs(vectors, 0.9)  # doctest: +SKIP
        >>> pairs.first[:3], pairs.second[:3], pairs.similarity[:3]  # doctest: +SKIP
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise InvalidArgumentError(f"vectors must be a 2-D (n, d) array, got shape {vectors.shape}")
    if neighbors < 1:
        raise InvalidArgumentError(f"neighbors must be >= 1, got {neighbors}")
    if probes < 1:
        raise InvalidArgumentError(f"probes must be >= 1, got {probes}")
    if record_neighbors < 0:
        raise InvalidArgumentError(f"record_neighbors must be >= 0, got {record_neighbors}")
    torch_device = resolve_device(device)
    chosen = resolve_method(method, len(vectors), torch_device.type)
    start = time.perf_counter()
    cells = 0
    recorded = np.full((len(vectors), record_neighbors), np.nan, np.float32)
    if len(vectors) < 2:
        found = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    elif chosen == "exact":
        found = _exact(vectors, min_similarity, neighbors, recorded, torch_device, progress)
    else:
        found, cells = _partitioned(vectors, min_similarity, neighbors, recorded, probes, seed, progress)
    first, second, similarity = _canonical(*found)
    return SimilarPairs(first, second, similarity, float(min_similarity), int(neighbors), chosen, str(torch_device),
                        time.perf_counter() - start, cells, recorded if record_neighbors else None)


# --------------------------------------------------------------------------- helpers


def _keep(query_rows: np.ndarray, scores: np.ndarray, labels: np.ndarray,
          min_similarity: float, neighbors: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flatten a (q, k) k-NN answer to (query, neighbour, score) triples above the floor, self-matches dropped.

    Only the first ``neighbors + 1`` columns (the row itself is usually one of them) give pairs.
    """
    if neighbors is not None:
        scores, labels = scores[:, :neighbors + 1], labels[:, :neighbors + 1]
    queries = np.repeat(query_rows, labels.shape[1])
    labels, scores = labels.reshape(-1), scores.reshape(-1)
    mask = (labels >= 0) & (labels != queries) & (scores >= min_similarity)
    return queries[mask], labels[mask].astype(np.int64), scores[mask].astype(np.float32)


def _top_scores(query_rows: np.ndarray, scores: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """(q, count) each row's scores to its nearest ``count`` rows other than itself, in order (NaN-padded)."""
    valid = (labels >= 0) & (labels != query_rows[:, None])
    position = np.cumsum(valid, axis=1) - 1  # 0-based rank among the valid neighbours
    out = np.full((len(query_rows), count), np.nan, np.float32)
    take = valid & (position < count)
    out[np.nonzero(take)[0], position[take]] = scores[take]
    return out


def _canonical(first: np.ndarray, second: np.ndarray, similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Order each pair (low, high) and drop repeats (a pair is usually found from both ends)."""
    if len(first) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    low, high = np.minimum(first, second), np.maximum(first, second)
    order = np.lexsort((high, low))
    low, high, similarity = low[order], high[order], similarity[order]
    unique = np.ones(len(low), dtype=bool)
    unique[1:] = (low[1:] != low[:-1]) | (high[1:] != high[:-1])
    return low[unique], high[unique], similarity[unique].astype(np.float32)


def _concat(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


def _exact(vectors: np.ndarray, min_similarity: float, neighbors: int, recorded: np.ndarray, device,
           progress: bool | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact k-NN graph with the index's blocked exact search (faiss blocks on CPU, torch matmuls on CUDA).

    Fills ``recorded`` (n, r) in place with each row's nearest similarities when r > 0.
    """
    from ..index.exact import exact_search

    n = len(vectors)
    rank = recorded.shape[1]
    k = min(max(neighbors, rank) + 1, n)
    on_gpu = device.type == "cuda"
    chunk = GPU_QUERY_CHUNK if on_gpu else QUERY_CHUNK
    parts = []
    with progress_bar(n, "k-NN graph (exact)", unit="img", enabled=progress) as bar:
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            scores, labels = exact_search(vectors[start:stop], vectors, k, device=device,
                                          block_size=EXACT_DATABASE_BLOCK)
            rows = np.arange(start, stop, dtype=np.int64)
            parts.append(_keep(rows, scores, labels, min_similarity, neighbors))
            if rank:
                recorded[start:stop] = _top_scores(rows, scores, labels, rank)
            bar.update(stop - start)
    return _concat(parts)


def _train_cells(vectors: np.ndarray, n_cells: int, seed: int) -> np.ndarray:
    """(n_cells, d) spherical k-means centroids trained on a seeded sample of at most 40 rows per cell."""
    import faiss

    rng = np.random.default_rng(seed)
    sample_size = min(len(vectors), n_cells * 40)
    sample = vectors[np.sort(rng.choice(len(vectors), sample_size, replace=False))]
    kmeans = faiss.Kmeans(vectors.shape[1], n_cells, niter=10, seed=seed, spherical=True,
                          max_points_per_centroid=40, verbose=False)
    kmeans.train(sample)
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)


def _partitioned(vectors: np.ndarray, min_similarity: float, neighbors: int, recorded: np.ndarray,
                 probes: int, seed: int, progress: bool | None) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], int]:
    import faiss

    n = len(vectors)
    rank = recorded.shape[1]
    # Cost ≈ n·n_cells (assignment) + n·probes·n/n_cells (cells): balanced at n_cells = sqrt(probes·n).
    n_cells = int(min(max(1, round(math.sqrt(probes * n))), max(1, n // 40)))
    probes = min(probes, n_cells)
    centroids = _train_cells(vectors, n_cells, seed)
    nearest = np.empty((n, probes), dtype=np.int64)
    for start in range(0, n, 65_536):
        _, cells = faiss.knn(vectors[start:start + 65_536], centroids, probes, metric=faiss.METRIC_INNER_PRODUCT)
        nearest[start:start + 65_536] = cells
    home = nearest[:, 0]
    home_order = np.argsort(home, kind="stable")
    home_bounds = np.searchsorted(home[home_order], np.arange(n_cells + 1))
    member_rows = np.repeat(np.arange(n, dtype=np.int64), probes)
    member_cells = nearest.reshape(-1)
    member_order = np.argsort(member_cells, kind="stable")
    member_rows = member_rows[member_order]
    member_bounds = np.searchsorted(member_cells[member_order], np.arange(n_cells + 1))
    def cell_pairs(cell: int) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], int]:
        faiss.omp_set_num_threads(1)  # per worker thread: small products run faster without OpenMP barriers
        queries = home_order[home_bounds[cell]:home_bounds[cell + 1]]
        members = member_rows[member_bounds[cell]:member_bounds[cell + 1]]
        if len(queries) == 0:
            return _concat([]), 0
        k = min(max(neighbors, rank) + 1, len(members))
        database = vectors[members]
        found = []
        for start in range(0, len(queries), QUERY_CHUNK):
            chunk = queries[start:start + QUERY_CHUNK]
            scores, labels = faiss.knn(vectors[chunk], database, k, metric=faiss.METRIC_INNER_PRODUCT)
            labels = np.where(labels >= 0, members[np.maximum(labels, 0)], -1)
            found.append(_keep(chunk, scores, labels, min_similarity, neighbors))
            if rank:  # each query row belongs to one cell (its home), so threads write disjoint rows
                recorded[chunk] = _top_scores(chunk, scores, labels, rank)
        return _concat(found), len(queries)

    parts = []
    threads = faiss.omp_get_max_threads()
    with progress_bar(n, "k-NN graph (partitioned)", unit="img", enabled=progress) as bar, \
            ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for found, done in pool.map(cell_pairs, range(n_cells)):  # in cell order: deterministic
            parts.append(found)
            bar.update(done)
    return _concat(parts), n_cells
