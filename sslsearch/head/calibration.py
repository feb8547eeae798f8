"""Calibration of a head on held-out rows: temperature scaling and per-label decision thresholds."""
from __future__ import annotations

import numpy as np
import torch

MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0  # a fitted temperature outside this range means no signal


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, *, multi_label: bool) -> float:
    """The temperature T > 0 minimising the negative log-likelihood of ``logits / T`` (Guo et al. 2017).

    One scalar for all classes, so the top-1 decision (single-label) is unchanged; only the
    confidence moves. The likelihood is the unweighted one, so probabilities follow the
    label frequencies of these rows even when training balanced the classes.

    Args:
        logits: (n, C) float32 logits of held-out rows.
        targets: (n,) int64 class indices, or (n, C) float32 0/1 with ``multi_label``.
        multi_label: per-label sigmoid + binary cross-entropy instead of softmax + cross-entropy.

    Returns:
        The temperature, clamped to [0.05, 20]; 1.0 for no rows.

    Example:
        >>> fit_temperature(torch.tensor([[8.0, 0.0], [8.0, 0.0]]), torch.tensor([0, 1]), multi_label=False) > 1
        True
    """
    if len(logits) == 0:
        return 1.0
    logits = logits.detach().float().cpu()
    targets = targets.detach().cpu()
    log_temperature = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def nll() -> torch.Tensor:
        optimizer.zero_grad()
        scaled = logits / log_temperature.exp()
        if multi_label:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(scaled, targets.float())
        else:
            loss = torch.nn.functional.cross_entropy(scaled, targets)
        loss.backward()
        return loss

    optimizer.step(nll)
    temperature = float(log_temperature.detach().exp())
    if not np.isfinite(temperature):
        return 1.0
    return float(min(max(temperature, MIN_TEMPERATURE), MAX_TEMPERATURE))


def fit_thresholds(probabilities: np.ndarray, targets: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per-label thresholds maximising F1 on held-out rows (multi-label).

    For each label the rows are ranked by probability; the cut with the best F1 is placed midway
    between the last row taken and the next. A label with no positive row keeps ``default``.

    Args:
        probabilities: (n, C) calibrated probabilities.
        targets: (n, C) 0/1.

    Returns:
        (C,) float64 thresholds: a row is positive for label c when its probability is ≥ thresholds[c].
    """
    n, n_labels = probabilities.shape
    thresholds = np.full(n_labels, default, np.float64)
    for c in range(n_labels):
        positives = np.asarray(targets[:, c]) > 0.5
        total = int(positives.sum())
        if total == 0 or n == 0:
            continue
        order = np.argsort(-probabilities[:, c], kind="stable")
        scores, hits = probabilities[order, c].astype(np.float64), positives[order]
        taken = np.arange(1, n + 1)
        f1 = 2 * np.cumsum(hits) / (taken + total)
        # a cut is only possible where the next score is strictly lower (ties go together)
        valid = np.append(scores[1:] < scores[:-1], True)
        best = int(np.argmax(np.where(valid, f1, -1.0)))
        following = scores[best + 1] if best + 1 < n else 0.0
        thresholds[c] = 0.5 * (scores[best] + following)
    return thresholds
