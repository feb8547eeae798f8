"""Building an index from an embedding store: choose → sample → train → stream-add → tune + measure → save."""
from __future__ import annotations

import os
import resource
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..devices import resolve_device
from ..errors import InvalidArgumentError, unknown_name
from ..files import DirectoryLock
from ..progress import progress_bar
from ..store import EmbeddingStore, StoreBatch, manifest_hash
from .exact import drop_self_matches, exact_search, recall_at_k
from .gpu import index_to_cpu, index_to_gpu, wants_faiss_gpu
from .io import RECALL_HELD_OUT, RECALL_IN_INDEX, IndexCard, check_index_output, save_index_files
from .search import apply_search_params
from .spec import IndexSpec, choose_index_spec, parse_memory

DEFAULT_MEMORY_BUDGET = "4GB"
TARGET_RECALL = 0.95
EVAL_QUERIES = 500
RECALL_K = 10
CHUNK_ROWS = 65_536
EF_SEARCH_LADDER = (10, 12, 16, 20, 24, 28, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 384, 512, 768, 1024)
NPROBE_LADDER = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048, 4096)
PLATEAU = 0.005  # when the target is out of reach: the smallest setting within this of the best recall seen


class _PeakMemory:
    """Samples the resident set size on a thread; ``peak_growth`` is the largest rise over the start.

    ``anonymous_peak_growth`` is the same for the process's own memory only (resident less the
    pages of mapped files, which the kernel can drop and re-read: an on-disk index's lists,
    memory-mapped shards), where Linux tells them apart; else it equals ``peak_growth``.
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.start, self.anonymous_start = _resident_bytes()
        self.peak, self.anonymous_peak = self.start, self.anonymous_start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        resident, anonymous = _resident_bytes()
        self.peak, self.anonymous_peak = max(self.peak, resident), max(self.anonymous_peak, anonymous)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "_PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def peak_growth(self) -> int:
        return max(0, self.peak - self.start)

    @property
    def anonymous_peak_growth(self) -> int:
        return max(0, self.anonymous_peak - self.anonymous_start)


def _resident_bytes() -> tuple[int, int]:
    """(resident bytes, the process's own: resident less file-backed and shared pages); Linux's statm, else the
    lifetime peak twice."""
    try:
        with open("/proc/self/statm") as handle:
            fields = handle.read().split()
        page = os.sysconf("SC_PAGE_SIZE")
        resident = int(fields[1]) * page
        return resident, resident - int(fields[2]) * page
    except (OSError, ValueError, IndexError):  # not Linux: the lifetime peak is the best available
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        resident = int(peak if sys.platform == "darwin" else peak * 1024)
        return resident, resident


def sample_rows(store: EmbeddingStore, positions: np.ndarray, chunk_rows: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Rows at sorted stream ``positions``: (ids, vectors), and whether store ids run 0..n-1 in stream order."""
    ids_out, vectors_out = [], []
    dense, offset = True, 0
    for batch in store.iter_batches(chunk_rows):
        rows = len(batch.ids)
        dense = dense and bool(np.array_equal(batch.ids, np.arange(offset, offset + rows)))
        lo, hi = np.searchsorted(positions, [offset, offset + rows])
        if hi > lo:
            local = positions[lo:hi] - offset
            ids_out.append(batch.ids[local])
            vectors_out.append(batch.embeddings[local])
        offset += rows
    if not ids_out:
        return np.zeros(0, np.int64), np.zeros((0, store.dim), np.float32), dense
    return np.concatenate(ids_out), np.concatenate(vectors_out), dense


def _new_faiss_index(spec: IndexSpec, dim: int, *, needs_id_map: bool) -> tuple[Any, str]:
    import faiss

    index = faiss.index_factory(dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    if spec.kind == "hnsw":
        index.hnsw.efConstruction = int(spec.build_params.get("efConstruction", 200))
    if spec.kind in ("ivf", "ivfpq"):
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.cp.spherical = True  # centroids on the unit sphere: cosine k-means for inner-product search
        if hasattr(ivf, "do_polysemous_training"):
            ivf.do_polysemous_training = False  # only for Hamming-filtered search, which we do not use; 40× slower
        return index, spec.factory  # IVF stores ids itself
    if not needs_id_map:
        return index, spec.factory  # faiss ids = insertion positions = store ids
    return faiss.IndexIDMap(index), f"IDMap,{spec.factory}"


def _ladder(spec: IndexSpec, index: Any) -> list[dict[str, int]]:
    if spec.kind == "hnsw":
        return [{"efSearch": ef} for ef in EF_SEARCH_LADDER]
    if spec.kind in ("ivf", "ivfpq"):
        import faiss

        nlist = faiss.extract_index_ivf(index).nlist
        steps = [p for p in NPROBE_LADDER if p < nlist] + [nlist]
        return [{"nprobe": p} for p in steps]
    return [{}]


def _tune(spec: IndexSpec, index: Any, queries: np.ndarray, query_ids: np.ndarray, truth: np.ndarray, k: int,
          target: float, *, held_out: bool) -> tuple[dict[str, int], float | None, list[dict[str, Any]]]:
    """The smallest search setting whose recall@k reaches ``target`` (else the smallest near the best).

    Each point also records the queries per second of that search (one batch of all the queries,
    on this process's threads, while the build runs): the card's QPS.
    """
    if len(queries) == 0:
        return dict(spec.search_params), None, []
    points: list[dict[str, Any]] = []
    for params in _ladder(spec, index):
        apply_search_params(index, params)
        tick = time.perf_counter()
        if held_out:
            found = index.search(queries, k)[1]
        else:  # the queries are in the index: search one more and leave each query's own id out
            found = drop_self_matches(index.search(queries, k + 1)[1], query_ids, k)
        seconds = time.perf_counter() - tick
        recall = recall_at_k(found, truth)
        points.append({"search_params": params, "recall": round(recall, 4),
                       "qps_batch": round(len(queries) / seconds, 1) if seconds > 0 else None})
        if recall >= target:
            return params, recall, points
    best = max(p["recall"] for p in points)
    chosen = next(p for p in points if p["recall"] >= best - PLATEAU)
    apply_search_params(index, chosen["search_params"])
    return dict(chosen["search_params"]), float(chosen["recall"]), points


def _eval_count(kind: str, n: int, wanted: int) -> int:
    """Held-out queries: at most a tenth of the vectors for approximate kinds (left out while tuning)."""
    if kind == "flat":
        return min(wanted, n) if n > 1 else 0
    return min(wanted, n // 10)


def build_index(store_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, kind: str = "auto",
                memory_budget: str | int | None = DEFAULT_MEMORY_BUDGET, device: str = "auto", overwrite: bool = False,
                progress: bool | None = None, target_recall: float = TARGET_RECALL,
                eval_queries: int = EVAL_QUERIES, seed: int = 0, on_disk: bool = False,
                workers: int | None = None, engine: str = "local", address: str | None = None,
                nlist: int | None = None) -> IndexCard:
    """Build a faiss index over an embedding store and write ``out/index.faiss`` + ``out/index.json``.

    Vectors stream from the store in chunks (memory: the index plus one chunk plus the training
    sample). IVF/PQ indexes train on a random sample. For approximate kinds, ``eval_queries``
    random store vectors (at most a tenth of them) are held out: left out of training and out of
    the index while recall@10 against exact search is measured and efSearch / nprobe are tuned to
    the smallest setting reaching ``target_recall``; then they are added. Held-out queries behave
    like new images (a vector already in an HNSW graph is found more easily than a new one). A
    flat index is measured on store vectors with their own ids left out. Both go into the card.

    Args:
        store_dir: an embedding store (Contract 2).
        out: the index directory to write (new, empty, or an index directory with ``overwrite``).
        kind: auto, flat, hnsw, ivf or ivfpq (see ``spec.choose_index_spec``).
        memory_budget: the most memory the index may take ("4GB", "512MiB", bytes), None = no limit.
        device: auto, cpu or cuda: faiss GPU when the installed faiss has it (flat/IVF kinds);
            the exact ground truth runs in torch on CUDA when torch sees a GPU.
        overwrite: replace an index already at ``out``.
        progress: show a progress bar on stderr (None: when stderr is a terminal).
        target_recall: recall@10 the search parameters are tuned to reach.
        eval_queries: held-out queries for measuring and tuning.
        seed: sampling seed (training sample and held-out queries).
        on_disk: for stores beyond memory: an IVF index (auto → IVF-SQ8) trained on a sample, filled
            shard by shard in ``workers`` processes and merged into ``out/index.ivfdata``, which
            search memory-maps; the budget then bounds the build's working memory, not the index
            (``index.ondisk.build_ondisk_index``).
        workers: processes filling an on-disk index (default 2, at most the cores); with
            ``engine="ray"``, Ray tasks filling parts at once (default: one per CPU of the cluster).
        engine: where an on-disk index's parts are filled: ``local`` processes, or ``ray`` tasks on
            the machines of a Ray cluster (the store must then be readable from every node: a
            shared path or s3://); the driver trains, merges and measures as for ``local``.
        address: the Ray cluster with ``engine="ray"``: None starts a local one, ``auto`` joins the
            running cluster, ``ray://host:10001`` a remote one.
        nlist: an on-disk IVF index's list count instead of the automatic ≈ 4·√n (fewer lists:
            faster training and filling, longer lists per probe); refused for in-memory builds,
            whose index the budget chooses.

    Returns:
        The IndexCard written to ``out/index.json``.

    Raises:
        InputNotFoundError, StoreError: the store is missing or damaged.
        UnknownNameError: unknown kind. InvalidArgumentError: empty store, a budget too small.
        OutputExistsError: ``out`` holds other data, or an index without ``overwrite``.

    Example:
        >>> card = build_index("emb/", "idx/", kind="auto", memory_budget="4GB")  # doctest: +SKIP
        >>> card.factory, card.recall_at_10  # doctest: +SKIP
        ('HNSW32,Flat', 0.987)
    """
    import faiss

    started = time.perf_counter()
    if not 0 < target_recall <= 1:
        raise InvalidArgumentError(f"target recall must be in (0, 1], got {target_recall}")
    budget = None if memory_budget is None else parse_memory(memory_budget)
    if engine not in ("local", "ray"):
        raise unknown_name("engine", engine, ("local", "ray"))
    if address is not None and engine != "ray":
        raise InvalidArgumentError(f"--address {address} names a Ray cluster; add --engine ray --on-disk to use it")
    if engine != "local" and not on_disk:
        raise InvalidArgumentError(f"--engine {engine} fills the parts of an on-disk index; add --on-disk")
    if nlist is not None and not on_disk:
        raise InvalidArgumentError(f"nlist {nlist} sets the lists of an on-disk IVF index; add --on-disk (on_disk=True) "
                                   "(in-memory builds choose their index from the budget)")
    if on_disk:
        from .ondisk import build_ondisk_index

        return build_ondisk_index(store_dir, out, kind=kind, memory_budget_bytes=budget, device=device,
                                  overwrite=overwrite, progress=progress, workers=workers, target_recall=target_recall,
                                  eval_queries=eval_queries, seed=seed, engine=engine, address=address, nlist=nlist)
    torch_device = resolve_device(device)
    store = EmbeddingStore.open(store_dir)
    n, dim = len(store), store.dim
    spec = choose_index_spec(n, dim, kind=kind, memory_budget_bytes=budget)
    out_dir = check_index_output(out, overwrite=overwrite)
    if store.location.is_local and Path(store.location.root).resolve() == out_dir.resolve():
        raise InvalidArgumentError(f"--out {out} is the embedding store itself; write the index to its own directory")
    chunk_rows = CHUNK_ROWS if budget is None else int(max(1024, min(CHUNK_ROWS, budget // (10 * 8 * dim))))
    timings: dict[str, float] = {}
    with DirectoryLock(out_dir), _PeakMemory() as memory:
        # 1. sample: the evaluation queries, the training set, and whether store ids run 0..n-1.
        tick = time.perf_counter()
        rng = np.random.default_rng(seed)
        held_out = spec.kind != "flat"  # approximate kinds: queries stay out of the index until tuned
        n_eval = _eval_count(spec.kind, n, eval_queries)
        eval_positions = np.sort(rng.choice(n, n_eval, replace=False)) if n_eval else np.zeros(0, np.int64)
        rest = np.setdiff1d(np.arange(n), eval_positions) if spec.train_size else np.zeros(0, np.int64)
        pool = rest if len(rest) >= spec.train_size else np.arange(n)
        train_positions = np.sort(rng.choice(pool, spec.train_size, replace=False)) if spec.train_size else pool[:0]
        wanted = np.union1d(eval_positions, train_positions)
        sample_ids, sample_vectors, dense = sample_rows(store, wanted, chunk_rows)
        eval_rows = np.searchsorted(wanted, eval_positions)
        query_ids, queries = sample_ids[eval_rows], sample_vectors[eval_rows]
        training = sample_vectors[np.searchsorted(wanted, train_positions)]
        del sample_vectors
        timings["sample"] = time.perf_counter() - tick

        # 2. train.
        index, factory = _new_faiss_index(spec, dim, needs_id_map=not dense or (held_out and n_eval > 0))
        with_ids = factory.startswith("IDMap") or spec.kind in ("ivf", "ivfpq")
        on_gpu = wants_faiss_gpu(device, spec.kind)
        if on_gpu:
            index = index_to_gpu(index, device)
        tick = time.perf_counter()
        if not index.is_trained:
            index.train(training)
        del training
        timings["train"] = time.perf_counter() - tick

        # 3. add, streaming; the exact ground truth of the queries is computed on the same stream.
        tick = time.perf_counter()
        k = min(RECALL_K, n - n_eval if held_out else n - 1)
        with progress_bar(n, f"index {spec.factory}", unit="vec", enabled=progress) as bar:
            def feed() -> Iterator[StoreBatch]:
                for batch in store.iter_batches(chunk_rows):
                    ids, vectors = batch.ids, batch.embeddings
                    if held_out and n_eval:
                        keep = ~np.isin(ids, query_ids)
                        ids, vectors = ids[keep], vectors[keep]
                    if with_ids:
                        index.add_with_ids(vectors, ids)
                    else:
                        index.add(vectors)
                    bar.update(len(batch.ids))
                    yield StoreBatch(ids, vectors, {})

            if k > 0 and n_eval:
                if held_out:
                    truth = exact_search(queries, feed(), k, device=torch_device)[1]
                else:
                    truth = drop_self_matches(exact_search(queries, feed(), k + 1, device=torch_device)[1], query_ids, k)
            else:
                for _ in feed():
                    pass
                truth = np.zeros((0, 0), np.int64)
        timings["add"] = time.perf_counter() - tick

        # 4. tune the search parameters and measure recall on the queries; then add the held-out ones.
        tick = time.perf_counter()
        params, recall, points = (_tune(spec, index, queries, query_ids, truth, k, target_recall, held_out=held_out)
                                  if k > 0 and n_eval else (dict(spec.search_params), None, []))
        if held_out and n_eval:
            index.add_with_ids(queries, query_ids)
        if index.ntotal != n:
            raise InvalidArgumentError(f"the store listed {n} rows but {index.ntotal} were read; the store changed "
                                       "during the build — rebuild")
        timings["tune"] = time.perf_counter() - tick

        # 5. save.
        tick = time.perf_counter()
        cpu_index = index_to_cpu(index) if on_gpu else index
        build_params = {**spec.build_params, "train_size": int(spec.train_size), "chunk_rows": chunk_rows,
                        "target_recall": target_recall, "device": "faiss-gpu" if on_gpu else "cpu",
                        "memory_budget_bytes": budget}

        def make_card(size_bytes: int) -> IndexCard:
            import sslsearch

            return IndexCard(
                factory=factory, kind=spec.kind, metric=spec.metric, dim=dim, ntotal=int(index.ntotal),
                search_params=params, encoder=dict(store.encoder),
                store={"path": store.uri, "manifest_sha256": manifest_hash(store.location), "rows": n},
                build_seconds=round(time.perf_counter() - started, 3), peak_memory_bytes=memory.peak_growth,
                recall_at_10=None if recall is None else round(float(recall), 4),
                n_eval_queries=len(queries) if recall is not None else 0,
                size_bytes=size_bytes, sslsearch_version=sslsearch.__version__, faiss_version=faiss.__version__,
                reason=spec.reason, build_params=build_params, recall_k=max(k, 0), tuning=tuple(points),
                recall_definition=RECALL_HELD_OUT if held_out else RECALL_IN_INDEX,
                timings={name: round(seconds, 3) for name, seconds in timings.items()})

        card = save_index_files(out_dir, cpu_index, make_card)
    return card
