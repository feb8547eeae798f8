"""Real-image benchmark sets built offline from Debian packages: icons, glyphs and two dedup sets.

None of these images were made by sslsearch, so defaults measured on them are not tuned to our own
generator. Four sets, each a labelled ImageFolder (``images/<label>/<source>__<label>.png``) with a
``labels.csv`` (path, label, source) and a ``set.json`` describing how it was built:

* ``icons``  — the same freedesktop icon name drawn by different icon themes (Tango, Oxygen,
  Papirus, Breeze, ...): category = icon name, cross-source retrieval = find the same icon in
  other themes. Colour clip-art, 64 px on white.
* ``glyphs`` — the same character (A-Z, a-z, 0-9) rendered by different font families (DejaVu,
  Liberation, Noto, URW, TeX Gyre, ...): category = character. Black on white, 64 px.
* ``icons-dedup`` — distinct icons as originals (one render per icon name; renders that a planted edit
  without geometry — flip, grayscale, brightness, pad, rescale — brings within 0.05 RMS removed) plus
  edited copies (pad, crop keeping >= 70 % of the area, flip, grayscale, rotate +-15 degrees, JPEG,
  rescale, watermark, brightness), with ``pairs.csv`` (copy, original, edits) as ground truth.
  The edits here are written independently of ``sslsearch.dedup`` so calibration is not graded on
  its own copies.
* ``wallpapers-dedup`` — the same with tiles of Debian wallpapers (photographs and artwork) as
  originals; tiles that are shifted, rescaled or mirrored windows of a kept tile are left out too
  (``shifted_duplicates``: one wallpaper ships at several framings).

Packages come from the Debian archive with ``apt-get download`` (no root needed once the package
lists exist) into ``CACHE/debs`` and are unpacked with ``dpkg-deb -x``; after the first run
everything is offline. SVG icons are rendered with ``rsvg-convert`` (Debian's librsvg2-bin). Debian's
openclipart packages and emoji artwork are reserved for independent checks and never used here.

    python benchmarks/real_sets.py build --out data/real          # all sets (~5 min, ~700 MB of .debs)
    python benchmarks/real_sets.py build --out data/real --sets glyphs
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

SIZE = 64  # every image is SIZE x SIZE RGB on white

# (Debian package, theme folder under usr/share/icons): one main variant per theme.
ICON_THEMES: tuple[tuple[str, str], ...] = (
    ("adwaita-icon-theme", "Adwaita"), ("tango-icon-theme", "Tango"), ("gnome-icon-theme", "gnome"),
    ("oxygen-icon-theme", "oxygen"), ("mate-icon-theme", "mate"), ("elementary-xfce-icon-theme", "elementary-xfce"),
    ("faenza-icon-theme", "Faenza"), ("gnome-colors-common", "gnome-colors-common"), ("lxde-icon-theme", "nuoveXT2"),
    ("moka-icon-theme", "Moka"), ("paper-icon-theme", "Paper"), ("obsidian-icon-theme", "Obsidian"),
    ("yaru-theme-icon", "Yaru"), ("breeze-icon-theme", "breeze"), ("numix-icon-theme", "Numix"),
    ("papirus-icon-theme", "Papirus"), ("suru-icon-theme", "suru"), ("deepin-icon-theme", "bloom"),
)
FONT_PACKAGES: tuple[str, ...] = (
    "fonts-dejavu-core", "fonts-dejavu-extra", "fonts-liberation", "fonts-freefont-ttf", "fonts-urw-base35",
    "fonts-cantarell", "fonts-crosextra-carlito", "fonts-crosextra-caladea", "fonts-linuxlibertine",
    "fonts-roboto-unhinted", "fonts-open-sans", "fonts-lato", "fonts-inconsolata", "fonts-hack", "fonts-firacode",
    "fonts-comic-neue", "fonts-ebgaramond", "fonts-sil-gentium", "fonts-junicode", "fonts-texgyre", "fonts-lmodern",
    "fonts-cmu", "fonts-league-spartan", "fonts-quicksand", "fonts-sil-andika", "fonts-jetbrains-mono", "fonts-go",
    "fonts-dancingscript", "fonts-noto-core", "fonts-oldstandard", "fonts-sil-charis", "fonts-anonymous-pro",
    "fonts-adf-accanthis", "fonts-adf-gillius", "fonts-adf-universalis", "fonts-adf-berenis", "fonts-averia-gwf",
    "fonts-courier-prime", "fonts-fantasque-sans", "fonts-lobster", "fonts-lobstertwo", "fonts-oflb-euterpe",
    "fonts-radisnoir", "fonts-stix", "fonts-yanone-kaffeesatz", "fonts-b612", "fonts-mononoki", "fonts-paratype",
    "fonts-tuffy", "fonts-vollkorn", "fonts-cabin", "fonts-klaudia-berenika", "fonts-breip", "fonts-dkg-handwriting",
    "fonts-f500", "fonts-femkeklaver", "fonts-humor-sans", "fonts-blankenburg", "fonts-gfs-didot", "fonts-kristi",
    "fonts-rufscript", "fonts-staypuft", "fonts-jura", "fonts-hermit", "fonts-agave",
)
RESERVED = re.compile(r"openclipart|emoji|twemoji|emojione", re.IGNORECASE)  # independent checks only
_SYMBOL_FONT = re.compile(r"math|dingbat|D050000L|symbol|awesome", re.IGNORECASE)  # letters mapped to symbols
CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
ICON_MIN_THEMES = 8  # an icon name enters the icons set when at least this many themes draw it
ICON_MAX_NAMES = 600
FAMILY_CAP = 3  # dedup originals per (theme, first word of the icon name)
GLYPH_STYLES = ("regular", "bold", "italic")  # faces kept per font family
GLYPH_MAX_FACES = 90


class BuildError(RuntimeError):
    """A set could not be built; the message says what is missing and how to get it."""


# ----------------------------------------------------------------------------- packages


def fetch_packages(names: Iterable[str], cache: Path) -> dict[str, Path]:
    """Download (once) and unpack Debian packages; returns package name -> unpacked root.

    Uses ``apt-get download`` into ``cache/debs`` and ``dpkg-deb -x`` into ``cache/pkg/<name>``; a
    package already unpacked is not downloaded again, so a second build is offline.
    """
    roots: dict[str, Path] = {}
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for name in names:
        if RESERVED.search(name):
            raise BuildError(f"package {name!r} is reserved for independent checks; do not build sets from it")
        root = cache / "pkg" / name
        if (root / ".unpacked").exists():
            roots[name] = root
            continue
        found = sorted(debs.glob(f"{name}_*.deb"))
        if not found:
            done = subprocess.run(["apt-get", "download", name], cwd=debs, capture_output=True, text=True)
            found = sorted(debs.glob(f"{name}_*.deb"))
            if done.returncode != 0 or not found:
                print(f"warning: could not download {name} ({done.stderr.strip()[-200:]}); skipped", file=sys.stderr)
                continue
        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(found[-1]), str(tmp)], check=True)
        (tmp / ".unpacked").write_text(found[-1].name)
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
        roots[name] = root
    return roots


# ----------------------------------------------------------------------------- icons

_SIZE_DIR = re.compile(r"^(\d+)(?:x(\d+))?(@2x)?$")


@dataclass(frozen=True)
class IconFile:
    theme: str
    name: str
    path: Path
    size: int  # nominal pixel size; 0 for scalable SVG


def icon_files(theme_root: Path, theme: str) -> list[IconFile]:
    """Regular (not symlinked) full-colour icon files of one theme: PNG and SVG, symbolic ones left out."""
    out: list[IconFile] = []
    for path in theme_root.rglob("*"):
        if path.is_symlink() or not path.is_file() or path.suffix.lower() not in (".png", ".svg"):
            continue
        parts = path.relative_to(theme_root).parts
        if any("symbolic" in p or p in ("cursors", "animations", "emotes") for p in parts):
            continue
        name = path.stem
        if name.endswith("-symbolic") or name.endswith(".symbolic"):
            continue
        size = 0
        for part in parts[:-1]:
            match = _SIZE_DIR.match(part)
            if match:
                size = int(match.group(1)) * (2 if match.group(3) else 1)
        if path.suffix.lower() == ".png" and size == 0:
            try:
                with Image.open(path) as image:
                    size = image.width
            except OSError:
                continue
        out.append(IconFile(theme, name, path, size))
    return out


def _preference(icon: IconFile) -> tuple[int, int]:
    """Lower is better: a PNG near 64 px, else a scalable SVG, else whatever is largest."""
    if icon.path.suffix.lower() == ".svg":
        return (1, 0)
    if icon.size >= 32:
        return (0, abs(icon.size - SIZE))
    return (2, -icon.size)


def best_icons(files: Sequence[IconFile]) -> dict[tuple[str, str], IconFile]:
    """One file per (theme, icon name): the one ``_preference`` ranks first (ties broken by path)."""
    best: dict[tuple[str, str], IconFile] = {}
    for icon in sorted(files, key=lambda f: str(f.path)):
        key = (icon.theme, icon.name)
        if key not in best or _preference(icon) < _preference(best[key]):
            best[key] = icon
    return best


def render_icon(path: Path, size: int = SIZE) -> Image.Image | None:
    """An icon file as a size x size RGB image on white, aspect kept; None when it cannot be read."""
    if path.suffix.lower() == ".svg":
        _require_renderer()
    try:
        if path.suffix.lower() == ".svg":
            done = subprocess.run(["rsvg-convert", "-w", str(size), "-h", str(size), "--keep-aspect-ratio",
                                   str(path)], capture_output=True, timeout=30)
            if done.returncode != 0 or not done.stdout:
                return None
            image = Image.open(io.BytesIO(done.stdout))
        else:
            image = Image.open(path)
        image.load()
    except (OSError, subprocess.TimeoutExpired):
        return None
    image = image.convert("RGBA")
    if image.getbbox() is None:
        return None
    if max(image.size) > size:
        image.thumbnail((size, size), Image.LANCZOS)
    elif max(image.size) < size:
        scale = size / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)
    canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    canvas.alpha_composite(image, ((size - image.width) // 2, (size - image.height) // 2))
    return canvas.convert("RGB")


def _require_renderer() -> None:
    if shutil.which("rsvg-convert") is None:
        raise BuildError("rsvg-convert not found (needed for SVG icon themes); install it: apt-get install librsvg2-bin")


def collect_icons(roots: dict[str, Path], themes: Sequence[tuple[str, str]] | None = None) -> dict[tuple[str, str], IconFile]:
    files: list[IconFile] = []
    for package, theme in ICON_THEMES if themes is None else themes:
        if package not in roots:
            continue
        theme_root = roots[package] / "usr" / "share" / "icons" / theme
        if theme_root.is_dir():
            files.extend(icon_files(theme_root, theme))
    return best_icons(files)


def build_icons(roots: dict[str, Path], out: Path, *, min_themes: int = ICON_MIN_THEMES,
                max_names: int = ICON_MAX_NAMES) -> dict[str, object]:
    """The icons set: names drawn by at least ``min_themes`` themes, one image per (theme, name)."""
    best = collect_icons(roots)
    themes_of: dict[str, list[str]] = defaultdict(list)
    for theme, name in best:
        themes_of[name].append(theme)
    names = sorted((n for n, t in themes_of.items() if len(t) >= min_themes), key=lambda n: (-len(themes_of[n]), n))
    names = sorted(names[:max_names])
    rows: list[tuple[str, str, str]] = []
    seen: set[bytes] = set()
    for name in names:
        for theme in sorted(themes_of[name]):
            image = render_icon(best[(theme, name)].path)
            if image is None:
                continue
            digest = hashlib.sha256(image.tobytes()).digest()
            if digest in seen:  # the same pixels under two names or two themes: keep the first
                continue
            seen.add(digest)
            rel = Path("images") / name / f"{theme}__{name}.png"
            _save(image, out / rel)
            rows.append((str(rel), name, theme))
    return _finish(out, rows, {"set": "icons", "min_themes": min_themes, "names": len(names)})


# ----------------------------------------------------------------------------- glyphs


def font_faces(roots: dict[str, Path]) -> list[tuple[str, Path]]:
    """(face name, font file) for every Latin font face with all of CHARACTERS, styles in GLYPH_STYLES."""
    from fontTools.ttLib import TTFont

    faces: dict[str, Path] = {}
    for package in sorted(roots):
        for path in sorted(roots[package].rglob("*")):
            if path.suffix.lower() not in (".ttf", ".otf") or not path.is_file():
                continue
            try:
                cmap = TTFont(path, lazy=True, fontNumber=0).getBestCmap() or {}
                family, style = ImageFont.truetype(str(path), 20).getname()
            except Exception:  # noqa: BLE001 - a font file fontTools or FreeType cannot read is skipped
                continue
            if not all(ord(c) in cmap for c in CHARACTERS) or _SYMBOL_FONT.search(f"{path.name} {family}"):
                continue
            style_key = style.lower().replace("oblique", "italic").replace("roman", "regular").replace("book", "regular")
            if style_key not in GLYPH_STYLES:
                continue
            face = re.sub(r"[^A-Za-z0-9]+", "-", f"{family}-{style_key}").strip("-")
            faces.setdefault(face, path)
    return sorted(faces.items())


def render_glyph(font: ImageFont.FreeTypeFont, char: str, size: int = SIZE) -> Image.Image | None:
    """One character, black on white, centred horizontally on its ink, on a fixed baseline (case shows)."""
    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), char, font=font, anchor="ls")
    if right <= left or bottom <= top:
        return None
    x = (size - (right - left)) / 2 - left
    draw.text((x, round(size * 0.75)), char, font=font, fill=0, anchor="ls")
    if image.getextrema()[0] > 128:
        return None
    return image.convert("RGB")


def build_glyphs(roots: dict[str, Path], out: Path, *, max_faces: int = GLYPH_MAX_FACES) -> dict[str, object]:
    """The glyphs set: every character of CHARACTERS in up to ``max_faces`` font faces with distinct shapes."""
    labels = {c: ("upper-" if c.isupper() else "lower-" if c.islower() else "digit-") + c for c in CHARACTERS}
    rows: list[tuple[str, str, str]] = []
    signatures: set[bytes] = set()
    kept = 0
    faces = font_faces(roots)
    # a seeded shuffle, so a capped set spreads over all families rather than the first letters
    order = np.random.default_rng(0).permutation(len(faces))
    for face, path in (faces[i] for i in order):
        if kept >= max_faces:
            break
        font = ImageFont.truetype(str(path), round(SIZE * 0.62))
        images = {c: render_glyph(font, c) for c in CHARACTERS}
        if any(image is None for image in images.values()):
            continue
        signature = hashlib.sha256(b"".join(images[c].tobytes() for c in "Rag5Q")).digest()
        if signature in signatures:  # the same outlines under another name (Noto script fonts share Latin)
            continue
        signatures.add(signature)
        kept += 1
        for char, image in images.items():
            rel = Path("images") / labels[char] / f"{face}__{labels[char]}.png"
            _save(image, out / rel)
            rows.append((str(rel), labels[char], face))
    return _finish(out, rows, {"set": "glyphs", "faces": kept, "characters": CHARACTERS})


# ----------------------------------------------------------------------------- dedup set: edits

DEDUP_EDITS: tuple[str, ...] = ("pad", "crop", "hflip", "grayscale", "rotate", "jpeg", "rescale", "watermark",
                                "brightness")


def _pad(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A border of 5-25 % of the side on each side, white or a random solid colour."""
    w, h = image.size
    border = [int(rng.uniform(0.05, 0.25) * s) for s in (w, h, w, h)]
    fill = (255, 255, 255) if rng.random() < 0.5 else tuple(int(v) for v in rng.integers(0, 256, 3))
    return ImageOps.expand(image, tuple(border), fill=fill)


def _crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A window keeping 70-95 % of the area, placed at random."""
    w, h = image.size
    area = rng.uniform(0.70, 0.95)
    aspect = rng.uniform(0.85, 1.15)
    cw, ch = min(w, round(w * np.sqrt(area * aspect))), min(h, round(h * np.sqrt(area / aspect)))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return image.crop((x, y, x + cw, y + ch))


def _rotate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate 3-15 degrees either way, corners white."""
    degrees = rng.uniform(3, 15) * (1 if rng.random() < 0.5 else -1)
    return image.rotate(degrees, resample=Image.BILINEAR, expand=bool(rng.random() < 0.5), fillcolor=(255, 255, 255))


def _jpeg(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(20, 80)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _rescale(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    factor = rng.uniform(0.5, 2.0)
    return image.resize((max(8, round(image.width * factor)), max(8, round(image.height * factor))), Image.BILINEAR)


def _watermark(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    font = ImageFont.load_default(size=max(7, image.height // 7))
    text = ("DRAFT", "(c) icons", "sample", "www", "2026")[int(rng.integers(0, 5))]
    x, y = int(rng.integers(0, max(1, image.width // 2))), int(rng.integers(0, max(1, image.height - image.height // 6)))
    grey = int(rng.integers(0, 200))
    draw.text((x, y), text, font=font, fill=(grey, grey, grey, int(rng.integers(110, 230))))
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


_EDIT_FUNCTIONS = {
    "pad": _pad, "crop": _crop, "hflip": lambda im, rng: ImageOps.mirror(im),
    "grayscale": lambda im, rng: ImageOps.grayscale(im).convert("RGB"), "rotate": _rotate, "jpeg": _jpeg,
    "rescale": _rescale, "watermark": _watermark,
    "brightness": lambda im, rng: ImageEnhance.Brightness(im).enhance(rng.uniform(0.7, 1.3)),
}


def edit_copy(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, tuple[str, ...]]:
    """One main edit (uniform over DEDUP_EDITS), plus with probability 0.4 a second different one."""
    first = DEDUP_EDITS[int(rng.integers(0, len(DEDUP_EDITS)))]
    edits = [first]
    if rng.random() < 0.4:
        others = [e for e in DEDUP_EDITS if e != first]
        edits.append(others[int(rng.integers(0, len(others)))])
    out = image
    for edit in edits:
        out = _EDIT_FUNCTIONS[edit](out, rng)
    return out.convert("RGB"), tuple(edits)


def trim_border(image: Image.Image, tolerance: int = 24, rounds: int = 2) -> Image.Image:
    """The image without its uniform border (the median border colour, twice: a pad, then the margin
    inside it), centred on a white square."""
    for _ in range(rounds):
        pixels = np.asarray(image, dtype=np.int16)
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        mask = np.abs(pixels - np.median(border, axis=0)).max(axis=2) > tolerance
        if not mask.any():
            break
        ys, xs = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if ys[0] == 0 and xs[0] == 0 and ys[-1] == pixels.shape[0] - 1 and xs[-1] == pixels.shape[1] - 1:
            break
        image = image.crop((int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1))
    side = max(image.size)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


def _thumb(image: Image.Image, size: int = 24) -> np.ndarray:
    return np.asarray(trim_border(image).resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as PIL's convert("L")
GAIN_RANGE = (0.7, 1.3)  # the brightness edit's gains (_EDIT_FUNCTIONS["brightness"])


def distinct_originals(images: Sequence[Image.Image], min_distance: float = 0.05) -> list[int]:
    """Indices of images kept as originals: one of each group within ``min_distance`` RMS of each other
    under the planted edits that change no geometry beyond a mirror.

    Compared: border-trimmed 24x24 thumbnails, directly or mirrored, in colour, and in luminance with
    the better brightness gain in ``GAIN_RANGE`` applied to either side. Renders of one artwork at two
    sizes or in two themes that share it, mirrored pairs (go-next / go-previous), and one drawing in two
    colours of equal luminance (a red and a grey eye) are duplicates already under the edits this set
    plants (pad, rescale, flip, grayscale, brightness), so the ground truth could not call them distinct."""
    thumbs = np.stack([_thumb(im) for im in images])
    luma = thumbs @ _LUMA
    n = len(thumbs)
    colour = {False: thumbs.reshape(n, -1), True: thumbs[:, :, ::-1].reshape(n, -1)}
    grey = {False: luma.reshape(n, -1), True: luma[:, :, ::-1].reshape(n, -1)}
    grey_sq = (grey[False] ** 2).sum(axis=1)
    low, high = GAIN_RANGE
    kept: list[int] = []
    for i in range(n):
        if kept:
            near = np.inf
            for mirror in (False, True):
                near = min(near, float(np.sqrt(((colour[False][kept] - colour[mirror][i]) ** 2).mean(axis=1)).min()))
                a, b = grey[False][kept], grey[mirror][i]
                dot, a_sq, b_sq = a @ b, grey_sq[kept], grey_sq[i]
                for x_sq, y_sq in ((a_sq, b_sq), (b_sq, a_sq)):  # gain on either side: |x - g y|^2, g fitted
                    gain = np.clip(dot / np.maximum(y_sq, 1e-12), low, high)
                    err = np.maximum(x_sq - 2 * gain * dot + gain ** 2 * y_sq, 0.0) / a.shape[1]
                    near = min(near, float(np.sqrt(err).min()))
            if near < min_distance:
                continue
        kept.append(i)
    return kept


WINDOW_SCALES = (1.0, 0.92, 0.84)  # sides of the windows compared by shifted_duplicates: 0.84² ≈ the crop edit's 70 %
WINDOW_THUMB = 24  # px of each window's colour thumbnail (as distinct_originals' thumbnails)


def _windows(image: Image.Image) -> np.ndarray:
    """(views, WINDOW_THUMB² · 3) colour thumbnails of the image's windows: the whole image, and at each smaller
    scale in WINDOW_SCALES the windows at the 3 × 3 grid of places from one corner to the other."""
    rgb = image.convert("RGB")
    w, h = rgb.size
    views = []
    for scale in WINDOW_SCALES:
        places = (0.0,) if scale == 1.0 else (0.0, 0.5, 1.0)
        cw, ch = w * scale, h * scale
        for fy in places:
            for fx in places:
                x, y = fx * (w - cw), fy * (h - ch)
                window = rgb.resize((WINDOW_THUMB, WINDOW_THUMB), Image.BILINEAR, box=(x, y, x + cw, y + ch))
                views.append(np.asarray(window, np.float32).ravel() / 255.0)
    return np.stack(views)


def shifted_duplicates(images: Sequence[Image.Image], order: Sequence[int], min_distance: float = 0.05,
                       neighbors: int = 8) -> list[int]:
    """``order`` less each image a window of which (a side of 84-100 %, anywhere) is within ``min_distance`` RMS
    of a window of an earlier kept one, directly or mirrored.

    Tiles of one wallpaper shipped at several framings (12 resolutions of one Plasma wallpaper, a 4:3 and a
    16:9 GRUB background, a theme's wallpaper with and without its logo) are shifted and rescaled crops of each
    other, and two tiles of a smooth stretch of one picture look the same a few pixels apart: the crop edit
    this set plants (70-95 % of the area kept, anywhere) makes each such pair a duplicate already, so the
    ground truth could not call them distinct. Each window's ``neighbors`` nearest other windows come from one
    exact L2 search (n² window products: 26 s for the 849 wallpaper tiles)."""
    import faiss

    order = list(order)
    if len(order) < 2:
        return order
    views = [_windows(images[i]) for i in order]
    per = views[0].shape[0]
    base = np.ascontiguousarray(np.concatenate(views), np.float32)
    mirrored = [_windows(ImageOps.mirror(images[i])) for i in order]
    queries = np.ascontiguousarray(np.concatenate([base, np.concatenate(mirrored)]), np.float32)
    index = faiss.IndexFlatL2(base.shape[1])
    index.add(base)
    distances, found = index.search(queries, min(neighbors + per, len(base)))
    owner = np.tile(np.repeat(np.arange(len(order)), per), 2)
    limit = min_distance ** 2 * base.shape[1]
    near: dict[int, set[int]] = defaultdict(set)
    for query, (row_d, row_i) in enumerate(zip(distances, found)):
        for d, j in zip(row_d.tolist(), row_i.tolist()):
            if j >= 0 and d <= limit and owner[j] != owner[query]:
                near[int(owner[query])].add(int(owner[j]))
                near[int(owner[j])].add(int(owner[query]))
    kept: list[int] = []
    dropped: set[int] = set()
    for position in range(len(order)):
        if any(other < position and other not in dropped for other in near[position]):
            dropped.add(position)
            continue
        kept.append(order[position])
    return kept


def build_icons_dedup(roots: dict[str, Path], out: Path, *, n_originals: int = 4500, n_copies: int = 1500,
                      seed: int = 0) -> dict[str, object]:
    """The dedup set: distinct icons (any name, any theme) plus edited copies of some of them."""
    best = collect_icons(roots)
    rng = np.random.default_rng(seed)
    keys = sorted(best)
    order = rng.permutation(len(keys))
    images: list[Image.Image] = []
    names: list[tuple[str, str]] = []
    seen: set[bytes] = set()
    family_count: dict[tuple[str, str], int] = defaultdict(int)
    used_names: set[str] = set()
    for index in order:
        if len(images) >= int(n_originals * 1.3):
            break
        # at most FAMILY_CAP icons of one theme's name family (Papirus alone draws ~100 "folder-<colour>-<emblem>"
        # icons that differ in an 8-px emblem: a set full of them measures emblem reading, not duplicate finding)
        family = (keys[index][0], re.split(r"[-_]", keys[index][1])[0])
        if family_count[family] >= FAMILY_CAP:
            continue
        # one render of each icon name: themes that fork another (Obsidian from Faenza, MATE from GNOME) ship the
        # same artwork under the same name, and the icons set itself calls one name in two themes the same subject
        if keys[index][1] in used_names:
            continue
        image = render_icon(best[keys[index]].path)
        if image is None:
            continue
        digest = hashlib.sha256(image.tobytes()).digest()
        if digest not in seen:
            seen.add(digest)
            family_count[family] += 1
            used_names.add(keys[index][1])
            images.append(image)
            names.append(keys[index])
    kept = distinct_originals(images)[:n_originals]
    return _write_dedup_set(out, [(f"{names[i][0]}__{names[i][1]}", names[i][0], images[i]) for i in kept],
                            n_copies, rng, {"set": "icons-dedup", "seed": seed})


def _write_dedup_set(out: Path, originals_in: Sequence[tuple[str, str, Image.Image]], n_copies: int,
                     rng: np.random.Generator, info: dict[str, object]) -> dict[str, object]:
    """Write originals (name, source, image), edited copies of ``n_copies`` of them, pairs.csv and labels.csv."""
    rows: list[tuple[str, str, str]] = []
    originals: list[tuple[str, Image.Image]] = []
    for name, source, image in originals_in:
        rel = Path("images") / "originals" / f"{name}.png"
        if (out / rel).exists():
            raise BuildError(f"two originals named {name!r}; the set would lose one")
        _save(image, out / rel)
        rows.append((str(rel), "originals", source))
        originals.append((str(rel), image))
    pairs: list[tuple[str, str, str]] = []
    chosen = rng.choice(len(originals), size=min(n_copies, len(originals)), replace=False)
    for number, index in enumerate(sorted(chosen.tolist())):
        rel_original, image = originals[index]
        copy, edits = edit_copy(image, rng)
        rel = Path("images") / "copies" / f"copy-{number:05d}.png"
        _save(copy, out / rel)
        rows.append((str(rel), "copies", "copy"))
        pairs.append((str(rel), rel_original, "+".join(edits)))
    with open(out / "pairs.csv.tmp", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["copy", "original", "edits"])
        writer.writerows(pairs)
    os.replace(out / "pairs.csv.tmp", out / "pairs.csv")
    return _finish(out, rows, {**info, "originals": len(originals), "copies": len(pairs), "edits": list(DEDUP_EDITS)})


WALLPAPER_PACKAGES: tuple[str, ...] = ("gnome-backgrounds", "plasma-workspace-wallpapers", "mate-backgrounds",
                                       "ukui-wallpapers", "desktop-base", "lxqt-themes")
TILE_GRID = 6  # tiles per side cut from the central square of each wallpaper
TILE_SIZE = 96


def wallpaper_tiles(roots: dict[str, Path], min_contrast: float = 0.12) -> list[tuple[str, str, Image.Image]]:
    """(name, package, tile) for the TILE_GRID² tiles of each distinct raster wallpaper, flat tiles left out."""
    tiles: list[tuple[str, str, Image.Image]] = []
    seen: set[str] = set()
    for package in sorted(roots):
        for path in sorted(roots[package].rglob("*")):
            if path.suffix.lower() not in (".jpg", ".jpeg", ".png", ".webp") or not path.is_file() or path.is_symlink():
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            try:
                with Image.open(path) as opened:
                    if min(opened.size) < 512:
                        continue
                    opened.draft("RGB", (1024, 1024))
                    image = opened.convert("RGB")
            except (OSError, Image.DecompressionBombError):
                continue
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            square = image.crop((left, top, left + side, top + side)).resize((TILE_SIZE * TILE_GRID,) * 2, Image.LANCZOS)
            stem = f"{len(seen):04d}-" + re.sub(r"[^A-Za-z0-9]+", "-", f"{package}-{path.stem}")[:60]
            for ty in range(TILE_GRID):
                for tx in range(TILE_GRID):
                    tile = square.crop((tx * TILE_SIZE, ty * TILE_SIZE, (tx + 1) * TILE_SIZE, (ty + 1) * TILE_SIZE))
                    if np.asarray(tile.convert("L"), np.float32).std() / 255.0 < min_contrast:
                        continue  # sky, gradients: every flat tile is a duplicate of every other
                    tiles.append((f"{stem}-{ty}{tx}", package, tile))
    return tiles


def build_wallpapers_dedup(roots: dict[str, Path], out: Path, *, n_copies_fraction: float = 0.3,
                           seed: int = 0) -> dict[str, object]:
    """The photo dedup set: tiles of wallpapers (photographs and artwork) plus edited copies of some."""
    tiles = wallpaper_tiles(roots)
    kept = distinct_originals([tile for _, _, tile in tiles])
    kept = shifted_duplicates([tile for _, _, tile in tiles], kept)
    rng = np.random.default_rng(seed)
    chosen = [tiles[i] for i in kept]
    return _write_dedup_set(out, chosen, round(len(chosen) * n_copies_fraction), rng,
                            {"set": "wallpapers-dedup", "seed": seed, "tile_grid": TILE_GRID})


# ----------------------------------------------------------------------------- output


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=False)


def _finish(out: Path, rows: list[tuple[str, str, str]], info: dict[str, object]) -> dict[str, object]:
    with open(out / "labels.csv.tmp", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "source"])
        writer.writerows(rows)
    os.replace(out / "labels.csv.tmp", out / "labels.csv")
    info = {**info, "images": len(rows), "labels": len({r[1] for r in rows}), "sources": len({r[2] for r in rows})}
    (out / "set.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


SETS = {
    "icons": (lambda: [p for p, _ in ICON_THEMES], build_icons),
    "glyphs": (lambda: list(FONT_PACKAGES), build_glyphs),
    "icons-dedup": (lambda: [p for p, _ in ICON_THEMES], build_icons_dedup),
    "wallpapers-dedup": (lambda: list(WALLPAPER_PACKAGES), build_wallpapers_dedup),
}


def build(names: Sequence[str], out: Path, cache: Path) -> dict[str, dict[str, object]]:
    """Build the named sets under ``out/<name>`` (replaced atomically), packages cached in ``cache``."""
    results = {}
    for name in names:
        if name not in SETS:
            raise BuildError(f"unknown set {name!r}; expected one of {', '.join(SETS)}")
        packages, builder = SETS[name]
        roots = fetch_packages(packages(), cache)
        if not roots:
            raise BuildError(f"no package for set {name!r} could be fetched; run `apt-get update` and retry")
        target = out / name
        tmp = out / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        results[name] = builder(roots, tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        print(f"{name}: {json.dumps(results[name])}", file=sys.stderr)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    command = sub.add_parser("build", help="fetch packages (once) and build the sets")
    command.add_argument("--out", type=Path, default=Path("data/real"))
    command.add_argument("--cache", type=Path, default=None, help="package cache (default OUT/.cache)")
    command.add_argument("--sets", default=",".join(SETS), help=f"comma-separated: {', '.join(SETS)}")
    args = parser.parse_args(argv)
    try:
        build([s for s in args.sets.split(",") if s], args.out, args.cache or args.out / ".cache")
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
