"""`sslsearch index build` and `sslsearch index info`: build a FAISS index over an embedding store, print its card."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import DeviceOption, JsonOption, print_json

BUILD_HELP = """Build a FAISS index over the embedding store EMB and write it to --out.

The index directory holds `index.faiss` (readable by plain `faiss.read_index`; faiss ids are the
store ids) and the card `index.json`.

* **--kind auto** picks by size and --memory-budget: Flat up to 20,000 vectors, HNSW32 up to 2M,
  then IVF-SQ8, and IVF-PQ when the budget is tight.
* After building, recall@10 against exact search is measured on 500 held-out store vectors
  (added once measured), and efSearch / nprobe are tuned to the smallest setting that reaches
  recall@10 ≥ 0.95; both go into the card.

* **--on-disk** builds an IVF index for stores beyond memory: trained on a sample, filled shard by
  shard in --workers processes, its inverted lists merged into `index.ivfdata` and memory-mapped at
  search; the budget then bounds the build's working memory, not the index (docs/scale.md).
* **--engine ray** (with --on-disk) fills each part in a Ray task on whatever machines the Ray
  cluster has (`pip install 'sslsearch[ray]'`; --address auto joins a cluster started with
  `ray start`); this machine trains, merges and measures. Every node must read the store (a shared
  path or s3://); the index and card are the same as with the local engine, and the card records
  each part's rows, seconds and node.

Example: `sslsearch index build emb/ --out idx/ --kind auto --memory-budget 4GB`

Example: `sslsearch index build emb/ --out idx/ --on-disk --memory-budget 2GB --workers 4`

Example: `sslsearch index build s3://bucket/emb --out idx/ --on-disk --engine ray --address auto`
"""

INFO_HELP = """Print the card of the index directory IDX.

The card names the index type, vectors, encoder, store, search parameters, measured recall@10,
size and build time. --verify also reads `index.faiss` and checks that it matches the card.

Example: `sslsearch index info idx/ --verify`
"""


def build_command(
    store: str = typer.Argument(..., metavar="EMB", help="Embedding store written by `sslsearch embed`: a directory "
                                "or a URI such as `s3://bucket/emb`."),
    out: Path = typer.Option(..., "--out", "-o", help="Index directory to write (new or empty)."),
    kind: str = typer.Option("auto", "--kind", help="auto, flat, hnsw, ivf or ivfpq."),
    memory_budget: str = typer.Option("4GB", "--memory-budget",
                                      help="Most memory the index may take, e.g. 4GB, 512MiB; 'none' for no limit."),
    device: str = DeviceOption,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an index already at --out."),
    on_disk: bool = typer.Option(False, "--on-disk", help="IVF lists on disk (index.ivfdata), for stores beyond memory."),
    workers: Optional[int] = typer.Option(None, "--workers", help="--on-disk: processes filling parts (default 2); "
                                          "with --engine ray: tasks at once (default: one per cluster CPU)."),
    engine: str = typer.Option("local", "--engine",
                               help="--on-disk: fill parts in local processes or Ray tasks (ray)."),
    address: Optional[str] = typer.Option(None, "--address",
                                          help="--engine ray: the cluster, auto or ray://host:10001 (default: local)."),
    nlist: Optional[int] = typer.Option(None, "--nlist", help="--on-disk: inverted lists (default ≈ 4·√n); fewer "
                                        "train and fill faster, at longer lists per probe."),
    as_json: bool = JsonOption,
) -> None:
    from ..index.build import build_index

    budget = None if memory_budget.strip().lower() in ("none", "unlimited") else memory_budget
    card = build_index(store, out, kind=kind, memory_budget=budget, device=device, overwrite=overwrite,
                       on_disk=on_disk, workers=workers, engine=engine, address=address, nlist=nlist)
    if as_json:
        print_json(card.to_dict())
        return
    typer.echo(f"wrote {Path(out) / 'index.faiss'} and index.json")
    for line in card.summary_lines():
        typer.echo(line)


def info_command(
    index_dir: Path = typer.Argument(..., metavar="IDX", help="Index directory written by `sslsearch index build`."),
    verify: bool = typer.Option(False, "--verify", help="Also read `index.faiss` and check it against the card."),
    as_json: bool = JsonOption,
) -> None:
    from ..index.io import read_card, read_index_files

    card = read_index_files(index_dir)[1] if verify else read_card(index_dir)
    if as_json:
        print_json(card.to_dict())
        return
    for line in card.summary_lines():
        typer.echo(line)
    if verify:
        typer.echo("verified   index.faiss matches the card")


def register(app: typer.Typer, index_app: typer.Typer, bench_app: typer.Typer) -> None:
    index_app.command("build", help=BUILD_HELP)(build_command)
    index_app.command("info", help=INFO_HELP)(info_command)
