"""One call from images to dedup results: embed DATA into DUPS/embeddings, then deduplicate that store."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .options import DedupOptions
from .outputs import prepare_dedup_dir
from .result import DedupResult
from .run import run_dedup

EMBEDDINGS_DIR = "embeddings"


def deduplicate_images(data: str | os.PathLike[str], encoder: str, out: str | os.PathLike[str], *,
                       weights: str | os.PathLike[str] | None = None, image_size: int | None = None,
                       batch_size: int = 64, workers: int | None = None, device: str = "auto",
                       overwrite: bool = False, progress: bool | None = None, pretrained: bool = False,
                       allow_download: bool = False, **dedup_options: Any) -> DedupResult:
    """Embed the images of ``data`` into ``out/embeddings`` and deduplicate them into ``out``.

    Args:
        data: a folder, a .txt/.csv/.parquet list of paths (as ``sslsearch embed`` takes).
        encoder: ``timm:<model-name>`` or a ``sslsearch train`` run directory.
        out: the output directory (refused if it holds files, unless ``overwrite``).
        weights, image_size, batch_size, workers, pretrained, allow_download: as for ``embed_images``.
        device: for embedding, the graph and calibration.
        overwrite: replace earlier results (the embeddings too).
        progress: progress bars on stderr.
        **dedup_options: the other keyword arguments of ``deduplicate`` (threshold, precision, keep, report, ...).

    Returns:
        The ``DedupResult``; the store stays in ``out/embeddings`` for later ``--against`` runs or indexing.

    Raises:
        The errors of ``embed_images`` and ``deduplicate``; the arguments are checked before any embedding.

    Example:
        >>> deduplicate_images("photos/", "timm:resnet50", "dups/", report=True)  # doctest: +SKIP
    """
    from ..embed import embed_images

    options = DedupOptions(device=device, overwrite=overwrite, progress=progress, **dedup_options)  # checked now
    directory = prepare_dedup_dir(out, overwrite=overwrite)
    store = Path(directory) / EMBEDDINGS_DIR
    embed_images(data, encoder, store, weights=weights, image_size=image_size, batch_size=batch_size, workers=workers,
                 device=device, overwrite=overwrite, progress=progress, pretrained=pretrained,
                 allow_download=allow_download)
    return run_dedup(store, directory, options, allowed_in_out=(EMBEDDINGS_DIR,))
