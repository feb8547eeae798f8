"""``DedupSummary``: what a dedup run found and how, written to DUPS/summary.json."""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .clusters import KEEP_POLICIES
from .graph import SimilarPairs
from .outputs import write_summary
from .result import DuplicateCluster, ThresholdChoice

if TYPE_CHECKING:
    from .against import IndexMatches
    from .rows import StoreRows


@dataclass(frozen=True)
class GraphSummary:
    """The candidate pairs: which graph made them, how many, how many reached the threshold."""

    method: str
    neighbors: int
    device: str
    cells: int
    candidate_pairs: int
    pairs_at_threshold: int
    seconds: float

    @classmethod
    def of(cls, pairs: SimilarPairs, near: SimilarPairs) -> "GraphSummary":
        return cls(pairs.method, pairs.neighbors, pairs.device, pairs.cells, len(pairs), len(near),
                   round(pairs.seconds, 3))


@dataclass(frozen=True)
class AgainstSummary:
    """With ``--against``: the index searched and what matched it."""

    index: str
    ntotal: int
    new_images_duplicating_index: int
    index_items_matched: int


@dataclass(frozen=True)
class DedupSummary:
    """The content of summary.json (``to_dict`` gives its keys, in file order).

    Attributes:
        store, source_root: the store directory (resolved) and its images' root.
        encoder_spec, encoder_id: the store's encoder.
        images, skipped_when_embedded: rows in the store; files skipped when it was embedded.
        clusters, images_in_clusters, largest_cluster: cluster counts.
        kept, removed: store images in keep.txt / remove.txt.
        removed_by_match: removed images by how they matched their keeper (file, pixels, near).
        threshold: the threshold and how it was chosen.
        keep_policy: the keep policy name.
        graph: the candidate pairs.
        against: the ``--against`` index, or None.
        seconds: wall time per step, and "total".
        report: the report file name, or None.
        sslsearch_version, created: the tool version and the local time written.
    """

    store: str
    source_root: str
    encoder_spec: str | None
    encoder_id: str | None
    images: int
    skipped_when_embedded: int
    clusters: int
    images_in_clusters: int
    largest_cluster: int
    kept: int
    removed: int
    removed_by_match: dict[str, int]
    threshold: ThresholdChoice
    keep_policy: str
    graph: GraphSummary
    against: AgainstSummary | None
    seconds: dict[str, float]
    report: str | None
    sslsearch_version: str
    created: str

    @classmethod
    def of(cls, rows: "StoreRows", clusters: Sequence[DuplicateCluster], removed: int, choice: ThresholdChoice,
           keep: str, pairs: SimilarPairs, near: SimilarPairs, timings: dict[str, float], report_path: Path | None,
           matches: "IndexMatches | None" = None) -> "DedupSummary":
        """Summarise a finished run (``timings`` in seconds per step)."""
        from .. import __version__

        by_match = {"file": 0, "pixels": 0, "near": 0}
        for cluster in clusters:
            for member in cluster.removed:
                by_match[member.match] = by_match.get(member.match, 0) + 1
        n = len(rows.ids)
        against = None if matches is None else AgainstSummary(
            str(matches.index_dir.resolve()), matches.ntotal, matches.matched_rows, len(matches.ids))
        return cls(
            store=rows.store.uri, source_root=str(rows.store.source_root),
            encoder_spec=rows.store.encoder.get("spec"), encoder_id=rows.store.encoder.get("id"), images=n,
            skipped_when_embedded=len(rows.store.manifest.skipped), clusters=len(clusters),
            images_in_clusters=sum(len(c) for c in clusters), largest_cluster=max((len(c) for c in clusters), default=0),
            kept=n - removed, removed=removed, removed_by_match=by_match, threshold=choice, keep_policy=keep,
            graph=GraphSummary.of(pairs, near), against=against,
            seconds={name: round(value, 3) for name, value in timings.items()},
            report=report_path.name if report_path else None, sslsearch_version=__version__,
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of summary.json."""
        graph, against = self.graph, self.against
        return {
            "store": self.store,
            "source_root": self.source_root,
            "encoder": {"spec": self.encoder_spec, "id": self.encoder_id},
            "images": self.images,
            "skipped_when_embedded": self.skipped_when_embedded,
            "clusters": self.clusters,
            "images_in_clusters": self.images_in_clusters,
            "largest_cluster": self.largest_cluster,
            "kept": self.kept,
            "removed": self.removed,
            "removed_by_match": dict(self.removed_by_match),
            "threshold": self.threshold.to_dict(),
            "keep_policy": {"name": self.keep_policy, "rule": KEEP_POLICIES[self.keep_policy]},
            "graph": {"method": graph.method, "neighbors": graph.neighbors, "device": graph.device,
                      "cells": graph.cells, "candidate_pairs": graph.candidate_pairs,
                      "pairs_at_threshold": graph.pairs_at_threshold, "seconds": graph.seconds},
            "against": None if against is None else {
                "index": against.index, "ntotal": against.ntotal,
                "new_images_duplicating_index": against.new_images_duplicating_index,
                "index_items_matched": against.index_items_matched},
            "seconds": dict(self.seconds),
            "outputs": {"clusters": "clusters.parquet", "keep": "keep.txt", "remove": "remove.txt",
                        "report": self.report},
            "sslsearch_version": self.sslsearch_version,
            "created": self.created,
        }

    def write(self, path: Path) -> None:
        """Write summary.json atomically."""
        write_summary(path, self.to_dict())
