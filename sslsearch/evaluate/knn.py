"""k-NN classification accuracy of frozen embeddings: the DINO protocol (softmax-weighted votes) and majority vote."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import InvalidArgumentError
from .labels import EvaluationSplit, unit_rows
from .neighbors import exact_neighbors

DINO_KS: tuple[int, ...] = (10, 20, 100, 200)  # Caron et al. 2021 (arXiv:2104.14294) report k=20
DINO_TEMPERATURE = 0.07


@dataclass(frozen=True)
class KNNResult:
    """Top-1 k-NN accuracy for each k, with weighted and majority votes.

    Attributes:
        ks: the neighbour counts evaluated, ascending.
        temperature: T of the weighted vote, weight = exp(similarity / T).
        weighted: {k: accuracy} with softmax-weighted votes (DINO protocol).
        majority: {k: accuracy} with one vote per neighbour (ties: the first class in sorted order).
        n_queries, n_database, n_classes: sizes of the evaluation.
        split: how queries and database were chosen ("queries", "holdout", "leave-one-out").
        notes: things a reader of the figures should know (ks left out, dropped rows, ...).
        seconds: wall time of the search and votes.
    """

    ks: tuple[int, ...]
    temperature: float
    weighted: dict[int, float]
    majority: dict[int, float]
    n_queries: int
    n_database: int
    n_classes: int
    split: str
    notes: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def best(self) -> tuple[int, float]:
        """(k, accuracy) of the best weighted-vote k."""
        k = max(self.ks, key=lambda kk: (self.weighted[kk], -kk))
        return k, self.weighted[k]

    def to_dict(self) -> dict[str, Any]:
        return {"ks": list(self.ks), "temperature": self.temperature,
                "weighted": {str(k): v for k, v in self.weighted.items()},
                "majority": {str(k): v for k, v in self.majority.items()},
                "n_queries": self.n_queries, "n_database": self.n_database, "n_classes": self.n_classes,
                "split": self.split, "notes": list(self.notes), "seconds": self.seconds}


def encode_labels(*label_arrays: np.ndarray) -> tuple[list[np.ndarray], tuple[Any, ...]]:
    """Map labels (any sortable values) to int64 codes 0..C-1 shared by all arrays, classes sorted."""
    classes = tuple(sorted(set().union(*[set(np.asarray(a).tolist()) for a in label_arrays])))
    lookup = {c: i for i, c in enumerate(classes)}
    return [np.fromiter((lookup[v] for v in np.asarray(a).tolist()), np.int64, len(a)) for a in label_arrays], classes


def vote_for_ks(neighbor_labels: np.ndarray, neighbor_scores: np.ndarray, n_classes: int, ks: Sequence[int], *,
                temperature: float | None, block: int = 8192) -> dict[int, np.ndarray]:
    """Predicted class per query from its k nearest neighbours, for several k at once.

    The votes of the k-th neighbour are added once and carried to every larger k, so all ks
    together cost about one pass over the largest k.

    Args:
        neighbor_labels: (q, K) int64 class codes of the neighbours, best first (K >= max(ks)).
        neighbor_scores: (q, K) float32 similarities.
        n_classes: C.
        ks: neighbour counts that vote, each <= K.
        temperature: None for one vote each; else weight exp(score / T) (DINO). The weights are
            shifted by each row's best score first, which leaves the argmax unchanged and cannot overflow.

    Returns:
        {k: (q,) int64 predicted codes}; ties go to the smallest code (as scikit-learn's argmax).
    """
    ks = sorted(set(int(k) for k in ks))
    predictions = {k: np.empty(len(neighbor_labels), np.int64) for k in ks}
    for start in range(0, len(neighbor_labels), block):
        labels = torch.from_numpy(np.ascontiguousarray(neighbor_labels[start:start + block, :ks[-1]]))
        if temperature is None:
            weights = torch.ones(labels.shape, dtype=torch.float64)
        else:
            scores = torch.from_numpy(np.ascontiguousarray(neighbor_scores[start:start + block, :ks[-1]])).double()
            weights = torch.exp((scores - scores[:, :1]) / temperature)
        votes = torch.zeros((len(labels), n_classes), dtype=torch.float64)
        done = 0
        for k in ks:
            votes.scatter_add_(1, labels[:, done:k], weights[:, done:k])
            done = k
            predictions[k][start:start + block] = votes.argmax(dim=1).numpy()
    return predictions


def vote(neighbor_labels: np.ndarray, neighbor_scores: np.ndarray, n_classes: int, k: int, *,
         temperature: float | None) -> np.ndarray:
    """Predicted class per query from its k nearest neighbours (see ``vote_for_ks``): (q,) int64 codes."""
    return vote_for_ks(neighbor_labels, neighbor_scores, n_classes, [k], temperature=temperature)[k]


def check_ks(ks: Sequence[int] | None, available: int) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The ks to evaluate: the ones asked (each must fit the database), or the DINO ks that fit.

    Raises:
        InvalidArgumentError: a k < 1, or an asked k larger than the database.
    """
    if ks is None:
        fitting = tuple(k for k in DINO_KS if k <= available)
        left_out = [k for k in DINO_KS if k > available]
        if not fitting:
            raise InvalidArgumentError(f"the database has {available} candidate neighbour(s) per query, fewer than the "
                                       f"smallest default k={DINO_KS[0]}; pass --k with smaller values")
        if not left_out:
            return fitting, ()
        return fitting, (f"k={','.join(map(str, left_out))} left out: the database has only {available} candidates",)
    chosen = tuple(sorted(set(int(k) for k in ks)))
    if not chosen or chosen[0] < 1:
        raise InvalidArgumentError(f"k must be >= 1, got {list(ks)}")
    if chosen[-1] > available:
        raise InvalidArgumentError(f"k={chosen[-1]} is larger than the database ({available} candidate neighbour(s) per "
                                   "query); choose k <= that")
    return chosen, ()


def knn_accuracy(train_embeddings: np.ndarray, train_labels: np.ndarray, query_embeddings: np.ndarray,
                 query_labels: np.ndarray, *, ks: Sequence[int] | None = None, temperature: float = DINO_TEMPERATURE,
                 leave_one_out: bool = False, device: str = "auto", split: str = "queries",
                 notes: Sequence[str] = ()) -> KNNResult:
    """k-NN top-1 accuracy of query vectors classified by their nearest training vectors (cosine).

    One exact search for the largest k serves every k and both votes.

    Args:
        train_embeddings: (n, d) float32 database vectors (L2-normalised here if they are not).
        train_labels: (n,) labels (strings or ints).
        query_embeddings: (q, d) float32 query vectors (L2-normalised here if they are not).
        query_labels: (q,) labels.
        ks: neighbour counts; default the DINO ones (10, 20, 100, 200) that fit the database.
        temperature: T of the weighted vote (DINO: 0.07).
        leave_one_out: queries are the training rows; each is classified by the others.
        device: "auto", "cpu" or "cuda" for the search.

    Returns:
        KNNResult with weighted and majority accuracies per k.

    Raises:
        InvalidArgumentError: fewer than two classes, an empty side, k larger than the database,
            a temperature <= 0.

    Example:
        >>> result = knn_accuracy(train, train_y, test, test_y, ks=[20])  # doctest: +SKIP
        >>> result.weighted[20]  # doctest: +SKIP
        0.912
    """
    started = time.perf_counter()
    if temperature <= 0:
        raise InvalidArgumentError(f"temperature must be > 0, got {temperature}; the DINO protocol uses 0.07")
    if len(train_labels) == 0 or len(query_labels) == 0:
        raise InvalidArgumentError(f"empty split: {len(query_labels)} queries vs {len(train_labels)} database rows")
    (train_codes, query_codes), classes = encode_labels(train_labels, query_labels)
    train_classes = len(set(train_codes.tolist()))
    if train_classes < 2:
        raise InvalidArgumentError(f"k-NN accuracy needs at least 2 classes in the database, found {train_classes} "
                                   f"({classes[0]!r}); label the data by class (ImageFolder) or pass --labels")
    available = len(train_labels) - (1 if leave_one_out else 0)
    chosen, k_notes = check_ks(ks, available)
    neighbors = exact_neighbors(unit_rows(query_embeddings), unit_rows(train_embeddings), chosen[-1], device=device,
                                exclude_self=leave_one_out)
    neighbor_labels = train_codes[neighbors.positions]
    weighted = {k: float((predicted == query_codes).mean()) for k, predicted in
                vote_for_ks(neighbor_labels, neighbors.scores, len(classes), chosen, temperature=temperature).items()}
    majority = {k: float((predicted == query_codes).mean()) for k, predicted in
                vote_for_ks(neighbor_labels, neighbors.scores, len(classes), chosen, temperature=None).items()}
    unseen = sorted(set(query_codes.tolist()) - set(train_codes.tolist()))
    extra = [f"{len(unseen)} query class(es) absent from the database (always wrong): "
             f"{', '.join(str(classes[u]) for u in unseen[:5])}"] if unseen else []
    return KNNResult(ks=chosen, temperature=temperature, weighted=weighted, majority=majority,
                     n_queries=len(query_labels), n_database=len(train_labels), n_classes=len(classes), split=split,
                     notes=tuple(notes) + k_notes + tuple(extra), seconds=time.perf_counter() - started)


def knn_predict(train_embeddings: np.ndarray, train_labels: np.ndarray, query_embeddings: np.ndarray, k: int, *,
                temperature: float | None = DINO_TEMPERATURE, device: str = "auto") -> np.ndarray:
    """Predicted label of each query by its k nearest training vectors (cosine similarity).

    Args:
        train_embeddings: (n, d) float32; train_labels: (n,) labels.
        query_embeddings: (q, d) float32.
        k: neighbours that vote (1..n).
        temperature: T of the weighted vote (DINO), or None for a plain majority vote.

    Returns:
        (q,) array of labels (the dtype of ``train_labels``).
    """
    (codes,), classes = encode_labels(train_labels)
    _, _ = check_ks([k], len(codes))
    neighbors = exact_neighbors(unit_rows(query_embeddings), unit_rows(train_embeddings), k, device=device)
    predicted = vote(codes[neighbors.positions], neighbors.scores, len(classes), k, temperature=temperature)
    return np.asarray(classes, dtype=np.asarray(train_labels).dtype)[predicted]


def knn_evaluate(split: EvaluationSplit, *, ks: Sequence[int] | None = None, temperature: float = DINO_TEMPERATURE,
                 device: str = "auto") -> KNNResult:
    """k-NN accuracy on an EvaluationSplit (see ``labels.make_split``)."""
    notes = [f"{s.dropped_unlabelled} unlabelled row(s) of {s.source} left out"
             for s in {id(x): x for x in (split.train, split.queries)}.values() if s.dropped_unlabelled]
    return knn_accuracy(split.train.embeddings, split.train.labels, split.queries.embeddings, split.queries.labels,
                        ks=ks, temperature=temperature, leave_one_out=split.leave_one_out, device=device,
                        split=split.kind, notes=notes)
