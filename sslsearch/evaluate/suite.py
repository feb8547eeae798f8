"""`bench all`: every evaluation that the inputs allow, into one report folder with plots."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import InvalidArgumentError
from ..files import prepare_output_dir
from ..store import EmbeddingStore
from .index_sweep import sweep_index
from .knn import DINO_TEMPERATURE, knn_evaluate
from .labels import LabelledEmbeddings, load_labelled, make_split
from .linear import linear_evaluate
from .plots import plot_knn_accuracy, plot_recall_qps, plot_training_curves, read_training_curves
from .report import REPORT_JSON, REPORT_MD, BenchmarkReport, write_report
from .retrieval import RETRIEVAL_KS, read_positive_pairs, retrieval_evaluate
from .revisited import read_revisited_ground_truth, revisited_evaluate

PLOT_FILES = {"knn": "knn_accuracy.png", "recall_qps": "recall_qps.png", "training": "training_curves.png"}


@dataclass(frozen=True)
class SuiteOptions:
    """What ``bench all`` runs and how (defaults: the published protocols)."""

    queries: str | None = None  # query store; default: leave-one-out (k-NN, retrieval), 20 % holdout (linear)
    labels_file: str | None = None  # CSV/Parquet path,label overriding the store's labels
    drop_unlabelled: bool = False  # evaluate the labelled rows only instead of refusing
    holdout: float | None = None  # held-out query fraction instead of leave-one-out
    ks: Sequence[int] | None = None  # k-NN ks; default DINO's 10, 20, 100, 200 (those that fit)
    temperature: float = DINO_TEMPERATURE  # weighted-vote temperature
    linear: bool = True  # run the linear probe
    linear_epochs: int = 50  # linear-probe epochs per fit
    retrieval_ks: Sequence[int] = RETRIEVAL_KS  # recall/precision cut-offs
    map_depth: int | None = None  # mAP depth; default full up to 10k database rows, else 100
    pairs_file: str | None = None  # positive pairs CSV for instance retrieval
    revisited: str | None = None  # gnd_roxford5k.pkl / gnd_rparis6k.pkl
    index_dir: str | None = None  # an index over the store: recall–QPS sweep
    target_recall: float = 0.95  # operating point of the sweep
    apply: bool = False  # write the operating point into the index card
    run_dir: str | None = None  # a training run: curves from metrics.jsonl
    device: str = "auto"
    seed: int = 0
    overwrite: bool = False  # replace a report folder that holds other files


def _store_info(store: EmbeddingStore) -> dict[str, Any]:
    return {"directory": str(store.directory), "rows": len(store), "dim": store.dim, "encoder": dict(store.encoder)}


def run_benchmarks(store: str | os.PathLike[str], out: str | os.PathLike[str], options: SuiteOptions = SuiteOptions(),
                   *, command: str = "") -> tuple[BenchmarkReport, dict[str, Path]]:
    """Run k-NN, linear probe, retrieval, revisited, index sweep and training curves as the inputs allow.

    Labelled parts need labels (the store's ImageFolder labels or ``labels_file``); without any,
    they are skipped with a note. The report folder gets report.md, report.json and PNG plots.

    Returns:
        The report and {"json", "markdown", <plot names>: path}.

    Raises:
        InvalidArgumentError: nothing can be evaluated (no labels, pairs, ground truth or index).
        OutputExistsError: ``out`` holds other files and ``overwrite`` is false.
        (and the errors of each evaluation: missing labels, mismatched encoders, ...)
    """
    opened = EmbeddingStore.open(store)
    out = prepare_output_dir(out, overwrite=options.overwrite,
                             allowed=(REPORT_JSON, REPORT_MD, *PLOT_FILES.values()))
    query_store = EmbeddingStore.open(options.queries) if options.queries else None
    labelled = opened.has_labels or options.labels_file is not None
    notes: list[str] = []
    parts: dict[str, Any] = {}
    plots: dict[str, str] = {}
    database = load_labelled(opened, labels_file=options.labels_file, drop_unlabelled=options.drop_unlabelled,
                             require_labels=labelled)
    queries: LabelledEmbeddings | None = None
    if query_store is not None:
        queries = load_labelled(query_store, labels_file=options.labels_file, drop_unlabelled=options.drop_unlabelled,
                                require_labels=labelled)
    if labelled:
        split = make_split(database, queries=queries, holdout=options.holdout,
                           leave_one_out=queries is None and options.holdout is None, seed=options.seed)
        parts["knn"] = knn_evaluate(split, ks=options.ks, temperature=options.temperature, device=options.device)
        plots["knn"] = plot_knn_accuracy(parts["knn"], out / PLOT_FILES["knn"]).name
        if options.linear:
            linear_split = split if not split.leave_one_out else make_split(database, holdout=0.2, seed=options.seed)
            parts["linear"] = linear_evaluate(linear_split, epochs=options.linear_epochs, seed=options.seed,
                                              device=options.device)
        parts["retrieval"] = retrieval_evaluate(split, ks=options.retrieval_ks, map_depth=options.map_depth,
                                                device=options.device)
    else:
        notes.append(f"{opened.directory} has no labels: k-NN, linear probe and class retrieval skipped "
                     "(pass --labels FILE to run them)")
    if options.pairs_file:
        pair_split = make_split(database, queries=queries, leave_one_out=queries is None)
        parts["instance_retrieval"] = retrieval_evaluate(pair_split, pairs=read_positive_pairs(options.pairs_file),
                                                         ks=options.retrieval_ks, map_depth=options.map_depth,
                                                         device=options.device)
    if options.revisited:
        parts["revisited"] = revisited_evaluate(database, read_revisited_ground_truth(options.revisited),
                                                queries=queries, device=options.device)
    if options.index_dir:
        parts["index"] = sweep_index(options.index_dir, opened, target_recall=options.target_recall,
                                     apply=options.apply, seed=options.seed, device=options.device)
        plots["recall_qps"] = plot_recall_qps(parts["index"], out / PLOT_FILES["recall_qps"]).name
    if options.run_dir:
        parts["training"] = read_training_curves(options.run_dir)
        plots["training"] = plot_training_curves(parts["training"], out / PLOT_FILES["training"]).name
    if not parts:
        raise InvalidArgumentError(f"nothing to evaluate in {opened.directory}: it has no labels, and no --pairs, "
                                   "--revisited, --index or --run was given")
    if database.dropped_unlabelled:
        notes.append(f"{database.dropped_unlabelled} unlabelled row(s) left out (--drop-unlabelled)")
    report = BenchmarkReport(store=_store_info(opened), queries=_store_info(query_store) if query_store else None,
                             plots=plots, notes=tuple(notes), command=command, **parts)
    paths = write_report(report, out)
    paths.update({name: out / file for name, file in plots.items()})
    return report, paths
