"""Search overhead: sslsearch ``Index.search`` / ``search_arrays`` vs the raw faiss ``index.search`` call
on the same index, at batch 1,000 (QPS ratio; goal ≥ 0.97) and batch 1 (µs added per query; goal ≤ 50).

    .venv/bin/python benchmarks/bench_search.py            # 100k × 384, the auto index (HNSW32)
    .venv/bin/python benchmarks/bench_search.py --quick    # 20k × 128, CI-sized
    .venv/bin/python benchmarks/bench_search.py --kind flat --n 20000

Variants, all on the same loaded index and the same L2-normalised queries:
  raw          index.faiss_index.search(queries, k)        (the reference)
  arrays       Index.search_arrays(queries, k)             (validated raw path)
  search       Index.search(queries, k)                    (normalises queries, typed results)
  search+read  Index.search(...) and every Neighbor read    (the typed objects built, paths looked up)
Each variant is timed back to back with the raw call on the same queries, alternating which runs
first; the table gives per-pair QPS ratios (batch) and per-pair added µs (single queries), as the
mean of the medians over the two orders (the second call of a pair finds warm caches). Paired
figures resist the load spikes of a shared box better than ratios of separate medians.
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

import numpy as np

from sslsearch import StoreWriter, __version__, build_index, iter_synthetic_embeddings, load_index, synthetic_embeddings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import git_commit  # noqa: E402 - the benchmarks' shared commit record

RESULTS = Path(__file__).parent / "results" / "search.jsonl"




def machine() -> dict[str, object]:
    import faiss
    import torch

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"host": platform.node(), "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "load_1min_at_start": load, "python": platform.python_version(), "numpy": np.__version__,
            "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(), "torch": torch.__version__,
            "sslsearch": __version__, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def write_store(directory: Path, n: int, dim: int, seed: int) -> None:
    """A float16 store of ``n`` synthetic (clustered, low-intrinsic-dimension) vectors."""
    fingerprint = {"id": f"enc-synthetic-{dim}", "spec": f"synthetic:{dim}", "dim": dim}
    with StoreWriter(directory, dim=dim, dtype="float16", encoder=fingerprint, source_root="/synthetic",
                     shard_rows=100_000) as writer:
        start = 0
        for chunk in iter_synthetic_embeddings(n, dim, seed=seed):
            ids = np.arange(start, start + len(chunk))
            writer.write(ids, [f"v/{i}.png" for i in ids], chunk)
            start += len(chunk)


def per_call_seconds(function, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - started) / calls


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20k × 128 vectors, fewer repeats (CI-sized)")
    parser.add_argument("--n", type=int, default=None, help="vectors in the index (default 100k; quick 20k)")
    parser.add_argument("--dim", type=int, default=None, help="dimension (default 384; quick 128)")
    parser.add_argument("--kind", default="auto", help="index kind (default auto)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1000, help="queries per batch call")
    parser.add_argument("--singles", type=int, default=None, help="single-query calls per repeat (default 1000)")
    parser.add_argument("--repeats", type=int, default=None, help="paired batch repeats per variant (default 15; quick 9)")
    parser.add_argument("--threads", type=int, default=None,
                        help="faiss OpenMP threads (default: faiss's own, one per core); on a shared, oversubscribed "
                             "box --threads 1 avoids multi-millisecond OpenMP stalls that swamp the overhead measured")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-save", action="store_true", help="do not append to benchmarks/results/search.jsonl")
    args = parser.parse_args(argv)
    n = args.n or (20_000 if args.quick else 100_000)
    dim = args.dim or (128 if args.quick else 384)
    repeats = args.repeats or (9 if args.quick else 15)
    singles = args.singles or (300 if args.quick else 1000)
    if args.threads:
        import faiss

        faiss.omp_set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        store_dir, index_dir = Path(tmp) / "emb", Path(tmp) / "idx"
        print(f"writing a store of {n:,} × {dim} synthetic vectors ...", file=sys.stderr)
        write_store(store_dir, n, dim, args.seed)
        print(f"building the {args.kind} index ...", file=sys.stderr)
        card = build_index(store_dir, index_dir, kind=args.kind, memory_budget=None, progress=False)
        index = load_index(index_dir)
        raw = index.faiss_index
        # held-out queries from the same distribution (rows n.. of the same generator), normalised
        queries = synthetic_embeddings(n + args.batch, dim, seed=args.seed)[n:]
        k = args.k

        variants = {
            "raw": lambda q: raw.search(q, k),
            "arrays": lambda q: index.search_arrays(q, k),
            "search": lambda q: index.search(q, k),
            "search+read": lambda q: [r.neighbors for r in index.search(q, k)],
        }
        for function in variants.values():  # warm-up: caches, the store's path table, thread pools
            function(queries[:10])
            function(queries)

        # Paired timing: each variant runs back to back with the raw call (alternating which goes
        # first), and the per-pair ratio / difference is kept; medians of those resist load spikes.
        batch_ratio: dict[str, list[float]] = {name: [] for name in variants}
        batch_seconds: dict[str, list[float]] = {name: [] for name in variants}
        single_added: dict[str, list[float]] = {name: [] for name in variants}
        single_seconds: dict[str, list[float]] = {name: [] for name in variants}
        for repeat in range(repeats):
            for name, function in variants.items():
                order = [variants["raw"], function] if repeat % 2 == 0 else [function, variants["raw"]]
                seconds = []
                for call in order:
                    started = time.perf_counter()
                    call(queries)
                    seconds.append(time.perf_counter() - started)
                raw_seconds, own_seconds = seconds if repeat % 2 == 0 else seconds[::-1]
                batch_ratio[name].append(raw_seconds / own_seconds)
                batch_seconds[name].append(own_seconds)
        for position in range(singles):
            row = queries[position:position + 1]
            for name, function in variants.items():
                order = [variants["raw"], function] if position % 2 == 0 else [function, variants["raw"]]
                seconds = []
                for call in order:
                    started = time.perf_counter()
                    call(row)
                    seconds.append(time.perf_counter() - started)
                raw_seconds, own_seconds = seconds if position % 2 == 0 else seconds[::-1]
                single_added[name].append(own_seconds - raw_seconds)
                single_seconds[name].append(own_seconds)

    def balanced(values: list[float], *, geometric: bool = False) -> float:
        """Mean of the medians of the raw-first and the raw-second pairs: the second call of a pair
        runs on caches the first one warmed (the same query walks the same graph nodes), and
        averaging both orders cancels that advantage."""
        first, second = statistics.median(values[0::2]), statistics.median(values[1::2])
        return (first * second) ** 0.5 if geometric else (first + second) / 2

    figures = {
        name: {
            "batch_qps": round(len(queries) / statistics.median(batch_seconds[name]), 1),
            "batch_qps_ratio_vs_raw": round(balanced(batch_ratio[name], geometric=True), 4),
            "single_us_per_query": round(statistics.median(single_seconds[name]) * 1e6, 2),
            "single_us_added_vs_raw": round(balanced(single_added[name]) * 1e6, 2),
        }
        for name in variants
    }
    header = f"{'variant':<12} {'batch QPS':>11} {'ratio':>7} {'µs/query (batch 1)':>19} {'added µs':>9}"
    print(f"search overhead: {card.factory} over {n:,} × {dim}, k={k}, batch {len(queries)}, "
          f"{singles} single queries, medians of paired runs ({repeats} batch pairs)")
    print(header)
    print("-" * len(header))
    for name, values in figures.items():
        print(f"{name:<12} {values['batch_qps']:>11,.0f} {values['batch_qps_ratio_vs_raw']:>7.3f} "
              f"{values['single_us_per_query']:>19.1f} {values['single_us_added_vs_raw']:>9.1f}")
    record = {"bench": "search", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": git_commit(),
              "machine": machine(), "argv": sys.argv[1:] if argv is None else argv, "n": n, "dim": dim, "k": k,
              "factory": card.factory, "search_params": card.search_params, "batch": len(queries),
              "singles": singles, "repeats": repeats, "figures": figures,
              "goals": {"batch_ratio_min": 0.97, "single_added_us_max": 50}}
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
