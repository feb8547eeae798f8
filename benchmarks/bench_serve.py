"""Search service overhead: QPS and p50/p99 latency of `sslsearch serve` over HTTP keep-alive at batch 1
(or --batch N queries per request), against in-process ``Index.search`` on the same index in the same run
(goal at batch 1: HTTP QPS ≥ 0.8 × in-process).

    .venv/bin/python benchmarks/bench_serve.py                # 100k × 384, the auto index (HNSW32)
    .venv/bin/python benchmarks/bench_serve.py --quick        # 20k × 128, CI-sized
    .venv/bin/python benchmarks/bench_serve.py --kind flat    # a slower search: HTTP costs less in proportion

The server is the real CLI (`sslsearch serve IDX --port P`) in its own process; each client is a
process of its own with one keep-alive connection (``sslsearch.Client.search_vectors``: JSON
request, typed ``SearchResult``s back). The reference is ``Index.search`` (typed results) called by as
many threads of this process as there are clients. Each repeat runs both for ``--seconds`` (in
alternating order) with every client on held-out queries; the table gives medians over repeats of
QPS, p50 and p99 latency, and the per-repeat QPS ratio (HTTP / in-process). Clients and server share
this machine's cores, as they would on one box: on 2 cores the clients' own work is part of the cost.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_search import git_commit, machine, write_store  # noqa: E402 - same store, machine and commit records

from sslsearch import Client, ServerError, build_index, load_index, synthetic_embeddings  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "serve.jsonl"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def summarize(latencies: list[float], queries: int, seconds: float) -> dict[str, float]:
    """QPS counts queries (requests × batch); the latencies are per request."""
    ordered = sorted(latencies) or [float("nan")]
    return {"qps": queries / seconds, "p50_ms": 1e3 * ordered[len(ordered) // 2],
            "p99_ms": 1e3 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]}


def http_client(url: str, queries_file: str, k: int, start_at: float, seconds: float, offset: int,
                batch: int) -> list[float]:
    """One client process: searches of ``batch`` queries on one keep-alive connection from ``start_at`` for ``seconds``."""
    queries = np.load(queries_file)
    latencies: list[float] = []
    with Client(url) as client:
        client.search_vectors(queries[:batch], k)  # connect before the clock starts
        time.sleep(max(0.0, start_at - time.time()))
        end = start_at + seconds
        position = offset
        while time.time() < end:
            started = time.perf_counter()
            start = position % (len(queries) - batch + 1)
            client.search_vectors(queries[start:start + batch], k)
            latencies.append(time.perf_counter() - started)
            position += batch
    return latencies


def run_http(pool, url: str, queries_file: str, k: int, clients: int, seconds: float, batch: int) -> dict[str, float]:
    start_at = time.time() + 0.5  # every client connected and waiting before the clock starts
    jobs = [(url, queries_file, k, start_at, seconds, 997 * c, batch) for c in range(clients)]
    per_client = pool.starmap(http_client, jobs)
    latencies = [value for values in per_client for value in values]
    return summarize(latencies, len(latencies) * batch, seconds)


def run_in_process(index, queries: np.ndarray, k: int, clients: int, seconds: float, threads: int,
                   batch: int) -> dict[str, float]:
    per_thread: list[list[float]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients)

    def worker(slot: int) -> None:
        if threads:  # an OpenMP setting is per thread: a new thread starts from OMP_NUM_THREADS, not from ours
            import faiss

            faiss.omp_set_num_threads(threads)
        own = per_thread[slot]
        position = 997 * slot
        barrier.wait()
        end = time.perf_counter() + seconds
        while True:
            started = time.perf_counter()
            if started >= end:
                break
            start = position % (len(queries) - batch + 1)
            index.search(queries[start:start + batch], k)
            own.append(time.perf_counter() - started)
            position += batch

    workers = [threading.Thread(target=worker, args=(slot,)) for slot in range(clients)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    latencies = [value for values in per_thread for value in values]
    return summarize(latencies, len(latencies) * batch, seconds)


def start_server(index_dir: Path, port: int, log: Path, threads: int | None) -> subprocess.Popen:
    command = [sys.executable, "-m", "sslsearch", "serve", str(index_dir),
               "--port", str(port), "--device", "cpu"]
    root = str(Path(__file__).resolve().parent.parent)  # the sslsearch this benchmark imports, not another one
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # faiss's OpenMP threads in the server, as in this process
    handle = log.open("w")
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
        try:
            Client(f"http://127.0.0.1:{port}", timeout=2).health()
            return process
        except ServerError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not answer /health within 120 s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20k × 128 vectors, shorter runs (CI-sized)")
    parser.add_argument("--n", type=int, default=None, help="vectors in the index (default 100k; quick 20k)")
    parser.add_argument("--dim", type=int, default=None, help="dimension (default 384; quick 128)")
    parser.add_argument("--kind", default="auto", help="index kind (default auto)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4], help="concurrent clients (default 1 4)")
    parser.add_argument("--batch", type=int, default=1, help="queries per request / per Index.search call (default 1)")
    parser.add_argument("--seconds", type=float, default=None, help="per measurement (default 3; quick 1.5)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per setting (default 5; quick 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="faiss OpenMP threads, in the server and in-process alike (default 1: batch-1 queries gain "
                             "nothing from a team, and on a busy box its barrier stalls for milliseconds; 0: faiss's "
                             "default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-save", action="store_true", help="do not append to benchmarks/results/serve.jsonl")
    args = parser.parse_args(argv)
    n = args.n or (20_000 if args.quick else 100_000)
    dim = args.dim or (128 if args.quick else 384)
    seconds = args.seconds or (1.5 if args.quick else 3.0)
    repeats = args.repeats or (3 if args.quick else 5)
    if max(args.clients) > 32 or min(args.clients) < 1 or seconds > 30 or repeats > 20 or not 1 <= args.batch <= 1000:
        parser.error("keep it bounded: 1..32 clients, batch 1..1000, at most 30 s per measurement and 20 repeats")

    if args.threads:
        import faiss

        faiss.omp_set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        store_dir, index_dir = Path(tmp) / "emb", Path(tmp) / "idx"
        print(f"writing a store of {n:,} × {dim} synthetic vectors ...", file=sys.stderr)
        write_store(store_dir, n, dim, args.seed)
        print(f"building the {args.kind} index ...", file=sys.stderr)
        card = build_index(store_dir, index_dir, kind=args.kind, memory_budget=None, progress=False)
        index = load_index(index_dir)
        queries = np.ascontiguousarray(synthetic_embeddings(n + 2000, dim, seed=args.seed)[n:], dtype=np.float32)
        queries_file = Path(tmp) / "queries.npy"
        np.save(queries_file, queries)
        port = free_port()
        server = start_server(index_dir, port, Path(tmp) / "server.log", args.threads)
        url = f"http://127.0.0.1:{port}"
        figures: dict[str, dict[str, float]] = {}
        try:
            context = multiprocessing.get_context("spawn")
            with context.Pool(max(args.clients)) as pool:
                run_http(pool, url, str(queries_file), args.k, max(args.clients), 0.5, args.batch)  # warm-up
                run_in_process(index, queries, args.k, max(args.clients), 0.5, args.threads, args.batch)
                for clients in args.clients:
                    runs: dict[str, list[dict[str, float]]] = {"http": [], "in_process": []}
                    ratios = []
                    for repeat in range(repeats):
                        order = ("http", "in_process") if repeat % 2 == 0 else ("in_process", "http")
                        for mode in order:
                            if mode == "http":
                                runs[mode].append(run_http(pool, url, str(queries_file), args.k, clients, seconds,
                                                           args.batch))
                            else:
                                runs[mode].append(run_in_process(index, queries, args.k, clients, seconds,
                                                                 args.threads, args.batch))
                        ratios.append(runs["http"][-1]["qps"] / runs["in_process"][-1]["qps"])
                    row: dict[str, float] = {"qps_ratio_http_vs_in_process": round(statistics.median(ratios), 4)}
                    for mode, values in runs.items():
                        for key in ("qps", "p50_ms", "p99_ms"):
                            row[f"{mode}_{key}"] = round(statistics.median(v[key] for v in values), 3)
                    figures[f"clients_{clients}"] = row
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()

    print(f"serve overhead: {card.factory} over {n:,} × {dim}, k={args.k}, batch {args.batch}, {seconds:g} s × {repeats} "
          f"repeats per setting (medians)")
    header = (f"{'clients':>7} {'HTTP QPS':>9} {'p50 ms':>7} {'p99 ms':>7} {'in-proc QPS':>11} {'p50 ms':>7} "
              f"{'p99 ms':>7} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    for name, row in figures.items():
        print(f"{name.split('_')[1]:>7} {row['http_qps']:>9,.0f} {row['http_p50_ms']:>7.2f} {row['http_p99_ms']:>7.2f} "
              f"{row['in_process_qps']:>11,.0f} {row['in_process_p50_ms']:>7.3f} {row['in_process_p99_ms']:>7.3f} "
              f"{row['qps_ratio_http_vs_in_process']:>6.3f}")
    record = {"bench": "serve", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": git_commit(),
              "machine": machine(), "argv": sys.argv[1:] if argv is None else argv, "n": n, "dim": dim, "k": args.k,
              "factory": card.factory, "search_params": card.search_params, "batch": args.batch, "seconds": seconds,
              "faiss_threads": args.threads or "default",
              "repeats": repeats, "figures": figures, "goals": {"qps_ratio_min": 0.8}}
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
