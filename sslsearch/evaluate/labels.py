"""Labelled embeddings for evaluation: a store's vectors joined with labels, and the train/query splits."""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EncoderMismatchError, InvalidArgumentError
from ..store import EmbeddingStore, check_same_encoder
from .datasets import read_label_table

SPLITS = ("queries", "holdout", "leave-one-out")


@dataclass(frozen=True)
class LabelledEmbeddings:
    """Rows of an embedding store with one label each.

    Attributes:
        ids: (n,) int64 store ids.
        embeddings: (n, d) float32, L2-normalised (rows whose norm is within 1e-3 of 1 are kept as stored).
        labels: (n,) object array of label strings.
        paths: (n,) object array of relative paths.
        encoder: the store's encoder fingerprint.
        source: the store directory (for messages and reports).
        dropped_unlabelled: rows of the store left out because they had no label.
    """

    ids: np.ndarray
    embeddings: np.ndarray
    labels: np.ndarray
    paths: np.ndarray
    encoder: dict[str, Any]
    source: str
    dropped_unlabelled: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.labels.tolist())))

    def subset(self, rows: np.ndarray) -> "LabelledEmbeddings":
        """The rows at the given positions (a boolean mask or integer positions)."""
        return replace(self, ids=self.ids[rows], embeddings=self.embeddings[rows], labels=self.labels[rows],
                       paths=self.paths[rows])


@dataclass(frozen=True)
class EvaluationSplit:
    """Which rows are the database (train) and which are the queries (test).

    ``kind`` is "queries" (a separate query store), "holdout" (a seeded, per-class fraction of one
    store) or "leave-one-out" (every row queries all the others: ``train is queries``).
    """

    train: LabelledEmbeddings
    queries: LabelledEmbeddings
    kind: str

    @property
    def leave_one_out(self) -> bool:
        return self.kind == "leave-one-out"

    def describe(self) -> str:
        return f"{self.kind}: {len(self.queries)} queries vs {len(self.train)} database rows"


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """(n, d) float32 rows scaled to unit L2 norm (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def unit_rows(vectors: np.ndarray, tolerance: float = 1e-3) -> np.ndarray:
    """``vectors`` as float32, L2-normalised unless every row already has unit norm (no copy then)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(vectors) and np.abs(np.einsum("ij,ij->i", vectors, vectors) - 1.0).max() > tolerance:
        return normalize_rows(vectors)
    return vectors


def load_labelled(store: str | os.PathLike[str] | EmbeddingStore, *, labels_file: str | os.PathLike[str] | None = None,
                  drop_unlabelled: bool = False, require_labels: bool = True) -> LabelledEmbeddings:
    """Read a store's vectors with their labels (the store's ``label`` column, or a (path, label) file).

    Args:
        store: an embedding store directory or an open EmbeddingStore.
        labels_file: CSV or Parquet with ``path`` and ``label`` columns (paths relative to the store's
            source root, or absolute); overrides the store's own labels.
        drop_unlabelled: leave out rows without a label instead of refusing.
        require_labels: when False, rows keep a None label (used for instance ground truth).

    Raises:
        InvalidArgumentError: some rows have no label and ``drop_unlabelled`` is false (the count is
            given), or no row has one.
        StoreError / InputNotFoundError: the store or labels file cannot be read.
    """
    opened = store if isinstance(store, EmbeddingStore) else EmbeddingStore.open(store)
    columns = ["id", "embedding", "path"] + (["label"] if opened.has_labels and labels_file is None else [])
    batch = opened.read_all(columns)
    paths = np.asarray(batch.columns["path"], dtype=object)
    if labels_file is not None:
        table = read_label_table(labels_file)
        root = opened.source_root
        labels = np.asarray([_lookup_label(table, p, root) for p in paths.tolist()], dtype=object)
        where = f"labels file {labels_file}"
    elif opened.has_labels:
        labels = np.asarray(batch.columns["label"], dtype=object)
        where = f"the label column of {opened.directory}"
    else:
        labels = np.full(len(paths), None, dtype=object)
        where = None
    result = LabelledEmbeddings(ids=batch.ids, embeddings=unit_rows(batch.embeddings), labels=labels, paths=paths,
                                encoder=dict(opened.encoder), source=str(opened.directory))
    if not require_labels:
        return result
    if where is None:
        raise InvalidArgumentError(f"store {opened.directory} has no labels (it was not embedded from an ImageFolder "
                                   "or a list with a label column); pass --labels FILE.csv|.parquet with path,label "
                                   "columns")
    missing = np.asarray([label is None or label == "" for label in labels.tolist()], dtype=bool)
    if missing.all():
        raise InvalidArgumentError(f"none of the {len(labels)} rows of {opened.directory} has a label in {where}; "
                                   "pass --labels FILE with path,label columns for these paths")
    if missing.any():
        if not drop_unlabelled:
            example = paths[missing][0]
            raise InvalidArgumentError(f"{int(missing.sum())} of {len(labels)} rows of {opened.directory} have no label "
                                       f"in {where} (e.g. {example!r}); pass --drop-unlabelled to evaluate the "
                                       f"{int((~missing).sum())} labelled rows, or complete the labels")
        result = replace(result.subset(~missing), dropped_unlabelled=int(missing.sum()))
    return result


def _lookup_label(table: dict[str, str], path: str, root: Path) -> str | None:
    if path in table:
        return table[path]
    return table.get(str((root / path).resolve())) if root else None


def check_same_encoder_sets(database: LabelledEmbeddings, queries: LabelledEmbeddings) -> None:
    """Refuse queries embedded by another encoder (or of another dim) than the database.

    Raises:
        EncoderMismatchError: the fingerprints or dims differ.
    """
    check_same_encoder(database.encoder, queries.encoder, database.embeddings.shape[1],
                       what=f"the queries in {queries.source}", where=f"the database store {database.source}")
    if database.embeddings.shape[1] != queries.embeddings.shape[1]:
        raise EncoderMismatchError(f"query dim {queries.embeddings.shape[1]} ({queries.source}) differs from database dim "
                                   f"{database.embeddings.shape[1]} ({database.source}); embed both with the same encoder")


def holdout_rows(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """A boolean mask choosing about ``fraction`` of each class as queries (seeded, stratified).

    A class with one row keeps it in the database.

    Raises:
        InvalidArgumentError: fraction outside (0, 1).
    """
    if not 0.0 < fraction < 1.0:
        raise InvalidArgumentError(f"holdout fraction must be in (0, 1), got {fraction}; e.g. 0.2")
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for label in sorted(set(labels.tolist()), key=str):
        rows = np.flatnonzero(labels == label)
        take = min(len(rows) - 1, int(round(fraction * len(rows))))
        if take > 0:
            mask[rng.choice(rows, size=take, replace=False)] = True
    return mask


def make_split(database: LabelledEmbeddings, *, queries: LabelledEmbeddings | None = None,
               holdout: float | None = None, leave_one_out: bool = False, seed: int = 0) -> EvaluationSplit:
    """Choose the query/database split: a query store, a seeded held-out fraction, or leave-one-out.

    Raises:
        InvalidArgumentError: more than one split asked, or an empty side.
        EncoderMismatchError: the query store comes from another encoder.
    """
    asked = sum([queries is not None, holdout is not None, leave_one_out])
    if asked > 1:
        raise InvalidArgumentError("choose one split: --queries EMB, --holdout FRACTION or --leave-one-out")
    if queries is not None:
        check_same_encoder_sets(database, queries)
        split = EvaluationSplit(train=database, queries=queries, kind="queries")
    elif leave_one_out:
        split = EvaluationSplit(train=database, queries=database, kind="leave-one-out")
    else:
        mask = holdout_rows(database.labels, 0.2 if holdout is None else holdout, seed)
        split = EvaluationSplit(train=database.subset(~mask), queries=database.subset(mask), kind="holdout")
    for side, rows in (("query", split.queries), ("database", split.train)):
        if len(rows) == 0:
            raise InvalidArgumentError(f"the {side} side of the {split.kind} split is empty ({split.describe()}); "
                                       "use a larger store, another --holdout fraction, or --leave-one-out")
    return split


def load_split(store: str | os.PathLike[str], *, queries: str | os.PathLike[str] | None = None,
               labels_file: str | os.PathLike[str] | None = None, drop_unlabelled: bool = False,
               holdout: float | None = None, leave_one_out: bool | None = None, seed: int = 0,
               require_labels: bool = True) -> EvaluationSplit:
    """Open the store(s), attach labels and split: the one call behind each ``bench`` command.

    With neither ``queries`` nor ``holdout``, the split is leave-one-out unless ``leave_one_out``
    is False, in which case 20 % of each class is held out.

    Raises:
        the errors of ``load_labelled`` and ``make_split``.
    """
    database = load_labelled(store, labels_file=labels_file, drop_unlabelled=drop_unlabelled,
                             require_labels=require_labels)
    query_rows = None
    if queries is not None:
        query_rows = load_labelled(queries, labels_file=labels_file, drop_unlabelled=drop_unlabelled,
                                   require_labels=require_labels)
    if leave_one_out is None:
        leave_one_out = queries is None and holdout is None
    return make_split(database, queries=query_rows, holdout=holdout, leave_one_out=leave_one_out, seed=seed)
