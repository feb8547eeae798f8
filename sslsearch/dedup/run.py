"""``deduplicate``: store → threshold → k-NN graph + exact hashes → clusters → keep/remove lists, summary, report."""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..encoders import Encoder
from ..errors import EncoderMismatchError, InvalidArgumentError, StoreError
from ..files import DirectoryLock
from ..store import EmbeddingStore
from .calibrate import (DEFAULT_PRECISION, DEFAULT_SAMPLE_SIZE, EditedCopies, calibrate_threshold, check_precision,
                        make_edited_copies)
from .clusters import DEFAULT_KEEP, KEEP_POLICIES, ImageFacts, check_keep_policy, choose_keeper, connected_groups
from .density import DENSITY_RANK, DensityAdjustment, resolve_score
from .edits import resolve_edits
from .exact import EXACT_CANDIDATE_SIMILARITY, ContentHasher, chain_pairs, file_size, hash_groups, identical_pairs, match_kind
from .graph import DEFAULT_NEIGHBORS, SimilarPairs, resolve_method, similar_pairs
from .verified import CANDIDATE_COSINE, calibrate_verified, verified_pairs
from .outputs import prepare_dedup_dir, write_clusters, write_list, write_summary
from .result import ClusterMember, DedupResult, DuplicateCluster, ThresholdChoice

DEFAULT_REPORT_CLUSTERS = 500  # clusters shown in report.html (largest first); all are in clusters.parquet
# With the adjusted score the first graph keeps pairs down to this cosine (its backgrounds are needed before the
# threshold is known); a threshold that needs lower pairs rebuilds it lower.
ADJUSTED_GRAPH_FLOOR = 0.5


def check_threshold(threshold: float) -> float:
    """Return ``threshold`` if in (0, 1], else raise InvalidArgumentError."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0 \
            or math.isnan(threshold):
        raise InvalidArgumentError(f"--threshold must be a cosine similarity in (0, 1], got {threshold!r}; e.g. 0.9 "
                                   "(or leave it out to calibrate one with --precision)")
    return float(threshold)


@dataclass(frozen=True)
class _StoreRows:
    """The store read into memory, row-aligned."""

    store: EmbeddingStore
    ids: np.ndarray  # (n,) int64
    vectors: np.ndarray  # (n, d) float32, L2-normalised
    paths: list[str]  # relative to the source root
    width: np.ndarray | None
    height: np.ndarray | None
    sha256: list[str | None] | None

    def absolute(self, row: int) -> Path:
        return self.store.source_root / self.paths[row]

    def all_absolute(self) -> list[Path]:
        return [self.store.source_root / path for path in self.paths]


def _read_store(embeddings: str | os.PathLike[str]) -> _StoreRows:
    store = EmbeddingStore.open(embeddings)
    if len(store) == 0:
        skipped = len(store.manifest.skipped)
        detail = f" ({skipped} file(s) were skipped as unreadable when it was embedded)" if skipped else ""
        raise StoreError(f"embedding store {store.directory} holds no images{detail}; nothing to deduplicate — embed "
                         "a folder with images first")
    if not store.encoder.get("id"):
        raise StoreError(f"embedding store {store.directory} records no encoder fingerprint; re-create it with "
                         "`sslsearch embed`")
    optional = [c for c in ("width", "height", "sha256") if c in store.manifest.columns]
    table = store.read_all(("id", "embedding", "path", *optional))
    vectors = np.ascontiguousarray(table.embeddings, dtype=np.float32)
    if not store.manifest.normalized:
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    columns = table.columns
    return _StoreRows(store=store, ids=table.ids, vectors=vectors, paths=list(columns["path"]),
                      width=np.asarray(columns["width"]) if "width" in columns else None,
                      height=np.asarray(columns["height"]) if "height" in columns else None,
                      sha256=list(columns["sha256"]) if "sha256" in columns else None)


def _store_encoder(rows: _StoreRows, device: str) -> Encoder:
    from ..encoders import encoder_from_fingerprint

    fingerprint = rows.store.encoder
    try:
        encoder = encoder_from_fingerprint(fingerprint, device=device)
    except EncoderMismatchError as error:
        reason = str(error).split(";")[0]
        raise EncoderMismatchError(f"cannot calibrate the threshold: the encoder {fingerprint.get('spec', '?')} that made "
                                   f"store {rows.store.directory} cannot be rebuilt here ({reason}); pass a fixed "
                                   "--threshold T (e.g. 0.9)") from None
    return encoder


def _calibrate(rows: _StoreRows, encoder: Encoder, precision: float, sample_size: int, seed: int,
               progress: bool | None, store_pairs: Callable[[float], np.ndarray] | None = None,
               density: DensityAdjustment | None = None, copies: EditedCopies | None = None) -> ThresholdChoice:
    calibration = calibrate_threshold(rows.vectors, rows.all_absolute(), encoder, precision=precision,
                                      sample_size=sample_size, file_sha256=rows.sha256, seed=seed,
                                      store_pairs=store_pairs, density=density, copies=copies, progress=progress)
    return ThresholdChoice(calibration.threshold, "calibrated", calibration, calibration.score, density)


def _image_facts(rows: _StoreRows, row: int) -> ImageFacts:
    size_bytes, mtime = file_size(rows.absolute(row))
    if rows.width is not None and rows.height is not None:
        width, height = int(rows.width[row]), int(rows.height[row])
    else:
        width, height = _header_size(rows.absolute(row))
    return ImageFacts(id=int(rows.ids[row]), width=width, height=height, size_bytes=size_bytes, mtime=mtime)


def _header_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return -1, -1


def _build_clusters(rows: _StoreRows, groups: Sequence[np.ndarray], keep: str, hasher: ContentHasher,
                    matches: Any = None) -> list[DuplicateCluster]:
    n = len(rows.ids)
    best = matches.best_score() if matches is not None else None
    edges = matches.edge_scores() if matches is not None else {}
    clusters = []
    for cluster_id, group in enumerate(groups):
        store_rows = group[group < n]
        index_nodes = (group[group >= n] - n).tolist()
        if index_nodes:  # the index already holds this picture: its best-matching item is kept
            keeper_node = max(index_nodes, key=lambda node: (best[node], -int(matches.ids[node])))
            members = _index_cluster_members(rows, store_rows, index_nodes, keeper_node, matches, edges)
        else:
            members = _store_cluster_members(rows, store_rows, keep, hasher)
        members.sort(key=lambda m: (m.match != "keeper", m.source != "index", -_sortable(m.similarity), m.id))
        clusters.append(DuplicateCluster(cluster_id, tuple(members)))
    clusters.sort(key=lambda c: (-len(c), c.members[0].source != "store", c.members[0].id))
    return [DuplicateCluster(number, c.members) for number, c in enumerate(clusters)]


def _sortable(value: float) -> float:
    return -2.0 if value != value else value  # NaN sorts last


def _store_cluster_members(rows: _StoreRows, group: np.ndarray, keep: str, hasher: ContentHasher) -> list[ClusterMember]:
    facts = {int(row): _image_facts(rows, int(row)) for row in group}
    keeper_id = choose_keeper(list(facts.values()), keep)
    keeper_row = next(row for row, f in facts.items() if f.id == keeper_id)
    similarities = rows.vectors[group] @ rows.vectors[keeper_row]
    members = []
    for row, similarity in zip(group.tolist(), similarities.tolist()):
        f = facts[row]
        members.append(ClusterMember(id=f.id, path=rows.paths[row], similarity=float(min(similarity, 1.0)),
                                     keep=row == keeper_row, match=match_kind(row, keeper_row, hasher, similarity),
                                     width=f.width, height=f.height, size_bytes=f.size_bytes))
    return members


def _index_cluster_members(rows: _StoreRows, store_rows: np.ndarray, index_nodes: list[int], keeper_node: int,
                           matches: Any, edges: dict[tuple[int, int], float]) -> list[ClusterMember]:
    keeper_vector = matches.vectors[keeper_node] if matches.vectors is not None else None
    members = []
    for node in index_nodes:
        if node == keeper_node:
            similarity = 1.0
        elif matches.vectors is not None:
            similarity = float(min(matches.vectors[node] @ keeper_vector, 1.0))
        else:
            similarity = float("nan")
        path = matches.paths[node]
        width = height = size_bytes = -1
        if path and matches.source_root is not None:
            size_bytes = file_size(matches.source_root / path)[0]
            width, height = _header_size(matches.source_root / path)
        members.append(ClusterMember(id=int(matches.ids[node]), path=path, similarity=similarity, keep=True,
                                     match="keeper" if node == keeper_node else "near", width=width, height=height,
                                     size_bytes=size_bytes, source="index"))
    for row in store_rows.tolist():
        if keeper_vector is not None:
            similarity = float(min(rows.vectors[row] @ keeper_vector, 1.0))
        else:
            similarity = edges.get((row, keeper_node), float("nan"))
        f = _image_facts(rows, row)
        members.append(ClusterMember(id=f.id, path=rows.paths[row], similarity=similarity, keep=False, match="near",
                                     width=f.width, height=f.height, size_bytes=f.size_bytes, source="store"))
    return members


def deduplicate(embeddings: str | os.PathLike[str], out: str | os.PathLike[str], *, threshold: float | None = None,
                precision: float = DEFAULT_PRECISION, keep: str = DEFAULT_KEEP, neighbors: int = DEFAULT_NEIGHBORS,
                method: str = "auto", device: str = "auto", sample_size: int = DEFAULT_SAMPLE_SIZE, seed: int = 0,
                against: str | os.PathLike[str] | None = None, score: str = "auto", edits: str = "full",
                report: bool = False,
                report_max_clusters: int = DEFAULT_REPORT_CLUSTERS, overwrite: bool = False,
                progress: bool | None = None, _allowed_in_out: Sequence[str] = ()) -> DedupResult:
    """Find exact and near-duplicate images in an embedding store and say which to keep.

    Near duplicates come from the k-NN graph of the store (never an N×N matrix; see
    ``graph.similar_pairs``) cut at a threshold on the pairs' score — by default, with a
    calibrated threshold, their density-adjusted similarity (``density.py``: the cosine less how
    alike the two images' neighbourhoods are); with a given threshold their cosine similarity.
    Exact duplicates come from the
    store's file sha256 and, for pairs similar enough to be candidates, the decoded pixels.
    Union-find joins them into clusters; the keep policy picks one image per cluster.

    Writes to ``out``: ``clusters.parquet`` (cluster_id, id, path, similarity to the keeper,
    keep, match, width, height, size_bytes, source), ``keep.txt`` and ``remove.txt`` (absolute
    paths, one per line, in id order), ``summary.json``, and with ``report`` ``report.html``.

    Args:
        embeddings: an embedding store directory (``sslsearch embed``).
        out: the output directory; refused if it exists and is not empty, unless ``overwrite``.
        threshold: a fixed score in (0, 1] (cosine similarity unless ``score="adjusted"``); None
            calibrates one for ``precision``.
        precision: target precision in (0, 1) of the self-calibration (see ``calibrate.py``).
        keep: keep policy, one of ``KEEP_POLICIES`` (default: largest resolution, then larger
            file, then smallest id).
        neighbors: k of the k-NN graph.
        method: "auto", "exact" or "partitioned" k-NN graph.
        device: "auto", "cpu" or "cuda" for the graph and the calibration encoder.
        sample_size: edited copies made for calibration.
        seed: seed of the calibration sample and the partitioned graph's k-means.
        against: an existing index directory: new images that duplicate an item of the index are
            listed for removal (the index item is the keeper, ``source="index"``); the index is
            only searched, never changed. New images are also deduplicated among themselves.
        score: "auto" (verified when calibrating without ``against``, adjusted above
            ``VERIFY_MAX_IMAGES`` images; cosine with a given threshold or ``against``), "cosine",
            "adjusted" or "verified": what the threshold compares (``verify.py`` for the last).
        edits: the calibration copies' edits for the verified score: a preset of ``edits.EDIT_PRESETS``
            ("full", "classic") or comma-separated edit names.
        report: also write the self-contained HTML report.
        report_max_clusters: clusters shown in the report (largest first).
        overwrite: replace earlier results in ``out``.
        progress: progress bars on stderr (default: when stderr is a terminal).

    Returns:
        A ``DedupResult``; ``result.describe()`` is a one-line report.

    Raises:
        InvalidArgumentError: threshold outside (0, 1], precision outside (0, 1), bad neighbors,
            ``score="adjusted"`` with ``against``.
        UnknownNameError: an unknown keep policy, graph method or score.
        InputNotFoundError, StoreError: a missing or empty store.
        OutputExistsError: ``out`` holds files and ``overwrite`` is false.
        EncoderMismatchError: calibration cannot rebuild the store's encoder, or ``against`` was
            built with another encoder.
        IndexFileError: ``against`` is not a readable index.

    Example:
        >>> result = deduplicate("emb/", "dups/", precision=0.99, report=True)  # doctest: +SKIP
        >>> print(result.describe())  # doctest: +SKIP
    """
    started = time.perf_counter()
    if threshold is not None:
        check_threshold(threshold)
    else:
        check_precision(precision)
    check_keep_policy(keep)
    score_asked = score
    score = resolve_score(score, threshold_given=threshold is not None, against=against is not None)
    edit_names = resolve_edits(edits)
    resolve_method(method, 0, "cpu")
    if neighbors < 1:
        raise InvalidArgumentError(f"--neighbors must be >= 1, got {neighbors}")
    if report_max_clusters < 1:
        raise InvalidArgumentError(f"report_max_clusters must be >= 1, got {report_max_clusters}")
    timings: dict[str, float] = {}

    rows = _read_store(embeddings)
    if score_asked == "auto":
        score = resolve_score(score_asked, threshold_given=threshold is not None, against=against is not None,
                              images=len(rows.ids))
    out = prepare_dedup_dir(out, overwrite=overwrite, allowed=_allowed_in_out)
    with DirectoryLock(out):
        timings["load"] = time.perf_counter() - started
        n = len(rows.ids)
        mark = time.perf_counter()
        graphs: list[SimilarPairs] = []

        def graph(floor: float) -> SimilarPairs:
            # One k-NN graph serves calibration (the store's pairs above its floor) and the clusters.
            if not graphs or graphs[0].min_similarity > floor:
                began = time.perf_counter()
                graphs[:] = [similar_pairs(rows.vectors, floor, neighbors=neighbors, method=method, device=device,
                                           seed=seed, record_neighbors=record, progress=progress)]
                timings["graph"] = timings.get("graph", 0.0) + time.perf_counter() - began
            return graphs[0].above(floor)

        density, record, copies, encoder = None, 0, None, None
        calibrating = threshold is None and n >= 2
        if calibrating and score != "verified":
            encoder = _store_encoder(rows, device)
        if score == "adjusted" and n >= 2:
            record = max(neighbors, DENSITY_RANK)
            sure = EXACT_CANDIDATE_SIMILARITY  # with a given threshold no copies say what a sure duplicate is
            if calibrating:  # the copies say what a sure duplicate is, which the backgrounds must leave out
                copies = make_edited_copies(rows.all_absolute(), encoder, sample_size=sample_size, seed=seed,
                                            progress=progress)
                sure = copies.sure_duplicate_similarity(rows.vectors)
            density = DensityAdjustment.from_neighbors(graph(ADJUSTED_GRAPH_FLOOR).neighbor_similarity,
                                                       exclude_from=sure)

        def cosine_floor(score_floor: float) -> float:
            floor = density.cosine_floor(score_floor) if density is not None else score_floor
            return min(floor, EXACT_CANDIDATE_SIMILARITY)

        def scored(found: SimilarPairs) -> np.ndarray:
            if density is None:
                return found.similarity
            return density.pair_scores(found.first, found.second, found.similarity)

        def store_scores(floor: float) -> np.ndarray:
            found = scored(graph(cosine_floor(floor)))
            return found[found >= floor]

        verified = None
        if score == "verified" and n >= 2:
            verified = verified_pairs(rows.vectors, rows.all_absolute(), neighbors=neighbors, method=method,
                                      device=device, seed=seed, progress=progress)
            timings["graph"] = verified.seconds
        if threshold is not None:
            choice = ThresholdChoice(float(threshold), "given", score=score, density=density)
        elif n < 2 and against is None:
            choice = ThresholdChoice(None, "not needed")
        elif n < 2:
            raise InvalidArgumentError(f"store {rows.store.directory} holds 1 image: too few to calibrate a threshold; "
                                       "pass --threshold T (e.g. the one in the summary.json of a full dedup run)")
        elif verified is not None:
            calibration = calibrate_verified(verified, rows.all_absolute(), precision=precision,
                                             sample_size=sample_size, edits=edit_names, seed=seed,
                                             file_sha256=rows.sha256, progress=progress)
            choice = ThresholdChoice(calibration.threshold, "calibrated", calibration, "verified")
        else:
            choice = _calibrate(rows, encoder, precision, sample_size, seed, progress, store_pairs=store_scores,
                                density=density, copies=copies)
        timings["calibration"] = time.perf_counter() - mark - timings.get("graph", 0.0)

        cut = choice.value if choice.value is not None else 1.0
        if verified is not None:  # the candidates and their verified scores replace the cosine graph
            pairs = SimilarPairs(verified.first, verified.second, verified.cosine, CANDIDATE_COSINE, neighbors,
                                 resolve_method(method, n, device), "cpu", verified.seconds)
            pair_scores = verified.score
        elif score == "verified":  # a single image: nothing to pair
            pairs = SimilarPairs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
                                 CANDIDATE_COSINE, neighbors, "exact", "cpu", 0.0)
            pair_scores = pairs.similarity
        else:
            pairs = graph(cosine_floor(cut))
            pair_scores = scored(pairs)

        mark = time.perf_counter()
        hasher = ContentHasher(rows.absolute, rows.sha256)
        near = pairs.where(pair_scores >= cut)
        firsts, seconds = [near.first], [near.second]
        if rows.sha256 is not None:
            file_first, file_second = chain_pairs(hash_groups(rows.sha256))
            firsts.append(file_first)
            seconds.append(file_second)
        # pairs below the threshold but cosine >= EXACT_CANDIDATE_SIMILARITY join only when their pixels are identical
        below = (pair_scores < cut) & (pairs.similarity >= EXACT_CANDIDATE_SIMILARITY)
        if below.any():
            same_first, same_second = identical_pairs(pairs.first[below], pairs.second[below], hasher)
            firsts.append(same_first)
            seconds.append(same_second)
        matches = None
        if against is not None:
            from .against import match_against_index

            mark_against = time.perf_counter()
            matches = match_against_index(against, rows.vectors, rows.store.encoder, cut, neighbors=neighbors,
                                          device=device)
            firsts.append(matches.rows)
            seconds.append(matches.nodes + n)
            timings["against"] = time.perf_counter() - mark_against
        n_nodes = n + (len(matches.ids) if matches is not None else 0)
        groups = connected_groups(n_nodes, np.concatenate(firsts), np.concatenate(seconds))
        clusters = _build_clusters(rows, groups, keep, hasher, matches)
        timings["clusters"] = time.perf_counter() - mark

        mark = time.perf_counter()
        removed_rows = _removed_rows(rows, clusters)
        write_clusters(out / "clusters.parquet", clusters)
        write_list(out / "keep.txt", (str(rows.absolute(r)) for r in range(n) if r not in removed_rows))
        write_list(out / "remove.txt", (str(rows.absolute(r)) for r in sorted(removed_rows)))
        timings["write"] = time.perf_counter() - mark

        report_path = None
        if report:
            from .report import write_report

            mark = time.perf_counter()
            roots = {"store": rows.store.source_root}
            if matches is not None and matches.source_root is not None:
                roots["index"] = matches.source_root
            report_path = write_report(out / "report.html", clusters, roots,
                                       max_clusters=report_max_clusters, title=f"Duplicates in {rows.store.directory}",
                                       subtitle=choice.describe())
            timings["report"] = time.perf_counter() - mark
        timings["total"] = time.perf_counter() - started
        summary = _summary(rows, clusters, len(removed_rows), choice, keep, pairs, near, timings, out, report_path,
                           matches)
        write_summary(out / "summary.json", summary)
    return DedupResult(out=out, images=n, clusters=tuple(clusters), removed=len(removed_rows), threshold=choice,
                       keep_policy=keep, summary=summary, report=report_path)


def _removed_rows(rows: _StoreRows, clusters: Sequence[DuplicateCluster]) -> set[int]:
    row_of = {int(i): r for r, i in enumerate(rows.ids.tolist())}
    return {row_of[m.id] for c in clusters for m in c.removed}


def _summary(rows: _StoreRows, clusters: Sequence[DuplicateCluster], removed: int, choice: ThresholdChoice, keep: str,
             pairs: SimilarPairs, near: SimilarPairs, timings: dict[str, float], out: Path,
             report_path: Path | None, matches: Any = None) -> dict[str, Any]:
    from .. import __version__

    by_match = {"file": 0, "pixels": 0, "near": 0}
    for cluster in clusters:
        for member in cluster.removed:
            by_match[member.match] = by_match.get(member.match, 0) + 1
    n = len(rows.ids)
    return {
        "store": str(rows.store.directory.resolve()),
        "source_root": str(rows.store.source_root),
        "encoder": {"spec": rows.store.encoder.get("spec"), "id": rows.store.encoder.get("id")},
        "images": n,
        "skipped_when_embedded": len(rows.store.manifest.skipped),
        "clusters": len(clusters),
        "images_in_clusters": sum(len(c) for c in clusters),
        "largest_cluster": max((len(c) for c in clusters), default=0),
        "kept": n - removed,
        "removed": removed,
        "removed_by_match": by_match,
        "threshold": choice.to_dict(),
        "keep_policy": {"name": keep, "rule": KEEP_POLICIES[keep]},
        "graph": {"method": pairs.method, "neighbors": pairs.neighbors, "device": pairs.device, "cells": pairs.cells,
                  "candidate_pairs": len(pairs), "pairs_at_threshold": len(near), "seconds": round(pairs.seconds, 3)},
        "against": None if matches is None else {
            "index": str(matches.index_dir.resolve()), "ntotal": matches.ntotal,
            "new_images_duplicating_index": matches.matched_rows, "index_items_matched": len(matches.ids)},
        "seconds": {name: round(value, 3) for name, value in timings.items()},
        "outputs": {"clusters": "clusters.parquet", "keep": "keep.txt", "remove": "remove.txt",
                    "report": report_path.name if report_path else None},
        "sslsearch_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
