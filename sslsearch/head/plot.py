"""The confusion-matrix PNG of a head (matplotlib, no global pyplot state)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..files import atomic_path

DPI = 100
MAX_ANNOTATED = 30  # above this many classes the cells carry no numbers (they would not be readable)


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise InvalidArgumentError("the confusion-matrix plot needs matplotlib: pip install matplotlib") from None
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_confusion(counts: np.ndarray, row_names: list[str], column_names: list[str], path: str | os.PathLike[str],
                   *, title: str, xlabel: str, ylabel: str) -> Path:
    """Save a heat map of (R, K) counts as a PNG; colours are each row's share, cells show the counts.

    Single-label heads give the (C, C) confusion matrix (rows true, columns predicted); multi-label
    heads give (C, 4) per-label TP / FP / FN / TN counts.
    """
    counts = np.asarray(counts, np.int64)
    rows, columns = counts.shape
    figure = _figure(min(16.0, 2.5 + 0.45 * columns), min(16.0, 1.8 + 0.4 * rows))
    axes = figure.subplots()
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    figure.colorbar(image, ax=axes, label="share of the row")
    axes.set_xticks(range(columns), labels=column_names, rotation=45 if columns > 4 else 0, ha="right" if columns > 4 else "center")
    axes.set_yticks(range(rows), labels=row_names)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    if rows <= MAX_ANNOTATED and columns <= MAX_ANNOTATED:
        for r in range(rows):
            for c in range(columns):
                axes.text(c, r, str(counts[r, c]), ha="center", va="center", fontsize=8,
                          color="white" if shares[r, c] > 0.5 else "black")
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)
    return path
