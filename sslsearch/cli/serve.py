"""`sslsearch serve`: a search service and web page over one or more indexes."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import DeviceOption, info

HELP = """Serve the indexes IDX... over HTTP: a web page at `/`, a JSON API (docs at `/docs`), store images by id.

Each index is loaded once with its encoder (uploaded images are decoded and embedded as `embed` does).
Name an index with NAME=DIR (default: the directory's name); each request chooses one.

* **--token T**: every API request needs `Authorization: Bearer T` (the page asks for it once).
* **--duplicates DUPS**: the `--out` of `sslsearch dedup`, browsed in the page's Duplicates tab.
* Binds 127.0.0.1 unless **--host** says otherwise; beyond this machine set --token and put TLS in front.

Examples:

* `sslsearch serve idx/`
* `sslsearch serve photos=idx/ faces=idx2/ --port 8080 --token s3cret`
* `sslsearch serve idx/ --duplicates dups/`
"""


def serve_command(
    indexes: list[str] = typer.Argument(..., metavar="IDX", help="Index directories (NAME=DIR to name one)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (127.0.0.1: this machine only)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    token: Optional[str] = typer.Option(None, "--token", envvar="SSLSEARCH_TOKEN",
                                        help="Require `Authorization: Bearer TOKEN` (or set SSLSEARCH_TOKEN)."),
    duplicates: Optional[Path] = typer.Option(None, "--duplicates", help="A `sslsearch dedup` --out directory."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", help="Largest request body, in MB."),
    max_queries: int = typer.Option(1024, "--max-queries", help="Most vectors, ids or images per request."),
    device: str = DeviceOption,
) -> None:
    from ..serve.server import require_serve_extra, run_server

    require_serve_extra()
    from ..serve.app import create_app

    app = create_app(indexes, token, duplicates=duplicates, device=device,
                     max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_queries=max_queries)
    names = ", ".join(app.state.catalog)
    if not token and host not in ("127.0.0.1", "localhost", "::1"):
        info(f"warning: serving on {host} without --token: anyone who can reach it can search and read the images")
    info(f"serving {names} on http://{host}:{port}/ (API docs at /docs){' with a token' if token else ''}")
    run_server(app, host, port)


def register(app: typer.Typer, index_app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("serve", help=HELP)(serve_command)
