"""`sslsearch dedup`: exact and near-duplicate clusters of an embedding store (or of images, embedding them first)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import AllowDownloadOption, DeviceOption, JsonOption, PretrainedOption, info, print_json

HELP = """Find exact and near-duplicate images and say which to keep.

INPUT is an embedding store (from `sslsearch embed`: a directory, or a URI such as
`s3://bucket/emb`), or, with --encoder, images (a folder or a list) that are embedded into
`DUPS/embeddings` first.

* **Near duplicates**: candidate pairs from a k-NN graph (never an N×N matrix) cut at a threshold.
  By default each candidate (embedding neighbours and pixel look-alikes) is *verified* on pixels:
  one image is trimmed, mirrored, rotated and cut the ways copies differ, the best match is aligned
  further, and its score is the lower of shape and tone (a brightness gain passes, another colour
  does not). --precision (default 0.99) calibrates the threshold on edited copies of
  a sample of your own images (--edits chooses the edits: `full`, `classic` or names such as
  `pad,hflip,jpeg`). --threshold T gives a fixed cosine similarity instead; --score chooses what
  the threshold compares (cosine, adjusted: cosine less the neighbourhood density, verified).
* **Exact duplicates** (the same file bytes, the same decoded pixels) always join.
* **--against IDX**: new images that duplicate something an existing index holds are listed for
  removal (the index is not changed).

Writes `DUPS/clusters.parquet`, `keep.txt`, `remove.txt` (absolute paths), `summary.json`, and with
--report a self-contained `report.html`. DUPS is a local directory, also for a store on s3://; the
verified score and the report read the images from the store's source folder, so run dedup where
that folder is (the vectors may come from anywhere).

Examples:

* `sslsearch dedup emb/ --out dups/ --report`
* `sslsearch dedup photos/ --encoder timm:resnet50 --out dups/ --precision 0.995`
* `sslsearch dedup new_emb/ --against idx/ --out dups/`
"""


def dedup_command(
    data: str = typer.Argument(..., metavar="INPUT", help="Embedding store (a directory or a URI such as "
                               "s3://bucket/emb), or images with --encoder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory DUPS (new or empty unless --overwrite; on "
                             "this machine, also for a store on s3://)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", "-t",
                                              help="Score in (0, 1] at or above which images are duplicates (cosine "
                                                   "similarity unless --score adjusted or verified)."),
    precision: float = typer.Option(0.99, "--precision", "-p",
                                    help="Target precision in (0, 1) of the self-calibrated threshold (when no --threshold)."),
    keep: str = typer.Option("resolution", "--keep",
                             help="Which image of a cluster to keep: resolution (largest, then larger file, then smallest "
                                  "id), file-size, oldest, newest or first."),
    score: str = typer.Option("auto", "--score",
                              help="What the threshold compares: auto (verified with a calibrated threshold, adjusted "
                                   "above 100,000 images, cosine with --threshold or --against), cosine, adjusted "
                                   "or verified."),
    edits: str = typer.Option("full", "--edits",
                              help="Edits of the calibration copies for the verified score: full (crop to 70 %, "
                                   "rotate ±15°, pad, flip, greyscale, JPEG, rescale, brightness, watermark), classic, sample, "
                                   "or comma-separated names."),
    report: bool = typer.Option(False, "--report", help="Also write DUPS/report.html (thumbnails, keeper marked)."),
    against: Optional[Path] = typer.Option(None, "--against", help="Existing index directory to check new images against."),
    encoder: Optional[str] = typer.Option(None, "--encoder", "-e",
                                          help="Embed INPUT images first with this encoder (`timm:<name>` or a run directory)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Local state dict for a timm: --encoder."),
    pretrained: bool = PretrainedOption, allow_download: bool = AllowDownloadOption,
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Input size in px for --encoder."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Images per forward pass when embedding (--encoder)."),
    neighbors: int = typer.Option(16, "--neighbors", "-k", help="Neighbours per image in the k-NN graph."),
    method: str = typer.Option("auto", "--method",
                               help="k-NN graph: auto, exact, partitioned (approximate, CPU scale), ivf (each image "
                                    "searched in an IVF index of the store built in DUPS and removed after) or join "
                                    "(the index's lists joined by matrix products: faster from millions of images; "
                                    "a copy of the store in DUPS while it runs). ivf and join: cosine score only."),
    memory_budget: Optional[str] = typer.Option(
        None, "--memory-budget",
        help="Memory for the k-NN graph, e.g. 4GB: with --threshold (cosine), --method auto streams the store through "
             "an IVF index (join from 5M images, else ivf) when the in-memory graph would need more."),
    sample: int = typer.Option(300, "--sample", help="Edited copies made to calibrate the threshold."),
    seed: int = typer.Option(0, "--seed", help="Seed of the calibration sample and the partitioned graph."),
    report_clusters: int = typer.Option(500, "--report-clusters", help="Clusters shown in report.html (largest first)."),
    device: str = DeviceOption,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace earlier results in DUPS."),
    as_json: bool = JsonOption,
) -> None:
    from ..dedup import deduplicate
    from ..dedup.convenience import deduplicate_images
    from ..errors import InvalidArgumentError
    from ..store import is_store

    options = dict(threshold=threshold, precision=precision, keep=keep, neighbors=neighbors, method=method,
                   sample_size=sample, seed=seed, against=against, score=score, edits=edits, report=report,
                   report_max_clusters=report_clusters, memory_budget=memory_budget)
    if encoder is not None:
        result = deduplicate_images(data, encoder, out, weights=weights, image_size=image_size, batch_size=batch_size,
                                    device=device, overwrite=overwrite, pretrained=pretrained,
                                    allow_download=allow_download, **options)
    elif is_store(data) or not Path(data).exists():  # a URI is a store; a missing path gets the store's error
        result = deduplicate(data, out, device=device, overwrite=overwrite, **options)
    else:
        raise InvalidArgumentError(f"{data} is not an embedding store (no manifest.json); pass --encoder ENCODER to "
                                   "embed its images first, or give a store made by `sslsearch embed`")
    if as_json:
        print_json(result.summary)
        return
    if result.threshold.calibration is not None and not result.threshold.calibration.reached:
        info(f"warning: no threshold reaches precision {precision:g} on this data; used the most precise one. "
             "Check report.html, use a trained encoder, or pass --threshold")
    typer.echo(result.describe())
    if result.report is not None:
        typer.echo(f"report: {result.report}")


def register(app: typer.Typer, index_app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("dedup", help=HELP)(dedup_command)
