"""``deduplicate``: store → threshold → candidate pairs → joined groups → clusters → keep/remove lists, summary, report.

Each step is a function with a typed result, run in order by ``run_dedup`` on checked
``DedupOptions``: ``choose_graph_method`` (``graph_cache.py``: the in-memory graph, or ivf through
an index of the store), ``read_store`` (``rows.py``; without the vectors for a streaming ivf run),
``threshold_step`` (calibration on edited copies,
or the given value; the k-NN graph is a ``GraphCache`` shared with the next step),
``candidate_pairs`` (the graph or the verified candidates, with their scores), ``join_pairs``
(near pairs at the threshold, identical files and pixels, ``--against`` matches → connected
groups), ``build_clusters`` (``clusters.py``), then the outputs and ``DedupSummary``
(``summary.py``).
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InvalidArgumentError
from ..files import DirectoryLock
from .calibrate import DEFAULT_PRECISION, DEFAULT_SAMPLE_SIZE, calibrate_threshold, make_edited_copies
from .clusters import DEFAULT_KEEP, build_clusters, connected_groups, removed_rows
from .density import DENSITY_RANK, DensityAdjustment
from .exact import EXACT_CANDIDATE_SIMILARITY, ContentHasher, chain_pairs, hash_groups, identical_pairs
from .graph import DEFAULT_NEIGHBORS, SimilarPairs, resolve_method
from .graph_cache import INDEX_GRAPH_METHODS, GraphCache, PairScorer, choose_graph_method
from .options import DEFAULT_REPORT_CLUSTERS, DedupOptions, check_threshold
from .outputs import prepare_dedup_dir, write_clusters, write_list
from .result import DedupResult, DuplicateCluster, ThresholdChoice
from .rows import StoreRows, open_store, read_store, store_encoder
from .summary import DedupSummary
from .verified import CANDIDATE_COSINE, VerifiedPairs, calibrate_verified, verified_pairs

if TYPE_CHECKING:
    from .against import IndexMatches

__all__ = ["ADJUSTED_GRAPH_FLOOR", "DEFAULT_REPORT_CLUSTERS", "CandidatePairs", "DedupOptions", "JoinedPairs",
           "ThresholdStep", "candidate_pairs", "check_threshold", "deduplicate", "join_pairs", "threshold_step",
           "run_dedup"]

# With the adjusted score the first graph keeps pairs down to this cosine (its backgrounds are needed before the
# threshold is known); a threshold that needs lower pairs rebuilds it lower.
ADJUSTED_GRAPH_FLOOR = 0.5


def deduplicate(embeddings: str | os.PathLike[str], out: str | os.PathLike[str], *, threshold: float | None = None,
                precision: float = DEFAULT_PRECISION, keep: str = DEFAULT_KEEP, neighbors: int = DEFAULT_NEIGHBORS,
                method: str = "auto", device: str = "auto", sample_size: int = DEFAULT_SAMPLE_SIZE, seed: int = 0,
                against: str | os.PathLike[str] | None = None, score: str = "auto", edits: str = "full",
                report: bool = False,
                report_max_clusters: int = DEFAULT_REPORT_CLUSTERS, overwrite: bool = False,
                progress: bool | None = None, memory_budget: str | int | None = None,
                _allowed_in_out: Sequence[str] = ()) -> DedupResult:
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
        method: "auto", "exact", "partitioned", "ivf" or "join" k-NN graph; "ivf" searches an IVF index
            of the store that the run builds, "join" joins its inverted lists by matrix products
            (faster per row from millions of rows); both cosine score only (``graph_cache.py``).
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
        memory_budget: e.g. "4GB": with a given cosine threshold and no ``against``, ``method="auto"``
            takes an index graph (the store streamed, only cluster members' vectors read; join from
            ``JOIN_MIN_ROWS`` rows, else ivf) when the in-memory graph's estimate exceeds it; also bounds
            the index build, the re-scoring and the join's copy buffer.

    Returns:
        A ``DedupResult``; ``result.describe()`` is a one-line report.

    Raises:
        InvalidArgumentError: threshold outside (0, 1], precision outside (0, 1), bad neighbors,
            ``score="adjusted"`` with ``against``.
        UnknownNameError: an unknown keep policy, graph method or score.
        InvalidArgumentError: ``method="ivf"`` or ``"join"`` with the adjusted or verified score; an unreadable memory budget.
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
    options = DedupOptions(threshold=threshold, precision=precision, keep=keep, neighbors=neighbors, method=method,
                           device=device, sample_size=sample_size, seed=seed, against=against, score=score,
                           edits=edits, report=report, report_max_clusters=report_max_clusters, overwrite=overwrite,
                           progress=progress, memory_budget=memory_budget)
    return run_dedup(embeddings, out, options, allowed_in_out=_allowed_in_out, started=started)


def run_dedup(embeddings: str | os.PathLike[str], out: str | os.PathLike[str], options: DedupOptions, *,
              allowed_in_out: Sequence[str] = (), started: float | None = None) -> DedupResult:
    """``deduplicate`` on checked options: each step in turn, timed into summary.json's ``seconds``.

    Args:
        embeddings: an embedding store directory.
        out: the output directory (see ``deduplicate``).
        options: the checked options.
        allowed_in_out: names that may already be in ``out`` without ``overwrite`` (``convenience.py``'s store).
        started: ``time.perf_counter()`` when the call began (default: now).
    """
    started = time.perf_counter() if started is None else started
    timings: dict[str, float] = {}
    store = open_store(embeddings)
    score = options.score_for(len(store))
    graph_method = choose_graph_method(options.method, images=len(store), dim=store.dim, neighbors=options.neighbors,
                                       score=score, needs_all_vectors=options.needs_all_vectors,
                                       memory_budget_bytes=options.memory_budget_bytes)
    # an index graph streams the store: only cluster members' vectors are read, unless something needs them all
    rows = read_store(store, vectors=graph_method not in INDEX_GRAPH_METHODS or options.needs_all_vectors)
    directory = prepare_dedup_dir(out, overwrite=options.overwrite, allowed=allowed_in_out)
    with DirectoryLock(directory):
        timings["load"] = time.perf_counter() - started
        adjusted = score == "adjusted" and len(rows) >= 2
        graph = GraphCache(rows.vectors, neighbors=options.neighbors, method=graph_method, device=options.device,
                           seed=options.seed, record_neighbors=max(options.neighbors, DENSITY_RANK) if adjusted else 0,
                           progress=options.progress, timings=timings, store_dir=store.directory,
                           workdir=directory, memory_budget=options.memory_budget)
        try:
            step = threshold_step(rows, options, score, graph, timings)
            candidates = candidate_pairs(rows, options, step)
        finally:
            graph.close()

        mark = time.perf_counter()
        joined = join_pairs(rows, options, candidates, step.cut, timings)
        if rows.held is not None:  # read now the vectors the clusters need (their members')
            rows = rows.holding(np.concatenate(joined.groups) if joined.groups else np.zeros(0, np.int64))
        clusters = build_clusters(rows, joined.groups, options.keep, joined.hasher, joined.matches)
        timings["clusters"] = time.perf_counter() - mark

        mark = time.perf_counter()
        removed = removed_rows(rows, clusters)
        _write_lists(directory, rows, clusters, removed)
        timings["write"] = time.perf_counter() - mark

        report_path = None
        if options.report:
            mark = time.perf_counter()
            report_path = _write_report(directory, rows, clusters, step.choice, joined.matches,
                                        options.report_max_clusters)
            timings["report"] = time.perf_counter() - mark
        timings["total"] = time.perf_counter() - started
        summary = DedupSummary.of(rows, clusters, len(removed), step.choice, options.keep, candidates.pairs,
                                  joined.near, timings, report_path, joined.matches)
        summary.write(directory / "summary.json")
    return DedupResult(out=directory, images=len(rows), clusters=tuple(clusters), removed=len(removed),
                       threshold=step.choice, keep_policy=options.keep, summary=summary.to_dict(), report=report_path)


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class ThresholdStep:
    """The threshold and what the later steps need from choosing it.

    Attributes:
        choice: the threshold, its score and how it was chosen.
        score: what the threshold compares ("cosine", "adjusted" or "verified").
        graph: the store's k-NN graph (built for calibration, or later on demand).
        scorer: how graph pairs are scored (with the density adjustment for "adjusted").
        verified: the verified candidate pairs when ``score == "verified"`` (2 images or more).
    """

    choice: ThresholdChoice
    score: str
    graph: GraphCache
    scorer: PairScorer
    verified: VerifiedPairs | None = None

    @property
    def cut(self) -> float:
        """The score pairs need to join (1.0 when no threshold was needed)."""
        return self.choice.value if self.choice.value is not None else 1.0


def threshold_step(rows: StoreRows, options: DedupOptions, score: str, graph: GraphCache,
                   timings: dict[str, float]) -> ThresholdStep:
    """The given threshold, or one calibrated for ``options.precision`` on edited copies of the store's images.

    ``graph`` is the store's k-NN graph (record_neighbors set for the adjusted score); it is built here
    when calibration or the density adjustment needs it. Adds ``timings["calibration"]`` (and
    ``timings["graph"]`` for a graph built meanwhile).

    Raises:
        InvalidArgumentError: a 1-image store with ``against`` and no threshold.
        EncoderMismatchError: the store's encoder cannot be rebuilt to embed the copies.
    """
    mark = time.perf_counter()
    n = len(rows)
    adjusted = score == "adjusted" and n >= 2
    calibrating = options.calibrating and n >= 2
    encoder = store_encoder(rows, options.device) if calibrating and score != "verified" else None
    density, copies = None, None
    if adjusted:
        sure = EXACT_CANDIDATE_SIMILARITY  # with a given threshold no copies say what a sure duplicate is
        if calibrating:  # the copies say what a sure duplicate is, which the backgrounds must leave out
            copies = make_edited_copies(rows.all_absolute(), encoder, sample_size=options.sample_size,
                                        seed=options.seed, progress=options.progress)
            sure = copies.sure_duplicate_similarity(rows.vectors)
        density = DensityAdjustment.from_neighbors(graph.pairs(ADJUSTED_GRAPH_FLOOR).neighbor_similarity,
                                                   exclude_from=sure)
    scorer = PairScorer(density)

    verified = None
    if score == "verified" and n >= 2:
        verified = verified_pairs(rows.vectors, rows.all_absolute(), neighbors=options.neighbors,
                                  method=options.method, device=options.device, seed=options.seed,
                                  progress=options.progress)
        timings["graph"] = verified.seconds
    if options.threshold is not None:
        choice = ThresholdChoice(float(options.threshold), "given", score=score, density=density)
    elif n < 2 and options.against is None:
        choice = ThresholdChoice(None, "not needed")
    elif n < 2:
        raise InvalidArgumentError(f"store {rows.store.directory} holds 1 image: too few to calibrate a threshold; "
                                   "pass --threshold T (e.g. the one in the summary.json of a full dedup run)")
    elif verified is not None:
        calibration = calibrate_verified(verified, rows.all_absolute(), precision=options.precision,
                                         sample_size=options.sample_size, edits=options.edit_names, seed=options.seed,
                                         file_sha256=rows.sha256, progress=options.progress)
        choice = ThresholdChoice(calibration.threshold, "calibrated", calibration, "verified")
    else:
        calibration = calibrate_threshold(rows.vectors, rows.all_absolute(), encoder, precision=options.precision,
                                          sample_size=options.sample_size, file_sha256=rows.sha256, seed=options.seed,
                                          store_pairs=lambda floor: scorer.store_scores(graph, floor),
                                          density=density, copies=copies, progress=options.progress)
        choice = ThresholdChoice(calibration.threshold, "calibrated", calibration, calibration.score, density)
    timings["calibration"] = time.perf_counter() - mark - timings.get("graph", 0.0)
    return ThresholdStep(choice, score, graph, scorer, verified)


@dataclass(frozen=True)
class CandidatePairs:
    """The pairs the threshold is applied to, and their scores.

    Attributes:
        pairs: candidate pairs of store rows with their cosine similarities.
        scores: (m,) float32 score of each pair on the threshold's scale.
    """

    pairs: SimilarPairs
    scores: np.ndarray


def candidate_pairs(rows: StoreRows, options: DedupOptions, step: ThresholdStep) -> CandidatePairs:
    """The verified candidates with their verified scores, or the graph's pairs down to the threshold's floor."""
    n = len(rows)
    if step.verified is not None:  # the candidates and their verified scores replace the cosine graph
        verified = step.verified
        pairs = SimilarPairs(verified.first, verified.second, verified.cosine, CANDIDATE_COSINE, options.neighbors,
                             resolve_method(options.method, n, options.device), "cpu", verified.seconds)
        return CandidatePairs(pairs, verified.score)
    if step.score == "verified":  # a single image: nothing to pair
        pairs = SimilarPairs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
                             CANDIDATE_COSINE, options.neighbors, "exact", "cpu", 0.0)
        return CandidatePairs(pairs, pairs.similarity)
    pairs = step.graph.pairs(step.scorer.cosine_floor(step.cut))
    return CandidatePairs(pairs, step.scorer.scores(pairs))


@dataclass(frozen=True)
class JoinedPairs:
    """What joins images into clusters.

    Attributes:
        groups: connected groups of nodes (store rows, then ``matches``' index items), largest first.
        near: the candidate pairs at or above the threshold.
        hasher: file and pixel hashes of the store's images.
        matches: the ``--against`` index matches, or None.
    """

    groups: list[np.ndarray]
    near: SimilarPairs
    hasher: ContentHasher
    matches: "IndexMatches | None" = None


def join_pairs(rows: StoreRows, options: DedupOptions, candidates: CandidatePairs, cut: float,
               timings: dict[str, float]) -> JoinedPairs:
    """Near pairs at ``cut``, identical files and pixels, and ``--against`` matches, joined into connected groups.

    Adds ``timings["against"]`` with ``options.against``.

    Raises:
        EncoderMismatchError, IndexFileError: ``options.against`` is not a readable index of the same encoder.
    """
    n = len(rows)
    pairs, scores = candidates.pairs, candidates.scores
    hasher = ContentHasher(rows.absolute, rows.sha256)
    near = pairs.where(scores >= cut)
    firsts, seconds = [near.first], [near.second]
    if rows.sha256 is not None:
        file_first, file_second = chain_pairs(hash_groups(rows.sha256))
        firsts.append(file_first)
        seconds.append(file_second)
    # pairs below the threshold but cosine >= EXACT_CANDIDATE_SIMILARITY join only when their pixels are identical
    below = (scores < cut) & (pairs.similarity >= EXACT_CANDIDATE_SIMILARITY)
    if below.any():
        same_first, same_second = identical_pairs(pairs.first[below], pairs.second[below], hasher)
        firsts.append(same_first)
        seconds.append(same_second)
    matches = None
    if options.against is not None:
        from .against import match_against_index

        mark = time.perf_counter()
        matches = match_against_index(options.against, rows.vectors, rows.store.encoder, cut,
                                      neighbors=options.neighbors, device=options.device)
        firsts.append(matches.rows)
        seconds.append(matches.nodes + n)
        timings["against"] = time.perf_counter() - mark
    n_nodes = n + (len(matches.ids) if matches is not None else 0)
    groups = connected_groups(n_nodes, np.concatenate(firsts), np.concatenate(seconds))
    return JoinedPairs(groups, near, hasher, matches)


def _write_lists(out: Path, rows: StoreRows, clusters: Sequence[DuplicateCluster], removed: set[int]) -> None:
    write_clusters(out / "clusters.parquet", clusters)
    write_list(out / "keep.txt", (str(rows.absolute(r)) for r in range(len(rows)) if r not in removed))
    write_list(out / "remove.txt", (str(rows.absolute(r)) for r in sorted(removed)))


def _write_report(out: Path, rows: StoreRows, clusters: Sequence[DuplicateCluster], choice: ThresholdChoice,
                  matches: "IndexMatches | None", max_clusters: int) -> Path:
    from .report import write_report

    roots = {"store": rows.store.source_root}
    if matches is not None and matches.source_root is not None:
        roots["index"] = matches.source_root
    return write_report(out / "report.html", clusters, roots, max_clusters=max_clusters,
                        title=f"Duplicates in {rows.store.directory}", subtitle=choice.describe())
