"""Incremental dedup: which new images duplicate what an existing index holds, without rebuilding it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SSLSearchError
from ..store import check_same_encoder


@dataclass(frozen=True)
class IndexMatches:
    """Edges from new store rows to items of an existing index, at or above the threshold.

    The index items that matched become extra graph nodes ``n_rows + node`` (node 0..m-1).

    Attributes:
        index_dir: the index directory.
        ntotal: vectors in the index.
        rows: (e,) int64 store rows (of the new store).
        nodes: (e,) int64 index nodes (0..m-1).
        scores: (e,) float32 cosine similarity of each edge.
        ids: (m,) int64 index ids of the nodes (faiss ids = ids of the store the index was built from).
        paths: (m,) path of each node relative to ``source_root`` ("" when the index's store is unknown).
        source_root: folder of the index's images, or None.
        vectors: (m, d) float32 vectors of the nodes when the index's store can be read, else None.
    """

    index_dir: Path
    ntotal: int
    rows: np.ndarray
    nodes: np.ndarray
    scores: np.ndarray
    ids: np.ndarray
    paths: tuple[str, ...]
    source_root: Path | None
    vectors: np.ndarray | None

    @property
    def matched_rows(self) -> int:
        """New images with at least one duplicate in the index."""
        return len(np.unique(self.rows))

    def best_score(self) -> np.ndarray:
        """(m,) the highest edge similarity of each node."""
        best = np.full(len(self.ids), -np.inf, dtype=np.float32)
        np.maximum.at(best, self.nodes, self.scores)
        return best

    def edge_scores(self) -> dict[tuple[int, int], float]:
        return {(int(r), int(n)): float(s) for r, n, s in zip(self.rows, self.nodes, self.scores)}


def match_against_index(index_dir: str | os.PathLike[str], vectors: np.ndarray, encoder: dict[str, Any],
                        threshold: float, *, neighbors: int = 16, device: str = "cpu") -> IndexMatches:
    """Search every new vector in an existing index and keep the matches at or above ``threshold``.

    Args:
        index_dir: an index directory written by ``sslsearch index build`` (opened with ``load_index``,
            its tuned search parameters applied).
        vectors: (n, d) float32 L2-normalised vectors of the new store.
        encoder: the new store's encoder fingerprint (must match the index card's).
        threshold: cosine similarity at or above which a new image duplicates an index item.
        neighbors: index items searched per new image.
        device: where to search (``load_index``'s device: ``cpu``, ``auto`` or ``cuda``).

    Raises:
        InputNotFoundError, IndexFileError: a missing or unreadable index.
        EncoderMismatchError: the index was built with another encoder.
    """
    from ..index import load_index

    index_dir = Path(index_dir)
    index = load_index(index_dir, device=device)
    check_same_encoder(index.card.encoder, encoder, index.dim, what="the new store's vectors",
                       where=f"index {index_dir}")
    if vectors.shape[1] != index.dim:
        index.search_arrays(vectors[:1], 1)  # raises the index's dim error, naming its encoder
    k = min(neighbors, len(index))
    if k == 0 or len(vectors) == 0:
        scores, ids = np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int64)
    else:
        scores, ids = index.search_arrays(np.ascontiguousarray(vectors, dtype=np.float32), k)
    rows = np.repeat(np.arange(len(vectors), dtype=np.int64), ids.shape[1])
    ids, scores = ids.reshape(-1).astype(np.int64), scores.reshape(-1).astype(np.float32)
    keep = (ids >= 0) & (scores >= threshold)
    rows, ids, scores = rows[keep], ids[keep], scores[keep]
    unique_ids, nodes = np.unique(ids, return_inverse=True)
    store = index.store  # None when the index's store moved or changed: no paths, edge scores only
    paths: tuple[str, ...] = tuple("" for _ in unique_ids)
    node_vectors = None
    if store is not None and len(unique_ids):
        paths = tuple(p or "" for p in store.paths(unique_ids))
        try:
            node_vectors = store.vectors_for(unique_ids)
        except SSLSearchError:
            node_vectors = None
    return IndexMatches(index_dir=index_dir, ntotal=len(index), rows=rows, nodes=nodes.astype(np.int64),
                        scores=scores, ids=unique_ids.astype(np.int64), paths=paths,
                        source_root=store.source_root if store is not None else None, vectors=node_vectors)
