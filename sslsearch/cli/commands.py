"""The list of command modules; each defines ``register(app, index_app, bench_app)``."""
from __future__ import annotations

import importlib

import typer

# One entry per module in sslsearch/cli/ that defines commands. Add yours when it exists.
COMMAND_MODULES: tuple[str, ...] = (
    "bench",
    "data",
    "dedup",
    "embed",
    "head",
    "index",
    "search",
    "serve",
    "train",
)


def register_all(app: typer.Typer, index_app: typer.Typer, bench_app: typer.Typer) -> None:
    from typer.core import TyperCommand

    from .common import HelpCommand

    for name in COMMAND_MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        module.register(app, index_app, bench_app)
    # every command's --help is laid out the same way (usage line, flags; see HelpCommand)
    for typer_app in (app, index_app, bench_app):
        for command in typer_app.registered_commands:
            if command.cls in (None, TyperCommand):  # Typer's default; a module may choose its own class
                command.cls = HelpCommand
