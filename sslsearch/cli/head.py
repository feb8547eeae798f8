"""`sslsearch head train|predict|evaluate|export`: classification heads on frozen embeddings."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import DeviceOption, HelpCommand, HelpGroup, JsonOption, info, print_json, table

head_app = typer.Typer(help="Task heads on frozen embeddings: train a classifier on a store, predict, evaluate, export "
                       "to ONNX.", no_args_is_help=True, rich_markup_mode="markdown", cls=HelpGroup)

TRAIN_HELP = """Train a classification head (linear or a small MLP) on the frozen embeddings of the store EMB.

Labels come from **--labels**:

* **folders**: the store's ImageFolder class folders (its `label` column);
* **FILE.csv** or **.parquet**: a `path` column (relative to the store's source folder, or absolute) or an
  `id` column (store ids), and a `label` column. With --multi-label an image may have several labels, as
  `a|b` in one cell or as several rows.

Rows without a label are left out. A seeded share of each class (--validation-fraction) is held out: it
picks the epoch with the lowest validation loss (early stopping), fits the temperature that calibrates the
probabilities, and gives the metrics. Classes are balanced by loss weights (--balance). The head directory
gets head.safetensors, head.json, metrics.json and confusion.png.

Example: `sslsearch head train emb/ --labels folders --out head/ --kind mlp`
"""


def train_command(
    store: str = typer.Argument(..., metavar="EMB", help="Embedding store written by `sslsearch embed`: a directory "
                               "or a URI such as s3://bucket/emb (the head directory --out is local)."),
    labels: str = typer.Option(..., "--labels", "-l", help="Labels CSV/Parquet (path|id, label), or `folders`."),
    out: Path = typer.Option(..., "--out", "-o", help="Head directory to write (new or empty)."),
    kind: str = typer.Option("linear", "--kind", help="linear or mlp."),
    multi_label: bool = typer.Option(False, "--multi-label", help="Several labels per image (per-label sigmoids)."),
    hidden_dim: int = typer.Option(256, "--hidden-dim", help="Hidden width of the mlp head."),
    epochs: int = typer.Option(200, "--epochs", help="Most epochs; early stopping usually ends sooner."),
    patience: int = typer.Option(20, "--patience", help="Stop after this many epochs without a lower validation loss."),
    learning_rate: float = typer.Option(1e-3, "--lr", help="AdamW learning rate."),
    weight_decay: float = typer.Option(1e-4, "--weight-decay", help="AdamW weight decay."),
    batch_size: int = typer.Option(256, "--batch-size", "-b", help="Rows per step."),
    validation_fraction: float = typer.Option(0.2, "--validation-fraction", help="Share of each class held out."),
    balance: str = typer.Option("loss", "--balance", help="loss (class weights), sampling or none."),
    calibrate: bool = typer.Option(True, "--calibrate/--no-calibrate", help="Fit a temperature on the validation rows."),
    seed: int = typer.Option(0, "--seed", help="Initialisation, data order and validation split."),
    device: str = DeviceOption,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a head in --out, or write into a non-empty one."),
    as_json: bool = JsonOption,
) -> None:
    from ..head import train_head

    result = train_head(store, labels, out, multi_label=multi_label, device=device, overwrite=overwrite, kind=kind,
                        hidden_dim=hidden_dim, epochs=epochs, patience=patience, learning_rate=learning_rate,
                        weight_decay=weight_decay, batch_size=batch_size, validation_fraction=validation_fraction,
                        balance=balance, calibrate=calibrate, seed=seed)
    if result.unlabelled or result.unmatched:
        info(f"note: {result.unlabelled} store row(s) without a label were left out; {result.unmatched} labels-file "
             "entr(y/ies) named no store row")
    if as_json:
        print_json(result.to_dict())
        return
    typer.echo(result.summary())
    typer.echo(f"wrote {out}/: head.safetensors, head.json, metrics.json, confusion.png")


PREDICT_HELP = """Run the head HEAD on INPUT: an embedding store (it must come from the head's encoder), or image files,
folders or lists, which are embedded with the head's own encoder first.

With --out, writes Parquet: id, path, label (labels for a multi-label head), score (top-class probability)
and probabilities (one per class, in head.json's label order). Without --out, prints a table, or JSON with
--json.

Examples:

* `sslsearch head predict head/ new-images/ --out predictions.parquet`
* `sslsearch head predict head/ emb/ --json`
"""


def predict_command(
    head: Path = typer.Argument(..., metavar="HEAD", help="Head directory written by `sslsearch head train`."),
    inputs: list[str] = typer.Argument(..., metavar="INPUT...", help="An embedding store (a directory or a URI such "
                                       "as s3://bucket/emb), or images / folders."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Predictions Parquet file to write."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Images per forward pass."),
    workers: int = typer.Option(0, "--workers", "-w", help="Image decode processes (0 = in-process)."),
    device: str = DeviceOption,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
    as_json: bool = JsonOption,
) -> None:
    from ..head import predict_head, write_predictions

    source = inputs[0] if len(inputs) == 1 else inputs
    predictions = predict_head(head, source, device=device, batch_size=batch_size, workers=workers)
    for skipped in predictions.skipped:
        info(f"skipped {skipped.path}: {skipped.reason}")
    if out is not None:
        write_predictions(predictions, out, overwrite=overwrite)
        info(f"wrote {len(predictions)} prediction(s) to {out}")
    if as_json:
        print_json({"head": str(head), "labels": list(predictions.labels), "predictions": predictions.to_rows()})
    elif out is None:
        key = "labels" if predictions.multi_label else "label"
        rows = [[r["id"], r["path"], "|".join(r[key]) if predictions.multi_label else r[key], f"{r['score']:.4f}"]
                for r in predictions.to_rows()]
        typer.echo(table(rows, ["id", "path", key, "score"]))


EVALUATE_HELP = """Score the head HEAD on the labelled rows of the store EMB: accuracy, balanced accuracy, macro-F1 and
calibration error (multi-label: micro- and macro-F1, mAP).

EMB must come from the head's encoder and hold images the head was not trained on. Unlike metrics.json,
measured on the validation rows that also chose the epoch and the temperature, this is an unbiased figure.
--labels as for `head train`.

Example: `sslsearch head evaluate head/ test-emb/ --labels folders`
"""


def evaluate_command(
    head: Path = typer.Argument(..., metavar="HEAD", help="Head directory written by `sslsearch head train`."),
    store: str = typer.Argument(..., metavar="EMB", help="Labelled embedding store from the head's encoder (a "
                               "directory or a URI such as s3://bucket/emb)."),
    labels: str = typer.Option("folders", "--labels", "-l", help="Labels CSV/Parquet (path|id, label), or `folders`."),
    as_json: bool = JsonOption,
) -> None:
    from ..head import evaluate_head

    result = evaluate_head(head, store, labels)
    if as_json:
        print_json(result.to_dict())
    else:
        typer.echo(result.summary())


EXPORT_HELP = """Export the head HEAD together with its backbone as one ONNX graph with a dynamic batch.

* input `images`: (n, 3, S, S) float32 RGB in [0, 1], resized and centre-cropped as head.json's encoder
  preprocessing says (the mean/std normalisation is in the graph);
* outputs `probabilities` (calibrated) and `embeddings`.

Labels, thresholds and preprocessing are in the model's metadata. When onnxruntime is installed the file
is checked against torch on random inputs. Needs `pip install 'sslsearch[onnx]'`.

Example: `sslsearch head export head/ --onnx classifier.onnx`
"""


def export_command(
    head: Path = typer.Argument(..., metavar="HEAD", help="Head directory written by `sslsearch head train`."),
    onnx: Path = typer.Option(..., "--onnx", help="The .onnx file to write."),
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (default: torch's)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
    as_json: bool = JsonOption,
) -> None:
    from ..head import export_onnx

    result = export_onnx(head, onnx, opset=opset, overwrite=overwrite)
    if as_json:
        print_json(result.to_dict())
        return
    check = (f"onnxruntime matches torch within {result.max_abs_difference:.1e}" if result.verified
             else "not verified (install onnxruntime to check it)")
    typer.echo(f"wrote {onnx} ({result.size_bytes / 1e6:.1f} MB, input images (n, 3, {result.image_size}, "
               f"{result.image_size}), {len(result.labels)} labels); {check}")


def register(app: typer.Typer, index_app: typer.Typer, bench_app: typer.Typer) -> None:
    head_app.command("train", help=TRAIN_HELP, cls=HelpCommand)(train_command)
    head_app.command("predict", help=PREDICT_HELP, cls=HelpCommand)(predict_command)
    head_app.command("evaluate", help=EVALUATE_HELP, cls=HelpCommand)(evaluate_command)
    head_app.command("export", help=EXPORT_HELP, cls=HelpCommand)(export_command)
    app.add_typer(head_app, name="head")
