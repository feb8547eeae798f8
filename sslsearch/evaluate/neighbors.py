"""Exact top-k neighbours for the evaluators (inner product, via ``index.exact``), with leave-one-out self removal."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..devices import resolve_device
from ..errors import InvalidArgumentError
from ..index.exact import drop_self_matches_with_scores, exact_search


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
    if exclude_self:  # each query is the database row of the same position
        scores, positions = drop_self_matches_with_scores(scores, positions, np.arange(len(queries)), k)
    return Neighbors(scores=scores, positions=positions)


def _exact_search(queries: np.ndarray, database: np.ndarray, k: int,
                  device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """The project's one exact search (``index.exact``: blocked matmul + top-k, ties by id)."""
    with warnings.catch_warnings():
        # Store vectors read zero-copy from Parquet are read-only; the search only reads them, so
        # torch's warning about non-writable arrays does not apply (and a copy would double memory).
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        scores, positions = exact_search(queries, database, k, device=device)
    return np.asarray(scores, np.float32), np.asarray(positions, np.int64)
