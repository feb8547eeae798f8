"""Labels for a head: a CSV/Parquet file (path or id → one or several labels) or the store's `label` column."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from ..errors import InputNotFoundError, InvalidArgumentError
from ..store import EmbeddingStore

FOLDERS = "folders"  # --labels folders: the store's label column (ImageFolder parent folders)
SEPARATOR = "|"  # several labels in one cell: "cat|outdoor"
KEY_COLUMNS = ("path", "id")
LABEL_COLUMNS = ("label", "labels")
Key = Union[str, int]


@dataclass(frozen=True)
class LabelFile:
    """A labels table read from disk.

    Attributes:
        key: ``path`` (relative to the store's source root, or absolute) or ``id`` (store ids).
        labels: key → its labels (several rows of one key add up; an empty cell gives no label).
        source: the file, for messages.
    """

    key: str
    labels: dict[Key, tuple[str, ...]]
    source: str


@dataclass(frozen=True)
class LabelledRows:
    """The store rows that have labels, with their targets.

    Attributes:
        ids: (n,) int64 store ids.
        paths: n relative paths.
        embeddings: (n, dim) float32 as stored.
        classes: the label names, sorted; column c of the head is ``classes[c]``.
        targets: (n,) int64 class indices, or (n, C) float32 0/1 with ``multi_label``.
        multi_label: several labels per row allowed.
        unlabelled: store rows left out because they have no label.
        unmatched: entries of the labels file that name no row of the store.
        source: where the labels came from (for messages and head.json).
    """

    ids: np.ndarray
    paths: list[str]
    embeddings: np.ndarray
    classes: tuple[str, ...]
    targets: np.ndarray
    multi_label: bool
    unlabelled: int
    unmatched: int
    source: str

    def __len__(self) -> int:
        return len(self.ids)

    def class_counts(self) -> np.ndarray:
        """(C,) rows per class (single-label) or positives per label (multi-label)."""
        if self.multi_label:
            return self.targets.sum(axis=0).astype(np.int64)
        return np.bincount(self.targets, minlength=len(self.classes))


def _split_cell(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(part.strip() for part in str(value).split(SEPARATOR) if part.strip())


def _read_columns(path: Path) -> dict[str, list[object]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                rows = list(reader)
                header = [name.strip() for name in (reader.fieldnames or [])]
        except (UnicodeDecodeError, csv.Error) as error:
            raise InvalidArgumentError(f"labels file {path} is not a readable UTF-8 CSV ({error}); "
                                       "expected a header like path,label") from None
        raw_names = reader.fieldnames or []
        return {name: [row.get(raw) for row in rows] for name, raw in zip(header, raw_names)}
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as error:
            raise InvalidArgumentError(f"labels file {path} is not readable Parquet ({error})") from None
        return {name: table.column(name).to_pylist() for name in table.column_names}
    raise InvalidArgumentError(f"labels file {path} has suffix {suffix!r}; expected .csv or .parquet with a path "
                               "(or id) column and a label column, or --labels folders")


def read_label_file(path: str | os.PathLike[str]) -> LabelFile:
    """Read a (path or id, label) table; a cell may hold several labels separated by ``|``.

    Columns: ``path`` or ``id`` (if both, ``id`` is used), and ``label`` or ``labels``. A key may
    appear on several rows; its labels add up (multi-label). Absolute paths are resolved.

    Raises:
        InputNotFoundError: the file does not exist.
        InvalidArgumentError: not .csv/.parquet, unreadable, a missing column, a non-integer id, or no rows.

    Example:
        >>> read_label_file("labels.csv").labels["cat/1.png"]  # doctest: +SKIP
        ('cat', 'outdoor')
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"labels file {path} does not exist; pass a .csv or .parquet with path,label "
                                 "columns, or --labels folders to use the store's ImageFolder labels")
    columns = _read_columns(path)
    key = next((name for name in ("id", "path") if name in columns), None)
    label_column = next((name for name in LABEL_COLUMNS if name in columns), None)
    if key is None or label_column is None:
        raise InvalidArgumentError(f"labels file {path} has columns {sorted(columns)}; expected a 'path' or 'id' "
                                   "column and a 'label' column (e.g. header path,label)")
    labels: dict[Key, list[str]] = {}
    for line, (raw_key, cell) in enumerate(zip(columns[key], columns[label_column]), start=2):
        if raw_key is None or str(raw_key).strip() == "":
            continue
        if key == "id":
            try:
                parsed: Key = int(str(raw_key).strip())
            except ValueError:
                raise InvalidArgumentError(f"labels file {path} row {line}: id {raw_key!r} is not an integer store "
                                           "id; use a 'path' column for file paths") from None
        else:
            text = str(raw_key).strip()
            parsed = str(Path(text).resolve()) if os.path.isabs(text) else Path(text).as_posix()
        found = labels.setdefault(parsed, [])
        found += [label for label in _split_cell(cell) if label not in found]
    if not labels:
        raise InvalidArgumentError(f"labels file {path} has no rows with a {key}; add one row per image "
                                   f"({key},label)")
    return LabelFile(key=key, labels={k: tuple(v) for k, v in labels.items()}, source=str(path))


def _store_keys(store: EmbeddingStore, ids: np.ndarray, paths: list[str], key: str) -> list[list[Key]]:
    if key == "id":
        return [[int(i)] for i in ids.tolist()]
    root = store.source_root
    return [[path, str((root / path).resolve())] if str(root) else [path] for path in paths]


def labelled_rows(store: str | os.PathLike[str] | EmbeddingStore, labels: str | os.PathLike[str] | None = FOLDERS,
                  *, multi_label: bool = False, min_classes: int = 2) -> LabelledRows:
    """Join a store's rows with their labels; rows without a label are left out (and counted).

    Args:
        store: an embedding store directory or an open store.
        labels: a labels file (see ``read_label_file``), or ``"folders"`` / None for the store's
            ``label`` column (the ImageFolder parent folder of each image).
        multi_label: allow several labels per row; otherwise a row with two labels is an error.
        min_classes: fewest distinct classes a single-label set may have (2 to train; 1 to score).

    Raises:
        InvalidArgumentError: the store has no labels, a row has several labels without
            ``multi_label``, the file names no row of the store, or fewer than ``min_classes`` classes.
        InputNotFoundError / StoreError: the store or the file cannot be read.
    """
    opened = store if isinstance(store, EmbeddingStore) else EmbeddingStore.open(store)
    from_folders = labels is None or str(labels) == FOLDERS
    if from_folders and not opened.has_labels:
        raise InvalidArgumentError(f"store {opened.directory} has no label column (it was not embedded from an "
                                   "ImageFolder of class folders); pass --labels FILE.csv with path,label columns")
    batch = opened.read_all(["id", "embedding", "path"] + (["label"] if from_folders else []))
    paths = [str(p) for p in batch.columns["path"]]
    unmatched = 0
    if from_folders:
        # a row without a folder label is unlabelled (left out), not a negative for every label
        row_labels = [None if v in (None, "") else (_split_cell(v) if multi_label else (str(v),))
                      for v in batch.columns["label"]]
        source = f"the label column of {opened.directory}"
    else:
        table = read_label_file(labels)
        used: set[Key] = set()
        row_labels = []
        for keys in _store_keys(opened, batch.ids, paths, table.key):
            hit = next((k for k in keys if k in table.labels), None)
            row_labels.append(table.labels[hit] if hit is not None else None)
            if hit is not None:
                used.add(hit)
        unmatched = len(table.labels) - len(used)
        source = table.source
        if not used:
            example = next(iter(table.labels))
            raise InvalidArgumentError(
                f"labels file {table.source} names no row of store {opened.directory} (e.g. {table.key} {example!r}; "
                f"the store's paths look like {paths[0] if paths else '?'!r}, relative to {opened.source_root}); "
                "give paths relative to that folder, absolute paths, or store ids in an 'id' column")
    keep = [i for i, found in enumerate(row_labels) if found is not None and (multi_label or len(found) > 0)]
    if not multi_label:
        several = next((i for i in keep if len(row_labels[i]) > 1), None)
        if several is not None:
            raise InvalidArgumentError(
                f"{source} gives {paths[several]!r} {len(row_labels[several])} labels "
                f"({', '.join(repr(v) for v in row_labels[several])}); give one label per image, or pass "
                "--multi-label")
    classes = tuple(sorted({label for i in keep for label in row_labels[i]}))
    if multi_label and not classes:
        raise InvalidArgumentError(f"{source} gives no label to any row of {opened.directory}; a head needs labels")
    if not multi_label and len(classes) < min_classes:
        raise InvalidArgumentError(f"{source} gives {len(keep)} row(s) of {opened.directory} {len(classes)} class(es) "
                                   f"{list(classes)}; a single-label head needs at least {min_classes} classes")
    position = {name: c for c, name in enumerate(classes)}
    rows = np.asarray(keep, dtype=np.int64)
    if multi_label:
        targets = np.zeros((len(keep), len(classes)), np.float32)
        for r, i in enumerate(keep):
            targets[r, [position[label] for label in row_labels[i]]] = 1.0
    else:
        targets = np.asarray([position[row_labels[i][0]] for i in keep], np.int64)
    return LabelledRows(ids=batch.ids[rows], paths=[paths[i] for i in keep], embeddings=batch.embeddings[rows],
                        classes=classes, targets=targets, multi_label=multi_label,
                        unlabelled=len(paths) - len(keep), unmatched=unmatched, source=source)
