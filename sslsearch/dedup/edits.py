"""The edits that near-duplicates usually differ by, applied to a PIL image (for threshold calibration).

Re-encoding, resizing, cropping, colour shifts, a watermark and a small rotation, each with
ranges a little wider than the planted copies of ``sslsearch.sample_data``, so a threshold
calibrated on them is not tuned to exactly the edits a benchmark plants.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

EDITS: tuple[str, ...] = ("jpeg", "resize", "crop", "color", "watermark", "rotate")
_EDIT_COUNT_WEIGHTS = (0.45, 0.4, 0.15)  # probability of 1, 2 or 3 edits per copy


def edited_copy(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, tuple[str, ...]]:
    """A copy of an RGB image with 1 to 3 random edits from ``EDITS``; deterministic for ``rng``.

    Returns:
        The edited RGB image and the names of the edits applied, in order.

    Example:
        >>> copy, edits = edited_copy(Image.new("RGB", (64, 64)), np.random.default_rng(0))
        >>> copy.mode, len(edits) >= 1
        ('RGB', True)
    """
    count = 1 + int(rng.choice(len(_EDIT_COUNT_WEIGHTS), p=_EDIT_COUNT_WEIGHTS))
    chosen = sorted(rng.choice(len(EDITS), size=count, replace=False).tolist())
    out = image if image.mode == "RGB" else image.convert("RGB")
    for index in chosen:
        out = _APPLY[EDITS[index]](out, rng)
    return out, tuple(EDITS[i] for i in chosen)


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


_APPLY = {"jpeg": jpeg, "resize": resize, "crop": crop, "color": color, "watermark": watermark, "rotate": rotate}
