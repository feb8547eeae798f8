"""What a dedup run found: typed clusters and the run result (counts, threshold, timings, output files)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .calibrate import Calibration
from .density import DensityAdjustment

OUTPUT_FILES: tuple[str, ...] = ("clusters.parquet", "keep.txt", "remove.txt", "summary.json", "report.html")


@dataclass(frozen=True)
class ClusterMember:
    """One image of a duplicate cluster.

    Attributes:
        id: store id (or index id when ``source == "index"``).
        path: path relative to the store's source root ("" when unknown).
        similarity: cosine similarity to the cluster's keeper (1.0 for the keeper; NaN when unknown).
        keep: true for the keeper (and for images of the index in ``--against`` mode).
        match: "keeper", "file" (same bytes), "pixels" (same decoded pixels) or "near".
        width, height: image size in pixels (-1 when unknown).
        size_bytes: file size (-1 when the file is gone).
        source: "store" (the deduplicated store) or "index" (an item of the ``--against`` index).
    """

    id: int
    path: str
    similarity: float
    keep: bool
    match: str
    width: int = -1
    height: int = -1
    size_bytes: int = -1
    source: str = "store"


@dataclass(frozen=True)
class DuplicateCluster:
    """A set of images that duplicate each other; the keeper comes first, then by similarity.

    Attributes:
        cluster_id: 0 for the largest cluster, then by size (ties: smallest id).
        members: the images, keeper first, then by decreasing similarity to it.
    """

    cluster_id: int
    members: tuple[ClusterMember, ...]

    @property
    def keeper(self) -> ClusterMember:
        return self.members[0]

    @property
    def removed(self) -> tuple[ClusterMember, ...]:
        """Members to delete: every store image but the keeper."""
        return tuple(m for m in self.members if not m.keep and m.source == "store")

    def __len__(self) -> int:
        return len(self.members)


@dataclass(frozen=True)
class ThresholdChoice:
    """The threshold used, what it compares and how it was chosen.

    Attributes:
        value: the score at or above which images are duplicates (None when not needed).
        method: "given" (--threshold), "calibrated" (--precision) or "not needed" (fewer than 2 images).
        calibration: the calibration details when ``method == "calibrated"``.
        score: "cosine" (similarity), "adjusted" (cosine less the neighbourhood density, ``density.py``) or
            "verified" (pixel verification of candidate pairs, ``verify.py``).
        density: the adjustment's parameters when ``score == "adjusted"``.
    """

    value: float | None
    method: str
    calibration: Calibration | None = None
    score: str = "cosine"
    density: DensityAdjustment | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"value": None if self.value is None else round(self.value, 6), "method": self.method,
                "score": self.score, "density": self.density.to_dict() if self.density is not None else None,
                "calibration": self.calibration.to_dict() if self.calibration else None}

    def describe(self) -> str:
        if self.value is None:
            return "threshold not needed"
        name = {"adjusted": "adjusted-score threshold", "verified": "verified-score threshold"}.get(self.score, "threshold")
        if self.calibration is None:
            return f"{name} {self.value:.4f} (given)"
        c = self.calibration
        verdict = "" if c.reached else f", target {c.target_precision:g} NOT reached"
        scope = " of the store's pairs" if c.method == "store" else " of copy matches"
        return (f"{name} {self.value:.4f} calibrated for precision {c.target_precision:g} on {c.copies} edited copies "
                f"of {c.images} images: estimated precision{scope} {c.estimated_precision:.3f}, recall "
                f"{c.estimated_recall:.3f}{verdict}")


@dataclass(frozen=True)
class DedupResult:
    """The outcome of ``deduplicate``.

    Attributes:
        out: the output directory.
        images: images in the store.
        clusters: the duplicate clusters, largest first.
        removed: store images listed in remove.txt.
        threshold: the threshold and how it was chosen.
        keep_policy: the keep policy name.
        summary: the content of summary.json.
        report: the HTML report written, or None.
    """

    out: Path
    images: int
    clusters: tuple[DuplicateCluster, ...]
    removed: int
    threshold: ThresholdChoice
    keep_policy: str
    summary: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None

    @property
    def kept(self) -> int:
        return self.images - self.removed

    def describe(self) -> str:
        """One line: counts, threshold and where the lists are."""
        return (f"{self.images} images: {len(self.clusters)} duplicate clusters, keep {self.kept}, remove "
                f"{self.removed}; {self.threshold.describe()}; lists in {self.out}")
