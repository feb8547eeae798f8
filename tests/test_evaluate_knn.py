"""k-NN accuracy: against scikit-learn on the digits pixels, a hand-made weighted vote, leave-one-out, bad input."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier

from evaluate_helpers import OTHER_ENCODER, clustered, write_store
from sslsearch.errors import EncoderMismatchError, InvalidArgumentError
from sslsearch.evaluate import knn_accuracy, knn_evaluate, knn_predict, load_labelled, make_split
from sslsearch.evaluate.knn import vote
from sslsearch.evaluate.labels import load_split


@pytest.fixture(scope="module")
def digits():
    """Raw pixels of scikit-learn's bundled digits (no download), a seeded stratified split."""
    pixels, labels = load_digits(return_X_y=True)
    return train_test_split(pixels.astype(np.float32), labels, test_size=0.3, random_state=0, stratify=labels)


@pytest.mark.parametrize("k", [1, 3, 10, 20, 100])
def test_majority_vote_matches_sklearn_on_digits(digits, k):
    train, test, train_y, test_y = digits
    reference = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(train, train_y)
    ours = knn_predict(train, train_y, test, k, temperature=None, device="cpu")
    np.testing.assert_array_equal(ours, reference.predict(test))
    result = knn_accuracy(train, train_y, test, test_y, ks=[k], device="cpu")
    assert result.majority[k] == pytest.approx(reference.score(test, test_y))


@pytest.mark.parametrize("k", [10, 20])
def test_weighted_vote_matches_sklearn_with_exp_weights(digits, k):
    train, test, train_y, _ = digits
    temperature = 0.07
    # sklearn passes cosine distances d = 1 - similarity; DINO weights are exp(similarity / T).
    reference = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute",
                                     weights=lambda d: np.exp((1.0 - d) / temperature)).fit(train, train_y)
    ours = knn_predict(train, train_y, test, k, temperature=temperature, device="cpu")
    assert (ours == reference.predict(test)).mean() >= 0.998  # float32 vs float64 weights may flip a near-tie


def test_weighted_vote_by_hand():
    # Neighbours of one query: class 0 with similarity 0.9, class 1 twice with 0.5.
    labels = np.array([[0, 1, 1]])
    scores = np.array([[0.9, 0.5, 0.5]], np.float32)
    assert vote(labels, scores, 2, 3, temperature=None)[0] == 1  # majority: two votes for class 1
    # weighted: exp(0.9/0.07) = 3.8e5 > 2·exp(0.5/0.07) = 2.5e3, so class 0 wins
    assert vote(labels, scores, 2, 3, temperature=0.07)[0] == 0
    # with a high temperature the weights flatten and the majority wins again
    assert vote(labels, scores, 2, 3, temperature=10.0)[0] == 1


def test_majority_ties_go_to_the_first_class():
    assert vote(np.array([[2, 1]]), np.ones((1, 2), np.float32), 3, 2, temperature=None)[0] == 1


def test_leave_one_out_matches_brute_force_reference():
    vectors, labels = clustered(15, 4, 16, spread=1.2, seed=3)
    result = knn_accuracy(vectors, labels, vectors, labels, ks=[1, 5], leave_one_out=True, device="cpu")
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    order = np.argsort(-similarity, axis=1, kind="stable")
    for k in (1, 5):
        votes = np.stack([np.bincount(labels[row[:k]], minlength=4) for row in order])
        assert result.majority[k] == pytest.approx((votes.argmax(axis=1) == labels).mean())
    assert result.n_queries == result.n_database == 60


def test_store_split_and_default_ks(tmp_path):
    vectors, labels = clustered(20, 3, 8, seed=1)
    store = write_store(tmp_path / "emb", vectors, [f"class{v}" for v in labels])
    result = knn_evaluate(load_split(store), device="cpu")
    assert result.split == "leave-one-out"
    assert result.ks == (10, 20)  # 100 and 200 do not fit 59 candidates: left out with a note
    assert any("k=100,200 left out" in note for note in result.notes)
    assert result.weighted[10] > 0.9  # well-separated clusters
    holdout = knn_evaluate(load_split(store, holdout=0.25), ks=[5], device="cpu")
    assert holdout.n_queries == 15 and holdout.n_database == 45


def test_bad_input(tmp_path):
    vectors, labels = clustered(10, 2, 8)
    with pytest.raises(InvalidArgumentError, match="at least 2 classes"):
        knn_accuracy(vectors, np.zeros(20, int), vectors, np.zeros(20, int), ks=[3])
    with pytest.raises(InvalidArgumentError, match="larger than the database"):
        knn_accuracy(vectors, labels, vectors, labels, ks=[25])
    with pytest.raises(InvalidArgumentError, match="larger than the database"):
        knn_accuracy(vectors, labels, vectors, labels, ks=[20], leave_one_out=True)
    with pytest.raises(InvalidArgumentError, match="empty split"):
        knn_accuracy(vectors, labels, vectors[:0], labels[:0], ks=[3])
    with pytest.raises(InvalidArgumentError, match="temperature"):
        knn_accuracy(vectors, labels, vectors, labels, ks=[3], temperature=0)
    database = load_labelled(write_store(tmp_path / "a", vectors, list(labels)))
    other = load_labelled(write_store(tmp_path / "b", vectors, list(labels), encoder=OTHER_ENCODER))
    with pytest.raises(EncoderMismatchError, match="timm:other"):
        make_split(database, queries=other)


def test_missing_labels_refused_or_dropped(tmp_path):
    vectors, labels = clustered(10, 2, 8)
    names = [str(v) for v in labels]
    names[3] = names[7] = None
    store = write_store(tmp_path / "emb", vectors, names)
    with pytest.raises(InvalidArgumentError, match="2 of 20 rows .* have no label"):
        load_labelled(store)
    kept = load_labelled(store, drop_unlabelled=True)
    assert len(kept) == 18 and kept.dropped_unlabelled == 2
    result = knn_evaluate(make_split(kept, leave_one_out=True), ks=[3], device="cpu")
    assert any("2 unlabelled" in note for note in result.notes)


def test_holdout_leaving_a_side_empty_is_refused(tmp_path):
    vectors, labels = clustered(1, 3, 8)
    with pytest.raises(InvalidArgumentError, match="empty"):
        load_split(write_store(tmp_path / "emb", vectors, list(labels)), holdout=0.5)
