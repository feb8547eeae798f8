"""Option types and output helpers shared by the command modules."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

DeviceOption = typer.Option("auto", "--device", help="auto (CUDA when torch sees a GPU), cpu or cuda.")
JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON on stdout instead of a table.")
PretrainedOption = typer.Option(False, "--pretrained", help="Published weights of the timm: name (e.g. "
                                "vit_small_patch14_dinov2.lvd142m) from the local Hugging Face cache, or --weights DIR; "
                                "preprocessing from its config.json. Nothing is downloaded without --allow-download.")
AllowDownloadOption = typer.Option(False, "--allow-download", help="With --pretrained: fetch weights missing from "
                                   "the cache from the Hugging Face Hub.")


def print_json(obj: Any) -> None:
    """Print ``obj`` as JSON on stdout (dataclasses should be converted with their ``to_dict``)."""
    typer.echo(json.dumps(obj, indent=2, default=str))


def info(message: str) -> None:
    """A human-readable status line on stderr (stdout stays clean for data)."""
    typer.echo(message, err=True)


def table(rows: list[list[Any]], headers: list[str]) -> str:
    """Format rows as a plain left-aligned text table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def existing_path(value: str) -> Path:
    return Path(value).expanduser()


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def _hide_flag_types(params: list[Any]) -> list[Any]:
    """Flags take no value, so their help shows none (Typer writes ``<bool>`` in the type column)."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""  # the type column shows the metavar when there is one
        elif isinstance(param, TyperArgument) and param.nargs != 1:  # Typer shows <list[Path]>: say <path>...
            param.display_type_rich = lambda ctx, _param=param: f"<{_element_type(_param)}>..."
    return params


def _element_type(argument: TyperArgument) -> str:
    """``path`` for a ``list[Path]`` argument (Typer's ``bare_type`` names the list)."""
    bare = argument.bare_type()
    return (bare[5:-1] if bare.startswith("list[") and bare.endswith("]") else bare).lower()


class HelpCommand(TyperCommand):
    """A command whose ``--help`` reads as users expect: ``sslsearch search [OPTIONS] IDX [QUERY]...``.

    Typer writes required arguments as ``{IDX}`` in the usage line and ``<bool>`` after every flag;
    here arguments are written as Click does (``IDX``, ``[QUERY]...``) and flags, which take no
    value, show none. Every command gets this class (``commands.register_all``).
    """

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.display_name_raw if param.required else f"[{param.display_name_raw}]"
                pieces.append(name + ("..." if param.nargs != 1 else ""))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces

    def get_params(self, ctx: typer.Context) -> list[Any]:
        return _hide_flag_types(super().get_params(ctx))


class HelpGroup(TyperGroup):
    """A command group (``sslsearch``, ``sslsearch index``, ``sslsearch bench``) whose flags show no ``<bool>``."""

    def get_params(self, ctx: typer.Context) -> list[Any]:
        return _hide_flag_types(super().get_params(ctx))
