"""Tiny embedding stores for the evaluate tests, written directly with StoreWriter (no images, no model)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from sslsearch.store import StoreWriter

ENCODER = {"id": "enc-test-0001", "spec": "timm:test"}
OTHER_ENCODER = {"id": "enc-other-0002", "spec": "timm:other"}


def clustered(n_per_class: int, n_classes: int, dim: int, *, spread: float = 0.6, seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) float32 unit vectors around one random centre per class, and (n,) int labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), n_per_class)
    vectors = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), labels


def write_store(directory: Path, vectors: np.ndarray, labels: Sequence[object] | None, *, encoder: dict = ENCODER,
                prefix: str = "", ids: np.ndarray | None = None) -> Path:
    """A complete store; paths are ``<label>/<prefix>NNNNN.png`` (label None → ``unlabelled/...``)."""
    names = [None if label is None else str(label) for label in (labels if labels is not None else [None] * len(vectors))]
    paths = [f"{name or 'unlabelled'}/{prefix}{i:05d}.png" for i, name in enumerate(names)]
    extra = ("label",) if labels is not None else ()
    with StoreWriter(directory, dim=vectors.shape[1], dtype="float32", encoder=encoder, source_root=str(directory),
                     extra_columns=extra) as writer:
        columns = {"label": names} if labels is not None else {}
        writer.write(np.arange(len(vectors)) if ids is None else ids, paths, vectors, **columns)
    return directory
