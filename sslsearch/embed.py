"""Embedding extraction: images decoded in worker processes → encoder forward → Parquet store, resumable."""
from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow.parquet as pq
import torch

from .devices import default_workers, torch_threads, usable_cores  # the last two also importable from here
from .encoders import Encoder, create_encoder
from .errors import BadImageError, InputNotFoundError, InvalidArgumentError, StoreError
from .loader import aligned_batches, iter_decoded
from .location import StoreLocation
from .progress import progress_bar
from .sources import ImageSource, SkippedFile, count_reasons, list_images
from .store import MANIFEST_NAME, SHARD_PATTERN, StoreWriter

EXTRA_COLUMNS = ("label", "width", "height", "sha256")
_QUEUE_BATCHES = 8  # batches waiting for the writer thread; bounds memory while decode/forward run ahead


@dataclass(frozen=True)
class EmbedResult:
    """What ``embed_images`` did.

    Attributes:
        directory: the embedding store written (Contract 2): a Path, or the URI of an object store.
        rows: rows in the store now (from this run and, with resume, earlier ones).
        embedded_now: images embedded by this call.
        skipped: every file the store records as skipped, with its reason.
        dim: embedding dimension.
        encoder: the encoder fingerprint stored in the manifest.
        seconds: wall time of this call (listing, model, decode, forward, writing).
        images_per_second: ``embedded_now / seconds``.
        resumed: true when rows from an earlier interrupted run were kept.
    """

    directory: Path | str
    rows: int
    embedded_now: int
    skipped: tuple[SkippedFile, ...]
    dim: int
    encoder: dict[str, Any]
    seconds: float
    images_per_second: float
    resumed: bool

    def skipped_by_reason(self) -> dict[str, int]:
        """Skipped files counted by reason, e.g. ``{"truncated": 1, "empty": 1}``."""
        return count_reasons(self.skipped)

    def summary(self) -> str:
        """One line, e.g. ``embedded 118 images, skipped 3: 1 truncated, 1 empty, 1 not_an_image``."""
        verb = f"embedded {self.embedded_now} image{'s' if self.embedded_now != 1 else ''}"
        if self.resumed:
            verb += f" (resumed: {self.rows - self.embedded_now} already in the store)"
        if not self.skipped:
            return verb
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.skipped_by_reason().items())
        return f"{verb}, skipped {len(self.skipped)}: {reasons}"

    def to_dict(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "rows": self.rows, "embedded_now": self.embedded_now,
                "dim": self.dim, "encoder": self.encoder, "seconds": round(self.seconds, 3),
                "images_per_second": round(self.images_per_second, 2), "resumed": self.resumed,
                "skipped_by_reason": self.skipped_by_reason(), "skipped": [s.to_dict() for s in self.skipped]}


class PathEmbeddings(NamedTuple):
    """Vectors of image files (``embed_paths``); unpacks as ``vectors, skipped``.

    Attributes:
        vectors: (n_ok, dim) float32, L2-normalised; row i is the i-th path that was not skipped.
        skipped: the paths that could not be decoded, in input order.
    """

    vectors: np.ndarray
    skipped: list[SkippedFile]

    def kept(self, paths: Sequence[str | os.PathLike[str]]) -> list[str]:
        """The input paths that have a row in ``vectors``, in row order."""
        bad = {s.path for s in self.skipped}
        return [os.fspath(p) for p in paths if os.fspath(p) not in bad]


def _check_args(batch_size: int, workers: int | None, device: torch.device) -> int:
    if batch_size <= 0:
        raise InvalidArgumentError(f"--batch-size must be > 0, got {batch_size}")
    if workers is None:
        return default_workers(device)
    if workers < 0:
        raise InvalidArgumentError(f"--workers must be >= 0 (0 decodes in the main process), got {workers}")
    return workers


# --------------------------------------------------------------------------- query images


def embed_paths(paths: Sequence[str | os.PathLike[str]], encoder: Encoder, batch_size: int = 64,
                workers: int = 0) -> PathEmbeddings:
    """Decode and embed image files with ``encoder`` (no store): for query images.

    Args:
        paths: image files.
        encoder: e.g. the index's own encoder (``encoders.encoder_from_fingerprint``).
        batch_size: images per forward pass.
        workers: decode processes (0 = decode here; right for a handful of queries).

    Returns:
        ``(vectors, skipped)``: (n_ok, dim) float32 L2-normalised rows for the paths that could be
        decoded, in input order; the others as ``SkippedFile`` (path as given, reason, detail).

    Example:
        >>> vectors, skipped = embed_paths(["q1.jpg", "q2.png"], encoder)  # doctest: +SKIP
    """
    workers = _check_args(batch_size, workers, encoder.device)
    files = [Path(p) for p in paths]
    batches = [list(range(i, min(i + batch_size, len(files)))) for i in range(0, len(files), batch_size)]
    parts: list[np.ndarray] = []
    skipped: list[SkippedFile] = []
    for batch in iter_decoded(files, encoder, batches, workers=min(workers, len(batches)),
                              pin_memory=encoder.device.type == "cuda"):
        skipped += [SkippedFile(os.fspath(paths[p]), reason, detail) for p, reason, detail in batch.skipped]
        if len(batch.positions):
            parts.append(encoder.embed_tensors(batch.images))
    order = {os.fspath(p): i for i, p in enumerate(paths)}
    skipped.sort(key=lambda s: order[s.path])
    vectors = np.concatenate(parts) if parts else np.zeros((0, encoder.dim), np.float32)
    return PathEmbeddings(vectors, skipped)


# --------------------------------------------------------------------------- the store writer thread


class _BackgroundWriter:
    """Runs ``StoreWriter.write`` / ``add_skipped`` on a thread, fed through a bounded queue.

    Every call to the StoreWriter goes through this thread until ``finish``, so it needs no lock.
    An error on the thread is re-raised in the caller at the next ``put`` or at ``finish``.
    """

    def __init__(self, writer: StoreWriter) -> None:
        self.writer = writer
        self.queue: queue.Queue[tuple[str, tuple[Any, ...]] | None] = queue.Queue(maxsize=_QUEUE_BATCHES)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="sslsearch-store-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue  # drain without writing after a failure
            kind, args = item
            try:
                if kind == "rows":
                    ids, paths, vectors, extra = args
                    self.writer.write(ids, paths, vectors, **extra)
                else:
                    self.writer.add_skipped(*args)
            except BaseException as error:  # noqa: BLE001 - handed to the main thread
                self.error = error

    def put(self, kind: str, *args: Any) -> None:
        self._raise_error()
        while True:
            try:
                self.queue.put((kind, args), timeout=0.5)
                return
            except queue.Full:
                self._raise_error()

    def _raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        """Wait for everything queued to be written (re-raising a writer error)."""
        self.queue.put(None)
        self.thread.join()
        self._raise_error()


# --------------------------------------------------------------------------- the main job


def _check_resumed_paths(location: StoreLocation, source: ImageSource) -> None:
    """Refuse to resume when the rows already written belong to another list of images.

    Runs before the StoreWriter opens the store, so a refused resume leaves the store as it was.
    """
    directory = location.display
    for name in location.list():
        if not SHARD_PATTERN.match(name):
            continue
        try:
            table = pq.read_table(location.path(name), columns=["id", "path"], filesystem=location.filesystem)
        except Exception:  # noqa: BLE001 - a damaged shard is the StoreWriter's to report or drop
            continue
        for i, path in zip(table.column("id").to_pylist(), table.column("path").to_pylist()):
            if i >= len(source.records) or source.records[i].path != path:
                now = repr(source.records[i].path) if i < len(source.records) else "nothing (fewer images now)"
                raise StoreError(f"cannot resume {directory}: row id {i} is {path!r} but the images now give id "
                                 f"{i} to {now}; the image set changed since the first run — pass --overwrite "
                                 "to start again")


def _remove_store(location: StoreLocation, created: bool, *, shards: bool = False) -> None:
    """Leave nothing that looks like a store: only when it holds no shard, unless ``shards`` (ours to delete)."""
    written = [name for name in location.list() if SHARD_PATTERN.match(name)]
    if written and not shards:
        return
    for name in written:
        location.delete(name)
    location.delete(MANIFEST_NAME)
    if created and location.is_local:
        try:
            os.rmdir(location.root)
        except OSError:
            pass


def embed_images(data: str | os.PathLike[str] | ImageSource, encoder: str | Encoder, out: str | os.PathLike[str], *,
                 weights: str | os.PathLike[str] | None = None, image_size: int | None = None, batch_size: int = 64,
                 workers: int | None = None, dtype: str = "float16", device: str = "auto", resume: bool = False,
                 overwrite: bool = False, strict: bool = False, progress: bool | None = None,
                 shard_rows: int = 50_000, threads: int | None = None, pretrained: bool = False,
                 allow_download: bool = False) -> EmbedResult:
    """Embed every image of ``data`` into an embedding store at ``out`` (Contract 2).

    Worker processes decode (``load_image`` + the encoder's eval preprocessing) while the main
    process runs the forward pass in ``inference_mode`` and a background thread writes Parquet
    shards, so decode, compute and writing overlap. Vectors are L2-normalised, stored as
    ``dtype``. A run killed at any point leaves complete shards; ``resume=True`` embeds only the
    missing images, in the same batches as an uninterrupted run, so the result is identical.

    Args:
        data: a folder, a .txt/.csv/.parquet list of paths, one image, or an ``ImageSource``.
        encoder: ``timm:<name>``, a training run directory, or a ready ``Encoder``.
        out: the store directory (created; must be empty or new unless resume/overwrite), or a URI that
            pyarrow.fs opens, such as ``s3://bucket/emb`` (credentials and endpoint from the AWS environment).
        weights: local state dict (or checkpoint folder) for a ``timm:`` encoder.
        image_size: overrides the encoder's eval crop size.
        batch_size: images per forward pass.
        workers: decode processes (0 decodes in this process); default ``default_workers(device)``:
            one per core up to 8 with a GPU; on the CPU a quarter of the cores, at least 1 (0 on one core).
        dtype: ``float16`` (default) or ``float32`` storage.
        device: ``auto``, ``cpu`` or ``cuda``.
        resume: finish an interrupted store at ``out`` (same encoder and images).
        overwrite: replace a store (or write into a directory holding other files).
        strict: a file that cannot be decoded is an error instead of being skipped.
        progress: show a progress bar on stderr (default: when stderr is a terminal).
        shard_rows: rows per Parquet shard.
        threads: CPU threads of the forward pass (``torch.set_num_threads``) during this call;
            default: torch's current setting. Restored afterwards.
        pretrained, allow_download: the published weights of a ``timm:`` name, from the local Hugging Face
            cache (downloaded only with ``allow_download``); see ``create_encoder``.

    Returns:
        An ``EmbedResult``; ``result.summary()`` is a one-line report.

    Raises:
        InputNotFoundError: ``data`` is missing or holds no images, or none could be decoded
            (nothing is left in ``out``).
        OutputExistsError: ``out`` holds other data (pass overwrite).
        StoreError: ``out`` already holds a store (pass resume or overwrite).
        LockedError: another live process is writing ``out``.
        BadImageError: with ``strict``, the first file that cannot be decoded (a fresh store is removed).
        EncoderMismatchError: resuming with another encoder.

    Example:
        >>> result = embed_images("images/", "timm:resnet18", "emb/", image_size=64)  # doctest: +SKIP
        >>> print(result.summary())  # doctest: +SKIP
        embedded 118 images, skipped 3: 1 truncated, 1 empty, 1 not_an_image
    """
    started = time.perf_counter()
    _check_args(batch_size, workers, torch.device("cpu"))
    if shard_rows <= 0:
        raise InvalidArgumentError(f"shard_rows must be > 0, got {shard_rows}")
    if threads is not None and threads <= 0:
        raise InvalidArgumentError(f"threads must be > 0, got {threads}")
    source = data if isinstance(data, ImageSource) else list_images(data)
    if not isinstance(encoder, Encoder):
        encoder = create_encoder(encoder, weights=weights, image_size=image_size, device=device, pretrained=pretrained,
                                 allow_download=allow_download)
    elif weights is not None or image_size is not None or pretrained:
        raise InvalidArgumentError("weights/image_size/pretrained apply when the encoder is given by name; this Encoder "
                                   "is built")
    workers = _check_args(batch_size, workers, encoder.device)
    location = StoreLocation.parse(out)
    created = not location.is_dir()
    if resume and not created:
        _check_resumed_paths(location, source)
    writer = StoreWriter(out, dim=encoder.dim, dtype=dtype, encoder=encoder.fingerprint.to_dict(),
                         source_root=str(source.root), resume=resume, overwrite=overwrite, shard_rows=shard_rows,
                         extra_columns=EXTRA_COLUMNS)
    kept_before = writer.manifest.rows
    todo = [r.id for r in source.records if r.id not in writer.done_ids]
    try:
        with torch_threads(threads):
            embedded_now = _run(source, encoder, writer, todo, batch_size=batch_size, workers=workers, strict=strict,
                                progress=progress, dtype=dtype)
    except BadImageError:
        if kept_before == 0:  # --strict stopped a fresh run: its shards are of no use once the file is fixed
            _remove_store(location, created, shards=True)
        raise
    except BaseException:
        _remove_store(location, created)  # a run that wrote no shard leaves nothing to resume
        raise
    if kept_before + embedded_now == 0:
        skipped = [SkippedFile(**s) for s in writer.manifest.skipped]
        writer.abort()
        _remove_store(location, created)
        reasons = ", ".join(f"{n} {reason}" for reason, n in count_reasons(skipped).items())
        first = skipped[0].detail if skipped else "?"
        raise InputNotFoundError(f"none of the {len(source)} image(s) in {source.root} could be decoded ({reasons}; "
                                 f"first: {first}); no store was written — fix the files or point at another folder")
    manifest = writer.close(complete=True, source_root=str(source.root))
    seconds = time.perf_counter() - started
    return EmbedResult(directory=writer.directory, rows=manifest.rows, embedded_now=embedded_now,
                       skipped=tuple(SkippedFile(**s) for s in manifest.skipped), dim=manifest.dim,
                       encoder=manifest.encoder, seconds=seconds,
                       images_per_second=embedded_now / seconds if seconds > 0 else 0.0, resumed=kept_before > 0)


def _run(source: ImageSource, encoder: Encoder, writer: StoreWriter, todo: list[int], *, batch_size: int,
         workers: int, strict: bool, progress: bool | None, dtype: str) -> int:
    """Decode → forward → queue for writing; returns rows embedded. On any error the shards written are kept."""
    records = source.records
    files = [source.abs_path(r) for r in records]
    batches = aligned_batches(todo, batch_size)
    background = _BackgroundWriter(writer)
    embedded = 0
    try:
        with progress_bar(len(todo), "embed", unit="img", enabled=progress) as bar:
            for batch in iter_decoded(files, encoder, batches, workers=min(workers, len(batches)),
                                      pin_memory=encoder.device.type == "cuda"):
                for position, reason, detail in batch.skipped:
                    if strict:
                        raise BadImageError(f"{detail} [{reason}]; fix or remove the file, or drop --strict to skip "
                                            "bad files", reason)
                    background.put("skip", records[position].path, reason, detail)
                if len(batch.positions):
                    vectors = encoder.embed_tensors(batch.images).astype(dtype, copy=False)
                    chosen = [records[p] for p in batch.positions.tolist()]
                    extra = {"label": [r.label for r in chosen], "width": batch.widths, "height": batch.heights,
                             "sha256": batch.sha256}
                    background.put("rows", np.array([r.id for r in chosen], np.int64), [r.path for r in chosen],
                                   vectors, extra)
                    embedded += len(chosen)
                bar.update(len(batch.positions) + len(batch.skipped))
        background.finish()
    except BaseException:
        try:
            background.finish()  # write what was computed: it is kept for --resume
        except BaseException:  # noqa: BLE001 - the first error is the one to report
            pass
        try:
            writer.abort()
        except BaseException:  # noqa: BLE001 - abort releases the lock even when its flush fails
            pass
        raise
    return embedded


__all__ = ["EXTRA_COLUMNS", "EmbedResult", "PathEmbeddings", "default_workers", "embed_images", "embed_paths",
           "usable_cores"]
