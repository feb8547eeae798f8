"""Edited copies of a seeded sample of the store's images, read, edited and embedded (calibration's I/O)."""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..edits import edited_copy
from ..encoders import Encoder
from ..errors import BadImageError, InputNotFoundError, InvalidArgumentError
from ..progress import progress_bar
from ..sources import load_image
from .threshold import sure_duplicate_similarity

DEFAULT_SAMPLE_SIZE = 300  # edited copies made (fewer images, several copies each, for small stores)
MAX_COPIES_PER_IMAGE = 3
EMBED_BATCH = 64


@dataclass(frozen=True)
class EditedCopies:
    """Edited copies of a seeded sample of the store's images, embedded.

    Attributes:
        rows: (m,) int64 store row of each copy's original.
        vectors: (m, d) float32 L2-normalised embeddings of the copies.
        unreadable: sampled images that could not be read (skipped).
        seconds: wall time to read, edit and embed them.
    """

    rows: np.ndarray
    vectors: np.ndarray
    unreadable: int
    seconds: float = 0.0

    def cosines(self, store_vectors: np.ndarray) -> np.ndarray:
        """(m,) each copy's cosine similarity to its original."""
        return np.einsum("id,id->i", self.vectors, store_vectors[self.rows])

    def sure_duplicate_similarity(self, store_vectors: np.ndarray) -> float:
        """The cosine at and above which a pair is a sure duplicate (``SURE_COPY_QUANTILE`` of the copies)."""
        return sure_duplicate_similarity(self.cosines(store_vectors))


def make_edited_copies(image_paths: Sequence[str | Path], encoder: Encoder, *, sample_size: int = DEFAULT_SAMPLE_SIZE,
                       seed: int = 0, progress: bool | None = None) -> EditedCopies:
    """Make and embed edited copies of a seeded sample of ``image_paths`` (see ``edits.py``).

    Raises:
        InvalidArgumentError: ``sample_size < 1``.
        InputNotFoundError: none of the sampled images can be read (moved or deleted).
    """
    if sample_size < 1:
        raise InvalidArgumentError(f"calibration sample size must be >= 1, got {sample_size}")
    start = time.perf_counter()
    rows, vectors, unreadable = _make_copies(image_paths, sample_size, seed, encoder, progress)
    if len(rows) == 0:
        raise InputNotFoundError(
            f"cannot calibrate the threshold: none of the {unreadable} sampled images could be read (e.g. "
            f"{image_paths[0]}); restore the images, or pass a fixed --threshold T")
    return EditedCopies(rows, vectors, unreadable, time.perf_counter() - start)


def _make_copies(image_paths: Sequence[str | Path], sample_size: int, seed: int, encoder: Encoder,
                 progress: bool | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Edited copies of a seeded sample: (rows (m,) int64, copy vectors (m, d) float32, unreadable count)."""
    n = len(image_paths)
    per_image = min(MAX_COPIES_PER_IMAGE, max(1, math.ceil(sample_size / n)))
    wanted_images = math.ceil(sample_size / per_image)
    order = np.random.default_rng([seed, 0]).permutation(n)
    rows: list[int] = []
    vectors: list[np.ndarray] = []
    pending: list = []
    pending_rows: list[int] = []
    unreadable = 0
    with progress_bar(wanted_images * per_image, "calibration copies", unit="img", enabled=progress) as bar:
        for row in order.tolist():
            if len(set(rows + pending_rows)) >= wanted_images:
                break
            try:
                image = load_image(image_paths[row]).image
            except (BadImageError, OSError):
                unreadable += 1
                continue
            rng = np.random.default_rng([seed, 1, row])
            for _ in range(per_image):
                pending.append(edited_copy(image, rng)[0])
                pending_rows.append(row)
            if len(pending) >= EMBED_BATCH:
                vectors.append(encoder.embed_pil(pending))
                rows += pending_rows
                bar.update(len(pending))
                pending, pending_rows = [], []
        if pending:
            vectors.append(encoder.embed_pil(pending))
            rows += pending_rows
            bar.update(len(pending))
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, encoder.dim), np.float32), unreadable
    return np.asarray(rows, dtype=np.int64), np.concatenate(vectors).astype(np.float32), unreadable
