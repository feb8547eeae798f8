"""Density-adjusted similarity: a pair's cosine similarity, less how alike images are around it.

An encoder puts some images much closer together than others: plain pictures of one kind, or
one class the encoder barely tells apart, sit in dense regions where *unrelated* images reach a
similarity that elsewhere only a copy reaches. One cosine threshold then either misses copies
in sparse regions or takes unrelated pairs in dense ones. Copy-detection systems correct for
this by subtracting each image's similarity to a "background" neighbour (the k-th nearest
image; e.g. the score normalisation of Pizzi et al., "A Self-Supervised Descriptor for Image
Copy Detection", CVPR 2022). Here the store is its own background:

    score(i, j) = cos(i, j) - strength * ((b_i + b_j) / 2 - reference)

where ``b_i`` is image i's similarity to its ``rank``-th nearest other image (from the k-NN
graph that dedup builds anyway) among those that are not *sure* duplicates of it, and
``reference`` is the store's median ``b``: a pair in a region of typical density keeps its
cosine similarity, so a score reads like one. Sure duplicates are neighbours at least as similar
as the easiest quarter of the calibration's edited copies (``threshold.SURE_COPY_QUANTILE``):
without that, the members of a big cluster of copies (a burst of photos, one picture re-saved
many times) had each other as background and scored far below their cosine — measured: 6 of 40
re-encoded copies of one image found. ``b`` is also capped at a high quantile of the store's
values, so nothing is penalised more than the densest ordinary region.

Measured (``benchmarks/bench_dedup.py``-style ground truth, 2,000 sample images with 100
planted copies, best-threshold pairwise F1, six trained-encoder settings): cosine 0.83-0.91,
adjusted (rank 5, strength 0.5) 0.93-0.975; rank 3 was about the same, 10 and 16 and
strength 0.75 lower. The defaults below are those figures' choice.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidArgumentError, unknown_name

SCORES: tuple[str, ...] = ("auto", "cosine", "adjusted", "verified")
# Above this many images ``auto`` picks the adjusted score: verification costs ~5 ms of CPU an image and holds
# each image's canonical view (up to 96 px, ~27 KB) in memory while it runs (~2.7 GB at 100,000 images).
VERIFY_MAX_IMAGES = 100_000
DENSITY_RANK = 5  # b_i: the similarity of image i to its 5th nearest other image
DENSITY_STRENGTH = 0.5
DENSITY_CAP_QUANTILE = 0.97  # b is capped here: a big cluster of copies is penalised like a dense region, no more


def resolve_score(score: str, *, threshold_given: bool, against: bool, images: int = 0) -> str:
    """Map ``auto`` to ``verified`` (a calibrated threshold, up to ``VERIFY_MAX_IMAGES`` images), ``adjusted``
    (calibrated, more images) or ``cosine`` (a given threshold, or ``--against``).

    Raises:
        UnknownNameError: a name not in ``SCORES``.
        InvalidArgumentError: ``adjusted`` or ``verified`` with ``against`` (the index's items are not
            in this run: no neighbour background, no images to verify).
    """
    if score not in SCORES:
        raise unknown_name("score", score, SCORES)
    if score == "auto":
        if threshold_given or against:
            return "cosine"
        return "verified" if images <= VERIFY_MAX_IMAGES else "adjusted"
    if score in ("adjusted", "verified") and against:
        raise InvalidArgumentError(f"--score {score} cannot be used with --against (the index's images are not part "
                                   "of this run); use --score cosine or leave --score out")
    return score


def background_of(similarities: np.ndarray, rank: int, exclude_from: float) -> np.ndarray:
    """(q,) the ``rank``-th highest similarity below ``exclude_from`` in each row of a (q, m) descending array.

    NaN where a row has fewer such values (NaN entries are padding and never count).

    Example:
        >>> background_of(np.array([[0.999, 0.99, 0.9, 0.8], [0.9, 0.8, np.nan, np.nan]]), 2, 0.995)
        array([0.9, 0.8], dtype=float32)
    """
    values = np.asarray(similarities, dtype=np.float32)
    if values.ndim != 2:
        raise InvalidArgumentError(f"similarities must be a 2-D (q, m) array, got shape {values.shape}")
    usable = np.isfinite(values) & (values < exclude_from)
    position = np.cumsum(usable, axis=1)
    hit = usable & (position == rank)
    found = hit.any(axis=1)
    out = np.full(len(values), np.nan, np.float32)
    out[found] = values[found, np.argmax(hit[found], axis=1)]
    return out


@dataclass(frozen=True)
class DensityAdjustment:
    """How much each image's neighbourhood lowers (or raises) the similarity of its pairs.

    Attributes:
        background: (n,) float32, each store row's similarity to its ``rank``-th nearest other
            row that is not a sure duplicate of it, capped at ``cap`` (rows with too few such
            neighbours get ``reference``).
        reference: the store's median background: a pair with this background keeps its cosine.
        cap: the cap applied to backgrounds (the ``DENSITY_CAP_QUANTILE`` quantile).
        exclude_from: neighbours this similar or more are sure duplicates and are not background
            (a cluster of copies is not a dense region); 1.0 or more excludes nothing below identity.
        strength: weight of the correction (0 gives plain cosine similarity).
        rank: which neighbour is the background.
    """

    background: np.ndarray = field(repr=False)
    reference: float
    cap: float
    exclude_from: float = 2.0
    strength: float = DENSITY_STRENGTH
    rank: int = DENSITY_RANK

    @classmethod
    def from_neighbors(cls, neighbor_similarity: np.ndarray, *, exclude_from: float = 2.0,
                       strength: float = DENSITY_STRENGTH, rank: int = DENSITY_RANK,
                       cap_quantile: float = DENSITY_CAP_QUANTILE) -> "DensityAdjustment":
        """Build from each store row's nearest similarities ((n, m), descending, NaN-padded; the k-NN graph's).

        With no background at all (a store of ``rank`` images or fewer) the adjustment is zero:
        scores equal cosine similarities.

        Example:
            >>> near = np.array([[0.5], [0.7], [0.9]], np.float32)
            >>> adjust = DensityAdjustment.from_neighbors(near, rank=1)
            >>> round(adjust.reference, 2), round(adjust.cap, 3)  # the median, and the 97th percentile
            (0.7, 0.888)
            >>> round(float(adjust.score(np.array([0.95]), np.array([0.9]), np.array([0.9]))[0]), 3)  # 0.95 - 0.5 * (0.888 - 0.7)
            0.856
        """
        if not 0.0 <= strength <= 1.0:
            raise InvalidArgumentError(f"density strength must be in [0, 1], got {strength}")
        if rank < 1:
            raise InvalidArgumentError(f"density rank must be >= 1, got {rank}")
        raw = background_of(neighbor_similarity, rank, exclude_from)
        known = raw[np.isfinite(raw)]
        if len(known) == 0:
            return cls(np.zeros(len(raw), np.float32), 0.0, 1.0, float(exclude_from), float(strength), int(rank))
        cap = float(np.quantile(known, cap_quantile))
        reference = float(np.median(np.minimum(known, cap)))
        capped = np.where(np.isfinite(raw), np.minimum(raw, cap), reference).astype(np.float32)
        return cls(capped, reference, cap, float(exclude_from), float(strength), int(rank))

    def background_of(self, similarities: np.ndarray) -> np.ndarray:
        """Backgrounds of images outside the store from their (q, m) descending similarities to stored images."""
        return background_of(similarities, self.rank, self.exclude_from)

    def offset(self, background_a: np.ndarray, background_b: np.ndarray) -> np.ndarray:
        """What is subtracted from a pair's cosine; backgrounds above ``cap`` count as ``cap``, NaN as ``reference``."""
        a = np.where(np.isfinite(background_a), np.minimum(background_a, self.cap), self.reference)
        b = np.where(np.isfinite(background_b), np.minimum(background_b, self.cap), self.reference)
        return self.strength * ((a + b) / 2 - self.reference)

    def score(self, similarity: np.ndarray, background_a: np.ndarray, background_b: np.ndarray) -> np.ndarray:
        """Adjusted scores of pairs given their cosine similarities and both images' backgrounds."""
        return (np.asarray(similarity, np.float64) - self.offset(np.asarray(background_a, np.float64),
                                                                 np.asarray(background_b, np.float64))).astype(np.float32)

    def pair_scores(self, first: np.ndarray, second: np.ndarray, similarity: np.ndarray) -> np.ndarray:
        """Adjusted scores of store pairs (row positions ``first``, ``second``)."""
        return self.score(similarity, self.background[first], self.background[second])

    def cosine_floor(self, score_floor: float) -> float:
        """The lowest cosine similarity a store pair scoring at least ``score_floor`` can have."""
        lowest = float(self.background.min()) if len(self.background) else self.reference
        return float(score_floor + self.strength * (min(lowest, self.reference) - self.reference))

    def to_dict(self) -> dict[str, float | int]:
        return {"rank": self.rank, "strength": self.strength, "reference": round(self.reference, 6),
                "cap": round(self.cap, 6), "sure_duplicate_similarity": round(min(self.exclude_from, 2.0), 6)}
