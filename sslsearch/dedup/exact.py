"""Exact duplicates: identical file bytes (sha256, recorded by the store) and identical decoded pixels."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import BadImageError
from ..sources import load_image, pixel_hash

# Pairs at least this similar are checked for identical pixels: the same pixels give the same
# vector up to float rounding (float16 storage, batch composition), so no exact pair is missed.
EXACT_CANDIDATE_SIMILARITY = 0.995
MATCH_KINDS: tuple[str, ...] = ("keeper", "file", "pixels", "near")


def hash_groups(hashes: Sequence[str | None]) -> list[np.ndarray]:
    """Rows sharing a hash, as sorted (size,) int64 arrays of 2+ rows; None never matches.

    Example:
        >>> [g.tolist() for g in hash_groups(["a", None, "b", "a", None])]
        [[0, 3]]
    """
    by_hash: dict[str, list[int]] = {}
    for row, value in enumerate(hashes):
        if value:
            by_hash.setdefault(value, []).append(row)
    return [np.asarray(rows, dtype=np.int64) for rows in by_hash.values() if len(rows) > 1]


def chain_pairs(groups: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(first, second) pairs joining each group's rows to its first row (enough for union-find)."""
    if not groups:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    first = np.concatenate([np.full(len(g) - 1, g[0], np.int64) for g in groups])
    second = np.concatenate([g[1:] for g in groups])
    return first, second


class ContentHasher:
    """File sha256 and pixel hash of rows, decoded once on demand and cached.

    Args:
        path_of: row -> absolute image path.
        file_sha256: the store's ``sha256`` column by row, or None when the store lacks it.
    """

    def __init__(self, path_of: Callable[[int], Path], file_sha256: Sequence[str | None] | None = None) -> None:
        self._path_of = path_of
        self._file_sha256 = file_sha256
        self._cache: dict[int, tuple[str | None, str | None]] = {}

    def _load(self, row: int) -> tuple[str | None, str | None]:
        if row not in self._cache:
            try:
                decoded = load_image(self._path_of(row))
                self._cache[row] = (decoded.sha256, pixel_hash(decoded.image))
            except (BadImageError, OSError):
                self._cache[row] = (None, None)  # gone or unreadable now: it can still be a near duplicate
        return self._cache[row]

    def file_hash(self, row: int, *, compute: bool = False) -> str | None:
        """The file's sha256: from the store column when there is one, else decoded if ``compute``."""
        if self._file_sha256 is not None:
            return self._file_sha256[row] or None
        return self._load(row)[0] if compute else None

    def pixel_hash(self, row: int) -> str | None:
        """sha256 of the decoded RGB pixels (None when the file cannot be read now)."""
        return self._load(row)[1]

    @property
    def decoded(self) -> int:
        """How many files were decoded for hashing."""
        return len(self._cache)


def identical_pairs(first: np.ndarray, second: np.ndarray, hasher: ContentHasher) -> tuple[np.ndarray, np.ndarray]:
    """The candidate pairs (first[i], second[i]) whose files or decoded pixels are identical."""
    keep = [i for i, (a, b) in enumerate(zip(first.tolist(), second.tolist())) if match_kind(a, b, hasher) != "near"]
    index = np.asarray(keep, dtype=np.int64)
    return first[index], second[index]


def match_kind(member: int, keeper: int, hasher: ContentHasher, similarity: float = 1.0) -> str:
    """How ``member`` duplicates ``keeper``: "keeper" (itself), "file" (same bytes), "pixels" or "near".

    Files are only decoded when ``similarity`` reaches ``EXACT_CANDIDATE_SIMILARITY``.
    """
    if member == keeper:
        return "keeper"
    if similarity < EXACT_CANDIDATE_SIMILARITY:
        same_file = hasher.file_hash(member) is not None and hasher.file_hash(member) == hasher.file_hash(keeper)
        return "file" if same_file else "near"
    member_file, keeper_file = hasher.file_hash(member, compute=True), hasher.file_hash(keeper, compute=True)
    if member_file is not None and member_file == keeper_file:
        return "file"
    member_pixels, keeper_pixels = hasher.pixel_hash(member), hasher.pixel_hash(keeper)
    if member_pixels is not None and member_pixels == keeper_pixels:
        return "pixels"
    return "near"


def file_size(path: str | os.PathLike[str]) -> tuple[int, float]:
    """(size in bytes, modification time) of a file, or (-1, -1.0) when it is gone."""
    try:
        info = os.stat(path)
    except OSError:
        return -1, -1.0
    return int(info.st_size), float(info.st_mtime)
