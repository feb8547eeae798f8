"""Exact top-k neighbours for the evaluators (inner product), with leave-one-out self removal."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..devices import resolve_device
from ..errors import InvalidArgumentError


@dataclass(frozen=True)
class Neighbors:
    """Exact nearest neighbours of a set of queries, best first.

    Attributes:
        scores: (q, k) float32 inner products (cosine similarity for L2-normalised vectors).
        positions: (q, k) int64 row numbers into the database array (not store ids).
    """

    scores: np.ndarray
    positions: np.ndarray

    @property
    def k(self) -> int:
        return int(self.positions.shape[1])


def _search_torch(queries: np.ndarray, database: np.ndarray, k: int, device: torch.device,
                  query_block: int = 4096, database_block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Blocked matmul + running top-k; memory is bounded by one (query_block, database_block) score tile."""
    n_queries, n_database = len(queries), len(database)
    out_scores = np.empty((n_queries, k), np.float32)
    out_positions = np.empty((n_queries, k), np.int64)
    database_tensor = torch.from_numpy(np.ascontiguousarray(database, dtype=np.float32))
    on_device = database_tensor.to(device) if device.type == "cuda" else database_tensor
    for start in range(0, n_queries, query_block):
        block = torch.from_numpy(np.ascontiguousarray(queries[start:start + query_block], dtype=np.float32)).to(device)
        best_scores = torch.full((len(block), 0), float("-inf"), device=device)
        best_positions = torch.zeros((len(block), 0), dtype=torch.int64, device=device)
        for db_start in range(0, n_database, database_block):
            tile = on_device[db_start:db_start + database_block].to(device)
            scores = block @ tile.T  # (b, t)
            take = min(k, scores.shape[1])
            tile_scores, tile_positions = torch.topk(scores, take, dim=1)
            merged_scores = torch.cat([best_scores, tile_scores], dim=1)
            merged_positions = torch.cat([best_positions, tile_positions + db_start], dim=1)
            keep = min(k, merged_scores.shape[1])
            best_scores, order = torch.topk(merged_scores, keep, dim=1)
            best_positions = torch.gather(merged_positions, 1, order)
        out_scores[start:start + len(block)] = best_scores.cpu().numpy()
        out_positions[start:start + len(block)] = best_positions.cpu().numpy()
    return out_scores, out_positions


def exact_neighbors(queries: np.ndarray, database: np.ndarray, k: int, *, device: str | torch.device = "auto",
                    exclude_self: bool = False) -> Neighbors:
    """The k database rows with the largest inner product for each query (exact, blocked).

    Args:
        queries: (q, d) float32 query vectors.
        database: (n, d) float32 database vectors.
        k: neighbours per query (1 <= k <= n, or <= n - 1 with ``exclude_self``).
        device: "auto" (CUDA when present), "cpu" or "cuda".
        exclude_self: queries are the database rows in the same order (leave-one-out): each query's
            own row is removed from its neighbours. Found by position, so duplicates stay neighbours.

    Returns:
        Neighbors with (q, k) scores and database positions, best first.

    Raises:
        InvalidArgumentError: k out of range, or queries and database of different dims.
    """
    queries = np.asarray(queries, dtype=np.float32)
    database = np.asarray(database, dtype=np.float32)
    if queries.ndim != 2 or database.ndim != 2 or queries.shape[1] != database.shape[1]:
        raise InvalidArgumentError(f"queries {queries.shape} and database {database.shape} must be 2-D with the same dim")
    available = len(database) - (1 if exclude_self else 0)
    if k < 1 or k > available:
        raise InvalidArgumentError(f"k={k} neighbours asked, but the database holds {available} candidate(s) per "
                                   "query; choose k between 1 and that")
    if exclude_self and len(queries) != len(database):
        raise InvalidArgumentError("exclude_self needs the queries to be the database rows themselves")
    torch_device = resolve_device(device)
    search_k = k + 1 if exclude_self else k
    scores, positions = _exact_search(queries, database, search_k, torch_device)
    if exclude_self:
        rows = np.arange(len(queries))[:, None]
        is_self = positions == rows
        # Drop the self column where it was found, else the last column (self fell just outside k + 1 on ties).
        drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), search_k - 1)
        keep = np.ones_like(positions, dtype=bool)
        keep[np.arange(len(queries)), drop] = False
        scores = scores[keep].reshape(len(queries), k)
        positions = positions[keep].reshape(len(queries), k)
    return Neighbors(scores=scores, positions=positions)


def _exact_search(queries: np.ndarray, database: np.ndarray, k: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    try:  # the index package's exact search when it is installed (one implementation for the project)
        from ..index.exact import exact_search
    except ImportError:
        return _search_torch(queries, database, k, device)
    scores, positions = exact_search(queries, database, k, device=str(device))
    return np.asarray(scores, np.float32), np.asarray(positions, np.int64)
