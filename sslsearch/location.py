"""A store directory addressed by a local path or a URI (s3://, gs://, hdfs://) through pyarrow.fs, written atomically.

Object storage: ``s3://bucket/prefix`` takes credentials, region and endpoint from the standard AWS
settings that pyarrow's S3 client reads (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` for MinIO and other
S3-compatible stores, ``~/.aws/config``), or from the URI's query
(``s3://bucket/emb?endpoint_override=host:9000&scheme=http``).
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs

from .errors import InvalidArgumentError
from .files import atomic_path


@dataclass(frozen=True)
class StoreLocation:
    """A directory on a pyarrow filesystem; names inside it are plain file names ("part-00003.parquet").

    Local paths and ``file://`` URIs use the local filesystem; ``s3://bucket/prefix`` and the
    other schemes pyarrow knows use theirs (credentials from the usual environment). Writes go
    to a temporary name and are moved onto the final one, so a reader never sees half a file
    (on object stores the move is a copy + delete; the final object appears whole).

    Attributes:
        uri: the location as the user gave it.
        filesystem: the pyarrow filesystem.
        root: the directory's path on ``filesystem``.
    """

    uri: str
    filesystem: pafs.FileSystem
    root: str

    @classmethod
    def parse(cls, where: str | os.PathLike[str]) -> "StoreLocation":
        """``emb/``, ``/abs/emb``, ``file:///abs/emb`` or ``s3://bucket/emb``.

        Raises:
            InvalidArgumentError: a URI whose scheme pyarrow cannot open.
        """
        text = os.fspath(where)
        if "://" not in text:
            return cls(text, pafs.LocalFileSystem(), os.path.abspath(text))
        try:
            filesystem, root = pafs.FileSystem.from_uri(text)
        except (pa.ArrowException, ValueError) as error:
            raise InvalidArgumentError(f"cannot open output location {text!r} ({error}); use a local path or a URI "
                                       "pyarrow supports (s3://, gs://, hdfs://, file://)") from None
        return cls(text, filesystem, root.rstrip("/"))

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    @property
    def display(self) -> str:
        """How messages and cards name the directory: the absolute path, or the URI as given."""
        return self.root if self.is_local else self.uri

    def is_dir(self) -> bool:
        """Whether the directory exists (on object storage: whether any object lies under the prefix)."""
        info = self.filesystem.get_file_info(self.root)
        if info.type == pafs.FileType.Directory:
            return True
        if self.is_local or info.type == pafs.FileType.File:
            return False
        return bool(self.filesystem.get_file_info(pafs.FileSelector(self.root, allow_not_found=True)))

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def make_dirs(self, name: str = "") -> None:
        self.filesystem.create_dir(self.path(name) if name else self.root, recursive=True)

    def exists(self, name: str) -> bool:
        return self.filesystem.get_file_info(self.path(name)).type != pafs.FileType.NotFound

    def size(self, name: str) -> int | None:
        """Bytes of file ``name``, or None when it is absent."""
        info = self.filesystem.get_file_info(self.path(name))
        return None if info.type == pafs.FileType.NotFound else int(info.size or 0)

    def list(self, subdirectory: str = "") -> list[str]:
        """File names directly in the directory (or in ``subdirectory``), sorted; [] when it does not exist."""
        selector = pafs.FileSelector(self.path(subdirectory) if subdirectory else self.root, allow_not_found=True)
        return sorted(info.base_name for info in self.filesystem.get_file_info(selector)
                      if info.type == pafs.FileType.File)

    def open_input_file(self, name: str) -> pa.NativeFile:
        """A random-access reader of file ``name`` (close it, or use it in a ``with`` block)."""
        return self.filesystem.open_input_file(self.path(name))

    def read_bytes(self, name: str) -> bytes:
        with self.filesystem.open_input_stream(self.path(name)) as stream:
            return stream.read()

    def delete(self, name: str) -> None:
        if self.exists(name):
            self.filesystem.delete_file(self.path(name))

    def write_atomic(self, name: str, write: Callable[[pa.NativeFile], None]) -> int:
        """Call ``write(stream)`` on a temporary file beside ``name``, then move it onto ``name``; returns its size.

        The temporary name starts with "." (``.part-00003.parquet.<hex>.tmp``): store readers
        and ``StoreWriter`` resume ignore or clean such files. On the local filesystem the file is
        fsynced and renamed (``files.atomic_path``). On object storage the upload is finished
        under the temporary key and then copied onto ``name``: an upload cut short (a write that
        raised, whose stream's close still completes the upload) never carries the final name.
        """
        if self.is_local:
            with atomic_path(self.path(name)) as temporary_path, self.filesystem.open_output_stream(
                    str(temporary_path)) as stream:
                write(stream)
            return self.size(name) or 0
        directory, _, base = name.rpartition("/")
        temporary = f"{directory + '/' if directory else ''}.{base}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            with self.filesystem.open_output_stream(self.path(temporary)) as stream:
                write(stream)
            self.filesystem.move(self.path(temporary), self.path(name))
        finally:
            if self.exists(temporary):
                self.filesystem.delete_file(self.path(temporary))
        return self.size(name) or 0

    def write_bytes_atomic(self, name: str, data: bytes) -> int:
        return self.write_atomic(name, lambda stream: stream.write(data))
