"""The revisited Oxford / Paris protocol (Radenović et al., CVPR 2018): Easy / Medium / Hard mAP with junk images."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Sequence

import numpy as np

from ..errors import InvalidArgumentError
from .labels import LabelledEmbeddings, check_same_encoder_sets, unit_rows
from .neighbors import exact_neighbors
from .pickles import load_pickle

PROTOCOLS = ("easy", "medium", "hard")
KAPPAS: tuple[int, ...] = (1, 5, 10)


@dataclass(frozen=True)
class RevisitedGroundTruth:
    """A ``gnd_roxford5k.pkl`` / ``gnd_rparis6k.pkl`` file: image names and per-query easy/hard/junk lists."""

    database_names: tuple[str, ...]
    query_names: tuple[str, ...]
    easy: tuple[np.ndarray, ...]
    hard: tuple[np.ndarray, ...]
    junk: tuple[np.ndarray, ...]

    def positives_and_junk(self, protocol: str, query: int) -> tuple[np.ndarray, np.ndarray]:
        """Database positions that count as positives and as junk (ignored) for one query."""
        easy, hard, junk = self.easy[query], self.hard[query], self.junk[query]
        if protocol == "easy":
            return easy, np.concatenate([junk, hard])
        if protocol == "medium":
            return np.concatenate([easy, hard]), junk
        if protocol == "hard":
            return hard, np.concatenate([junk, easy])
        raise InvalidArgumentError(f"unknown protocol {protocol!r}; choose easy, medium or hard")


@dataclass(frozen=True)
class RevisitedResult:
    """mAP and mP@k per protocol (percent-free fractions, as the other results)."""

    mean_average_precision: dict[str, float]
    mean_precision: dict[str, dict[int, float]]
    n_queries: int
    n_database: int
    queries_from: str
    notes: tuple[str, ...] = ()
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"mean_average_precision": dict(self.mean_average_precision),
                "mean_precision": {p: {str(k): v for k, v in m.items()} for p, m in self.mean_precision.items()},
                "n_queries": self.n_queries, "n_database": self.n_database, "queries_from": self.queries_from,
                "notes": list(self.notes), "seconds": self.seconds}


def read_revisited_ground_truth(path: str | os.PathLike[str]) -> RevisitedGroundTruth:
    """Read a revisited Oxford/Paris ground-truth pickle with the restricted unpickler.

    Raises:
        InputNotFoundError: no such file.
        InvalidArgumentError: it is not such a file (keys imlist, qimlist, gnd with easy/hard/junk).
    """
    data = load_pickle(path, encoding="latin-1")
    if not isinstance(data, dict) or not {"imlist", "qimlist", "gnd"} <= set(data):
        raise InvalidArgumentError(f"{path} is not a revisited Oxford/Paris ground-truth file: expected keys imlist, "
                                   f"qimlist, gnd, found {sorted(data) if isinstance(data, dict) else type(data).__name__}")
    gnd = data["gnd"]
    if len(gnd) != len(data["qimlist"]) or not all(isinstance(g, dict) and "junk" in g for g in gnd):
        raise InvalidArgumentError(f"{path}: gnd must hold one dict with easy/hard/junk per query name")

    def positions(entry: dict[str, Any], key: str) -> np.ndarray:
        return np.asarray(entry.get(key, []), dtype=np.int64).reshape(-1)

    return RevisitedGroundTruth(database_names=tuple(map(str, data["imlist"])),
                                query_names=tuple(map(str, data["qimlist"])),
                                easy=tuple(positions(g, "easy") for g in gnd),
                                hard=tuple(positions(g, "hard") for g in gnd),
                                junk=tuple(positions(g, "junk") for g in gnd))


def revisited_average_precision(positive_ranks: np.ndarray, n_positives: int) -> float:
    """AP as the revisited benchmark computes it (trapezoidal rule over the recall steps).

    Args:
        positive_ranks: sorted 0-based ranks of the positives after junk images are taken out.
        n_positives: positives of the query.

    Example:
        >>> revisited_average_precision(np.array([0, 2]), 2)  # ((1 + 1) / 2 + (1/2 + 2/3) / 2) / 2
        0.7916666666666666
    """
    ranks = np.asarray(positive_ranks, dtype=np.float64)
    j = np.arange(len(ranks), dtype=np.float64)
    precision_before = np.where(ranks == 0, 1.0, j / np.maximum(ranks, 1))
    precision_after = (j + 1) / (ranks + 1)
    return float(((precision_before + precision_after) / 2).sum() / n_positives)


def revisited_scores(ranking: np.ndarray, ground_truth: RevisitedGroundTruth,
                     protocols: Sequence[str] = PROTOCOLS, kappas: Sequence[int] = KAPPAS
                     ) -> tuple[dict[str, float], dict[str, dict[int, float]], dict[str, int]]:
    """mAP, mP@k and skipped-query counts from full rankings, as ``compute_map`` of the benchmark's code.

    Args:
        ranking: (q, n) int64 database positions per query, best first (the whole database).
    """
    maps, precisions, skipped = {}, {}, {}
    for protocol in protocols:
        aps, prs = [], []
        for query in range(len(ranking)):
            positives, junk = ground_truth.positives_and_junk(protocol, query)
            if len(positives) == 0:
                continue
            order = ranking[query]
            positive_at = np.sort(np.flatnonzero(np.isin(order, positives)))
            junk_at = np.sort(np.flatnonzero(np.isin(order, junk)))
            positive_at = positive_at - np.searchsorted(junk_at, positive_at)  # junk before a positive does not count
            aps.append(revisited_average_precision(positive_at, len(positives)))
            one_based = positive_at + 1
            prs.append([(one_based <= min(one_based.max(), k)).sum() / min(one_based.max(), k) for k in kappas])
        skipped[protocol] = len(ranking) - len(aps)
        maps[protocol] = float(np.mean(aps)) if aps else float("nan")
        precisions[protocol] = {k: float(np.mean([p[i] for p in prs])) if prs else float("nan")
                                for i, k in enumerate(kappas)}
    return maps, precisions, skipped


def _stem(path: str) -> str:
    return PurePosixPath(path).stem


def revisited_evaluate(database: LabelledEmbeddings, ground_truth: RevisitedGroundTruth, *,
                       queries: LabelledEmbeddings | None = None, device: str = "auto") -> RevisitedResult:
    """Easy / Medium / Hard mAP of a store of the revisited Oxford or Paris images.

    Store rows are matched to the ground truth's names by file name without extension
    (``jpg/all_souls_000013.jpg`` → ``all_souls_000013``). The protocol embeds each query image
    cropped to its bounding box: pass those as ``queries``; without them the full query images
    are taken from the database store, and the result says so.

    Raises:
        InvalidArgumentError: database or query images missing from the stores.
        EncoderMismatchError: the query store comes from another encoder.
    """
    started = time.perf_counter()
    database_row = {_stem(p): i for i, p in enumerate(database.paths.tolist())}
    missing = [n for n in ground_truth.database_names if n not in database_row]
    if missing:
        raise InvalidArgumentError(f"{len(missing)} of the {len(ground_truth.database_names)} database images of the "
                                   f"ground truth are not in {database.source} (e.g. {missing[0]!r}); embed the "
                                   "dataset's whole jpg/ folder")
    order = np.asarray([database_row[n] for n in ground_truth.database_names])
    database_vectors = unit_rows(database.embeddings[order])
    notes: list[str] = []
    source = queries if queries is not None else database
    if queries is not None:
        check_same_encoder_sets(database, queries)
        queries_from = f"query store {queries.source}"
    else:
        queries_from = "the database store (uncropped queries)"
        notes.append("query images were not cropped to their bounding boxes, so figures are not comparable "
                     "with published ones; embed cropped queries and pass them with --queries")
    query_row = {_stem(p): i for i, p in enumerate(source.paths.tolist())}
    missing = [n for n in ground_truth.query_names if n not in query_row]
    if missing:
        raise InvalidArgumentError(f"{len(missing)} of the {len(ground_truth.query_names)} query images are not in "
                                   f"{source.source} (e.g. {missing[0]!r})")
    query_vectors = unit_rows(source.embeddings[[query_row[n] for n in ground_truth.query_names]])
    ranking = exact_neighbors(query_vectors, database_vectors, len(database_vectors), device=device).positions
    maps, precisions, skipped = revisited_scores(ranking, ground_truth)
    notes += [f"{count} quer{'y' if count == 1 else 'ies'} without {protocol} positives skipped"
              for protocol, count in skipped.items() if count]
    return RevisitedResult(mean_average_precision=maps, mean_precision=precisions,
                           n_queries=len(ground_truth.query_names), n_database=len(order), queries_from=queries_from,
                           notes=tuple(notes), seconds=time.perf_counter() - started)


def revisited_from_stores(store: str | os.PathLike[str], ground_truth_file: str | os.PathLike[str], *,
                          queries: str | os.PathLike[str] | None = None, device: str = "auto") -> RevisitedResult:
    """``revisited_evaluate`` on store directories and a ``gnd_*.pkl`` file (the CLI's one call)."""
    from .labels import load_labelled

    return revisited_evaluate(load_labelled(store, require_labels=False), read_revisited_ground_truth(ground_truth_file),
                              queries=load_labelled(queries, require_labels=False) if queries is not None else None,
                              device=device)
