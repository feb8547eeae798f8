"""Dedup at scale: near-duplicate pairs of a large store through its on-disk IVF index, vs exact search on a sample.

    .venv/bin/python benchmarks/bench_scale.py --work-dir /tmp/scale2m        # writes the store + index first
    .venv/bin/python benchmarks/bench_dedup_scale.py --work-dir /tmp/scale2m --floor 0.9                 # search
    .venv/bin/python benchmarks/bench_dedup_scale.py --work-dir /tmp/scale2m --floor 0.9 --method join   # cell join

Runs ``sslsearch.similar_pairs_from_index`` (``--method search``: each row searched in the index,
candidates re-scored; ``--method join``: each inverted list joined with its ``--cell-neighbors``
nearest lists, ``dedup.cell_join``) over the store and index that bench_scale.py left in
--work-dir (``emb/``, ``idx/``): time, rows/s, pairs, the process's peak memory (VmHWM: with the
pages of memory-mapped files it touched). Reference in the same run: for ``--sample`` random rows,
exact search (``exact_search`` streaming the store) gives every neighbour above the floor among the
``--neighbors`` nearest; the pair recall is the share of those the index path found. Appends a
JSON line to benchmarks/results/scale.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench_scale import RESULTS, git_commit, log, machine
from memory import peak_rss_bytes
from sslsearch import EmbeddingStore, exact_search, load_index, similar_pairs_from_index


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, required=True, help="where bench_scale.py kept emb/ and idx/")
    parser.add_argument("--floor", type=float, default=0.9, help="minimum cosine similarity of a pair")
    parser.add_argument("--neighbors", type=int, default=16)
    parser.add_argument("--nprobe", type=int, default=None, help="search: default the card's tuned value")
    parser.add_argument("--method", choices=("search", "join"), default="search")
    parser.add_argument("--cell-neighbors", type=int, default=32, help="join: nearby lists")
    parser.add_argument("--scratch", type=Path, default=None, help="join: folder of the list-order copy")
    parser.add_argument("--lists-share", type=float, default=1.0,
                        help="join: join the rows of this random share of the lists (a measured part of the work; the "
                             "recall sample is drawn from their rows)")
    parser.add_argument("--search-rate-rows", type=int, default=0,
                        help="also time the search path's index search alone on this many store rows (its rows/s "
                             "before re-scoring, at --nprobe or 8), on the same box in the same run")
    parser.add_argument("--progress", action="store_true", help="progress bars on stderr (e.g. into a log)")
    parser.add_argument("--sample", type=int, default=1000, help="rows whose pairs are checked against exact search")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    import faiss

    store_dir, index_dir = args.work_dir / "emb", args.work_dir / "idx"
    store = EmbeddingStore.open(store_dir)
    n = len(store)
    threads = faiss.omp_get_max_threads()
    record: dict[str, Any] = {"bench": "dedup_scale", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "commit": git_commit(), "machine": machine(threads),
                              "argv": sys.argv[1:] if argv is None else argv, "n": n, "dim": store.dim,
                              "floor": args.floor, "neighbors": args.neighbors, "method": args.method,
                              "nprobe": args.nprobe if args.method == "search" else None,
                              "cell_neighbors": args.cell_neighbors if args.method == "join" else None}
    log(f"pairs ≥ {args.floor} among {args.neighbors} neighbours of {n:,} rows through {index_dir} "
        f"({args.method}) ...")
    rss_before = peak_rss_bytes()
    if args.method == "search":
        pairs = similar_pairs_from_index(store_dir, index_dir, args.floor, neighbors=args.neighbors,
                                         nprobe=args.nprobe, progress=args.progress)
        first, second, seconds, cells, details = pairs.first, pairs.second, pairs.seconds, pairs.cells, {}
    else:
        chosen = None
        if args.lists_share < 1:
            loaded = load_index(index_dir)
            invlists = faiss.extract_index_ivf(loaded.faiss_index).invlists
            picker = np.random.default_rng(args.seed + 1)
            chosen = np.sort(picker.choice(invlists.nlist, max(1, round(args.lists_share * invlists.nlist)),
                                           replace=False))
            population = np.concatenate([faiss.rev_swig_ptr(invlists.get_ids(int(c)), invlists.list_size(int(c)))
                                         .copy() for c in chosen])
            del invlists, loaded
        pairs = similar_pairs_from_index(store_dir, index_dir, args.floor, neighbors=args.neighbors, method="join",
                                         cell_neighbors=args.cell_neighbors, work_dir=args.scratch,
                                         progress=args.progress, lists=chosen)
        first, second, seconds, cells, stats = pairs.first, pairs.second, pairs.seconds, pairs.cells, pairs.details
        details = {**stats, "join_gflops_per_second": round(stats["flops"] / stats["join_seconds"] / 1e9, 1)
                   if stats["join_seconds"] else None}
        if chosen is not None:  # a measured share: the whole store's time at the same join rate (an estimate)
            details["lists_share"] = args.lists_share
            details["estimated_full_seconds"] = round(seconds - stats["join_seconds"]
                                                      + stats["join_seconds"] * n / stats["rows_joined"], 1)
    rows_done = details.get("rows_joined", n)
    record["index_path"] = {"seconds": round(seconds, 1), "rows_per_second": round(rows_done / seconds, 1),
                            "pairs": len(first), "cells": cells, "peak_rss_bytes": peak_rss_bytes(),
                            "rss_before_bytes": rss_before, **details}

    if args.search_rate_rows:
        log(f"the search path's index search alone on {args.search_rate_rows:,} rows ...")
        loaded = load_index(index_dir)
        nprobe = args.nprobe or 8
        loaded.set_search_params({"nprobe": nprobe})
        probe = store.vectors_for(np.sort(np.random.default_rng(args.seed + 2).choice(n, args.search_rate_rows,
                                                                                       replace=False)))
        started = time.perf_counter()
        loaded.faiss_index.search(probe, args.neighbors + 1)
        took = time.perf_counter() - started
        record["search_rate"] = {"rows": args.search_rate_rows, "nprobe": nprobe, "seconds": round(took, 2),
                                 "rows_per_second": round(args.search_rate_rows / took, 1),
                                 "estimated_full_seconds": round(n * took / args.search_rate_rows, 1)}
        del loaded
    log(f"exact neighbours of {args.sample} sample rows (the reference) ...")
    rng = np.random.default_rng(args.seed)
    population = population if args.method == "join" and args.lists_share < 1 else n
    rows = np.sort(rng.choice(population, args.sample, replace=False))
    queries = store.vectors_for(rows)
    scores, ids = exact_search(queries, store, args.neighbors + 1, device="cpu", backend="faiss")
    truth = {(int(r), int(i)) for r, row_ids, row_scores in zip(rows, ids, scores)
             for i, s in zip(row_ids, row_scores) if i != r and s >= args.floor}
    at_a, at_b = np.isin(first, rows), np.isin(second, rows)  # numpy first: 10M rows give ~10⁸ pairs
    found = (set(zip(first[at_a].tolist(), second[at_a].tolist()))
             | set(zip(second[at_b].tolist(), first[at_b].tolist())))
    record["sample"] = {"rows": args.sample, "exact_pairs": len(truth),
                        "pair_recall": round(len(found & truth) / len(truth), 4) if truth else None,
                        "found_pairs_not_in_exact_top_k": len(found - truth)}
    record["machine"]["load_1min_at_end"] = os.getloadavg()[0]
    report(record)
    if not args.no_save:
        with RESULTS.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(f"appended to {RESULTS}")


def report(record: dict[str, Any]) -> None:
    path, sample = record["index_path"], record["sample"]
    how = (f"cell join, {record['cell_neighbors']} nearby lists" if record.get("method") == "join"
           else f"search, nprobe {record['nprobe'] or 'tuned'}")
    print(f"\ndedup through the index ({how}): {record['n']:,} × {record['dim']}, floor {record['floor']}, "
          f"{record['neighbors']} neighbours")
    print(f"  time         {path['seconds']:.0f} s ({path['rows_per_second']:,.0f} rows/s), {path['pairs']:,} pairs, "
          f"peak RSS {path['peak_rss_bytes'] / 2**30:.2f} GiB")
    if "copy_seconds" in path:
        print(f"  join         list-order copy {path['copy_seconds']:.0f} s ({path['copy_buckets']} buckets), products "
              f"{path['join_seconds']:.0f} s at {path['join_gflops_per_second']} GFLOP/s; boundary test skipped "
              f"{path['pruned_share']:.0%} of (row, nearby list) products and {path['partner_pruned_share']:.0%} of "
              "the partners")
    if "lists_share" in path:
        print(f"  PART ONLY    rows of {path['lists_joined']:,} of {path['cells']:,} lists ({path['rows_joined']:,} rows) "
              f"joined; the whole store at that rate: ~{path['estimated_full_seconds']:,.0f} s (an estimate)")
    if "search_rate" in record:
        rate = record["search_rate"]
        print(f"  search path  its index search alone: {rate['rows_per_second']:,.0f} rows/s at nprobe {rate['nprobe']} "
              f"({rate['rows']:,} rows; the whole store: ~{rate['estimated_full_seconds']:,.0f} s before re-scoring)")
    recall = "n/a (no pair above the floor in the sample)" if sample["pair_recall"] is None else sample["pair_recall"]
    print(f"  pair recall  {recall} on {sample['rows']} sample rows ({sample['exact_pairs']} exact pairs)")


if __name__ == "__main__":
    main()
