"""Progress bars on stderr for long library work, silent when not wanted or not a terminal."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_enabled(requested: bool | None = None) -> bool:
    """Bars show when asked, else when stderr is a terminal and SSLSEARCH_NO_PROGRESS is unset."""
    if requested is not None:
        return requested
    return sys.stderr.isatty() and not os.environ.get("SSLSEARCH_NO_PROGRESS")


def progress_bar(total: int | None, desc: str, *, unit: str = "it", enabled: bool | None = None) -> tqdm:
    """A tqdm bar on stderr; call ``.update(n)`` and ``.set_postfix(...)``; use as a context manager."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not progress_enabled(enabled),
                dynamic_ncols=True, leave=False)


def track(items: Iterable[T], desc: str, *, total: int | None = None, unit: str = "it",
          enabled: bool | None = None) -> Iterator[T]:
    """Iterate ``items`` with a progress bar on stderr."""
    with progress_bar(total, desc, unit=unit, enabled=enabled) as bar:
        for item in items:
            yield item
            bar.update(1)
