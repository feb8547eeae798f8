"""Index choice and exact search: the ``auto`` index vs hnswlib and usearch (M=32), and exact k-NN vs GEMM.

    .venv/bin/python benchmarks/bench_index.py             # 100k × 384
    .venv/bin/python benchmarks/bench_index.py --full      # 1M × 384 (long: three HNSW builds)
    .venv/bin/python benchmarks/bench_index.py --quick     # 30k × 128, CI-sized

Data: clustered, low-intrinsic-dimension synthetic embeddings (``sslsearch.synthetic_embeddings``),
written as a float16 store like ``sslsearch embed`` writes; every library indexes the same
float16-rounded vectors, and 1,000 held-out vectors of the same distribution are the queries.

1. ANN: ``build_index(kind="auto")`` (whole call: read the store, sample, add, measure, tune, save)
   vs hnswlib and usearch with M=32, efConstruction=200 on in-memory arrays; then a sweep of
   efSearch (nprobe for IVF) per library: recall@10 against exact search and QPS of a 1,000-query
   batch on all threads. Compared at matched recall: the QPS of each library's first sweep point
   with recall@10 ≥ 0.95.
2. Exact search, batch of 1,000 queries over the whole set: distances/s of ``exact_search`` (torch
   and faiss block backends) and faiss ``IndexFlatIP.search``, vs the GEMM ceiling — the same
   (1,000 × d) @ (d × block) matrix products in torch with no top-k — on this machine.

Medians of repeats after a warm-up; the box is shared, so read the ratios. Appends a JSON line to
benchmarks/results/index.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sslsearch import (EmbeddingStore, StoreWriter, __version__, build_index, exact_search, iter_synthetic_embeddings,
                       load_index, recall_at_k, synthetic_embeddings)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import git_commit  # noqa: E402 - the benchmarks' shared commit record

RESULTS = Path(__file__).parent / "results" / "index.jsonl"
M = 32
EF_CONSTRUCTION = 200  # the peers' (hnswlib's default); sslsearch uses its own choice (spec.HNSW_EF_CONSTRUCTION)
TARGET = 0.95
# efSearch steps of the peers: sslsearch's own HNSW ladder (Index.search_param_ladder) when it built HNSW, so every
# library sweeps the same steps; these (that ladder when written) when it chose another kind
PEER_EF = (10, 12, 16, 20, 24, 28, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 384, 512, 768, 1024)




def machine(threads: int) -> dict[str, object]:
    import faiss
    import hnswlib  # noqa: F401
    import torch
    import usearch

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"host": platform.node(), "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": threads, "load_1min_at_start": load, "python": platform.python_version(),
            "numpy": np.__version__, "faiss": faiss.__version__, "torch": torch.__version__,
            "usearch": usearch.__version__, "hnswlib": _version("hnswlib"), "sslsearch": __version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median_seconds(function: Callable[[], Any], repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def write_store(directory: Path, n: int, dim: int, seed: int) -> None:
    fingerprint = {"id": f"enc-synthetic-{dim}", "spec": f"synthetic:{dim}", "dim": dim}
    with StoreWriter(directory, dim=dim, dtype="float16", encoder=fingerprint, source_root="/synthetic",
                     shard_rows=100_000) as writer:
        start = 0
        for chunk in iter_synthetic_embeddings(n, dim, seed=seed):
            ids = np.arange(start, start + len(chunk))
            writer.write(ids, [f"v/{i}.png" for i in ids], chunk)
            start += len(chunk)


def sweep(search: Callable[[Any], np.ndarray], settings: list[Any], queries: np.ndarray, truth: np.ndarray,
          repeats: int) -> list[dict[str, Any]]:
    """recall@10 and batch QPS per setting; stops at the second point with recall ≥ 0.995."""
    points, above = [], 0
    for setting in settings:
        found = search(setting)
        recall = recall_at_k(found, truth)
        seconds = median_seconds(lambda: search(setting), repeats)
        points.append({"setting": setting, "recall": round(recall, 4), "qps": round(len(queries) / seconds, 1)})
        above += recall >= 0.995
        if above >= 2:
            break
    return points


def at_target(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first sweep point reaching the target, plus the QPS interpolated at exactly the target
    between it and the point before (equal to its own QPS when the first point already reaches it)."""
    for position, point in enumerate(points):
        if point["recall"] >= TARGET:
            interpolated = point["qps"]
            if position > 0:
                low = points[position - 1]
                share = (TARGET - low["recall"]) / max(point["recall"] - low["recall"], 1e-9)
                interpolated = low["qps"] + share * (point["qps"] - low["qps"])
            return {**point, "qps_interpolated_at_target": round(interpolated, 1)}
    return None


def bench_ann(store_dir: Path, tmp: Path, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, *,
              threads: int, repeats: int, peers: bool) -> dict[str, Any]:
    import hnswlib
    from usearch.index import Index as UsearchIndex

    n, dim = vectors.shape
    k = truth.shape[1]
    results: dict[str, Any] = {}

    log("sslsearch: build_index(kind='auto') ...")
    started = time.perf_counter()
    card = build_index(store_dir, tmp / "idx", kind="auto", memory_budget="4GB", progress=False)
    total = time.perf_counter() - started
    index = load_index(tmp / "idx")
    settings = index.search_param_ladder()  # efSearch (HNSW) or nprobe (IVF) steps, fastest first
    peer_ef = [s["efSearch"] for s in settings] if card.kind == "hnsw" else list(PEER_EF)

    def ours(setting: dict[str, Any]) -> np.ndarray:
        index.set_search_params(setting)
        return index.search_arrays(queries, k)[1]

    log("sslsearch: sweep ...")
    points = sweep(ours, settings, queries, truth, repeats)
    index.set_search_params(card.search_params)
    tuned_recall = recall_at_k(index.search_arrays(queries, k)[1], truth)
    results["sslsearch"] = {"factory": card.factory, "build_seconds": round(total, 2),
                            "build_phases": card.timings, "card_recall_at_10": card.recall_at_10,
                            "tuned_search_params": card.search_params, "tuned_recall_on_queries": round(tuned_recall, 4),
                            "size_bytes": card.size_bytes, "peak_memory_bytes": card.peak_memory_bytes,
                            "sweep": points, "at_target": at_target(points)}
    del index
    if not peers:
        return results

    log("hnswlib: build ...")
    peer = hnswlib.Index(space="ip", dim=dim)
    peer.init_index(max_elements=n, M=M, ef_construction=EF_CONSTRUCTION, random_seed=0)
    started = time.perf_counter()
    peer.add_items(vectors, np.arange(n), num_threads=threads)
    build = time.perf_counter() - started

    def hnswlib_search(ef: int) -> np.ndarray:
        peer.set_ef(max(ef, k))
        return peer.knn_query(queries, k=k, num_threads=threads)[0].astype(np.int64)

    log("hnswlib: sweep ...")
    points = sweep(hnswlib_search, peer_ef, queries, truth, repeats)
    results["hnswlib"] = {"build_seconds": round(build, 2), "sweep": points, "at_target": at_target(points)}
    del peer

    log("usearch: build ...")
    peer_u = UsearchIndex(ndim=dim, metric="ip", dtype="f32", connectivity=M, expansion_add=EF_CONSTRUCTION,
                          expansion_search=64)
    started = time.perf_counter()
    peer_u.add(np.arange(n), vectors, threads=threads)
    build = time.perf_counter() - started

    def usearch_search(ef: int) -> np.ndarray:
        peer_u.expansion_search = max(ef, k)
        return np.asarray(peer_u.search(queries, k, threads=threads).keys, dtype=np.int64)

    log("usearch: sweep ...")
    points = sweep(usearch_search, peer_ef, queries, truth, repeats)
    results["usearch"] = {"build_seconds": round(build, 2), "sweep": points, "at_target": at_target(points)}
    return results


def bench_exact(vectors: np.ndarray, queries: np.ndarray, *, repeats: int, block_size: int,
                device: str = "cpu") -> dict[str, Any]:
    """Exact k-NN rates vs the GEMM ceiling on ``device``; with ``cuda`` the blocks live on the GPU (as a
    database held there would), and faiss's CPU search runs in the same run as the baseline."""
    import faiss
    import torch

    n, dim = vectors.shape
    k = 10
    distances = len(queries) * n
    on = torch.device(device)
    query_tensor = torch.from_numpy(queries).to(on)
    blocks = [torch.from_numpy(vectors[s:s + block_size]).to(on) for s in range(0, n, block_size)]
    scratch = torch.empty(len(queries), block_size, device=on)
    sync = torch.cuda.synchronize if on.type == "cuda" else (lambda: None)

    def gemm() -> None:
        with torch.inference_mode():
            for block in blocks:
                torch.mm(query_tensor, block.T, out=scratch[:, :len(block)])
        sync()

    def on_device() -> None:  # exact_search over blocks already on the device (ids = row numbers)
        exact_search(queries, ((torch.arange(s, s + len(b), device=on), b)
                               for s, b in zip(range(0, n, block_size), blocks)), k, device=device)
        sync()

    flat = faiss.IndexFlatIP(dim)
    flat.add(vectors)
    timings = {"gemm_ceiling": median_seconds(gemm, repeats)}
    if on.type == "cuda":
        timings["exact_search_torch_cuda"] = median_seconds(on_device, repeats)
        timings["exact_search_torch_cuda_from_host"] = median_seconds(
            lambda: (exact_search(queries, vectors, k, device=device, block_size=block_size), sync()), repeats)
    else:
        timings["exact_search_torch"] = median_seconds(
            lambda: exact_search(queries, vectors, k, device="cpu", block_size=block_size), repeats)
    timings["exact_search_faiss"] = median_seconds(
        lambda: exact_search(queries, vectors, k, backend="faiss", block_size=block_size), repeats)
    timings["faiss_IndexFlatIP"] = median_seconds(lambda: flat.search(queries, k), repeats)
    gemm_rate = distances / timings["gemm_ceiling"]
    return {name: {"seconds": round(seconds, 4), "distances_per_s": round(distances / seconds),
                   "fraction_of_gemm": round(distances / seconds / gemm_rate, 3),
                   "gflops": round(2 * dim * distances / seconds / 1e9, 2)}
            for name, seconds in timings.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="30k × 128 (CI-sized)")
    parser.add_argument("--full", action="store_true", help="1M × 384 (long)")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--dim", type=int, default=None)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats (default 5; quick 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every library")
    parser.add_argument("--block-size", type=int, default=16_384, help="database rows per exact-search block")
    parser.add_argument("--no-peers", action="store_true", help="skip hnswlib and usearch")
    parser.add_argument("--no-exact", action="store_true", help="skip the exact-search section")
    parser.add_argument("--no-ann", action="store_true", help="skip the ANN section (exact search only)")
    parser.add_argument("--device", default="cpu", help="exact section: cpu, or cuda (GEMM ceiling and exact_search "
                        "on the GPU; faiss CPU search in the same run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    n = args.n or (30_000 if args.quick else 1_000_000 if args.full else 100_000)
    dim = args.dim or (128 if args.quick else 384)
    repeats = args.repeats or (3 if args.quick else 5)

    import faiss
    import torch

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    record: dict[str, Any] = {"bench": "index", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": git_commit(),
                              "machine": machine(args.threads), "argv": sys.argv[1:] if argv is None else argv,
                              "n": n, "dim": dim, "queries": args.queries, "k": 10, "M": M,
                              "ef_construction": EF_CONSTRUCTION, "target_recall": TARGET}
    with tempfile.TemporaryDirectory(prefix="bench_index_") as tmp_name:
        tmp = Path(tmp_name)
        log(f"writing a float16 store of {n:,} × {dim} synthetic vectors ...")
        write_store(tmp / "emb", n, dim, args.seed)
        vectors = EmbeddingStore.open(tmp / "emb").read_all().embeddings  # the float16-rounded vectors
        queries = synthetic_embeddings(n + args.queries, dim, seed=args.seed)[n:]
        if not args.no_ann:
            log("exact ground truth ...")
            truth = exact_search(queries, vectors, 10, device="cpu")[1]
            record["ann"] = bench_ann(tmp / "emb", tmp, vectors, queries, truth, threads=args.threads,
                                      repeats=repeats, peers=not args.no_peers)
        if not args.no_exact:
            log("exact search vs GEMM ...")
            record["exact"] = bench_exact(vectors, queries, repeats=repeats, block_size=args.block_size,
                                          device=args.device)
            record["exact_device"] = args.device
    report(record)
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(f"appended to {RESULTS}")


def report(record: dict[str, Any]) -> None:
    n, dim = record["n"], record["dim"]
    if "ann" in record:
        report_ann(record)
    if "exact" in record:
        print(f"\nexact k-NN, {record['queries']} queries × {n:,} vectors, k=10, GEMM ceiling on "
              f"{record.get('exact_device', 'cpu')}")
        header = f"{'method':<22} {'seconds':>8} {'Mdist/s':>9} {'GFLOP/s':>8} {'vs GEMM':>8}"
        print(header)
        print("-" * len(header))
        for name, values in record["exact"].items():
            print(f"{name:<22} {values['seconds']:>8.3f} {values['distances_per_s'] / 1e6:>9.1f} "
                  f"{values['gflops']:>8.1f} {values['fraction_of_gemm']:>8.3f}")


def report_ann(record: dict[str, Any]) -> None:
    n, dim = record["n"], record["dim"]
    print(f"\nANN on {n:,} × {dim} (M={M}, efConstruction={EF_CONSTRUCTION}, {record['machine']['threads']} threads, "
          f"{record['queries']} queries, recall@10 vs exact)")
    header = (f"{'library':<26} {'build s':>8} {'first setting ≥0.95':>20} {'recall':>7} {'QPS':>9} "
              f"{'QPS@0.95 interp.':>17} {'/ best peer':>12}")
    print(header)
    print("-" * len(header))
    ann = record["ann"]
    peer_qps = [v["at_target"]["qps_interpolated_at_target"] for name, v in ann.items()
                if name != "sslsearch" and v.get("at_target")]
    best_peer = max(peer_qps) if peer_qps else None
    for name, values in ann.items():
        point = values.get("at_target") or {}
        label = name if name != "sslsearch" else f"sslsearch ({values['factory']})"
        setting = json.dumps(point["setting"]) if point else "not reached"
        interpolated = point.get("qps_interpolated_at_target", float("nan"))
        ratio = f"{interpolated / best_peer:.2f}" if point and best_peer else "-"
        print(f"{label:<26} {values['build_seconds']:>8.1f} {setting:>20} {point.get('recall', float('nan')):>7.3f} "
              f"{point.get('qps', float('nan')):>9,.0f} {interpolated:>17,.0f} {ratio:>12}")
    if "sslsearch" in ann:
        ours = ann["sslsearch"]
        print(f"sslsearch card: recall@10 {ours['card_recall_at_10']} at {ours['tuned_search_params']} "
              f"(on these queries: {ours['tuned_recall_on_queries']}); build phases {ours['build_phases']}")


if __name__ == "__main__":
    main()
