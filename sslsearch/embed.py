"""Embedding extraction: images decoded in worker processes → encoder forward → Parquet store, resumable."""
from __future__ import annotations

import contextlib
import functools
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from .encoders import Encoder, create_encoder
from .errors import BadImageError, InputNotFoundError, InvalidArgumentError, StoreError
from .progress import progress_bar
from .sources import ImageSource, SkippedFile, count_reasons, list_images, load_image
from .store import MANIFEST_NAME, SHARD_PATTERN, StoreWriter

EXTRA_COLUMNS = ("label", "width", "height", "sha256")
_QUEUE_BATCHES = 8  # batches waiting for the writer thread; bounds memory while decode/forward run ahead


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(device: str | torch.device = "cpu") -> int:
    """Decode worker processes by default.

    With a GPU the CPU only decodes: one worker per core, at most 8. On the CPU the forward pass
    needs the cores too and decoding costs a fraction of it (about 1/5 for resnet18 at 64 px,
    1/12 at 112 px), so a quarter of the cores, at least one: on 2 cores, 1 worker beat 2 and 0
    (see benchmarks/bench_embed.py).
    """
    cores = usable_cores()
    if torch.device(device).type == "cuda":
        return max(1, min(cores, 8))
    return max(1, min(cores // 4, 8))


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class EmbedResult:
    """What ``embed_images`` did.

    Attributes:
        directory: the embedding store written (Contract 2).
        rows: rows in the store now (from this run and, with resume, earlier ones).
        embedded_now: images embedded by this call.
        skipped: every file the store records as skipped, with its reason.
        dim: embedding dimension.
        encoder: the encoder fingerprint stored in the manifest.
        seconds: wall time of this call (listing, model, decode, forward, writing).
        images_per_second: ``embedded_now / seconds``.
        resumed: true when rows from an earlier interrupted run were kept.
    """

    directory: Path
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


# --------------------------------------------------------------------------- decoding in workers


@dataclass(frozen=True)
class BatchPreprocessing:
    """An encoder's eval preprocessing split in two, with the same result as ``encoder.transform``.

    ``per_image`` (in the decode workers): resize + center-crop in PIL → (H, W, 3) uint8.
    ``per_batch`` (in the collate, still in the worker): (n, H, W, 3) uint8 → (n, 3, H, W) float32
    scaled to [0, 1] and normalised, in one vectorised pass instead of one per image; for a conv
    net the batch comes out channels_last with no extra copy (it is the uint8 layout, permuted).
    """

    resize_size: int
    image_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channels_last: bool

    @classmethod
    def of(cls, encoder: Encoder) -> "BatchPreprocessing":
        pre = encoder.preprocessing
        return cls(pre.resize_size, pre.image_size, pre.interpolation, tuple(pre.mean), tuple(pre.std),
                   encoder.channels_last)

    @functools.cached_property
    def _resize_crop(self) -> Any:
        from torchvision import transforms as T

        mode = getattr(T.InterpolationMode, self.interpolation.upper())
        return T.Compose([T.Resize(self.resize_size, interpolation=mode, antialias=True), T.CenterCrop(self.image_size)])

    def per_image(self, image: Image.Image) -> np.ndarray:
        """PIL RGB image → (image_size, image_size, 3) uint8."""
        return np.array(self._resize_crop(image), dtype=np.uint8, copy=True)

    def per_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, H, W, 3) uint8 → (n, 3, H, W) float32, the same values as ToTensor + Normalize per image."""
        images = pixels.permute(0, 3, 1, 2)  # a channels_last view
        if not self.channels_last:
            images = images.contiguous()
        images = images.to(torch.float32).div(255)
        mean = torch.tensor(self.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[:, None, None]
        return images.sub_(mean).div_(std)


@dataclass
class DecodedBatch:
    """What the collate function hands the main process.

    Attributes:
        positions: (n,) int64 positions (into the item list) of the decoded images.
        images: (n, 3, H, W) float32, preprocessed (channels_last for conv nets).
        widths, heights: decoded sizes (after EXIF rotation).
        sha256: hex digests of the file bytes.
        skipped: (position, reason, detail) of the files that could not be decoded.
    """

    positions: torch.Tensor
    images: torch.Tensor
    widths: list[int]
    heights: list[int]
    sha256: list[str]
    skipped: list[tuple[int, str, str]] = field(default_factory=list)

    def pin_memory(self) -> "DecodedBatch":
        self.images = self.images.pin_memory()
        return self


Item = tuple[int, "np.ndarray | None", int, int, str, str]  # position, pixels, width, height, sha256 | reason, detail


class _ImageFiles(torch.utils.data.Dataset):
    """Decode + resize one file per item; a bad file becomes a tagged item instead of an exception."""

    def __init__(self, paths: Sequence[Path], preprocessing: BatchPreprocessing) -> None:
        self.paths = list(paths)
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int) -> Item:
        try:
            decoded = load_image(self.paths[position])
        except BadImageError as error:
            return position, None, 0, 0, error.reason, str(error)
        try:
            pixels = self.preprocessing.per_image(decoded.image)
        except Exception as error:  # noqa: BLE001 - a transform failing on one file must not stop the run
            return position, None, 0, 0, "unreadable", f"{self.paths[position]}: cannot resize ({error})"
        return position, pixels, decoded.width, decoded.height, decoded.sha256, ""


@dataclass(frozen=True)
class _Collate:
    """Stack a batch's pixels and finish the preprocessing; keep the bad files apart with their reasons."""

    preprocessing: BatchPreprocessing

    def __call__(self, items: list[Item]) -> DecodedBatch:
        good = [item for item in items if item[1] is not None]
        bad = [(item[0], item[4], item[5]) for item in items if item[1] is None]
        if good:
            images = self.preprocessing.per_batch(torch.from_numpy(np.stack([item[1] for item in good])))
        else:
            images = torch.zeros(0)
        return DecodedBatch(positions=torch.tensor([item[0] for item in good], dtype=torch.int64), images=images,
                            widths=[item[2] for item in good], heights=[item[3] for item in good],
                            sha256=[item[4] for item in good], skipped=bad)


def _aligned_batches(todo: Sequence[int], batch_size: int) -> list[list[int]]:
    """Positions to decode, grouped by their fixed slot ``position // batch_size``.

    Grouping by slot (not by order among the remaining items) means a resumed run sends the
    encoder the same batches as an uninterrupted one, so the vectors are identical bit for bit.
    """
    groups: dict[int, list[int]] = {}
    for position in todo:
        groups.setdefault(position // batch_size, []).append(position)
    return [groups[slot] for slot in sorted(groups)]


def iter_decoded(paths: Sequence[Path], encoder: Encoder, batches: list[list[int]], *, workers: int,
                 pin_memory: bool = False) -> Iterator[DecodedBatch]:
    """Decode ``paths`` for ``encoder`` in ``batches`` (lists of positions) with ``workers`` processes (0 = here)."""
    if not batches:
        return iter(())
    preprocessing = BatchPreprocessing.of(encoder)
    loader = torch.utils.data.DataLoader(
        _ImageFiles(paths, preprocessing), batch_sampler=batches, num_workers=workers, collate_fn=_Collate(preprocessing),
        pin_memory=pin_memory, prefetch_factor=4 if workers else None, persistent_workers=False)
    return iter(loader)


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Use ``threads`` intra-op CPU threads inside the block (None: leave torch's setting)."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


def _check_resumed_paths(directory: Path, source: ImageSource) -> None:
    """Refuse to resume when the rows already written belong to another list of images.

    Runs before the StoreWriter opens the store, so a refused resume leaves the store as it was.
    """
    for shard in sorted(directory.glob("part-*.parquet")):
        if not SHARD_PATTERN.match(shard.name):
            continue
        try:
            table = pq.read_table(shard, columns=["id", "path"])
        except Exception:  # noqa: BLE001 - a damaged shard is the StoreWriter's to report or drop
            continue
        for i, path in zip(table.column("id").to_pylist(), table.column("path").to_pylist()):
            if i >= len(source.records) or source.records[i].path != path:
                now = repr(source.records[i].path) if i < len(source.records) else "nothing (fewer images now)"
                raise StoreError(f"cannot resume {directory}: row id {i} is {path!r} but the images now give id "
                                 f"{i} to {now}; the image set changed since the first run — pass --overwrite "
                                 "to start again")


def _remove_empty_store(directory: Path, created: bool) -> None:
    """After a run that wrote no rows, leave nothing that looks like a store."""
    if any(directory.glob("part-*.parquet")):
        return
    (directory / MANIFEST_NAME).unlink(missing_ok=True)
    if created:
        try:
            directory.rmdir()
        except OSError:
            pass


def embed_images(data: str | os.PathLike[str] | ImageSource, encoder: str | Encoder, out: str | os.PathLike[str], *,
                 weights: str | os.PathLike[str] | None = None, image_size: int | None = None, batch_size: int = 64,
                 workers: int | None = None, dtype: str = "float16", device: str = "auto", resume: bool = False,
                 overwrite: bool = False, strict: bool = False, progress: bool | None = None,
                 shard_rows: int = 50_000, threads: int | None = None) -> EmbedResult:
    """Embed every image of ``data`` into an embedding store at ``out`` (Contract 2).

    Worker processes decode (``load_image`` + the encoder's eval transform) while the main
    process runs the forward pass in ``inference_mode`` and a background thread writes Parquet
    shards, so decode, compute and writing overlap. Vectors are L2-normalised, stored as
    ``dtype``. A run killed at any point leaves complete shards; ``resume=True`` embeds only the
    missing images, in the same batches as an uninterrupted run, so the result is identical.

    Args:
        data: a folder, a .txt/.csv/.parquet list of paths, one image, or an ``ImageSource``.
        encoder: ``timm:<name>``, a training run directory, or a ready ``Encoder``.
        out: the store directory (created; must be empty or new unless resume/overwrite).
        weights: local state dict for a ``timm:`` encoder.
        image_size: overrides the encoder's eval crop size.
        batch_size: images per forward pass.
        workers: decode processes (0 decodes in this process); default ``default_workers(device)``:
            one per core up to 8 with a GPU, a quarter of the cores (at least 1) on the CPU.
        dtype: ``float16`` (default) or ``float32`` storage.
        device: ``auto``, ``cpu`` or ``cuda``.
        resume: finish an interrupted store at ``out`` (same encoder and images).
        overwrite: replace a store (or write into a directory holding other files).
        strict: a file that cannot be decoded is an error instead of being skipped.
        progress: show a progress bar on stderr (default: when stderr is a terminal).
        shard_rows: rows per Parquet shard.
        threads: CPU threads of the forward pass (``torch.set_num_threads``) during this call;
            default: torch's current setting. Restored afterwards.

    Returns:
        An ``EmbedResult``; ``result.summary()`` is a one-line report.

    Raises:
        InputNotFoundError: ``data`` is missing or holds no images.
        OutputExistsError: ``out`` holds other data (pass overwrite).
        InputNotFoundError: no image could be decoded (nothing is left in ``out``).
        StoreError: ``out`` already holds a store (pass resume or overwrite).
        LockedError: another live process is writing ``out``.
        BadImageError: with ``strict``, the first file that cannot be decoded.
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
        encoder = create_encoder(encoder, weights=weights, image_size=image_size, device=device)
    elif weights is not None or image_size is not None:
        raise InvalidArgumentError("weights/image_size apply when the encoder is given by name; this Encoder is built")
    workers = _check_args(batch_size, workers, encoder.device)
    directory = Path(out)
    created = not directory.exists()
    if resume and directory.is_dir():
        _check_resumed_paths(directory, source)
    writer = StoreWriter(directory, dim=encoder.dim, dtype=dtype, encoder=encoder.fingerprint.to_dict(),
                         source_root=str(source.root), resume=resume, overwrite=overwrite, shard_rows=shard_rows,
                         extra_columns=EXTRA_COLUMNS)
    kept_before = writer.manifest.rows
    todo = [r.id for r in source.records if r.id not in writer.done_ids]
    try:
        with _torch_threads(threads):
            embedded_now = _run(source, encoder, writer, todo, batch_size=batch_size, workers=workers, strict=strict,
                                progress=progress, dtype=dtype)
    except BaseException:
        _remove_empty_store(directory, created)  # a run that wrote no shard leaves nothing to resume
        raise
    if kept_before + embedded_now == 0:
        skipped = [SkippedFile(**s) for s in writer.manifest.skipped]
        writer.abort()
        _remove_empty_store(directory, created)
        reasons = ", ".join(f"{n} {reason}" for reason, n in count_reasons(skipped).items())
        first = skipped[0].detail if skipped else "?"
        raise InputNotFoundError(f"none of the {len(source)} image(s) in {source.root} could be decoded ({reasons}; "
                                 f"first: {first}); no store was written — fix the files or point at another folder")
    manifest = writer.close(complete=True, source_root=str(source.root))
    seconds = time.perf_counter() - started
    return EmbedResult(directory=directory, rows=manifest.rows, embedded_now=embedded_now,
                       skipped=tuple(SkippedFile(**s) for s in manifest.skipped), dim=manifest.dim,
                       encoder=manifest.encoder, seconds=seconds,
                       images_per_second=embedded_now / seconds if seconds > 0 else 0.0, resumed=kept_before > 0)


def _run(source: ImageSource, encoder: Encoder, writer: StoreWriter, todo: list[int], *, batch_size: int,
         workers: int, strict: bool, progress: bool | None, dtype: str) -> int:
    """Decode → forward → queue for writing; returns rows embedded. On any error the shards written are kept."""
    records = source.records
    files = [source.abs_path(r) for r in records]
    batches = _aligned_batches(todo, batch_size)
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


__all__ = ["EXTRA_COLUMNS", "BatchPreprocessing", "EmbedResult", "PathEmbeddings", "default_workers", "embed_images",
           "embed_paths", "usable_cores"]
