"""``StoreRows``: an embedding store read into memory for dedup (ids, L2-normalised vectors, paths, sizes, hashes)."""
from __future__ import annotations

import os
from dataclasses import dataclass
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
        vectors: (n, d) float32, L2-normalised.
        paths: (n,) paths relative to the store's source root.
        width, height: (n,) image sizes when the store has them, else None.
        sha256: (n,) file hashes when the store has them, else None.
    """

    store: EmbeddingStore
    ids: np.ndarray
    vectors: np.ndarray
    paths: list[str]
    width: np.ndarray | None
    height: np.ndarray | None
    sha256: list[str | None] | None

    def __len__(self) -> int:
        return len(self.ids)

    def absolute(self, row: int) -> Path:
        return self.store.source_root / self.paths[row]

    def all_absolute(self) -> list[Path]:
        return [self.store.source_root / path for path in self.paths]


def read_store(embeddings: str | os.PathLike[str]) -> StoreRows:
    """Open and read an embedding store for dedup.

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
    optional = [c for c in ("width", "height", "sha256") if c in store.manifest.columns]
    table = store.read_all(("id", "embedding", "path", *optional))
    vectors = np.ascontiguousarray(table.embeddings, dtype=np.float32)
    if not store.manifest.normalized:
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    columns = table.columns
    return StoreRows(store=store, ids=table.ids, vectors=vectors, paths=list(columns["path"]),
                     width=np.asarray(columns["width"]) if "width" in columns else None,
                     height=np.asarray(columns["height"]) if "height" in columns else None,
                     sha256=list(columns["sha256"]) if "sha256" in columns else None)


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
