"""``DedupOptions``: the checked settings of one dedup run (threshold or precision, keep policy, graph, score)."""
from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..edits import resolve_edits
from ..errors import InvalidArgumentError
from ..index.spec import parse_memory
from .calibrate import DEFAULT_PRECISION, DEFAULT_SAMPLE_SIZE, check_precision
from .clusters import DEFAULT_KEEP, check_keep_policy
from .density import resolve_score
from .graph import DEFAULT_NEIGHBORS
from .graph_cache import check_graph_method

DEFAULT_REPORT_CLUSTERS = 500  # clusters shown in report.html (largest first); all are in clusters.parquet


def check_threshold(threshold: float) -> float:
    """Return ``threshold`` if in (0, 1], else raise InvalidArgumentError."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0 \
            or math.isnan(threshold):
        raise InvalidArgumentError(f"--threshold must be a cosine similarity in (0, 1], got {threshold!r}; e.g. 0.9 "
                                   "(or leave it out to calibrate one with --precision)")
    return float(threshold)


def _check_count(flag: str, value: int, default: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidArgumentError(f"{flag} must be an integer >= 1, got {value!r}; e.g. {default} (the default)")
    return int(value)


@dataclass(frozen=True)
class DedupOptions:
    """What ``deduplicate`` was asked to do, checked when made (see ``deduplicate`` for each argument).

    Raises (when constructed):
        InvalidArgumentError: a threshold outside (0, 1], a precision outside (0, 1), neighbors or
            report_max_clusters below 1, ``score="adjusted"``/``"verified"`` with ``against``.
        UnknownNameError: an unknown keep policy, score, edit or graph method.
        InvalidArgumentError: an unreadable memory budget.

    Example:
        >>> DedupOptions(threshold=0.95).score_for(images=1000)
        'cosine'
    """

    threshold: float | None = None  # a fixed score in (0, 1]; None calibrates one for ``precision``
    precision: float = DEFAULT_PRECISION  # target precision of the calibrated threshold, in (0, 1)
    keep: str = DEFAULT_KEEP  # keep policy (clusters.KEEP_POLICIES)
    neighbors: int = DEFAULT_NEIGHBORS  # k of the k-NN graph
    method: str = "auto"  # k-NN graph: auto, exact, partitioned, ivf or join (graph_cache.DEDUP_GRAPH_METHODS)
    device: str = "auto"  # auto, cpu or cuda: the graph and the calibration encoder
    sample_size: int = DEFAULT_SAMPLE_SIZE  # edited copies made to calibrate
    seed: int = 0  # calibration sample, edits and the partitioned graph's k-means
    against: str | os.PathLike[str] | None = None  # an index directory new images are matched against
    score: str = "auto"  # what the threshold compares, as asked (density.SCORES); see score_for
    edits: str | Sequence[str] = "full"  # calibration copies' edits for the verified score (edits.EDIT_PRESETS)
    report: bool = False  # also write report.html
    report_max_clusters: int = DEFAULT_REPORT_CLUSTERS  # clusters shown in the report
    overwrite: bool = False  # replace earlier results in the output directory
    progress: bool | None = None  # progress bars on stderr (None: when stderr is a terminal)
    memory_budget: str | int | None = None  # e.g. "4GB": auto picks an index graph when the in-memory one needs more
    edit_names: tuple[str, ...] = field(init=False)  # ``edits`` resolved to edit names
    memory_budget_bytes: int | None = field(init=False)  # ``memory_budget`` in bytes

    def __post_init__(self) -> None:
        if self.threshold is not None:
            object.__setattr__(self, "threshold", check_threshold(self.threshold))
        else:
            check_precision(self.precision)
        check_keep_policy(self.keep)
        resolve_score(self.score, threshold_given=self.threshold is not None, against=self.against is not None)
        object.__setattr__(self, "edit_names", resolve_edits(self.edits))
        check_graph_method(self.method)
        _check_count("--neighbors", self.neighbors, DEFAULT_NEIGHBORS)
        _check_count("report_max_clusters", self.report_max_clusters, DEFAULT_REPORT_CLUSTERS)
        object.__setattr__(self, "memory_budget_bytes",
                           None if self.memory_budget is None else parse_memory(self.memory_budget))

    @property
    def needs_all_vectors(self) -> bool:
        """True when the run reads every vector whatever the graph: calibration, ``against``, or a score other
        than cosine (``score`` as asked; ``auto`` with a given threshold and no ``against`` is cosine)."""
        return self.calibrating or self.against is not None or self.score not in ("auto", "cosine")

    @property
    def calibrating(self) -> bool:
        """True when the threshold is calibrated (no fixed threshold given)."""
        return self.threshold is None

    def score_for(self, images: int) -> str:
        """The score the threshold compares for a store of ``images`` images (``auto`` resolved)."""
        return resolve_score(self.score, threshold_given=self.threshold is not None, against=self.against is not None,
                             images=images)
