"""``StoreRows``: an embedding store read into memory for dedup (ids, L2-normalised vectors, paths, sizes, hashes)."""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..encoders import Encoder
from ..errors import EncoderMismatchError, StoreError
from ..store import EmbeddingStore


@dataclass(frozen=True)
class StoreRows:
    """The store read into memory, row-aligned.

    Attributes:
        store: the opened store.
        ids: (n,) int64 store ids.
        vectors: (n, d) float32, L2-normalised; with ``held``, only the vectors of those rows (m, d).
        paths: (n,) paths relative to the store's source root.
        width, height: (n,) image sizes when the store has them, else None.
        sha256: (n,) file hashes when the store has them, else None.
        held: None when ``vectors`` holds every row; else the sorted row positions it holds (a store
            read without its vectors, ``read_store(..., vectors=False)``, then ``holding(rows)``).
    """

    store: EmbeddingStore
    ids: np.ndarray
    vectors: np.ndarray
    paths: list[str]
    width: np.ndarray | None
    height: np.ndarray | None
    sha256: list[str | None] | None
    held: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def vectors_of(self, positions: np.ndarray) -> np.ndarray:
        """(len(positions), d) float32 vectors of the given row positions (held rows only when ``held``).

        Raises:
            StoreError: a row whose vector was not read.
        """
        positions = np.asarray(positions, dtype=np.int64)
        if self.held is None:
            return self.vectors[positions]
        where = np.searchsorted(self.held, positions)
        if len(positions) and (np.any(where >= len(self.held)) or np.any(self.held[np.minimum(where, len(self.held) - 1)]
                                                                          != positions)):
            raise StoreError(f"dedup needs vectors of store rows it did not read from {self.store.directory}; "
                             "this is a bug: please report it")
        return self.vectors[where]

    def holding(self, positions: np.ndarray) -> "StoreRows":
        """These rows with the vectors of ``positions`` read from the store (one pass), L2-normalised."""
        held = np.unique(np.asarray(positions, dtype=np.int64))
        vectors = np.ascontiguousarray(self.store.vectors_for(self.ids[held]), dtype=np.float32)
        if not self.store.manifest.normalized:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return replace(self, vectors=vectors.reshape(len(held), self.store.dim), held=held)

    def absolute(self, row: int) -> Path:
        return self.store.source_root / self.paths[row]

    def all_absolute(self) -> list[Path]:
        return [self.store.source_root / path for path in self.paths]


def open_store(embeddings: str | os.PathLike[str]) -> EmbeddingStore:
    """Open an embedding store that dedup can work on.

    Raises:
        InputNotFoundError, StoreError: a missing store, one with no images or no encoder fingerprint.
    """
    store = EmbeddingStore.open(embeddings)
    if len(store) == 0:
        skipped = len(store.manifest.skipped)
        detail = f" ({skipped} file(s) were skipped as unreadable when it was embedded)" if skipped else ""
        raise StoreError(f"embedding store {store.directory} holds no images{detail}; nothing to deduplicate — embed "
                         "a folder with images first")
    if not store.encoder.get("id"):
        raise StoreError(f"embedding store {store.directory} records no encoder fingerprint; re-create it with "
                         "`sslsearch embed`")
    return store


def read_store(embeddings: str | os.PathLike[str] | EmbeddingStore, *, vectors: bool = True) -> StoreRows:
    """Read an embedding store for dedup (opened with ``open_store`` unless given open).

    Args:
        embeddings: the store directory, or the store opened by ``open_store``.
        vectors: read every vector; False reads ids, paths and sizes only (``StoreRows.holding`` reads
            the vectors of chosen rows later).

    Raises:
        InputNotFoundError, StoreError: a missing store, one with no images or no encoder fingerprint.
    """
    store = embeddings if isinstance(embeddings, EmbeddingStore) else open_store(embeddings)
    optional = [c for c in ("width", "height", "sha256") if c in store.manifest.columns]
    table = store.read_all(("id", *(("embedding",) if vectors else ()), "path", *optional))
    if vectors:
        matrix = np.ascontiguousarray(table.embeddings, dtype=np.float32)
        if not store.manifest.normalized:
            matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    else:
        matrix = np.zeros((0, store.dim), np.float32)
    columns = table.columns
    return StoreRows(store=store, ids=table.ids, vectors=matrix, paths=list(columns["path"]),
                     width=np.asarray(columns["width"]) if "width" in columns else None,
                     height=np.asarray(columns["height"]) if "height" in columns else None,
                     sha256=list(columns["sha256"]) if "sha256" in columns else None,
                     held=None if vectors else np.zeros(0, np.int64))


def store_encoder(rows: StoreRows, device: str) -> Encoder:
    """The encoder that made the store, rebuilt from its fingerprint (to embed calibration copies).

    Raises:
        EncoderMismatchError: the encoder cannot be rebuilt here (the message says to pass --threshold).
    """
    from ..encoders import encoder_from_fingerprint

    fingerprint = rows.store.encoder
    try:
        encoder = encoder_from_fingerprint(fingerprint, device=device)
    except EncoderMismatchError as error:
        reason = str(error).split(";")[0]
        raise EncoderMismatchError(f"cannot calibrate the threshold: the encoder {fingerprint.get('spec', '?')} that made "
                                   f"store {rows.store.directory} cannot be rebuilt here ({reason}); pass a fixed "
                                   "--threshold T (e.g. 0.9)") from None
    return encoder
