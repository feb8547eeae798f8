"""Wiring only: the Typer app, its command groups, and one-line errors (traceback with --debug)."""
from __future__ import annotations

import os
import sys

import typer

from ..errors import SSLSearchError
from .common import HelpGroup

app = typer.Typer(
    name="sslsearch",
    help="Self-supervised image embeddings: pretrain, embed, index, search, deduplicate, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",  # help texts are Markdown: lists and examples wrap cleanly at any width
    cls=HelpGroup,
)
index_app = typer.Typer(help="Build and inspect FAISS indexes over an embedding store.", no_args_is_help=True,
                        rich_markup_mode="markdown", cls=HelpGroup)
bench_app = typer.Typer(help="Measure embeddings and indexes: k-NN accuracy, retrieval, index recall vs speed.",
                        no_args_is_help=True, rich_markup_mode="markdown", cls=HelpGroup)
app.add_typer(index_app, name="index")
app.add_typer(bench_app, name="bench")


def _print_version(value: bool) -> None:
    # An eager option's callback runs before Click checks that a command was given.
    if value:
        from .. import __version__

        typer.echo(f"sslsearch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks (or set SSLSEARCH_DEBUG=1)."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version),
) -> None:
    if debug:
        os.environ["SSLSEARCH_DEBUG"] = "1"


# --- command registration: one line per command module (keep this block sorted) ---
# (modules register themselves with `register(app, index_app, bench_app)`)
from . import commands  # noqa: E402

commands.register_all(app, index_app, bench_app)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app; an SSLSearchError becomes one line on stderr and exit 1."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("SSLSEARCH_DEBUG") == "1"
    try:
        app(args=args, prog_name="sslsearch")
    except SSLSearchError as error:
        if debug:
            raise
        typer.echo(f"error: {error}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as error:  # disk full, permission denied: the user can act on these too
        if debug:
            raise
        typer.echo(f"error: {error} (run with --debug for the traceback)", err=True)
        sys.exit(1)
