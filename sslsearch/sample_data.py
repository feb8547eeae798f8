"""An offline, seeded generator of a labelled image folder with planted near-duplicates (for demos, tests, benchmarks).

Each image shows one object whose *shape* is its class (circle, square, triangle, star, ring,
cross, stripes, checker, arrow, crescent) on a varied background (gradients, smooth noise,
faint textures, sensor noise) with random colours, position, scale, rotation and clutter
(small blobs and lines, some in front of the object). Colour, position and background are
nuisances, so raw pixels are a weak k-NN baseline while a shape-aware encoder can do well.
A fraction of the images are near-duplicates: an existing image with small edits (JPEG
re-encode, slight resize, small crop, brightness shift, tiny rotation, small watermark), in the
same class folder under its own name; the pairs are listed in ``near_duplicates.csv`` (columns
original, copy, edits: root-relative paths and the edits joined by "+", e.g. ``crop+rotate``).
"""
from __future__ import annotations

import csv
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .edits import PRESETS, SAMPLE_EDIT_LABELS
from .errors import InvalidArgumentError, OutputExistsError
from .files import prepare_output_dir
from .progress import track

CLASSES: tuple[str, ...] = (
    "arrow", "checker", "circle", "crescent", "cross", "ring", "square", "star", "stripes", "triangle",
)
NEAR_DUPLICATES_FILE = "near_duplicates.csv"
DUPLICATE_EDITS: tuple[str, ...] = SAMPLE_EDIT_LABELS  # the labels near_duplicates.csv names the edits by
_SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down, for anti-aliased edges
_PNG_FRACTION = 0.65


@dataclass(frozen=True)
class SampleDataset:
    """A generated ImageFolder.

    Attributes:
        root: absolute folder holding ``<class>/img_NNNNN.png|jpg`` and ``near_duplicates.csv``.
        n_images: image files written (originals + near-duplicate copies).
        classes: the class folder names, sorted.
        near_duplicates: (original, copy) relative POSIX paths of the planted pairs.
        seed: the generator seed.
        image_size: side of the (square) originals in pixels; resized copies differ slightly.
    """

    root: Path
    n_images: int
    classes: tuple[str, ...]
    near_duplicates: tuple[tuple[str, str], ...]
    seed: int = 0
    image_size: int = 64

    def to_dict(self) -> dict[str, object]:
        return {
            "root": str(self.root), "n_images": self.n_images, "classes": list(self.classes),
            "n_classes": len(self.classes), "n_near_duplicate_pairs": len(self.near_duplicates),
            "near_duplicates_file": str(self.root / NEAR_DUPLICATES_FILE), "seed": self.seed,
            "image_size": self.image_size,
        }


def make_sample_dataset(
    out: str | os.PathLike[str],
    *,
    n_images: int = 1000,
    seed: int = 0,
    image_size: int = 64,
    duplicate_fraction: float = 0.05,
    overwrite: bool = False,
    progress: bool | None = None,
) -> SampleDataset:
    """Write a labelled sample image folder with planted near-duplicates to ``out``.

    The same arguments give byte-identical files. The folder is built beside ``out`` under a
    temporary name and renamed at the end, so ``out`` is never left half-written.

    Args:
        out: the folder to create (must be absent or empty unless ``overwrite``).
        n_images: image files to write in all, near-duplicate copies included (>= 10).
        seed: random seed.
        image_size: side of the square images in pixels (16..1024).
        duplicate_fraction: fraction of ``n_images`` that are near-duplicate copies (0..0.5).
        overwrite: replace an existing non-empty ``out``.
        progress: show a progress bar on stderr (default: when stderr is a terminal).

    Returns:
        The dataset description (root, counts, classes, near-duplicate pairs).

    Raises:
        InvalidArgumentError: a count, size or fraction out of range.
        OutputExistsError: ``out`` holds files and ``overwrite`` is false, or is a file.

    Example:
        >>> data = make_sample_dataset("sample-data", n_images=200, image_size=32)  # doctest: +SKIP
        >>> data.classes[:3], len(data.near_duplicates)  # doctest: +SKIP
        (('arrow', 'checker', 'circle'), 10)
    """
    _check_arguments(n_images, image_size, duplicate_fraction)
    target = Path(os.path.abspath(os.fspath(out)))
    if target.exists():
        prepare_output_dir(target, overwrite=overwrite)
        if overwrite and any(target.iterdir()):
            _refuse_dangerous_overwrite(target)
    n_copies = int(round(n_images * duplicate_fraction))
    n_originals = n_images - n_copies
    plan = np.random.default_rng([seed, 1])
    names = plan.permutation(n_images)  # file numbers, so copies cannot be told by their names
    copy_sources = np.sort(plan.choice(n_originals, size=n_copies, replace=False)) if n_copies else np.array([], int)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        for name in CLASSES:
            (staging / name).mkdir()
        paths: list[str] = []
        originals: dict[int, Image.Image] = {}
        wanted = set(copy_sources.tolist())
        for i in track(range(n_originals), "sample images", total=n_originals, unit="img", enabled=progress):
            class_name = CLASSES[i % len(CLASSES)]
            rng = np.random.default_rng([seed, 0, i])
            image = render_image(class_name, rng, image_size)
            paths.append(_save(staging, class_name, int(names[i]), image, rng))
            if i in wanted:
                originals[i] = image
        pairs: list[tuple[str, str]] = []
        edit_names: list[str] = []
        for j, source in enumerate(copy_sources.tolist()):
            rng = np.random.default_rng([seed, 2, j])
            class_name = CLASSES[source % len(CLASSES)]
            copy, edits = edited_copy(originals[source], rng)
            pairs.append((paths[source], _save(staging, class_name, int(names[n_originals + j]), copy, rng)))
            edit_names.append("+".join(edits))
        with open(staging / NEAR_DUPLICATES_FILE, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["original", "copy", "edits"])
            writer.writerows((original, copy, edits) for (original, copy), edits in zip(pairs, edit_names))
        _move_into_place(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return SampleDataset(root=target, n_images=n_images, classes=CLASSES, near_duplicates=tuple(pairs),
                         seed=seed, image_size=image_size)


def read_near_duplicates(path: str | os.PathLike[str]) -> tuple[tuple[str, str], ...]:
    """Read the (original, copy) pairs of a sample folder (the folder or its ``near_duplicates.csv``)."""
    return tuple((row["original"], row["copy"]) for row in _near_duplicate_rows(path))


def read_near_duplicate_edits(path: str | os.PathLike[str]) -> dict[tuple[str, str], tuple[str, ...]]:
    """(original, copy) → the edits that made the copy, e.g. ``("crop", "rotate")`` (empty for files
    written before the ``edits`` column existed)."""
    return {(row["original"], row["copy"]): tuple(e for e in (row.get("edits") or "").split("+") if e)
            for row in _near_duplicate_rows(path)}


def _near_duplicate_rows(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    location = Path(path)
    if location.is_dir():
        location = location / NEAR_DUPLICATES_FILE
    with open(location, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _check_arguments(n_images: int, image_size: int, duplicate_fraction: float) -> None:
    if not isinstance(n_images, int) or n_images < len(CLASSES):
        raise InvalidArgumentError(f"n_images={n_images!r} is too small; expected an integer >= {len(CLASSES)} "
                                   "(one image per class at least)")
    if not isinstance(image_size, int) or not 16 <= image_size <= 1024:
        raise InvalidArgumentError(f"image_size={image_size!r} is out of range; expected an integer in 16..1024 pixels")
    if not 0.0 <= duplicate_fraction <= 0.5:
        raise InvalidArgumentError(f"duplicate_fraction={duplicate_fraction!r} is out of range; expected 0..0.5")


def _refuse_dangerous_overwrite(target: Path) -> None:
    cwd = Path.cwd().resolve()
    resolved = target.resolve()
    if resolved == Path(resolved.anchor) or resolved == Path.home().resolve() or resolved in (cwd, *cwd.parents):
        raise OutputExistsError(f"refusing to overwrite {target}: it is the filesystem root, your home or holds "
                                "the current directory; choose a dedicated output folder")


def _move_into_place(staging: Path, target: Path) -> None:
    if not target.exists():
        os.replace(staging, target)
        return
    if not any(target.iterdir()):
        target.rmdir()
        os.replace(staging, target)
        return
    retired = target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.replace(target, retired)
    os.replace(staging, target)
    shutil.rmtree(retired, ignore_errors=True)


def _save(folder: Path, class_name: str, number: int, image: Image.Image, rng: np.random.Generator) -> str:
    """Encode ``image`` as PNG or JPEG (random) into ``folder/class_name``; return the relative path."""
    if rng.random() < _PNG_FRACTION:
        relative = f"{class_name}/img_{number:05d}.png"
        image.save(folder / relative, format="PNG", compress_level=6)
    else:
        relative = f"{class_name}/img_{number:05d}.jpg"
        image.save(folder / relative, format="JPEG", quality=int(rng.integers(82, 96)))
    return relative


# --------------------------------------------------------------------------- rendering


def render_image(class_name: str, rng: np.random.Generator, size: int) -> Image.Image:
    """Render one image of ``class_name``: background, clutter behind, the object, clutter in front.

    Returns:
        A ``size`` x ``size`` RGB image.
    """
    background = _background(rng, size)  # (size, size, 3) float32 in 0..255
    canvas = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), "RGB")
    n_clutter = int(rng.integers(1, 5))
    n_front = int(rng.integers(0, min(2, n_clutter) + 1))
    for _ in range(n_clutter - n_front):
        _clutter(ImageDraw.Draw(canvas), rng, size)
    pixels = np.asarray(canvas).astype(np.float32)
    radius = size * float(rng.uniform(0.24, 0.42))
    center = rng.uniform(radius * 0.85, size - radius * 0.85, 2)
    angle = float(rng.uniform(0, 2 * math.pi))
    alpha = _shape_mask(class_name, size, center, radius, angle, rng)[..., None]  # (size, size, 1) in 0..1
    color = _object_color(rng, background.reshape(-1, 3).mean(0))
    shade = _object_shading(rng, size)  # (size, size, 1) multiplicative light falloff
    pixels = pixels * (1 - alpha) + np.clip(color[None, None, :] * shade, 0, 255) * alpha
    canvas = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    for _ in range(n_front):
        _clutter(ImageDraw.Draw(canvas), rng, size, small=True)
    noise = float(rng.uniform(0, 9))
    if noise > 1:
        noisy = np.asarray(canvas).astype(np.float32) + rng.normal(0, noise, (size, size, 3)).astype(np.float32)
        canvas = Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), "RGB")
    return canvas


def _random_color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3).astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size, 3) float32 background: linear/radial gradient, smooth noise or faint texture."""
    kind = int(rng.integers(0, 4))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    first, second = _random_color(rng), _random_color(rng)
    if kind == 0:  # linear gradient at a random angle
        theta = rng.uniform(0, 2 * math.pi)
        t = xs * math.cos(theta) + ys * math.sin(theta)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    elif kind == 1:  # radial gradient around a random point
        cx, cy = rng.uniform(0, 1, 2)
        t = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
        t = t / max(float(t.max()), 1e-6)
    elif kind == 2:  # smooth colour noise: a coarse random grid, bilinearly upsampled
        cells = int(rng.integers(2, 6))
        grid = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
        smooth = Image.fromarray(grid, "RGB").resize((size, size), Image.BILINEAR)
        return np.asarray(smooth).astype(np.float32)
    else:  # faint periodic texture (waves) between two close colours
        second = np.clip(first + rng.uniform(-60, 60, 3), 0, 255).astype(np.float32)
        theta = rng.uniform(0, 2 * math.pi)
        frequency = rng.uniform(3, 12)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * frequency * (xs * math.cos(theta) + ys * math.sin(theta))
                               + 2 * np.sin(2 * math.pi * rng.uniform(1, 3) * ys))
    return (first[None, None, :] * (1 - t[..., None]) + second[None, None, :] * t[..., None]).astype(np.float32)


def _object_color(rng: np.random.Generator, background_mean: np.ndarray) -> np.ndarray:
    """A random colour far enough from the mean background colour to be visible."""
    color = _random_color(rng)
    for _ in range(20):
        if float(np.linalg.norm(color - background_mean)) >= 90:
            break
        color = _random_color(rng)
    return color


def _object_shading(rng: np.random.Generator, size: int) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    theta = rng.uniform(0, 2 * math.pi)
    strength = rng.uniform(0, 0.35)
    t = xs * math.cos(theta) + ys * math.sin(theta)
    return (1 - strength / 2 + strength * (t - t.mean()))[..., None].astype(np.float32)


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, *, small: bool = False) -> None:
    """Draw one distractor: a small blob, a line or a short arc, in a random colour."""
    color = tuple(int(c) for c in rng.integers(0, 256, 3))
    scale = size * (0.05 if small else 0.08)
    x, y = rng.uniform(0, size, 2)
    kind = int(rng.integers(0, 3))
    if kind == 0:
        rx, ry = rng.uniform(0.4, 1.0, 2) * scale
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=color)
    elif kind == 1:
        length = rng.uniform(0.15, 0.5) * size
        theta = rng.uniform(0, 2 * math.pi)
        end = (x + length * math.cos(theta), y + length * math.sin(theta))
        draw.line((x, y, *end), fill=color, width=max(1, int(round(size / 64 * rng.uniform(1, 2.5)))))
    else:
        r = rng.uniform(1.0, 2.0) * scale
        start = float(rng.uniform(0, 360))
        draw.arc((x - r, y - r, x + r, y + r), start, start + float(rng.uniform(60, 160)), fill=color,
                 width=max(1, size // 48))


def _shape_mask(class_name: str, size: int, center: np.ndarray, radius: float, angle: float,
                rng: np.random.Generator) -> np.ndarray:
    """A (size, size) float32 coverage mask in 0..1 of the class's shape (anti-aliased)."""
    big = size * _SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    c = center * _SUPERSAMPLE
    r = radius * _SUPERSAMPLE

    def place(points: np.ndarray) -> list[tuple[float, float]]:
        """Rotate unit-frame points (n, 2) by ``angle``, scale by r, move to c."""
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        return [tuple(p) for p in (points @ rotation.T) * r + c]

    def ellipse(scale_x: float, scale_y: float, offset: tuple[float, float] = (0.0, 0.0), fill: int = 255) -> None:
        ox, oy = place(np.array([offset]))[0]
        draw.ellipse((ox - scale_x * r, oy - scale_y * r, ox + scale_x * r, oy + scale_y * r), fill=fill)

    if class_name == "circle":
        squash = float(rng.uniform(0.85, 1.0))
        ellipse(1.0, squash) if rng.random() < 0.5 else ellipse(squash, 1.0)
    elif class_name == "ring":
        ellipse(1.0, 1.0)
        ellipse(0.58, 0.58, fill=0)
    elif class_name == "crescent":
        ellipse(1.0, 1.0)
        ellipse(0.85, 0.85, offset=(0.45, 0.0), fill=0)
    elif class_name == "square":
        h = float(rng.uniform(0.7, 0.85))
        w = h * float(rng.uniform(0.85, 1.0))
        draw.polygon(place(np.array([[-w, -h], [w, -h], [w, h], [-w, h]])), fill=255)
    elif class_name == "triangle":
        corners = [np.array([math.cos(a), math.sin(a)]) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        jitter = rng.uniform(-0.08, 0.08, (3, 2))
        draw.polygon(place(np.array(corners) + jitter), fill=255)
    elif class_name == "star":
        points = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rho = 1.0 if k % 2 == 0 else 0.42
            points.append([rho * math.cos(a), rho * math.sin(a)])
        draw.polygon(place(np.array(points)), fill=255)
    elif class_name == "cross":
        a, w = 0.95, 0.3
        draw.polygon(place(np.array([[-w, -a], [w, -a], [w, -w], [a, -w], [a, w], [w, w], [w, a], [-w, a],
                                     [-w, w], [-a, w], [-a, -w], [-w, -w]])), fill=255)
    elif class_name == "stripes":
        for offset in (-0.6, 0.0, 0.6):
            draw.polygon(place(np.array([[offset - 0.18, -0.9], [offset + 0.18, -0.9], [offset + 0.18, 0.9],
                                         [offset - 0.18, 0.9]])), fill=255)
    elif class_name == "checker":
        cell = 0.55
        for row in range(3):
            for col in range(3):
                if (row + col) % 2 == 0:
                    x0, y0 = (col - 1.5) * cell, (row - 1.5) * cell
                    draw.polygon(place(np.array([[x0, y0], [x0 + cell, y0], [x0 + cell, y0 + cell],
                                                 [x0, y0 + cell]])), fill=255)
    elif class_name == "arrow":
        draw.polygon(place(np.array([[-0.95, -0.18], [0.2, -0.18], [0.2, -0.55], [0.95, 0.0], [0.2, 0.55],
                                     [0.2, 0.18], [-0.95, 0.18]])), fill=255)
    else:
        raise InvalidArgumentError(f"unknown sample class {class_name!r}; choose one of: {', '.join(CLASSES)}")
    small = mask.reduce(_SUPERSAMPLE)
    return np.asarray(small).astype(np.float32) / 255.0


# --------------------------------------------------------------------------- near-duplicates


def near_duplicate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A copy of ``image`` with one or two small edits from ``DUPLICATE_EDITS`` (deterministic for ``rng``)."""
    return edited_copy(image, rng)[0]


def edited_copy(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, tuple[str, ...]]:
    """``near_duplicate`` and the names of the edits it applied, in the order applied (the ``sample`` preset of
    ``sslsearch.edits``)."""
    return PRESETS["sample"].edited_copy(image, rng)
