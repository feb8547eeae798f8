"""The edits that near-duplicates usually differ by, applied to a PIL image (for threshold calibration).

Two presets (``EDIT_PRESETS``):

* ``classic`` — re-encoding, resizing, a small crop, colour shifts, a watermark and a small
  rotation, each with ranges a little wider than the planted copies of ``sslsearch.sample_data``;
  what the embedding scores (cosine, adjusted) are calibrated on.
* ``full`` — the classic edits with a crop keeping down to 70 % of the area and rotations up to 15
  degrees, plus a pad, a mirror flip and greyscale, and brightness (a gain) for the colour shifts:
  the edits people mean by "the same picture" in real collections, and what the verified score
  (``verify.py``) is calibrated on. Its tone check (``align.py``) takes a change of contrast or
  saturation for another picture (a recoloured icon is another icon), so the preset has none.

A comma-separated list of edit names (``--edits pad,hflip,jpeg``) chooses exactly those.
"""
from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

from ..errors import unknown_name

EDITS: tuple[str, ...] = ("jpeg", "resize", "crop", "color", "watermark", "rotate")  # the classic preset
FULL_EDITS: tuple[str, ...] = ("jpeg", "resize", "wide_crop", "brightness", "watermark", "wide_rotate", "pad", "hflip",
                               "grayscale")
EDIT_PRESETS: dict[str, tuple[str, ...]] = {"classic": EDITS, "full": FULL_EDITS}
_EDIT_COUNT_WEIGHTS = (0.45, 0.4, 0.15)  # probability of 1, 2 or 3 edits per copy (classic)
# full preset: 1 or 2 edits; its edits are wider, and 3 wide edits at once make copies few duplicates resemble
_FULL_COUNT_WEIGHTS = (0.6, 0.4)


def resolve_edits(edits: str | Sequence[str]) -> tuple[str, ...]:
    """A preset name or comma-separated edit names → edit names, checked.

    Raises:
        UnknownNameError: a name that is neither a preset nor an edit.

    Example:
        >>> resolve_edits("pad,hflip")
        ('pad', 'hflip')
    """
    names = [edits] if isinstance(edits, str) and edits in EDIT_PRESETS else \
        [n.strip() for n in (edits.split(",") if isinstance(edits, str) else edits) if n.strip()]
    if len(names) == 1 and names[0] in EDIT_PRESETS:
        return EDIT_PRESETS[names[0]]
    for name in names:
        if name not in _APPLY:
            raise unknown_name("edit", name, (*EDIT_PRESETS, *_APPLY))
    if not names:
        raise unknown_name("edit", "", (*EDIT_PRESETS, *_APPLY))
    return tuple(names)


def edited_copy(image: Image.Image, rng: np.random.Generator,
                edits: Sequence[str] = EDITS) -> tuple[Image.Image, tuple[str, ...]]:
    """A copy of an RGB image with random edits from ``edits`` (names of this module's edits, default the
    classic preset): 1 to 3 for the classic preset, 1 or 2 otherwise; deterministic for ``rng``.

    Returns:
        The edited RGB image and the names of the edits applied, in order.

    Example:
        >>> copy, edits = edited_copy(Image.new("RGB", (64, 64)), np.random.default_rng(0))
        >>> copy.mode, len(edits) >= 1
        ('RGB', True)
    """
    edits = tuple(edits)
    weights = _EDIT_COUNT_WEIGHTS if edits == EDITS else _FULL_COUNT_WEIGHTS
    count = min(len(edits), 1 + int(rng.choice(len(weights), p=weights)))
    chosen = sorted(rng.choice(len(edits), size=count, replace=False).tolist())
    out = image if image.mode == "RGB" else image.convert("RGB")
    for index in chosen:
        out = _APPLY[edits[index]](out, rng)
    return out, tuple(edits[i] for i in chosen)


def jpeg(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Re-encode as JPEG at quality 35..85."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(35, 86)))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def resize(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Scale by 0.5..1.5 (at least 16 px a side), bilinear or bicubic."""
    factor = float(rng.uniform(0.5, 1.5))
    size = (max(16, round(image.width * factor)), max(16, round(image.height * factor)))
    return image.resize(size, Image.BICUBIC if rng.random() < 0.5 else Image.BILINEAR)


def crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Cut 0..10% off each side (the aspect ratio may change)."""
    w, h = image.size
    left, top, right, bottom = (rng.uniform(0, 0.10, 4) * np.array([w, h, w, h])).round().astype(int)
    return image.crop((left, top, max(left + 8, w - right), max(top + 8, h - bottom)))


def color(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Shift brightness and contrast by up to ±20% and saturation by up to ±30%."""
    out = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.8, 1.2)))
    out = ImageEnhance.Contrast(out).enhance(float(rng.uniform(0.8, 1.2)))
    return ImageEnhance.Color(out).enhance(float(rng.uniform(0.7, 1.3)))


def brightness(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brighten or darken by a gain of 0.7..1.3 (clipped at white)."""
    return ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.7, 1.3)))


def watermark(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Draw a short text, about 1/8 of the image high, at a random place, opaque or half-transparent."""
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    font = ImageFont.load_default(size=max(6, image.height // 8))
    text = ("(c) 2024", "sample", "stock", "#42", "PREVIEW")[int(rng.integers(0, 5))]
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = int(rng.integers(0, max(1, image.width - (right - left))))
    y = int(rng.integers(0, max(1, image.height - (bottom - top))))
    shade = 255 if rng.random() < 0.5 else 0
    draw.text((x - left, y - top), text, fill=(shade, shade, shade, int(rng.integers(128, 256))), font=font)
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


def rotate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate by 2..7 degrees either way, the corners filled with the mean border colour."""
    pixels = np.asarray(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]).mean(axis=0)
    degrees = float(rng.uniform(2, 7)) * (1 if rng.random() < 0.5 else -1)
    return image.rotate(degrees, resample=Image.BICUBIC, expand=False, fillcolor=tuple(int(c) for c in border))


def wide_crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A window keeping 70..95 % of the area (aspect within ±15 %), anywhere in the image."""
    w, h = image.size
    area, aspect = float(rng.uniform(0.70, 0.95)), float(rng.uniform(0.87, 1.15))
    cw, ch = min(w, max(8, round(w * np.sqrt(area * aspect)))), min(h, max(8, round(h * np.sqrt(area / aspect))))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return image.crop((x, y, x + cw, y + ch))


def wide_rotate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate by 3..15 degrees either way, the canvas kept or grown, corners in the mean border colour."""
    pixels = np.asarray(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]).mean(axis=0)
    degrees = float(rng.uniform(3, 15)) * (1 if rng.random() < 0.5 else -1)
    return image.rotate(degrees, resample=Image.BICUBIC, expand=bool(rng.random() < 0.5),
                        fillcolor=tuple(int(c) for c in border))


def pad(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A border of 3..25 % of the side on each side, in white, black or the image's mean colour."""
    w, h = image.size
    widths = tuple(int(rng.uniform(0.03, 0.25) * side) for side in (w, h, w, h))
    choice = int(rng.integers(0, 3))
    fill = ((255, 255, 255), (0, 0, 0), tuple(int(c) for c in np.asarray(image).reshape(-1, 3).mean(axis=0)))[choice]
    return ImageOps.expand(image, widths, fill=fill)


def hflip(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Mirror left to right."""
    return ImageOps.mirror(image)


def grayscale(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Greyscale, kept as RGB."""
    return ImageOps.grayscale(image).convert("RGB")


_APPLY = {"jpeg": jpeg, "resize": resize, "crop": crop, "color": color, "brightness": brightness, "watermark": watermark, "rotate": rotate,
          "wide_crop": wide_crop, "wide_rotate": wide_rotate, "pad": pad, "hflip": hflip, "grayscale": grayscale}
