"""Task heads on Gaussian-blob stores: accuracy, class balance, early stopping, calibration, multi-label, files, errors."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from evaluate_helpers import ENCODER, OTHER_ENCODER, clustered, write_store
from sslsearch.errors import EncoderMismatchError, InputNotFoundError, InvalidArgumentError, OutputExistsError, SSLSearchError
from sslsearch.evaluate.labels import holdout_rows
from sslsearch.head import (
    HeadConfig,
    evaluate_head,
    load_head,
    predict_head,
    read_label_file,
    train_head,
    write_predictions,
)
from sslsearch.head.metrics import balanced_accuracy, confusion_matrix, softmax_ece

FAST = {"device": "cpu", "progress": False}


def _names(labels: np.ndarray) -> list[str]:
    return [f"c{int(v)}" for v in labels]


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """A store of 4 separable classes (60 rows each, dim 16) and an independent sample of the same blobs."""
    vectors, labels = clustered(75, 4, 16, spread=0.5, seed=1)
    rng = np.random.default_rng(0)
    train_rows = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:60] for c in range(4)])
    test_rows = np.setdiff1d(np.arange(len(labels)), train_rows)
    directory = write_store(tmp_path_factory.mktemp("blobs") / "emb", vectors[train_rows], _names(labels[train_rows]))
    return directory, vectors[test_rows], labels[test_rows]


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_separable_classes_reach_high_accuracy(blobs, tmp_path, kind):
    store, test_vectors, test_labels = blobs
    result = train_head(store, "folders", tmp_path / "head", kind=kind, epochs=60, **FAST)
    assert result.head.labels == ("c0", "c1", "c2", "c3")
    assert result.metrics.accuracy >= 0.95 and result.n_train == 192 and result.n_validation == 48
    predictions = predict_head(tmp_path / "head", test_vectors)
    assert np.mean(predictions.probabilities.argmax(1) == test_labels) >= 0.95
    assert np.allclose(predictions.probabilities.sum(1), 1.0, atol=1e-5)
    assert [p[0] for p in predictions.predicted[:3]] == [f"c{c}" for c in predictions.probabilities[:3].argmax(1)]
    assert sorted(p.name for p in (tmp_path / "head").iterdir()) == ["confusion.png", "head.json", "head.safetensors",
                                                                     "metrics.json"]
    assert (tmp_path / "head" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    recorded = json.loads((tmp_path / "head" / "metrics.json").read_text())
    assert recorded["validation"]["accuracy"] == result.metrics.accuracy
    assert np.asarray(recorded["validation"]["confusion"]).sum() == 48


def _two_gaussians(n0: int, n1: int, seed: int, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shift = np.zeros(dim)
    shift[0] = 1.5
    vectors = np.concatenate([rng.normal(size=(n0, dim)), rng.normal(size=(n1, dim)) + shift]).astype(np.float32)
    return vectors, np.array([0] * n0 + [1] * n1)


def test_class_balance_matters_on_imbalanced_data(tmp_path):
    vectors, labels = _two_gaussians(950, 50, seed=1)
    store = write_store(tmp_path / "emb", vectors, _names(labels))
    test_vectors, test_labels = _two_gaussians(1000, 1000, seed=2)
    scores = {}
    for balance in ("none", "loss", "sampling"):
        head = train_head(store, "folders", None, balance=balance, epochs=60, **FAST).head
        predicted = predict_head(head, test_vectors).probabilities.argmax(1)
        scores[balance] = balanced_accuracy(confusion_matrix(test_labels, predicted, 2))
    # unbalanced, the rare class is mostly missed; balanced, both halves of the test set count
    assert scores["none"] < 0.6
    assert scores["loss"] > scores["none"] + 0.1 and scores["sampling"] > scores["none"] + 0.1


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    # few rows in many dims with noisy labels: an MLP overfits and the validation loss turns up
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 120)
    vectors = (0.3 * rng.normal(size=(3, 64))[labels] + rng.normal(size=(120, 64))).astype(np.float32)
    store = write_store(tmp_path / "emb", vectors, _names(labels))
    config = HeadConfig(kind="mlp", epochs=200, patience=8, learning_rate=3e-3, weight_decay=0.0, balance="none")
    result = train_head(store, "folders", None, config=config, **FAST)
    losses = [r.validation_loss for r in result.history]
    assert result.best_epoch == int(np.argmin(losses)) + 1
    assert result.stopped_early and len(result.history) == result.best_epoch + config.patience
    assert losses[-1] > losses[result.best_epoch - 1]
    # the head holds the best epoch's weights: it reproduces that epoch's validation loss
    validation = holdout_rows(np.array(_names(labels), dtype=object), config.validation_fraction, config.seed)
    with torch.no_grad():
        logits = result.head.module(torch.from_numpy(vectors[validation]))
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels[validation]))
    assert float(loss) == pytest.approx(losses[result.best_epoch - 1], rel=1e-5)


def test_calibration_lowers_ece_of_an_overconfident_head(tmp_path):
    # a large step size makes the MLP's first epochs over-confident on noisy, overlapping classes
    def sample(n, seed):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 3, n)
        vectors = centres[labels] + rng.normal(size=(n, 128))
        flip = rng.random(n) < 0.2
        return vectors.astype(np.float32), np.where(flip, rng.integers(0, 3, n), labels)

    centres = 0.15 * np.random.default_rng(5).normal(size=(3, 128))
    vectors, labels = sample(400, 0)
    store = write_store(tmp_path / "emb", vectors, _names(labels))
    result = train_head(store, "folders", None, kind="mlp", learning_rate=3e-2, weight_decay=0.0,
                        validation_fraction=0.25, **FAST)
    assert result.temperature > 1.5
    assert result.metrics.ece_after < result.metrics.ece_before
    test_vectors, test_labels = sample(3000, 99)
    with torch.no_grad():
        uncalibrated = torch.softmax(result.head.module(torch.from_numpy(test_vectors)), 1).numpy()
    calibrated = predict_head(result.head, test_vectors).probabilities
    assert softmax_ece(calibrated, test_labels) < 0.5 * softmax_ece(uncalibrated, test_labels)
    assert (calibrated.argmax(1) == uncalibrated.argmax(1)).all()


def _multi_label_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row has each of 3 labels with probability 0.4; its vector is the sum of their prototypes + noise."""
    rng = np.random.default_rng(seed)
    prototypes = 2.0 * np.random.default_rng(7).normal(size=(3, 24))
    targets = (rng.random((n, 3)) < 0.4).astype(np.float32)
    return (targets @ prototypes + 0.5 * rng.normal(size=(n, 24))).astype(np.float32), targets


def _write_multi_label_csv(path, paths, targets, *, several_rows: bool) -> None:
    names = ["cat", "dog", "outdoor"]
    lines = ["path,label"]
    for p, row in zip(paths, targets):
        chosen = [names[c] for c in np.flatnonzero(row)]
        if several_rows:
            lines += [f"{p},{name}" for name in chosen] or [f"{p},"]
        else:
            lines.append(f"{p},{'|'.join(chosen)}")
    path.write_text("\n".join(lines) + "\n")


def test_multi_label_head(tmp_path):
    vectors, targets = _multi_label_data(400, seed=0)
    store = write_store(tmp_path / "emb", vectors, None)
    paths = [f"unlabelled/{i:05d}.png" for i in range(len(vectors))]
    _write_multi_label_csv(tmp_path / "pipes.csv", paths, targets, several_rows=False)
    _write_multi_label_csv(tmp_path / "rows.csv", paths, targets, several_rows=True)
    assert read_label_file(tmp_path / "pipes.csv").labels == read_label_file(tmp_path / "rows.csv").labels
    result = train_head(store, tmp_path / "pipes.csv", tmp_path / "head", multi_label=True, epochs=80, **FAST)
    head = load_head(tmp_path / "head")
    assert head.multi_label and head.labels == ("cat", "dog", "outdoor") and len(head.thresholds) == 3
    assert result.metrics.micro_f1 > 0.9 and result.metrics.mean_average_precision > 0.9
    test_vectors, test_targets = _multi_label_data(500, seed=1)
    predictions = predict_head(head, test_vectors)
    decided = np.array([[name in row for name in head.labels] for row in predictions.predicted])
    assert (decided == (test_targets > 0)).mean() > 0.93
    write_predictions(predictions, tmp_path / "p.parquet")
    table = pq.read_table(tmp_path / "p.parquet")
    assert table.column("labels").to_pylist()[:5] == [list(p) for p in predictions.predicted[:5]]
    assert json.loads(table.schema.metadata[b"sslsearch.head.labels"]) == ["cat", "dog", "outdoor"]


def test_evaluate_on_an_independent_store(blobs, tmp_path):
    store, test_vectors, test_labels = blobs
    train_head(store, "folders", tmp_path / "head", epochs=30, **FAST)
    names = _names(test_labels)
    names[0] = "c9"  # a class the head never saw: left out and reported
    test_store = write_store(tmp_path / "test", test_vectors, names)
    evaluation = evaluate_head(tmp_path / "head", test_store)
    predicted = predict_head(tmp_path / "head", test_vectors[1:]).probabilities.argmax(1)
    assert evaluation.rows == 59 and evaluation.unknown_labels == ("c9",) and evaluation.unknown_rows == 1
    assert evaluation.metrics.accuracy == pytest.approx(np.mean(predicted == test_labels[1:])) and \
        evaluation.metrics.accuracy >= 0.95
    assert np.asarray(evaluation.metrics.confusion).sum() == 59
    only_one_class = write_store(tmp_path / "ones", test_vectors[test_labels == 1], ["c1"] * 15)
    assert evaluate_head(tmp_path / "head", only_one_class).metrics.balanced_accuracy >= 0.9
    other = write_store(tmp_path / "other", test_vectors, names, encoder=OTHER_ENCODER)
    with pytest.raises(EncoderMismatchError, match="timm:other"):
        evaluate_head(tmp_path / "head", other)


def test_multi_label_from_folders_leaves_unlabelled_rows_out(tmp_path):
    vectors, labels = clustered(20, 2, 8, seed=4)
    names: list[str | None] = _names(labels)
    names[:5] = [None] * 5
    result = train_head(write_store(tmp_path / "emb", vectors, names), "folders", None, multi_label=True, epochs=3,
                        **FAST)
    assert result.unlabelled == 5 and result.n_train + result.n_validation == 35
    assert result.class_counts == {"c0": 15, "c1": 20}


def test_save_load_round_trip_is_exact(blobs, tmp_path):
    store, test_vectors, _ = blobs
    result = train_head(store, "folders", tmp_path / "head", kind="mlp", epochs=5, **FAST)
    loaded = load_head(tmp_path / "head")
    original = result.head.module.state_dict()
    assert set(loaded.module.state_dict()) == set(original)
    assert all(torch.equal(v, original[k]) for k, v in loaded.module.state_dict().items())
    assert (loaded.labels, loaded.kind, loaded.dim, loaded.temperature, loaded.encoder) == (
        result.head.labels, "mlp", 16, result.head.temperature, ENCODER)
    assert np.array_equal(predict_head(loaded, test_vectors).probabilities,
                          predict_head(result.head, test_vectors).probabilities)
    assert loaded.meta["config"]["kind"] == "mlp" and loaded.meta["best_epoch"] == result.best_epoch


def test_labels_by_id_and_unlabelled_rows(blobs, tmp_path):
    store, _, _ = blobs
    rows = ["id,label"] + [f"{i},{'even' if i % 2 == 0 else 'odd'}" for i in range(0, 100)] + ["9999,odd"]
    (tmp_path / "ids.csv").write_text("\n".join(rows) + "\n")
    result = train_head(store, tmp_path / "ids.csv", None, epochs=2, **FAST)
    assert result.head.labels == ("even", "odd")
    assert result.n_train + result.n_validation == 100 and result.unlabelled == 140 and result.unmatched == 1


def test_labels_by_absolute_path(blobs, tmp_path):
    store, _, _ = blobs
    rows = ["path,label"] + [f"{store / 'c0' / f'{i:05d}.png'},{'a' if i % 3 else 'b'}" for i in range(60)]
    (tmp_path / "absolute.csv").write_text("\n".join(rows) + "\n")
    result = train_head(store, tmp_path / "absolute.csv", None, epochs=2, **FAST)
    assert result.class_counts == {"a": 40, "b": 20} and result.unlabelled == 180 and result.unmatched == 0


def test_predicting_a_store_of_another_encoder_is_refused(blobs, tmp_path):
    store, test_vectors, _ = blobs
    train_head(store, "folders", tmp_path / "head", epochs=2, **FAST)
    other = write_store(tmp_path / "other", test_vectors, None, encoder=OTHER_ENCODER)
    with pytest.raises(EncoderMismatchError) as caught:
        predict_head(tmp_path / "head", other)
    message = str(caught.value)
    assert "timm:other" in message and "timm:test" in message and "\n" not in message
    with pytest.raises(EncoderMismatchError, match=r"takes \(n, 16\)"):
        predict_head(tmp_path / "head", test_vectors[:, :8])


@pytest.mark.parametrize("content, match", [
    ("file,label\na.png,x\n", "expected a 'path' or 'id' column"),
    ("path,kind\na.png,x\n", "expected a 'path' or 'id' column"),
    ("id,label\nseven,x\n", "row 2: id 'seven' is not an integer"),
    ("path,label\nnot/in/store.png,x\n", "names no row of store"),
    ("path,label\nc0/00000.png,a|b\nc1/00001.png,c\n", "2 labels .* pass --multi-label"),
    ("path,label\nc0/00000.png,a\nc1/00001.png,a\n", "at least 2 classes"),
    ("path,label\n", "has no rows"),
])
def test_bad_labels_file_gives_one_line(blobs, tmp_path, content, match):
    store, _, _ = blobs
    (tmp_path / "labels.csv").write_text(content)
    with pytest.raises(InvalidArgumentError, match=match) as caught:
        train_head(store, tmp_path / "labels.csv", tmp_path / "head", epochs=1, **FAST)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "head" / "head.json").exists()


def test_other_bad_input(blobs, tmp_path):
    store, _, _ = blobs
    with pytest.raises(InputNotFoundError, match="does not exist"):
        train_head(store, tmp_path / "missing.csv", None, **FAST)
    with pytest.raises(InvalidArgumentError, match="expected .csv or .parquet"):
        (tmp_path / "labels.txt").write_text("x")
        train_head(store, tmp_path / "labels.txt", None, **FAST)
    with pytest.raises(SSLSearchError, match="unknown head kind 'mpl'.*did you mean 'mlp'"):
        train_head(store, "folders", None, kind="mpl", **FAST)
    with pytest.raises(InvalidArgumentError, match="multi-label"):
        train_head(store, "folders", None, multi_label=True, balance="sampling", **FAST)
    unlabelled = write_store(tmp_path / "plain", np.zeros((4, 16), np.float32) + 1, None)
    with pytest.raises(InvalidArgumentError, match="no label column"):
        train_head(unlabelled, "folders", None, **FAST)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        train_head(store, "folders", tmp_path / "busy", **FAST)
    with pytest.raises(InputNotFoundError, match="not a head directory"):
        load_head(tmp_path)


@pytest.mark.gpu
@pytest.mark.parametrize("balance", ["loss", "sampling"])
def test_training_on_the_gpu(blobs, tmp_path, balance):
    store, test_vectors, test_labels = blobs
    result = train_head(store, "folders", tmp_path / "head", kind="mlp", balance=balance, epochs=30, device="cuda",
                        progress=False)
    assert result.device.startswith("cuda") and next(result.head.module.parameters()).device.type == "cpu"
    predicted = predict_head(tmp_path / "head", test_vectors).probabilities.argmax(1)
    assert np.mean(predicted == test_labels) >= 0.95
