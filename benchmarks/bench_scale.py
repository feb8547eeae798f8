"""Scale: an on-disk IVF index over a large synthetic store — peak memory, build time, recall@10, QPS, per-part costs.

    .venv/bin/python benchmarks/bench_scale.py                   # 2M × 384, on-disk IVF-SQ8 (~15 min on 2 cores)
    .venv/bin/python benchmarks/bench_scale.py --quick           # 100k × 128, CI-sized
    .venv/bin/python benchmarks/bench_scale.py --n 5000000 --work-dir /tmp/s5m --delete-after   # 5M: ~1 h on 2 loaded cores, 5.3 GiB
    .venv/bin/python benchmarks/bench_scale.py --n 10000000 --memory-budget 4GB   # 10M: IVF16384 trains on 500k vectors, ≥ 2.9 GiB
    .venv/bin/python benchmarks/bench_scale.py --n 10000000 --nlist 8192 --work-dir /work/scale10m   # half the lists: ~2× faster build

Data: clustered, low-intrinsic-dimension synthetic embeddings (``sslsearch.synthetic_embeddings``) written
as a float16 store with ``StoreWriter`` (100k-row shards; n/20 for small n), as ``sslsearch embed`` writes them; 1,000
held-out vectors of the same distribution are the queries.

1. ``build_index(on_disk=True, memory_budget=..., workers=...)``: train on a sample, fill the parts
   in worker processes, ``merge_ondisk`` into ``index.ivfdata``, measure recall, tune nprobe. The
   card's timings per phase, the driver's and workers' peak memory, the per-worker fill rate.
2. Search the memory-mapped index: recall@10 of the held-out queries against exact search, QPS of
   a 1,000-query batch and the latency of single queries at the tuned nprobe, vs the reference in
   the same run: exact search (``exact_search`` streaming the store, faiss blocks) of the same batch.

Everything runs on this process's threads (``--threads``, default all cores); run it under
``nice -n 19`` on a shared box. Appends a JSON line to benchmarks/results/scale.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from sslsearch import (EmbeddingStore, IndexCard, StoreWriter, __version__, exact_search, iter_synthetic_embeddings,
                       load_index, recall_at_k)

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
from provenance import git_commit  # noqa: E402 - the benchmarks' shared commit record

RESULTS = Path(__file__).parent / "results" / "scale.jsonl"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)




def machine(threads: int) -> dict[str, Any]:
    import faiss

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"host": platform.node(), "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": threads, "load_1min_at_start": load, "nice": os.nice(0), "python": platform.python_version(),
            "numpy": np.__version__, "faiss": faiss.__version__, "sslsearch": __version__,
            "faiss_gpus": int(faiss.get_num_gpus())}


def write_store(directory: Path, n: int, dim: int, seed: int) -> float:
    fingerprint = {"id": f"enc-synthetic-{dim}", "spec": f"synthetic:{dim}", "dim": dim}
    started = time.perf_counter()
    with StoreWriter(directory, dim=dim, dtype="float16", encoder=fingerprint, source_root="/synthetic",
                     shard_rows=min(100_000, max(10_000, n // 20))) as writer:
        start = 0
        for chunk in iter_synthetic_embeddings(n, dim, seed=seed):
            ids = np.arange(start, start + len(chunk))
            writer.write(ids, [f"v/{i}.png" for i in ids], chunk)
            start += len(chunk)
    return time.perf_counter() - started


def held_out_queries(n: int, count: int, dim: int, seed: int) -> np.ndarray:
    """Rows n..n+count of the synthetic stream (not in the store), computed chunk by chunk (bounded memory)."""
    parts, start = [], 0
    for chunk in iter_synthetic_embeddings(n + count, dim, seed=seed):
        if start + len(chunk) > n:
            parts.append(chunk[max(0, n - start):])
        start += len(chunk)
    return np.concatenate(parts)


def build_in_process(store_dir: Path, index_dir: Path, args: argparse.Namespace) -> tuple[IndexCard, int]:
    """Build in a fresh interpreter, so that its peak RSS (VmHWM) is the build's alone; (card, driver peak bytes)."""
    code = (f"import json, sys; sys.path.insert(0, {str(BENCHMARKS)!r}); import sslsearch; "
            "from memory import peak_rss_bytes; "
            f"card = sslsearch.build_index({str(store_dir)!r}, {str(index_dir)!r}, kind={args.kind!r}, on_disk=True, "
            f"memory_budget={args.memory_budget!r}, workers={args.workers}, nlist={args.nlist!r}, "
            f"eval_queries={args.eval_queries}, overwrite=True, "
            "progress=False); "
            "print(json.dumps({'card': card.to_dict(), 'peak': peak_rss_bytes()}))")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"the build failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return IndexCard.from_dict(result["card"]), int(result["peak"])


def median_seconds(function: Any, repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100k × 128 (CI-sized)")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--dim", type=int, default=None)
    parser.add_argument("--kind", default="auto", help="auto (IVF-SQ8), ivf or ivfpq")
    parser.add_argument("--nlist", type=int, default=None, help="inverted lists (default: the automatic ≈ 4·√n)")
    parser.add_argument("--memory-budget", default="2GB", help="build budget (training sample, parts at once)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--eval-queries", type=int, default=500,
                        help="store vectors the build measures recall@10 on and tunes nprobe with (0: skip)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the store and index here (default: temp)")
    parser.add_argument("--delete-after", action="store_true", help="delete --work-dir's store and index when done")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--build-only", action="store_true",
                        help="write the store and build the index; skip the held-out search measurements")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    n = args.n or (100_000 if args.quick else 2_000_000)
    dim = args.dim or (128 if args.quick else 384)

    import faiss

    faiss.omp_set_num_threads(args.threads)
    record: dict[str, Any] = {"bench": "scale", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": git_commit(),
                              "machine": machine(args.threads), "argv": sys.argv[1:] if argv is None else argv,
                              "n": n, "dim": dim, "kind": args.kind, "nlist": args.nlist, "memory_budget": args.memory_budget,
                              "workers": args.workers, "queries": args.queries, "k": 10}
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_scale_"))
    try:
        store_dir, index_dir = work / "emb", work / "idx"
        if not (store_dir / "manifest.json").exists():
            log(f"writing a float16 store of {n:,} × {dim} synthetic vectors to {store_dir} ...")
            seconds = write_store(store_dir, n, dim, args.seed)
            record["store_write_seconds"] = round(seconds, 1)
        store = EmbeddingStore.open(store_dir)
        record["store_bytes"] = sum((store_dir / s.name).stat().st_size for s in store.manifest.shards)
        record["store_shards"] = len(store.manifest.shards)

        log(f"building the on-disk index (budget {args.memory_budget}, {args.workers} workers) ...")
        started = time.perf_counter()
        card, driver_peak = build_in_process(store_dir, index_dir, args)
        record["build"] = {"seconds": round(time.perf_counter() - started, 1), "factory": card.factory,
                           "card_recall_at_10": card.recall_at_10, "card_qps": card.qps,
                           "nprobe": card.search_params.get("nprobe"),
                           "timings": card.timings, "driver_peak_growth_bytes": card.peak_memory_bytes,
                           "driver_peak_rss_bytes": driver_peak,
                           "driver_peak_anonymous_growth_bytes": card.build_params.get("peak_anonymous_memory_bytes"),
                           "worker_peak_rss_bytes": card.build_params["worker_peak_memory_bytes"],
                           "parts": card.build_params["parts"],
                           "part_rows_per_second": card.build_params["part_rows_per_second"],
                           "train_size": card.build_params["train_size"],
                           "index_faiss_bytes": card.size_bytes, "ivfdata_bytes": card.build_params["ivfdata_bytes"]}

        if args.build_only:
            return finish(record, work, args)
        log("exact ground truth of the held-out queries (the reference: exact search of the same batch) ...")
        cached = work / f"queries-{args.queries}-seed{args.seed}.npy"
        if cached.exists():
            queries = np.load(cached)
        else:
            queries = held_out_queries(n, args.queries, dim, args.seed)
            np.save(cached, queries)
        started = time.perf_counter()
        truth = exact_search(queries, store, 10, device="cpu", backend="faiss")[1]
        exact_seconds = time.perf_counter() - started

        log("searching the memory-mapped index ...")
        index = load_index(index_dir)
        raw = index.faiss_index
        sweep = []
        for nprobe in sorted({4, 8, 16, 32, 64, 128, int(card.search_params["nprobe"])}):
            index.set_search_params({"nprobe": nprobe})
            found = raw.search(queries, 10)[1]
            seconds = median_seconds(lambda: raw.search(queries, 10), args.repeats)
            sweep.append({"nprobe": nprobe, "recall_at_10": round(recall_at_k(found, truth), 4),
                          "qps": round(len(queries) / seconds, 1)})
            log(f"  nprobe {nprobe}: recall@10 {sweep[-1]['recall_at_10']:.4f}, {sweep[-1]['qps']:.0f} QPS")
        index.set_search_params(card.search_params)
        tuned = next(p for p in sweep if p["nprobe"] == card.search_params["nprobe"])
        single = [queries[i:i + 1] for i in range(100)]
        latency = median_seconds(lambda: [raw.search(q, 10) for q in single], args.repeats) / len(single)
        record["search"] = {"sweep": sweep, "tuned_nprobe": card.search_params["nprobe"],
                            "tuned_recall_at_10": tuned["recall_at_10"], "tuned_qps_batch": tuned["qps"],
                            "single_query_ms": round(1000 * latency, 3),
                            "exact_qps_batch": round(len(queries) / exact_seconds, 2),
                            "speedup_vs_exact": round(tuned["qps"] * exact_seconds / len(queries), 1)}
    except BaseException:
        cleanup(work, args)
        raise
    finish(record, work, args)


def cleanup(work: Path, args: argparse.Namespace) -> None:
    if args.work_dir is None or args.delete_after:
        shutil.rmtree(work, ignore_errors=True)


def finish(record: dict[str, Any], work: Path, args: argparse.Namespace) -> None:
    record["machine"]["load_1min_at_end"] = os.getloadavg()[0]
    cleanup(work, args)
    report(record)
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(f"appended to {RESULTS}")


def report(record: dict[str, Any]) -> None:
    build, search = record["build"], record.get("search")
    gib = 2**30
    print(f"\non-disk {build['factory']} over {record['n']:,} × {record['dim']} (float16 store, "
          f"{record['store_bytes'] / gib:.2f} GiB in {record['store_shards']} shards), budget {record['memory_budget']}, "
          f"{record['workers']} workers, {record['machine']['threads']} threads")
    print(f"  build        {build['seconds']:.0f} s  ({', '.join(f'{k} {v:.0f} s' for k, v in build['timings'].items())})")
    anonymous = build.get("driver_peak_anonymous_growth_bytes")
    own = "" if anonymous is None else f" (its own memory, mapped files left out: +{anonymous / gib:.2f} GiB)"
    print(f"  peak memory  driver {build['driver_peak_rss_bytes'] / gib:.2f} GiB RSS{own}, each worker "
          f"{build['worker_peak_rss_bytes'] / gib:.2f} GiB; {build['parts']} parts at "
          f"{build['part_rows_per_second']:,.0f} rows/s per worker")
    print(f"  on disk      index.faiss {build['index_faiss_bytes'] / 2**20:.1f} MiB + index.ivfdata "
          f"{build['ivfdata_bytes'] / gib:.2f} GiB")
    if search is None:
        print(f"  recall@10    {build['card_recall_at_10']} at nprobe {build['nprobe']} (the card's; --build-only: no "
              "held-out search measured)")
        return
    print(f"  recall@10    {search['tuned_recall_at_10']:.4f} at nprobe {search['tuned_nprobe']} (held-out queries; "
          f"card: {build['card_recall_at_10']})")
    print(f"  QPS          {search['tuned_qps_batch']:,.0f} (batch of {record['queries']}) = "
          f"{search['speedup_vs_exact']}× exact search ({search['exact_qps_batch']:,.1f} QPS); single query "
          f"{search['single_query_ms']:.2f} ms")
    box = record["machine"]
    print(f"  machine      {box['cores']} cores, nice {box.get('nice')}, 1-min load {box['load_1min_at_start']:.1f} at the "
          f"start, {box.get('load_1min_at_end', float('nan')):.1f} at the end (a shared box: times are upper bounds)")


if __name__ == "__main__":
    main()
