"""Scoring a trained head on an independently labelled store (the unbiased counterpart of the validation metrics)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch

from ..errors import InvalidArgumentError
from ..store import EmbeddingStore
from .io import Head, load_head
from .labels import FOLDERS, labelled_rows
from .metrics import MultiLabelMetrics, SingleLabelMetrics, multi_label_metrics, single_label_metrics
from .predict import HeadLike, check_store

Metrics = Union[SingleLabelMetrics, MultiLabelMetrics]


@dataclass(frozen=True)
class HeadEvaluation:
    """A head's metrics on a labelled store.

    Attributes:
        metrics: accuracy / balanced accuracy / macro-F1 / ECE (single-label) or micro/macro-F1 / mAP / ECE
            (multi-label), with the head's temperature (``ece_before``: at temperature 1).
        rows: rows scored.
        unlabelled: store rows without a label (left out).
        unknown_labels: labels of the store that the head does not know; single-label rows with one of
            them are left out (``unknown_rows``), multi-label rows are scored on the known labels only.
        unknown_rows: rows left out for an unknown label.
    """

    metrics: Metrics
    rows: int
    unlabelled: int
    unknown_labels: tuple[str, ...]
    unknown_rows: int

    def summary(self) -> str:
        m = self.metrics
        if isinstance(m, SingleLabelMetrics):
            figures = f"accuracy {m.accuracy:.3f}, balanced accuracy {m.balanced_accuracy:.3f}, macro-F1 {m.macro_f1:.3f}"
        else:
            figures = f"micro-F1 {m.micro_f1:.3f}, macro-F1 {m.macro_f1:.3f}, mAP {m.mean_average_precision:.3f}"
        left_out = f"; left out {self.unknown_rows} row(s) of unknown labels {list(self.unknown_labels)}" \
            if self.unknown_rows else ""
        return f"{self.rows} rows: {figures}; ECE {m.ece_before:.3f} (temperature 1) → {m.ece_after:.3f}{left_out}"

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics.to_dict(), "rows": self.rows, "unlabelled": self.unlabelled,
                "unknown_labels": list(self.unknown_labels), "unknown_rows": self.unknown_rows}


def evaluate_head(head: HeadLike, store: str | os.PathLike[str] | EmbeddingStore,
                  labels: str | os.PathLike[str] | None = FOLDERS) -> HeadEvaluation:
    """Metrics of ``head`` on the labelled rows of ``store`` (which must come from the head's encoder).

    Args:
        head: a head directory or a loaded Head.
        store: an embedding store (directory or open) of images the head was not trained on.
        labels: a labels file or ``"folders"``, as for ``train_head``.

    Raises:
        EncoderMismatchError: the store comes from another encoder or dim.
        InvalidArgumentError: no labelled row of the store has a label the head knows.

    Example:
        >>> evaluate_head("head/", "test-emb/", "folders").metrics.accuracy  # doctest: +SKIP
        0.93
    """
    head = load_head(head) if not isinstance(head, Head) else head
    opened = store if isinstance(store, EmbeddingStore) else EmbeddingStore.open(store)
    check_store(head, opened)
    rows = labelled_rows(opened, labels, multi_label=head.multi_label, min_classes=1)
    position = {name: c for c, name in enumerate(head.labels)}
    unknown = tuple(name for name in rows.classes if name not in position)
    if head.multi_label:
        targets = np.zeros((len(rows), len(head.labels)), np.float32)
        for c, name in enumerate(rows.classes):
            if name in position:
                targets[:, position[name]] = rows.targets[:, c]
        keep = np.ones(len(rows), bool)
    else:
        mapped = np.array([position.get(rows.classes[t], -1) for t in rows.targets.tolist()], np.int64)
        keep = mapped >= 0
        targets = mapped[keep]
    if not keep.any():
        raise InvalidArgumentError(f"none of the {len(rows)} labelled rows of {opened.directory} has a label head "
                                   f"{head.directory} knows (it knows {list(head.labels)}, the store has "
                                   f"{list(rows.classes)}); label the store with the head's classes")
    with torch.no_grad():
        logits = torch.cat([head.module(torch.from_numpy(part)) for part in
                            np.array_split(rows.embeddings[keep], max(1, int(keep.sum()) // 65536 + 1))])
    if head.multi_label:
        before, after = torch.sigmoid(logits).numpy(), torch.sigmoid(logits / head.temperature).numpy()
        thresholds = np.asarray(head.thresholds or [0.5] * len(head.labels))
        metrics: Metrics = multi_label_metrics(before, after, targets, thresholds)
    else:
        before, after = torch.softmax(logits, 1).numpy(), torch.softmax(logits / head.temperature, 1).numpy()
        metrics = single_label_metrics(before, after, targets)
    return HeadEvaluation(metrics=metrics, rows=int(keep.sum()), unlabelled=rows.unlabelled, unknown_labels=unknown,
                          unknown_rows=int((~keep).sum()))
