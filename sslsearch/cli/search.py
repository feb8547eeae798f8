"""`sslsearch search`: the nearest neighbours of images, vectors or store ids in an index."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import DeviceOption, JsonOption, info, print_json, table

HELP = """Find the k nearest neighbours in the index IDX of each query.

Give one kind of query:

* **QUERY...**: image files or folders, embedded with the index's own encoder;
* **--vectors FILE**: a (q, dim) `.npy` array, or an embedding store directory (its encoder is checked);
* **--ids 3,17**: vectors already in the index, by store id (each query's own id is left out of its
  results; identical duplicates of it are kept).

Scores are cosine similarities (queries are L2-normalised). k must be between 1 and the number of
vectors in the index. Output: a table (query, rank, score, id, path), or JSON with --json.

With **--server URL** the search runs on a running `sslsearch serve` instead (nothing is loaded
here): every positional argument is then a query, and **--index NAME** picks one of its indexes.

Examples:

* `sslsearch search idx/ query.jpg photos/ -k 5`
* `sslsearch search idx/ --ids 3,17 --json`
* `sslsearch search idx/ --vectors queries.npy`
* `sslsearch search --server http://127.0.0.1:8000 query.jpg -k 5`
"""


def _parse_ids(text: str) -> list[int]:
    from ..errors import InvalidArgumentError

    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        ids = [int(p) for p in parts]
    except ValueError:
        raise InvalidArgumentError(f"--ids takes comma-separated integers like 3,17, got {text!r}") from None
    if not ids:
        raise InvalidArgumentError("--ids is empty; give store ids like --ids 3,17")
    return ids


def search_command(
    index_dir: Optional[Path] = typer.Argument(None, metavar="IDX",
                                               help="Index directory written by `sslsearch index build`."),
    queries: Optional[list[Path]] = typer.Argument(None, metavar="QUERY", help="Query image files or folders."),
    vectors: Optional[Path] = typer.Option(None, "--vectors", help="A (q, dim) `.npy` file, or an embedding store."),
    ids: Optional[str] = typer.Option(None, "--ids", help="Comma-separated store ids, e.g. 3,17."),
    k: int = typer.Option(10, "-k", "--k", help="Neighbours per query."),
    device: str = DeviceOption,
    memory_budget: Optional[str] = typer.Option(
        None, "--memory-budget", help="Most memory the index may take, e.g. 4GB: a larger IVF index is memory-mapped."),
    as_json: bool = JsonOption,
    server: Optional[str] = typer.Option(None, "--server", help="Search on a running `sslsearch serve` at this URL."),
    index_name: Optional[str] = typer.Option(None, "--index", help="With --server: which of its indexes."),
    token: Optional[str] = typer.Option(None, "--token", envvar="SSLSEARCH_TOKEN", help="With --server: its token."),
) -> None:
    from ..errors import InvalidArgumentError
    from ..index.search import load_index, search_query_file

    if server and index_dir is not None:
        queries = [index_dir, *(queries or [])]  # no index directory with --server: every argument is a query
    given = [name for name, value in (("QUERY", queries), ("--vectors", vectors), ("--ids", ids)) if value]
    if len(given) != 1:
        raise InvalidArgumentError("give exactly one kind of query: image paths, --vectors FILE.npy or --ids 3,17"
                                   + (f" (got {' and '.join(given)})" if given else ""))
    if server:
        _search_server(server, index_name, token, queries, vectors, ids, k, as_json)
        return
    if index_dir is None:
        raise InvalidArgumentError("give the index directory IDX first (or --server URL to search a running server)")
    # A few CLI queries do not repay copying the index to a GPU: it goes there only with --device cuda.
    index = load_index(index_dir, device="cpu" if device == "auto" else device, memory_budget=memory_budget)
    if ids:
        results = index.search_ids(_parse_ids(ids), k)
    elif vectors:
        results = search_query_file(index, vectors, k)
    else:
        results = index.search_images(list(queries or []), k, device=device)
    if index.store_note:
        info(f"note: {index.store_note}")
    if as_json:
        root = index.store.source_root if index.store is not None else None
        print_json({"index": str(index_dir), "k": k, "source_root": str(root) if root else None,
                    "results": [r.to_dict() for r in results]})
        return
    _print_table(results)


def _search_server(url: str, index_name: str | None, token: str | None, queries: list[Path] | None,
                   vectors: Path | None, ids: str | None, k: int, as_json: bool) -> None:
    import numpy as np

    from ..errors import InputNotFoundError
    from ..serve.client import Client

    with Client(url, token) as client:
        if vectors is not None:
            if not vectors.is_file():
                raise InputNotFoundError(f"query vectors {str(vectors)!r} are not a .npy file; with --server pass a "
                                         "(q, dim) .npy array")
            results = client.search(vectors=np.load(vectors, allow_pickle=False), k=k, index=index_name)
        else:
            results = client.search(queries, ids=_parse_ids(ids) if ids else None, k=k, index=index_name)
    if as_json:
        print_json({"server": client.url, "index": index_name, "k": k, "results": [r.to_dict() for r in results]})
        return
    _print_table(results)


def _print_table(results: list) -> None:
    rows: list[list[object]] = []
    for result in results:
        if result.skipped:
            rows.append([result.query, "-", "-", "-", f"(skipped: {result.skipped})"])
        for hit in result.neighbors:
            rows.append([result.query if hit.rank == 1 else "", hit.rank, f"{hit.score:.4f}", hit.id,
                         hit.path if hit.path is not None else "?"])
    typer.echo(table(rows, ["query", "rank", "score", "id", "path"]))


def register(app: typer.Typer, index_app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("search", help=HELP)(search_command)
