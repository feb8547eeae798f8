"""A `dedup` output directory read back for the web page: clusters with keep/remove, paged, and their images."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputNotFoundError, InvalidArgumentError, StoreError
from .catalog import resolve_under

MAX_PAGE = 200  # clusters per request


@dataclass(frozen=True)
class DuplicatesView:
    """The clusters of a dedup run (``clusters.parquet`` + ``summary.json``), largest first.

    Attributes:
        directory: the dedup output directory.
        summary: the content of ``summary.json``.
        clusters: one dict per cluster: ``{"cluster_id", "size", "members": [...]}``; members as
            the rows of ``clusters.parquet`` (id, path, similarity, keep, match, width, height, size_bytes, source).
        source_root: the folder the store members' paths are relative to.
        store_paths: store id → path of every store member of a cluster.
    """

    directory: Path
    summary: dict[str, Any]
    clusters: tuple[dict[str, Any], ...]
    source_root: Path | None
    store_paths: dict[int, str]

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> "DuplicatesView":
        """Read a dedup output directory.

        Raises:
            InputNotFoundError: the directory or its ``clusters.parquet`` / ``summary.json`` is missing.
            StoreError: those files cannot be read.
        """
        import pyarrow.parquet as pq

        directory = Path(directory)
        clusters_file, summary_file = directory / "clusters.parquet", directory / "summary.json"
        for path in (clusters_file, summary_file):
            if not path.is_file():
                raise InputNotFoundError(f"{directory} is not a dedup output directory: no {path.name}; create one with "
                                         "`sslsearch dedup EMB --out DUPS`")
        try:
            summary = json.loads(summary_file.read_text())
            rows = pq.read_table(clusters_file).to_pylist()
        except (OSError, ValueError) as error:  # pyarrow's errors are ValueError / OSError subclasses
            raise StoreError(f"cannot read the dedup results in {directory} ({error}); run `sslsearch dedup` again"
                             ) from None
        grouped: dict[int, list[dict[str, Any]]] = {}
        for row in rows:
            similarity = row.get("similarity")
            row["similarity"] = None if similarity is None or similarity != similarity else round(float(similarity), 5)
            grouped.setdefault(int(row["cluster_id"]), []).append(row)
        clusters = tuple({"cluster_id": cid, "size": len(members), "members": members}
                         for cid, members in sorted(grouped.items(), key=lambda item: (-len(item[1]), item[0])))
        root = summary.get("source_root") if isinstance(summary, dict) else None
        paths = {int(r["id"]): r["path"] for r in rows if r.get("source", "store") == "store" and r.get("path")}
        return cls(directory, summary if isinstance(summary, dict) else {}, clusters, Path(root) if root else None, paths)

    def page(self, offset: int = 0, limit: int = 25) -> dict[str, Any]:
        """Clusters ``offset .. offset + limit`` with the run's counts, JSON-ready.

        Raises:
            InvalidArgumentError: a negative offset, or limit outside 1..MAX_PAGE.
        """
        if offset < 0 or not 1 <= limit <= MAX_PAGE:
            raise InvalidArgumentError(f"offset must be >= 0 and limit 1..{MAX_PAGE}, got offset={offset}, "
                                       f"limit={limit}")
        counts = {key: self.summary.get(key) for key in ("images", "clusters", "kept", "removed", "threshold")}
        return {"directory": str(self.directory), "total": len(self.clusters), "offset": offset, "limit": limit,
                "summary": counts, "clusters": list(self.clusters[offset:offset + limit])}

    def image_file(self, image_id: int) -> Path:
        """The file of store image ``image_id`` named in the clusters (paths come from clusters.parquet).

        Raises:
            InputNotFoundError: the id is in no cluster, is an ``--against`` index item, or the file is gone.
        """
        if image_id not in self.store_paths:
            raise InputNotFoundError(f"image id {image_id} is in no duplicate cluster of {self.directory}")
        if self.source_root is None:
            raise InputNotFoundError("the dedup summary records no source root; images are not served")
        return resolve_under(self.source_root, self.store_paths[image_id], f"image id {image_id}")
