"""The embedding store: Parquet shards plus manifest.json (Contract 2), written atomically, read in batches."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import (
    EncoderMismatchError,
    InputNotFoundError,
    InvalidArgumentError,
    OutputExistsError,
    StoreError,
    StoreWriterExists,
)
from .files import LOCK_NAME, DirectoryLock, prepare_output_dir
from .location import StoreLocation

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_PATTERN = re.compile(r"^part-(\d{5,})\.parquet$")
DTYPES = ("float16", "float32")
OPTIONAL_COLUMNS = {"label": pa.string(), "width": pa.int32(), "height": pa.int32(), "sha256": pa.string()}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _version() -> str:
    from . import __version__

    return __version__


@dataclass(frozen=True)
class ShardInfo:
    """One complete shard: its file name and row count."""

    name: str
    rows: int


@dataclass(frozen=True)
class StoreManifest:
    """What ``manifest.json`` says about a store; ``complete`` is false while embed is running."""

    dim: int
    dtype: str  # storage dtype of the `embedding` column: "float16" or "float32"
    encoder: dict[str, Any]  # the encoder fingerprint (spec, weights sha256, preprocessing, id)
    source_root: str
    normalized: bool = True
    rows: int = 0
    shards: tuple[ShardInfo, ...] = ()
    skipped: tuple[dict[str, str], ...] = ()  # {"path", "reason", "detail"} of files that could not be used
    complete: bool = False
    columns: tuple[str, ...] = ("id", "path", "embedding")
    format_version: int = FORMAT_VERSION
    sslsearch_version: str = field(default_factory=_version)
    created: str = field(default_factory=_now)
    updated: str = field(default_factory=_now)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["shards"] = [dataclasses.asdict(s) for s in self.shards]
        data["skipped"] = [dict(s) for s in self.skipped]
        data["columns"] = list(self.columns)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StoreManifest":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["shards"] = tuple(ShardInfo(**s) for s in data.get("shards", ()))
        values["skipped"] = tuple(dict(s) for s in data.get("skipped", ()))
        values["columns"] = tuple(data.get("columns", ("id", "path", "embedding")))
        return cls(**values)

    @property
    def encoder_id(self) -> str:
        return str(self.encoder.get("id", "?"))

    @property
    def encoder_spec(self) -> str:
        return str(self.encoder.get("spec", "?"))


@dataclass(frozen=True)
class StoreBatch:
    """A batch of rows read from a store.

    Attributes:
        ids: (n,) int64 store ids.
        embeddings: (n, dim) float32 (converted from the stored dtype), or None if not read.
        columns: other columns read, as numpy arrays or lists.
    """

    ids: np.ndarray
    embeddings: np.ndarray | None
    columns: dict[str, Any]


def schema_for(dim: int, dtype: str, extra: Sequence[str] = ()) -> pa.Schema:
    value_type = pa.float16() if dtype == "float16" else pa.float32()
    fields = [pa.field("id", pa.int64(), nullable=False), pa.field("path", pa.string()),
              pa.field("embedding", pa.list_(value_type, dim))]
    fields += [pa.field(name, OPTIONAL_COLUMNS[name]) for name in extra]
    return pa.schema(fields)


def shard_table(schema: pa.Schema, ids: np.ndarray | Sequence[int], paths: Sequence[str], embeddings: np.ndarray,
                **extra: Sequence[Any]) -> pa.Table:
    """The Arrow table of one shard: ``schema`` (from ``schema_for``), embeddings cast to its dtype.

    Shared by ``StoreWriter`` and the distributed writers, so every engine writes the same shards.
    """
    value_type = schema.field("embedding").type
    dim = value_type.list_size
    dtype = "float16" if value_type.value_type == pa.float16() else "float32"
    vectors = np.asarray(embeddings).astype(dtype, copy=False).reshape(-1, dim)
    columns: dict[str, pa.Array] = {
        "id": pa.array(np.asarray(ids, np.int64), pa.int64()),
        "path": pa.array(list(paths), pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
    }
    for name in schema.names[3:]:
        columns[name] = pa.array(list(extra[name]), OPTIONAL_COLUMNS[name])
    return pa.Table.from_arrays([columns[n] for n in schema.names], schema=schema)


StorePath = str | os.PathLike[str]  # a local directory, or a URI pyarrow.fs opens (s3://bucket/emb)


def manifest_hash(directory: StorePath | StoreLocation) -> str:
    """sha256 of the store's manifest bytes: identifies the exact data an index was built from."""
    location = directory if isinstance(directory, StoreLocation) else StoreLocation.parse(directory)
    return hashlib.sha256(location.read_bytes(MANIFEST_NAME)).hexdigest()


def is_store(where: StorePath) -> bool:
    """Whether ``where`` (a directory or a URI such as ``s3://bucket/emb``) holds a store's manifest.json.

    Raises:
        InvalidArgumentError: a URI whose scheme pyarrow cannot open.
    """
    return StoreLocation.parse(where).exists(MANIFEST_NAME)


def _read_manifest(location: StoreLocation, where: object) -> StoreManifest:
    if not location.exists(MANIFEST_NAME):
        shards = [name for name in location.list() if name.endswith(".parquet")]
        hint = f" (it holds {len(shards)} Parquet file(s) but no manifest)" if shards else ""
        raise StoreError(f"{where} is not an sslsearch embedding store: no {MANIFEST_NAME}{hint}; "
                         "create one with `sslsearch embed DATA --encoder ... --out DIR`")
    try:
        data = json.loads(location.read_bytes(MANIFEST_NAME))
        manifest = StoreManifest.from_dict(data)
    except (ValueError, TypeError, KeyError) as error:
        raise StoreError(f"{_join(where, MANIFEST_NAME)} is not a valid store manifest ({error}); re-create the store "
                         "with `sslsearch embed`") from None
    if manifest.format_version > FORMAT_VERSION:
        raise StoreError(f"{where} has store format {manifest.format_version}, newer than this sslsearch reads "
                         f"({FORMAT_VERSION}); upgrade sslsearch")
    return manifest


def _join(where: object, name: str) -> str:
    """``where/name`` for messages: a Path joins, a URI keeps its query after the name."""
    if isinstance(where, Path):
        return str(where / name)
    base, question, query = str(where).partition("?")
    return f"{base.rstrip('/')}/{name}{question}{query}"


def _where(location: StoreLocation, given: StorePath) -> Path | str:
    """The store's name in messages and ``.directory``: a Path for a local store (as given), else the URI."""
    if not location.is_local:
        return location.uri
    return Path(location.root) if "://" in os.fspath(given) else Path(given)  # file:///abs/emb → /abs/emb


def _embedding_matrix(column: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    """(n, dim) float32 from a fixed_size_list column, respecting slices."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = [np.asarray(chunk.flatten().to_numpy(zero_copy_only=False)).reshape(-1, dim) for chunk in chunks]
    if not parts:
        return np.zeros((0, dim), dtype=np.float32)
    matrix = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return matrix.astype(np.float32, copy=False)


class EmbeddingStore:
    """A complete embedding store opened for reading.

    Example:
        >>> store = EmbeddingStore.open("emb/")  # doctest: +SKIP
        >>> for batch in store.iter_batches(65536):  # doctest: +SKIP
        ...     index.add_with_ids(batch.embeddings, batch.ids)
    """

    def __init__(self, directory: StorePath, manifest: StoreManifest) -> None:
        self.location = StoreLocation.parse(directory)
        self.directory: Path | str = _where(self.location, directory)  # a Path, or the URI of an object store
        self.manifest = manifest
        self._paths: dict[int, str] | None = None

    @classmethod
    def open(cls, directory: StorePath, *, allow_incomplete: bool = False) -> "EmbeddingStore":
        """Open and validate a store: a local directory or a URI such as ``s3://bucket/emb``.

        Raises:
            InputNotFoundError: the directory does not exist.
            StoreError: no manifest, an interrupted embed, a missing, truncated or foreign shard.
        """
        location = StoreLocation.parse(directory)
        where = _where(location, directory)
        if not location.is_dir():
            raise InputNotFoundError(f"embedding store {where} does not exist; create it with "
                                     "`sslsearch embed DATA --encoder ... --out DIR`")
        manifest = _read_manifest(location, where)
        if not manifest.complete and not allow_incomplete:
            raise StoreError(f"embedding store {directory} is incomplete ({manifest.rows} rows written; embed was "
                             "interrupted); finish it with `sslsearch embed ... --out {0} --resume`".format(where))
        store = cls(directory, manifest)
        store._validate_shards()
        return store

    def _validate_shards(self) -> None:
        expected = schema_for(self.dim, self.manifest.dtype)
        for shard in self.manifest.shards:
            path = _join(self.directory, shard.name)
            if not self.location.exists(shard.name):
                raise StoreError(f"shard {path} listed in the manifest is missing; re-create the store with "
                                 "`sslsearch embed`")
            try:
                with self._parquet_file(shard.name) as meta:
                    schema, rows = meta.schema_arrow, meta.metadata.num_rows
            except (pa.ArrowException, OSError) as error:
                raise StoreError(f"shard {path} is truncated or not Parquet ({error}); delete it and run "
                                 "`sslsearch embed ... --resume` to rewrite its rows") from None
            for name in ("id", "embedding"):
                if name not in schema.names or schema.field(name).type != expected.field(name).type:
                    seen = schema.field(name).type if name in schema.names else "missing"
                    raise StoreError(f"shard {path} is foreign: column {name!r} is {seen}, expected "
                                     f"{expected.field(name).type}; it was not written for this store")
            if rows != shard.rows:
                raise StoreError(f"shard {path} has {rows} rows but the manifest says {shard.rows}; "
                                 "the store was modified — re-create it with `sslsearch embed`")

    def _parquet_file(self, name: str) -> pq.ParquetFile:
        return pq.ParquetFile(self.location.path(name), filesystem=self.location.filesystem)

    # --- properties -------------------------------------------------------------------------
    @property
    def uri(self) -> str:
        """The store's resolved absolute path, or its URI: what an index card records as its source."""
        return str(Path(self.location.root).resolve()) if self.location.is_local else self.location.uri

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def encoder(self) -> dict[str, Any]:
        return self.manifest.encoder

    def __len__(self) -> int:
        return self.manifest.rows

    @property
    def has_labels(self) -> bool:
        return "label" in self.manifest.columns

    @property
    def source_root(self) -> Path:
        return Path(self.manifest.source_root)

    # --- reading ----------------------------------------------------------------------------
    def iter_batches(self, batch_size: int = 65536, columns: Sequence[str] = ("id", "embedding")) -> Iterator[StoreBatch]:
        """Stream the rows in shard order; memory stays bounded by one batch.

        Args:
            batch_size: rows per batch (the last batch of each shard may be smaller).
            columns: columns to read; "id" is always read, "embedding" converts to (n, dim) float32.
        """
        if batch_size <= 0:
            raise InvalidArgumentError(f"batch_size must be > 0, got {batch_size}")
        wanted = ["id"] + [c for c in columns if c != "id"]
        unknown = [c for c in wanted if c not in self.manifest.columns]
        if unknown:
            raise StoreError(f"store {self.directory} has no column {unknown[0]!r}; it has {list(self.manifest.columns)}")
        for shard in self.manifest.shards:
            with self._parquet_file(shard.name) as parquet:
                for record_batch in parquet.iter_batches(batch_size=batch_size, columns=wanted):
                    yield self._to_batch(record_batch, wanted)

    def _to_batch(self, record_batch: pa.RecordBatch, wanted: Sequence[str]) -> StoreBatch:
        ids = record_batch.column("id").to_numpy().astype(np.int64, copy=False)
        embeddings = _embedding_matrix(record_batch.column("embedding"), self.dim) if "embedding" in wanted else None
        others: dict[str, Any] = {}
        for name in wanted:
            if name in ("id", "embedding"):
                continue
            column = record_batch.column(name)
            others[name] = column.to_numpy(zero_copy_only=False) if pa.types.is_integer(column.type) else column.to_pylist()
        return StoreBatch(ids=ids, embeddings=embeddings, columns=others)

    def read_all(self, columns: Sequence[str] = ("id", "embedding")) -> StoreBatch:
        """All rows in one batch (embeddings (n, dim) float32). Use iter_batches for large stores."""
        batches = list(self.iter_batches(max(1, len(self)), columns))
        if not batches:
            return StoreBatch(np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32) if "embedding" in columns else None,
                              {c: [] for c in columns if c not in ("id", "embedding")})
        ids = np.concatenate([b.ids for b in batches])
        embeddings = np.concatenate([b.embeddings for b in batches]) if batches[0].embeddings is not None else None
        others: dict[str, Any] = {}
        for name in batches[0].columns:
            values = [b.columns[name] for b in batches]
            others[name] = np.concatenate(values) if isinstance(values[0], np.ndarray) else sum(values, [])
        return StoreBatch(ids=ids, embeddings=embeddings, columns=others)

    def paths(self, ids: Sequence[int] | np.ndarray) -> list[str | None]:
        """Relative paths for store ids (None for an id the store does not hold)."""
        if self._paths is None:
            table = self.read_all(("id", "path"))
            self._paths = dict(zip(table.ids.tolist(), table.columns["path"]))
        return [self._paths.get(int(i)) for i in ids]

    def vectors_for(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """(len(ids), dim) float32 embeddings of the given store ids, in the order asked.

        Raises:
            InvalidArgumentError: an id is not in the store.
        """
        wanted = np.asarray(ids, dtype=np.int64)
        found: dict[int, np.ndarray] = {}
        wanted_set = set(wanted.tolist())
        for batch in self.iter_batches():
            mask = np.isin(batch.ids, wanted)
            for i, vector in zip(batch.ids[mask].tolist(), batch.embeddings[mask]):
                found[i] = vector
            if len(found) == len(wanted_set):
                break
        missing = [i for i in wanted.tolist() if i not in found]
        if missing:
            raise InvalidArgumentError(f"id {missing[0]} is not in store {self.directory} (ids run 0..{len(self) - 1}"
                                       f"{', some skipped' if self.manifest.skipped else ''}); pass ids the store holds")
        return np.stack([found[i] for i in wanted.tolist()]) if len(wanted) else np.zeros((0, self.dim), np.float32)

    def check_same_encoder(self, other: dict[str, Any], what: str = "these vectors") -> None:
        """Raise EncoderMismatchError unless ``other`` (a fingerprint dict) matches this store's encoder."""
        check_same_encoder(self.encoder, other, self.dim, what=what, where=str(self.directory))


def check_same_encoder(expected: dict[str, Any], seen: dict[str, Any], dim: int, *, what: str, where: str) -> None:
    """Raise EncoderMismatchError when two encoder fingerprints differ."""
    if expected.get("id") and seen.get("id") and expected["id"] != seen["id"]:
        raise EncoderMismatchError(
            f"{what} come from encoder {seen.get('spec', '?')} ({seen['id']}), but {where} was built with "
            f"{expected.get('spec', '?')} ({expected['id']}, dim {dim}); embed them with the same encoder")


class StoreWriter:
    """Writes an embedding store shard by shard; each shard and the manifest are replaced atomically.

    The manifest is rewritten after every shard with ``complete: false`` until ``close``; a run
    killed at any point leaves only complete shards, and ``resume=True`` picks them up (also a
    shard renamed just before the kill and not yet in the manifest). A local directory is locked
    against a second writer; ``directory`` may also be a URI such as ``s3://bucket/emb`` (written
    through pyarrow.fs, shards first and the complete manifest last; no lock there: one writer
    per prefix is the caller's to ensure).

    Example:
        >>> with StoreWriter("emb/", dim=384, dtype="float16", encoder=fp, source_root="imgs") as w:  # doctest: +SKIP
        ...     w.write(ids, paths, vectors)
    """

    def __init__(self, directory: StorePath, *, dim: int, dtype: str, encoder: dict[str, Any],
                 source_root: str | os.PathLike[str], normalized: bool = True, resume: bool = False,
                 overwrite: bool = False, shard_rows: int = 50_000, extra_columns: Sequence[str] = ()) -> None:
        if dtype not in DTYPES:
            raise InvalidArgumentError(f"unknown embedding dtype {dtype!r}; choose float16 or float32")
        if dim <= 0:
            raise InvalidArgumentError(f"embedding dim must be > 0, got {dim}")
        unknown = [c for c in extra_columns if c not in OPTIONAL_COLUMNS]
        if unknown:
            raise InvalidArgumentError(f"unknown store column {unknown[0]!r}; optional columns are {sorted(OPTIONAL_COLUMNS)}")
        self.location = StoreLocation.parse(directory)
        self.directory: Path | str = _where(self.location, directory)
        self.extra_columns = tuple(extra_columns)
        self.schema = schema_for(dim, dtype, self.extra_columns)
        self.shard_rows = max(1, shard_rows)
        self._lock = DirectoryLock(self.location.root) if self.location.is_local else None
        self._buffer: list[dict[str, Any]] = []
        self._buffered = 0
        names = self.location.list() if self.location.is_dir() else []
        existing = MANIFEST_NAME in names or any(n.startswith("part-") and n.endswith(".parquet") for n in names)
        if resume and existing:
            self._acquire()
            self.manifest = self._recover(dim, dtype, encoder)
        else:
            if existing and not overwrite:
                raise StoreWriterExists(self.directory)
            self._prepare(names, overwrite=overwrite)
            self._acquire()
            if overwrite:
                for stale in [n for n in names if n.startswith("part-") and n.endswith(".parquet")] + [MANIFEST_NAME]:
                    self.location.delete(stale)
            self.manifest = StoreManifest(dim=dim, dtype=dtype, encoder=dict(encoder), source_root=str(source_root),
                                          normalized=normalized, columns=tuple(self.schema.names))
            self._save_manifest()
        self.done_ids: set[int] = self._existing_ids()

    def _prepare(self, names: list[str], *, overwrite: bool) -> None:
        """Create the directory, refusing one that holds other files unless ``overwrite``."""
        if self.location.is_local:
            prepare_output_dir(self.location.root, overwrite=overwrite)
            return
        foreign = [n for n in names if n != LOCK_NAME]
        if foreign and not overwrite:
            raise OutputExistsError(f"output {self.directory} already holds {len(foreign)} other object(s) (e.g. "
                                    f"{foreign[0]!r}); choose an empty or new prefix, or pass --overwrite")
        self.location.make_dirs()

    def _acquire(self) -> None:
        if self._lock is not None:
            self._lock.acquire()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()

    # --- resume ---------------------------------------------------------------------------
    def _recover(self, dim: int, dtype: str, encoder: dict[str, Any]) -> StoreManifest:
        try:
            manifest = _read_manifest(self.location, self.directory)
        except StoreError:
            manifest = None
        if manifest is not None:
            if manifest.dim != dim or manifest.dtype != dtype:
                self._release()
                raise StoreError(f"cannot resume {self.directory}: it holds dim {manifest.dim} {manifest.dtype}, this run "
                                 f"makes dim {dim} {dtype}; use the same encoder and --dtype, or a new --out")
            if manifest.encoder.get("id") != encoder.get("id"):
                self._release()
                raise EncoderMismatchError(
                    f"cannot resume {self.directory}: it was embedded with {manifest.encoder_spec} "
                    f"({manifest.encoder_id}), this run uses {encoder.get('spec')} ({encoder.get('id')}); "
                    "use the same encoder, or a new --out")
        else:
            manifest = StoreManifest(dim=dim, dtype=dtype, encoder=dict(encoder), source_root="", columns=tuple(self.schema.names))
        # Shards on disk are complete by construction (renamed when done); adopt any the manifest missed.
        listed = {s.name for s in manifest.shards}
        names = self.location.list()
        shards = [s for s in manifest.shards if s.name in names]
        for name in names:
            if name in listed or not SHARD_PATTERN.match(name):
                continue
            try:
                with pq.ParquetFile(self.location.path(name), filesystem=self.location.filesystem) as parquet:
                    shards.append(ShardInfo(name, parquet.metadata.num_rows))
            except (pa.ArrowException, OSError):
                self.location.delete(name)  # cannot happen through rename; a foreign or damaged file is not ours to keep
        for name in names:
            if name.endswith(".tmp") and (name.startswith(".part-") or name.startswith(f".{MANIFEST_NAME}.")):
                self.location.delete(name)
        manifest = dataclasses.replace(manifest, shards=tuple(sorted(shards, key=lambda s: s.name)),
                                       rows=sum(s.rows for s in shards), complete=False)
        return manifest

    def _existing_ids(self) -> set[int]:
        done: set[int] = set()
        for shard in self.manifest.shards:
            table = pq.read_table(self.location.path(shard.name), columns=["id"], filesystem=self.location.filesystem)
            done.update(table.column("id").to_numpy().tolist())
        return done

    # --- writing --------------------------------------------------------------------------
    def write(self, ids: np.ndarray | Sequence[int], paths: Sequence[str], embeddings: np.ndarray,
              **extra: Sequence[Any]) -> None:
        """Buffer rows; a shard is written every ``shard_rows`` rows.

        Args:
            ids: (n,) int64 store ids.
            paths: n relative paths.
            embeddings: (n, dim) float array; cast to the store dtype.
            **extra: the optional columns named in ``extra_columns`` (label, width, height, sha256).
        """
        embeddings = np.asarray(embeddings)
        n = len(paths)
        if embeddings.ndim != 2 or embeddings.shape != (n, self.manifest.dim):
            raise InvalidArgumentError(f"embeddings shape {embeddings.shape} does not match {n} rows of dim {self.manifest.dim}")
        missing = [c for c in self.extra_columns if c not in extra]
        if missing:
            raise InvalidArgumentError(f"write() needs column {missing[0]!r} for this store")
        self._buffer.append({"id": np.asarray(ids, np.int64), "path": list(paths), "embedding": embeddings,
                             **{c: list(extra[c]) for c in self.extra_columns}})
        self._buffered += n
        if self._buffered >= self.shard_rows:
            self.flush()

    def add_skipped(self, path: str, reason: str, detail: str = "") -> None:
        """Record a file that could not be embedded (kept in the manifest)."""
        entry = {"path": path, "reason": reason, "detail": detail}
        if entry not in self.manifest.skipped:
            self.manifest = dataclasses.replace(self.manifest, skipped=self.manifest.skipped + (entry,))

    def flush(self) -> None:
        """Write the buffered rows as one shard and record it in the manifest."""
        if not self._buffered:
            self._save_manifest()
            return
        vectors = np.concatenate([b["embedding"] for b in self._buffer])
        table = shard_table(self.schema, np.concatenate([b["id"] for b in self._buffer]),
                            sum((b["path"] for b in self._buffer), []), vectors,
                            **{name: sum((b[name] for b in self._buffer), []) for name in self.extra_columns})
        number = 1 + max((int(SHARD_PATTERN.match(s.name).group(1)) for s in self.manifest.shards), default=-1)
        name = f"part-{number:05d}.parquet"
        self.location.write_atomic(name, lambda stream: pq.write_table(table, stream, compression="zstd"))
        self.done_ids.update(table.column("id").to_numpy().tolist())
        self.manifest = dataclasses.replace(self.manifest, shards=self.manifest.shards + (ShardInfo(name, table.num_rows),),
                                            rows=self.manifest.rows + table.num_rows)
        self._buffer, self._buffered = [], 0
        self._save_manifest()

    def _save_manifest(self) -> None:
        self.manifest = dataclasses.replace(self.manifest, updated=_now())
        text = json.dumps(self.manifest.to_dict(), indent=2, sort_keys=False, default=str) + "\n"
        self.location.write_bytes_atomic(MANIFEST_NAME, text.encode("utf-8"))

    def close(self, *, complete: bool = True, source_root: str | None = None) -> StoreManifest:
        """Flush, mark the store complete (or not) and release the lock."""
        try:
            if self._buffered:
                self.flush()
            changes: dict[str, Any] = {"complete": complete}
            if source_root is not None:
                changes["source_root"] = str(source_root)
            self.manifest = dataclasses.replace(self.manifest, **changes)
            self._save_manifest()
        finally:
            self._release()
        return self.manifest

    def abort(self) -> None:
        """Keep what was written as complete shards (for --resume) and release the lock."""
        try:
            self.flush()
        finally:
            self._release()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
