"""The verified score's run: candidate pairs from embeddings and pixels, verified, and a threshold for them.

Candidates are each image's ``neighbors`` nearest images by the store's embedding (cosine) and by
a flip-symmetric greyscale thumbnail of its canonical view (``verify.canonical``), so a copy the
encoder misplaces is still found, and the ``PROBE_NEIGHBORS`` nearest thumbnails of each of its
probes (``PROBE_SPECS``: the view cut to a window or turned 10 degrees), so a cropped, rotated or
margin-watermarked copy, whose own thumbnail differs, is found too (measured on icons-dedup:
copies never proposed 128 -> 37 of 1,500). Every candidate pair is then scored by
``verify.verify_pairs``.

The threshold is calibrated as for the embedding scores (``calibrate.py``): edited copies of a
seeded sample of the store's images (the ``full`` edit preset by default) are verified against
their originals (true matches); the sampled originals' own candidate pairs give the rate of false
matches per image above each score, which predicts the precision of the store's pairs. The
threshold is the lowest whose predicted precision, and that of every higher one, reaches the
target, and never above the typical copy's score (``TYPICAL_COPY_QUANTILE``): a calibration that
asks more than a typical copy reaches would miss most duplicates to avoid pairs the store may not
have.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import BadImageError, InputNotFoundError
from ..index.exact import exact_search
from ..progress import progress_bar
from ..sources import load_image
from .calibrate import (AMBIGUOUS_RANK, SURE_COPY_QUANTILE, Calibration, StoreFalsePairRate, choose_store_threshold,
                        precision_recall, store_precision)
from .edits import edited_copy
from .graph import similar_pairs
from .verify import CROP_SCALES, VARIANT_SPECS, variants, verify_images, verify_pairs, working_view

THUMB_SIZE = 16  # px of the greyscale thumbnails that propose pixel candidates
PIXEL_NEIGHBORS = 48  # pixel candidates per image: verifying costs per image, not per pair, so cast wide
# probes: the coarse variants cut to a window of 71 % of the area (5 places) or rotated 10 degrees either way
PROBE_SPECS = tuple(spec for spec in VARIANT_SPECS if not spec.mirror and (
    (spec.crop is not None and spec.crop[:2] == (min(CROP_SCALES),) * 2) or (abs(spec.degrees) == 10 and not spec.expand)))
PROBE_NEIGHBORS = 8  # nearest thumbnails of each probe taken as candidates
CANDIDATE_COSINE = 0.0  # embedding neighbours at or above this cosine are candidates (all k nearest, in effect)
TYPICAL_COPY_QUANTILE = 0.5  # the threshold never exceeds this quantile of the copies' scores
# A sampled image's 2 best candidates scoring at least its own copy, or this quantile of all copies when its copy is
# harsher, are duplicates already in the data, not false pairs; below it they count as false. This floor sets the
# threshold. Measured on the real dedup sets (re-scored candidates, target 0.99; F1 wallpapers-dedup / icons-dedup,
# precision in brackets): 0.3: 0.830 (0.969) / 0.834 (0.987), too strict (harsher duplicates of the store counted
# 2-4x too many false pairs); 0.15: 0.925 (0.969) / 0.903 (0.975); 0.12: 0.939 (0.970) / 0.921 (0.967); 0.1: 0.939
# (0.962) / 0.920 (0.957), and 0.908 precision on wallpapers before its ground truth dropped shifted windows of one
# wallpaper (below it look-alikes pass for duplicates already there); sample data (full pipeline) 0.12: 0.980 (1.000).
DUPLICATE_FLOOR_QUANTILE = 0.12
# store images whose candidate pairs estimate the false-pair rate (all of them in a smaller store): a few hundred
# sampled images left the estimate in steps of n / 600 false pairs, and the threshold on one side or the other of a
# cluster of look-alikes
NEGATIVE_QUERIES = 20_000
CURVE_POINTS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995)


@dataclass(frozen=True)
class VerifiedPairs:
    """Candidate pairs of store rows with their verification scores.

    Attributes:
        first, second: (m,) int64 row positions, ``first < second``, unique.
        cosine: (m,) float32 embedding cosine of each pair.
        score: (m,) float32 verification score (``verify.py``), -1 where an image was unreadable.
        seconds: wall time (thumbnails, candidate graphs and verification).
    """

    first: np.ndarray
    second: np.ndarray
    cosine: np.ndarray
    score: np.ndarray
    seconds: float

    def __len__(self) -> int:
        return int(self.first.shape[0])


def _safe_load(path: Path) -> Image.Image | None:
    try:
        return load_image(path).image
    except (BadImageError, OSError):
        return None


def _thumbnail(view: Image.Image) -> np.ndarray:
    pixels = np.asarray(ImageOps.grayscale(view).resize((THUMB_SIZE, THUMB_SIZE), Image.BILINEAR), np.float32)
    pixels = (pixels + pixels[:, ::-1]).ravel()
    pixels -= pixels.mean()
    return pixels / max(float(np.linalg.norm(pixels)), 1e-6)


def probe_views(view: Image.Image) -> list[Image.Image]:
    """What a copy of ``view`` may look like once canonical when its own thumbnail does not: cut to a window
    (a crop, or a watermark in the margin seen from the other side) or rotated (``PROBE_SPECS``)."""
    return variants(view, PROBE_SPECS)


def thumbnails(paths: Sequence[Path], *, probes: bool = False, progress: bool | None = None
               ) -> tuple[np.ndarray, list[Image.Image | None], np.ndarray]:
    """(n, THUMB_SIZE²) float32 flip-symmetric, normalised greyscale thumbnails of the canonical views
    (zero rows for unreadable images), the views themselves (``verify.working_view``; None where
    unreadable), kept so that verification decodes no image twice, and with ``probes`` the
    (n, len(PROBE_SPECS), THUMB_SIZE²) thumbnails of each view's ``probe_views`` (else (n, 0, ...))."""
    out = np.zeros((len(paths), THUMB_SIZE * THUMB_SIZE), np.float32)
    # float16: at the 100,000 images the verified score takes, 360 MB rather than 720
    probe_out = np.zeros((len(paths), len(PROBE_SPECS) if probes else 0, THUMB_SIZE * THUMB_SIZE), np.float16)
    kept: list[Image.Image | None] = []
    with progress_bar(len(paths), "dedup thumbnails", unit="img", enabled=progress) as bar:
        for row, path in enumerate(paths):
            image = _safe_load(path)
            view = working_view(image) if image is not None else None
            kept.append(view)
            if view is not None:
                out[row] = _thumbnail(view)
                if probes:
                    probe_out[row] = np.stack([_thumbnail(v) for v in probe_views(view)])
            bar.update(1)
    return out, kept, probe_out


def probe_pairs(thumbs: np.ndarray, probe_thumbs: np.ndarray, *, neighbors: int = PROBE_NEIGHBORS,
                device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (first < second) of each image's probe thumbnails' ``neighbors`` nearest thumbnails."""
    n, probes = probe_thumbs.shape[:2]
    firsts, seconds = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    if n < 2:
        return firsts[0], seconds[0]
    rows = np.arange(n, dtype=np.int64)[:, None]
    for probe in range(probes):  # one probe at a time: n float32 queries in memory, not n × probes
        _, ids = exact_search(probe_thumbs[:, probe].astype(np.float32), thumbs, min(neighbors + 1, n), device=device)
        near = np.broadcast_to(rows, ids.shape)
        keep = (ids >= 0) & (ids != near)
        firsts.append(np.minimum(near[keep], ids[keep]))
        seconds.append(np.maximum(near[keep], ids[keep]))
    return np.concatenate(firsts), np.concatenate(seconds)


def verified_pairs(vectors: np.ndarray, paths: Sequence[Path], *, neighbors: int, method: str, device: str, seed: int,
                   progress: bool | None = None) -> VerifiedPairs:
    """Candidate pairs (embedding and pixel neighbours) of the store's rows, verified on pixels."""
    started = time.perf_counter()
    by_embedding = similar_pairs(vectors, CANDIDATE_COSINE, neighbors=neighbors, method=method, device=device,
                                 seed=seed, progress=progress)
    thumbs, working_views, probe_thumbs = thumbnails(paths, probes=True, progress=progress)
    by_pixels = similar_pairs(thumbs, CANDIDATE_COSINE, neighbors=max(neighbors, PIXEL_NEIGHBORS), method=method,
                              device=device, seed=seed, progress=progress)
    by_probes = probe_pairs(thumbs, probe_thumbs, device=device)
    first = np.concatenate([by_embedding.first, by_pixels.first, by_probes[0]])
    second = np.concatenate([by_embedding.second, by_pixels.second, by_probes[1]])
    keys = np.unique(first.astype(np.int64) * len(paths) + second)
    first, second = keys // len(paths), keys % len(paths)
    cosine = np.einsum("pd,pd->p", vectors[first], vectors[second]).astype(np.float32)
    with progress_bar(len(np.unique(np.r_[first, second])), "verifying pairs", unit="img", enabled=progress) as bar:
        done = [0]

        def advance(count: int) -> None:
            bar.update(count - done[0])
            done[0] = count

        score = verify_pairs(first, second, working_views.__getitem__, progress=advance, prepared=True)
    return VerifiedPairs(first, second, cosine, score, time.perf_counter() - started)


def calibrate_verified(pairs: VerifiedPairs, paths: Sequence[Path], *, precision: float, sample_size: int,
                       edits: Sequence[str], seed: int, file_sha256: Sequence[str | None] | None = None,
                       progress: bool | None = None) -> Calibration:
    """Choose the verified-score threshold on edited copies of a seeded sample of the store's images.

    Raises:
        InputNotFoundError: none of the sampled images can be read.
    """
    started = time.perf_counter()
    n = len(paths)
    per_image = 1 if sample_size <= n else min(3, -(-sample_size // n))
    order = np.random.default_rng([seed, 0]).permutation(n)
    originals: list[Image.Image] = []
    copies: list[Image.Image] = []
    rows: list[int] = []
    unreadable = 0
    wanted = -(-sample_size // per_image)
    with progress_bar(wanted * per_image, "calibration copies", unit="img", enabled=progress) as bar:
        for row in order.tolist():
            if len(set(rows)) >= wanted:
                break
            image = _safe_load(paths[row])
            if image is None:
                unreadable += 1
                continue
            image.thumbnail((256, 256), Image.BILINEAR)
            rng = np.random.default_rng([seed, 1, row])
            for _ in range(per_image):
                originals.append(image)
                copies.append(edited_copy(image, rng, edits)[0])
                rows.append(row)
                bar.update(1)
    if not rows:
        raise InputNotFoundError(f"cannot calibrate the threshold: none of the {unreadable} sampled images could be read "
                                 f"(e.g. {paths[0]}); restore the images, or pass a fixed --threshold T")
    positives = verify_images(copies, originals).astype(np.float64)
    sampled = np.unique(rows)
    queries = _negative_queries(n, sampled, seed)
    negatives = _store_negatives(pairs, queries, positives, np.asarray(rows), file_sha256)
    rate = StoreFalsePairRate(negatives, len(queries), n)
    descending = np.sort(pairs.score.astype(np.float64))[::-1]
    threshold, reached = choose_store_threshold(positives, descending, rate, precision)
    typical = float(np.quantile(positives, TYPICAL_COPY_QUANTILE))
    if threshold > typical:  # never ask more than a typical copy reaches (module docstring)
        threshold, reached = typical, False
    estimate = lambda t: (store_precision(descending, rate, t), precision_recall(positives, negatives, t)[1])  # noqa: E731
    estimated_precision, estimated_recall = estimate(threshold)
    return Calibration(threshold=float(threshold), target_precision=float(precision),
                       estimated_precision=estimated_precision, estimated_recall=estimated_recall, reached=reached,
                       images=len(sampled), copies=len(rows), negatives=len(negatives), ambiguous=0,
                       unreadable=unreadable, seed=seed, seconds=time.perf_counter() - started,
                       curve=tuple((t, *estimate(t)) for t in CURVE_POINTS),
                       copy_precision=precision_recall(positives, negatives, threshold)[0], method="store",
                       store_pairs=len(pairs), score="verified")


def _negative_queries(n: int, sampled: np.ndarray, seed: int) -> np.ndarray:
    """The store rows whose candidate pairs estimate the false-pair rate: the calibration's sampled images plus
    others, up to ``NEGATIVE_QUERIES`` (their pairs are scored already; only the sampled ones have copies)."""
    if n <= NEGATIVE_QUERIES:
        return np.arange(n)
    order = np.random.default_rng([seed, 2]).permutation(n)
    others = order[~np.isin(order, sampled)][:max(0, NEGATIVE_QUERIES - len(sampled))]  # a random subset, in order
    return np.sort(np.r_[sampled, others])


def _store_negatives(pairs: VerifiedPairs, sampled: np.ndarray, positives: np.ndarray, copy_rows: np.ndarray,
                     file_sha256: Sequence[str | None] | None) -> np.ndarray:
    """Verified scores of the query rows' (``sampled``) candidate pairs, less probable duplicates already in the data.

    Left out: partners with the same file bytes, partners scoring at least ``SURE_COPY_QUANTILE`` of
    the copies, and the ``AMBIGUOUS_RANK`` best partners when they score as high as the original's
    own copies (or a typical copy, when its copies are harsher) — as ``calibrate._compare`` does.
    """
    sure = float(np.quantile(positives, SURE_COPY_QUANTILE))
    typical = float(np.quantile(positives, DUPLICATE_FLOOR_QUANTILE))
    own_floor = {int(row): typical for row in sampled.tolist()}
    for row, score in zip(copy_rows.tolist(), positives.tolist()):
        own_floor[row] = min(own_floor[row], score)
    size = max(int(pairs.first.max(initial=0)), int(pairs.second.max(initial=0)), int(sampled.max())) + 1
    is_sampled = np.zeros(size, bool)
    is_sampled[sampled] = True
    rows = np.r_[pairs.first, pairs.second].astype(np.int64)
    partners = np.r_[pairs.second, pairs.first].astype(np.int64)
    scores = np.r_[pairs.score, pairs.score].astype(np.float64)
    keep = is_sampled[rows]
    rows, partners, scores = rows[keep], partners[keep], scores[keep]
    order = np.lexsort((-scores, rows))  # by row, best partner first
    rows, partners, scores = rows[order], partners[order], scores[order]
    out: list[float] = []
    if len(rows) == 0:
        return np.asarray(out, np.float64)
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    for begin, end in zip(starts.tolist(), np.r_[starts[1:], len(rows)].tolist()):
        row = int(rows[begin])
        mine, theirs = scores[begin:end], partners[begin:end]
        same_file = np.array([bool(file_sha256[row] and file_sha256[int(p)] == file_sha256[row])
                              for p in theirs.tolist()], bool) if file_sha256 is not None else np.zeros(len(mine), bool)
        drop = same_file | (mine >= sure)
        near = np.flatnonzero(~drop)[:AMBIGUOUS_RANK]
        drop[near[mine[near] >= own_floor[row]]] = True
        out.extend(mine[~drop].tolist())
    return np.asarray(out, np.float64)
