"""`sslsearch embed`: images → embedding store (Parquet shards + manifest)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import AllowDownloadOption, DeviceOption, JsonOption, PretrainedOption, info, print_json

HELP = """Embed every image of DATA into an embedding store at --out.

DATA is a folder, a `.txt`/`.csv`/`.parquet` list of paths, or one image. The store holds Parquet
shards and `manifest.json`, with L2-normalised vectors.

* **--encoder** is `timm:<model-name>` (random init unless --weights gives a local state dict;
  nothing is downloaded) or a run directory written by `sslsearch train`.
* Files that cannot be decoded are skipped and recorded with their reason (--strict makes them an
  error).
* An interrupted run keeps its complete shards: run the same command with --resume to finish it.
* --out may be a URI that pyarrow opens, such as `s3://bucket/emb` (credentials and endpoint from
  the standard AWS environment variables, e.g. `AWS_ENDPOINT_URL` for MinIO; docs/scale.md).
* Published weights (DINOv2, DINOv3, SigLIP 2, MAE, ...) come from the local Hugging Face cache
  with --pretrained; nothing is downloaded unless --allow-download is given (see docs/pretrained.md).
* **--engine ray** runs the same job on a Ray cluster (`pip install 'sslsearch[ray]'`): an actor
  pool embeds blocks of --shard-rows images, each actor writing its shard straight to --out (a
  path on a shared filesystem or a URI); --workers is then the number of actors (docs/scale.md).

Example: `sslsearch embed images/ --encoder timm:resnet18 --image-size 112 --out emb/`

Example: `sslsearch embed images/ --encoder timm:vit_small_patch14_dinov2.lvd142m --pretrained --image-size 224 --out emb/`
"""
ENGINES = ("local", "ray")


def embed_command(
    data: Path = typer.Argument(..., metavar="DATA", help="Folder of images, a .txt/.csv/.parquet list of paths, or one image."),
    encoder: str = typer.Option(..., "--encoder", "-e", help="`timm:<model-name>` or a `sslsearch train` run directory."),
    out: str = typer.Option(..., "--out", "-o", help="Output store directory (new or empty), or a URI such as `s3://bucket/emb`."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Local .safetensors/.pth state dict for a timm: encoder, "
                                           "or a checkpoint folder (weights + timm's config.json)."),
    pretrained: bool = PretrainedOption, allow_download: bool = AllowDownloadOption,
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Input size in px (default: the model's)."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Images per forward pass."),
    workers: Optional[int] = typer.Option(
        None, "--workers", "-w",
        help="Decode processes (0 = in-process). Default: a quarter of the cores on CPU (at least 1), one "
             "per core (at most 8) with a GPU. With --engine ray: actors in the pool (default: what the cluster fits)."),
    dtype: str = typer.Option("float16", "--dtype", help="Storage dtype of the vectors: float16 or float32."),
    device: str = DeviceOption,
    resume: bool = typer.Option(False, "--resume", help="Finish an interrupted store at --out (same encoder and images)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a store at --out, or write into a non-empty folder."),
    strict: bool = typer.Option(False, "--strict", help="Fail on the first file that cannot be decoded instead of skipping it."),
    shard_rows: int = typer.Option(50_000, "--shard-rows", help="Rows per Parquet shard."),
    threads: Optional[int] = typer.Option(None, "--threads",
                                          help="CPU threads of the forward pass (default: torch's, one per core)."),
    engine: str = typer.Option("local", "--engine", help="local (this machine) or ray (a Ray cluster)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster: auto, ray://host:10001 (default: local)."),
    gpus_per_worker: Optional[float] = typer.Option(None, "--gpus-per-worker",
                                                    help="Ray: GPUs per actor (default 1 if the cluster has GPUs)."),
    cpus_per_worker: Optional[float] = typer.Option(None, "--cpus-per-worker",
                                                    help="Ray: CPUs per actor (default 4 with a GPU, else 1)."),
    as_json: bool = JsonOption,
) -> None:
    from ..errors import InvalidArgumentError, unknown_name

    if engine not in ENGINES:
        raise unknown_name("engine", engine, ENGINES)
    if engine == "ray":
        from ..distributed.ray_embed import RayOptions, embed_images_ray

        if threads is not None:
            raise InvalidArgumentError("--threads applies to --engine local; with --engine ray use --cpus-per-worker")
        result = embed_images_ray(data, encoder, out, weights=weights, image_size=image_size, batch_size=batch_size,
                                  dtype=dtype, device=device, resume=resume, overwrite=overwrite, strict=strict,
                                  shard_rows=shard_rows, pretrained=pretrained, allow_download=allow_download,
                                  options=RayOptions(address, workers, gpus_per_worker, cpus_per_worker))
    else:
        from ..embed import embed_images

        result = embed_images(data, encoder, out, weights=weights, image_size=image_size, batch_size=batch_size,
                              workers=workers, dtype=dtype, device=device, resume=resume, overwrite=overwrite,
                              strict=strict, shard_rows=shard_rows, threads=threads, pretrained=pretrained,
                              allow_download=allow_download)
    if as_json:
        print_json(result.to_dict())
        return
    for skipped in result.skipped[:10]:
        info(f"skipped {skipped.path}: {skipped.reason}")
    if len(result.skipped) > 10:
        info(f"... and {len(result.skipped) - 10} more (all listed in the manifest.json of {result.directory})")
    typer.echo(result.summary())
    typer.echo(f"store {result.directory}: {result.rows} rows, dim {result.dim}, "
               f"{result.encoder.get('spec')} ({result.encoder.get('id')}), {result.images_per_second:.1f} images/s")


def register(app: typer.Typer, index_app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("embed", help=HELP)(embed_command)
