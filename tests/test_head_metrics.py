"""Head metrics against scikit-learn, hand-computed calibration error, temperature and threshold fitting."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from sslsearch.head.calibration import fit_temperature, fit_thresholds
from sslsearch.head.metrics import (
    average_precision,
    balanced_accuracy,
    confusion_matrix,
    expected_calibration_error,
    macro_f1,
    multi_label_metrics,
    single_label_metrics,
    softmax_ece,
)


def test_single_label_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 5, 300)
    predictions = np.where(rng.random(300) < 0.6, targets, rng.integers(0, 5, 300))
    confusion = confusion_matrix(targets, predictions, 5)
    assert confusion.tolist() == sk.confusion_matrix(targets, predictions, labels=range(5)).tolist()
    assert balanced_accuracy(confusion) == pytest.approx(sk.balanced_accuracy_score(targets, predictions))
    assert macro_f1(confusion) == pytest.approx(sk.f1_score(targets, predictions, average="macro"))


def test_macro_f1_leaves_out_classes_never_seen():
    # class 2 is neither true nor predicted: scikit-learn's macro over the labels present
    targets, predictions = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    assert macro_f1(confusion_matrix(targets, predictions, 3)) == pytest.approx(
        sk.f1_score(targets, predictions, average="macro"))


def test_expected_calibration_error_by_hand():
    # bin [0.8667, 0.9333): 2 rows, confidence 0.9, accuracy 0.5 → 2/4 · 0.4; bin of 0.6: 2 rows, both right → 2/4 · 0.4
    confidences = np.array([0.9, 0.9, 0.6, 0.6])
    correct = np.array([True, False, True, True])
    assert expected_calibration_error(confidences, correct) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert expected_calibration_error(np.array([1.0]), np.array([True])) == 0.0  # 1.0 falls in the last bin
    assert expected_calibration_error(np.zeros(0), np.zeros(0, bool)) == 0.0


def test_average_precision_matches_sklearn_without_ties():
    rng = np.random.default_rng(1)
    for _ in range(5):
        positives = rng.random(50) < 0.3
        scores = rng.random(50) + 0.5 * positives
        assert average_precision(scores, positives) == pytest.approx(sk.average_precision_score(positives, scores))
    assert average_precision(np.array([0.3, 0.2]), np.array([False, False])) == 0.0


def test_multi_label_metrics_match_sklearn():
    rng = np.random.default_rng(2)
    targets = (rng.random((200, 4)) < 0.35).astype(np.float32)
    probabilities = np.clip(0.6 * targets + 0.5 * rng.random((200, 4)), 0, 1).astype(np.float32)
    thresholds = np.array([0.5, 0.55, 0.6, 0.45])
    result = multi_label_metrics(probabilities, probabilities, targets, thresholds)
    decisions = probabilities >= thresholds
    assert result.micro_f1 == pytest.approx(sk.f1_score(targets, decisions, average="micro"))
    assert result.macro_f1 == pytest.approx(sk.f1_score(targets, decisions, average="macro"))
    assert result.mean_average_precision == pytest.approx(
        np.mean([sk.average_precision_score(targets[:, c], probabilities[:, c]) for c in range(4)]))
    tp, fp, fn, tn = np.asarray(result.per_label).T
    assert (tp + fp + fn + tn == 200).all() and tp.sum() == (decisions & (targets > 0)).sum()


def _overconfident(scale: float, n: int = 4000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``scale`` times sharper than the distribution the labels are drawn from."""
    generator = torch.Generator().manual_seed(seed)
    true_logits = 1.5 * torch.randn(n, 4, generator=generator)
    targets = torch.multinomial(torch.softmax(true_logits, dim=1), 1, generator=generator).squeeze(1)
    return scale * true_logits, targets


def test_temperature_undoes_overconfidence_and_lowers_ece():
    logits, targets = _overconfident(4.0)
    temperature = fit_temperature(logits, targets, multi_label=False)
    assert temperature == pytest.approx(4.0, rel=0.1)
    before = softmax_ece(torch.softmax(logits, 1).numpy(), targets.numpy())
    after = softmax_ece(torch.softmax(logits / temperature, 1).numpy(), targets.numpy())
    assert before > 0.15 and after < 0.03
    # the top-1 decisions do not move
    assert single_label_metrics(torch.softmax(logits, 1).numpy(), torch.softmax(logits / temperature, 1).numpy(),
                                targets.numpy()).accuracy == pytest.approx(
        float((logits.argmax(1) == targets).float().mean()))


def test_temperature_multi_label_and_underconfidence():
    generator = torch.Generator().manual_seed(3)
    true_logits = 3 * torch.randn(4000, 3, generator=generator)
    targets = torch.bernoulli(torch.sigmoid(true_logits), generator=generator)
    assert fit_temperature(true_logits / 2, targets, multi_label=True) == pytest.approx(0.5, rel=0.1)
    assert fit_temperature(torch.zeros(0, 3), torch.zeros(0, 3), multi_label=True) == 1.0


def test_thresholds_maximise_f1_on_separable_scores():
    probabilities = np.array([[0.9, 0.2], [0.7, 0.1], [0.4, 0.3], [0.2, 0.05]])
    targets = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])
    thresholds = fit_thresholds(probabilities, targets)
    assert thresholds[0] == pytest.approx(0.55)  # midway between the last positive (0.7) and the next (0.4)
    assert thresholds[1] == 0.5  # no positive: the default
    assert ((probabilities >= thresholds) == targets.astype(bool)).all()
