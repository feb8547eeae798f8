"""Self-calibrated thresholds: edited copies of the user's own images tell which similarity means "duplicate".

The method: take a seeded sample of the store's images, make edited copies of each (see
``edits.py``), embed the copies with the store's encoder and search them against the whole
store. A copy matching its original is a true match; a copy matching any other stored image is
a false match, except that stored images scoring as high against the original as its own
edited copies (or as a typical copy: ``TYPICAL_COPY_QUANTILE``) or with the same file bytes are
taken to be duplicates already in the data and left out. Pairs are scored as the dedup run
scores them: cosine similarity, or the density-adjusted score of ``density.py`` (the default
with a calibrated threshold). The threshold is the lowest score at which the precision of these
matches stays at least the target at every higher threshold; recall is the fraction of copies
that reach it.

This estimates how well the encoder tells an edited copy from the rest of *your* collection.
It assumes the edits resemble your duplicates. Every copy has one true match, far more than a
real collection where duplicates are rare, so copy precision alone is optimistic (measured: an
estimate of 0.99 for a real pair precision of 0.63). When the store's own candidate pairs are
given (``store_pairs``), precision is estimated for the store instead: the copies give the
rate of false matches per image above each threshold, which predicts how many of the store's
pairs above it are false; the threshold is the lowest whose predicted store precision, and that
of every higher threshold, is at least the target.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..encoders import Encoder
from ..errors import InvalidArgumentError
from .copies import DEFAULT_SAMPLE_SIZE, EMBED_BATCH, MAX_COPIES_PER_IMAGE, EditedCopies, make_edited_copies
from .density import DensityAdjustment
from .threshold import (SURE_COPY_QUANTILE, StoreFalsePairRate, choose_store_threshold, choose_threshold,
                        precision_recall, store_precision, sure_duplicate_similarity)

__all__ = ["AMBIGUOUS_RANK", "CALIBRATION_NEIGHBORS", "CURVE_POINTS", "DEFAULT_PRECISION", "DEFAULT_SAMPLE_SIZE",
           "EMBED_BATCH", "MAX_COPIES_PER_IMAGE", "SURE_COPY_QUANTILE", "TYPICAL_COPY_QUANTILE", "Calibration",
           "EditedCopies", "StoreFalsePairRate", "calibrate_threshold", "check_precision", "choose_store_threshold",
           "choose_threshold", "make_edited_copies", "precision_recall", "store_precision",
           "sure_duplicate_similarity"]

DEFAULT_PRECISION = 0.99
CALIBRATION_NEIGHBORS = 20  # stored images each copy is compared with
# A stored image scoring as high against an original as this quantile of copies (or as its own copies)
# is taken for a duplicate already in the data. Measured on cosine similarity (bench_dedup, 1,000
# sample images, two SimCLR encoders, target precision 0.99): the median gave precision 0.93 / 1.00,
# the 25th percentile 0.61 / 0.96, the 10th 0.61 / 0.55 (too many close unrelated images pass as
# duplicates). On the density-adjusted score close unrelated images score lower, and the median
# instead counted real duplicates a little harsher than the copies as false pairs (threshold too
# strict): over 11 trained-encoder stores (3 encoders, 32 and 64 px, 1,000 and 2,000 sample images)
# auto F1 was 0.78-0.88 with the median, 0.91-0.97 with the 25th percentile (precision >= 0.97 in 8
# of 11, 0.918 the lowest), 0.54-0.92 with the 10th (precision down to 0.38). With cosine, the 25th
# percentile gave precision 0.38-0.96 on the same stores.
TYPICAL_COPY_QUANTILE = {"cosine": 0.5, "adjusted": 0.25}
AMBIGUOUS_RANK = 2  # ... if it is also one of the original's 2 nearest stored images
CURVE_POINTS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995)


@dataclass(frozen=True)
class Calibration:
    """A threshold chosen on edited copies of the user's images.

    Attributes:
        threshold: the score at or above which two images are duplicates (cosine similarity, or the
            density-adjusted score when ``score == "adjusted"``).
        target_precision: the precision asked for.
        estimated_precision: the store's predicted pair precision at ``threshold`` when store pairs
            were given (``method == "store"``), else the precision of copy matches.
        estimated_recall: fraction of copies whose similarity to their original reaches ``threshold``.
        copy_precision: precision of copy matches alone at ``threshold`` (one true match per copy).
        method: "store" (base-rate aware, from the store's own pairs) or "copies".
        store_pairs: the store's candidate pairs the estimate used (0 for "copies").
        score: what the threshold compares: "cosine" similarity or the "adjusted" score (density.py).
        reached: false when no threshold reaches the target; ``threshold`` then maximises precision.
        images: distinct images the copies were made from.
        copies: edited copies made (true pairs).
        negatives: comparisons of a copy with another stored image (false-pair candidates).
        ambiguous: stored images left out as probably duplicates already in the data.
        unreadable: sampled images that could not be read (skipped).
        seed: the seed of the sample and edits.
        seconds: wall time, making and embedding the copies included.
        curve: (threshold, precision, recall) at a few fixed thresholds.
    """

    threshold: float
    target_precision: float
    estimated_precision: float
    estimated_recall: float
    reached: bool
    images: int
    copies: int
    negatives: int
    ambiguous: int
    unreadable: int
    seed: int
    seconds: float
    curve: tuple[tuple[float, float, float], ...] = ()
    copy_precision: float = float("nan")
    method: str = "copies"
    store_pairs: int = 0
    score: str = "cosine"

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["curve"] = [{"threshold": t, "precision": round(p, 4), "recall": round(r, 4)} for t, p, r in self.curve]
        for key in ("threshold", "estimated_precision", "estimated_recall", "copy_precision", "seconds"):
            data[key] = round(float(data[key]), 4)
        return data


def check_precision(precision: float) -> float:
    """Return ``precision`` if in (0, 1), else raise InvalidArgumentError."""
    if not (isinstance(precision, (int, float)) and 0.0 < precision < 1.0):
        raise InvalidArgumentError(f"--precision must be in (0, 1), got {precision!r}; e.g. 0.99 "
                                   "(or give a fixed --threshold instead)")
    return float(precision)


def calibrate_threshold(vectors: np.ndarray, image_paths: Sequence[str | Path], encoder: Encoder, *,
                        precision: float = DEFAULT_PRECISION, sample_size: int = DEFAULT_SAMPLE_SIZE,
                        file_sha256: Sequence[str | None] | None = None, seed: int = 0,
                        store_pairs: Callable[[float], np.ndarray] | None = None,
                        density: DensityAdjustment | None = None, copies: EditedCopies | None = None,
                        progress: bool | None = None) -> Calibration:
    """Choose the duplicate threshold on edited copies of a sample of the store's own images.

    Args:
        vectors: (n, d) float32 L2-normalised store vectors, row i embedding ``image_paths[i]``.
        image_paths: absolute path of each row's image.
        encoder: the encoder that made ``vectors`` (``encoder_from_fingerprint(store.encoder)``).
        precision: target precision in (0, 1).
        sample_size: edited copies to make (spread over at most that many images).
        file_sha256: the store's file hashes by row (stored files with the original's bytes are
            left out of the false pairs), or None.
        seed: seed of the image sample and the edits; the same seed gives the same threshold.
        store_pairs: given a similarity floor, the (m,) similarities of the store's candidate
            pairs (unique, undirected) at or above it, e.g. from the dedup k-NN graph; the
            threshold is then chosen for the store's predicted precision (module docstring).
            With ``density``, the floor and the similarities are adjusted scores.
        density: score every pair by its density-adjusted similarity (``density.py``) instead of
            its cosine; the threshold is then an adjusted score.
        copies: edited copies already made (``make_edited_copies``) with this seed and sample size;
            None makes them.
        progress: progress bar on stderr (default: when stderr is a terminal).

    Returns:
        The threshold with its estimated precision and recall (see the module docstring).

    Raises:
        InvalidArgumentError: a precision outside (0, 1), ``sample_size < 1``, mismatched inputs.
        InputNotFoundError: none of the sampled images can be read (moved or deleted).

    Example:
        >>> result = calibrate_threshold(vectors, paths, encoder, precision=0.99)  # doctest: +SKIP
        >>> result.threshold, result.estimated_recall  # doctest: +SKIP
        (0.912, 0.97)
    """
    start = time.perf_counter()
    check_precision(precision)
    if sample_size < 1:
        raise InvalidArgumentError(f"calibration sample size must be >= 1, got {sample_size}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(vectors) != len(image_paths):
        raise InvalidArgumentError(f"{len(vectors)} vectors but {len(image_paths)} image paths; pass one path per row")
    if vectors.shape[1] != encoder.dim:
        raise InvalidArgumentError(f"store vectors have dim {vectors.shape[1]} but the encoder gives {encoder.dim}; "
                                   "calibrate with the encoder that made the store")
    made_before = copies is not None
    if copies is None:
        copies = make_edited_copies(image_paths, encoder, sample_size=sample_size, seed=seed, progress=progress)
    if made_before:  # the copies' reading and embedding count as calibration time either way
        start -= copies.seconds
    rows, unreadable = copies.rows, copies.unreadable
    cosines = copies.cosines(vectors)
    copies = copies.vectors
    compared = _compare(vectors, rows, copies, cosines, file_sha256, density)
    positives, store_negatives, copy_negatives = compared.positives, compared.store_negatives, compared.copy_negatives
    negatives = np.concatenate([store_negatives, copy_negatives])
    if store_pairs is None:
        threshold, reached = choose_threshold(positives, negatives, precision)
        estimate = lambda t: precision_recall(positives, negatives, t)  # noqa: E731
        method, pair_count = "copies", 0
    else:
        # candidates are the copies' similarities, so no store pair below the lowest one matters
        pairs = np.sort(np.asarray(store_pairs(float(positives.min())), dtype=np.float64))[::-1]
        # the sampled originals are store images: their neighbours are a sample of the store's own pairs
        # (a copy's are not: an edited copy drifts towards unrelated images, which overstated the rate)
        rate = StoreFalsePairRate(store_negatives, len(np.unique(rows)), len(vectors))
        threshold, reached = choose_store_threshold(positives, pairs, rate, precision)
        estimate = lambda t: (store_precision(pairs, rate, t), precision_recall(positives, negatives, t)[1])  # noqa: E731
        method, pair_count = "store", len(pairs)
    estimated_precision, estimated_recall = estimate(threshold)
    curve = tuple((t, *estimate(t)) for t in CURVE_POINTS)
    return Calibration(threshold=threshold, target_precision=float(precision),
                       estimated_precision=estimated_precision, estimated_recall=estimated_recall, reached=reached,
                       images=len(set(rows.tolist())), copies=len(rows), negatives=len(negatives),
                       ambiguous=compared.ambiguous,
                       unreadable=unreadable, seed=seed, seconds=time.perf_counter() - start, curve=curve,
                       copy_precision=precision_recall(positives, negatives, threshold)[0], method=method,
                       store_pairs=pair_count, score="cosine" if density is None else "adjusted")


@dataclass(frozen=True)
class _Comparisons:
    """The calibration's scores: true pairs, and the false-pair candidates of two kinds.

    ``positives`` (m,): each copy against its original. ``store_negatives``: an original against its
    nearest stored images that are not its duplicates (pairs of stored images, a sample of the
    store's own pairs); ``copy_negatives``: a copy against the same kind of stored image. All in
    the run's score (cosine, or density-adjusted).
    """

    positives: np.ndarray
    store_negatives: np.ndarray
    copy_negatives: np.ndarray
    ambiguous: int


def _compare(vectors: np.ndarray, rows: np.ndarray, copies: np.ndarray, cosines: np.ndarray,
             file_sha256: Sequence[str | None] | None, density: DensityAdjustment | None = None) -> _Comparisons:
    """Score each copy against its original, and each original and copy against its nearest other stored images.

    Left out of the false pairs as probable duplicates already in the data: stored files with the
    original's bytes, and the original's ``AMBIGUOUS_RANK`` nearest stored images when they score
    as high against it as its own edited copies (or as a typical copy, ``TYPICAL_COPY_QUANTILE``,
    when its copies are harsher). Only the nearest few: a weak encoder puts many unrelated images that close, and
    those must count as false pairs. The rule compares scores, not cosines: with the adjusted
    score a duplicate in a sparse region scores far above its cosine, and counting it as false
    once made every threshold look imprecise.

    With ``density``, a copy's background is its ``rank``-th nearest stored image (its original
    among them) and its original's is taken with the copy put among its neighbours, as a
    duplicate pair's images are in the user's store.
    """
    import faiss

    rank = density.rank if density is not None else 0
    k = min(max(CALIBRATION_NEIGHBORS, rank) + 1, len(vectors))
    scores, labels = faiss.knn(copies, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    originals = np.unique(rows)
    k_original = min(max(AMBIGUOUS_RANK + 9, rank + 1), len(vectors))
    original_scores, original_labels = faiss.knn(vectors[originals], vectors, k_original, metric=faiss.METRIC_INNER_PRODUCT)
    position = {row: i for i, row in enumerate(originals.tolist())}

    sure = sure_duplicate_similarity(cosines)
    if density is None:
        positives = cosines
        score_store = lambda first, second, cosine: np.asarray(cosine, np.float32)  # noqa: E731
        score_copy = lambda index, label, cosine: np.asarray(cosine, np.float32)  # noqa: E731
    else:
        copy_background = density.background_of(np.where(labels >= 0, scores, np.nan))
        with_copy = np.full((len(rows), k_original), np.nan, np.float32)
        for i, (row, cosine) in enumerate(zip(rows.tolist(), cosines.tolist())):
            j = position[row]
            others = original_scores[j][(original_labels[j] >= 0) & (original_labels[j] != row)]
            values = np.sort(np.r_[others, cosine])[::-1][:k_original]  # the row may be missing from its own list (ties)
            with_copy[i, :len(values)] = values
        original_background = density.background_of(with_copy)
        positives = density.score(cosines, copy_background, original_background)
        score_store = density.pair_scores
        score_copy = lambda index, label, cosine: density.score(cosine, copy_background[index],  # noqa: E731
                                                                density.background[label])
    # A stored image scoring as high against the original as its own edited copies, or as a typical
    # copy, is probably a duplicate already in the data. (On cosine, a low quantile of all copies let a
    # weak encoder's false pairs through as "duplicates": estimated precision 1.0, measured 0.70.)
    typical = float(np.quantile(positives, TYPICAL_COPY_QUANTILE["cosine" if density is None else "adjusted"]))
    own_floor = dict.fromkeys(originals.tolist(), typical)
    for row, score in zip(rows.tolist(), np.asarray(positives).tolist()):
        own_floor[row] = min(own_floor[row], score)

    def same_file(row: int, label: int) -> bool:
        return bool(file_sha256 is not None and file_sha256[row] and file_sha256[label] == file_sha256[row])

    probable: dict[int, set[int]] = {}
    store_first: list[int] = []
    store_second: list[int] = []
    store_cosine: list[float] = []
    for row, neighbour_scores, neighbour_labels in zip(originals.tolist(), original_scores, original_labels):
        others = (neighbour_labels >= 0) & (neighbour_labels != row)
        labels_here, cosines_here = neighbour_labels[others], neighbour_scores[others]
        scored = score_store(np.full(len(labels_here), row), labels_here, cosines_here)
        chosen = {label for label, cosine in zip(labels_here.tolist(), cosines_here.tolist())
                  if same_file(row, label) or cosine >= sure}
        near = [i for i, label in enumerate(labels_here.tolist()) if label not in chosen][:AMBIGUOUS_RANK]
        chosen.update(int(labels_here[i]) for i in near if float(scored[i]) >= own_floor[row])
        probable[row] = chosen
        for label, cosine in zip(labels_here.tolist(), cosines_here.tolist()):
            if label not in chosen:  # pairs of stored images: the original against its other neighbours
                store_first.append(row)
                store_second.append(label)
                store_cosine.append(cosine)
    copy_index: list[int] = []
    copy_label: list[int] = []
    copy_cosine: list[float] = []
    ambiguous: set[tuple[int, int]] = set()
    width = CALIBRATION_NEIGHBORS + 1
    near_labels = labels[:, :width]
    # each copy's neighbours as seen from its original: one batched product, not a dot per neighbour
    sure_of_original = np.einsum("id,ijd->ij", vectors[rows], vectors[np.maximum(near_labels, 0)]) >= sure
    for i, row in enumerate(rows.tolist()):
        for j, (cosine, label) in enumerate(zip(scores[i, :width].tolist(), near_labels[i].tolist())):
            if label < 0 or label == row:
                continue
            if label in probable[row] or same_file(row, label) or sure_of_original[i, j]:
                ambiguous.add((row, label))
                continue
            copy_index.append(i)
            copy_label.append(label)
            copy_cosine.append(cosine)
    store_negatives = score_store(np.asarray(store_first, np.int64), np.asarray(store_second, np.int64),
                                  np.asarray(store_cosine, np.float32))
    copy_negatives = score_copy(np.asarray(copy_index, np.int64), np.asarray(copy_label, np.int64),
                                np.asarray(copy_cosine, np.float32))
    return _Comparisons(np.asarray(positives, np.float32), np.asarray(store_negatives, np.float32),
                        np.asarray(copy_negatives, np.float32), len(ambiguous))


