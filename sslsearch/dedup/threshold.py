"""The pure maths of a calibrated threshold: precision and recall of scores, the threshold choice, store precision.

No images and no encoder here: every function takes arrays of scores (cosine, adjusted or
verified) of true pairs (copies against their originals) and false-pair candidates, and
``calibrate.py`` / ``verified.py`` feed them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A stored neighbour at least as similar (cosine) as this quantile of copies is a sure duplicate at any
# rank: a big cluster of copies (a burst, one picture re-saved many times) has more members than the
# AMBIGUOUS_RANK nearest, and counting the rest as false pairs pushed the threshold to 0.9989 (19 of 40
# copies of one image found). Measured on 6 stores: no unrelated pair reaches it with 3 trained
# encoders; 1 and 15 of ~2M pairs with random-init ones.
SURE_COPY_QUANTILE = 0.75


def sure_duplicate_similarity(cosines: np.ndarray) -> float:
    """``SURE_COPY_QUANTILE`` of the copies' cosine similarities to their originals."""
    return float(np.quantile(np.asarray(cosines, np.float64), SURE_COPY_QUANTILE))


@dataclass(frozen=True)
class StoreFalsePairRate:
    """False matches per image above a threshold, seen on a sample of stored images, scaled to the store.

    Each sampled image (an original of the calibration) was compared with its nearest stored
    images; ``negatives`` are the similarities of those that are not its duplicates. An image of
    the store has on average ``count(negatives >= t) / queries`` such neighbours above t, so the
    store's n images are expected to form n times that over 2 false (undirected) pairs.
    """

    negatives: np.ndarray
    queries: int
    store_images: int

    def false_pairs(self, threshold: float | np.ndarray) -> float | np.ndarray:
        above = _count_at_least(np.sort(self.negatives)[::-1], threshold)
        return above / max(self.queries, 1) * self.store_images / 2


def store_precision(pairs_descending: np.ndarray, rate: StoreFalsePairRate, threshold: float) -> float:
    """Predicted precision of the store's pairs at or above ``threshold`` (1.0 when there are none).

    Example:
        >>> rate = StoreFalsePairRate(np.array([0.91]), queries=10, store_images=100)  # 5 false pairs ≥ 0.9
        >>> store_precision(np.array([0.99, 0.97, 0.95, 0.93, 0.92, 0.91, 0.91, 0.9, 0.9, 0.9]), rate, 0.9)
        0.5
    """
    return float(_store_precisions(pairs_descending, rate, np.array([threshold]))[0])


def _count_at_least(descending: np.ndarray, thresholds: float | np.ndarray) -> np.ndarray:
    """How many of the descending values are >= each threshold (binary search, not a scan)."""
    return np.searchsorted(-np.asarray(descending, dtype=np.float64), -np.asarray(thresholds, dtype=np.float64),
                           side="right")


def _store_precisions(pairs_descending: np.ndarray, rate: StoreFalsePairRate, thresholds: np.ndarray) -> np.ndarray:
    found = _count_at_least(pairs_descending, thresholds)
    predicted = 1.0 - rate.false_pairs(thresholds) / np.maximum(found, 1)
    return np.where(found > 0, np.maximum(predicted, 0.0), 1.0)


def choose_store_threshold(positives: np.ndarray, pairs_descending: np.ndarray, rate: StoreFalsePairRate,
                           target: float) -> tuple[float, bool]:
    """The lowest threshold whose predicted store precision, and that of every higher one, is ≥ ``target``.

    Candidates are the copies' similarities to their originals (a threshold needs a true match to
    stand on). When even the highest fails, the candidate with the best predicted precision is
    returned with ``reached=False``.

    Args:
        positives: (p,) similarities of copies to their originals.
        pairs_descending: (m,) similarities of the store's candidate pairs, sorted descending.
        rate: false matches per image from the calibration queries.
        target: precision in (0, 1).
    """
    candidates = np.unique(np.asarray(positives, dtype=np.float64))[::-1]
    precisions = _store_precisions(pairs_descending, rate, candidates)
    failing = np.flatnonzero(precisions < target)
    # The threshold is the candidate itself (float32 values, so exact): a margin below it could take
    # in store pairs the check above never counted.
    if len(failing) == 0 or failing[0] > 0:
        accepted = len(candidates) - 1 if len(failing) == 0 else int(failing[0]) - 1
        return float(candidates[accepted]), True
    best = int(np.flatnonzero(precisions >= precisions.max())[-1])
    return float(candidates[best]), False


def precision_recall(positives: np.ndarray, negatives: np.ndarray, threshold: float) -> tuple[float, float]:
    """(precision, recall) of "similarity >= threshold" on true-pair and false-pair similarities.

    Precision is 1.0 when nothing reaches the threshold.

    Example:
        >>> precision_recall(np.array([0.9, 0.95, 0.7]), np.array([0.8, 0.92]), 0.9)
        (0.6666666666666666, 0.6666666666666666)
    """
    true = int(np.count_nonzero(positives >= threshold))
    false = int(np.count_nonzero(negatives >= threshold))
    precision = true / (true + false) if true + false else 1.0
    return float(precision), float(true / len(positives)) if len(positives) else 0.0


def choose_threshold(positives: np.ndarray, negatives: np.ndarray, target: float) -> tuple[float, bool]:
    """The lowest threshold whose precision, and that of every higher threshold, is at least ``target``.

    The threshold is placed halfway between the lowest accepted similarity and the next lower
    observed one, so both sides keep a margin. When no threshold reaches the target, the one
    with the best precision (then the best recall) is returned with ``reached=False``.

    Args:
        positives: (p,) similarities of true pairs.
        negatives: (q,) similarities of false pairs.
        target: precision in (0, 1).

    Returns:
        (threshold, reached).

    Example:
        >>> choose_threshold(np.array([0.95, 0.9, 0.8]), np.array([0.85, 0.5]), 0.99)
        (0.875, True)
    """
    scores = np.concatenate([positives, negatives]).astype(np.float64)
    is_true = np.r_[np.ones(len(positives), bool), np.zeros(len(negatives), bool)]
    order = np.argsort(-scores, kind="stable")
    scores, is_true = scores[order], is_true[order]
    true_counts, false_counts = np.cumsum(is_true), np.cumsum(~is_true)
    # One candidate per distinct similarity: everything at or above it is called a duplicate.
    last_of_group = np.r_[scores[1:] != scores[:-1], True]
    group_scores = scores[last_of_group]
    true_at, false_at = true_counts[last_of_group], false_counts[last_of_group]
    precision = np.where(true_at + false_at > 0, true_at / np.maximum(true_at + false_at, 1), 1.0)
    ok = (precision >= target) & (true_at > 0)
    failing = np.flatnonzero(~ok)
    if ok.all() or failing[0] > 0:
        passing = len(group_scores) if ok.all() else int(failing[0])  # groups before the first failure pass
        # Stop at the lowest passing group that adds a true pair: lower has no support in the data.
        adds_true = np.flatnonzero(np.diff(np.r_[0, true_at[:passing]]) > 0)
        accepted = int(adds_true[-1])
    else:
        useful = np.flatnonzero(true_at > 0)
        best = precision[useful].max()
        accepted = int(useful[np.flatnonzero(precision[useful] >= best)[-1]])
        return _between(group_scores, accepted), False
    return _between(group_scores, accepted), True


def _between(group_scores: np.ndarray, accepted: int) -> float:
    low = float(group_scores[accepted])
    if accepted + 1 < len(group_scores):
        return float(np.float32((low + float(group_scores[accepted + 1])) / 2))
    return float(np.float32(low))
