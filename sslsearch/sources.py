"""Image sources: list images (folder or list file) with stable ids, decode them to RGB, classify bad files."""
from __future__ import annotations

import csv
import hashlib
import io
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadImageError, InputNotFoundError, InvalidArgumentError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
LIST_EXTENSIONS: frozenset[str] = frozenset({".txt", ".csv", ".parquet"})
DEFAULT_MAX_PIXELS = 178_956_970
BAD_IMAGE_REASONS: tuple[str, ...] = (
    "missing", "is_directory", "empty", "not_an_image", "truncated", "decompression_bomb", "unreadable",
)

# Leading bytes of the formats we accept: a file that starts like an image but fails to parse is
# reported as damaged (truncated/unreadable), not as "not an image".
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"P5", "PGM"), (b"P6", "PPM"),
)


# --------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class ImageRecord:
    """One image of a source.

    Attributes:
        id: dense 0..n-1, the position of ``path`` in the sorted list of paths (stable for the same input).
        path: POSIX path relative to the source root.
        label: ImageFolder class (first folder under the root), a list file's ``label`` column, or None.
    """

    id: int
    path: str
    label: str | None = None


@dataclass(frozen=True)
class ImageSource:
    """The images of a folder or list file, sorted by relative path.

    Attributes:
        root: absolute folder every record path is relative to.
        records: one record per image, ``records[i].id == i``.
    """

    root: Path
    records: tuple[ImageRecord, ...]

    def __len__(self) -> int:
        return len(self.records)

    def abs_path(self, record_or_path: ImageRecord | str) -> Path:
        """The absolute path of a record (or of a root-relative POSIX path)."""
        relative = record_or_path.path if isinstance(record_or_path, ImageRecord) else record_or_path
        return self.root / relative

    @property
    def has_labels(self) -> bool:
        """True when at least one record carries a label."""
        return any(record.label is not None for record in self.records)

    @property
    def paths(self) -> list[str]:
        """Relative paths in id order."""
        return [record.path for record in self.records]

    @property
    def classes(self) -> tuple[str, ...]:
        """The distinct labels, sorted."""
        return tuple(sorted({r.label for r in self.records if r.label is not None}))


def query_image_files(paths: Iterable[str | os.PathLike[str]], *, alternatives: str = "") -> list[str]:
    """Image files of the query paths given, in order: files as they are, folders expanded with ``list_images``.

    Raises:
        InputNotFoundError: a path that does not exist, a folder without images, or no images at all
            (``alternatives`` names what else the caller accepts, e.g. ", or use --vectors / --ids").
    """
    files: list[str] = []
    for path in paths:
        if not Path(path).exists():
            raise InputNotFoundError(f"query image {os.fspath(path)!r} does not exist; pass image files or folders")
        if Path(path).is_dir():
            source = list_images(path)
            files += [str(source.abs_path(record)) for record in source.records]
        else:
            files.append(os.fspath(path))
    if not files:
        raise InputNotFoundError(f"no query images given; pass image files or folders{alternatives}")
    return files


def list_images(data: str | os.PathLike[str]) -> ImageSource:
    """List the images of a folder, a list file or a single image, with stable ids.

    ``data`` may be:

    * a folder, walked recursively: files whose extension (any case) is in ``IMAGE_EXTENSIONS``;
      hidden files and folders (name starting with ".") are skipped; symlinked files are
      followed (symlinked folders are not, so a link loop cannot hang the walk). A file in a
      sub-folder gets the first folder under ``data`` as its label (ImageFolder layout).
    * a ``.txt`` list (one path per line; blank lines and ``#`` comments ignored), a ``.csv``
      list (header row with a ``path`` column, optional ``label``) or a ``.parquet`` table
      (column ``path``, optional ``label``). Relative paths resolve against the list file's
      folder; the source root is the deepest folder holding every listed file; duplicate
      entries collapse to one. Labels come only from the ``label`` column.
    * one image file: a source of one record, rooted at its folder.

    Ids are positions in the sorted list of relative POSIX paths, so the same input gives the
    same ids whatever order the files were found or listed in.

    Raises:
        InputNotFoundError: ``data`` does not exist; a folder with no images; a list with no
            entries or with entries that do not exist.
        InvalidArgumentError: an unsupported file type, a table without a ``path`` column, or one
            path listed with two different labels.

    Example:
        >>> source = list_images("sample-data")  # doctest: +SKIP
        >>> source.records[0]  # doctest: +SKIP
        ImageRecord(id=0, path='arrow/arrow_00007.png', label='arrow')
    """
    location = Path(os.path.abspath(os.fspath(data)))
    if not location.exists():
        raise InputNotFoundError(f"image source {os.fspath(data)!r} does not exist; pass a folder of images "
                                 "or a .txt/.csv/.parquet list of image paths")
    if location.is_dir():
        return _list_folder(location)
    suffix = location.suffix.lower()
    if suffix in LIST_EXTENSIONS:
        return _list_file(location, suffix)
    if suffix in IMAGE_EXTENSIONS:
        return ImageSource(root=location.parent, records=(ImageRecord(0, location.name, None),))
    raise InvalidArgumentError(
        f"image source {os.fspath(data)!r} has an unsupported type {suffix or '(no extension)'!r}; expected a "
        f"folder, a list file ({', '.join(sorted(LIST_EXTENSIONS))}) or an image ({', '.join(sorted(IMAGE_EXTENSIONS))})"
    )


def _list_folder(root: Path) -> ImageSource:
    # os.scandir gives the entry type without a stat per file (d_type), which matters at millions of files.
    found: dict[str, str | None] = {}
    others = 0
    pending: list[tuple[str, tuple[str, ...]]] = [(str(root), ())]
    while pending:
        directory, parts = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as error:
            raise InputNotFoundError(f"cannot list folder {directory} ({error.strerror or error}); "
                                     "check its permissions") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                pending.append((entry.path, (*parts, entry.name)))
            elif os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS or not entry.is_file():
                others += 1  # another kind of file, a dangling symlink, or a link to a folder
            else:
                found["/".join((*parts, entry.name))] = parts[0] if parts else None
    if not found:
        raise InputNotFoundError(
            f"no images found in {root} (saw {others} other file(s)); expected files ending in "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))} (any case)"
        )
    return _make_source(root, found)


def _list_file(list_path: Path, suffix: str) -> ImageSource:
    entries = _read_list_entries(list_path, suffix)
    if not entries:
        raise InputNotFoundError(f"list file {list_path} holds no image paths; add one path per line/row")
    base = list_path.parent
    labelled: dict[str, str | None] = {}
    missing: list[str] = []
    for raw, label in entries:
        full = os.path.normpath(os.path.join(base, os.path.expanduser(raw)))
        if not os.path.isfile(full):
            missing.append(raw)
            continue
        if full in labelled and labelled[full] != label:
            raise InvalidArgumentError(
                f"list file {list_path} gives {raw!r} two labels ({labelled[full]!r} and {label!r}); "
                "give each path one label"
            )
        labelled[full] = label
    if missing:
        raise InputNotFoundError(
            f"list file {list_path}: {len(missing)} of {len(entries)} listed file(s) do not exist or are not files "
            f"(first: {missing[0]!r}, resolved against {base}); fix or remove those entries"
        )
    root = Path(os.path.commonpath([os.path.dirname(p) for p in labelled]))
    found = {Path(os.path.relpath(p, root)).as_posix(): label for p, label in labelled.items()}
    return _make_source(root, found)


def _read_list_entries(list_path: Path, suffix: str) -> list[tuple[str, str | None]]:
    if suffix == ".txt":
        lines = list_path.read_text(encoding="utf-8-sig").splitlines()
        return [(s, None) for s in (line.strip() for line in lines) if s and not s.startswith("#")]
    if suffix == ".csv":
        with open(list_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            reader.fieldnames = columns
            rows: list[Mapping[str, str | None]] = list(reader)
        paths = [r.get("path") for r in rows]
        labels = [r.get("label") for r in rows] if "label" in columns else [None] * len(rows)
    else:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(list_path)
        except Exception as error:  # pyarrow raises several types for a foreign or damaged file
            raise InvalidArgumentError(f"cannot read {list_path} as Parquet ({error}); pass a valid Parquet file") from None
        columns = table.column_names
        paths = table.column("path").to_pylist() if "path" in columns else []
        labels = table.column("label").to_pylist() if "label" in columns else [None] * table.num_rows
    if "path" not in columns:
        raise InvalidArgumentError(
            f"list file {list_path} has no 'path' column (columns: {', '.join(map(str, columns)) or 'none'}); "
            "add a header with a 'path' column (and optionally 'label')"
        )
    return [
        (str(p).strip(), None if label is None or str(label).strip() == "" else str(label).strip())
        for p, label in zip(paths, labels)
        if p is not None and str(p).strip()
    ]


def _make_source(root: Path, found: Mapping[str, str | None]) -> ImageSource:
    ordered = sorted(found)
    return ImageSource(root=root, records=tuple(ImageRecord(i, p, found[p]) for i, p in enumerate(ordered)))


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image ready for a model.

    Attributes:
        image: mode "RGB", EXIF orientation applied, transparency composited on white.
        width: width after the EXIF rotation.
        height: height after the EXIF rotation.
        sha256: hex sha256 of the raw file bytes.
    """

    image: Image.Image
    width: int
    height: int
    sha256: str


@dataclass(frozen=True)
class SkippedFile:
    """A file left out because it could not be decoded (recorded in manifests as path + reason)."""

    path: str
    reason: str
    detail: str = ""

    @classmethod
    def from_error(cls, path: str | os.PathLike[str], error: BadImageError) -> "SkippedFile":
        return cls(path=os.fspath(path), reason=error.reason, detail=str(error))

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason, "detail": self.detail}


def load_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Read and fully decode an image file into RGB.

    Args:
        path: the image file.
        max_pixels: refuse images with more pixels than this (decompression bombs).

    Returns:
        The decoded image (see ``decode_image`` for the colour conversions).

    Raises:
        BadImageError: with ``reason`` one of ``BAD_IMAGE_REASONS``: "missing", "is_directory",
            "empty" (0 bytes), "not_an_image", "truncated", "decompression_bomb", "unreadable".

    Example:
        >>> decoded = load_image("cat.jpg")  # doctest: +SKIP
        >>> decoded.image.mode, decoded.width, decoded.height  # doctest: +SKIP
        ('RGB', 640, 480)
    """
    location = Path(path)
    try:
        data = location.read_bytes()
    except FileNotFoundError:
        raise BadImageError(f"{location}: file does not exist", "missing") from None
    except IsADirectoryError:
        raise BadImageError(f"{location}: is a directory, not an image file", "is_directory") from None
    except OSError as error:
        if location.is_dir():
            raise BadImageError(f"{location}: is a directory, not an image file", "is_directory") from None
        raise BadImageError(f"{location}: cannot read the file ({error.strerror or error})", "unreadable") from None
    return decode_image(data, name=str(location), max_pixels=max_pixels)


def decode_image(data: bytes, *, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode encoded image bytes into RGB (the work of ``load_image`` after reading the file).

    Conversions: EXIF orientation is applied; alpha (RGBA, LA, PA) and palette / tRNS
    transparency are composited on white; L, 1, P, CMYK, YCbCr become RGB; 16-bit integer
    images are scaled by 255/65535 (not clipped); other integer and float images are scaled
    linearly (floats in [0, 1] by 255, anything else from its min..max to 0..255).
    Animated files give their first frame.

    Raises:
        BadImageError: see ``load_image``.
    """
    if not data:
        raise BadImageError(f"{name}: file is empty (0 bytes)", "empty")
    digest = hashlib.sha256(data).hexdigest()
    looks_like = _format_from_magic(data)
    # Warnings (corrupt EXIF, bomb size) must not reach the user's filters: under `-W error` they
    # would turn a readable file into a crash. The bomb check is ours (max_pixels), below.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as error:
            raise BadImageError(f"{name}: {error} (Pillow's own limit, PIL.Image.MAX_IMAGE_PIXELS)",
                                "decompression_bomb") from None
        except UnidentifiedImageError:
            if looks_like:
                reason = "truncated" if _lacks_end_marker(data, looks_like) else "unreadable"
                raise BadImageError(f"{name}: starts like a {looks_like} file but its header cannot be parsed "
                                    f"({'truncated' if reason == 'truncated' else 'corrupt'})", reason) from None
            raise BadImageError(f"{name}: not an image (unrecognised format, {len(data)} bytes)", "not_an_image") from None
        except Exception as error:  # plugins raise OSError, SyntaxError, ValueError, struct.error ...
            raise _damaged(name, error, looks_like or "image", data) from None
        width, height = image.size
        if width * height > max_pixels:
            raise BadImageError(f"{name}: {width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels} "
                                "(possible decompression bomb); raise max_pixels if the image is genuine",
                                "decompression_bomb")
        source_rawmode = _tile_rawmode(image)
        try:
            image.load()
        except Exception as error:
            raise _damaged(name, error, image.format or looks_like or "image", data) from None
        try:
            image = ImageOps.exif_transpose(image)
        except Exception:  # corrupt EXIF: keep the pixels as stored rather than drop the image
            pass
        try:
            rgb = to_rgb(image, source_rawmode=source_rawmode)
        except Exception as error:
            raise BadImageError(f"{name}: cannot convert mode {image.mode!r} to RGB ({error})", "unreadable") from None
    return DecodedImage(image=rgb, width=rgb.width, height=rgb.height, sha256=digest)


def _format_from_magic(data: bytes) -> str | None:
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _tile_rawmode(image: Image.Image) -> str | None:
    try:
        args = image.tile[0].args if image.tile else None
    except (AttributeError, IndexError):
        return None
    if isinstance(args, tuple):
        args = args[0] if args else None
    return args if isinstance(args, str) else None


def _lacks_end_marker(data: bytes, fmt: str) -> bool:
    """True when a damaged file of a format with an end marker does not end with it (it was cut short)."""
    tail = data[-64:]
    if fmt == "PNG":
        return b"IEND" not in tail
    if fmt == "JPEG":
        return b"\xff\xd9" not in tail
    if fmt == "GIF":
        return not data.rstrip(b"\x00").endswith(b";")
    if fmt == "WEBP":
        return len(data) < 8 + int.from_bytes(data[4:8], "little")  # RIFF chunk size
    return False


def _damaged(name: str, error: BaseException, fmt: str, data: bytes) -> BadImageError:
    text = str(error) or type(error).__name__
    lowered = text.lower()
    if isinstance(error, Image.DecompressionBombError):
        return BadImageError(f"{name}: {text}", "decompression_bomb")
    if isinstance(error, MemoryError):
        return BadImageError(f"{name}: out of memory while decoding", "unreadable")
    # "broken data stream" is also what a complete but corrupt file gives: only the end marker tells those apart.
    truncated = any(s in lowered for s in ("truncat", "premature end", "unexpected end", "end of file"))
    if truncated or isinstance(error, EOFError) or _lacks_end_marker(data, fmt.upper()):
        return BadImageError(f"{name}: {fmt} data is truncated ({text})", "truncated")
    return BadImageError(f"{name}: cannot decode {fmt} data ({type(error).__name__}: {text})", "unreadable")


def to_rgb(image: Image.Image, *, source_rawmode: str | None = None) -> Image.Image:
    """Convert a decoded image of any Pillow mode to 8-bit RGB, transparency composited on white.

    Args:
        image: a loaded Pillow image.
        source_rawmode: the decoder's raw mode when known (tells a 16-bit file stored in mode "I").
    """
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        gray = _scale_to_uint8(np.asarray(image), mode, source_rawmode)
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), "RGB")
    return image.convert("RGB")


def _scale_to_uint8(values: np.ndarray, mode: str, source_rawmode: str | None) -> np.ndarray:
    """Map integer / float pixels to uint8 without clipping (shape (h, w) -> (h, w) uint8)."""
    array = values.astype(np.float64)
    finite = array[np.isfinite(array)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    sixteen_bit = mode.startswith("I;16") or (source_rawmode or "").startswith("I;16")
    if sixteen_bit or (mode == "I" and low >= 0 and 255 < high <= 65535):
        scaled = array * (255.0 / 65535.0)
    elif mode == "I" and low >= 0 and high <= 255:
        scaled = array
    elif mode == "F" and low >= 0 and high <= 1:
        scaled = array * 255.0
    elif high > low:
        scaled = (array - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(array)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def pixel_hash(image: Image.Image) -> str:
    """The sha256 of an image's RGB pixels and size: identical for the same picture in any lossless container.

    Args:
        image: any Pillow image; non-RGB images are converted with ``to_rgb`` first.
    """
    rgb = image if image.mode == "RGB" else to_rgb(image)
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def count_reasons(skipped: Iterable[SkippedFile | BadImageError]) -> dict[str, int]:
    """Count bad files by reason, in ``BAD_IMAGE_REASONS`` order (for one-line summaries)."""
    counts = dict.fromkeys(BAD_IMAGE_REASONS, 0)
    for item in skipped:
        counts[item.reason] = counts.get(item.reason, 0) + 1
    return {reason: n for reason, n in counts.items() if n}
