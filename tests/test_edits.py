"""Tests for sslsearch.edits: presets, name resolution, and the sample preset against the code it replaced."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

import sslsearch.dedup.edits as dedup_edits
from sslsearch.edits import (EDIT_PRESETS, PRESETS, SAMPLE_EDIT_LABELS, EditPreset, edit_preset, edited_copy,
                             resolve_edits)
from sslsearch.errors import InvalidArgumentError, UnknownNameError
from sslsearch.sample_data import DUPLICATE_EDITS, make_sample_dataset, read_near_duplicate_edits, render_image


# --------------------------------------------------------------------------- the old sample_data code path, verbatim
# (sslsearch/sample_data.py before the edits moved to sslsearch/edits.py): the sample preset must make exactly these
# images for the same generator draws, so a seed keeps writing the same sample folder.

_OLD_DUPLICATE_EDITS = ("jpeg", "resize", "crop", "brightness", "rotate", "watermark")


def _old_edited_copy(image, rng):
    n_edits = int(rng.integers(1, 3))
    edits = [_OLD_DUPLICATE_EDITS[index] for index in sorted(rng.choice(len(_OLD_DUPLICATE_EDITS), size=n_edits,
                                                                        replace=False).tolist())]
    out = image
    for name in edits:
        out = _OLD_EDITS[name](out, rng)
    return out, tuple(edits)


def _old_jpeg(image, rng):
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(55, 80)))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _old_resize(image, rng):
    factor = float(rng.uniform(0.88, 1.12))
    side = max(8, int(round(image.width * factor)))
    return image.resize((side, max(8, int(round(image.height * factor)))), Image.BICUBIC)


def _old_crop(image, rng):
    w, h = image.size
    left, top, right, bottom = (rng.uniform(0, 0.06, 4) * np.array([w, h, w, h])).round().astype(int)
    return image.crop((left, top, w - right, h - bottom)).resize((w, h), Image.BICUBIC)


def _old_brightness(image, rng):
    factor = float(rng.uniform(0.85, 0.94) if rng.random() < 0.5 else rng.uniform(1.06, 1.15))
    return ImageEnhance.Brightness(image).enhance(factor)


def _old_rotate(image, rng):
    degrees = float(rng.uniform(2, 5)) * (1 if rng.random() < 0.5 else -1)
    return image.rotate(degrees, resample=Image.BICUBIC, expand=False, fillcolor=image.getpixel((0, 0)))


def _old_watermark(image, rng):
    out = image.copy()
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=max(6, image.width // 7))
    text = ("(c)", "copy", "wm", "#1", "demo")[int(rng.integers(0, 5))]
    x = int(rng.integers(0, max(1, image.width // 3)))
    y = int(image.height - image.height // 5 - rng.integers(0, max(1, image.height // 8)))
    shade = 255 if rng.random() < 0.5 else 0
    draw.text((x, y), text, fill=(shade, shade, shade), font=font)
    return out


_OLD_EDITS = {"jpeg": _old_jpeg, "resize": _old_resize, "crop": _old_crop, "brightness": _old_brightness,
              "rotate": _old_rotate, "watermark": _old_watermark}


# --------------------------------------------------------------------------- tests


def test_sample_preset_makes_the_old_sample_images() -> None:
    seen: set[str] = set()
    for i in range(60):
        image = render_image(("circle", "star", "checker")[i % 3], np.random.default_rng([5, 0, i]), (24, 40)[i % 2])
        new_rng, old_rng = np.random.default_rng([5, 2, i]), np.random.default_rng([5, 2, i])
        new, new_edits = PRESETS["sample"].edited_copy(image, new_rng)
        old, old_edits = _old_edited_copy(image, old_rng)
        assert new_edits == old_edits
        assert new.size == old.size and new.mode == old.mode == "RGB"
        assert new.tobytes() == old.tobytes(), (i, new_edits)
        assert new_rng.random() == old_rng.random()  # the same draws consumed (the file's encoder draws next)
        seen.update(new_edits)
    assert seen == set(_OLD_DUPLICATE_EDITS)
    assert DUPLICATE_EDITS == SAMPLE_EDIT_LABELS == _OLD_DUPLICATE_EDITS


def test_sample_data_labels_and_same_seed_same_files(tmp_path: Path) -> None:
    first = make_sample_dataset(tmp_path / "a", n_images=30, image_size=24, seed=2, duplicate_fraction=0.3)
    second = make_sample_dataset(tmp_path / "b", n_images=30, image_size=24, seed=2, duplicate_fraction=0.3)
    labels = read_near_duplicate_edits(first.root)
    assert len(labels) == 9 and all(set(names) <= set(_OLD_DUPLICATE_EDITS) for names in labels.values())
    for original, copy in first.near_duplicates:
        assert (first.root / copy).read_bytes() == (second.root / copy).read_bytes()


def test_presets_and_resolution() -> None:
    assert set(EDIT_PRESETS) == {"sample", "classic", "full"}
    for name, preset in PRESETS.items():
        assert preset.name == name and EDIT_PRESETS[name] == preset.edits == resolve_edits(name)
        assert edit_preset(name) is preset and edit_preset(preset.edits) is preset
    custom = edit_preset("pad, hflip")
    assert custom.name == "custom" and custom.edits == ("pad", "hflip")
    with pytest.raises(UnknownNameError, match="did you mean"):
        edit_preset("light_jpg")
    with pytest.raises(UnknownNameError):
        EditPreset("bad", ("jpeg", "nope"))
    with pytest.raises(InvalidArgumentError, match="labels"):
        EditPreset("bad", ("jpeg", "pad"), labels=("j",))
    with pytest.raises(UnknownNameError):
        EditPreset("bad", ("jpeg",), count_draw="poisson")
    # the dedup package re-exports the same objects
    assert dedup_edits.edited_copy is edited_copy and dedup_edits.EDIT_PRESETS is EDIT_PRESETS


def test_edited_copy_by_preset_counts_and_labels() -> None:
    image = Image.new("RGB", (48, 40), (120, 60, 30))
    counts = {name: set() for name in PRESETS}
    for seed in range(40):
        for name, preset in PRESETS.items():
            copy, labels = edited_copy(image, np.random.default_rng(seed), name)
            again, labels_again = edited_copy(image, np.random.default_rng(seed), preset)
            assert copy.tobytes() == again.tobytes() and labels == labels_again  # deterministic for the rng
            assert copy.mode == "RGB" and labels
            assert set(labels) <= set(preset.labels or preset.edits)
            counts[name].add(len(labels))
    assert counts == {"sample": {1, 2}, "classic": {1, 2, 3}, "full": {1, 2}}
    grey = Image.new("L", (32, 32), 90)
    assert edited_copy(grey, np.random.default_rng(0), "hflip")[0].mode == "RGB"
