"""Evaluation benchmark: time of `bench knn` and `bench retrieval`, and their exact k-NN search vs the GEMM ceiling.

Both commands are dominated by one exact k-NN search of every query against the database
(k = 200 for the DINO k-NN protocol, k = 100 for retrieval's mAP@100), a blocked matrix product
followed by a top-k. So the figure that matters is the search's rate in distances/s (queries ×
database rows / seconds), compared with the machine's float32 matmul rate measured in the same
run (a (4096 × dim) @ (dim × 16384) torch matmul, FLOP/s ÷ 2·dim = distances/s, measured between
every row and taken as the median, so it follows the load of a shared machine): that is the ceiling
for any exact search by inner product. faiss's brute-force ``faiss.knn`` (IndexFlatIP) on
the same data is the peer reference. The `bench knn` / `bench retrieval` rows are the library calls
behind those commands: reading the two Parquet stores (float16 → float32, labels, paths), then the
search and the votes (k-NN, 4 ks × 2 votes) or the relevance, recall, precision and AP (retrieval);
"end to end" adds the two.

    python benchmarks/bench_eval.py --quick     # 2,000 queries vs 20,000 rows (CI-sized)
    python benchmarks/bench_eval.py             # 10,000 vs 100,000 (a few minutes on 2 cores)
    python benchmarks/bench_eval.py --full      # 100,000 vs 1,000,000 (the issue's size: use a GPU)
    python benchmarks/bench_eval.py --full --commands-only   # the same, only the two commands (CPU: ~20 min)

Vectors come from ``sslsearch.synthetic_embeddings`` (clustered, low intrinsic dimension, dim 384),
stored as float16 like ``sslsearch embed`` does; labels (10 classes, the argmax of random
projections) only give the votes and AP something to count: timing does not depend on them. Medians of repeats after a warm-up. Appends one
JSON line to benchmarks/results/eval.jsonl.
"""
from __future__ import annotations

import argparse
import sys
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sslsearch import (StoreWriter, __version__, evaluate_knn, evaluate_retrieval, exact_search, iter_synthetic_embeddings,
                       load_split, resolve_device)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import git_commit  # noqa: E402 - the benchmarks' shared commit record

RESULTS = Path(__file__).resolve().parent / "results" / "eval.jsonl"
SIZES = {"quick": (2_000, 20_000), "default": (10_000, 100_000), "full": (100_000, 1_000_000)}
N_CLASSES = 10




def machine() -> dict[str, object]:
    import faiss

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"host": platform.node(), "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_1min_at_start": load, "python": platform.python_version(),
            "torch": torch.__version__, "faiss": faiss.__version__, "numpy": np.__version__, "sslsearch": __version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def median_seconds(run, repeats: int, warm_up=None) -> float:
    (warm_up or run)()  # warm-up: threads, allocator, caches (a smaller call for the heavy ones)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def gemm_flops(dim: int, device: torch.device) -> float:
    """FLOP/s of a float32 (4096 × dim) @ (dim × 16384) matmul (median of 5 after a warm-up).

    Divided by 2·dim it is the distances/s ceiling of any exact search by inner product.
    """
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(4096, dim, generator=generator).to(device)
    block = torch.randn(16384, dim, generator=generator).to(device)

    def run() -> None:
        product = queries @ block.T
        if device.type == "cuda":
            torch.cuda.synchronize()
        del product

    return 2 * 4096 * 16384 * dim / median_seconds(run, 5)


def make_labels(vectors: np.ndarray, directions: np.ndarray) -> list[str]:
    return [f"class{v:03d}" for v in np.argmax(vectors @ directions, axis=1)]


def write_store(directory: Path, n: int, dim: int, seed: int, directions: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """A float16 store of n synthetic vectors with labels; returns the vectors as stored (as float32) and the labels."""
    encoder = {"id": "bench-eval-synthetic", "spec": f"synthetic:dim{dim}"}
    parts, labels, start = [], [], 0
    with StoreWriter(directory, dim=dim, dtype="float16", encoder=encoder, source_root=str(directory),
                     extra_columns=("label",), shard_rows=100_000) as writer:
        for chunk in iter_synthetic_embeddings(n, dim, seed=seed):
            chunk_labels = make_labels(chunk, directions)
            writer.write(np.arange(start, start + len(chunk)), [f"{label}/{start + i}.png" for i, label in
                                                                enumerate(chunk_labels)], chunk, label=chunk_labels)
            parts.append(chunk.astype(np.float16).astype(np.float32))
            labels += chunk_labels
            start += len(chunk)
    return np.concatenate(parts), labels


def search_rows(record, queries: np.ndarray, few: np.ndarray, database: np.ndarray, device: torch.device,
                repeats: int) -> None:
    """Time exact_search (default and torch backends) and raw faiss.knn at k=200 on the arrays."""
    record(f"exact_search k=200 (default: {'torch' if device.type == 'cuda' else 'faiss'} backend)",
           median_seconds(lambda: exact_search(queries, database, 200, device=device), repeats,
                          lambda: exact_search(few, database, 200, device=device)))
    if device.type == "cpu":
        record("exact_search k=200 (torch backend)",
               median_seconds(lambda: exact_search(queries, database, 200, device=device, backend="torch"),
                              repeats, lambda: exact_search(few, database, 200, device=device, backend="torch")))
        import faiss

        record("faiss.knn k=200 (IndexFlatIP)",
               median_seconds(lambda: faiss.knn(queries, database, 200, metric=faiss.METRIC_INNER_PRODUCT), repeats,
                              lambda: faiss.knn(few, database, 200, metric=faiss.METRIC_INNER_PRODUCT)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="2,000 queries vs 20,000 rows")
    size.add_argument("--full", action="store_true", help="100,000 queries vs 1,000,000 rows, 1 repeat")
    parser.add_argument("--queries", type=int, help="override the number of queries")
    parser.add_argument("--database", type=int, help="override the number of database rows")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, help="timed repeats (default: 3 quick, 2 default, 1 full)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/results/eval.jsonl")
    parser.add_argument("--commands-only", action="store_true",
                        help="time only the two commands (bench knn, bench retrieval) and the GEMM ceiling, not the "
                             "search backends on their own (what --full can afford on a CPU)")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full" if args.full else "default"
    n_queries, n_database = SIZES[mode]
    n_queries, n_database = args.queries or n_queries, args.database or n_database
    repeats = args.repeats or {"quick": 3, "default": 2, "full": 1}[mode]
    device = resolve_device(args.device)
    info = machine()
    print(f"bench_eval ({mode}): {n_queries:,} queries vs {n_database:,} database rows, dim {args.dim}, device {device}, "
          f"{info['torch_threads']} torch threads, load {info['load_1min_at_start']}", flush=True)

    directions = np.random.default_rng(123).standard_normal((args.dim, N_CLASSES)).astype(np.float32)
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        started = time.perf_counter()
        database, database_labels = write_store(Path(tmp) / "database", n_database, args.dim, 0, directions)
        queries, query_labels = write_store(Path(tmp) / "queries", n_queries, args.dim, 1, directions)
        print(f"stores written in {time.perf_counter() - started:.1f} s", flush=True)
        pairs = n_queries * n_database
        gemm_runs: list[float] = []

        def gemm() -> None:  # measured between the other rows: the ceiling tracks the machine's load
            gemm_runs.append(gemm_flops(args.dim, device))

        def record(name: str, seconds: float, distances: int = pairs) -> None:
            figures[name] = {"seconds": seconds, "distances_per_second": distances / seconds}
            print(f"  {name}: {seconds:.2f} s", flush=True)
            gemm()

        gemm()
        few = queries[:256]
        if not args.commands_only:
            search_rows(record, queries, few, database, device, repeats)
        database_dir, queries_dir = Path(tmp) / "database", Path(tmp) / "queries"
        loaded = {}

        def read_stores() -> None:
            loaded["split"] = load_split(database_dir, queries=queries_dir)

        record("read both stores (load_split)", median_seconds(read_stores, repeats, lambda: None))
        split = loaded["split"]
        record("bench knn after reading (search k=200, votes)",
               median_seconds(lambda: evaluate_knn(split, device=str(device)), repeats, lambda: None))
        record("bench retrieval after reading (search k=100, mAP@100)",
               median_seconds(lambda: evaluate_retrieval(split, device=str(device)), repeats, lambda: None))
        read = figures["read both stores (load_split)"]["seconds"]
        for name, key in (("bench knn end to end", "bench knn after reading (search k=200, votes)"),
                          ("bench retrieval end to end", "bench retrieval after reading (search k=100, mAP@100)")):
            seconds = read + figures[key]["seconds"]
            figures[name] = {"seconds": seconds, "distances_per_second": pairs / seconds}
    flops = statistics.median(gemm_runs)
    ceiling = flops / (2 * args.dim)
    figures = {"gemm float32 (ceiling)": {"seconds": pairs / ceiling, "distances_per_second": ceiling,
                                          "gflops_runs": [round(f / 1e9, 2) for f in gemm_runs]}, **figures}

    print()
    print(f"{'':56s} {'seconds':>9s} {'distances/s':>13s} {'of GEMM':>8s}")
    for name, values in figures.items():
        fraction = values["distances_per_second"] / ceiling
        values["fraction_of_gemm"] = fraction
        print(f"{name:56s} {values['seconds']:9.2f} {values['distances_per_second']:13.3e} {fraction:8.2f}")
    print(f"\nGEMM: median {flops / 1e9:.1f} GFLOP/s float32 on {device} over {len(gemm_runs)} measurements between the "
          f"rows (range {min(gemm_runs) / 1e9:.1f}-{max(gemm_runs) / 1e9:.1f})")
    if not args.no_record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        line = {"bench": "eval", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": git_commit(), "mode": mode,
                "machine": info, "device": str(device), "n_queries": n_queries, "n_database": n_database,
                "dim": args.dim, "repeats": repeats, "commands_only": args.commands_only, "gemm_gflops": flops / 1e9,
                "figures": figures}
        with open(RESULTS, "a") as handle:
            handle.write(json.dumps(line) + "\n")
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
