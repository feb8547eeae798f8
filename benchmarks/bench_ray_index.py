"""On-disk index parts: Ray tasks (``--engine ray``) vs local worker processes on the same machine and store.

    .venv/bin/python benchmarks/bench_ray_index.py              # 300k × 128 float16, 3 alternating repeats
    .venv/bin/python benchmarks/bench_ray_index.py --quick      # 20k × 32, CI-sized

One machine cannot show what Ray is for (parts on many machines); what it can show is what the
Ray engine costs over the local one for the same work: the same store, the same plan size
(``--workers`` parts at once), builds alternating local / ray so that a change in the machine's load
hits both. Reported: the ``add`` phase (filling every part) and the whole build of each engine
(medians), their ratio, each engine's median seconds per part, the seconds ``ray.init`` took
(paid once per command), and whether both indexes return the same ids for held-out queries.
A local Ray of ``--workers`` CPUs is started in this process. Appends a JSON line to
benchmarks/results/ray_index.jsonl.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from sslsearch import build_index, load_index

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
from bench_scale import held_out_queries, log, machine, write_store  # noqa: E402 - the scale bench's store
from provenance import git_commit  # noqa: E402

RESULTS = BENCHMARKS / "results" / "ray_index.jsonl"


def build(store: Path, out: Path, engine: str, workers: int) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    card = build_index(store, out, on_disk=True, workers=workers, engine=engine, memory_budget="2GB",
                       progress=False)
    parts = card.build_params["part_timings"]
    return {"engine": engine, "build_seconds": card.build_seconds, "add_seconds": card.timings["add"],
            "parts": len(parts), "median_part_seconds": statistics.median(p["seconds"] for p in parts),
            "factory": card.factory, "recall_at_10": card.recall_at_10}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300_000, help="store rows")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="parts filled at once (processes or Ray tasks)")
    parser.add_argument("--repeats", type=int, default=3, help="builds per engine, alternating")
    parser.add_argument("--quick", action="store_true", help="20k × 32, one repeat")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the store here (default: a temp dir)")
    parser.add_argument("--no-record", action="store_true", help="do not append to the results file")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.dim, args.repeats = 20_000, 32, 1
    import ray

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-ray-index-"))
    work.mkdir(parents=True, exist_ok=True)
    store = work / f"store-{args.n}x{args.dim}"
    if not (store / "manifest.json").exists():
        log(f"writing {args.n:,} × {args.dim} float16 store")
        write_store(store, args.n, args.dim, seed=0)
    record: dict[str, Any] = {"bench": "ray_index", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "commit": git_commit(), "machine": machine(threads=args.workers), "n": args.n,
                              "dim": args.dim, "workers": args.workers, "repeats": args.repeats}
    tick = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    record["ray_init_seconds"] = round(time.perf_counter() - tick, 2)
    runs: list[dict[str, Any]] = []
    try:
        for repeat in range(args.repeats):
            for engine in ("local", "ray"):
                log(f"repeat {repeat + 1}/{args.repeats}: {engine}")
                runs.append(build(store, work / f"idx-{engine}", engine, args.workers))
        queries = held_out_queries(args.n, 200, args.dim, seed=0)
        ids = {engine: load_index(work / f"idx-{engine}").search_arrays(queries, 10)[1] for engine in ("local", "ray")}
        record["same_ids"] = bool(np.array_equal(ids["local"], ids["ray"]))
    finally:
        ray.shutdown()
    record["runs"] = runs
    for engine in ("local", "ray"):
        mine = [r for r in runs if r["engine"] == engine]
        record[engine] = {key: round(statistics.median(r[key] for r in mine), 3)
                          for key in ("add_seconds", "build_seconds", "median_part_seconds")}
        record[engine]["parts"] = mine[0]["parts"]
    record["ray_over_local_add"] = round(record["ray"]["add_seconds"] / record["local"]["add_seconds"], 3)
    record["ray_over_local_build"] = round(record["ray"]["build_seconds"] / record["local"]["build_seconds"], 3)
    print(f"{args.n:,} × {args.dim}, {runs[0]['factory']}, {args.workers} at once, median of {args.repeats}; "
          f"load {record['machine']['load_1min_at_start']}")
    print(f"{'engine':8} {'parts':>5} {'add s':>8} {'build s':>8} {'s/part':>8}")
    for engine in ("local", "ray"):
        row = record[engine]
        print(f"{engine:8} {row['parts']:>5} {row['add_seconds']:>8.2f} {row['build_seconds']:>8.2f} "
              f"{row['median_part_seconds']:>8.2f}")
    print(f"ray / local: add {record['ray_over_local_add']}, build {record['ray_over_local_build']}; "
          f"ray.init {record['ray_init_seconds']} s (once per command); same ids: {record['same_ids']}")
    if not args.no_record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(f"appended to {RESULTS}")
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
