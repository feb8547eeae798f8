"""Crash-safe file writing (temporary name, then rename) and a directory lock with owner pid."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import LockedError, OutputExistsError

LOCK_NAME = ".sslsearch.lock"


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only if the block succeeds.

    A crash or exception leaves ``final`` untouched (old content or absent) and removes the
    temporary file, so no half-written file ever carries the final name.

    Example:
        >>> with atomic_path("out/index.faiss") as tmp:  # doctest: +SKIP
        ...     faiss.write_index(index, str(tmp))
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(final: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``final`` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(final: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``final`` atomically."""
    atomic_write_bytes(final, text.encode("utf-8"))


def atomic_write_json(final: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``final`` atomically."""
    atomic_write_text(final, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DirectoryLock:
    """An exclusive lock on an output directory, held by one live process at a time.

    The lock file records the owner's pid and host; a lock left by a dead process on this
    host is taken over, so a killed run can be resumed without manual cleanup.

    Raises:
        LockedError: another live process holds the lock.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._held = False

    def acquire(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._read_owner()
                same_host = owner.get("host") == me["host"]
                pid = owner.get("pid")
                if isinstance(pid, int) and same_host and not _pid_alive(pid):
                    self.path.unlink(missing_ok=True)  # stale lock of a dead process
                    continue
                raise LockedError(
                    f"{self.directory} is being written by another process (pid {pid} on "
                    f"{owner.get('host', '?')}); wait for it to finish, or delete {self.path} "
                    "if that process is gone"
                ) from None
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self._held = True
            return
        raise LockedError(f"could not take the lock {self.path}; delete it if no process is writing there")

    def _read_owner(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> "DirectoryLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def prepare_output_dir(
    directory: str | os.PathLike[str], *, overwrite: bool = False, allowed: tuple[str, ...] = ()
) -> Path:
    """Create ``directory`` or check that it holds nothing but files named in ``allowed``.

    Raises:
        OutputExistsError: the directory holds other data and ``overwrite`` is false.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise OutputExistsError(f"output {directory} is a file, expected a directory; choose another --out")
    if directory.exists() and not overwrite:
        foreign = sorted(p.name for p in directory.iterdir() if p.name not in allowed and p.name != LOCK_NAME)
        if foreign:
            raise OutputExistsError(
                f"output directory {directory} already holds {len(foreign)} other file(s) "
                f"(e.g. {foreign[0]!r}); choose an empty or new directory, or pass --overwrite"
            )
    directory.mkdir(parents=True, exist_ok=True)
    return directory
