"""Fine alignment of a verified pair, and the score it ends with.

The coarse check (``verify.py``) tries a fixed grid of edits at ``verify.SIZE`` px: the best of 62
variants lands within a few degrees, a few per cent of scale and a pixel or two of the copy, which
is enough to find it but not to tell it from a look-alike drawn in the same style. So the pairs
whose coarse score reaches ``REFINE_FLOOR`` are aligned further and scored again:

1. *alignment* — the best variant's transform (mirror, rotation, crop window) is the starting
   point of a similarity transform (scale, rotation, shift, and an aspect within
   ``MAX_LOG_ASPECT``: a crop of another shape was stretched square) fitted by gradient descent on the
   luminance correlation at ``REFINE_SIZE`` px, blurred for the first half of the steps; all the
   pairs at once, in batches, with torch;
2. *shape* — the normalised cross-correlation of the aligned views, shrunk to
   ``REFINE_SIZE / SCORE_POOL`` px (aligned finely, compared coarsely: measured on the real sets,
   comparing at 32 px lost JPEG and watermarked copies to their noise), in colour when both are in
   colour, else on luminance;
3. *tone* — how well the aligned views agree under the one tonal change copies make, a gain
   (brightness, with clipping at white) between ``GAINS[0]`` and ``GAINS[-1]``; greyscale
   conversion keeps luminance, so a grey copy still agrees with its colour original, but the same
   shape in another colour or a lighter ink does not: measured on the real icon set, that is most
   of the look-alikes (status icons in red, green and grey) that pass the shape check.

Only the pixels the aligned source covers are compared (less a pixel at its edge), when they are at
least ``MIN_COVERAGE`` of the view: a rotated copy's corners may be filled in any colour, and a
crop lacks the margin it cut. The score is the lower of shape and tone, the better of the two
directions (a brightened copy clipped at white is the original under a gain, not the reverse; the
shape is compared after that gain), in [-1, 1], read like the coarse one. Measured on the
real dedup sets (``benchmarks/bench_dedup.py --dataset NAME``): see docs/benchmarks.md.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

REFINE_FLOOR = 0.9  # pairs scoring less at the coarse check keep their coarse score (below any threshold chosen
# on the real sets; measured there, 0.85 lifted as many look-alikes as copies above 0.985, at twice the cost)
REFINE_SIZE = 32  # px of the compared views
SCORE_POOL = 2  # the aligned views are scored at REFINE_SIZE / SCORE_POOL px
SOURCE_SIZE = 2 * REFINE_SIZE  # px of the view the aligned one is sampled from
STEPS = 40  # gradient steps of the alignment
LEARNING_RATE = 0.01
MAX_LOG_ASPECT = 0.08  # the alignment may stretch one axis against the other by up to exp(2 × this) (a crop of
# another shape, which the canonical view stretched square: the crop edit keeps the aspect within ±15 %; measured on
# the real dedup sets, best F1 at precision >= 0.95: icons 0.910 -> 0.920, wallpapers 0.925 -> 0.936)
# pixels the aligned source does not cover (a rotated copy's corners, the margin a crop cut off) are left out of the
# comparison when the rest covers at least this share of the view: a copy's corners may be filled in any colour
MIN_COVERAGE = 0.6
BATCH = 1024  # pairs aligned at once (about 60 MB of tensors)
GAINS = np.linspace(0.65, 1.55, 19, dtype=np.float32)  # brightness gains tried (a ±30 % edit, either way)
# between a greyscale view and a colour one: greyscale conversion keeps luminance, so only a small gain (else a red
# status icon would pass for a grey copy of the grey one, 0.42 against 0.5 luminance)
GREY_GAINS = GAINS[(GAINS >= 0.9) & (GAINS <= 1.1)]
_LUMA = torch.tensor([0.299, 0.587, 0.114])


class VariantSpec(NamedTuple):
    """How a coarse variant was made from a canonical view (``verify.variants``).

    Attributes:
        mirror: mirrored left to right first.
        degrees: rotation, counter-clockwise (PIL's ``rotate``), 0 for none.
        expand: the rotated canvas grew to hold the corners.
        crop: (width, height, fx, fy) window of ``width`` × ``height`` times the side, at fraction (fx, fy) of the
            slack along each axis, or None.
    """

    mirror: bool
    degrees: float
    expand: bool
    crop: tuple[float, float, float] | None


def variant_transform(spec: VariantSpec) -> np.ndarray:
    """(2, 3) affine map, in ``torch.nn.functional.affine_grid``'s normalised coordinates, from the
    variant's pixels to the canonical view's: the starting point of the alignment.

    Example:
        >>> variant_transform(VariantSpec(True, 0.0, False, None)).tolist()
        [[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    """
    transform = np.eye(3)
    if spec.degrees:
        angle = np.deg2rad(spec.degrees)
        grow = abs(np.cos(angle)) + abs(np.sin(angle)) if spec.expand else 1.0
        transform = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0],
                              [0.0, 0.0, 1.0]]) @ np.diag([grow, grow, 1.0])
    if spec.crop is not None:
        width, height, fx, fy = spec.crop
        transform = np.array([[width, 0.0, (2 * fx - 1) * (1.0 - width)], [0.0, height, (2 * fy - 1) * (1.0 - height)],
                              [0.0, 0.0, 1.0]])
    if spec.mirror:
        transform = np.diag([-1.0, 1.0, 1.0]) @ transform
    return transform[:2].astype(np.float32)


def image_tensor(views: Sequence[Image.Image], size: int) -> torch.Tensor:
    """(n, 3, size, size) uint8 of square RGB views (a quarter of the memory of floats; batches convert)."""
    if not views:
        return torch.zeros(0, 3, size, size, dtype=torch.uint8)
    pixels = np.stack([np.asarray(view.resize((size, size), Image.BILINEAR), np.uint8) for view in views])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()


def _ncc(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised cross-correlation of each row pair, over the pixels ``weight`` (p, 1, h, w) keeps (all: None)."""
    if weight is None:
        a, b = a.flatten(1), b.flatten(1)
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-6)
    w = weight.expand_as(a).flatten(1)
    a, b = a.flatten(1), b.flatten(1)
    total = w.sum(1, keepdim=True).clamp_min(1e-6)
    a, b = a - (w * a).sum(1, keepdim=True) / total, b - (w * b).sum(1, keepdim=True) / total
    return (w * a * b).sum(1) / torch.sqrt((w * a * a).sum(1) * (w * b * b).sum(1) + 1e-12)


def _warp(source: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
    """``source`` sampled through ``transform`` on a REFINE_SIZE grid; outside it is white (as canonical views' pads)."""
    grid = F.affine_grid(transform, [len(source), source.shape[1], REFINE_SIZE, REFINE_SIZE], align_corners=False)
    return F.grid_sample(source - 1.0, grid, mode="bilinear", align_corners=False) + 1.0


def _inside(transform: torch.Tensor) -> torch.Tensor:
    """(p, 1, REFINE_SIZE, REFINE_SIZE) 1 where ``transform`` samples inside the source, 0 where it falls outside."""
    grid = F.affine_grid(transform, [len(transform), 1, REFINE_SIZE, REFINE_SIZE], align_corners=False)
    return (grid.abs() <= 1.0).all(dim=-1)[:, None].float()


def _compared(inside: torch.Tensor) -> torch.Tensor:
    """The weight of the compared pixels: those inside the source and a pixel away from its edge (where a copy
    blends its fill into the picture), when the source covers at least ``MIN_COVERAGE`` of the view; else all of
    them (the white outside then counts against the pair, as it should for a crop that small)."""
    enough = inside.flatten(1).mean(1) >= MIN_COVERAGE
    eroded = -F.max_pool2d(-inside, 3, stride=1, padding=1)
    return torch.where(enough[:, None, None, None], eroded, torch.ones_like(inside))


def align(source: torch.Tensor, target: torch.Tensor, start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``source`` (p, 3, SOURCE_SIZE²) aligned to ``target`` (p, 3, REFINE_SIZE²) from the ``start`` transforms (p, 2, 3).

    A similarity transform (log-scale, angle, shift, bounded log-aspect) composed after ``start`` is fitted by Adam on
    the luminance correlation over the pixels the start covers (``_compared``); returns the aligned
    source, (p, 3, REFINE_SIZE, REFINE_SIZE), and which of its pixels the source covers (p, 1, ...).
    """
    count = len(source)
    source_luma = torch.einsum("pchw,c->phw", source, _LUMA)[:, None]
    target_luma = torch.einsum("pchw,c->phw", target, _LUMA)[:, None]
    blurred_target = F.avg_pool2d(target_luma, 2)
    params = torch.zeros(count, 5, requires_grad=True)
    bottom = torch.tensor([0.0, 0.0, 1.0]).expand(count, 1, 3)

    def transform() -> torch.Tensor:
        scale = torch.exp(params[:, 0])
        aspect = torch.exp(MAX_LOG_ASPECT * torch.tanh(params[:, 4]))  # a crop of another shape, stretched square
        sx, sy = scale * aspect, scale / aspect
        cos, sin = torch.cos(params[:, 1]), torch.sin(params[:, 1])
        step = torch.stack([torch.stack([cos * sx, -sin * sy, params[:, 2]], 1),
                            torch.stack([sin * sx, cos * sy, params[:, 3]], 1)], 1)
        return start @ torch.cat([step, bottom], 1)

    optimiser = torch.optim.Adam([params], lr=LEARNING_RATE)
    with torch.enable_grad():
        # compared where the starting transform covers the target: fixed, else the fit could shrink the source to
        # leave out what disagrees
        weight = _compared(_inside(start))
        blurred_weight = (F.avg_pool2d(weight, 2) > 0.999).float()
        for step in range(STEPS):
            warped = _warp(source_luma, transform())
            if step < STEPS // 2:  # coarse first: a blurred view has a wider basin
                loss = (1.0 - _ncc(F.avg_pool2d(warped, 2), blurred_target, blurred_weight)).sum()
            else:
                loss = (1.0 - _ncc(warped, target_luma, weight)).sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        final = transform()
        return _warp(source, final), _inside(final)


def tone_scores(a: torch.Tensor, b: torch.Tensor, gains: np.ndarray = GAINS,
                weight: torch.Tensor | None = None) -> torch.Tensor:
    """(p,) how well ``b`` is ``a`` under a brightness gain: sqrt(1 - min_g |b - min(g a, 1)|² / |b - mean b|²),
    rows flattened, over the pixels ``weight`` (p, 1, h, w) keeps; 1 for a pure gain, lower for an offset
    (another ink on the same white)."""
    return _tone(a, b, gains, weight)[0]


def _tone(a: torch.Tensor, b: torch.Tensor, gains: np.ndarray, weight: torch.Tensor | None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``tone_scores`` and the best gain of each row."""
    w = torch.ones_like(a).flatten(1) if weight is None else weight.expand_as(a).flatten(1)
    a, b = a.flatten(1), b.flatten(1)
    mean_b = (w * b).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1e-6)
    spread = (w * (b - mean_b) ** 2).sum(1).clamp_min(1e-6)
    residuals = torch.stack([(w * (b - torch.clamp(gain * a, max=1.0)) ** 2).sum(1) for gain in gains.tolist()])
    residual, best = residuals.min(0)
    return torch.sqrt(torch.clamp(1.0 - residual / spread, 0.0, 1.0)), torch.from_numpy(gains)[best]


def pair_scores(a: torch.Tensor, b: torch.Tensor, gains: np.ndarray, weight: torch.Tensor | None) -> torch.Tensor:
    """(p,) the lower of shape and tone, the better of the two directions: ``b`` as ``a`` brightened or darkened
    (clipped at white, as a brightened copy is), and ``a`` as ``b`` so; shape is the correlation of the one
    under its best gain with the other, so a copy whose highlights clipped keeps its shape."""
    scores = []
    for x, y in ((a, b), (b, a)):
        tone, gain = _tone(x, y, gains, weight)
        shape = _ncc(torch.clamp(gain[:, None, None, None] * x, max=1.0), y, weight)
        scores.append(torch.minimum(shape, tone))
    return torch.maximum(scores[0], scores[1])


def refined_scores(sources: torch.Tensor, targets: torch.Tensor, source_index: np.ndarray, target_index: np.ndarray,
                   starts: np.ndarray, gray: np.ndarray) -> np.ndarray:
    """(p,) final score of each pair: image ``source_index[i]`` (row of ``sources``, uint8, SOURCE_SIZE px) aligned to
    ``target_index[i]`` (row of ``targets``, REFINE_SIZE px) from ``starts[i]`` (2, 3); luminance only where
    either image is greyscale (``gray``: (p, 2) flags of source and target), with ``GREY_GAINS`` where just one
    is. The lower of the shape and the tone scores (module docstring)."""
    out = np.zeros(len(source_index), np.float32)
    with torch.no_grad():
        for low in range(0, len(source_index), BATCH):
            part = slice(low, low + BATCH)
            source = sources[source_index[part]].float() / 255.0
            target = targets[target_index[part]].float() / 255.0
            aligned, inside = align(source, target, torch.from_numpy(starts[part]))
            if SCORE_POOL > 1:  # scored coarser than aligned: re-encoding noise and small overlays average out
                aligned, target = F.avg_pool2d(aligned, SCORE_POOL), F.avg_pool2d(target, SCORE_POOL)
                inside = (F.avg_pool2d(inside, SCORE_POOL) > 0.999).float()
            weight = _compared(inside)
            luma_a = torch.einsum("pchw,c->phw", aligned, _LUMA)[:, None]
            luma_b = torch.einsum("pchw,c->phw", target, _LUMA)[:, None]
            grey = torch.from_numpy(gray[part].any(axis=1))
            mixed = torch.from_numpy(gray[part, 0] != gray[part, 1])
            score = torch.where(grey, torch.where(mixed, pair_scores(luma_a, luma_b, GREY_GAINS, weight),
                                                  pair_scores(luma_a, luma_b, GAINS, weight)),
                                pair_scores(aligned, target, GAINS, weight))
            out[part] = score.numpy()
    return out
