"""The real-image set builders (benchmarks/real_sets.py) on a tiny fake Debian package tree."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import real_sets  # noqa: E402

FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _icon(seed: int, size: int) -> Image.Image:
    """A distinct clip-art-like icon: random polygons on transparency."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        points = [tuple(int(v) for v in rng.integers(2, size - 2, 2)) for _ in range(int(rng.integers(3, 6)))]
        draw.polygon(points, fill=tuple(int(v) for v in rng.integers(0, 256, 3)) + (255,))
    return image


def _flat(image: Image.Image) -> Image.Image:
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, image).convert("RGB")


def _theme(root: Path, package: str, theme: str, names: dict[str, int], size: int = 48) -> None:
    folder = root / package / "usr" / "share" / "icons" / theme / f"{size}x{size}" / "apps"
    folder.mkdir(parents=True)
    for name, seed in names.items():
        _icon(seed, size).save(folder / f"{name}.png")
    (folder / "edit-symbolic.png").write_bytes((folder / f"{next(iter(names))}.png").read_bytes())  # never taken
    (folder / "alias.png").symlink_to(folder / f"{next(iter(names))}.png")  # links are never taken


@pytest.fixture()
def package_tree(tmp_path: Path) -> dict[str, Path]:
    themes = [("pkg-a", "ThemeA"), ("pkg-b", "ThemeB"), ("pkg-c", "ThemeC")]
    for number, (package, theme) in enumerate(themes):
        names = {f"icon-{i}": 1000 * number + i for i in range(12)}
        if number == 2:
            names = {f"icon-{i}": 1000 * number + i for i in range(6)}  # icon-6.. drawn by two themes only
        _theme(tmp_path / "pkg", package, theme, names)
    return {package: tmp_path / "pkg" / package for package, _ in themes}


def test_icon_files_skip_links_and_symbolic(package_tree: dict[str, Path]) -> None:
    files = real_sets.icon_files(package_tree["pkg-a"] / "usr/share/icons/ThemeA", "ThemeA")
    names = sorted(f.name for f in files)
    assert names == sorted(f"icon-{i}" for i in range(12))
    assert all(f.size == 48 for f in files)


def test_best_icons_prefers_png_near_64() -> None:
    files = [real_sets.IconFile("T", "x", Path(f"/t/{s}/x.png"), s) for s in (16, 48, 256)]
    files.append(real_sets.IconFile("T", "x", Path("/t/scalable/x.svg"), 0))
    assert real_sets.best_icons(files)[("T", "x")].size == 48


def test_build_icons_labels_by_name_and_keeps_names_drawn_by_enough_themes(package_tree, tmp_path: Path,
                                                                            monkeypatch) -> None:
    monkeypatch.setattr(real_sets, "ICON_THEMES", (("pkg-a", "ThemeA"), ("pkg-b", "ThemeB"), ("pkg-c", "ThemeC")))
    out = tmp_path / "icons"
    out.mkdir()
    info = real_sets.build_icons(package_tree, out, min_themes=3)
    rows = list(csv.DictReader(open(out / "labels.csv")))
    assert info["labels"] == 6 and info["images"] == 18 and info["sources"] == 3
    assert {r["label"] for r in rows} == {f"icon-{i}" for i in range(6)}
    for r in rows:
        image = Image.open(out / r["path"])
        assert image.size == (real_sets.SIZE, real_sets.SIZE) and image.mode == "RGB"
        assert Path(r["path"]).parent.name == r["label"] and r["source"] in Path(r["path"]).name
    assert json.loads((out / "set.json").read_text())["set"] == "icons"


def test_build_icons_dedup_plants_copies_with_ground_truth(package_tree, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(real_sets, "ICON_THEMES", (("pkg-a", "ThemeA"), ("pkg-b", "ThemeB"), ("pkg-c", "ThemeC")))
    monkeypatch.setattr(real_sets, "FAMILY_CAP", 100)
    out = tmp_path / "dedup"
    out.mkdir()
    info = real_sets.build_icons_dedup(package_tree, out, n_originals=10, n_copies=8, seed=3)
    pairs = list(csv.DictReader(open(out / "pairs.csv")))
    assert info["originals"] == 10 and info["copies"] == 8 and len(pairs) == 8
    names = [path.stem.split("__")[1] for path in (out / "images" / "originals").iterdir()]
    assert len(names) == len(set(names)) == 10  # one render of each icon name, whichever theme drew it
    originals = {r["original"] for r in pairs}
    assert len(originals) == 8  # each copy from a different original
    for pair in pairs:
        assert (out / pair["copy"]).is_file() and (out / pair["original"]).is_file()
        assert set(pair["edits"].split("+")) <= set(real_sets.DEDUP_EDITS)
    again = tmp_path / "again"
    again.mkdir()
    real_sets.build_icons_dedup(package_tree, again, n_originals=10, n_copies=8, seed=3)
    assert (again / "pairs.csv").read_text() == (out / "pairs.csv").read_text()  # reproducible


def test_distinct_originals_drops_moved_and_mirrored_renders() -> None:
    icon = _flat(_icon(7, 40))
    canvas = lambda im, side: (lambda c: (c.paste(im, ((64 - side) // 2, (64 - side) // 2)), c)[1])(  # noqa: E731
        Image.new("RGB", (64, 64), "white"))
    big = canvas(icon, 40)
    small = Image.new("RGB", (64, 64), "white")
    small.paste(icon, (2, 20))  # the same render elsewhere on the canvas
    mirrored = big.transpose(Image.FLIP_LEFT_RIGHT)
    other = canvas(_flat(_icon(8, 40)), 40)
    assert real_sets.distinct_originals([big, small, mirrored, other]) == [0, 3]


def test_distinct_originals_drops_a_recoloured_or_brightened_render_of_equal_luminance() -> None:
    red = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(red).ellipse((12, 12, 52, 52), fill=(200, 30, 30))
    luminance = round(0.299 * 200 + 0.587 * 30 + 0.114 * 30)
    grey = Image.new("RGB", (64, 64), "white")  # the same drawing, grey of the red's luminance: a grayscale copy
    ImageDraw.Draw(grey).ellipse((12, 12, 52, 52), fill=(luminance,) * 3)
    darker = Image.eval(red, lambda v: int(v * 0.8))  # the brightness edit at gain 0.8, background included
    square = Image.new("RGB", (64, 64), "white")  # another shape: kept
    ImageDraw.Draw(square).rectangle((12, 12, 52, 52), fill=(200, 30, 30))
    assert real_sets.distinct_originals([red, grey, darker, square]) == [0, 3]
    # in colour alone the grey render is far from the red one: the luminance comparison is what drops it
    thumbs = [real_sets._thumb(image) for image in (red, grey)]
    assert np.sqrt(((thumbs[0] - thumbs[1]) ** 2).mean()) > 0.05


def _scene(seed: int, side: int = 192) -> Image.Image:
    """A wallpaper-like picture: many shapes on a gradient."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, side, dtype=np.float32)
    base = np.stack([np.add.outer(ramp * c[0], ramp * c[1]) * 120 + c[2] for c in rng.uniform(0, 1, (3, 3)) * [1, 1, 60]], -1)
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(60):
        x, y, r = (int(v) for v in rng.integers(0, side, 3) // [1, 1, 12])
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


def test_shifted_duplicates_drops_shifted_rescaled_and_mirrored_windows_of_one_picture() -> None:
    scene = _scene(1)
    tile = scene.crop((40, 40, 136, 136))
    shifted = scene.crop((48, 44, 144, 140))  # the window moved by 8 % and 4 % of its side
    zoomed = scene.crop((34, 34, 142, 142)).resize((96, 96), Image.LANCZOS)  # another framing: 12 % wider
    mirrored = tile.transpose(Image.FLIP_LEFT_RIGHT)
    elsewhere = scene.crop((0, 96, 96, 192))  # another part of the same picture: kept
    other = _scene(2).crop((40, 40, 136, 136))
    images = [tile, shifted, zoomed, mirrored, elsewhere, other]
    assert real_sets.shifted_duplicates(images, range(6)) == [0, 4, 5]
    # an exact-alignment comparison misses them: distinct_originals keeps the shifted and zoomed windows
    assert {1, 2} <= set(real_sets.distinct_originals(images))
    # the order decides which of a group is kept, and only ``order`` is considered
    assert real_sets.shifted_duplicates(images, [2, 0, 5]) == [2, 5]


def test_edit_copy_uses_the_named_edits() -> None:
    rng = np.random.default_rng(0)
    image = _flat(_icon(1, 64))
    seen = set()
    for _ in range(60):
        copy, edits = real_sets.edit_copy(image, rng)
        assert copy.mode == "RGB" and 1 <= len(edits) <= 2
        seen.update(edits)
    assert seen == set(real_sets.DEDUP_EDITS)


def test_glyphs_render_every_character_once_per_distinct_face(tmp_path: Path) -> None:
    package = tmp_path / "pkg" / "fonts-test" / "usr/share/fonts/truetype"
    package.mkdir(parents=True)
    for name in ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSans-Bold.ttf"):
        (package / name).write_bytes((FONTS / name).read_bytes())
    (package / "copy-of-sans.ttf").write_bytes((FONTS / "DejaVuSans.ttf").read_bytes())  # same outlines: once
    out = tmp_path / "glyphs"
    out.mkdir()
    info = real_sets.build_glyphs({"fonts-test": tmp_path / "pkg" / "fonts-test"}, out)
    assert info["faces"] == 3 and info["labels"] == 62 and info["images"] == 3 * 62
    rows = list(csv.DictReader(open(out / "labels.csv")))
    assert {r["label"] for r in rows} >= {"upper-A", "lower-a", "digit-0"}
    upper, lower = (np.asarray(Image.open(out / next(r["path"] for r in rows if r["label"] == label
                                                      and r["source"] == rows[0]["source"])).convert("L"))
                    for label in ("upper-O", "lower-o"))
    assert (upper < 128).sum() > (lower < 128).sum()  # the baseline is fixed: case shows


def test_reserved_packages_are_refused(tmp_path: Path) -> None:
    with pytest.raises(real_sets.BuildError, match="reserved"):
        real_sets.fetch_packages(["openclipart-png"], tmp_path)
    with pytest.raises(real_sets.BuildError, match="reserved"):
        real_sets.fetch_packages(["fonts-noto-color-emoji"], tmp_path)


def test_unpacked_packages_are_not_fetched_again(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "pkg" / "fonts-x"
    root.mkdir(parents=True)
    (root / ".unpacked").write_text("fonts-x_1_all.deb")
    monkeypatch.setattr(real_sets.subprocess, "run", lambda *a, **k: pytest.fail("no download expected"))
    assert real_sets.fetch_packages(["fonts-x"], tmp_path) == {"fonts-x": root}


def test_unknown_set_is_a_build_error(tmp_path: Path) -> None:
    with pytest.raises(real_sets.BuildError, match="unknown set"):
        real_sets.build(["photos"], tmp_path, tmp_path / "cache")
