"""Classification metrics of a head: accuracy, balanced accuracy, F1, mAP, confusion matrix, calibration error."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

ECE_BINS = 15  # equal-width confidence bins, as in Guo et al. 2017


@dataclass(frozen=True)
class SingleLabelMetrics:
    """Metrics of a single-label head on one split.

    Attributes:
        accuracy: share of rows whose top-1 class is right.
        balanced_accuracy: mean over classes (with rows) of the per-class recall.
        macro_f1: mean over classes of F1 (a class neither true nor predicted in the split is left out).
        ece_before: expected calibration error of the uncalibrated softmax (temperature 1).
        ece_after: the same with the fitted temperature.
        confusion: (C, C) counts, rows = true class, columns = predicted class.
        rows: rows scored.
    """

    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    ece_before: float
    ece_after: float
    confusion: tuple[tuple[int, ...], ...]
    rows: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["confusion"] = [list(r) for r in self.confusion]
        return data


@dataclass(frozen=True)
class MultiLabelMetrics:
    """Metrics of a multi-label head on one split (labels decided by the per-label thresholds).

    Attributes:
        micro_f1: F1 over all (row, label) decisions pooled.
        macro_f1: mean over labels of F1 (labels with neither a positive nor a prediction are left out).
        mean_average_precision: mean over labels with a positive of the average precision of the scores.
        ece_before, ece_after: calibration error of the per-label probabilities (each a binary event),
            before and after temperature scaling.
        per_label: (C, 4) counts per label: true positives, false positives, false negatives, true negatives.
        rows: rows scored.
    """

    micro_f1: float
    macro_f1: float
    mean_average_precision: float
    ece_before: float
    ece_after: float
    per_label: tuple[tuple[int, int, int, int], ...]
    rows: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["per_label"] = [list(r) for r in self.per_label]
        return data


def confusion_matrix(targets: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) int64 counts: row = true class, column = predicted class.

    Example:
        >>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 1]), 2).tolist()
        [[1, 0], [1, 1]]
    """
    counts = np.bincount(np.asarray(targets, np.int64) * n_classes + np.asarray(predictions, np.int64),
                         minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


def accuracy(targets: np.ndarray, predictions: np.ndarray) -> float:
    """Share of equal entries (0.0 for no rows)."""
    targets = np.asarray(targets)
    return float((targets == np.asarray(predictions)).mean()) if len(targets) else 0.0


def balanced_accuracy(confusion: np.ndarray) -> float:
    """Mean recall over the classes that have at least one true row."""
    support = confusion.sum(axis=1)
    present = support > 0
    if not present.any():
        return 0.0
    return float((np.diag(confusion)[present] / support[present]).mean())


def _f1(true_positives: np.ndarray, false_positives: np.ndarray, false_negatives: np.ndarray) -> np.ndarray:
    denominator = 2 * true_positives + false_positives + false_negatives
    return np.where(denominator > 0, 2 * true_positives / np.maximum(denominator, 1), 0.0)


def macro_f1(confusion: np.ndarray) -> float:
    """Mean F1 over the classes that are true or predicted at least once (scikit-learn's 'macro' on those labels)."""
    true_positives = np.diag(confusion).astype(np.float64)
    false_positives = confusion.sum(axis=0) - true_positives
    false_negatives = confusion.sum(axis=1) - true_positives
    seen = (confusion.sum(axis=0) + confusion.sum(axis=1)) > 0
    if not seen.any():
        return 0.0
    return float(_f1(true_positives, false_positives, false_negatives)[seen].mean())


def expected_calibration_error(confidences: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: Σ_bins (rows in bin / n) · |accuracy in bin − mean confidence in bin|.

    Args:
        confidences: (n,) probabilities in [0, 1] that the decision is right (top-1 softmax probability,
            or a per-label probability of "positive").
        correct: (n,) bool, whether the decision was right (or the label was positive).
        bins: equal-width bins over [0, 1]; a confidence of exactly 1 falls in the last.

    Example:
        >>> expected_calibration_error(np.array([0.9, 0.9]), np.array([True, False]))
        0.4
    """
    confidences = np.asarray(confidences, np.float64).reshape(-1)
    correct = np.asarray(correct, np.float64).reshape(-1)
    if not len(confidences):
        return 0.0
    which = np.minimum((confidences * bins).astype(np.int64), bins - 1)
    confidence_sums = np.bincount(which, weights=confidences, minlength=bins)
    correct_sums = np.bincount(which, weights=correct, minlength=bins)
    return float(np.abs(correct_sums - confidence_sums).sum() / len(confidences))


def softmax_ece(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """Top-label ECE of (n, C) softmax probabilities against (n,) class indices."""
    return expected_calibration_error(probabilities.max(axis=1), probabilities.argmax(axis=1) == targets)


def single_label_metrics(probabilities_before: np.ndarray, probabilities_after: np.ndarray,
                         targets: np.ndarray) -> SingleLabelMetrics:
    """Metrics of (n, C) softmax probabilities (temperature 1 and calibrated) against (n,) class indices."""
    n_classes = probabilities_after.shape[1]
    predictions = probabilities_after.argmax(axis=1)
    confusion = confusion_matrix(targets, predictions, n_classes)
    return SingleLabelMetrics(
        accuracy=accuracy(targets, predictions), balanced_accuracy=balanced_accuracy(confusion),
        macro_f1=macro_f1(confusion), ece_before=softmax_ece(probabilities_before, targets),
        ece_after=softmax_ece(probabilities_after, targets),
        confusion=tuple(tuple(int(v) for v in row) for row in confusion), rows=len(targets))


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Average precision of a ranking by ``scores`` (n,) against (n,) bool ``positives`` (0.0 with none).

    The mean, over the positives, of the precision at each positive's rank; ties are broken by
    position (scikit-learn's ``average_precision_score`` counts tied scores as one step).
    """
    positives = np.asarray(positives, bool)
    total = int(positives.sum())
    if total == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    hits = positives[order]
    precision_at_hit = np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)
    return float(precision_at_hit.sum() / total)


def label_counts(targets: np.ndarray, decisions: np.ndarray) -> np.ndarray:
    """(C, 4) int64 per label: true positives, false positives, false negatives, true negatives."""
    targets, decisions = np.asarray(targets, bool), np.asarray(decisions, bool)
    return np.stack([(targets & decisions).sum(0), (~targets & decisions).sum(0), (targets & ~decisions).sum(0),
                     (~targets & ~decisions).sum(0)], axis=1).astype(np.int64)


def multi_label_metrics(probabilities_before: np.ndarray, probabilities_after: np.ndarray, targets: np.ndarray,
                        thresholds: np.ndarray) -> MultiLabelMetrics:
    """Metrics of (n, C) sigmoid probabilities against (n, C) 0/1 targets, deciding with (C,) thresholds."""
    targets = np.asarray(targets) > 0.5
    decisions = probabilities_after >= np.asarray(thresholds)[None, :]
    counts = label_counts(targets, decisions)
    tp, fp, fn = (counts[:, i].astype(np.float64) for i in range(3))
    micro = float(_f1(np.array([tp.sum()]), np.array([fp.sum()]), np.array([fn.sum()]))[0])
    seen = (tp + fp + fn) > 0
    macro = float(_f1(tp, fp, fn)[seen].mean()) if seen.any() else 0.0
    with_positive = [c for c in range(targets.shape[1]) if targets[:, c].any()]
    mean_ap = float(np.mean([average_precision(probabilities_after[:, c], targets[:, c]) for c in with_positive])
                    ) if with_positive else 0.0
    return MultiLabelMetrics(
        micro_f1=micro, macro_f1=macro, mean_average_precision=mean_ap,
        ece_before=expected_calibration_error(probabilities_before, targets),
        ece_after=expected_calibration_error(probabilities_after, targets),
        per_label=tuple(tuple(int(v) for v in row) for row in counts), rows=len(targets))
