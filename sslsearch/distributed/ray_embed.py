"""Embedding extraction on Ray Data: an actor pool embeds shard blocks into the local engine's store format."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..embed import EXTRA_COLUMNS, EmbedResult
from ..encoders import Encoder, create_encoder
from ..errors import (
    BadImageError,
    EncoderMismatchError,
    InputNotFoundError,
    InvalidArgumentError,
    SSLSearchError,
    StoreError,
)
from ..files import DirectoryLock
from ..progress import progress_bar
from ..sources import ImageSource, SkippedFile, count_reasons, list_images
from ..store import DTYPES, MANIFEST_NAME, SHARD_PATTERN, ShardInfo, StoreManifest, schema_for
from .blocks import RECEIPTS, BlockReceipt, BlockTask, embed_block, plan_blocks, read_receipts, shard_name
from ..location import StoreLocation


class RayNotInstalledError(SSLSearchError, ImportError):
    """``--engine ray`` without the ``ray[data]`` package."""


def import_ray() -> Any:
    """Import ray and ray.data, or raise a one-line error that says how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library is a separate extra of ray
    except ImportError as error:
        raise RayNotInstalledError(f"--engine ray needs Ray Data ({error.name or error} is not importable); install it "
                                   "with `pip install 'sslsearch[ray]'` (or `pip install 'ray[data]'`)") from None
    return ray


class BlockEmbedder:
    """The Ray actor: loads the encoder once, then embeds whole blocks (one per call) into shards."""

    def __init__(self, encoder_spec: str, weights: str | None, image_size: int | None, device: str,
                 expected_id: str, location_uri: str, root: str, dim: int, dtype: str, batch_size: int,
                 decode_workers: int, threads: int | None, strict: bool, pretrained: bool = False,
                 allow_download: bool = False) -> None:
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        self.error: SSLSearchError | None = None  # reported with the first block: Ray Data drops exception types
        try:
            self.encoder = create_encoder(encoder_spec, weights=weights, image_size=image_size, device=device,
                                          pretrained=pretrained, allow_download=allow_download)
            if self.encoder.fingerprint.id != expected_id:
                raise EncoderMismatchError(
                    f"the encoder built on this worker is {self.encoder.fingerprint.id}, the driver's is {expected_id}: "
                    f"the weights of {encoder_spec} differ between machines; put the same file on every node")
        except SSLSearchError as error:
            self.error = error
        self.location = StoreLocation.parse(location_uri)
        self.root = Path(root)
        self.schema = schema_for(dim, dtype, EXTRA_COLUMNS)
        self.batch_size = batch_size
        self.decode_workers = decode_workers
        self.strict = strict

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        receipts, errors = [], []
        for block, task in zip(batch["block"].tolist(), batch["task"].tolist()):
            try:
                if self.error is not None:
                    raise self.error
                receipt = embed_block(BlockTask.from_row(block, task), self.encoder, self.location, self.schema,
                                      self.root, batch_size=self.batch_size, decode_workers=self.decode_workers,
                                      strict=self.strict)
            except SSLSearchError as error:  # a user error travels as data; anything else is Ray's to report
                receipts.append("")
                errors.append(json.dumps({"type": type(error).__name__, "message": str(error),
                                          "reason": getattr(error, "reason", None)}))
                continue
            receipts.append(receipt.to_json())
            errors.append("")
        return {"receipt": np.array(receipts, dtype=object), "error": np.array(errors, dtype=object)}


def _raise_reported(text: str) -> None:
    """Re-raise on the driver the SSLSearchError an actor reported as JSON."""
    from .. import errors

    data = json.loads(text)
    kind = getattr(errors, data["type"], None)
    if kind is BadImageError:
        raise BadImageError(data["message"], data["reason"] or "unreadable")
    if isinstance(kind, type) and issubclass(kind, SSLSearchError):
        raise kind(data["message"])
    raise SSLSearchError(data["message"])


# --------------------------------------------------------------------------- the driver


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """How the job uses the cluster.

    Attributes:
        address: None starts (or reuses) a local Ray; ``auto`` joins the running cluster; ``ray://host:10001``
            a remote one.
        workers: actors in the pool (None: as many as the cluster's CPUs/GPUs allow).
        gpus_per_worker: GPUs per actor (None: 1 when the cluster has GPUs, else 0).
        cpus_per_worker: CPUs per actor (None: 4 with a GPU — decode processes — else 1 forward thread).
    """

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float | None = None


def _check_args(batch_size: int, shard_rows: int, dtype: str, options: RayOptions) -> None:
    if batch_size <= 0:
        raise InvalidArgumentError(f"--batch-size must be > 0, got {batch_size}")
    if shard_rows <= 0:
        raise InvalidArgumentError(f"--shard-rows must be > 0, got {shard_rows}")
    if dtype not in DTYPES:
        raise InvalidArgumentError(f"unknown embedding dtype {dtype!r}; choose float16 or float32")
    if options.workers is not None and options.workers <= 0:
        raise InvalidArgumentError(f"--workers must be > 0 with --engine ray (actors in the pool), got {options.workers}")
    for name, value in (("--gpus-per-worker", options.gpus_per_worker), ("--cpus-per-worker", options.cpus_per_worker)):
        if value is not None and value < 0:
            raise InvalidArgumentError(f"{name} must be >= 0, got {value}")


@contextlib.contextmanager
def ray_session(ray: Any, address: str | None) -> Iterator[None]:
    """Use the Ray already initialised in this process, else connect/start one and shut it down after."""
    if ray.is_initialized():
        yield
        return
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except ConnectionError as error:
        raise InvalidArgumentError(f"cannot reach the Ray cluster at --address {address!r} ({error}); start it with "
                                   "`ray start --head` or leave --address out for a local one") from None
    try:
        yield
    finally:
        ray.shutdown()


def _resources(ray: Any, options: RayOptions, device: str) -> tuple[int, float, float]:
    """(actors, gpus per actor, cpus per actor) from the options, the device asked and the cluster's resources."""
    cluster = ray.cluster_resources()
    gpus = float(cluster.get("GPU", 0))
    cpus = float(cluster.get("CPU", 1))
    default_gpus = 1.0 if gpus and device != "cpu" else 0.0
    per_gpu = options.gpus_per_worker if options.gpus_per_worker is not None else default_gpus
    if per_gpu > gpus:
        raise InvalidArgumentError(f"--gpus-per-worker {per_gpu} but the Ray cluster has {gpus:g} GPU(s); "
                                   "pass --gpus-per-worker 0 to embed on CPUs")
    per_cpu = options.cpus_per_worker if options.cpus_per_worker is not None else (4.0 if per_gpu else 1.0)
    per_cpu = min(per_cpu, cpus)
    if options.workers is not None:
        return options.workers, per_gpu, per_cpu
    fit = int(gpus // per_gpu) if per_gpu else int(cpus // max(per_cpu, 1e-9))
    return max(1, fit), per_gpu, per_cpu


def _prepare_store(location: StoreLocation, source: ImageSource, encoder: Encoder, dtype: str, *, resume: bool,
                   overwrite: bool) -> dict[int, BlockReceipt]:
    """Check or clear the output; return the receipts of blocks already done (resume only)."""
    names = [n for n in location.list() if not n.startswith(".")]  # the lock, temporary files
    has_store = MANIFEST_NAME in names or any(SHARD_PATTERN.match(n) for n in names)
    fingerprint = encoder.fingerprint.to_dict()
    if has_store and not (resume or overwrite):
        raise StoreError(f"{location.uri} already holds an embedding store; pass --resume to finish it, --overwrite "
                         "to replace it, or choose another --out")
    if not has_store and names and not overwrite and not resume:
        raise StoreError(f"output directory {location.uri} already holds {len(names)} other file(s) (e.g. {names[0]!r}); "
                         "choose an empty or new directory, or pass --overwrite")
    location.make_dirs(RECEIPTS)
    if overwrite and not resume:
        for name in names:
            if SHARD_PATTERN.match(name) or name == MANIFEST_NAME:
                location.delete(name)
        for name in location.list(RECEIPTS):
            location.delete(f"{RECEIPTS}/{name}")
        return {}
    if not (resume and has_store):
        return {}
    if MANIFEST_NAME in names:
        try:
            manifest = StoreManifest.from_dict(json.loads(location.read_bytes(MANIFEST_NAME)))
        except (ValueError, TypeError, KeyError) as error:
            raise StoreError(f"{location.uri}/{MANIFEST_NAME} is not a valid store manifest ({error}); pass "
                             "--overwrite to start again") from None
        if manifest.encoder.get("id") != fingerprint["id"] or manifest.dim != encoder.dim or manifest.dtype != dtype:
            raise EncoderMismatchError(
                f"cannot resume {location.uri}: it holds {manifest.encoder_spec} ({manifest.encoder_id}, dim "
                f"{manifest.dim} {manifest.dtype}), this run makes {fingerprint['spec']} ({fingerprint['id']}, dim "
                f"{encoder.dim} {dtype}); use the same encoder and --dtype, or a new --out")
    receipts = read_receipts(location)
    if not receipts and any(SHARD_PATTERN.match(n) for n in names):
        raise StoreError(f"cannot resume {location.uri} with --engine ray: its shards were not written by the Ray engine "
                         "(no .blocks/ receipts); resume it with the engine that started it, or pass --overwrite")
    return receipts


def _write_manifest(location: StoreLocation, encoder: Encoder, dtype: str, source: ImageSource,
                    receipts: dict[int, BlockReceipt], *, complete: bool) -> StoreManifest:
    ordered = [receipts[b] for b in sorted(receipts)]
    manifest = StoreManifest(dim=encoder.dim, dtype=dtype, encoder=encoder.fingerprint.to_dict(),
                             source_root=str(source.root), rows=sum(r.rows for r in ordered),
                             shards=tuple(ShardInfo(shard_name(r.block), r.rows) for r in ordered if r.rows),
                             skipped=tuple(s for r in ordered for s in r.skipped), complete=complete,
                             columns=tuple(schema_for(encoder.dim, dtype, EXTRA_COLUMNS).names))
    text = json.dumps(manifest.to_dict(), indent=2, default=str) + "\n"
    location.write_bytes_atomic(MANIFEST_NAME, text.encode())
    return manifest


def _check_paths_unchanged(location: StoreLocation, source: ImageSource, receipts: dict[int, BlockReceipt],
                           shard_rows: int) -> None:
    """Refuse to resume when the image list changed: a kept block's first and last paths must still have their ids."""
    import pyarrow.parquet as pq

    for receipt in receipts.values():
        if not receipt.rows:
            continue
        with location.filesystem.open_input_file(location.path(shard_name(receipt.block))) as handle:
            table = pq.read_table(handle, columns=["id", "path"])
        ids, paths = table.column("id").to_pylist(), table.column("path").to_pylist()
        for i, path in ((ids[0], paths[0]), (ids[-1], paths[-1])):
            if i // shard_rows != receipt.block or i >= len(source) or source.records[i].path != path:
                raise StoreError(f"cannot resume {location.uri}: row id {i} is {path!r} but the images (and "
                                 f"--shard-rows {shard_rows}) now put another file there; the image set or "
                                 "--shard-rows changed since the first run — pass --overwrite to start again")


def embed_images_ray(data: str | os.PathLike[str] | ImageSource, encoder: str, out: str | os.PathLike[str], *,
                     weights: str | os.PathLike[str] | None = None, image_size: int | None = None,
                     batch_size: int = 64, dtype: str = "float16", device: str = "auto", resume: bool = False,
                     overwrite: bool = False, strict: bool = False, progress: bool | None = None,
                     shard_rows: int = 50_000, pretrained: bool = False, allow_download: bool = False,
                     options: RayOptions = RayOptions()) -> EmbedResult:
    """Embed every image of ``data`` into a store at ``out`` with a Ray Data actor pool (Contract 2).

    The images are listed on the driver (``sources.list_images``: the same ids as the local
    engine) and cut into blocks of ``shard_rows`` ids. Each actor loads the encoder once and
    embeds whole blocks: it decodes with the local engine's loader, runs the forward pass and
    writes the block's shard ``part-<block>.parquet`` and a receipt ``.blocks/block-<block>.json``
    straight to ``out`` (a local path or a pyarrow URI such as ``s3://bucket/emb``). The driver
    commits ``manifest.json`` when every block is done. A killed job rerun with ``resume=True``
    embeds only the blocks without an intact shard and receipt. Image files must be readable at
    the same absolute path on every node (a shared filesystem).

    Args:
        data: a folder, a .txt/.csv/.parquet list of paths, or an ``ImageSource``.
        encoder: ``timm:<name>`` or a training run directory (built on every actor).
        out: the store directory or URI.
        weights, image_size, batch_size, dtype, resume, overwrite, strict, pretrained, allow_download: as
            ``embed_images`` (published weights must be in each node's Hugging Face cache, or downloadable).
        device: ``auto`` (CUDA in actors that hold a GPU), ``cpu`` or ``cuda``.
        progress: a bar of rows done (block by block) on stderr.
        shard_rows: ids per block = rows per shard (fewer where files were bad).
        options: cluster address and actor sizing (``RayOptions``).

    Returns:
        An ``EmbedResult``, as the local engine's.

    Raises:
        RayNotInstalledError: ray[data] is missing.
        InputNotFoundError, StoreError, EncoderMismatchError, BadImageError, InvalidArgumentError:
            as ``embed_images``.

    Example:
        >>> embed_images_ray("images/", "timm:resnet50", "s3://bucket/emb",
        ...                  options=RayOptions(address="auto", gpus_per_worker=1))  # doctest: +SKIP
    """
    started = time.perf_counter()
    _check_args(batch_size, shard_rows, dtype, options)
    ray = import_ray()
    source = data if isinstance(data, ImageSource) else list_images(data)
    driver_encoder = create_encoder(encoder, weights=weights, image_size=image_size, device="cpu",
                                    pretrained=pretrained, allow_download=allow_download)
    location = StoreLocation.parse(out)
    created = location.is_local and not os.path.exists(location.root)
    try:
        manifest, kept_before, embedded_now = _embed_locked(ray, source, driver_encoder, location, encoder=encoder,
                                                            weights=weights, image_size=image_size, device=device,
                                                            dtype=dtype, batch_size=batch_size, strict=strict,
                                                            progress=progress, shard_rows=shard_rows, resume=resume,
                                                            overwrite=overwrite, options=options,
                                                            pretrained=pretrained, allow_download=allow_download)
    except BaseException:
        if created and not location.list() and not location.list(RECEIPTS):
            for directory in (os.path.join(location.root, RECEIPTS), location.root):
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
        raise
    seconds = time.perf_counter() - started
    return EmbedResult(directory=Path(location.root) if location.is_local else location.uri, rows=manifest.rows,
                       embedded_now=embedded_now, skipped=tuple(SkippedFile(**s) for s in manifest.skipped),
                       dim=manifest.dim, encoder=manifest.encoder, seconds=seconds,
                       images_per_second=embedded_now / seconds if seconds > 0 else 0.0, resumed=kept_before > 0)


def _embed_locked(ray: Any, source: ImageSource, driver_encoder: Encoder, location: StoreLocation, *, encoder: str,
                  weights: str | os.PathLike[str] | None, image_size: int | None, device: str, dtype: str,
                  batch_size: int, strict: bool, progress: bool | None, shard_rows: int, resume: bool,
                  overwrite: bool, options: RayOptions, pretrained: bool = False,
                  allow_download: bool = False) -> tuple[StoreManifest, int, int]:
    """Prepare, run and commit under the directory lock; returns (manifest, rows kept, rows embedded now)."""
    lock = DirectoryLock(location.root) if location.is_local else contextlib.nullcontext()
    with lock:
        done = _prepare_store(location, source, driver_encoder, dtype, resume=resume, overwrite=overwrite)
        if done:
            _check_paths_unchanged(location, source, done, shard_rows)
        _write_manifest(location, driver_encoder, dtype, source, done, complete=False)
        kept_before = sum(r.rows for r in done.values())
        todo = [task for task in plan_blocks(source, shard_rows) if task.block not in done]
        try:
            receipts = dict(done)
            receipts.update(_run(ray, todo, source, driver_encoder, location, encoder=encoder, weights=weights,
                                 image_size=image_size, device=device, dtype=dtype, batch_size=batch_size,
                                 strict=strict, progress=progress, options=options, pretrained=pretrained,
                                 allow_download=allow_download))
        except BadImageError:
            if not done:  # --strict stopped a fresh run: its shards are of no use once the file is fixed
                _remove_outputs(location)
            raise
        except BaseException:
            if not done and not location.list(RECEIPTS):  # nothing finished: nothing to resume
                _remove_outputs(location)
            raise
        embedded_now = sum(receipts[t.block].rows for t in todo)
        if kept_before + embedded_now == 0:
            skipped = [SkippedFile(**s) for r in receipts.values() for s in r.skipped]
            _remove_outputs(location)
            reasons = ", ".join(f"{n} {reason}" for reason, n in count_reasons(skipped).items())
            raise InputNotFoundError(f"none of the {len(source)} image(s) in {source.root} could be decoded ({reasons}; "
                                     f"first: {skipped[0].detail if skipped else '?'}); no store was written — fix the "
                                     "files or point at another folder")
        manifest = _write_manifest(location, driver_encoder, dtype, source, receipts, complete=True)
    return manifest, kept_before, embedded_now


def _remove_outputs(location: StoreLocation) -> None:
    """Leave nothing that looks like a store after a run that produced nothing usable."""
    for name in location.list(RECEIPTS):
        location.delete(f"{RECEIPTS}/{name}")
    for name in location.list():
        if SHARD_PATTERN.match(name) or name == MANIFEST_NAME:
            location.delete(name)


def _run(ray: Any, todo: list[BlockTask], source: ImageSource, driver_encoder: Encoder, location: StoreLocation, *,
         encoder: str, weights: str | os.PathLike[str] | None, image_size: int | None, device: str, dtype: str,
         batch_size: int, strict: bool, progress: bool | None, options: RayOptions, pretrained: bool = False,
         allow_download: bool = False) -> dict[int, BlockReceipt]:
    """Embed the ``todo`` blocks on the cluster; returns their receipts."""
    if not todo:
        return {}
    total = sum(len(t.ids) for t in todo)
    finished: dict[int, BlockReceipt] = {}
    with ray_session(ray, options.address):
        actors, gpus, cpus = _resources(ray, options, device)
        actor_device = device if device != "auto" else ("cuda" if gpus else "cpu")
        decode_workers = max(0, int(cpus) - 1) if gpus else 0
        threads = None if gpus else max(1, int(cpus))
        context = ray.data.DataContext.get_current()
        bars_before = context.enable_progress_bars
        context.enable_progress_bars = False  # our own bar counts rows; Ray's counts blocks
        try:
            dataset = ray.data.from_items([t.to_row() for t in todo], override_num_blocks=len(todo))
            dataset = dataset.map_batches(
                BlockEmbedder, batch_size=1, num_gpus=gpus or None, num_cpus=cpus,
                compute=ray.data.ActorPoolStrategy(size=min(actors, len(todo)), max_tasks_in_flight_per_actor=1),
                fn_constructor_kwargs=dict(
                    encoder_spec=encoder, weights=None if weights is None else os.path.abspath(weights),
                    image_size=image_size, device=actor_device, expected_id=driver_encoder.fingerprint.id,
                    location_uri=location.uri if not location.is_local else location.root, root=str(source.root),
                    dim=driver_encoder.dim, dtype=dtype, batch_size=batch_size, decode_workers=decode_workers,
                    threads=threads, strict=strict, pretrained=pretrained, allow_download=allow_download))
            with progress_bar(total, "embed (ray)", unit="img", enabled=progress) as bar:
                for row in dataset.iter_rows():
                    if row["error"]:
                        _raise_reported(row["error"])
                    receipt = BlockReceipt.from_json(row["receipt"])
                    finished[receipt.block] = receipt
                    bar.update(receipt.rows + len(receipt.skipped))
        finally:
            context.enable_progress_bars = bars_before
    return finished


__all__ = ["BlockEmbedder", "RayNotInstalledError", "RayOptions", "embed_images_ray", "import_ray"]
