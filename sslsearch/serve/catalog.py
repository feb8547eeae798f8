"""The indexes a server holds: each loaded once with its encoder; query images embedded, store images located."""
from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadImageError, EncoderMismatchError, InputNotFoundError, InvalidArgumentError, SSLSearchError, \
    unknown_name
from ..index.search import Index, SearchResult, load_index
from ..sources import IMAGE_EXTENSIONS, SkippedFile, decode_image

DEFAULT_MAX_PIXELS = 40_000_000  # per uploaded image: ~120 MB decoded; embed's own default (179 M) is for trusted files
ID_CACHE_BYTES = 1 << 30  # id queries keep the store's vectors in memory up to this size (float32)


@dataclass(frozen=True)
class UploadedImage:
    """An image received by the server: its name (as the client gave it) and its encoded bytes."""

    name: str
    data: bytes


@dataclass
class ServedIndex:
    """One index of a server.

    Attributes:
        name: what requests call it (the directory name unless given as ``NAME=DIR``).
        index: the loaded index (faiss index, card, store).
        encoder: the index's own encoder, rebuilt once at start, or None when it cannot be.
        encoder_note: why image queries are unavailable (None when they are).
    """

    name: str
    index: Index
    encoder: Any = None
    encoder_note: str | None = None
    _preprocessing: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _vectors: Any = field(default=None, repr=False)  # (sorted store ids, their float32 vectors) for id queries

    @property
    def source_root(self) -> Path | None:
        store = self.index.store
        return store.source_root if store is not None else None

    def describe(self) -> dict[str, Any]:
        """A short JSON-ready description for ``GET /indexes``."""
        card = self.index.card
        return {"name": self.name, "directory": str(self.index.directory), "kind": card.kind, "factory": card.factory,
                "ntotal": card.ntotal, "dim": card.dim, "encoder": card.encoder_spec,
                "image_search": self.encoder is not None, "image_search_note": self.encoder_note,
                "store_note": self.index.store_note, "recall_at_10": card.recall_at_10}

    # --- id queries -------------------------------------------------------------------------
    def search_ids(self, ids: Sequence[int], k: int) -> list[SearchResult]:
        """``Index.search_ids`` with the store's vectors kept in memory (when they fit ``ID_CACHE_BYTES``).

        ``Index.search_ids`` reads the store to find each query's vector: fine once, slow for a page
        where every click is an id query (1.5 s per query on a 100k × 384 store). The answers are the same.

        Raises:
            InvalidArgumentError: an id not in the store; k ≤ 0 or k ≥ number of vectors.
            StoreError: the store the index was built from is gone or changed.
        """
        store = self.index.store
        if store is None or len(store) * store.dim * 4 > ID_CACHE_BYTES:
            return self.index.search_ids(ids, k)
        self.index._check_k(k, len(self.index) - 1, "other vectors in the index")
        wanted = np.asarray(list(ids), dtype=np.int64)
        with self._lock:
            if self._vectors is None:
                batch = store.read_all(("id", "embedding"))
                order = np.argsort(batch.ids, kind="stable")
                self._vectors = (batch.ids[order], batch.embeddings[order])
        known, matrix = self._vectors
        rows = np.searchsorted(known, wanted).clip(0, max(len(known) - 1, 0))
        absent = known[rows] != wanted if len(known) else np.ones(len(wanted), bool)
        if absent.any():
            raise InvalidArgumentError(f"id {int(wanted[absent][0])} is not in store {store.directory} (ids run 0.."
                                       f"{len(store) - 1}); pass ids the store holds")
        # As Index.search_ids: search k + 1, drop each query's own id (or the last hit when it is absent).
        scores, found = self.index.search_arrays(matrix[rows], k + 1)
        is_self = found == wanted[:, None]
        is_self[~is_self.any(axis=1), -1] = True
        keep = ~(is_self & (np.cumsum(is_self, axis=1) == 1))
        return self.index._results([f"id:{i}" for i in wanted.tolist()], scores[keep].reshape(len(wanted), k),
                                   found[keep].reshape(len(wanted), k))

    # --- query images -----------------------------------------------------------------------
    def embed_uploads(self, uploads: Sequence[UploadedImage], *, max_pixels: int = DEFAULT_MAX_PIXELS
                      ) -> tuple[np.ndarray, list[str], list[SkippedFile]]:
        """Decode uploaded images with ``embed``'s bad-file rules and embed them with the index's encoder.

        Returns:
            ``(vectors, names, skipped)``: (n_ok, dim) float32 L2-normalised rows, the names of
            those rows, and the uploads that could not be decoded (reason as in ``embed``).

        Raises:
            EncoderMismatchError: this index's encoder could not be rebuilt (image search unavailable).
        """
        if self.encoder is None:
            raise EncoderMismatchError(f"index {self.name!r} cannot embed query images: {self.encoder_note}")
        import torch

        from ..loader import BatchPreprocessing

        if self._preprocessing is None:
            self._preprocessing = BatchPreprocessing.of(self.encoder)
        pixels, names, skipped = [], [], []
        for upload in uploads:
            try:
                decoded = decode_image(upload.data, name=upload.name, max_pixels=max_pixels)
                pixels.append(self._preprocessing.per_image(decoded.image))
                names.append(upload.name)
            except BadImageError as error:
                skipped.append(SkippedFile.from_error(upload.name, error))
        if not pixels:
            return np.zeros((0, self.index.dim), np.float32), names, skipped
        batch = self._preprocessing.per_batch(torch.from_numpy(np.stack(pixels)))
        with self._lock:  # one forward at a time: concurrent forwards only fight over the same cores
            vectors = self.encoder.embed_tensors(batch)
        return vectors, names, skipped

    def search_uploads(self, uploads: Sequence[UploadedImage], k: int, *, max_pixels: int = DEFAULT_MAX_PIXELS
                       ) -> list[SearchResult]:
        """Search uploaded images; an undecodable one gets a result with ``skipped`` set.

        Raises:
            BadImageError: every upload was undecodable (the first one's reason).
            InvalidArgumentError: no uploads, or k out of range.
        """
        if not uploads:
            raise InvalidArgumentError("no image uploaded; send one or more files in the multipart field 'files'")
        self.index._check_k(k, len(self.index))
        vectors, names, skipped = self.embed_uploads(uploads, max_pixels=max_pixels)
        if not names:
            first = skipped[0]
            raise BadImageError(first.detail, first.reason)
        found = iter(self.index.search(vectors, k, names=names))
        reasons = {s.path: s.reason for s in skipped}
        empty_ids, empty_scores = np.zeros(0, np.int64), np.zeros(0, np.float32)
        return [SearchResult(u.name, empty_ids, empty_scores, reasons[u.name]) if u.name in reasons else next(found)
                for u in uploads]

    # --- store images -----------------------------------------------------------------------
    def image_file(self, image_id: int) -> Path:
        """The file of store image ``image_id``: its store path, under the store's source root.

        The path comes from the store, never from the request; a stored path that would leave
        the source root (absolute, or with ``..``) or is not an image file is refused.

        Raises:
            InputNotFoundError: no such id, the store is not readable, or the file is gone.
        """
        store = self.index.store
        if store is None:
            raise InputNotFoundError(f"index {self.name!r} cannot show images: {self.index.store_note}")
        return resolve_under(store.source_root, store.paths([image_id])[0], f"image id {image_id}")


def resolve_under(root: str | os.PathLike[str], relative: str | None, what: str) -> Path:
    """``root / relative`` when ``relative`` stays under ``root`` and names an existing image file.

    Raises:
        InputNotFoundError: ``relative`` is None, escapes the root, is not an image, or is gone.
    """
    if not relative:
        raise InputNotFoundError(f"{what} is not in the store")
    base = os.path.normpath(os.path.abspath(root))
    full = os.path.normpath(os.path.join(base, relative))
    if os.path.isabs(relative) or os.path.commonpath([base, full]) != base or full == base:
        raise InputNotFoundError(f"{what} has a stored path outside the source root; it is not served")
    if os.path.splitext(full)[1].lower() not in IMAGE_EXTENSIONS:
        raise InputNotFoundError(f"{what} is not an image file; it is not served")
    if not os.path.isfile(full):
        raise InputNotFoundError(f"{what}: the file {relative!r} is no longer under the source root")
    return Path(full)


def parse_index_arguments(arguments: Sequence[str | os.PathLike[str]]) -> list[tuple[str, Path]]:
    """``["idx/", "faces=other/"]`` → ``[("idx", Path("idx/")), ("faces", Path("other/"))]``, names unique.

    Raises:
        InvalidArgumentError: no index, an empty name, or a name used twice.
    """
    if not arguments:
        raise InvalidArgumentError("no index given; pass one or more index directories (NAME=DIR to name one)")
    pairs: list[tuple[str, Path]] = []
    for argument in arguments:
        text = os.fspath(argument)
        name, sep, directory = text.partition("=")
        if not sep or os.path.exists(text):
            name, directory = Path(text).resolve().name, text
        if not name or "/" in name:
            raise InvalidArgumentError(f"index name {name!r} in {text!r} is not usable; write NAME=DIR with a plain NAME")
        if name in {n for n, _ in pairs}:
            raise InvalidArgumentError(f"two indexes are called {name!r}; name them apart with NAME=DIR")
        pairs.append((name, Path(directory)))
    return pairs


def load_catalog(arguments: Sequence[str | os.PathLike[str]], *, device: str = "auto",
                 index_device: str = "cpu") -> dict[str, ServedIndex]:
    """Load every index (and its encoder, and its store's path table) once, for serving.

    An index whose encoder cannot be rebuilt here is still served for vector and id queries.

    Raises:
        InputNotFoundError, IndexFileError: an index directory that is missing or damaged.
    """
    from ..encoders import encoder_from_fingerprint

    served: dict[str, ServedIndex] = {}
    for name, directory in parse_index_arguments(arguments):
        index = load_index(directory, device=index_device)
        if index.store is not None:
            index.store.paths([])  # read the id → path tables now, not in the first requests
            index._path_lookup().get(-1)
        encoder, note = None, None
        try:
            encoder = encoder_from_fingerprint(index.card.encoder, device=device)
        except SSLSearchError as error:
            note = str(error)
        served[name] = ServedIndex(name, index, encoder, note)
    return served


def find_index(catalog: Mapping[str, ServedIndex], name: str) -> ServedIndex:
    """The served index called ``name``.

    Raises:
        UnknownNameError: no such index (lists the served ones).
    """
    try:
        return catalog[name]
    except KeyError:
        raise unknown_name("index", name, catalog) from None
