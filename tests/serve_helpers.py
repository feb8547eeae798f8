"""Helpers for the serve tests: a real image index (tiny random-init backbone), bad uploads, a hostile store."""
from __future__ import annotations

import io
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from index_helpers import FINGERPRINT
from sslsearch.embed import embed_images
from sslsearch.index import build_index
from sslsearch.store import StoreWriter

SPEC = "timm:test_resnet"


def make_image_index(sample_dir: Path, root: Path) -> tuple[Path, Path, Path]:
    """The sample images embedded with ``timm:test_resnet`` at 32 px and a flat index: (images, store, index)."""
    images, store, index = root / "images", root / "emb", root / "idx"
    shutil.copytree(sample_dir, images)
    embed_images(images, SPEC, store, image_size=32, workers=0, device="cpu", progress=False)
    build_index(store, index, kind="flat", progress=False)
    return images, store, index


def png_bytes(size: tuple[int, int] = (24, 24), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims ``width`` × ``height`` pixels (a decompression bomb's signature)."""
    data = png_bytes((8, 8))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    start = data.index(b"IHDR") - 4
    return data[:start] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[start + 25:]


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def make_hostile_index(root: Path) -> tuple[Path, Path]:
    """A store (synthetic encoder: no image queries) whose paths try to leave the source root, and its index.

    Ids 0..2 name ``../secret.png``, ``/etc/passwd`` and ``sub/../../secret.png``; ids 3.. are real
    images ``ok_<id>.png`` under ``root/images``. ``root/secret.png`` exists beside the source root.
    Returns (source root, index dir).
    """
    images = root / "images"
    images.mkdir(parents=True)
    (root / "secret.png").write_bytes(png_bytes(colour=(0, 0, 0)))
    n, dim = 40, 32
    paths = ["../secret.png", "/etc/passwd", "sub/../../secret.png"] + [f"ok_{i}.png" for i in range(3, n)]
    for path in paths[3:]:
        (images / path).write_bytes(png_bytes(colour=(int(path[3:-4]) * 5, 100, 100)))
    vectors = np.random.default_rng(1).standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with StoreWriter(root / "emb", dim=dim, dtype="float32", encoder=dict(FINGERPRINT), source_root=str(images)) as w:
        w.write(np.arange(n), paths, vectors)
    build_index(root / "emb", root / "idx", kind="flat", progress=False)
    return images, root / "idx"
