"""Dataset deduplication: exact and near-duplicate clusters, calibrated thresholds, keep/remove lists, HTML report.

Modules: graph (k-NN graph → similar pairs, chunked), clusters (union-find, keep policy), exact
(file and pixel hashes), edits (the edits copies differ by), density (the density-adjusted score),
calibrate (self-calibrated threshold), result (typed results), outputs (files in DUPS/), report
(HTML), options (``DedupOptions``), rows (the store in memory), graph_cache (one graph, cut per
floor), summary (``DedupSummary``, summary.json), run (``deduplicate``: the steps in order), against
(new images vs an existing index, via index.load_index), convenience (embed then deduplicate).
"""
from __future__ import annotations

from .calibrate import DEFAULT_PRECISION, Calibration, calibrate_threshold, choose_threshold, precision_recall
from .clusters import DEFAULT_KEEP, KEEP_POLICIES, ImageFacts, UnionFind, choose_keeper, connected_groups
from .density import SCORES, DensityAdjustment
from .graph import GRAPH_METHODS, SimilarPairs, similar_pairs
from .options import DedupOptions
from .report import write_report
from .result import ClusterMember, DedupResult, DuplicateCluster, ThresholdChoice
from .run import deduplicate
from .summary import DedupSummary

__all__ = [
    "DEFAULT_KEEP", "DEFAULT_PRECISION", "GRAPH_METHODS", "KEEP_POLICIES", "SCORES", "Calibration",
    "ClusterMember", "DedupOptions", "DedupResult", "DedupSummary", "DensityAdjustment", "DuplicateCluster",
    "ImageFacts", "SimilarPairs", "ThresholdChoice", "UnionFind",
    "calibrate_threshold", "choose_keeper", "choose_threshold", "connected_groups", "deduplicate",
    "precision_recall", "similar_pairs", "write_report",
]
