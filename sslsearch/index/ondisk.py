"""IVF indexes larger than memory: train on a sample, fill store shards in parallel processes, merge the lists on disk.

The recipe of faiss ``contrib/ondisk.py`` and its ``bench_ondisk`` demo, over an embedding store:

1. sample ``train_size`` vectors (capped so the sample fits a quarter of the memory budget) and
   train the IVF quantizer (and SQ/PQ codebooks) once;
2. cut the store's shards into parts whose codes fit the budget; each part is added to a copy of
   the empty trained index in its own process and written as ``part-N.index`` — a local process
   (``engine="local"``) or a Ray task on any machine of a Ray cluster (``engine="ray"``,
   ``distributed.ray_index``);
3. ``faiss.contrib.ondisk.merge_ondisk`` streams the parts' inverted lists (memory-mapped) into
   one ``index.ivfdata`` file; ``index.faiss`` then holds only the quantizer and a reference to
   it, and searching memory-maps the lists (the page cache holds what is hot);
4. recall@10 against exact search is measured on store vectors (their own id left out) and
   nprobe is tuned to the target, as for in-memory indexes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..distributed.index_part import PartResult, node_name
from ..embed import usable_cores
from ..errors import IndexFileError, InvalidArgumentError, unknown_name
from ..files import DirectoryLock
from ..progress import progress_bar
from ..store import EmbeddingStore, manifest_hash
from .exact import drop_self_matches, exact_search
from .gpu import index_to_cpu, index_to_gpu, wants_faiss_gpu
from .io import CARD_FILE, ONDISK_DATA, RECALL_IN_INDEX, IndexCard, check_index_output, quiet_c_stdout, save_index_files
from .spec import IndexSpec, _train_size, choose_index_spec, format_bytes

BUILD_FOLDER = ".ondisk-build.tmp"  # inside the output directory; removed when the build ends
EVAL_QUERIES = 500
RECALL_K = 10
TRAIN_SHARE = 4  # the training sample takes at most 1/TRAIN_SHARE of the memory budget
PART_SHARE = 2  # the parts being filled at once take at most 1/PART_SHARE of it
ENGINES = ("local", "ray")
RAY_TASK_THREADS = 1  # faiss threads (= CPUs asked) of one Ray task; the cluster runs one task per CPU


@dataclasses.dataclass(frozen=True)
class PartPlan:
    """Store shards added together into one partial index by one process."""

    number: int
    shards: tuple[str, ...]
    rows: int


def ondisk_spec(n: int, dim: int, kind: str, nlist: int | None = None) -> IndexSpec:
    """The IVF index for an on-disk build: auto → IVF-SQ8 (dim bytes per vector), ivf → IVF-Flat, ivfpq → IVF-PQ.

    The budget does not bound the codes (they live on disk), so the spec is chosen without it.
    ``nlist`` replaces the chosen list count (≈ 4·√n): fewer lists train and fill faster (both
    scale with nlist) at the price of longer lists to scan per probe; the training sample follows
    it (39 points per list, as ``spec``).

    Raises:
        InvalidArgumentError: flat or hnsw (they have no inverted lists to put on disk); an nlist
            < 1 or with fewer than 39 vectors per list.

    Example:
        >>> ondisk_spec(10_000_000, 384, "auto", nlist=8192).factory
        'IVF8192,SQ8'
    """
    if kind in ("flat", "hnsw"):
        raise InvalidArgumentError(f"--on-disk needs an IVF index (auto, ivf or ivfpq), not {kind!r}: only inverted "
                                   "lists can live on disk")
    if kind == "auto":
        spec = choose_index_spec(n, dim, kind="ivf", memory_budget_bytes=None)
        factory = spec.factory.replace(",Flat", ",SQ8")
        spec = dataclasses.replace(spec, factory=factory, estimated_bytes=spec.estimated_bytes // 4,
                                   reason=f"auto, on disk: {factory} over {n:,} × {dim} vectors (8-bit scalar codes "
                                          "in index.ivfdata, memory-mapped at search)")
    else:
        spec = choose_index_spec(n, dim, kind=kind, memory_budget_bytes=None)
        spec = dataclasses.replace(spec, reason=spec.reason + " (inverted lists on disk, memory-mapped at search)")
    return spec if nlist is None else _with_nlist(spec, n, nlist)


def _with_nlist(spec: IndexSpec, n: int, nlist: int) -> IndexSpec:
    if nlist < 1 or nlist * 39 > n:
        raise InvalidArgumentError(f"nlist must be between 1 and n/39 = {n // 39:,} (faiss k-means wants 39 training "
                                   f"points per list), got {nlist}; leave it out for the automatic choice")
    factory = f"IVF{nlist}," + spec.factory.split(",", 1)[1]
    train_size = _train_size(n, nlist, pq=spec.kind == "ivfpq")
    return dataclasses.replace(spec, factory=factory, train_size=int(train_size),
                               search_params={"nprobe": min(int(spec.search_params["nprobe"]), nlist)},
                               reason=spec.reason.replace(spec.factory, factory) + f" (nlist {nlist} asked for)")


def plan_parts(shards: list[tuple[str, int]], bytes_per_vector: int, part_budget: int) -> list[PartPlan]:
    """Group consecutive shards so each part's codes + ids stay within ``part_budget`` (at least one shard each)."""
    parts: list[PartPlan] = []
    current: list[str] = []
    rows = 0
    for name, count in shards:
        if current and (rows + count) * bytes_per_vector > part_budget:
            parts.append(PartPlan(len(parts), tuple(current), rows))
            current, rows = [], 0
        current.append(name)
        rows += count
    if current:
        parts.append(PartPlan(len(parts), tuple(current), rows))
    return parts


def training_size(spec: IndexSpec, nlist: int, n: int, dim: int, memory_budget_bytes: int | None) -> int:
    """Training vectors of an on-disk build: the spec's sample, cut to 1/TRAIN_SHARE of the budget.

    The budget may cut the sample down to faiss's 39 points per list, or to the spec's own sample
    where that is smaller (``MAX_TRAIN_SIZE`` caps it below 39 per list from 16,384 lists, i.e. ~10M
    vectors), but not further.

    Raises:
        InvalidArgumentError: the budget leaves room for fewer, with the budget to ask for.

    Example:
        >>> training_size(ondisk_spec(10_000_000, 384, "auto"), 16384, 10_000_000, 384, 4 * 10**9)
        500000
    """
    if memory_budget_bytes is None:
        return spec.train_size
    train_size = min(spec.train_size, max(1, memory_budget_bytes // (TRAIN_SHARE * 4 * dim)))
    needed = min(nlist * 39, spec.train_size, n)
    if train_size < needed:
        raise InvalidArgumentError(
            f"memory budget {format_bytes(memory_budget_bytes)} leaves room for {train_size:,} training vectors, "
            f"fewer than the {needed:,} that {spec.factory} needs; raise --memory-budget to at least "
            f"{format_bytes(TRAIN_SHARE * 4 * dim * needed, round_up=True)}")
    return train_size


def build_ondisk_index(store_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, kind: str = "auto",
                       memory_budget_bytes: int | None = None, device: str = "auto", overwrite: bool = False,
                       progress: bool | None = None, workers: int | None = None, target_recall: float = 0.95,
                       eval_queries: int = EVAL_QUERIES, seed: int = 0, engine: str = "local",
                       address: str | None = None, nlist: int | None = None) -> IndexCard:
    """Build an IVF index whose inverted lists live in ``out/index.ivfdata`` (see the module docstring).

    Called by ``build_index(..., on_disk=True)``; arguments as there, plus ``workers`` (parts filled
    at once: local processes, default 2, at most the cores; or Ray tasks, default one per CPU of the
    cluster), ``engine`` (local or ray) and ``address`` (the Ray cluster: None starts a local one,
    ``auto`` joins the running cluster, ``ray://host:10001``), and ``nlist`` (the inverted lists,
    default ≈ 4·√n; see ``ondisk_spec``). The memory budget bounds the training
    sample, the parts filled at once and the read chunks — not the index, which is on disk. With
    the Ray engine it bounds each task's part (half the budget) rather than all parts together,
    and each task asks Ray for its part's memory, so Ray places parts where a node has room.

    Returns:
        The card; ``build_params`` records ``on_disk``, ``engine``, the parts, ``ivfdata_bytes``,
        the workers' peak memory and ``part_timings`` (rows, seconds, peak memory, node per part).

    Raises:
        UnknownNameError: an engine other than local or ray. RayNotInstalledError: ray is missing.
        IndexFileError: a part's process or Ray task failed.
    """
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    from . import build as in_memory  # shared helpers: sampling, tuning, peak memory

    started = time.perf_counter()
    store = EmbeddingStore.open(store_dir)
    n, dim = len(store), store.dim
    spec = ondisk_spec(n, dim, kind, nlist)
    if engine not in ENGINES:
        raise unknown_name("engine", engine, ENGINES)
    if workers is not None and workers <= 0:
        raise InvalidArgumentError(f"--workers must be > 0, got {workers}")
    if address is not None and engine != "ray":
        raise InvalidArgumentError(f"--address {address} names a Ray cluster; add --engine ray to use it")
    cores = usable_cores()
    out_dir = check_index_output(out, overwrite=overwrite)
    if store.location.is_local and Path(store.location.root).resolve() == out_dir.resolve():
        raise InvalidArgumentError(f"--out {out} is the embedding store itself; write the index to its own directory")
    index = faiss.index_factory(dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    # codes + int64 id per vector, ×2: inverted lists grow by doubling, so a part may hold twice its bytes
    code_bytes = 2 * (faiss.extract_index_ivf(index).code_size + 8)
    train_size = training_size(spec, faiss.extract_index_ivf(index).nlist, n, dim, memory_budget_bytes)
    work = out_dir / BUILD_FOLDER
    timings: dict[str, float] = {}
    with contextlib.ExitStack() as session:
        if engine == "ray":
            from ..distributed.ray_embed import ray_session, import_ray
            from ..distributed.ray_index import largest_node_memory, ray_part_workers

            ray = import_ray()
            session.enter_context(ray_session(ray, address))
            workers = min(ray_part_workers(ray, workers, RAY_TASK_THREADS), len(store.manifest.shards))
            # per task (each may run on its own node), and within half the largest node's memory
            part_budget = min(memory_budget_bytes or 2**62, largest_node_memory(ray) or 2**62) // PART_SHARE
        else:
            workers = max(1, min(workers or 2, cores, len(store.manifest.shards)))
            part_budget = (memory_budget_bytes or 2**62) // (PART_SHARE * workers)
        chunk_rows = int(max(1024, min(in_memory.CHUNK_ROWS, part_budget // (8 * dim))))
        session.enter_context(DirectoryLock(out_dir))
        memory = session.enter_context(in_memory._PeakMemory())
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            # 1. sample the training set and the recall queries (store vectors, kept in the index).
            tick = time.perf_counter()
            rng = np.random.default_rng(seed)
            n_eval = min(eval_queries, n - 1) if n > RECALL_K + 1 else 0
            eval_positions = np.sort(rng.choice(n, n_eval, replace=False))
            train_positions = np.sort(rng.choice(n, min(train_size, n), replace=False))
            wanted = np.union1d(eval_positions, train_positions)
            sample_ids, sample_vectors, _ = in_memory.sample_rows(store, wanted, chunk_rows)
            query_ids = sample_ids[np.searchsorted(wanted, eval_positions)]
            queries = sample_vectors[np.searchsorted(wanted, eval_positions)]
            training = sample_vectors[np.searchsorted(wanted, train_positions)]
            del sample_vectors
            timings["sample"] = time.perf_counter() - tick

            # 2. train once (on the GPU when faiss has one), write the empty trained index.
            tick = time.perf_counter()
            ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
            ivf.cp.spherical = True  # cosine k-means, as the in-memory build
            if hasattr(ivf, "do_polysemous_training"):
                ivf.do_polysemous_training = False
            on_gpu = wants_faiss_gpu(device, spec.kind)
            if on_gpu:
                trained = index_to_cpu(_train(index_to_gpu(index, device), training))
            else:
                trained = _train(index, training)
            del training
            trained_path = work / "trained.index"
            faiss.write_index(trained, str(trained_path))
            timings["train"] = time.perf_counter() - tick

            # 3. fill the parts in worker processes or Ray tasks.
            tick = time.perf_counter()
            # parts small enough for the budget, and at least one per worker so that all of them work
            part_bytes = min(part_budget, -(-n // workers) * code_bytes)
            parts = plan_parts([(s.name, s.rows) for s in store.manifest.shards], code_bytes, part_bytes)
            part_paths = [str(work / f"part-{p.number:05d}.index") for p in parts]
            if engine == "ray":
                from ..distributed.ray_index import fill_parts_ray

                part_results = fill_parts_ray(ray, parts, part_paths, str(trained_path), store.uri,
                                              chunk_rows=chunk_rows, workers=workers, threads=RAY_TASK_THREADS,
                                              total=n, progress=progress)
            else:
                part_results = _fill_parts(parts, part_paths, str(trained_path), str(store.directory), chunk_rows,
                                           workers, max(1, cores // workers), n, progress)
            worker_peak = max((r.peak_memory_bytes for r in part_results), default=0)
            part_rate = float(np.median([r.rows / r.seconds if r.seconds > 0 else 0.0 for r in part_results])
                              if part_results else 0.0)
            timings["add"] = time.perf_counter() - tick

            # 4. merge the inverted lists into one file, memory-mapped.
            tick = time.perf_counter()
            merged = faiss.read_index(str(trained_path))
            with quiet_c_stdout():  # faiss prints "resizing ..." on stdout, which --json keeps for data
                merge_ondisk(merged, part_paths, str(work / ONDISK_DATA))
            for path in part_paths:
                os.unlink(path)
            if merged.ntotal != n:
                raise InvalidArgumentError(f"the store listed {n} rows but {merged.ntotal} were added; the store "
                                           "changed during the build — rebuild")
            timings["merge"] = time.perf_counter() - tick

            # 5. measure recall@10 vs exact search on store vectors (own id left out); tune nprobe.
            tick = time.perf_counter()
            k = min(RECALL_K, n - 1)
            if n_eval and k > 0:
                truth = drop_self_matches(exact_search(queries, store.iter_batches(chunk_rows), k + 1,
                                                       device="cpu")[1], query_ids, k)
                params, recall, points = in_memory._tune(spec, merged, queries, query_ids, truth, k, target_recall,
                                                         held_out=False)
            else:
                params, recall, points = dict(spec.search_params), None, []
            timings["tune"] = time.perf_counter() - tick

            # 6. move the lists into place, point the index at them, write index.faiss + card.
            tick = time.perf_counter()
            (out_dir / CARD_FILE).unlink(missing_ok=True)
            final_data = out_dir / ONDISK_DATA
            os.replace(work / ONDISK_DATA, final_data)  # the open mapping follows the file
            invlists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(merged).invlists)
            invlists.filename = str(final_data.resolve())  # plain faiss.read_index finds it here
            data_bytes = final_data.stat().st_size
            build_params = {**spec.build_params, "on_disk": True, "train_size": int(min(train_size, n)),
                            "chunk_rows": chunk_rows, "target_recall": target_recall, "parts": len(parts),
                            "workers": workers, "engine": engine, "ivfdata_bytes": data_bytes,
                            "worker_peak_memory_bytes": worker_peak, "part_rows_per_second": round(part_rate, 1),
                            "part_timings": [r.to_dict() for r in part_results],
                            "device": "faiss-gpu (training)" if on_gpu else "cpu",
                            "memory_budget_bytes": memory_budget_bytes,
                            # of peak_memory_bytes, the driver's own (not pages of the mapped lists and shards)
                            "peak_anonymous_memory_bytes": memory.anonymous_peak_growth,
                            **({"ray_address": address} if engine == "ray" else {})}

            def make_card(size_bytes: int) -> IndexCard:
                import sslsearch

                return IndexCard(
                    factory=spec.factory, kind=spec.kind, metric=spec.metric, dim=dim, ntotal=int(merged.ntotal),
                    search_params=params, encoder=dict(store.encoder),
                    store={"path": store.uri, "manifest_sha256": manifest_hash(store.location),
                           "rows": n},
                    build_seconds=round(time.perf_counter() - started, 3), peak_memory_bytes=memory.peak_growth,
                    recall_at_10=None if recall is None else round(float(recall), 4),
                    n_eval_queries=len(queries) if recall is not None else 0, size_bytes=size_bytes,
                    sslsearch_version=sslsearch.__version__, faiss_version=faiss.__version__, reason=spec.reason,
                    build_params=build_params, recall_k=max(k, 0), tuning=tuple(points),
                    recall_definition=RECALL_IN_INDEX,
                    timings={name: round(seconds, 3)
                             for name, seconds in {**timings, "save": time.perf_counter() - tick}.items()})

            card = save_index_files(out_dir, merged, make_card)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return card


def _train(index: Any, training: np.ndarray) -> Any:
    index.train(training)
    return index


def _fill_parts(parts: list[PartPlan], part_paths: list[str], trained_path: str, store_dir: str, chunk_rows: int,
                workers: int, threads: int, total: int, progress: bool | None) -> list[PartResult]:
    """Fill every part, ``workers`` at a time, each in a fresh ``python -m sslsearch.distributed.index_part`` process.

    Fresh interpreters rather than multiprocessing: forking a process whose OpenMP pool has run
    (faiss training) can hang the child, and spawn would re-run the caller's unguarded script.
    Returns one PartResult per part, in plan order.
    """
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    pending = list(zip(parts, part_paths))
    running: list[tuple[PartPlan, subprocess.Popen[str]]] = []
    results: dict[int, PartResult] = {}
    with progress_bar(total, "index parts", unit="vec", enabled=progress) as bar:
        try:
            while pending or running:
                while pending and len(running) < workers:
                    part, path = pending.pop(0)
                    job = json.dumps({"trained": trained_path, "store": store_dir, "shards": part.shards, "out": path,
                                      "chunk_rows": chunk_rows, "threads": threads})
                    running.append((part, subprocess.Popen([sys.executable, "-m", "sslsearch.distributed.index_part", job],
                                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                                           env=env)))
                part, process = running.pop(0)
                stdout, stderr = process.communicate()
                if process.returncode != 0:
                    last = (stderr.strip().splitlines() or ["(no output)"])[-1]
                    raise IndexFileError(f"the process filling index part {part.number} (shards {part.shards[0]}…"
                                         f"{part.shards[-1]}) failed with exit code {process.returncode}: {last}")
                rows, rss, seconds = json.loads(stdout.strip().splitlines()[-1])
                results[part.number] = PartResult(part.number, rows, seconds, rss, node_name())
                bar.update(rows)
        finally:
            for _, process in running:
                process.kill()
                process.wait()
    return [results[part.number] for part in parts]
