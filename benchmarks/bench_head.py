"""Task-head benchmark: `train_head` against scikit-learn's LogisticRegression on the same features, same split.

The features are scikit-learn's bundled digits (1,797 images of 8x8 pixels, 64 dims, 10 classes;
no download), written into an embedding store as if they were embeddings. Measured in one run:

* balanced data: test accuracy and test ECE of the linear and MLP heads (before / after temperature
  scaling) against LogisticRegression (lbfgs, C=1, standardised), and the wall time of each fit;
* imbalanced training data (classes 5-9 keep 10 % of their rows, the test split stays whole):
  test balanced accuracy of the head with --balance none / loss / sampling against
  LogisticRegression with class_weight None / "balanced".

    python benchmarks/bench_head.py            # 3 timing repeats
    python benchmarks/bench_head.py --quick    # 1 repeat

Appends one JSON line to benchmarks/results/head.jsonl.
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

from sslsearch import StoreWriter, __version__, predict_head, single_label_metrics, train_head

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import git_commit  # noqa: E402 - the benchmarks' shared commit record

RESULTS = Path(__file__).resolve().parent / "results" / "head.jsonl"
FEATURES = {"id": "digits-pixels", "spec": "pixels:sklearn-digits"}  # stands in for an encoder fingerprint




def machine() -> dict[str, object]:
    import sklearn

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"host": platform.node(), "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_1min_at_start": load, "python": platform.python_version(),
            "torch": torch.__version__, "sklearn": sklearn.__version__, "numpy": np.__version__, "sslsearch": __version__}


def write_store(directory: Path, vectors: np.ndarray, labels: np.ndarray) -> Path:
    with StoreWriter(directory, dim=vectors.shape[1], dtype="float32", encoder=FEATURES, source_root=str(directory),
                     normalized=False, extra_columns=("label",)) as writer:
        writer.write(np.arange(len(vectors)), [f"{y}/{i:05d}.png" for i, y in enumerate(labels)], vectors,
                     label=[f"digit{y}" for y in labels])
    return directory


def median_seconds(run, repeats: int) -> tuple[float, object]:
    run()  # warm-up
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> None:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one timing repeat instead of three")
    parser.add_argument("--no-save", action="store_true", help="do not append to benchmarks/results/head.jsonl")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else 3
    pixels, digits = load_digits(return_X_y=True)
    pixels = pixels.astype(np.float32)
    train_x, test_x, train_y, test_y = train_test_split(pixels, digits, test_size=0.3, random_state=0, stratify=digits)
    rng = np.random.default_rng(0)
    keep = np.array([y < 5 or rng.random() < 0.1 for y in train_y])
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = write_store(Path(tmp) / "balanced", train_x, train_y)
        skewed = write_store(Path(tmp) / "skewed", train_x[keep], train_y[keep])
        for kind in ("linear", "mlp"):
            seconds, result = median_seconds(lambda: train_head(store, "folders", None, kind=kind, device="cpu",
                                                                progress=False), repeats)
            probabilities = predict_head(result.head, test_x).probabilities
            with torch.no_grad():
                raw = torch.softmax(result.head.module(torch.from_numpy(test_x)), 1).numpy()
            codes = np.array([result.head.labels.index(f"digit{y}") for y in test_y])
            metrics = single_label_metrics(raw, probabilities, codes)  # the metrics `head train` reports
            rows[f"head {kind}"] = {"test_accuracy": metrics.accuracy, "test_ece_before": metrics.ece_before,
                                    "test_ece_after": metrics.ece_after,
                                    "temperature": result.temperature, "best_epoch": result.best_epoch,
                                    "epochs_run": len(result.history), "fit_seconds": seconds}
        reference = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
        seconds, _ = median_seconds(lambda: reference.fit(train_x, train_y), repeats)
        probabilities = reference.predict_proba(test_x)
        metrics = single_label_metrics(probabilities, probabilities, test_y)  # no calibration step: before = after
        rows["sklearn LogisticRegression"] = {"test_accuracy": metrics.accuracy, "test_ece_before": metrics.ece_before,
                                              "test_ece_after": metrics.ece_after, "fit_seconds": seconds}
        imbalanced: dict[str, float] = {}
        for balance in ("none", "loss", "sampling"):
            head = train_head(skewed, "folders", None, balance=balance, device="cpu", progress=False).head
            codes = np.array([head.labels.index(f"digit{y}") for y in test_y])
            probabilities = predict_head(head, test_x).probabilities
            imbalanced[f"head balance={balance}"] = single_label_metrics(probabilities, probabilities,
                                                                         codes).balanced_accuracy
        for weight in (None, "balanced"):
            model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000, class_weight=weight))
            probabilities = model.fit(train_x[keep], train_y[keep]).predict_proba(test_x)
            imbalanced[f"sklearn class_weight={weight}"] = single_label_metrics(probabilities, probabilities,
                                                                                test_y).balanced_accuracy
    reference_row = rows["sklearn LogisticRegression"]
    print(f"digits: {len(train_y)} train / {len(test_y)} test rows, 64 dims, 10 classes; {repeats} timing repeat(s)")
    print(f"{'':28} {'test acc':>8} {'vs sklearn':>10} {'ECE before':>10} {'ECE after':>9} {'fit s':>7} {'vs sklearn':>10}")
    for name, row in rows.items():
        print(f"{name:28} {row['test_accuracy']:8.4f} {row['test_accuracy'] / reference_row['test_accuracy']:10.3f} "
              f"{row['test_ece_before']:10.4f} {row['test_ece_after']:9.4f} {row['fit_seconds']:7.2f} "
              f"{row['fit_seconds'] / reference_row['fit_seconds']:10.1f}")
    print(f"imbalanced training rows ({int(keep.sum())}: digits 5-9 keep ~10 %), test balanced accuracy:")
    for name, value in imbalanced.items():
        print(f"  {name:34} {value:.4f}")
    line = {"bench": "head", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": git_commit(),
            "mode": "quick" if args.quick else "default", "machine": machine(), "n_train": len(train_y),
            "n_test": len(test_y), "n_train_imbalanced": int(keep.sum()), "balanced": rows,
            "imbalanced_balanced_accuracy": imbalanced}
    if args.no_save:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as handle:
        handle.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
