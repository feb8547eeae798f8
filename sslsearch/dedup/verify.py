"""Pixel verification of candidate pairs: how well one image, edited, lines up with the other.

An embedding says two images look alike; a duplicate is more than that: one is the other after a
pad, a crop, a flip, a rotation, a re-encode, a rescale or a colour change. Two distinct drawings in
one style (a folder icon with a video emblem and one with a music emblem) can embed closer than a
padded copy does to its original, and no threshold on the embedding separates them — measured on
real icon sets, that is why a cosine threshold found 13 % of the copies at the precision asked for.

So each candidate pair is checked on pixels, the way the edits act on them:

1. *canonical view* — the uniform border is trimmed (twice: a pad, then the margin inside it) and
   the rest centred on a square of the picture's own background colour (a picture with no such
   border is stretched to a square instead): a pad or a rescale no longer moves anything, and a
   darkened copy stays the original times a gain;
2. *variants* — the canonical view of one image is mirrored, rotated by up to 15 degrees and cut
   to windows keeping 71-85 % of its area, square or cut on one side (each re-trimmed), ``VARIANTS``
   in all;
3. *coarse score* — the best normalised cross-correlation of a variant with the other image's
   canonical view, both at ``SIZE`` px, taken in both directions (a rotated variant's filled
   corners left out: a copy may have filled them in any colour). In colour when both are in
   colour; when either is greyscale, on luminance, times the ratio of the two luminance contrasts
   (when below ``CONTRAST_TOLERANCE``), so a greyscale copy matches its original but a black icon
   does not match the same shape in pink;
4. *aligned score* — a pair whose coarse score reaches ``align.REFINE_FLOOR`` is aligned further
   from its best variant and scored on shape and tone (``align.py``); that score replaces the
   coarse one.

The score is in [-1, 1] and reads like a cosine: 1 is the same picture up to the edits tried.
Cost: ``VARIANTS`` (62) small PIL operations per image taking part in a pair, on the CPU, whatever the encoder
(about 5 ms of CPU an image), and the alignment of the pairs that reach it (8-13 ms of CPU a pair on
2 shared cores); ``verify_pairs`` holds every taking-part image's canonical view (up to
``WORK_SIZE`` px, ~27 KB) in memory while it runs.
"""
from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageFilter, ImageOps

from .align import REFINE_FLOOR, REFINE_SIZE, SOURCE_SIZE, VariantSpec, image_tensor, refined_scores, variant_transform

SIZE = 16  # px of the compared views: coarse enough for JPEG, rescaling and a photo's texture, fine enough for
# clip-art (measured on the real dedup sets: 24 px lost photo copies to misalignment, 12 px lost detail)
UNIFORM_RING_OUTLIERS = 0.05  # a border may have this fraction of its outer ring off its colour (JPEG noise)
BORDER_TOLERANCE = 24  # a pixel differing from the border colour by more than this (0-255) is content
ROTATIONS = (-15, -10, -5, 5, 10, 15)  # degrees tried
CROP_SCALES = (0.84, 0.92)  # side of the windows tried (71 % and 85 % of the area), at 5 places each
# and windows cut on one side only (a side kept at these fractions, the other whole): a crop of another shape, which
# the canonical view stretched square (measured on the real dedup sets, on the candidate pairs scored 0.85 or more,
# best F1 at precision >= 0.95: wallpapers-dedup 0.933 -> 0.944, crops found 0.71 -> 0.84; icons-dedup 0.920 ->
# 0.923, crops 0.66 -> 0.70; a third cut at 0.76 added nothing)
SIDE_CUTS = (0.84, 0.92)
VARIANT_SIZE = 2 * SIZE  # px of the canonical view the variants are cut from
WORK_SIZE = 96  # images are shrunk to at most this many px a side first (the views are SIZE px)
CONTRAST_TOLERANCE = 0.65  # luminance contrasts within this ratio count as one (a brightness edit of ±30 %)
GRAY_SATURATION = 0.08  # a view whose channels differ by less than this (0-1) everywhere is greyscale
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_PLACES = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.5))


def trim_border(image: Image.Image, tolerance: int = BORDER_TOLERANCE, rounds: int = 2) -> Image.Image:
    """``image`` without its uniform border (the median colour of its edge pixels), ``rounds`` times.

    Example:
        >>> from PIL import ImageOps
        >>> padded = ImageOps.expand(Image.new("RGB", (10, 6), "red"), 5, fill="white")
        >>> trim_border(padded).size
        (10, 6)
    """
    return image.crop(_trim(image, tolerance, rounds)[0])


def _trim(image: Image.Image, tolerance: int, rounds: int
          ) -> tuple[tuple[int, int, int, int], tuple[int, int, int] | None]:
    """The (left, top, right, bottom) box ``trim_border`` keeps, and the colour of the last border trimmed (None
    when none was)."""
    left, top = 0, 0
    trimmed_colour: tuple[int, int, int] | None = None
    for _ in range(rounds):
        if image.width < 3 or image.height < 3:
            break
        pixels = np.asarray(image)
        edge = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]).astype(np.int16)
        median = np.median(edge, axis=0)
        # only a border: nearly all of the outer ring within the tolerance (a photo's edge is not one colour)
        if np.mean(np.abs(edge - median).max(axis=1) > tolerance) > UNIFORM_RING_OUTLIERS:
            break
        colour = tuple(int(c) for c in median)
        # what differs from the border colour by more than the tolerance in any channel, found in C (PIL)
        difference = ImageChops.difference(image, Image.new("RGB", image.size, colour)).split()
        largest = ImageChops.lighter(ImageChops.lighter(difference[0], difference[1]), difference[2])
        if min(image.size) >= 16:  # a 3x3 median drops lone pixels a re-encode scattered over the border
            largest = largest.filter(ImageFilter.MedianFilter(3))
        box = ImageChops.subtract(largest, Image.new("L", image.size, tolerance)).getbbox()  # nonzero: above it
        if box is None or box == (0, 0, image.width, image.height):
            break
        image = image.crop(box)
        left, top = left + box[0], top + box[1]
        trimmed_colour = colour
    return (left, top, left + image.width, top + image.height), trimmed_colour


def canonical(image: Image.Image, rounds: int = 2) -> Image.Image:
    """The image made square: trimmed of its uniform border (``rounds`` of ``trim_border``) and centred on
    the colour of the last border trimmed when it had one (clip-art on its background: a darkened copy's
    grey stays grey, so the view is the original's times a gain), else stretched (a photo cut to another
    shape)."""
    return _canonical(image, None, rounds)[0]


def _canonical(image: Image.Image, mask: Image.Image | None, rounds: int
               ) -> tuple[Image.Image, Image.Image | None]:
    """``canonical`` of ``image``, and the same crop, centring or stretch applied to ``mask`` (an "L" image)."""
    image = image if image.mode == "RGB" else image.convert("RGB")
    box, background = _trim(image, BORDER_TOLERANCE, rounds)
    trimmed = image.crop(box)
    mask = mask.crop(box) if mask is not None else None
    if trimmed.width == trimmed.height:
        return trimmed, mask
    side = max(trimmed.size)
    if trimmed.size == image.size:  # no border: a crop of a photo, whose aspect a copy may have changed
        return trimmed.resize((side, side), Image.BILINEAR), mask.resize((side, side), Image.BILINEAR) if mask else None
    square = Image.new("RGB", (side, side), background or (255, 255, 255))
    offset = ((side - trimmed.width) // 2, (side - trimmed.height) // 2)
    square.paste(trimmed, offset)
    if mask is not None:  # the background it is centred on is the canonical view's own, compared as such
        canvas = Image.new("L", (side, side), 255)
        canvas.paste(mask, offset)
        mask = canvas
    return square, mask


def working_view(image: Image.Image) -> Image.Image:
    """The canonical view at most ``WORK_SIZE`` px a side: shrunk to 4 × that, trimmed, then shrunk, so a pad
    comes off at (near) full resolution and the copy's view matches its original's."""
    image = image.convert("RGB") if image.mode != "RGB" else image.copy()
    image.thumbnail((4 * WORK_SIZE, 4 * WORK_SIZE), Image.BILINEAR)
    view = canonical(image)
    view.thumbnail((WORK_SIZE, WORK_SIZE), Image.BILINEAR)
    return view


VARIANT_SPECS: tuple[VariantSpec, ...] = tuple(
    spec for mirror in (False, True) for spec in (
        VariantSpec(mirror, 0.0, False, None),
        *(VariantSpec(mirror, float(degrees), expand, None) for degrees in ROTATIONS for expand in (True, False)),
        *(VariantSpec(mirror, 0.0, False, (scale, scale, fx, fy)) for scale in CROP_SCALES for fx, fy in _PLACES),
        *(VariantSpec(mirror, 0.0, False, window) for cut in SIDE_CUTS for place in (0.0, 1.0)
          for window in ((1.0, cut, 0.5, place), (cut, 1.0, place, 0.5)))))
VARIANTS = len(VARIANT_SPECS)


def variants(view: Image.Image, specs: Sequence[VariantSpec] = VARIANT_SPECS) -> list[Image.Image]:
    """The canonical ``view`` edited the ways a copy may differ (``VARIANT_SPECS``: identity first, then rotated
    (a copy's canvas may have grown to hold the corners, or not) and cut, all of it mirrored too), or as ``specs``."""
    return _variants(view, specs, masks=False)[0]


def variants_and_masks(view: Image.Image, specs: Sequence[VariantSpec] = VARIANT_SPECS
                       ) -> tuple[list[Image.Image], list[np.ndarray | None]]:
    """``variants`` and, for each, the (SIZE, SIZE) bool mask of its pixels that come from the view (through
    the same trim and centring), or None when all do: a rotation's corners are filled, and a copy may have
    filled them in any colour (white, black, its mean colour), so they are left out of the comparison."""
    return _variants(view, specs, masks=True)


def _variants(view: Image.Image, specs: Sequence[VariantSpec], masks: bool
              ) -> tuple[list[Image.Image], list[np.ndarray | None]]:
    if view.width > VARIANT_SIZE:  # twice the compared size is detail enough, and far less work than 96 px
        view = view.resize((VARIANT_SIZE, VARIANT_SIZE), Image.BILINEAR)
    mirrored = ImageOps.mirror(view)
    out: list[Image.Image] = []
    kept: list[np.ndarray | None] = []
    for spec in specs:
        image = mirrored if spec.mirror else view
        mask = None
        if spec.degrees:
            rotated = image.rotate(spec.degrees, resample=Image.BILINEAR, expand=spec.expand, fillcolor=(255, 255, 255))
            image, filled = _canonical(rotated, _fill_mask(view.width, spec) if masks else None, rounds=1)
            if filled is not None:
                mask = np.asarray(filled.resize((SIZE, SIZE), Image.BILINEAR)) >= 250
        elif spec.crop is not None:
            width, height, fx, fy = spec.crop
            side = image.width
            cut_x, cut_y = max(1, round(side * width)), max(1, round(side * height))
            x, y = round((side - cut_x) * fx), round((side - cut_y) * fy)
            image = canonical(image.crop((x, y, x + cut_x, y + cut_y)), rounds=1)
        out.append(image)
        kept.append(mask)
    return out, kept


@functools.lru_cache(maxsize=256)
def _fill_mask(side: int, spec: VariantSpec) -> Image.Image:
    """An "L" image: 255 where a ``side``-px square rotated as ``spec`` holds the picture, 0 where the fill is
    (cached: read only, by crops and pastes that make new images)."""
    return Image.new("L", (side, side), 255).rotate(spec.degrees, resample=Image.BILINEAR, expand=spec.expand,
                                                    fillcolor=0)


@dataclass(frozen=True)
class Views:
    """Canonical views at ``SIZE`` px, flattened and normalised (zero mean, unit norm).

    Attributes:
        colour: (n, SIZE*SIZE*3) float32.
        luminance: (n, SIZE*SIZE) float32.
        contrast: (n,) standard deviation of the luminance before normalising (0-1 scale).
        gray: (n,) bool, the view has (almost) no colour.
    """

    colour: np.ndarray
    luminance: np.ndarray
    contrast: np.ndarray
    gray: np.ndarray


def views(images: Sequence[Image.Image]) -> Views:
    """``Views`` of canonical images (already passed through ``canonical``)."""
    if not images:
        return Views(np.zeros((0, SIZE * SIZE * 3), np.float32), np.zeros((0, SIZE * SIZE), np.float32),
                     np.zeros(0, np.float32), np.zeros(0, bool))
    rgb = np.stack([np.asarray(im.resize((SIZE, SIZE), Image.BILINEAR), np.float32) for im in images]) / 255.0
    luminance = (rgb @ _LUMA).reshape(len(rgb), -1)
    gray = np.abs(rgb - rgb.mean(axis=3, keepdims=True)).reshape(len(rgb), -1).max(axis=1) < GRAY_SATURATION
    return Views(_normalise(rgb.reshape(len(rgb), -1)), _normalise(luminance), luminance.std(axis=1), gray)


def _normalise(rows: np.ndarray) -> np.ndarray:
    rows = rows - rows.mean(axis=1, keepdims=True)
    return (rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-6)).astype(np.float32)


def match_scores(edited: Views, target: Views, target_index: np.ndarray,
                 masks: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
    """(m, len(target_index)) score of each edited view against each chosen target view (module docstring),
    compared only over the pixels of ``masks[i]`` for an edited view that has one."""
    colour = _masked_products(edited.colour, target.colour[target_index], masks, 3)
    contrast_a = edited.contrast[:, None]
    contrast_b = target.contrast[target_index][None, :]
    ratio = np.minimum(contrast_a, contrast_b) / np.maximum(np.maximum(contrast_a, contrast_b), 1e-6)
    ratio = np.minimum(ratio / CONTRAST_TOLERANCE, 1.0)
    luminance = _masked_products(edited.luminance, target.luminance[target_index], masks, 1) * ratio
    either_gray = edited.gray[:, None] | target.gray[target_index][None, :]
    return np.where(either_gray, luminance, colour)


def _masked_products(edited: np.ndarray, target: np.ndarray, masks: Sequence[np.ndarray | None] | None,
                     channels: int) -> np.ndarray:
    """Normalised cross-correlations of normalised rows, each edited row's over its mask's pixels (all: None).

    The correlation is unchanged by a row's scale and offset, so the stored normalised rows serve: the
    edited row is centred and scaled within its mask, and each target row's spread within the mask comes
    from two products with the mask."""
    products = edited @ target.T
    if masks is None or all(mask is None for mask in masks):
        return products
    rows = [i for i, mask in enumerate(masks) if mask is not None]
    weights = np.stack([np.repeat(masks[i].reshape(-1), channels) for i in rows]).astype(np.float32)  # (r, d)
    count = np.maximum(weights.sum(axis=1, keepdims=True), 1.0)
    part = edited[rows] * weights
    part = (part - weights * (part.sum(axis=1, keepdims=True) / count))
    part /= np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-6)
    spread = weights @ (target ** 2).T - (weights @ target.T) ** 2 / count  # (r, k): within-mask variance × count
    # a target flat within the mask has no shape there to correlate with: 0, not rounding noise over ~0
    flat = spread < 1e-4
    products[rows] = np.where(flat, 0.0, (part @ target.T) / np.sqrt(np.maximum(spread, 1e-4)))
    return np.clip(products, -1.0, 1.0)


def verify_pairs(first: np.ndarray, second: np.ndarray, load: Callable[[int], Image.Image | None], *,
                 progress: Callable[[int], None] | None = None, prepared: bool = False) -> np.ndarray:
    """The verification score of each pair (``first[i]``, ``second[i]``) of image numbers.

    Each image taking part is loaded once (``load(number)``; None when unreadable, whose pairs score
    -1), its variants made once and matched against all its partners' canonical views; a pair's score
    is the better of its two directions.

    Args:
        first, second: (p,) int64 image numbers of the pairs.
        load: the image of a number, or None.
        progress: called with the count of images done, as they are done.
        prepared: ``load`` gives ``working_view``s already (made once by the caller, e.g. while
            computing candidate thumbnails), not images to decode and trim again.

    Returns:
        (p,) float32 scores in [-1, 1].

    Example:
        >>> pictures = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
        >>> verify_pairs(np.array([0]), np.array([1]), pictures.__getitem__).shape
        (1,)
    """
    first, second = np.asarray(first, np.int64), np.asarray(second, np.int64)
    scores = np.full(len(first), -1.0, np.float32)
    if len(first) == 0:
        return scores
    partners: dict[int, list[tuple[int, int]]] = defaultdict(list)  # image -> (pair index, other image)
    for index, (a, b) in enumerate(zip(first.tolist(), second.tolist())):
        partners[a].append((index, b))
        partners[b].append((index, a))
    numbers = sorted(partners)
    canonical_views: dict[int, Image.Image] = {}
    for number in numbers:
        image = load(number)
        if image is not None:
            canonical_views[number] = image if prepared else working_view(image)
    readable = sorted(canonical_views)
    position = {number: i for i, number in enumerate(readable)}
    base = views([canonical_views[n] for n in readable])
    source = np.full(len(first), -1, np.int64)  # which image's variant matched best (a position in readable) ...
    variant = np.zeros(len(first), np.int64)  # ... and which variant
    for done, number in enumerate(readable, 1):
        pairs = [(index, other) for index, other in partners[number] if other in position]
        if pairs:
            edited_images, masks = variants_and_masks(canonical_views[number])
            others = np.array([position[other] for _, other in pairs], np.int64)
            matches = match_scores(views(edited_images), base, others, masks)
            best, which = matches.max(axis=0).astype(np.float32), matches.argmax(axis=0)
            indices = np.array([index for index, _ in pairs], np.int64)
            better = best > scores[indices]
            scores[indices[better]] = best[better]
            source[indices[better]] = position[number]
            variant[indices[better]] = which[better]
        if progress is not None:
            progress(done)
    fine = np.flatnonzero((scores >= REFINE_FLOOR) & (source >= 0))
    if len(fine):
        scores[fine] = _refine(fine, first, second, source, variant, readable, canonical_views, base.gray)
    return np.clip(scores, -1.0, 1.0)


def _refine(fine: np.ndarray, first: np.ndarray, second: np.ndarray, source: np.ndarray, variant: np.ndarray,
            readable: list[int], canonical_views: dict[int, Image.Image], gray: np.ndarray) -> np.ndarray:
    """The aligned scores (``align.py``) of the pairs at positions ``fine``, from their best coarse variant."""
    numbers = np.asarray(readable, np.int64)
    source_position = source[fine]
    source_number = numbers[source_position]
    target_number = np.where(first[fine] == source_number, second[fine], first[fine])
    target_position = np.searchsorted(numbers, target_number)
    taking_part = np.unique(np.r_[source_position, target_position])
    local = {int(p): i for i, p in enumerate(taking_part.tolist())}
    pictures = [canonical_views[int(numbers[p])] for p in taking_part.tolist()]
    starts = np.stack([variant_transform(VARIANT_SPECS[v]) for v in variant[fine].tolist()])
    grey = np.stack([gray[source_position], gray[target_position]], axis=1)
    return refined_scores(image_tensor(pictures, SOURCE_SIZE), image_tensor(pictures, REFINE_SIZE),
                          np.array([local[p] for p in source_position.tolist()], np.int64),
                          np.array([local[p] for p in target_position.tolist()], np.int64), starts, grey)


def verify_images(images_a: Sequence[Image.Image], images_b: Sequence[Image.Image]) -> np.ndarray:
    """(m,) verification score of each (``images_a[i]``, ``images_b[i]``) pair of in-memory images."""
    pictures = list(images_a) + list(images_b)
    count = len(images_a)
    return verify_pairs(np.arange(count), np.arange(count, 2 * count), pictures.__getitem__)
