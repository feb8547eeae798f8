"""Errors a user can act on: every one says what was wrong, the value seen, what was expected and the fix."""
from __future__ import annotations

import difflib
import pickle
from collections.abc import Iterable
from pathlib import Path


class SSLSearchError(Exception):
    """Base class of every error sslsearch raises on purpose.

    The message is one line that a user can act on; the CLI prints it as-is and exits 1.
    """


class InputNotFoundError(SSLSearchError, FileNotFoundError):
    """A path the user named does not exist (or holds nothing usable)."""


class InvalidArgumentError(SSLSearchError, ValueError):
    """A value is outside what is accepted (k <= 0, threshold outside (0, 1], ...)."""


class UnknownNameError(SSLSearchError, ValueError):
    """A name (model, index kind, method) that is not one of the known choices."""


class BadImageError(SSLSearchError, ValueError):
    """An image file that cannot be decoded; ``reason`` is a short machine-readable tag."""

    def __init__(self, message: str, reason: str = "unreadable") -> None:
        super().__init__(message)
        self.reason = reason


class StoreError(SSLSearchError, ValueError):
    """An embedding store that is missing, truncated, foreign or inconsistent."""


class StoreWriterExists(StoreError):
    """Raised when the output directory already holds a store and neither resume nor overwrite was asked."""

    def __init__(self, directory: Path) -> None:
        super().__init__(f"{directory} already holds an embedding store; pass --resume to finish it, --overwrite to "
                         "replace it, or choose another --out")


class IndexFileError(SSLSearchError, ValueError):
    """An index directory whose files are missing, corrupt or inconsistent with the card."""


class EncoderMismatchError(SSLSearchError, ValueError):
    """Vectors or a store that come from another encoder (or dim) than expected."""


class OutputExistsError(SSLSearchError, FileExistsError):
    """An output directory that already holds other data."""


class LockedError(SSLSearchError, RuntimeError):
    """Another live process is writing the same output directory."""


class CheckpointError(SSLSearchError, ValueError):
    """A training checkpoint or run directory that cannot be used as asked."""


class TrainingDivergedError(SSLSearchError, RuntimeError):
    """The loss became NaN or infinite."""


class ServerError(SSLSearchError, RuntimeError):
    """A search server (``sslsearch serve``) that refused a request or cannot be reached; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RefusedGlobalError(pickle.UnpicklingError):
    """A data pickle named a global outside the allowed plain containers and numpy helpers.

    Internal to the restricted unpickler (``evaluate/pickles.py``), which turns it into an
    ``InvalidArgumentError`` naming the file.
    """


def did_you_mean(name: str, choices: Iterable[str], *, limit: int = 3, cutoff: float = 0.6, prefix: str = "") -> str:
    """Return ' (did you mean X?)' for the closest choices, or '' when nothing is close.

    ``cutoff`` is difflib's similarity floor; ``prefix`` goes before each suggestion (e.g. a
    config section: ``'dino.prototypes'``).
    """
    close = difflib.get_close_matches(name, list(choices), n=limit, cutoff=cutoff)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(prefix + c) for c in close) + "?)"


def unknown_name(kind: str, name: str, choices: Iterable[str], *, show: int = 12) -> UnknownNameError:
    """Build the error for an unknown name, listing valid choices and the nearest ones."""
    choices = sorted(choices)
    shown = ", ".join(choices[:show]) + (f", ... ({len(choices)} in all)" if len(choices) > show else "")
    return UnknownNameError(f"unknown {kind} {name!r}{did_you_mean(name, choices)}; choose one of: {shown}")
