"""Dedup outputs in DUPS/: clusters.parquet, keep.txt, remove.txt and summary.json, each written atomically."""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import OutputExistsError
from ..files import LOCK_NAME, atomic_path, atomic_write_json, atomic_write_text
from .result import OUTPUT_FILES, DuplicateCluster

CLUSTERS_SCHEMA = pa.schema([
    pa.field("cluster_id", pa.int64(), nullable=False),
    pa.field("id", pa.int64(), nullable=False),
    pa.field("path", pa.string()),
    pa.field("similarity", pa.float32()),  # cosine similarity to the cluster's keeper
    pa.field("keep", pa.bool_()),
    pa.field("match", pa.string()),  # keeper | file | pixels | near
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("size_bytes", pa.int64()),
    pa.field("source", pa.string()),  # store | index (--against)
])


def prepare_dedup_dir(out: str | os.PathLike[str], *, overwrite: bool, allowed: Sequence[str] = ()) -> Path:
    """Create ``out``, or refuse one that exists unless ``overwrite``; stale outputs of ours are removed.

    Only the files dedup writes are ever deleted (and the ivf graph's temporary ``.graph-index-*`` folders an
    interrupted run left); with ``overwrite`` other files stay where they are.

    Raises:
        OutputExistsError: ``out`` exists (and is not empty) without ``overwrite``, or is a file.
    """
    directory = Path(out)
    if directory.exists() and not directory.is_dir():
        raise OutputExistsError(f"output {directory} is a file, expected a directory; choose another --out")
    if directory.exists() and not overwrite:
        present = sorted(p.name for p in directory.iterdir() if p.name not in allowed and p.name != LOCK_NAME)
        if present:
            raise OutputExistsError(f"output directory {directory} already exists and holds {len(present)} file(s) "
                                    f"(e.g. {present[0]!r}); pass --overwrite to replace the dedup results, or "
                                    "choose a new --out")
    directory.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for name in OUTPUT_FILES:
            (directory / name).unlink(missing_ok=True)
        for stale in directory.glob(".graph-index-*"):  # the ivf graph's index left by an interrupted run
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
    return directory


def write_clusters(path: Path, clusters: Iterable[DuplicateCluster]) -> int:
    """Write one row per cluster member (schema ``CLUSTERS_SCHEMA``); returns the row count."""
    columns: dict[str, list[Any]] = {name: [] for name in CLUSTERS_SCHEMA.names}
    for cluster in clusters:
        for member in cluster.members:
            columns["cluster_id"].append(cluster.cluster_id)
            columns["id"].append(member.id)
            columns["path"].append(member.path)
            columns["similarity"].append(member.similarity)
            columns["keep"].append(member.keep)
            columns["match"].append(member.match)
            columns["width"].append(member.width)
            columns["height"].append(member.height)
            columns["size_bytes"].append(member.size_bytes)
            columns["source"].append(member.source)
    table = pa.Table.from_pydict(columns, schema=CLUSTERS_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return table.num_rows


def write_list(path: Path, lines: Iterable[str]) -> None:
    """One path per line (UTF-8, trailing newline when not empty)."""
    text = "\n".join(lines)
    atomic_write_text(path, text + "\n" if text else "")


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    atomic_write_json(path, summary)
