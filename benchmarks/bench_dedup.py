"""Dedup benchmark: quality on planted near-duplicates vs perceptual hashes, and k-NN graph scale.

Quality: the sample data set (``sslsearch.make_sample_dataset``: shapes on varied backgrounds, 5% of the
images are edited copies — JPEG, resize, crop, brightness, rotation, watermark — listed in
``near_duplicates.csv``) is embedded, ``deduplicate`` runs with the automatic threshold
(``--precision``, self-calibrated), once with the default density-adjusted score and once with
``score="cosine"``, and pairwise precision / recall / F1 against the planted pairs are reported.
References in the same run, on the same images: imagehash pHash and dHash at their *best*
Hamming threshold (chosen with the ground truth, so an upper bound for them), and the encoder's
own best threshold for each score (the ceiling the calibration could reach).

Scale: the k-NN graph + union-find clusters of synthetic 384-d embeddings
(``sslsearch.synthetic_embeddings``, clustered, low intrinsic dimension) with 1% planted duplicate
pairs (cosine 0.92-0.99), each size in its own process so peak RSS is that run's alone. The
reference is the exact graph's rows/s in the same run (on a slice of the rows when the full
exact graph would take too long); partitioned recall is measured against exact search.

    python benchmarks/bench_dedup.py --quick             # CI-sized, < 1 min
    python benchmarks/bench_dedup.py                     # 1000 images; 100k vectors
    python benchmarks/bench_dedup.py --full              # 2000 images; 100k and 1M vectors
    python benchmarks/bench_dedup.py --encoder runs/simclr --image-size 64   # a trained encoder

Appends JSON lines to benchmarks/results/dedup.jsonl.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sslsearch import (EmbeddingStore, __version__, connected_groups, deduplicate, embed_images, exact_search,
                       list_images, load_image, make_sample_dataset, similar_pairs, synthetic_embeddings)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import git_commit  # noqa: E402 - the benchmarks' shared commit record

RESULTS = Path(__file__).resolve().parent / "results" / "dedup.jsonl"


# --------------------------------------------------------------------------- shared




def machine() -> dict[str, object]:
    import faiss
    import torch

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"host": platform.node(), "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "load_1min_at_start": load, "python": platform.python_version(), "torch": torch.__version__,
            "faiss": faiss.__version__, "numpy": np.__version__, "sslsearch": __version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def append_result(record: dict[str, object]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def prf(predicted: set, truth: set) -> dict[str, float]:
    true_positives = len(predicted & truth)
    precision = true_positives / len(predicted) if predicted else 1.0
    recall = true_positives / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "predicted_pairs": len(predicted), "true_pairs": len(truth)}


def recall_by_edit(edits: dict[tuple[str, str], tuple[str, ...]], row: dict[str, int],
                   predicted: set) -> dict[str, str]:
    """For each edit, "found/planted" over the copies that edit made (a copy with two edits counts for both)."""
    found: dict[str, list[int]] = {}
    for (original, copy), names in edits.items():
        hit = frozenset((row[original], row[copy])) in predicted
        for name in names or ("unknown",):
            found.setdefault(name, []).append(hit)
    return {name: f"{sum(hits)}/{len(hits)}" for name, hits in sorted(found.items())}


def best_threshold(scores: np.ndarray, is_true: np.ndarray, n_true: int, higher_is_closer: bool) -> dict[str, float]:
    """Best pairwise F1 over all thresholds of a score (similarity, or Hamming distance when not higher_is_closer)."""
    order = np.argsort(-scores if higher_is_closer else scores, kind="stable")
    ordered = scores[order]
    true_counts = np.cumsum(is_true[order])
    last = np.r_[ordered[1:] != ordered[:-1], True]  # a threshold takes every pair with an equal score
    called = np.arange(1, len(order) + 1)[last]
    true_at = true_counts[last]
    precision, recall = true_at / called, true_at / n_true
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1))
    return {"threshold": float(ordered[last][best]), "precision": round(float(precision[best]), 4),
            "recall": round(float(recall[best]), 4), "f1": round(float(f1[best]), 4)}


# --------------------------------------------------------------------------- quality


def hash_pairs(paths: list[Path], kind: str) -> tuple[np.ndarray, float]:
    """(n, 64) bool bits of imagehash's pHash or dHash, and images/s."""
    import imagehash

    function = {"phash": imagehash.phash, "dhash": imagehash.dhash}[kind]
    started = time.perf_counter()
    bits = np.stack([function(load_image(p).image).hash.reshape(-1) for p in paths])
    return bits, len(paths) / (time.perf_counter() - started)


def real_set(root: Path) -> tuple[Path, list[tuple[str, str]], dict[tuple[str, str], tuple[str, ...]]]:
    """A dedup set of ``benchmarks/real_sets.py``: (image root, (original, copy) pairs, their edits), paths
    relative to the image root."""
    images = root / "images"
    if not (root / "pairs.csv").is_file():
        raise SystemExit(f"no dedup set at {root}; build it with: python benchmarks/real_sets.py build "
                         f"--out {root.parent} --sets {root.name}")
    with open(root / "pairs.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    strip = lambda path: str(Path(path).relative_to("images"))  # noqa: E731
    pairs = [(strip(r["original"]), strip(r["copy"])) for r in rows]
    return images, pairs, {pair: tuple(r["edits"].split("+")) for pair, r in zip(pairs, rows)}


def sample_edits(root: Path) -> dict[tuple[str, str], tuple[str, ...]]:
    """(original, copy) → the edits that made the copy, e.g. ("crop", "rotate"), from the sample's near_duplicates.csv."""
    with open(root / "near_duplicates.csv", newline="", encoding="utf-8") as handle:
        return {(row["original"], row["copy"]): tuple(e for e in (row.get("edits") or "").split("+") if e)
                for row in csv.DictReader(handle)}


def quality(args: argparse.Namespace, work: Path) -> dict[str, object]:
    if args.dataset:
        root, planted, edits = real_set(args.data_root / args.dataset)
    else:
        data = make_sample_dataset(work / "images", n_images=args.n_images, image_size=64, seed=args.seed)
        root, planted, edits = data.root, data.near_duplicates, sample_edits(data.root)
    source = list_images(root)
    paths = [source.abs_path(r) for r in source.records]
    row = {r.path: r.id for r in source.records}
    truth = {frozenset((row[a], row[b])) for a, b in planted}
    encoder = args.encoder
    started = time.perf_counter()
    embedded = embed_images(root, encoder, work / "emb", image_size=args.image_size, device=args.device,
                            progress=False)
    embed_seconds = time.perf_counter() - started

    def run(score: str) -> tuple[dict[str, object], object]:
        result = deduplicate(work / "emb", work / f"dups-{score}", precision=args.precision, score=score,
                             device=args.device, progress=False)
        predicted = set()
        for cluster in result.clusters:
            for a, b in itertools.combinations([row[m.path] for m in cluster.members], 2):
                predicted.add(frozenset((a, b)))
        ours = prf(predicted, truth)
        ours["threshold"] = result.threshold.value
        ours["recall_by_edit"] = recall_by_edit(edits, row, predicted)
        ours["false_pairs"] = len(predicted - truth)
        ours["false_pairs_same_class"] = sum(1 for pair in predicted - truth
                                             if len({source.records[i].label for i in pair}) == 1)
        calibration = result.threshold.calibration
        ours["estimated_precision"] = calibration.estimated_precision if calibration else None
        ours["estimated_recall"] = calibration.estimated_recall if calibration else None
        ours["calibration_reached"] = calibration.reached if calibration else None
        return ours, result

    ours, result = run("auto")  # the default with a calibrated threshold (verified since the real-image sets)
    ours_cosine = run(args.compare_score)[0] if args.compare_score != "none" else None

    table = EmbeddingStore.open(work / "emb").read_all(("id", "embedding"))
    vectors = np.empty_like(table.embeddings)
    vectors[table.ids] = table.embeddings
    first, second = np.triu_indices(len(vectors), 1)
    similarity = np.einsum("pd,pd->p", vectors[first], vectors[second]) if len(first) < 5_000_000 else None
    is_true = np.fromiter((frozenset((a, b)) in truth for a, b in zip(first.tolist(), second.tolist())), bool,
                          count=len(first))
    oracle = best_threshold(similarity, is_true, len(truth), True) if similarity is not None else None
    oracle_adjusted = None
    density = result.threshold.density
    if similarity is not None and density is not None:
        # the run's backgrounds are by store row (the order read_all gives); the pairs here are by id
        by_id = np.empty(len(vectors), np.float32)
        by_id[table.ids] = density.background
        adjusted = density.score(similarity, by_id[first], by_id[second])
        oracle_adjusted = best_threshold(adjusted.astype(np.float64), is_true, len(truth), True)

    hashes = {}
    for kind in ("phash", "dhash"):
        bits, rate = hash_pairs(paths, kind)
        distance = np.count_nonzero(bits[first] != bits[second], axis=1)
        hashes[kind] = {**best_threshold(distance.astype(np.float64), is_true, len(truth), False),
                        "images_per_second": round(rate, 1)}
    # "ours_auto" / "ours_best_threshold" are the default score (adjusted since commit c7dad07; cosine before)
    return {"dataset": args.dataset or "sample", "images": len(paths), "true_pairs": len(truth), "encoder": encoder,
            "image_size": args.image_size, "compare_score": args.compare_score,
            "default_score": result.threshold.score,
            "encoder_fingerprint": embedded.encoder.get("id"), "precision_target": args.precision,
            "ours_auto": ours, "ours_auto_cosine": ours_cosine, "ours_best_threshold": oracle_adjusted,
            "ours_best_threshold_cosine": oracle, "phash_best": hashes["phash"], "dhash_best": hashes["dhash"],
            "embed_images_per_second": round(len(paths) / embed_seconds, 1),
            "dedup_seconds": result.summary["seconds"],
            "dedup_images_per_second_after_embedding": round(len(paths) / result.summary["seconds"]["total"], 1)}


# --------------------------------------------------------------------------- scale


def planted_vectors(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic embeddings with 1% of the rows replaced by near copies (cosine ~0.92-0.99) of other rows."""
    vectors = synthetic_embeddings(n, dim, seed=seed, noise=0.3)  # natural neighbours stay below ~0.9
    rng = np.random.default_rng([seed, 9])
    copies = max(1, n // 100)
    targets = rng.choice(n, copies, replace=False)
    sources = rng.choice(np.setdiff1d(np.arange(n), targets), copies, replace=False)
    similarity = rng.uniform(0.92, 0.99, copies)
    noise = rng.standard_normal((copies, dim)).astype(np.float32)
    noise -= np.einsum("id,id->i", noise, vectors[sources])[:, None] * vectors[sources]
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    vectors[targets] = similarity[:, None] * vectors[sources] + np.sqrt(1 - similarity**2)[:, None] * noise
    vectors[targets] /= np.linalg.norm(vectors[targets], axis=1, keepdims=True)
    return vectors, sources, targets


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _current_rss_mb() -> float:
    value = _status_mb("VmRSS")
    return value if value is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0), so the peak covers only what follows."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    value = _status_mb("VmHWM")
    return value if value is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _scale_child(n: int, dim: int, method: str, query_rows: int, device: str, seed: int, queue) -> None:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    # torch and faiss came in with the sslsearch imports at the top: the baseline below includes them
    baseline = _current_rss_mb()
    vectors, sources, targets = planted_vectors(n, dim, seed)
    after_data = _current_rss_mb()
    _reset_peak()  # the peak then covers the graph and clusters, not the generator's temporaries
    rows = vectors if query_rows >= n else None
    record: dict[str, object] = {"n": n, "dim": dim, "method": method, "baseline_rss_mb": round(baseline, 1),
                                 "data_rss_mb": round(after_data, 1)}
    started = time.perf_counter()
    if rows is not None:
        pairs = similar_pairs(vectors, 0.9, method=method, device=device, seed=seed, progress=False)
        graph_seconds = time.perf_counter() - started
        groups = connected_groups(n, pairs.first, pairs.second)
        record.update(seconds=round(time.perf_counter() - started, 2), graph_seconds=round(graph_seconds, 2),
                      rows_per_second=round(n / graph_seconds, 1), pairs=len(pairs), clusters=len(groups),
                      cells=pairs.cells, device=pairs.device)
        found = set(zip(pairs.first.tolist(), pairs.second.tolist()))
        planted = {(min(a, b), max(a, b)) for a, b in zip(sources.tolist(), targets.tolist())}
        record["planted_pair_recall"] = round(len(found & planted) / len(planted), 4)
        if method == "partitioned":
            record["recall_vs_exact"] = _recall_vs_exact(vectors, found, targets, device, seed)
    else:  # exact reference on a slice of the query rows (the full graph would take too long)
        exact_search(vectors[:query_rows], vectors, 17, device=device, backend="faiss" if device == "cpu" else "torch")
        graph_seconds = time.perf_counter() - started
        record.update(query_rows=query_rows, graph_seconds=round(graph_seconds, 2),
                      rows_per_second=round(query_rows / graph_seconds, 1))
    record["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    record["work_peak_mb"] = round(_peak_rss_mb() - baseline, 1)  # peak above the imports: vectors + graph
    queue.put(record)


def _recall_vs_exact(vectors: np.ndarray, found: set, targets: np.ndarray, device: str, seed: int) -> float:
    """Of the exact graph's pairs (>= 0.9, k=16) touching sampled rows (1000 random and up to 2000 planted copies;
    250 and 250 above 200k rows), the fraction the partitioned graph found."""
    rng = np.random.default_rng([seed, 5])
    random_rows, planted_rows = (1000, 2000) if len(vectors) <= 200_000 else (250, 250)  # exact costs rows × n
    rows = np.union1d(rng.choice(len(vectors), min(random_rows, len(vectors)), replace=False),
                      rng.choice(targets, min(planted_rows, len(targets)), replace=False))
    scores, labels = exact_search(vectors[rows], vectors, 17, device=device, backend="faiss" if device == "cpu" else "torch")
    expected = {(min(r, int(l)), max(r, int(l))) for r, row_scores, row_labels in zip(rows.tolist(), scores, labels)
                for s, l in zip(row_scores.tolist(), row_labels.tolist()) if l != r and l >= 0 and s >= 0.9}
    return round(len(expected & found) / len(expected), 4) if expected else 1.0


def scale_run(n: int, method: str, *, query_rows: int, device: str, seed: int, dim: int = 384) -> dict[str, object]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_scale_child, args=(n, dim, method, query_rows, device, seed, queue))
    process.start()
    record = queue.get()
    process.join()
    return record


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized: 200 images, 10k vectors, 1 repeat")
    parser.add_argument("--dataset", default=None,
                        help="a real dedup set of benchmarks/real_sets.py (e.g. icons-dedup) instead of sample data")
    parser.add_argument("--data-root", type=Path, default=Path("data/real"), help="where real_sets.py built the sets")
    parser.add_argument("--compare-score", default="adjusted", help="second score run beside the default ('none': skip it)")
    parser.add_argument("--full", action="store_true", help="2000 images; 100k and 1M vectors")
    parser.add_argument("--encoder", default="timm:resnet18",
                        help="timm:<name> (random init) or a `sslsearch train` run directory")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--precision", type=float, default=0.99, help="target of the automatic threshold")
    parser.add_argument("--n-images", type=int, default=None)
    parser.add_argument("--sizes", default=None, help="vector counts for the scale part, comma-separated")
    parser.add_argument("--exact-rows", type=int, default=10_000,
                        help="query rows of the exact reference when the full exact graph is too slow")
    parser.add_argument("--repeats", type=int, default=None, help="repeats of the scale runs (median reported)")
    parser.add_argument("--skip-exact", action="store_true",
                        help="scale: run only the partitioned graph (no exact reference; speedup not reported)")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-save", action="store_true", help="do not append to benchmarks/results/dedup.jsonl")
    args = parser.parse_args(argv)
    if args.n_images is None:
        args.n_images = 200 if args.quick else 2000 if args.full else 1000
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else (
        [10_000] if args.quick else [100_000, 1_000_000] if args.full else [100_000])
    repeats = args.repeats or 1
    info, stamp, commit = machine(), time.strftime("%Y-%m-%dT%H:%M:%S%z"), git_commit()
    print(f"machine: {info['cores']} cores, load {info['load_1min_at_start']}, torch {info['torch']}, "
          f"faiss {info['faiss']}, commit {commit}", flush=True)

    if not args.skip_quality:
        with tempfile.TemporaryDirectory(prefix="bench_dedup_") as work:
            figures = quality(args, Path(work))
        print(f"\nquality: {figures['images']} images of {figures['dataset']}, {figures['true_pairs']} planted near-duplicate pairs, "
              f"encoder {figures['encoder']} @ {figures['image_size']} px")
        print(f"{'method':<34}{'threshold':>10}{'precision':>10}{'recall':>8}{'F1':>7}")
        ours, cosine = figures["ours_auto"], figures["ours_auto_cosine"]
        rows = [(f"sslsearch auto (precision {args.precision:g})", f"{ours['threshold']:.4f}", ours)]
        if figures["ours_best_threshold"] is not None:
            rows.append(("sslsearch, best threshold (oracle)", f"{figures['ours_best_threshold']['threshold']:.4f}",
                         figures["ours_best_threshold"]))
        if cosine is not None:
            rows += [(f"  {args.compare_score} score, auto", f"{cosine['threshold']:.4f}", cosine)]
        if figures["ours_best_threshold_cosine"] is not None:
            rows.append(("  cosine score, best (oracle)", f"{figures['ours_best_threshold_cosine']['threshold']:.4f}",
                         figures["ours_best_threshold_cosine"]))
        rows += [
            ("imagehash pHash, best Hamming", f"{figures['phash_best']['threshold']:.0f}", figures["phash_best"]),
            ("imagehash dHash, best Hamming", f"{figures['dhash_best']['threshold']:.0f}", figures["dhash_best"])]
        for name, threshold, values in rows:
            print(f"{name:<34}{threshold:>10}{values['precision']:>10.3f}{values['recall']:>8.3f}{values['f1']:>7.3f}")
        print(f"calibration estimated precision {ours['estimated_precision']}, recall {ours['estimated_recall']}; "
              f"dedup {figures['dedup_images_per_second_after_embedding']} images/s after embedding "
              f"({figures['embed_images_per_second']} images/s embedding); pHash "
              f"{figures['phash_best']['images_per_second']} images/s", flush=True)
        print("automatic threshold, copies found by edit: "
              + ", ".join(f"{name} {found}" for name, found in ours["recall_by_edit"].items())
              + f"; false matches: {ours['false_pairs']} ({ours['false_pairs_same_class']} within one class)",
              flush=True)
        if not args.no_save:
            append_result({"bench": "dedup", "part": "quality", "time": stamp, "commit": commit, "machine": info,
                           "figures": figures})

    if not args.skip_scale:
        print(f"\nscale: k-NN graph (k=16, pairs >= 0.9) + clusters, dim 384, 1% planted pairs; "
              f"median of {repeats}; peak MB = peak RSS above the imports (vectors + graph)")
        print(f"{'n':>9}  {'method':<12}{'seconds':>9}{'rows/s':>10}{'vs exact':>9}{'peak MB':>9}"
              f"{'data MB':>9}{'planted R':>10}{'R vs exact':>11}")
        for n in sizes:
            exact_rows = n if n <= 20_000 else min(args.exact_rows, n)
            runs = {}
            for method in (("partitioned",) if args.skip_exact else ("exact", "partitioned")):
                query_rows = exact_rows if method == "exact" else n
                records = [scale_run(n, method, query_rows=query_rows, device=args.device, seed=args.seed)
                           for _ in range(repeats)]
                middle = sorted(records, key=lambda r: r["graph_seconds"])[len(records) // 2]
                middle = dict(middle, graph_seconds_all=[r["graph_seconds"] for r in records])
                runs[method] = middle
            reference = runs["exact"]["rows_per_second"] if "exact" in runs else None
            for method, record in runs.items():
                record["speedup_vs_exact"] = round(record["rows_per_second"] / reference, 2) if reference else None
                seconds = record.get("seconds", record["graph_seconds"])
                label = method if method != "exact" or record.get("query_rows", n) >= n else \
                    f"exact {record['query_rows'] // 1000}k q"
                print(f"{n:>9}  {label:<12}{seconds:>9.1f}{record['rows_per_second']:>10.0f}"
                      f"{record['speedup_vs_exact'] or float('nan'):>9.2f}{record['work_peak_mb']:>9.0f}"
                      f"{record['data_rss_mb'] - record['baseline_rss_mb']:>9.0f}"
                      f"{record.get('planted_pair_recall', float('nan')):>10.4f}"
                      f"{record.get('recall_vs_exact', float('nan')):>11.4f}", flush=True)
            print(f"{'':>11}(for scale: an N×N float32 similarity matrix would take {n * n * 4 / 1e9:,.1f} GB)")
            if not args.no_save:
                append_result({"bench": "dedup", "part": "scale", "time": stamp, "commit": commit, "machine": info,
                               "n": n, "dim": 384, "repeats": repeats, "runs": runs})


if __name__ == "__main__":
    sys.exit(main())
