"""Index recall against exact search and QPS over a sweep of search parameters (nprobe / efSearch)."""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..devices import faiss_threads
from ..errors import InvalidArgumentError
from ..files import atomic_write_json
from ..index.build import EF_SEARCH_LADDER, NPROBE_LADDER, sample_rows
from ..index.exact import drop_self_matches, exact_search, recall_at_k
from ..index.io import CARD_FILE, IndexCard, read_card, read_index_files
from ..index.search import apply_search_params
from ..store import EmbeddingStore, check_same_encoder
from .labels import unit_rows
from .neighbors import exact_neighbors

# A store whose vectors (as float32) exceed this is streamed for the exact search instead of read whole: memory is
# one block of rows, the queries and their results (a 10M × 384 store is 15 GiB as float32).
IN_MEMORY_MAX_BYTES = 2 * 2**30
STREAM_ROWS = 65_536  # rows read and scored at once when streaming


@dataclass(frozen=True)
class SweepSetting:
    """One search setting measured: recall@k against exact search and queries per second.

    Attributes:
        parameter: "nprobe", "efSearch" or "" (an index without a search parameter).
        value: its value (0 when there is none).
        recall: mean |approximate top-k ∩ exact top-k| / k.
        qps_batch: queries/s searching all queries in one call.
        qps_single: queries/s searching them one at a time, on one faiss thread.
    """

    parameter: str
    value: int
    recall: float
    qps_batch: float
    qps_single: float

    @property
    def label(self) -> str:
        return f"{self.parameter}={self.value}" if self.parameter else "(no parameter)"


@dataclass(frozen=True)
class IndexSweepResult:
    """The recall–QPS table of an index and the fastest setting that meets the target recall."""

    index_dir: str
    factory: str
    ntotal: int
    k: int
    n_queries: int
    n_single_queries: int
    target_recall: float
    settings: tuple[SweepSetting, ...]
    operating_point: SweepSetting | None
    queries_from: str
    exact_qps: float
    applied: bool = False
    notes: tuple[str, ...] = ()
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        def as_dict(s: SweepSetting | None) -> dict[str, Any] | None:
            return None if s is None else {**vars(s), "label": s.label}

        return {"index_dir": self.index_dir, "factory": self.factory, "ntotal": self.ntotal, "k": self.k,
                "n_queries": self.n_queries, "n_single_queries": self.n_single_queries,
                "target_recall": self.target_recall, "settings": [as_dict(s) for s in self.settings],
                "operating_point": as_dict(self.operating_point), "queries_from": self.queries_from,
                "exact_qps": self.exact_qps, "applied": self.applied, "notes": list(self.notes),
                "seconds": self.seconds}


def _hnsw_of(index: Any) -> Any | None:
    """The HNSW index inside ID-map / pre-transform / refine wrappers, if any."""
    import faiss

    current = faiss.downcast_index(index)
    for _ in range(8):
        if hasattr(current, "hnsw"):
            return current
        inner = getattr(current, "index", None) or getattr(current, "base_index", None)
        if inner is None:
            return None
        current = faiss.downcast_index(inner)
    return None


def search_parameter(index: Any) -> tuple[str, tuple[int, ...]]:
    """The search parameter of an index and the values to sweep (the ladders ``index build`` tunes on).

    Returns:
        ("nprobe", values up to nlist), ("efSearch", values) or ("", (0,)) for an index without one.
    """
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return "nprobe", tuple(v for v in NPROBE_LADDER if v < ivf.nlist) + (ivf.nlist,)
    if _hnsw_of(index) is not None:
        return "efSearch", EF_SEARCH_LADDER
    return "", (0,)


def set_search_parameter(index: Any, parameter: str, value: int) -> None:
    """Set nprobe or efSearch on an index, through any wrapper (IDMap, pre-transform, refine)."""
    if parameter:
        apply_search_params(index, {parameter: int(value)})


def _median_seconds(run: Any, repeats: int, min_seconds: float = 0.02) -> float:
    """Median seconds of one ``run()``, each repeat looping it long enough (>= min_seconds) to be timed."""
    started = time.perf_counter()
    run()  # warm-up: caches, thread pool; also sizes the loop
    loops = max(1, int(min_seconds / max(time.perf_counter() - started, 1e-6)))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(loops):
            run()
        times.append((time.perf_counter() - started) / loops)
    return statistics.median(times)


def _without_self(ids: np.ndarray, self_ids: np.ndarray | None, k: int) -> np.ndarray:
    return ids[:, :k] if self_ids is None else drop_self_matches(ids, self_ids, k)


def sweep_index(index_dir: str | os.PathLike[str], store: str | os.PathLike[str] | EmbeddingStore | None = None, *,
                queries: np.ndarray | None = None, k: int = 10, n_queries: int = 1000, n_single_queries: int = 200,
                target_recall: float = 0.95, values: Sequence[int] | None = None, repeats: int = 3, seed: int = 0,
                apply: bool = False, device: str = "auto") -> IndexSweepResult:
    """Measure recall@k against exact search and QPS (batch and one-by-one) for each search setting.

    Ground truth is an exact search over the store the index was built from (read whole, or
    streamed block by block when its float32 vectors exceed ``IN_MEMORY_MAX_BYTES``). Queries are
    ``queries`` if given, else ``n_queries`` rows sampled from the store (seeded), whose own id is
    left out of both the exact and the approximate results (as the card's build-time recall).

    Args:
        index_dir: an index directory (``index.faiss`` + ``index.json``).
        store: the embedding store the index holds (faiss ids = store ids); default: the card's store path.
        queries: (q, d) float32 query vectors, or None to sample store rows.
        k: neighbours compared.
        n_queries: sampled queries for the recall and batch QPS.
        n_single_queries: how many of them are also searched one at a time (on one faiss thread).
        target_recall: the operating point is the fastest setting with recall >= this: the smallest
            nprobe / efSearch that reaches it (search cost grows with the value; timings are noisy).
        values: the parameter values to sweep (default: a grid that fits the index).
        repeats: timed repeats per measurement (median), after one warm-up.
        apply: write the operating point into the card (``search_params``, and ``recall_at_10`` when
            k is the card's ``recall_k``).

    Raises:
        InvalidArgumentError: k or the target out of range; index and store of different sizes or dims;
            ``apply`` when no setting meets the target.
        EncoderMismatchError: the card names another encoder than the store's.
        IndexFileError / StoreError: unreadable index or store.

    Example:
        >>> result = sweep_index("idx/", target_recall=0.95)  # doctest: +SKIP
        >>> result.operating_point.label  # doctest: +SKIP
        'efSearch=48'
    """
    started = time.perf_counter()
    if not 0.0 < target_recall <= 1.0:
        raise InvalidArgumentError(f"target recall must be in (0, 1], got {target_recall}")
    index, card = read_index_files(index_dir)
    if store is None:
        store = card.store.get("path")
        if not store:
            raise InvalidArgumentError(f"the card of {index_dir} names no store; pass --store EMB")
    database = store if isinstance(store, EmbeddingStore) else EmbeddingStore.open(store)
    where = f"index {index_dir} ({card.factory})"
    if index.d != database.dim:
        raise InvalidArgumentError(f"{where} has dim {index.d} but store {database.directory} has dim {database.dim}; "
                                   "pass the store the index was built from")
    check_same_encoder(card.encoder, database.encoder, index.d, what=f"the vectors of store {database.directory}",
                       where=where)
    if index.ntotal != len(database):
        raise InvalidArgumentError(f"{where} holds {index.ntotal} vectors but store {database.directory} has "
                                   f"{len(database)} rows; pass the store the index was built from")
    if apply and k != card.recall_k:
        raise InvalidArgumentError(f"--apply needs k = {card.recall_k}, the k of the card's recall; got k = {k}")
    n = len(database)
    streamed = n * database.dim * 4 > IN_MEMORY_MAX_BYTES
    vectors = batch = None
    if not streamed:
        batch = database.read_all(("id", "embedding"))
        vectors = unit_rows(batch.embeddings)
    if queries is None:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n_queries, n), replace=False))
        if streamed:  # one pass picks the sampled rows
            self_ids, sampled, _ = sample_rows(database, rows, STREAM_ROWS)
            query_vectors = unit_rows(sampled)
        else:
            query_vectors, self_ids = vectors[rows], batch.ids[rows]
        queries_from = f"{len(rows)} rows sampled from {database.directory} (own id left out)"
    else:
        query_vectors, self_ids = unit_rows(queries), None
        queries_from = f"{len(query_vectors)} given query vectors"
    available = n - (1 if self_ids is not None else 0)
    if not 1 <= k <= available:
        raise InvalidArgumentError(f"k={k} is outside 1..{available} (the database size); choose a smaller k")
    search_k = k + (1 if self_ids is not None else 0)
    exact_started = time.perf_counter()
    if streamed:  # a store beyond memory: exact search block by block as it is read
        blocks = ((b.ids, unit_rows(b.embeddings)) for b in database.iter_batches(STREAM_ROWS))
        exact_ids = _without_self(exact_search(query_vectors, blocks, search_k, device=device)[1], self_ids, k)
    else:
        exact = exact_neighbors(query_vectors, vectors, search_k, device=device)
        exact_ids = _without_self(batch.ids[exact.positions], self_ids, k)
    exact_qps = len(query_vectors) / max(time.perf_counter() - exact_started, 1e-9)
    parameter, grid = search_parameter(index)
    if values is not None and parameter:
        if min(values) < 1:
            raise InvalidArgumentError(f"{parameter} values must be >= 1, got {list(values)}")
        ceiling = grid[-1] if parameter == "nprobe" else max(values)  # nprobe above nlist is nlist
        grid = tuple(sorted({min(int(v), ceiling) for v in values}))
    single = query_vectors[:n_single_queries]
    settings = []
    for value in grid:
        set_search_parameter(index, parameter, value)
        _, ids = index.search(query_vectors, search_k)
        recall = recall_at_k(_without_self(ids, self_ids, k), exact_ids)
        batch_seconds = _median_seconds(lambda: index.search(query_vectors, search_k), repeats)
        with faiss_threads(1):  # one query at a time on one thread, as a serving worker runs
            single_seconds = _median_seconds(lambda: [index.search(single[i:i + 1], search_k)
                                                      for i in range(len(single))], repeats)
        settings.append(SweepSetting(parameter, int(value), recall, len(query_vectors) / max(batch_seconds, 1e-9),
                                     len(single) / max(single_seconds, 1e-9)))
    # The cost of a search grows with nprobe / efSearch, so the smallest value that meets the target is
    # the fastest one; choosing by measured QPS instead would let timing noise pick a slower setting.
    meeting = [s for s in settings if s.recall >= target_recall]
    point = min(meeting, key=lambda s: s.value) if meeting else None
    notes, unreachable = [], None
    if streamed:
        notes.append(f"the store ({n:,} × {database.dim}) was streamed for the exact search (it is over "
                     f"{IN_MEMORY_MAX_BYTES / 2**30:g} GiB as float32): exact QPS includes reading it")
    if point is None:
        best = max(settings, key=lambda s: s.recall)
        unreachable = (f"no setting reaches recall@{k} {target_recall} (best {best.recall:.3f} at {best.label}); "
                       "build a finer index or lower the target")
        notes.append(unreachable)
    result = IndexSweepResult(
        index_dir=str(index_dir), factory=card.factory, ntotal=int(index.ntotal), k=k, n_queries=len(query_vectors),
        n_single_queries=len(single), target_recall=target_recall, settings=tuple(settings), operating_point=point,
        queries_from=queries_from, exact_qps=exact_qps, notes=tuple(notes), seconds=time.perf_counter() - started)
    if apply:
        if point is None:
            raise InvalidArgumentError(f"--apply: {unreachable}; nothing was written")
        if point.parameter:
            apply_search_setting(index_dir, point, n_queries=len(query_vectors))
        result = replace(result, applied=True)
    return result


def apply_search_setting(index_dir: str | os.PathLike[str], setting: SweepSetting, *, n_queries: int) -> IndexCard:
    """Write a measured setting into the index card atomically: ``search_params`` and its recall.

    ``recall_at_10`` becomes the setting's measured recall (at the card's ``recall_k``), and the
    point is added to ``tuning``; every other field is kept.

    Returns:
        The new card.
    """
    card = read_card(index_dir)
    point = {"search_params": {setting.parameter: setting.value}, "recall": round(setting.recall, 4),
             "qps_batch": round(setting.qps_batch, 1), "qps_single": round(setting.qps_single, 1),
             "source": "sslsearch bench index --apply"}
    updated = replace(card, search_params={**card.search_params, setting.parameter: setting.value},
                      recall_at_10=setting.recall, n_eval_queries=n_queries, tuning=card.tuning + (point,))
    atomic_write_json(Path(index_dir) / CARD_FILE, updated.to_dict())
    return updated
