"""Incremental dedup: which new images duplicate what an existing index holds, without rebuilding it."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import IndexFileError, InputNotFoundError
from ..store import EmbeddingStore, check_same_encoder

INDEX_FILE = "index.faiss"
CARD_FILE = "index.json"


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


def _read_card(index_dir: Path) -> dict[str, Any]:
    if not index_dir.is_dir():
        raise InputNotFoundError(f"index {index_dir} does not exist; build one with `sslsearch index build EMB --out IDX`")
    card_path = index_dir / CARD_FILE
    if not card_path.is_file() or not (index_dir / INDEX_FILE).is_file():
        missing = CARD_FILE if not card_path.is_file() else INDEX_FILE
        raise IndexFileError(f"{index_dir} is not an sslsearch index: no {missing}; build one with "
                             "`sslsearch index build EMB --out IDX`")
    try:
        return json.loads(card_path.read_text())
    except ValueError as error:
        raise IndexFileError(f"{card_path} is not valid JSON ({error}); rebuild the index") from None


def _index_store(card: dict[str, Any]) -> EmbeddingStore | None:
    """The store the index was built from, when the card names one that still exists."""
    for key in ("store", "store_dir", "embeddings"):
        value = card.get(key)
        if isinstance(value, dict):
            value = value.get("directory") or value.get("path")
        if isinstance(value, str) and (Path(value) / "manifest.json").is_file():
            try:
                return EmbeddingStore.open(value)
            except Exception:  # noqa: BLE001 - a store that moved or changed only costs us the paths
                return None
    return None


def _search(index_dir: Path, queries: np.ndarray, k: int, card: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(q, k) cosine similarities and index ids; the card's search parameters are applied."""
    import faiss

    try:
        index = faiss.read_index(str(index_dir / INDEX_FILE))
    except RuntimeError as error:
        raise IndexFileError(f"{index_dir / INDEX_FILE} cannot be read by faiss ({str(error).splitlines()[0]}); "
                             "rebuild the index") from None
    if index.d != queries.shape[1]:
        raise IndexFileError(f"index {index_dir} holds dim {index.d} vectors but the store has dim {queries.shape[1]}; "
                             "dedup against an index built from the same encoder")
    params = card.get("search_params") or card.get("search_parameters") or {}
    if params:
        text = ",".join(f"{key}={value}" for key, value in params.items())
        try:
            faiss.ParameterSpace().set_index_parameters(index, text)
        except RuntimeError:
            pass  # a parameter this index type does not take: its defaults are used
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, max(1, index.ntotal)))
    if index.metric_type == faiss.METRIC_L2:  # squared L2 between unit vectors = 2 - 2·cosine
        scores = 1.0 - scores / 2.0
    return scores.astype(np.float32), ids.astype(np.int64)


def match_against_index(index_dir: str | os.PathLike[str], vectors: np.ndarray, encoder: dict[str, Any],
                        threshold: float, *, neighbors: int = 16) -> IndexMatches:
    """Search every new vector in an existing index and keep the matches at or above ``threshold``.

    Args:
        index_dir: an index directory (Contract 3: ``index.faiss`` + ``index.json``).
        vectors: (n, d) float32 L2-normalised vectors of the new store.
        encoder: the new store's encoder fingerprint (must match the index card's).
        threshold: cosine similarity at or above which a new image duplicates an index item.
        neighbors: index items searched per new image.

    Raises:
        InputNotFoundError, IndexFileError: a missing or unreadable index.
        EncoderMismatchError: the index was built with another encoder.
    """
    index_dir = Path(index_dir)
    card = _read_card(index_dir)
    card_encoder = card.get("encoder") or card.get("encoder_fingerprint") or {}
    check_same_encoder(card_encoder, encoder, int(card.get("dim", vectors.shape[1])),
                       what="the new store's vectors", where=f"index {index_dir}")
    scores, ids = _search(index_dir, vectors, neighbors, card)
    rows = np.repeat(np.arange(len(vectors), dtype=np.int64), ids.shape[1])
    ids, scores = ids.reshape(-1), scores.reshape(-1)
    keep = (ids >= 0) & (scores >= threshold)
    rows, ids, scores = rows[keep], ids[keep], scores[keep]
    unique_ids, nodes = np.unique(ids, return_inverse=True)
    store = _index_store(card)
    paths: tuple[str, ...] = tuple("" for _ in unique_ids)
    node_vectors = None
    if store is not None and len(unique_ids):
        paths = tuple(p or "" for p in store.paths(unique_ids))
        try:
            node_vectors = store.vectors_for(unique_ids)
        except Exception:  # noqa: BLE001 - ids the store no longer holds: fall back to edge scores
            node_vectors = None
    ntotal = int(card.get("ntotal", 0))
    return IndexMatches(index_dir=index_dir, ntotal=ntotal, rows=rows, nodes=nodes.astype(np.int64),
                        scores=scores.astype(np.float32), ids=unique_ids.astype(np.int64), paths=paths,
                        source_root=store.source_root if store is not None else None, vectors=node_vectors)
