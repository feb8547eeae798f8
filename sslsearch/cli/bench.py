"""`sslsearch bench knn|linear|retrieval|index|all|dataset`: measure embeddings and indexes."""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer

from ..errors import InvalidArgumentError
from .common import DeviceOption, JsonOption, info, print_json, table

QueriesOption = typer.Option(None, "--queries", "-q", help="A separate query store (e.g. the test split; a "
                             "directory or a URI); must come from the same encoder.")
LabelsOption = typer.Option(None, "--labels", help="CSV/Parquet with path,label columns (paths as in the store) "
                            "instead of the store's ImageFolder labels.")
DropOption = typer.Option(False, "--drop-unlabelled", help="Evaluate only labelled rows instead of refusing when "
                          "some rows have no label.")
HoldoutOption = typer.Option(None, "--holdout", help="Hold out this fraction of each class of EMB as queries "
                             "(seeded) instead of leave-one-out.")
LeaveOneOutOption = typer.Option(False, "--leave-one-out", help="Every row queries all the others (the default "
                                 "without --queries/--holdout).")
SeedOption = typer.Option(0, "--seed", help="Seed of the holdout split, query sample and probe.")


def _ints(text: Optional[str], what: str) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        values = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise InvalidArgumentError(f"{what} must be comma-separated integers like 10,20,100, got {text!r}") from None
    if not values:
        raise InvalidArgumentError(f"{what} is empty; give integers like 10,20,100")
    return values


def _command_line(context: typer.Context) -> str:
    """The command as typed, rebuilt from the options given on the command line (for "reproduce")."""
    words = context.command_path.split()
    for parameter in context.command.params:
        source = context.get_parameter_source(parameter.name)
        if source is None or source.name != "COMMANDLINE":
            continue
        value = context.params[parameter.name]
        if getattr(parameter, "param_type_name", "") == "argument":
            words.append(str(value))
        elif isinstance(value, bool):
            words.append(parameter.opts[0])
        else:
            words += [parameter.opts[0], str(value)]
    return shlex.join(words)


def _pct(value: float) -> str:
    return f"{100 * value:.2f} %"


KNN_HELP = """k-NN classification accuracy of the embeddings in EMB.

The DINO protocol (cosine similarity, k in 10, 20, 100, 200, softmax-weighted votes with T=0.07),
with a plain majority vote beside it.

* **Labels** come from the store's `label` column (the ImageFolder class) or --labels FILE.
* **Queries**: --queries EMB2 (e.g. the test split), --holdout FRACTION of EMB, or leave-one-out
  (the default).

Example: `sslsearch bench knn emb-train/ --queries emb-test/`
"""


def knn_command(
    store: str = typer.Argument(..., metavar="EMB", help="Embedding store (the database / training split): a "
                               "directory or a URI such as s3://bucket/emb."),
    queries: Optional[str] = QueriesOption, labels: Optional[Path] = LabelsOption, drop_unlabelled: bool = DropOption,
    holdout: Optional[float] = HoldoutOption, leave_one_out: bool = LeaveOneOutOption,
    k: Optional[str] = typer.Option(None, "--k", "-k", help="Comma-separated ks (default 10,20,100,200; those "
                                    "larger than the database are left out)."),
    temperature: float = typer.Option(0.07, "--temperature", help="Softmax temperature of the weighted vote."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also write accuracy vs k as this PNG."),
    seed: int = SeedOption, device: str = DeviceOption, as_json: bool = JsonOption,
) -> None:
    from ..evaluate import knn_evaluate, plot_knn_accuracy
    from ..evaluate.labels import load_split

    split = load_split(store, queries=queries, labels_file=labels, drop_unlabelled=drop_unlabelled, holdout=holdout,
                       leave_one_out=leave_one_out or None, seed=seed)
    result = knn_evaluate(split, ks=_ints(k, "--k"), temperature=temperature, device=device)
    if plot is not None:
        plot_knn_accuracy(result, plot)
    if as_json:
        return print_json(result.to_dict())
    for note in result.notes:
        info(f"note: {note}")
    typer.echo(f"k-NN accuracy ({split.describe()}, {result.n_classes} classes)")
    typer.echo(table([[k_, _pct(result.weighted[k_]), _pct(result.majority[k_])] for k_ in result.ks],
                     ["k", f"weighted (T={temperature:g})", "majority"]))


LINEAR_HELP = """Linear-probe accuracy of the embeddings in EMB.

Logistic regression on the frozen embeddings (torch, on the GPU when there is one), with a small
learning-rate × weight-decay sweep chosen on a validation tenth of the training rows, then
refitted and scored on the test rows (--queries EMB2, or --holdout, default 0.2).

Example: `sslsearch bench linear emb-train/ --queries emb-test/`
"""


def linear_command(
    store: str = typer.Argument(..., metavar="EMB", help="Embedding store (the training split): a directory or "
                               "a URI such as s3://bucket/emb."),
    queries: Optional[str] = QueriesOption, labels: Optional[Path] = LabelsOption, drop_unlabelled: bool = DropOption,
    holdout: Optional[float] = typer.Option(None, "--holdout", help="Test fraction of each class when no --queries "
                                            "(default 0.2)."),
    epochs: int = typer.Option(50, "--epochs", help="Passes over the training rows per fit."),
    batch_size: int = typer.Option(256, "--batch-size", help="Rows per optimisation step."),
    seed: int = SeedOption, device: str = DeviceOption, as_json: bool = JsonOption,
) -> None:
    from ..evaluate import linear_evaluate
    from ..evaluate.labels import load_split

    split = load_split(store, queries=queries, labels_file=labels, drop_unlabelled=drop_unlabelled, holdout=holdout,
                       leave_one_out=False, seed=seed)
    result = linear_evaluate(split, epochs=epochs, batch_size=batch_size, seed=seed, device=device)
    if as_json:
        return print_json(result.to_dict())
    typer.echo(f"linear probe ({split.describe()}, {result.n_classes} classes, {result.epochs} epochs, "
               f"{result.device}): test top-1 {_pct(result.test_accuracy)} (train {_pct(result.train_accuracy)}) "
               f"with lr {result.learning_rate:g}, weight decay {result.weight_decay:g}")


RETRIEVAL_HELP = """Retrieval quality of EMB: recall@k, precision@k and mAP.

Recall@k is the share of queries with a positive in their top k. The ground truth is one of:

* **classes**: the store's labels, or --labels FILE (a `path,group` file gives instance groups);
* **--pairs FILE.csv**: positive pairs, two columns of paths, undirected (e.g. the sample data's
  `near_duplicates.csv`);
* **--revisited gnd_roxford5k.pkl**: the revisited Oxford/Paris protocol, Easy / Medium / Hard mAP
  with junk images left out (pass the cropped queries with --queries).

Example: `sslsearch bench retrieval emb/ --pairs sample-data/near_duplicates.csv`
"""


def retrieval_command(
    store: str = typer.Argument(..., metavar="EMB", help="Embedding store (the database): a directory or a URI "
                               "such as s3://bucket/emb."),
    queries: Optional[str] = QueriesOption, labels: Optional[Path] = LabelsOption, drop_unlabelled: bool = DropOption,
    holdout: Optional[float] = HoldoutOption, leave_one_out: bool = LeaveOneOutOption,
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="CSV of positive pairs of paths (instance ground truth)."),
    revisited: Optional[Path] = typer.Option(None, "--revisited", help="Revisited Oxford/Paris gnd_*.pkl (read with a "
                                             "restricted unpickler)."),
    k: str = typer.Option("1,5,10", "--k", "-k", help="Comma-separated cut-offs for recall@k and precision@k."),
    map_at: Optional[int] = typer.Option(None, "--map-at", help="mAP ranking depth; 0 = full ranking (default: full "
                                         "up to 10,000 database rows, else 100)."),
    seed: int = SeedOption, device: str = DeviceOption, as_json: bool = JsonOption,
) -> None:
    from ..evaluate import read_positive_pairs, retrieval_evaluate
    from ..evaluate.labels import load_split
    from ..evaluate.revisited import revisited_from_stores

    if revisited is not None:
        rev = revisited_from_stores(store, revisited, queries=queries, device=device)
        if as_json:
            return print_json(rev.to_dict())
        for note in rev.notes:
            info(f"note: {note}")
        rows = [[p, _pct(rev.mean_average_precision[p])] + [_pct(v) for v in rev.mean_precision[p].values()]
                for p in rev.mean_average_precision]
        return typer.echo(table(rows,
                                ["protocol", "mAP"] + [f"mP@{kk}" for kk in rev.mean_precision["medium"]]))
    split = load_split(store, queries=queries, labels_file=labels, drop_unlabelled=drop_unlabelled, holdout=holdout,
                       leave_one_out=leave_one_out or None, seed=seed, require_labels=pairs is None)
    result = retrieval_evaluate(split, pairs=read_positive_pairs(pairs) if pairs else None, ks=_ints(k, "--k"),
                                map_depth=None if map_at is None else (map_at or 10**12), device=device)
    if as_json:
        return print_json(result.to_dict())
    typer.echo(f"{result.ground_truth} retrieval ({split.describe()}; {result.n_queries} queries with a positive)")
    typer.echo(table([[f"R@{kk}", _pct(result.recall[kk])] for kk in result.ks]
                     + [[f"P@{kk}", _pct(result.precision[kk])] for kk in result.ks]
                     + [[result.map_label, _pct(result.mean_average_precision)]], ["metric", "value"]))


INDEX_HELP = """Recall vs speed of the index in IDX over its search parameter.

Measures recall@k against exact search over the store, and queries/s (batch and one at a time),
over a sweep of the search parameter (nprobe for IVF, efSearch for HNSW). Prints the table and the
fastest setting that meets --target-recall; --apply writes that setting into the index card
(`index.json`), so `sslsearch search` uses it.

Example: `sslsearch bench index idx/ --target-recall 0.95 --plot recall.png --apply`
"""


def index_command(
    index_dir: Path = typer.Argument(..., metavar="IDX", help="Index directory (index.faiss + index.json)."),
    store: Optional[str] = typer.Option(None, "--store", "-s", help="The embedding store the index was built from, a "
                                        "directory or a URI (default: the store named in the index card)."),
    k: int = typer.Option(10, "--k", "-k", help="Neighbours compared with exact search."),
    n_queries: int = typer.Option(1000, "--n-queries", help="Store rows sampled as queries."),
    target_recall: float = typer.Option(0.95, "--target-recall", help="Recall@k the operating point must reach."),
    values: Optional[str] = typer.Option(None, "--values", help="Comma-separated nprobe/efSearch values to sweep."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also write the recall-QPS plot as this PNG."),
    apply: bool = typer.Option(False, "--apply", help="Write the operating point into the index card."),
    seed: int = SeedOption, device: str = DeviceOption, as_json: bool = JsonOption,
) -> None:
    from ..evaluate import plot_recall_qps, sweep_index

    result = sweep_index(index_dir, store, k=k, n_queries=n_queries, target_recall=target_recall,
                         values=_ints(values, "--values"), apply=apply, seed=seed, device=device)
    if plot is not None:
        plot_recall_qps(result, plot)
    if as_json:
        return print_json(result.to_dict())
    typer.echo(f"{result.factory}, {result.ntotal} vectors; recall@{k} vs exact for {result.queries_from}")
    typer.echo(table([[s.label, f"{s.recall:.4f}", f"{s.qps_batch:,.0f}", f"{s.qps_single:,.0f}"]
                      for s in result.settings], ["setting", f"recall@{k}", "QPS batch", "QPS single"]))
    point = result.operating_point
    for note in result.notes:
        info(f"note: {note}")
    if point is not None:
        typer.echo(f"operating point (recall@{k} >= {target_recall:g}): {point.label}, recall {point.recall:.4f}, "
                   f"{point.qps_batch:,.0f} QPS" + ("; written to the index card" if result.applied else ""))


ALL_HELP = """Every evaluation the inputs allow, in one report folder.

Writes `report.md`, `report.json` and PNG plots (k-NN accuracy vs k, recall vs QPS of --index,
training curves of --run). Parts whose inputs are missing are skipped with a note.

Example: `sslsearch bench all emb/ --out report/ --index idx/ --run run/`
"""


def all_command(
    context: typer.Context,
    store: str = typer.Argument(..., metavar="EMB", help="Embedding store: a directory or a URI such as "
                               "s3://bucket/emb (the report folder --out is local)."),
    out: Path = typer.Option(..., "--out", "-o", help="Report folder (new, or one written by bench all)."),
    queries: Optional[str] = QueriesOption, labels: Optional[Path] = LabelsOption, drop_unlabelled: bool = DropOption,
    holdout: Optional[float] = HoldoutOption,
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="CSV of positive pairs (instance retrieval)."),
    revisited: Optional[Path] = typer.Option(None, "--revisited", help="Revisited Oxford/Paris gnd_*.pkl."),
    index_dir: Optional[Path] = typer.Option(None, "--index", help="An index over EMB: recall-QPS sweep."),
    target_recall: float = typer.Option(0.95, "--target-recall", help="Operating point of the index sweep."),
    run: Optional[Path] = typer.Option(None, "--run", help="A `sslsearch train` run: training curves."),
    no_linear: bool = typer.Option(False, "--no-linear", help="Skip the linear probe."),
    epochs: int = typer.Option(50, "--epochs", help="Linear-probe epochs."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a folder that holds other files."),
    seed: int = SeedOption, device: str = DeviceOption, as_json: bool = JsonOption,
) -> None:
    from ..evaluate import SuiteOptions, run_benchmarks

    options = SuiteOptions(queries=str(queries) if queries else None, labels_file=str(labels) if labels else None,
                           drop_unlabelled=drop_unlabelled, holdout=holdout, linear=not no_linear, linear_epochs=epochs,
                           pairs_file=str(pairs) if pairs else None, revisited=str(revisited) if revisited else None,
                           index_dir=str(index_dir) if index_dir else None, target_recall=target_recall,
                           run_dir=str(run) if run else None, device=device, seed=seed, overwrite=overwrite)
    report, paths = run_benchmarks(store, out, options, command=_command_line(context))
    if as_json:
        return print_json({"report": report.to_dict(), "files": {k: str(v) for k, v in paths.items()}})
    typer.echo(f"report written to {paths['markdown']} ({', '.join(sorted(p.name for p in paths.values()))})")


DATASET_HELP = """Write a local CIFAR-10/100 folder as ImageFolders for `sslsearch embed`.

Reads `cifar-10-batches-py` or `cifar-100-python` and writes PNG ImageFolders `OUT/train/<class>/`
and `OUT/test/<class>/` (with `labels.csv`). The batch pickles are read with a restricted unpickler
(arrays and plain containers only); nothing is downloaded.

Example: `sslsearch bench dataset cifar-10-batches-py/ --out cifar10/`
"""


def dataset_command(
    cifar_dir: Path = typer.Argument(..., metavar="CIFAR_DIR", help="Extracted CIFAR python folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (gets train/ and test/)."),
    as_json: bool = JsonOption,
) -> None:
    from ..evaluate import export_cifar

    folders = export_cifar(cifar_dir, out)
    if as_json:
        return print_json({split: str(path) for split, path in folders.items()})
    typer.echo(f"wrote {folders['train']} and {folders['test']}; next: sslsearch embed {folders['train']} --encoder ... "
               f"--out emb-train/")


def register(app: typer.Typer, index_app: typer.Typer, bench_app: typer.Typer) -> None:
    bench_app.command("knn", help=KNN_HELP)(knn_command)
    bench_app.command("linear", help=LINEAR_HELP)(linear_command)
    bench_app.command("retrieval", help=RETRIEVAL_HELP)(retrieval_command)
    bench_app.command("index", help=INDEX_HELP)(index_command)
    bench_app.command("all", help=ALL_HELP)(all_command)
    bench_app.command("dataset", help=DATASET_HELP)(dataset_command)
