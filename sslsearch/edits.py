"""The image edits that near-duplicates differ by, and named presets of them (sample data, threshold calibration).

An edit is a function ``(PIL RGB image, numpy Generator) -> PIL RGB image``, deterministic for the
generator's state. A preset (``EditPreset``) names a family of edits and how many of them one copy
gets. Three presets (``PRESETS``; their edit names in ``EDIT_PRESETS``):

* ``sample`` — the light edits ``sslsearch.sample_data`` plants its near-duplicates with (JPEG at
  quality 55..79, resize ±12 %, a crop of up to 6 % a side, brightness ±6..15 %, a rotation of 2..5
  degrees, a small watermark), one or two per copy; ``near_duplicates.csv`` names them by their
  labels (``jpeg``, ``resize``, ``crop``, ``brightness``, ``rotate``, ``watermark``).
* ``classic`` — re-encoding, resizing, a small crop, colour shifts, a watermark and a small
  rotation, each with ranges a little wider than the sample preset; what the embedding scores
  (cosine, adjusted) are calibrated on.
* ``full`` — the classic edits with a crop keeping down to 70 % of the area and rotations up to 15
  degrees, plus a pad, a mirror flip and greyscale, and brightness (a gain) for the colour shifts:
  the edits people mean by "the same picture" in real collections, and what the verified score
  (``dedup/verify.py``) is calibrated on. Its tone check (``dedup/align.py``) takes a change of
  contrast or saturation for another picture (a recoloured icon is another icon), so the preset has none.

A comma-separated list of edit names (``--edits pad,hflip,jpeg``) chooses exactly those.

This module needs only PIL and numpy (no torch), so the sample-data generator can import it cheaply;
``sslsearch.dedup.edits`` re-exports it.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

from .errors import InvalidArgumentError, unknown_name

Edit = Callable[[Image.Image, np.random.Generator], Image.Image]

EDITS: tuple[str, ...] = ("jpeg", "resize", "crop", "color", "watermark", "rotate")  # the classic preset
FULL_EDITS: tuple[str, ...] = ("jpeg", "resize", "wide_crop", "brightness", "watermark", "wide_rotate", "pad",
                               "hflip", "grayscale")
SAMPLE_EDITS: tuple[str, ...] = ("light_jpeg", "light_resize", "light_crop", "light_brightness", "light_rotate",
                                 "light_watermark")
SAMPLE_EDIT_LABELS: tuple[str, ...] = ("jpeg", "resize", "crop", "brightness", "rotate", "watermark")
_EDIT_COUNT_WEIGHTS = (0.45, 0.4, 0.15)  # probability of 1, 2 or 3 edits per copy (classic)
# full preset: 1 or 2 edits; its edits are wider, and 3 wide edits at once make copies few duplicates resemble
_FULL_COUNT_WEIGHTS = (0.6, 0.4)
COUNT_DRAWS: tuple[str, ...] = ("weighted", "uniform")


@dataclass(frozen=True)
class EditPreset:
    """A named family of edits and how many of them one copy gets.

    Attributes:
        name: the preset name ("custom" for a list of edit names).
        edits: names of this module's edits, in the order they are drawn from and applied.
        count_weights: probabilities of 1, 2, ... edits per copy (at most ``len(edits)``).
        count_draw: "weighted" draws the count with ``rng.choice(p=count_weights)``; "uniform" with
            ``rng.integers(1, len(count_weights) + 1)`` (the sample data's draw: the same seed must keep
            writing the same files).
        labels: the names reported for the edits, one per edit (default: the edit names).
    """

    name: str
    edits: tuple[str, ...]
    count_weights: tuple[float, ...] = _FULL_COUNT_WEIGHTS
    count_draw: str = "weighted"
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for edit in self.edits:
            if edit not in _APPLY:
                raise unknown_name("edit", edit, _APPLY)
        if not self.edits:
            raise InvalidArgumentError(f"edit preset {self.name!r} has no edits; expected at least one edit name")
        if self.count_draw not in COUNT_DRAWS:
            raise unknown_name("edit count draw", self.count_draw, COUNT_DRAWS)
        if self.labels and len(self.labels) != len(self.edits):
            raise InvalidArgumentError(f"edit preset {self.name!r} has {len(self.labels)} labels for "
                                       f"{len(self.edits)} edits; expected one label per edit (or none)")

    def edited_copy(self, image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, tuple[str, ...]]:
        """A copy of ``image`` with a random count of this preset's edits (see ``edited_copy``)."""
        weights = self.count_weights
        if self.count_draw == "uniform":
            drawn = int(rng.integers(1, len(weights) + 1))
        else:
            drawn = 1 + int(rng.choice(len(weights), p=weights))
        count = min(len(self.edits), drawn)
        chosen = sorted(rng.choice(len(self.edits), size=count, replace=False).tolist())
        out = image if image.mode == "RGB" else image.convert("RGB")
        for index in chosen:
            out = _APPLY[self.edits[index]](out, rng)
        labels = self.labels or self.edits
        return out, tuple(labels[i] for i in chosen)


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


def edit_preset(edits: str | Sequence[str] | EditPreset) -> EditPreset:
    """The preset for a preset name, a preset's edit names, or any other edit names ("custom": 1 or 2 edits).

    Raises:
        UnknownNameError: a name that is neither a preset nor an edit.

    Example:
        >>> edit_preset("sample").labels[:2]
        ('jpeg', 'resize')
    """
    if isinstance(edits, EditPreset):
        return edits
    names = resolve_edits(edits)
    for preset in PRESETS.values():
        if preset.edits == names:
            return preset
    return EditPreset("custom", names)


def edited_copy(image: Image.Image, rng: np.random.Generator,
                edits: str | Sequence[str] | EditPreset = EDITS) -> tuple[Image.Image, tuple[str, ...]]:
    """A copy of an RGB image with random edits from ``edits`` (a preset, its name, or edit names; default
    the classic preset): 1 to 3 for the classic preset, 1 or 2 otherwise; deterministic for ``rng``.

    Returns:
        The edited RGB image and the labels of the edits applied, in order (the edit names, except the
        sample preset's short labels).

    Raises:
        UnknownNameError: a name that is neither a preset nor an edit.

    Example:
        >>> copy, edits = edited_copy(Image.new("RGB", (64, 64)), np.random.default_rng(0))
        >>> copy.mode, len(edits) >= 1
        ('RGB', True)
    """
    return edit_preset(edits).edited_copy(image, rng)


def _reencoded(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def jpeg(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Re-encode as JPEG at quality 35..85."""
    return _reencoded(image, int(rng.integers(35, 86)))


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


# --------------------------------------------------------------------------- the sample preset's light edits


def light_jpeg(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Re-encode as JPEG at quality 55..79."""
    return _reencoded(image, int(rng.integers(55, 80)))


def light_resize(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Scale by 0.88..1.12 (at least 8 px a side), bicubic."""
    factor = float(rng.uniform(0.88, 1.12))
    side = max(8, int(round(image.width * factor)))
    return image.resize((side, max(8, int(round(image.height * factor)))), Image.BICUBIC)


def light_crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Cut 0..6 % off each side and scale back to the original size."""
    w, h = image.size
    left, top, right, bottom = (rng.uniform(0, 0.06, 4) * np.array([w, h, w, h])).round().astype(int)
    return image.crop((left, top, w - right, h - bottom)).resize((w, h), Image.BICUBIC)


def light_brightness(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Darken by 6..15 % or brighten by 6..15 %."""
    factor = float(rng.uniform(0.85, 0.94) if rng.random() < 0.5 else rng.uniform(1.06, 1.15))
    return ImageEnhance.Brightness(image).enhance(factor)


def light_rotate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate by 2..5 degrees either way, the corners filled with the top-left pixel's colour."""
    degrees = float(rng.uniform(2, 5)) * (1 if rng.random() < 0.5 else -1)
    return image.rotate(degrees, resample=Image.BICUBIC, expand=False, fillcolor=image.getpixel((0, 0)))


def light_watermark(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Draw a short white or black text, about 1/7 of the width high, near the bottom left."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=max(6, image.width // 7))
    text = ("(c)", "copy", "wm", "#1", "demo")[int(rng.integers(0, 5))]
    x = int(rng.integers(0, max(1, image.width // 3)))
    y = int(image.height - image.height // 5 - rng.integers(0, max(1, image.height // 8)))
    shade = 255 if rng.random() < 0.5 else 0
    draw.text((x, y), text, fill=(shade, shade, shade), font=font)
    return out


_APPLY: dict[str, Edit] = {
    "jpeg": jpeg, "resize": resize, "crop": crop, "color": color, "brightness": brightness, "watermark": watermark,
    "rotate": rotate,
    "wide_crop": wide_crop, "wide_rotate": wide_rotate, "pad": pad, "hflip": hflip, "grayscale": grayscale,
    "light_jpeg": light_jpeg, "light_resize": light_resize, "light_crop": light_crop,
    "light_brightness": light_brightness, "light_rotate": light_rotate, "light_watermark": light_watermark,
}
PRESETS: dict[str, EditPreset] = {
    "sample": EditPreset("sample", SAMPLE_EDITS, (0.5, 0.5), "uniform", SAMPLE_EDIT_LABELS),
    "classic": EditPreset("classic", EDITS, _EDIT_COUNT_WEIGHTS),
    "full": EditPreset("full", FULL_EDITS, _FULL_COUNT_WEIGHTS),
}
EDIT_PRESETS: dict[str, tuple[str, ...]] = {name: preset.edits for name, preset in PRESETS.items()}
