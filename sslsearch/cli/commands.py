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
    "train",
)


def register_all(app: typer.Typer, index_app: typer.Typer, bench_app: typer.Typer) -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        module.register(app, index_app, bench_app)
