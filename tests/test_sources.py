"""Tests for sslsearch.sources: listing (folders, list files), stable ids, decoding and bad-file reasons."""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sslsearch.errors import BadImageError, InputNotFoundError, InvalidArgumentError
from sslsearch.sources import (
    BAD_IMAGE_REASONS,
    IMAGE_EXTENSIONS,
    ImageRecord,
    SkippedFile,
    count_reasons,
    decode_image,
    list_images,
    load_image,
    pixel_hash,
)


def _rgb(seed: int = 0, size: tuple[int, int] = (12, 8)) -> Image.Image:
    """A random RGB image of (width, height) ``size``."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def _save(path: Path, image: Image.Image | None = None, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (image or _rgb()).save(path, format=fmt)
    return path


# --------------------------------------------------------------------------- listing


def test_image_extensions_are_lower_case_with_dot() -> None:
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"} <= IMAGE_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTENSIONS)


def test_folder_walk_labels_case_hidden_and_other_files(tmp_path: Path) -> None:
    _save(tmp_path / "cat" / "a.JPG", fmt="JPEG")
    _save(tmp_path / "cat" / "deep" / "b.png")
    _save(tmp_path / "dog" / "c.PnG", fmt="PNG")
    _save(tmp_path / "top.jpeg", fmt="JPEG")
    _save(tmp_path / ".hidden.png")
    _save(tmp_path / ".cache" / "x.png")
    _save(tmp_path / "dog" / ".thumb" / "y.png")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "dog" / "meta.json").write_text("{}")

    source = list_images(tmp_path)

    assert source.root == tmp_path.resolve() or source.root == Path(os.path.abspath(tmp_path))
    assert source.root.is_absolute()
    assert [(r.id, r.path, r.label) for r in source.records] == [
        (0, "cat/a.JPG", "cat"),
        (1, "cat/deep/b.png", "cat"),
        (2, "dog/c.PnG", "dog"),
        (3, "top.jpeg", None),
    ]
    assert len(source) == 4
    assert source.has_labels
    assert source.classes == ("cat", "dog")
    assert source.abs_path(source.records[1]) == source.root / "cat" / "deep" / "b.png"
    assert source.abs_path("dog/c.PnG").is_file()


def test_flat_folder_has_no_labels(tmp_path: Path) -> None:
    for name in ("b.png", "a.png"):
        _save(tmp_path / name)
    source = list_images(str(tmp_path))
    assert source.paths == ["a.png", "b.png"]
    assert not source.has_labels


def test_symlinked_file_is_followed(tmp_path: Path) -> None:
    target = _save(tmp_path / "elsewhere" / "real.png")
    (tmp_path / "data").mkdir()
    os.symlink(target, tmp_path / "data" / "link.png")
    os.symlink(tmp_path / "nowhere.png", tmp_path / "data" / "dangling.png")
    source = list_images(tmp_path / "data")
    assert source.paths == ["link.png"]
    assert load_image(source.abs_path("link.png")).width == 12


def test_ids_are_stable_whatever_the_creation_order(tmp_path: Path) -> None:
    names = [f"c{i % 3}/img{i:02d}.png" for i in range(12)]
    first, second = tmp_path / "one", tmp_path / "two"
    for name in names:
        _save(first / name)
    for name in reversed(names):
        _save(second / name)
    assert list_images(first).records == list_images(second).records
    records = list_images(first).records
    assert [r.id for r in records] == list(range(12))
    assert [r.path for r in records] == sorted(names)


def test_txt_list_relative_paths_comments_and_duplicates(tmp_path: Path) -> None:
    _save(tmp_path / "imgs" / "cat" / "1.png")
    _save(tmp_path / "imgs" / "dog" / "2.png")
    _save(tmp_path / "other" / "3.png")
    lists = tmp_path / "lists"
    lists.mkdir()
    absolute = tmp_path / "other" / "3.png"
    (lists / "files.txt").write_text(
        f"# my images\n../imgs/dog/2.png\n\n  ../imgs/cat/1.png  \n{absolute}\n../imgs/cat/1.png\n"
    )
    source = list_images(lists / "files.txt")
    assert source.root == Path(os.path.abspath(tmp_path))
    assert source.paths == ["imgs/cat/1.png", "imgs/dog/2.png", "other/3.png"]
    assert not source.has_labels
    assert all(source.abs_path(r).is_file() for r in source.records)


def test_list_root_is_the_common_parent(tmp_path: Path) -> None:
    _save(tmp_path / "a" / "b" / "x.png")
    _save(tmp_path / "a" / "b" / "y.png")
    (tmp_path / "list.txt").write_text("a/b/y.png\na/b/x.png\n")
    source = list_images(tmp_path / "list.txt")
    assert source.root == Path(os.path.abspath(tmp_path / "a" / "b"))
    assert source.paths == ["x.png", "y.png"]


def test_csv_list_with_labels(tmp_path: Path) -> None:
    _save(tmp_path / "p" / "1.png")
    _save(tmp_path / "p" / "2.jpg", fmt="JPEG")
    _save(tmp_path / "p" / "3.png")
    (tmp_path / "list.csv").write_text("\ufeffpath,label,extra\np/2.jpg,dog,x\np/1.png,cat,y\np/3.png,,z\np/1.png,cat,w\n")
    source = list_images(tmp_path / "list.csv")
    assert [(r.path, r.label) for r in source.records] == [("1.png", "cat"), ("2.jpg", "dog"), ("3.png", None)]
    assert source.has_labels


def test_csv_conflicting_labels_and_missing_path_column(tmp_path: Path) -> None:
    _save(tmp_path / "1.png")
    (tmp_path / "conflict.csv").write_text("path,label\n1.png,cat\n1.png,dog\n")
    with pytest.raises(InvalidArgumentError, match="two labels"):
        list_images(tmp_path / "conflict.csv")
    (tmp_path / "nopath.csv").write_text("file,label\n1.png,cat\n")
    with pytest.raises(InvalidArgumentError, match="no 'path' column"):
        list_images(tmp_path / "nopath.csv")


def test_parquet_list(tmp_path: Path) -> None:
    _save(tmp_path / "d" / "a.png")
    _save(tmp_path / "d" / "b.png")
    table = pa.table({"path": ["d/b.png", "d/a.png"], "label": [1, 0]})
    pq.write_table(table, tmp_path / "list.parquet")
    source = list_images(tmp_path / "list.parquet")
    assert [(r.id, r.path, r.label) for r in source.records] == [(0, "a.png", "0"), (1, "b.png", "1")]
    pq.write_table(pa.table({"file": ["d/a.png"]}), tmp_path / "bad.parquet")
    with pytest.raises(InvalidArgumentError, match="no 'path' column"):
        list_images(tmp_path / "bad.parquet")


def test_single_image_file_is_a_source(tmp_path: Path) -> None:
    image = _save(tmp_path / "q.png")
    source = list_images(image)
    assert source.root == Path(os.path.abspath(tmp_path))
    assert source.records == (ImageRecord(0, "q.png", None),)


def test_listing_errors(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match="does not exist"):
        list_images(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("x")
    (empty / "b.json").write_text("{}")
    with pytest.raises(InputNotFoundError, match=r"no images found .* \(saw 2 other file\(s\)\)"):
        list_images(empty)
    _save(tmp_path / "ok.png")
    (tmp_path / "list.txt").write_text("ok.png\nnope1.png\nsub/nope2.png\n")
    with pytest.raises(InputNotFoundError, match=r"2 of 3 listed file\(s\) do not exist or are not files \(first: 'nope1.png'"):
        list_images(tmp_path / "list.txt")
    (tmp_path / "blank.txt").write_text("# nothing\n\n")
    with pytest.raises(InputNotFoundError, match="holds no image paths"):
        list_images(tmp_path / "blank.txt")
    (tmp_path / "data.json").write_text("[]")
    with pytest.raises(InvalidArgumentError, match="unsupported type '.json'"):
        list_images(tmp_path / "data.json")


# --------------------------------------------------------------------------- bad files


def _reason(path: Path, **kwargs: int) -> str:
    with pytest.raises(BadImageError) as info:
        load_image(path, **kwargs)
    assert str(path) in str(info.value)
    return info.value.reason


def test_every_bad_image_reason(tmp_path: Path) -> None:
    png = io.BytesIO()
    _rgb(1, (64, 64)).save(png, "PNG")
    jpeg = io.BytesIO()
    _rgb(2, (64, 64)).save(jpeg, "JPEG", quality=90)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not a picture\n" * 10)
    (tmp_path / "cut.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (tmp_path / "cut.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (tmp_path / "header.png").write_bytes(png.getvalue()[:40])
    (tmp_path / "dir.jpg").mkdir()
    _save(tmp_path / "big.png", _rgb(3, (40, 30)))
    garbled = bytearray(png.getvalue())
    garbled[60:200] = bytes(140)  # zeros inside the IDAT stream: complete file, corrupt data
    (tmp_path / "garbled.png").write_bytes(bytes(garbled))

    reasons = {
        "missing": _reason(tmp_path / "nope.png"),
        "is_directory": _reason(tmp_path / "dir.jpg"),
        "empty": _reason(tmp_path / "empty.jpg"),
        "not_an_image": _reason(tmp_path / "text.jpg"),
        "truncated": _reason(tmp_path / "cut.png"),
        "decompression_bomb": _reason(tmp_path / "big.png", max_pixels=40 * 30 - 1),
        "unreadable": _reason(tmp_path / "garbled.png"),
    }
    assert reasons == {key: key for key in reasons}
    assert set(reasons) == set(BAD_IMAGE_REASONS)
    assert _reason(tmp_path / "cut.jpg") == "truncated"
    assert _reason(tmp_path / "header.png") == "truncated"
    assert load_image(tmp_path / "big.png", max_pixels=40 * 30).width == 40


def test_bad_files_do_not_raise_warnings_as_errors(tmp_path: Path) -> None:
    jpeg = io.BytesIO()
    _rgb(2, (64, 64)).save(jpeg, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(jpeg.getvalue()[:300])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _reason(tmp_path / "cut.jpg") == "truncated"


def test_skipped_file_and_counts() -> None:
    errors = [BadImageError("a: empty", "empty"), BadImageError("b: cut", "truncated"), BadImageError("c", "empty")]
    skipped = [SkippedFile.from_error(f"x{i}.png", e) for i, e in enumerate(errors)]
    assert skipped[0].to_dict() == {"path": "x0.png", "reason": "empty", "detail": "a: empty"}
    assert count_reasons(skipped) == {"empty": 2, "truncated": 1}
    assert list(count_reasons(errors)) == ["empty", "truncated"]


def test_images_with_bad_files_fixture(images_with_bad_files: Path, bad_file_reasons: dict[str, str]) -> None:
    source = list_images(images_with_bad_files)
    seen: dict[str, str] = {}
    good = 0
    for record in source.records:
        try:
            load_image(source.abs_path(record))
            good += 1
        except BadImageError as error:
            seen[record.path] = error.reason
    assert seen == bad_file_reasons
    assert good >= 4


# --------------------------------------------------------------------------- decoding


def test_decoded_image_fields(tmp_path: Path) -> None:
    path = _save(tmp_path / "a.png", _rgb(5, (12, 8)))
    decoded = load_image(path)
    assert decoded.image.mode == "RGB"
    assert (decoded.width, decoded.height) == (12, 8) == decoded.image.size
    import hashlib

    assert decoded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert np.array_equal(np.asarray(decoded.image), np.asarray(_rgb(5, (12, 8))))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 20))  # blue stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    path = tmp_path / "rot.jpg"
    image.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    assert Image.open(path).size == (40, 20)
    decoded = load_image(path)
    assert (decoded.width, decoded.height) == (20, 40)
    top = np.asarray(decoded.image)[2, 10]
    assert top[2] > 200 and top[0] < 60  # the left stripe is now at the top


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    pixels = np.zeros((4, 4, 4), dtype=np.uint8)
    pixels[..., 0] = 255  # red
    pixels[0, 0, 3] = 0  # fully transparent
    pixels[0, 1, 3] = 255  # opaque
    pixels[0, 2, 3] = 128  # half
    path = _save(tmp_path / "a.png", Image.fromarray(pixels, "RGBA"))
    out = np.asarray(load_image(path).image).astype(int)
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [255, 0, 0]
    assert out[0, 2, 0] == 255 and abs(out[0, 2, 1] - 127) <= 1
    la = Image.fromarray(np.stack([np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8)], -1), "LA")
    assert np.asarray(load_image(_save(tmp_path / "la.png", la)).image)[0, 0].tolist() == [255, 255, 255]


def test_palette_with_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.putpixel((0, 0), 0)
    path = tmp_path / "p.png"
    image.save(path, transparency=0)
    out = np.asarray(load_image(path).image)
    assert out[0, 0].tolist() == [255, 255, 255]  # transparent index -> white
    assert out[1, 1].tolist() == [0, 255, 0]
    gif = tmp_path / "p.gif"
    image.save(gif, transparency=0)
    assert np.asarray(load_image(gif).image)[0, 0].tolist() == [255, 255, 255]


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    for name in ("g.png", "g.tif"):
        path = _save(tmp_path / name, image)
        out = np.asarray(load_image(path).image)
        assert out.shape == (1, 4, 3)
        assert out[0, :, 0].tolist() == [0, 1, 128, 255]
        assert (out[..., 0] == out[..., 2]).all()


def test_int32_and_float_modes() -> None:
    from sslsearch.sources import to_rgb

    as_i = Image.fromarray(np.array([[0, 1000, 65535]], dtype=np.int32), "I")
    assert np.asarray(to_rgb(as_i))[0, :, 0].tolist() == [0, 4, 255]
    small_i = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32), "I")
    assert np.asarray(to_rgb(small_i))[0, :, 0].tolist() == [0, 100, 255]
    unit_f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert np.asarray(to_rgb(unit_f))[0, :, 0].tolist() == [0, 128, 255]
    wide_f = Image.fromarray(np.array([[-1.0, 0.0, 3.0]], dtype=np.float32), "F")
    assert np.asarray(to_rgb(wide_f))[0, :, 0].tolist() == [0, 64, 255]


def test_cmyk_and_grayscale(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (6, 6), (0, 255, 255, 0))  # pure red in CMYK
    out = np.asarray(load_image(_save(tmp_path / "c.jpg", cmyk, "JPEG")).image).astype(int)
    assert out[3, 3, 0] > 230 and out[3, 3, 1] < 30 and out[3, 3, 2] < 30
    out = np.asarray(load_image(_save(tmp_path / "c.tif", cmyk)).image)
    assert out[3, 3].tolist() == [255, 0, 0]
    gray = Image.new("L", (3, 3), 77)
    assert np.asarray(load_image(_save(tmp_path / "g.pgm", gray)).image)[1, 1].tolist() == [77, 77, 77]
    bits = Image.new("1", (3, 3), 1)
    assert np.asarray(load_image(_save(tmp_path / "b.bmp", bits)).image)[0, 0].tolist() == [255, 255, 255]


def test_pixel_hash(tmp_path: Path) -> None:
    image = _rgb(9, (16, 16))
    png = _save(tmp_path / "a.png", image)
    bmp = _save(tmp_path / "a.bmp", image)
    tif = _save(tmp_path / "a.tif", image)
    webp = tmp_path / "a.webp"
    image.save(webp, lossless=True)
    hashes = {pixel_hash(load_image(p).image) for p in (png, bmp, tif, webp)}
    assert len(hashes) == 1
    assert load_image(png).sha256 != load_image(bmp).sha256
    other = np.asarray(image).copy()
    other[0, 0, 0] ^= 1
    assert pixel_hash(Image.fromarray(other)) not in hashes
    # same bytes, different shape -> different hash
    assert pixel_hash(image.resize((16, 16))) in hashes
    reshaped = Image.frombytes("RGB", (8, 32), image.tobytes())
    assert pixel_hash(reshaped) not in hashes


def test_decode_image_bytes() -> None:
    buffer = io.BytesIO()
    _rgb(4, (5, 7)).save(buffer, "PNG")
    decoded = decode_image(buffer.getvalue(), name="upload")
    assert (decoded.width, decoded.height) == (5, 7)
    with pytest.raises(BadImageError, match="upload") as info:
        decode_image(b"", name="upload")
    assert info.value.reason == "empty"
