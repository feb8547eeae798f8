"""Exact k-nearest-neighbour search by inner product: blocked matmul + top-k, bounded memory, ties by id.

The database streams block by block (an array, an ``EmbeddingStore`` or an iterable of
``StoreBatch``), each block is scored against every query with one matrix product, and a running
top-k per query is merged. Memory is the queries, one database block and one (query block ×
database block) score matrix. On a CUDA device (``device="auto"`` when torch sees one) the same
code runs on the GPU. On the CPU, blocks are scored with ``faiss.knn`` by default (``backend="auto"``):
on a quiet 2-core box it ran 1.4-1.5× faster than matmul + ``torch.topk`` at k = 10, 50 and 200
(2,000 × 50,000 × 384); ``backend="torch"`` forces the torch path.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from ..devices import resolve_device
from ..errors import InvalidArgumentError, unknown_name

BACKENDS = ("auto", "torch", "faiss")
DEFAULT_BLOCK_SIZE = 16_384  # database rows per block
SCORE_BLOCK_BYTES = 256 * 2**20  # at most this much memory per (query block × database block) score matrix


def _as_queries(queries: Any) -> np.ndarray:
    array = np.asarray(queries)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise InvalidArgumentError(f"queries must be a (q, dim) array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidArgumentError(f"queries must be floating point, got {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _database_blocks(database: Any, block_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids (b,) int64, vectors (b, d) float32) blocks of at most ``block_size`` rows."""
    if isinstance(database, np.ndarray) or torch.is_tensor(database):
        matrix = database.detach().cpu().numpy() if torch.is_tensor(database) else database
        if matrix.ndim != 2:
            raise InvalidArgumentError(f"database must be a (n, dim) array, got shape {matrix.shape}")
        for start in range(0, len(matrix), block_size):
            stop = min(len(matrix), start + block_size)
            yield np.arange(start, stop, dtype=np.int64), np.ascontiguousarray(matrix[start:stop], dtype=np.float32)
        return
    batches = database.iter_batches(block_size) if hasattr(database, "iter_batches") else database
    for batch in batches:
        ids, vectors = (batch.ids, batch.embeddings) if hasattr(batch, "ids") else batch
        if torch.is_tensor(vectors):  # already resident (e.g. on the GPU): slice without copying
            for start in range(0, len(ids), block_size):
                yield ids[start:start + block_size], vectors[start:start + block_size]
            continue
        ids = np.array(ids, dtype=np.int64)  # a writable copy (Arrow buffers are read-only)
        vectors = np.require(vectors, np.float32, ("C", "W"))
        for start in range(0, len(ids), block_size):
            yield ids[start:start + block_size], np.ascontiguousarray(vectors[start:start + block_size])


def _merge(best_scores: torch.Tensor, best_ids: torch.Tensor, scores: torch.Tensor, ids: torch.Tensor,
           k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the k best of two candidate sets per row, ordered by score (desc) then id (asc)."""
    all_scores = torch.cat([best_scores, scores], dim=1)
    all_ids = torch.cat([best_ids, ids], dim=1)
    by_id = torch.argsort(all_ids, dim=1, stable=True)
    all_scores, all_ids = all_scores.gather(1, by_id), all_ids.gather(1, by_id)
    order = torch.sort(all_scores, dim=1, descending=True, stable=True).indices[:, :k]
    return all_scores.gather(1, order), all_ids.gather(1, order)


def _block_topk(scores: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of one score block (q, b), exact under ties: equal scores at the cut go to the smallest ids."""
    take = min(k + 1, scores.shape[1])
    values, positions = torch.topk(scores, take, dim=1, sorted=True)
    return _resolve_ties(values, positions, ids, lambda row: scores[row], k)


def _resolve_ties(values: torch.Tensor, positions: torch.Tensor, ids: torch.Tensor,
                  row_scores: Callable[[int], torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut sorted top-(k+1) candidates to k; where the k-th and (k+1)-th scores are equal, redo that
    row from its full scores so that equal scores at the cut go to the smallest ids."""
    if values.shape[1] <= k:
        return values, ids[positions]
    tied = torch.nonzero(values[:, k - 1] == values[:, k]).flatten().tolist()
    values, positions = values[:, :k], positions[:, :k]
    if tied:
        values, positions = values.clone(), positions.clone()
    for row in tied:  # rare: several equal scores straddle the k-th place
        scores = row_scores(row)
        cut = torch.topk(scores, k).values[-1]
        candidates = torch.nonzero(scores >= cut).flatten()
        candidates = candidates[torch.argsort(ids[candidates], stable=True)]
        keep = torch.sort(scores[candidates], descending=True, stable=True).indices[:k]
        positions[row] = candidates[keep]
        values[row] = scores[positions[row]]
    return values, ids[positions]


def exact_search(queries: np.ndarray, database: Any, k: int, *, device: str | torch.device = "auto",
                 block_size: int = DEFAULT_BLOCK_SIZE, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product (cosine on L2-normalised vectors).

    Args:
        queries: (q, d) float array.
        database: (n, d) float array (ids are row numbers), an ``EmbeddingStore``, or an iterable
            of ``StoreBatch`` / ``(ids, vectors)`` pairs (numpy, or torch tensors already on the
            device; ids are the given ids). Read once, block by block.
        k: neighbours per query (> 0). With fewer than k database rows, the missing places hold
            id -1 and score -inf (the faiss convention).
        device: ``auto`` (CUDA when torch sees a GPU), ``cpu`` or ``cuda``.
        block_size: database rows scored at once.
        backend: ``auto`` (torch on CUDA, faiss on the CPU), ``torch`` (matmul + topk) or ``faiss``
            (``faiss.knn`` per block, CPU).

    Returns:
        ``(scores, ids)``: (q, k) float32 scores, descending, and (q, k) int64 ids; equal scores
        are ordered by id, so the result is deterministic.

    Raises:
        InvalidArgumentError: k ≤ 0, bad shapes or mismatched dims.

    Example:
        >>> scores, ids = exact_search(vectors[:5], vectors, 10)  # doctest: +SKIP
    """
    if k <= 0:
        raise InvalidArgumentError(f"k must be > 0, got {k}")
    if block_size <= 0:
        raise InvalidArgumentError(f"block_size must be > 0, got {block_size}")
    if backend not in BACKENDS:
        raise unknown_name("exact search backend", backend, BACKENDS)
    query_array = _as_queries(queries)
    n_queries, dim = query_array.shape
    if backend == "auto":
        backend = "torch" if resolve_device(device).type == "cuda" else "faiss"
    if backend == "faiss" and isinstance(database, np.ndarray) and database.dtype == np.float32 \
            and database.flags.c_contiguous:
        # faiss blocks internally: one call on a view of the array, nothing to merge (any other dtype or
        # layout is converted block by block, so memory stays one block)
        block_size = max(block_size, len(database))
    torch_device = resolve_device(device) if backend == "torch" else torch.device("cpu")
    query_block = max(1, min(n_queries, SCORE_BLOCK_BYTES // (4 * block_size)))
    best_scores = torch.full((n_queries, k), -float("inf"), device=torch_device)
    best_ids = torch.full((n_queries, k), -1, dtype=torch.int64, device=torch_device)
    query_tensor = torch.from_numpy(query_array).to(torch_device)
    with torch.inference_mode():
        for ids, vectors in _database_blocks(database, block_size):
            if len(ids) == 0:
                continue
            if vectors.ndim != 2 or vectors.shape[1] != dim:
                raise InvalidArgumentError(f"database vectors have dim {vectors.shape[-1]}, queries have dim {dim}; "
                                           "search with vectors from the same encoder")
            if backend == "faiss":
                if torch.is_tensor(vectors):
                    ids, vectors = ids.cpu().numpy(), vectors.float().cpu().numpy()
                block_scores, block_ids = _faiss_block(query_array, vectors, ids, k)
                best_scores, best_ids = _merge(best_scores, best_ids, block_scores, block_ids, k)
                continue
            block = (vectors if torch.is_tensor(vectors) else torch.from_numpy(vectors)).to(torch_device, torch.float32)
            block_id_tensor = (ids if torch.is_tensor(ids) else torch.from_numpy(ids)).to(torch_device)
            for start in range(0, n_queries, query_block):
                stop = min(n_queries, start + query_block)
                scores = query_tensor[start:stop] @ block.T  # (qb, b)
                top_scores, top_ids = _block_topk(scores, block_id_tensor, k)
                best_scores[start:stop], best_ids[start:stop] = _merge(best_scores[start:stop], best_ids[start:stop],
                                                                       top_scores, top_ids, k)
    return best_scores.cpu().numpy().astype(np.float32, copy=False), best_ids.cpu().numpy()


def _faiss_block(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    import faiss

    take = min(k + 1, len(ids))
    scores, positions = faiss.knn(queries, vectors, take, metric=faiss.METRIC_INNER_PRODUCT)
    return _resolve_ties(torch.from_numpy(scores), torch.from_numpy(positions), torch.from_numpy(ids),
                         lambda row: torch.from_numpy(vectors @ queries[row]), k)


def recall_at_k(found_ids: np.ndarray, true_ids: np.ndarray) -> float:
    """Mean over queries of |found ∩ true| / |true| (ids -1 never count).

    Args:
        found_ids: (q, k) int64 ids from an approximate search.
        true_ids: (q, k') int64 ids from exact search.
    """
    if len(true_ids) == 0:
        return float("nan")
    hits = []
    for found, true in zip(found_ids, true_ids):
        truth = set(true[true >= 0].tolist())
        if truth:
            hits.append(len(truth.intersection(found[found >= 0].tolist())) / len(truth))
    return float(np.mean(hits)) if hits else float("nan")



def _self_match_kept(ids: np.ndarray, self_ids: np.ndarray) -> np.ndarray:
    """(q, m) bool: False at each row's first hit of its own id, or at its last hit when the id is absent."""
    is_self = ids == np.asarray(self_ids)[:, None]
    first = np.where(is_self.any(axis=1), is_self.argmax(axis=1), ids.shape[1] - 1)
    kept = np.ones(ids.shape, dtype=bool)
    kept[np.arange(len(ids)), first] = False
    return kept


def drop_self_matches(ids: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    """Leave each query's own id out of its results (leave-one-out search of vectors in the database).

    Search k + 1 neighbours, then drop each row's first hit of its own id; where the id is not
    among them (it fell just outside on ties, or an approximate index missed it), the last hit goes
    instead. Other vectors equal to the query (duplicates) stay.

    Args:
        ids: (q, m) int64 result ids, m ≥ k + 1, best first.
        self_ids: (q,) the id of each query.
        k: neighbours to keep.

    Returns:
        (q, k) int64 ids.

    Example:
        >>> drop_self_matches(np.array([[7, 3, 5], [1, 2, 3]]), np.array([3, 9]), 2)
        array([[7, 5],
               [1, 2]])
    """
    ids = np.asarray(ids)
    kept = _self_match_kept(ids, self_ids)
    return ids[kept].reshape(len(ids), ids.shape[1] - 1)[:, :k]


def drop_self_matches_with_scores(scores: np.ndarray, ids: np.ndarray, self_ids: np.ndarray,
                                  k: int) -> tuple[np.ndarray, np.ndarray]:
    """``drop_self_matches`` for a (scores, ids) pair of (q, m) arrays: (q, k) scores and ids."""
    scores, ids = np.asarray(scores), np.asarray(ids)
    kept = _self_match_kept(ids, self_ids)
    shape = (len(ids), ids.shape[1] - 1)
    return scores[kept].reshape(shape)[:, :k], ids[kept].reshape(shape)[:, :k]
