"""Searching an index directory: by vectors, store ids or image files; typed results with store paths."""
from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EncoderMismatchError, InputNotFoundError, InvalidArgumentError, SSLSearchError, StoreError
from .exact import drop_self_matches_with_scores


@dataclass(frozen=True)
class Neighbor:
    """One search hit.

    Attributes:
        rank: 1-based position in the result list.
        id: store id.
        score: inner product with the query (cosine similarity for L2-normalised vectors).
        path: the image path relative to the store's source root (None when the store is gone).
    """

    rank: int
    id: int
    score: float
    path: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "id": self.id, "score": self.score, "path": self.path}


@dataclass(frozen=True, eq=False)
class SearchResult:
    """The neighbours of one query.

    ``neighbors`` is built on first access from ``ids`` and ``scores``, so a large batch search
    costs little more than the raw faiss call; code that only needs arrays can use those.

    Attributes:
        query: what was searched: an image path, ``id:17`` or ``row:3`` (row of a vector array).
        ids: (m,) int64 store ids, best first; m < k when an approximate index found fewer.
        scores: (m,) float32 inner products (cosine similarities), descending.
        skipped: why the query could not be searched (e.g. ``truncated`` image), else None.
        neighbors: the same as ``Neighbor`` objects, with their image paths.
    """

    query: str
    ids: np.ndarray
    scores: np.ndarray
    skipped: str | None = None
    paths: Mapping[int, str] | None = field(default=None, repr=False)  # store id → path, when the store is readable

    @cached_property
    def neighbors(self) -> tuple[Neighbor, ...]:
        lookup = self.paths or {}
        new, cls = object.__new__, Neighbor
        hits = []
        for rank, (i, s) in enumerate(zip(self.ids.tolist(), self.scores.tolist()), start=1):
            hit = new(cls)  # as in _of_row: skip the frozen dataclass's per-field object.__setattr__
            hit.__dict__.update(rank=rank, id=i, score=s, path=lookup.get(i))
            hits.append(hit)
        return tuple(hits)

    @classmethod
    def _of_row(cls, query: str, ids: np.ndarray, scores: np.ndarray, paths: Mapping[int, str] | None) -> "SearchResult":
        # The dataclass __init__ sets each field through object.__setattr__ (frozen); filling __dict__
        # directly is 5× faster, which matters when a 1,000-query batch is answered in milliseconds.
        result = object.__new__(cls)
        result.__dict__.update(query=query, ids=ids, scores=scores, skipped=None, paths=paths)
        return result

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"query": self.query, "neighbors": [n.to_dict() for n in self.neighbors]}
        if self.skipped:
            data["skipped"] = self.skipped
        return data


def apply_search_params(faiss_index: Any, params: dict[str, Any]) -> None:
    """Set efSearch / nprobe on a faiss index (through IDMap wrappers, on CPU or GPU)."""
    if not params:
        return
    import faiss

    space = faiss.GpuParameterSpace() if type(faiss_index).__name__.startswith("Gpu") and hasattr(
        faiss, "GpuParameterSpace") else faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(faiss_index, name, value)


class Index:
    """A loaded index directory (``load_index``): the faiss index, its card and the store for paths.

    Example:
        >>> index = load_index("idx/")  # doctest: +SKIP
        >>> for hit in index.search(vectors[:1], k=5)[0].neighbors:  # doctest: +SKIP
        ...     print(hit.rank, hit.score, hit.path)
    """

    def __init__(self, faiss_index: Any, card: Any, directory: Path, *, exact_device: Any = None) -> None:
        self.faiss_index = faiss_index
        self.card = card
        self.directory = directory
        self._exact_device = exact_device  # a torch CUDA device: flat search by torch matmul there
        self._exact_database: Any = None
        self._store: Any = None
        self._store_checked = False
        self._paths: Mapping[int, str] | None = None
        self.store_note: str | None = None
        self._ntotal = int(card.ntotal)
        self._dim = int(card.dim)

    # --- properties -------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._dim

    def __len__(self) -> int:
        return self._ntotal

    @property
    def store(self) -> Any:
        """The embedding store the index was built from (for paths), or None when it moved or changed."""
        if not self._store_checked:
            self._store_checked = True
            from ..store import EmbeddingStore, manifest_hash

            path = self.card.store.get("path")
            try:
                store = EmbeddingStore.open(path)
                if manifest_hash(path) != self.card.store.get("manifest_sha256"):
                    self.store_note = (f"the store {path} changed since the index was built; paths are not shown — "
                                       "rebuild the index")
                else:
                    self._store = store
            except (SSLSearchError, OSError, TypeError):
                self.store_note = f"the store {path} the index was built from is not readable; paths are not shown"
        return self._store

    # --- search parameters ------------------------------------------------------------------
    def set_search_params(self, params: Mapping[str, int]) -> None:
        """Trade recall for speed: ``{"nprobe": 16}`` (IVF) or ``{"efSearch": 64}`` (HNSW) for later searches.

        ``load_index`` sets the card's tuned ``search_params``; this changes them for this loaded
        index only (the card on disk is left as it is). ``{}`` changes nothing.

        Raises:
            InvalidArgumentError: a parameter this kind of index does not have.

        Example:
            >>> for setting in index.search_param_ladder():  # doctest: +SKIP
            ...     index.set_search_params(setting)
        """
        if not params:
            return
        allowed = {"ivf": "nprobe", "ivfpq": "nprobe", "hnsw": "efSearch"}.get(self.card.kind)
        unknown = sorted(set(params) - {allowed})
        if unknown:
            raise InvalidArgumentError(f"a {self.card.kind} index ({self.card.factory}) has no search parameter "
                                       f"{', '.join(unknown)}; " + (f"it takes {allowed}" if allowed else
                                                                    "it is searched exactly, with no parameter"))
        apply_search_params(self.faiss_index, {name: int(value) for name, value in params.items()})

    def search_param_ladder(self) -> list[dict[str, int]]:
        """The search settings ``index build`` tunes over, fastest first (pass each to ``set_search_params``).

        Returns:
            ``[{"nprobe": 1}, ..., {"nprobe": nlist}]`` for IVF, ``[{"efSearch": 10}, ..., {"efSearch":
            1024}]`` for HNSW, ``[{}]`` for an exact (flat) index.
        """
        from .build import EF_SEARCH_LADDER, NPROBE_LADDER

        if self.card.kind == "hnsw":
            return [{"efSearch": ef} for ef in EF_SEARCH_LADDER]
        if self.card.kind in ("ivf", "ivfpq"):
            import faiss

            ivf = faiss.try_extract_index_ivf(self.faiss_index)
            nlist = int(ivf.nlist) if ivf is not None else int(getattr(self.faiss_index, "nlist", 0))
            if nlist <= 0:  # a GPU copy faiss cannot unwrap: the list count from the factory string
                nlist = int(re.search(r"IVF(\d+)", self.card.factory).group(1))  # type: ignore[union-attr]
            return [{"nprobe": p} for p in NPROBE_LADDER if p < nlist] + [{"nprobe": nlist}]
        return [{}]

    # --- raw search -------------------------------------------------------------------------
    def _check_k(self, k: int, available: int, what: str = "vectors in the index") -> None:
        if k <= 0:
            raise InvalidArgumentError(f"k must be > 0, got {k}; e.g. -k 10")
        if k > available:
            raise InvalidArgumentError(f"k={k} is more than the {available:,} {what}; use -k {available} or less")

    def search_arrays(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Raw search with minimal overhead: (q, dim) float32 → (scores (q, k) float32, ids (q, k) int64).

        Ids are store ids; -1 (with score -inf or the metric's worst value) marks places an
        approximate index could not fill. Queries are used as given (not normalised).

        Raises:
            EncoderMismatchError: the query dim differs from the index dim.
            InvalidArgumentError: k ≤ 0 or k > number of vectors, not a 2-d float array.
        """
        if type(queries) is not np.ndarray or queries.dtype != np.float32 or not queries.flags.c_contiguous:
            queries = _float32_matrix(queries)
        if queries.ndim != 2 or queries.shape[1] != self._dim:
            self._dim_error(queries)
        if k <= 0 or k > self._ntotal:
            self._check_k(k, self._ntotal)
        if self._exact_device is not None:
            return self._torch_exact(queries, k)
        return self.faiss_index.search(queries, k)

    def _dim_error(self, queries: np.ndarray) -> None:
        shape = queries.shape
        seen = shape[1] if queries.ndim == 2 else shape
        raise EncoderMismatchError(
            f"query vectors have dim {seen}, the index holds dim {self._dim} vectors made by "
            f"{self.card.encoder_spec} ({self.card.encoder_id}); embed the queries with that encoder")

    def _torch_exact(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss
        import torch

        from .exact import exact_search

        if self._exact_database is None:
            flat = faiss.downcast_index(self.faiss_index)
            inner = faiss.downcast_index(flat.index) if hasattr(flat, "id_map") else flat
            vectors = faiss.rev_swig_ptr(inner.get_xb(), inner.ntotal * inner.d).reshape(inner.ntotal, inner.d)
            ids = faiss.vector_to_array(flat.id_map) if hasattr(flat, "id_map") else np.arange(inner.ntotal)
            self._exact_database = (torch.from_numpy(np.asarray(ids, np.int64)).to(self._exact_device),
                                    torch.from_numpy(np.array(vectors, np.float32)).to(self._exact_device))
        return exact_search(queries, [self._exact_database], k, device=self._exact_device)

    # --- typed search -----------------------------------------------------------------------
    def check_encoder(self, fingerprint: dict[str, Any] | None, what: str = "the queries") -> None:
        """Raise EncoderMismatchError unless ``fingerprint`` is the index's encoder (None: not known, passes)."""
        if fingerprint is None:
            return
        from ..store import check_same_encoder

        check_same_encoder(self.card.encoder, fingerprint, self._dim, what=what, where=f"index {self.directory}")

    def search(self, queries: np.ndarray, k: int = 10, *, names: Sequence[str] | None = None,
               encoder: dict[str, Any] | None = None) -> list[SearchResult]:
        """Search (q, dim) query vectors; they are L2-normalised first, so scores are cosines.

        Args:
            queries: (q, dim) float array (a single (dim,) vector is one query).
            k: neighbours per query, 1..number of vectors.
            names: what to call each query in the results (default ``row:<i>``).
            encoder: fingerprint of the encoder that made the queries, checked against the index's.

        Raises:
            EncoderMismatchError: another encoder or dim. InvalidArgumentError: bad k, zero vectors.
        """
        if encoder is not None:
            self.check_encoder(encoder)
        matrix = _float32_matrix(queries)
        if matrix.ndim == 1:
            matrix = matrix[None, :]
        if matrix.ndim != 2 or matrix.shape[1] != self._dim:
            self._dim_error(matrix)
        squared = np.einsum("ij,ij->i", matrix, matrix)
        # One query takes a scalar path: each numpy call costs microseconds, as much as a small search.
        if len(squared) == 1:
            value = float(squared[0])
            if not 0 < value < math.inf:
                raise InvalidArgumentError("query row 0 is zero or not finite; every query needs a real direction")
            normalized = matrix * np.float32(1 / math.sqrt(value))
        else:
            if not (squared.min() > 0 and squared.max() < np.inf):
                bad = int(np.flatnonzero(~(squared > 0) | ~np.isfinite(squared))[0])
                raise InvalidArgumentError(f"query row {bad} is zero or not finite; every query needs a real direction")
            normalized = matrix.copy()  # never normalise the caller's array in place
            faiss_normalize(normalized)
        scores, ids = self.search_arrays(normalized, k)
        names = list(names) if names is not None else [f"row:{i}" for i in range(len(matrix))]
        return self._results(names, scores, ids)

    def search_ids(self, ids: Sequence[int] | np.ndarray, k: int = 10) -> list[SearchResult]:
        """Neighbours of vectors already in the index, by store id; each query's own id is left out.

        The query's vector comes from the store (exact, whatever the index compresses). Other
        vectors equal to it (duplicates) are kept, so they show up with score ≈ 1.

        Raises:
            InvalidArgumentError: an id not in the store; k ≤ 0 or k ≥ number of vectors.
            StoreError: the store the index was built from is gone or changed.
        """
        wanted = np.asarray(list(ids), dtype=np.int64)
        self._check_k(k, self._ntotal - 1, "other vectors in the index")
        if self.store is None:
            raise StoreError(f"searching by id needs the store the index was built from: {self.store_note}")
        vectors = self.store.vectors_for(wanted)
        scores, found = drop_self_matches_with_scores(*self.search_arrays(vectors, k + 1), wanted, k)
        return self._results([f"id:{i}" for i in wanted.tolist()], scores, found)

    def search_images(self, paths: Sequence[str | os.PathLike[str]], k: int = 10, *, device: str = "auto",
                      batch_size: int = 64) -> list[SearchResult]:
        """Embed image files (or every image of the folders given) with the index's own encoder and search.

        Images that cannot be decoded get a result with ``skipped`` set to the reason.

        Raises:
            InputNotFoundError: a path that does not exist, a folder without images.
            EncoderMismatchError: the index's encoder cannot be rebuilt identically here.
        """
        from ..encoders import encoder_from_fingerprint
        from ..sources import query_image_files

        files = query_image_files(paths, alternatives=", or use --vectors / --ids")
        self._check_k(k, self._ntotal)
        encoder = encoder_from_fingerprint(self.card.encoder, device=device)
        try:
            from ..embed import embed_paths
        except ImportError:  # pragma: no cover - embed lands with the extraction engineer
            raise SSLSearchError("image queries need sslsearch.embed; search with --vectors instead") from None
        vectors, skipped = embed_paths(files, encoder, batch_size=batch_size)
        reasons = {s.path: s.reason for s in skipped}
        kept = [f for f in files if f not in reasons]
        found = iter(self.search(vectors, k, names=kept) if kept else [])
        empty_ids, empty_scores = np.zeros(0, np.int64), np.zeros(0, np.float32)
        return [SearchResult(f, empty_ids, empty_scores, reasons[f]) if f in reasons else next(found) for f in files]

    def _path_lookup(self) -> Mapping[int, str] | None:
        if self._paths is None and self.store is not None:
            self._paths = _LazyPaths(self.store)
        return self._paths

    def _results(self, names: Sequence[str], scores: np.ndarray, ids: np.ndarray) -> list[SearchResult]:
        paths = self._path_lookup()
        make = SearchResult._of_row
        # faiss puts the places it could not fill (id -1) at the end of each row
        missing = bool(ids[0, -1] < 0) if len(ids) == 1 else len(ids) > 0 and ids[:, -1].min() < 0
        if missing:  # dropped from the results
            return [make(name, row_ids[row_ids >= 0], row_scores[row_ids >= 0], paths)
                    for name, row_scores, row_ids in zip(names, scores, ids)]
        return [make(name, row_ids, row_scores, paths) for name, row_scores, row_ids in zip(names, scores, ids)]


class _LazyPaths(Mapping[int, str]):
    """Store id → path, read from the store on first use (one pass over its id and path columns)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._table: dict[int, str] | None = None

    def _load(self) -> dict[int, str]:
        if self._table is None:
            batch = self._store.read_all(("id", "path"))
            self._table = dict(zip(batch.ids.tolist(), batch.columns["path"]))
        return self._table

    def __getitem__(self, key: int) -> str:
        return self._load()[key]

    def get(self, key: int, default: Any = None) -> Any:
        return self._load().get(key, default)

    def __iter__(self) -> Iterator[int]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


def faiss_normalize(matrix: np.ndarray) -> None:
    """L2-normalise the rows of a C-contiguous float32 matrix in place (faiss: one call, no temporaries)."""
    import faiss

    faiss.normalize_L2(matrix)


def _float32_matrix(queries: Any) -> np.ndarray:
    if type(queries) is np.ndarray and queries.dtype == np.float32 and queries.flags.c_contiguous:
        return queries
    array = np.asarray(queries)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InvalidArgumentError(f"query vectors must be numbers, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)


def search_query_file(index: Index, path: str | os.PathLike[str], k: int = 10) -> list[SearchResult]:
    """Search the vectors of a ``.npy`` file (rows named ``row:<i>``) or of an embedding store
    directory (rows named by their image paths; the store's encoder must be the index's).

    Raises:
        InputNotFoundError: no such file. InvalidArgumentError: not a readable 2-d numeric .npy.
        EncoderMismatchError: another encoder or dim.
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"query vectors {os.fspath(path)!r} do not exist; pass a .npy file of shape (q, dim)")
    if path.is_dir():
        from ..store import EmbeddingStore

        store = EmbeddingStore.open(path)
        index.check_encoder(store.encoder, what=f"the vectors of store {path}")
        batch = store.read_all(("id", "path", "embedding"))
        return index.search(batch.embeddings, k, names=list(batch.columns["path"]))
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise InvalidArgumentError(f"{path} is not a readable .npy array ({str(error).splitlines()[0][:120]}); save "
                                   "query vectors with numpy.save") from None
    if not isinstance(array, np.ndarray) or array.ndim not in (1, 2) or array.size == 0:
        shape = getattr(array, "shape", "?")
        raise InvalidArgumentError(f"{path} holds an array of shape {shape}; expected (q, {index.dim}) query vectors")
    return index.search(array, k)


def load_index(directory: str | os.PathLike[str], *, device: str = "cpu",
               memory_budget: str | int | None = None) -> Index:
    """Open an index directory written by ``build_index``.

    Args:
        directory: holds ``index.faiss`` and ``index.json`` (and ``index.ivfdata`` when built on disk).
        device: ``cpu``; ``auto``/``cuda`` move flat and IVF indexes to the GPU when faiss has GPU
            support, or run flat search as torch matmul on CUDA when only torch sees a GPU.
        memory_budget: the most memory the loaded index may take ("4GB", bytes; None: no limit).
            An IVF index larger than this is memory-mapped (``faiss.IO_FLAG_MMAP``) instead of read;
            an on-disk index always is. A flat or HNSW index larger than this is refused.

    Raises:
        InputNotFoundError: no such directory.
        IndexFileError: a missing, corrupted or mismatched ``index.faiss`` / ``index.json``.

    Example:
        >>> index = load_index("idx/")  # doctest: +SKIP
    """
    from ..devices import resolve_device
    from .gpu import index_to_gpu, wants_faiss_gpu
    from .io import read_index_files

    from .io import read_card
    from .spec import format_bytes, parse_memory

    budget = None if memory_budget is None else parse_memory(memory_budget)
    mmap = False
    if budget is not None:
        card = read_card(directory)
        if card.size_bytes > budget and card.kind in ("ivf", "ivfpq"):
            mmap = True
        elif card.size_bytes > budget:
            raise InvalidArgumentError(
                f"the {card.factory} index in {directory} takes {format_bytes(card.size_bytes)}, more than the memory "
                f"budget {format_bytes(budget)}; raise --memory-budget, or rebuild it as IVF (`sslsearch index build "
                "--kind ivfpq --on-disk`), which is memory-mapped")
    faiss_index, card = read_index_files(directory, mmap=mmap)
    apply_search_params(faiss_index, card.search_params)
    exact_device = None
    if device != "cpu":
        torch_device = resolve_device(device)
        if wants_faiss_gpu(device, card.kind) and not card.build_params.get("on_disk"):  # lists stay mapped
            faiss_index = index_to_gpu(faiss_index, device)
            apply_search_params(faiss_index, card.search_params)
        elif torch_device.type == "cuda" and card.kind == "flat":
            exact_device = torch_device
    return Index(faiss_index, card, Path(directory), exact_device=exact_device)
