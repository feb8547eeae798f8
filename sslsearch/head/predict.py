"""Predictions of a head for an embedding store, an array of vectors, or images embedded with the head's encoder."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..encoders import Encoder, create_encoder
from ..errors import EncoderMismatchError, InputNotFoundError, InvalidArgumentError, OutputExistsError
from ..files import atomic_path
from ..sources import SkippedFile
from ..store import EmbeddingStore, is_store
from .io import Head, load_head

HeadLike = Union[Head, str, os.PathLike]
PathLike = Union[str, os.PathLike]
LABELS_METADATA_KEY = b"sslsearch.head.labels"
STORE_BATCH_ROWS = 65536  # store rows read at once when predicting a store


@dataclass(frozen=True)
class HeadPredictions:
    """A head's output for each input row.

    Attributes:
        ids: (n,) int64 store ids (for images and arrays: the position in the input order).
        paths: n paths (store-relative for a store, as found for images, None for an array).
        probabilities: (n, C) float32 calibrated probabilities; column c is ``labels[c]``.
        labels: the head's class names.
        multi_label: several labels per row possible.
        predicted: per row, the top class (single-label: a 1-tuple) or every label whose probability
            reaches its threshold (multi-label; may be empty).
        scores: (n,) float32 probability of the top class.
        skipped: image files that could not be decoded (no row).
    """

    ids: np.ndarray
    paths: list[str | None]
    probabilities: np.ndarray
    labels: tuple[str, ...]
    multi_label: bool
    predicted: tuple[tuple[str, ...], ...]
    scores: np.ndarray
    skipped: tuple[SkippedFile, ...] = ()

    def __len__(self) -> int:
        return len(self.ids)

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per row: id, path, label (single) or labels (multi), score."""
        key = "labels" if self.multi_label else "label"
        return [{"id": int(i), "path": p, key: list(pred) if self.multi_label else pred[0], "score": float(s)}
                for i, p, pred, s in zip(self.ids.tolist(), self.paths, self.predicted, self.scores.tolist())]


def _decide(head: Head, probabilities: np.ndarray) -> tuple[tuple[str, ...], ...]:
    if head.multi_label:
        thresholds = np.asarray(head.thresholds or [0.5] * len(head.labels))
        chosen = probabilities >= thresholds[None, :]
        return tuple(tuple(head.labels[c] for c in np.flatnonzero(row)) for row in chosen)
    return tuple((head.labels[c],) for c in probabilities.argmax(axis=1).tolist()) if len(probabilities) else ()


def head_encoder(head: Head, *, device: str = "auto") -> Encoder:
    """Rebuild the encoder the head's training store was embedded with (same spec, weights and preprocessing).

    Raises:
        EncoderMismatchError: head.json does not say how to rebuild it, or the rebuilt encoder differs
            (weights moved or changed).
    """
    source = head.encoder.get("source") or {}
    if not source.get("spec"):
        raise EncoderMismatchError(f"head {head.directory} does not record how to rebuild its encoder "
                                   f"{head.encoder_name}; embed the images with it yourself and pass the store")
    try:
        encoder = create_encoder(source["spec"], weights=source.get("weights"), image_size=source.get("image_size"),
                                 device=device)
    except (InputNotFoundError, InvalidArgumentError) as error:
        raise EncoderMismatchError(f"cannot rebuild the encoder {head.encoder_name} of head {head.directory} "
                                   f"({error}); embed the images yourself and pass the store") from None
    if encoder.fingerprint.id != head.encoder.get("id"):
        raise EncoderMismatchError(
            f"the encoder at {source['spec']} has changed since head {head.directory} was trained (now "
            f"{encoder.fingerprint.id}, head has {head.encoder.get('id')}); embed the images with the original "
            "encoder and pass the store, or retrain the head")
    return encoder


def check_store(head: Head, store: EmbeddingStore) -> None:
    """Raise EncoderMismatchError unless ``store`` was embedded with the head's encoder (same fingerprint and dim)."""
    seen, wanted = store.encoder, head.encoder
    if (seen.get("id") and wanted.get("id") and seen["id"] != wanted["id"]) or store.dim != head.dim:
        hint = (wanted.get("source") or {}).get("spec") or wanted.get("spec", "?")
        raise EncoderMismatchError(
            f"store {store.directory} was embedded with {store.manifest.encoder_spec} ({store.manifest.encoder_id}, "
            f"dim {store.dim}), but head {head.directory} was trained on {wanted.get('spec', '?')} ({wanted.get('id', '?')}, "
            f"dim {head.dim}) embeddings; embed the images with `sslsearch embed DATA --encoder {hint} ...` or pass "
            "the images")


def _is_store(path: PathLike) -> bool:
    return is_store(path)  # a local directory or a URI (s3://bucket/emb) with a manifest.json


def _from_vectors(head: Head, ids: np.ndarray, paths: list[str | None], vectors: np.ndarray,
                  skipped: Sequence[SkippedFile] = ()) -> HeadPredictions:
    if vectors.ndim != 2 or vectors.shape[1] != head.dim:
        raise EncoderMismatchError(f"vectors of shape {vectors.shape} do not fit head {head.directory}, which takes "
                                   f"(n, {head.dim}) embeddings of {head.encoder_name}")
    return _from_probabilities(head, ids, paths, head.probabilities(vectors), skipped)


def _from_probabilities(head: Head, ids: np.ndarray, paths: list[str | None], probabilities: np.ndarray,
                        skipped: Sequence[SkippedFile] = ()) -> HeadPredictions:
    scores = probabilities.max(axis=1) if len(probabilities) else np.zeros(0, np.float32)
    return HeadPredictions(ids=np.asarray(ids, np.int64), paths=list(paths), probabilities=probabilities,
                           labels=head.labels, multi_label=head.multi_label, predicted=_decide(head, probabilities),
                           scores=scores.astype(np.float32), skipped=tuple(skipped))


def _image_files(inputs: Sequence[PathLike]) -> list[Path]:
    from ..sources import list_images

    files: list[Path] = []
    for item in inputs:
        if _is_store(item):
            raise InvalidArgumentError(f"{item} is an embedding store; pass it alone (not with images)")
        source = list_images(item)
        files += [source.abs_path(record) for record in source.records]
    return files


def predict_head(head: HeadLike, inputs: PathLike | EmbeddingStore | np.ndarray | Sequence[PathLike], *,
                 device: str = "auto", batch_size: int = 64, workers: int = 0) -> HeadPredictions:
    """Run a head on an embedding store, an (n, dim) array, or image files / folders.

    A store must come from the head's encoder (checked by fingerprint). Images are embedded with
    the head's own encoder, rebuilt from head.json; files that cannot be decoded are skipped.

    Args:
        head: a head directory or a loaded Head.
        inputs: an embedding store (directory or open), an (n, dim) float array, or one or more
            image files, folders or .txt/.csv/.parquet lists of images.
        device: where images are embedded (``auto``, ``cpu``, ``cuda``).
        batch_size: images per forward pass.
        workers: image decode processes (0 decodes in this process).

    Raises:
        EncoderMismatchError: the store (or array) comes from another encoder or dim than the head.
        InputNotFoundError: no images found or none could be decoded; the head is missing.
        CheckpointError: a damaged head.

    Example:
        >>> predictions = predict_head("head/", "new-images/")  # doctest: +SKIP
        >>> predictions.predicted[0]  # doctest: +SKIP
        ('cat',)
    """
    head = load_head(head) if not isinstance(head, Head) else head
    if isinstance(inputs, np.ndarray):
        return _from_vectors(head, np.arange(len(inputs)), [None] * len(inputs), np.asarray(inputs, np.float32))
    if isinstance(inputs, EmbeddingStore) or (isinstance(inputs, (str, os.PathLike)) and _is_store(inputs)):
        store = inputs if isinstance(inputs, EmbeddingStore) else EmbeddingStore.open(inputs)
        check_store(head, store)
        ids, paths, parts = [], [], []
        for batch in store.iter_batches(STORE_BATCH_ROWS, ("id", "embedding", "path")):  # memory: one batch
            ids.append(batch.ids)
            paths += batch.columns["path"]
            parts.append(head.probabilities(batch.embeddings))
        probabilities = np.concatenate(parts) if parts else np.zeros((0, len(head.labels)), np.float32)
        return _from_probabilities(head, np.concatenate(ids) if ids else np.zeros(0, np.int64), paths, probabilities)
    from ..embed import embed_paths

    files = _image_files([inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs))
    if not files:
        raise InputNotFoundError("no images to predict; pass image files, folders or an embedding store")
    encoder = head_encoder(head, device=device)
    vectors, skipped = embed_paths(files, encoder, batch_size=batch_size, workers=workers)
    if not len(vectors):
        raise InputNotFoundError(f"none of the {len(files)} image(s) could be decoded (first: {skipped[0].detail}); "
                                 "fix the files or pass others")
    bad = {s.path for s in skipped}
    kept = [(i, os.fspath(f)) for i, f in enumerate(files) if os.fspath(f) not in bad]
    return _from_vectors(head, np.array([i for i, _ in kept], np.int64), [p for _, p in kept], vectors, skipped)


def write_predictions(predictions: HeadPredictions, out: PathLike, *, overwrite: bool = False) -> Path:
    """Write predictions as Parquet (atomically).

    Columns: ``id`` int64, ``path`` string, ``label`` string (single-label) or ``labels``
    list<string> (multi-label), ``score`` float32 (top-class probability) and ``probabilities``
    fixed_size_list<float32>[C]; the class names (column order of ``probabilities``) are in the
    schema metadata under ``sslsearch.head.labels`` (JSON list).

    Raises:
        OutputExistsError: ``out`` exists and ``overwrite`` is false.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists; choose another --out or pass --overwrite")
    if out.is_dir():
        raise OutputExistsError(f"{out} is a directory; --out takes a file name like predictions.parquet")
    n_labels = len(predictions.labels)
    label_column = (pa.array([list(p) for p in predictions.predicted], pa.list_(pa.string())) if predictions.multi_label
                    else pa.array([p[0] for p in predictions.predicted], pa.string()))
    flat = pa.array(np.asarray(predictions.probabilities, np.float32).reshape(-1), pa.float32())
    table = pa.table({"id": pa.array(predictions.ids, pa.int64()), "path": pa.array(predictions.paths, pa.string()),
                      "labels" if predictions.multi_label else "label": label_column,
                      "score": pa.array(predictions.scores, pa.float32()),
                      "probabilities": pa.FixedSizeListArray.from_arrays(flat, n_labels)})
    table = table.replace_schema_metadata({LABELS_METADATA_KEY: json.dumps(list(predictions.labels)).encode()})
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return out
