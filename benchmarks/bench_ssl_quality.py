"""SSL quality: k-NN accuracy and retrieval of each method's encoder after a fixed wall-clock budget.

Each method (SimCLR, MoCo v2, DINO; MAE, on vit_tiny with 8-px patches when --backbone is a CNN)
trains ``--backbone`` from random init on DATA for ``--minutes`` of wall clock (``sslsearch.train``
with ``max_minutes``); its exported encoder (``sslsearch.create_encoder(run)``) embeds the
images, and beside it, on the same images:

* raw pixels — the image resized to the training size, flattened, mean-centred;
* raw 16×16 pixels — the same at 16 × 16 px (a strong baseline on small clip-art and glyphs);
* random init — the same backbone, untrained (``timm:<backbone>``).

Metrics (cosine similarity on L2-normalised vectors): k-NN top-1 accuracy with the DINO protocol
(k=20, T=0.07, softmax-weighted votes) and class retrieval recall@10 / precision@10
(``sslsearch.evaluate``). Queries are a held-out set: for the default sample data a second
sample set drawn with another seed (same classes, new images); for ``--data`` the ``--queries``
folder, or leave-one-out on DATA when none is given. Labels are never used in training.

``--dataset icons|glyphs`` trains and evaluates on a real set built by ``benchmarks/real_sets.py``
(under ``--data-root``, default data/real), leave-one-out, and adds the retrieval the sets are
about: **cross-source recall@10**, the share of images with an image of the same label from
another source (another icon theme, another font) among their 10 nearest neighbours.

    python benchmarks/bench_ssl_quality.py --quick            # CI-sized: test_resnet, 32 px, 20 s each
    python benchmarks/bench_ssl_quality.py                    # sample data, resnet18 @ 64 px, 3 min each
    python benchmarks/bench_ssl_quality.py --data IMAGEFOLDER [--queries IMAGEFOLDER] --minutes 10
    python benchmarks/bench_ssl_quality.py --dataset glyphs --methods simclr,moco,dino --minutes 15
    python benchmarks/bench_ssl_quality.py --methods simclr --epochs 40 --image-size 32 --set augmentation.hue=0.5

Appends one JSON line per run to benchmarks/results/ssl_quality.jsonl.
"""
from __future__ import annotations

import argparse
import sys
import csv
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sslsearch import (class_retrieval, create_encoder, exact_search, knn_accuracy, list_images, load_image,
                       make_sample_dataset, train, train_config)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import git_commit  # noqa: E402 - the benchmarks' shared commit record

RESULTS = Path(__file__).resolve().parent / "results" / "ssl_quality.jsonl"
REAL_SETS = ("icons", "glyphs")  # the SSL sets of benchmarks/real_sets.py
RAW_SMALL_SIZE = 16  # the raw-pixel baseline the issue compares against (16 × 16)


def load_real_set(root: Path, name: str) -> tuple[Path, list[Image.Image], np.ndarray, np.ndarray]:
    """A set of ``real_sets.py``: its ImageFolder, images, labels and sources (in labels.csv order).

    Exits with the command that builds the set when it is missing.
    """
    folder = root / name
    table = folder / "labels.csv"
    if not table.is_file() or not (folder / "images").is_dir():
        raise SystemExit(f"real set {name!r} not found under {root} (no {table}); build it first with: "
                         f"python benchmarks/real_sets.py build --out {root} --sets {name}")
    with open(table, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"path", "label", "source"} <= set(rows[0]):
        raise SystemExit(f"{table} must have the columns path,label,source; rebuild the set with: "
                         f"python benchmarks/real_sets.py build --out {root} --sets {name}")
    images = [load_image(folder / row["path"]).image for row in rows]
    return (folder / "images", images, np.array([row["label"] for row in rows]),
            np.array([row["source"] for row in rows]))


def cross_source_recall(embeddings: np.ndarray, labels: np.ndarray, sources: np.ndarray, k: int = 10) -> float:
    """Leave-one-out: the share of images with a same-label image of another source among their k neighbours.

    Images with no same-label image from another source are left out of the mean.
    """
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    unit = unit.astype(np.float32)
    ids = exact_search(unit, unit, k + 1, device="cpu")[1]  # (n, k + 1) row positions, each row's own among them
    own = ids == np.arange(len(ids))[:, None]
    dropped = np.where(own.any(axis=1), own.argmax(axis=1), k)  # its own row (else the last, pushed out by ties)
    keep = np.ones(ids.shape, dtype=bool)
    keep[np.arange(len(ids)), dropped] = False
    neighbors = ids[keep].reshape(len(ids), k)  # (n, k), leave-one-out
    hits = (labels[neighbors] == labels[:, None]) & (sources[neighbors] != sources[:, None])
    by_label: dict[str, set[str]] = {}
    for label, source in zip(labels, sources):
        by_label.setdefault(label, set()).add(source)
    has_positive = np.array([len(by_label[label] - {source}) > 0 for label, source in zip(labels, sources)])
    return float(hits.any(axis=1)[has_positive].mean())


def load_labelled(folder: Path) -> tuple[list[Image.Image], np.ndarray]:
    source = list_images(folder)
    records = [r for r in source.records if r.label is not None]
    return [load_image(source.abs_path(r)).image for r in records], np.array([r.label for r in records])


def embed(encoder, images: list[Image.Image], batch: int = 128) -> np.ndarray:
    return np.concatenate([encoder.embed_pil(images[i:i + batch]) for i in range(0, len(images), batch)])


def raw_pixels(images: list[Image.Image], size: int) -> np.ndarray:
    return np.stack([np.asarray(im.resize((size, size), Image.BILINEAR), dtype=np.float32).ravel() for im in images])


def score(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray | None,
          query_labels: np.ndarray | None, sources: np.ndarray | None = None) -> dict[str, float]:
    """k-NN accuracy (k=20, T=0.07) and class retrieval recall/precision@10; leave-one-out without queries.

    With ``sources`` (leave-one-out only) also the cross-source recall@10 (``cross_source_recall``).
    """
    loo = queries is None
    q, q_labels = (bank, bank_labels) if loo else (queries, query_labels)
    knn = knn_accuracy(bank, bank_labels, q, q_labels, ks=[20], temperature=0.07, leave_one_out=loo, device="cpu")
    retrieval = class_retrieval(bank, bank_labels, q, q_labels, ks=[10], leave_one_out=loo, device="cpu")
    scores = {"knn_accuracy": round(knn.weighted[20], 4), "recall_at_10": round(retrieval.recall[10], 4),
              "precision_at_10": round(retrieval.precision[10], 4)}
    if sources is not None:
        scores["cross_source_recall_at_10"] = round(cross_source_recall(bank, bank_labels, sources), 4)
    return scores




def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="labelled ImageFolder to train and evaluate on (default: sample data)")
    parser.add_argument("--dataset", choices=REAL_SETS, help="a real set of benchmarks/real_sets.py under --data-root "
                                                            "(leave-one-out, with cross-source recall@10)")
    parser.add_argument("--data-root", type=Path, default=Path("data/real"),
                        help="where `python benchmarks/real_sets.py build --out DIR` put the real sets")
    parser.add_argument("--queries", type=Path, help="held-out labelled ImageFolder of queries")
    parser.add_argument("--methods", default="simclr,moco,dino,mae")
    parser.add_argument("--minutes", type=float, default=3.0, help="wall-clock training budget per method")
    parser.add_argument("--epochs", type=float, help="train this many epochs per method instead of --minutes "
                                                     "(a fixed length, for comparing settings on a noisy machine)")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", dest="assignments", action="append", default=[],
                        help="extra config field for every run, KEY=VALUE (repeatable)")
    parser.add_argument("--quick", action="store_true", help="CI-sized: test_resnet, 32 px, 300 images, 20 s each")
    parser.add_argument("--keep", type=Path, help="keep the run directories under this folder")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    if args.dataset and (args.data or args.queries):
        parser.error("--dataset replaces --data/--queries; give one or the other")
    if args.quick:
        args.backbone, args.image_size, args.minutes, args.batch_size = "test_resnet", 32, 1 / 3, 32
    train_config(settings=args.assignments)  # a bad --set fails here, before any data is made
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        dataset_name = str(args.data) if args.data else "sample data (seed 0; queries: seed 1)"
        sources = None
        if args.dataset:
            dataset_name = args.dataset
            args.data, bank_images, bank_labels, sources = load_real_set(args.data_root, args.dataset)
            query_images, query_labels = None, None
        elif args.data is None:
            n = 300 if args.quick else 1000
            args.data = make_sample_dataset(work / "sample", n_images=n, image_size=args.image_size, seed=0).root
            args.queries = make_sample_dataset(work / "sample-queries", n_images=n // 2, image_size=args.image_size,
                                               seed=1).root
        if not args.dataset:
            bank_images, bank_labels = load_labelled(args.data)
            query_images, query_labels = load_labelled(args.queries) if args.queries else (None, None)
        rows: dict[str, dict[str, object]] = {}
        for name, size in (("raw pixels", args.image_size), (f"raw {RAW_SMALL_SIZE}x{RAW_SMALL_SIZE} pixels",
                                                               RAW_SMALL_SIZE)):
            raw_bank = raw_pixels(bank_images, size)
            mean = raw_bank.mean(axis=0)
            raw_queries = raw_pixels(query_images, size) - mean if query_images else None
            rows[name] = score(raw_bank - mean, bank_labels, raw_queries, query_labels, sources)
        random_init = create_encoder(f"timm:{args.backbone}", image_size=args.image_size, device=args.device)
        rows["random init"] = score(embed(random_init, bank_images), bank_labels,
                                    embed(random_init, query_images) if query_images else None, query_labels, sources)
        for method in args.methods.split(","):
            run = work / f"run-{method}-{time.strftime('%H%M%S')}"
            # MAE masks ViT patches: beside a CNN --backbone it trains vit_tiny with 8-px patches instead
            vit = ["backbone=vit_tiny_patch16_224", "model_kwargs={patch_size: 8}"] \
                if method == "mae" and not args.backbone.startswith(("vit", "deit")) else []
            config = train_config(args.data, run, method=method, backbone=args.backbone, image_size=args.image_size,
                                  batch_size=args.batch_size, epochs=args.epochs,
                                  max_minutes=None if args.epochs else args.minutes, device=args.device,
                                  settings={"progress": False})
            result = train(config=config, settings=[*args.assignments, *vit])
            encoder = create_encoder(run, device=args.device)
            recipe = {"recipe": train_config(config=run).dino.recipe} if method == "dino" else {}
            rows[f"{method} (vit_tiny/8)" if vit else method] = {**score(embed(encoder, bank_images), bank_labels,
                                    embed(encoder, query_images) if query_images else None, query_labels, sources),
                            **recipe, "steps": result.steps, "epochs": result.epochs, "train_seconds": result.seconds,
                            "images_per_second": result.images_per_second, "final_loss": round(result.final_loss, 4),
                            "warnings": list(result.warnings)}
    protocol = "held-out queries" if args.queries else "leave-one-out"
    length = f"{args.epochs:g} epochs" if args.epochs else f"{args.minutes:g} min"
    print(f"{args.backbone} @ {args.image_size}px, batch {args.batch_size}, {length} per method, "
          f"{len(bank_labels)} images of {dataset_name} ({protocol}); k-NN k=20 T=0.07")
    cross = sources is not None
    headers = ["encoder", "k-NN acc", *(["x-source R@10"] if cross else []), "recall@10", "precision@10", "steps",
               "epochs"]
    table = [headers] + [[name, f"{r['knn_accuracy']:.3f}",
                          *([f"{r['cross_source_recall_at_10']:.3f}"] if cross else []),
                          f"{r['recall_at_10']:.3f}", f"{r['precision_at_10']:.3f}",
                          str(r.get("steps", "-")), f"{r['epochs']:.1f}" if "epochs" in r else "-"]
                         for name, r in rows.items()]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    if not args.no_save:
        import sslsearch

        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        record = {"bench": "ssl_quality", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "commit": git_commit(),
                  "machine": {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
                              "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                              "load_average": os.getloadavg()[0],
                              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
                  "versions": {"torch": torch.__version__, "sslsearch": sslsearch.__version__},
                  "settings": {"data": dataset_name, "dataset": args.dataset or None, "protocol": protocol,
                               "backbone": args.backbone, "image_size": args.image_size,
                               "batch_size": args.batch_size, "minutes": None if args.epochs else args.minutes,
                               "epochs": args.epochs, "extra": args.assignments,
                               "quick": args.quick},
                  "results": rows}
        with open(RESULTS, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
