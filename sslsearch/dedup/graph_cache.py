"""The store's k-NN graph built once at the lowest floor asked for (``GraphCache``), and the score its pairs are cut on."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .density import DensityAdjustment
from .exact import EXACT_CANDIDATE_SIMILARITY
from .graph import SimilarPairs, similar_pairs


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
                 timings: dict[str, float] | None = None) -> None:
        self.vectors = vectors
        self.neighbors = neighbors
        self.method = method
        self.device = device
        self.seed = seed
        self.record_neighbors = record_neighbors
        self.progress = progress
        self.timings = timings if timings is not None else {}
        self.builds = 0
        self._built: SimilarPairs | None = None

    def pairs(self, floor: float) -> SimilarPairs:
        """The graph's pairs with cosine similarity >= ``floor`` (building the graph at ``floor`` if needed)."""
        if self._built is None or self._built.min_similarity > floor:
            began = time.perf_counter()
            self._built = similar_pairs(self.vectors, floor, neighbors=self.neighbors, method=self.method,
                                        device=self.device, seed=self.seed, record_neighbors=self.record_neighbors,
                                        progress=self.progress)
            self.builds += 1
            self.timings["graph"] = self.timings.get("graph", 0.0) + time.perf_counter() - began
        return self._built.above(floor)


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
