"""Retrieval quality of embeddings: recall@k, precision@k and mAP against class or instance ground truth."""
from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputNotFoundError, InvalidArgumentError
from .knn import encode_labels
from .labels import EvaluationSplit, LabelledEmbeddings, unit_rows
from .neighbors import exact_neighbors

RETRIEVAL_KS: tuple[int, ...] = (1, 5, 10)
FULL_MAP_MAX_DATABASE = 10_000  # above this, mAP is truncated at DEFAULT_MAP_DEPTH unless asked otherwise
DEFAULT_MAP_DEPTH = 100


@dataclass(frozen=True)
class RetrievalResult:
    """Retrieval metrics averaged over the queries that have at least one positive in the database.

    Attributes:
        ks: cut-offs, ascending.
        recall: {k: share of queries with at least one positive in their top k} (the "Recall@K" of
            deep metric learning papers).
        precision: {k: mean share of positives among the top k}.
        mean_average_precision: mean over queries of AP@depth = Σ_{i<=depth} P@i·rel_i / min(positives, depth);
            with depth = the database size this is the usual (full) mAP.
        map_depth: the ranking depth of the mAP; map_full: it covers every candidate (the usual mAP).
        n_queries: queries evaluated; n_without_positives: queries skipped (no positive in the database).
        n_database: database rows; ground_truth: "class" or "instance"; split: how queries were chosen.
    """

    ks: tuple[int, ...]
    recall: dict[int, float]
    precision: dict[int, float]
    mean_average_precision: float
    map_depth: int
    n_queries: int
    n_without_positives: int
    n_database: int
    ground_truth: str
    split: str
    map_full: bool = False
    notes: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def map_label(self) -> str:
        return "mAP" if self.map_full else f"mAP@{self.map_depth}"

    def to_dict(self) -> dict[str, Any]:
        return {"ks": list(self.ks), "recall": {str(k): v for k, v in self.recall.items()},
                "precision": {str(k): v for k, v in self.precision.items()},
                "mean_average_precision": self.mean_average_precision, "map_depth": self.map_depth,
                "map_label": self.map_label, "map_full": self.map_full, "n_queries": self.n_queries,
                "n_without_positives": self.n_without_positives, "n_database": self.n_database,
                "ground_truth": self.ground_truth, "split": self.split, "notes": list(self.notes),
                "seconds": self.seconds}


def average_precision(relevance: np.ndarray, n_positives: np.ndarray | int) -> np.ndarray:
    """Non-interpolated average precision of ranked lists.

    Args:
        relevance: (q, K) bool, True where the i-th result of a query is a positive.
        n_positives: (q,) positives of each query in the whole database.

    Returns:
        (q,) float64: Σ_i P@i·rel_i / min(n_positives, K) (0 where a query has no positive).

    Example:
        >>> average_precision(np.array([[1, 0, 1, 0]], bool), 2)  # (1/1 + 2/3) / 2
        array([0.83333333])
    """
    relevance = np.asarray(relevance, dtype=bool)
    depth = relevance.shape[1]
    hits = np.cumsum(relevance, axis=1)
    precision_at_hit = np.where(relevance, hits / np.arange(1, depth + 1), 0.0)
    denominator = np.minimum(np.broadcast_to(np.asarray(n_positives), (len(relevance),)), depth).astype(np.float64)
    return np.divide(precision_at_hit.sum(axis=1), denominator, out=np.zeros(len(relevance)), where=denominator > 0)


def metrics_from_relevance(relevance: np.ndarray, n_positives: np.ndarray, ks: Sequence[int], *, n_database: int,
                           map_depth: int, ground_truth: str, split: str, map_full: bool = False,
                           notes: Sequence[str] = (), seconds: float = 0.0) -> RetrievalResult:
    """Recall@k, precision@k and mAP from a (q, K) relevance matrix of ranked results.

    Raises:
        InvalidArgumentError: no query has a positive in the database.
    """
    n_positives = np.asarray(n_positives)
    evaluated = n_positives > 0
    if not evaluated.any():
        raise InvalidArgumentError(f"none of the {len(n_positives)} queries has a positive in the database; check the "
                                   "labels or ground-truth file and the query/database split")
    relevance, positives = relevance[evaluated], n_positives[evaluated]
    recall = {k: float(relevance[:, :k].any(axis=1).mean()) for k in ks}
    precision = {k: float(relevance[:, :k].mean(axis=1).mean()) for k in ks}
    mean_ap = float(average_precision(relevance[:, :map_depth], positives).mean())
    return RetrievalResult(ks=tuple(ks), recall=recall, precision=precision, mean_average_precision=mean_ap,
                           map_depth=map_depth, n_queries=int(evaluated.sum()),
                           n_without_positives=int((~evaluated).sum()), n_database=n_database,
                           ground_truth=ground_truth, split=split, map_full=map_full, notes=tuple(notes),
                           seconds=seconds)


def _depths(ks: Sequence[int], map_depth: int | None, available: int) -> tuple[tuple[int, ...], int]:
    chosen = tuple(sorted(set(int(k) for k in ks)))
    if not chosen or chosen[0] < 1:
        raise InvalidArgumentError(f"cut-offs k must be >= 1, got {list(ks)}")
    if chosen[-1] > available:
        raise InvalidArgumentError(f"k={chosen[-1]} is larger than the database ({available} candidate(s) per query); "
                                   "choose smaller --k values")
    if map_depth is None:
        map_depth = available if available <= FULL_MAP_MAX_DATABASE else DEFAULT_MAP_DEPTH
    if map_depth < 1:
        raise InvalidArgumentError(f"mAP depth must be >= 1 (or 0 for the full ranking), got {map_depth}")
    return chosen, min(map_depth, available)


def class_retrieval(database_embeddings: np.ndarray, database_labels: np.ndarray, query_embeddings: np.ndarray,
                    query_labels: np.ndarray, *, ks: Sequence[int] = RETRIEVAL_KS, map_depth: int | None = None,
                    leave_one_out: bool = False, device: str = "auto", split: str = "queries",
                    notes: Sequence[str] = ()) -> RetrievalResult:
    """Retrieval metrics where a database row is a positive of a query when their labels are equal.

    Args:
        database_embeddings: (n, d) float32; database_labels: (n,).
        query_embeddings: (q, d) float32; query_labels: (q,).
        ks: recall/precision cut-offs.
        map_depth: rank depth of mAP; None: the full ranking up to 10,000 database rows, else 100.
        leave_one_out: queries are the database rows; a query's own row is neither result nor positive.

    Raises:
        InvalidArgumentError: k larger than the database, empty sides, no query with a positive.
    """
    started = time.perf_counter()
    if len(database_labels) == 0 or len(query_labels) == 0:
        raise InvalidArgumentError(f"empty split: {len(query_labels)} queries vs {len(database_labels)} database rows")
    (database_codes, query_codes), _ = encode_labels(database_labels, query_labels)
    available = len(database_codes) - (1 if leave_one_out else 0)
    chosen, depth = _depths(ks, map_depth, available)
    neighbors = exact_neighbors(unit_rows(query_embeddings), unit_rows(database_embeddings), max(chosen[-1], depth),
                                device=device, exclude_self=leave_one_out)
    relevance = database_codes[neighbors.positions] == query_codes[:, None]
    counts = np.bincount(database_codes, minlength=int(query_codes.max()) + 1)
    n_positives = counts[query_codes] - (1 if leave_one_out else 0)
    return metrics_from_relevance(relevance, n_positives, chosen, n_database=len(database_codes), map_depth=depth,
                                  ground_truth="class", split=split, map_full=depth == available, notes=notes,
                                  seconds=time.perf_counter() - started)


def read_positive_pairs(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """Read a CSV of positive pairs: two columns of store-relative paths (header row required); further
    columns are ignored.

    The pairs are undirected (each side is a positive of the other); the sample data's
    ``near_duplicates.csv`` (original,copy,edits) is such a file.

    Raises:
        InputNotFoundError, InvalidArgumentError: missing file, not two columns, no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"positive-pairs file {path} does not exist")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if len(rows) < 2 or any(len(row) < 2 for row in rows if row):
        raise InvalidArgumentError(f"{path} must be a CSV with a header and two columns of paths per row (e.g. "
                                   "query,positive); found no rows, or rows of fewer than two columns")
    return [(row[0], row[1]) for row in rows[1:] if row]


def instance_retrieval(database: LabelledEmbeddings, queries: LabelledEmbeddings, pairs: Sequence[tuple[str, str]], *,
                       ks: Sequence[int] = RETRIEVAL_KS, map_depth: int | None = None, leave_one_out: bool = False,
                       device: str = "auto", split: str = "queries") -> RetrievalResult:
    """Retrieval metrics for instance ground truth: undirected positive pairs of paths.

    Every query row whose path appears in a pair with a database path is evaluated; the others
    have no positive and are skipped (counted in ``n_without_positives``).

    Raises:
        InvalidArgumentError: no pair names rows of both sides, k larger than the database.
    """
    started = time.perf_counter()
    database_rows = {p: i for i, p in enumerate(database.paths.tolist())}
    query_rows = {p: i for i, p in enumerate(queries.paths.tolist())}
    n_database = len(database_rows)
    codes: set[int] = set()
    for a, b in pairs:
        for query_path, database_path in ((a, b), (b, a)):
            q, d = query_rows.get(query_path), database_rows.get(database_path)
            if q is not None and d is not None and not (leave_one_out and q == d):
                codes.add(q * n_database + d)
    if not codes:
        raise InvalidArgumentError(f"none of the {len(pairs)} positive pairs names a query path and a database path of "
                                   f"these stores (e.g. {pairs[0] if pairs else '-'}); paths must be relative to the "
                                   "stores' source roots, as in the store's path column")
    encoded = np.fromiter(codes, np.int64, len(codes))
    with_positive = np.unique(encoded // n_database)
    available = n_database - (1 if leave_one_out else 0)
    chosen, depth = _depths(ks, map_depth, available)
    neighbors = exact_neighbors(unit_rows(queries.embeddings), unit_rows(database.embeddings), max(chosen[-1], depth),
                                device=device, exclude_self=leave_one_out)
    positions = neighbors.positions[with_positive]
    relevance = np.isin(with_positive[:, None] * n_database + positions, encoded)
    n_positives = np.bincount(encoded // n_database, minlength=len(queries))[with_positive]
    result = metrics_from_relevance(relevance, n_positives, chosen, n_database=n_database, map_depth=depth,
                                    ground_truth="instance", split=split, map_full=depth == available,
                                    seconds=time.perf_counter() - started)
    return replace(result, n_without_positives=len(queries) - len(with_positive))


def retrieval_evaluate(split: EvaluationSplit, *, pairs: Sequence[tuple[str, str]] | None = None,
                       ks: Sequence[int] = RETRIEVAL_KS, map_depth: int | None = None,
                       device: str = "auto") -> RetrievalResult:
    """Class (labels) or instance (``pairs``) retrieval metrics on an EvaluationSplit."""
    if pairs is not None:
        return instance_retrieval(split.train, split.queries, pairs, ks=ks, map_depth=map_depth,
                                  leave_one_out=split.leave_one_out, device=device, split=split.kind)
    notes = [f"{s.dropped_unlabelled} unlabelled row(s) of {s.source} left out"
             for s in {id(x): x for x in (split.train, split.queries)}.values() if s.dropped_unlabelled]
    return class_retrieval(split.train.embeddings, split.train.labels, split.queries.embeddings, split.queries.labels,
                           ks=ks, map_depth=map_depth, leave_one_out=split.leave_one_out, device=device,
                           split=split.kind, notes=notes)
