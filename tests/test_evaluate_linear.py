"""Linear probe: against scikit-learn's LogisticRegression on the digits pixels (same objective), sweep, bad input."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from evaluate_helpers import clustered
from sslsearch.errors import InvalidArgumentError
from sslsearch.evaluate import linear_evaluate, linear_probe, load_labelled, make_split


def test_matches_sklearn_logistic_regression_on_digits():
    pixels, labels = load_digits(return_X_y=True)
    train, test, train_y, test_y = train_test_split(pixels.astype(np.float32), labels, test_size=0.3,
                                                    random_state=0, stratify=labels)
    scaler = StandardScaler().fit(train)
    c = 0.1
    reference = LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(train), train_y)
    # sklearn minimises ½‖W‖² + C·Σ loss, i.e. mean loss + ‖W‖² / (2·C·n): our L2 weight is 1 / (C·n)
    ours = linear_probe(train, train_y, test, test_y, learning_rates=[0.01], weight_decays=[1 / (c * len(train))],
                        epochs=150, device="cpu")
    assert ours.test_accuracy == pytest.approx(reference.score(scaler.transform(test), test_y), abs=0.015)
    assert ours.train_accuracy == pytest.approx(reference.score(scaler.transform(train), train_y), abs=0.01)


def test_sweep_picks_the_best_validation_setting():
    vectors, labels = clustered(30, 3, 12, spread=1.0, seed=6)
    rows = np.random.default_rng(0).permutation(len(labels))
    train, test = rows[:70], rows[70:]
    result = linear_probe(vectors[train], labels[train], vectors[test], labels[test], learning_rates=[1e-4, 1e-1],
                          weight_decays=[0.0, 1e-3], epochs=8, batch_size=16, device="cpu")
    assert len(result.sweep) == 4
    best = max(result.sweep, key=lambda p: p.validation_accuracy)
    assert (result.learning_rate, result.weight_decay) == (best.learning_rate, best.weight_decay)
    assert result.test_accuracy > 0.8 and result.n_train == 70 and result.n_test == 20


def test_bad_input(tmp_path):
    vectors, labels = clustered(10, 2, 8)
    with pytest.raises(InvalidArgumentError, match="at least 2 classes"):
        linear_probe(vectors, np.zeros(20, int), vectors, np.zeros(20, int), epochs=1)
    with pytest.raises(InvalidArgumentError, match="empty split"):
        linear_probe(vectors, labels, vectors[:0], labels[:0], epochs=1)
    from evaluate_helpers import write_store

    database = load_labelled(write_store(tmp_path / "emb", vectors, list(labels)))
    with pytest.raises(InvalidArgumentError, match="separate train and test"):
        linear_evaluate(make_split(database, leave_one_out=True))
