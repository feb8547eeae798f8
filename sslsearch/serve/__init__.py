"""The search service: ``create_app`` (FastAPI, needs the ``serve`` extra), ``Client`` (standard library only).

Modules: catalog (served indexes, query images, store images), duplicates (a dedup output dir for the
page), app (endpoints, auth, limits, errors), server (uvicorn in the foreground or a background thread),
client (``Client``), static/ (the web page).
"""
from __future__ import annotations

from typing import Any

from .client import Client

__all__ = ["Client", "create_app"]


def __getattr__(name: str) -> Any:
    # fastapi is an optional extra: importing sslsearch.serve for the Client must not need it.
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
