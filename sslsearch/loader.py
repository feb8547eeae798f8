"""Batches of decoded images for an encoder: decode + resize in worker processes, normalise per batch."""
from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .encoders import Encoder
from .errors import BadImageError
from .sources import load_image


@dataclass(frozen=True)
class BatchPreprocessing:
    """An encoder's eval preprocessing split in two, with the same result as ``encoder.transform``.

    ``per_image`` (in the decode workers): resize + center-crop in PIL → (H, W, 3) uint8.
    ``per_batch`` (in the collate, still in the worker): (n, H, W, 3) uint8 → (n, 3, H, W) float32
    scaled to [0, 1] and normalised, in one vectorised pass instead of one per image; for a conv
    net the batch comes out channels_last with no extra copy (it is the uint8 layout, permuted).
    """

    resize_size: int
    image_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channels_last: bool

    @classmethod
    def of(cls, encoder: Encoder) -> "BatchPreprocessing":
        pre = encoder.preprocessing
        return cls(pre.resize_size, pre.image_size, pre.interpolation, tuple(pre.mean), tuple(pre.std),
                   encoder.channels_last)

    @functools.cached_property
    def _resize_crop(self) -> Any:
        from torchvision import transforms as T

        mode = getattr(T.InterpolationMode, self.interpolation.upper())
        return T.Compose([T.Resize(self.resize_size, interpolation=mode, antialias=True), T.CenterCrop(self.image_size)])

    def per_image(self, image: Image.Image) -> np.ndarray:
        """PIL RGB image → (image_size, image_size, 3) uint8."""
        return np.array(self._resize_crop(image), dtype=np.uint8, copy=True)

    def per_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, H, W, 3) uint8 → (n, 3, H, W) float32, the same values as ToTensor + Normalize per image."""
        images = pixels.permute(0, 3, 1, 2)  # a channels_last view
        if not self.channels_last:
            images = images.contiguous()
        images = images.to(torch.float32).div(255)
        mean = torch.tensor(self.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[:, None, None]
        return images.sub_(mean).div_(std)


@dataclass
class DecodedBatch:
    """What the collate function hands the main process.

    Attributes:
        positions: (n,) int64 positions (into the item list) of the decoded images.
        images: (n, 3, H, W) float32, preprocessed (channels_last for conv nets).
        widths, heights: decoded sizes (after EXIF rotation).
        sha256: hex digests of the file bytes.
        skipped: (position, reason, detail) of the files that could not be decoded.
    """

    positions: torch.Tensor
    images: torch.Tensor
    widths: list[int]
    heights: list[int]
    sha256: list[str]
    skipped: list[tuple[int, str, str]] = field(default_factory=list)

    def pin_memory(self) -> "DecodedBatch":
        self.images = self.images.pin_memory()
        return self


Item = tuple[int, "np.ndarray | None", int, int, str, str]  # position, pixels, width, height, sha256 | reason, detail


class ImageFiles(torch.utils.data.Dataset):
    """Decode + resize one file per item; a bad file becomes a tagged item instead of an exception."""

    def __init__(self, paths: Sequence[Path], preprocessing: BatchPreprocessing) -> None:
        self.paths = list(paths)
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int) -> Item:
        try:
            decoded = load_image(self.paths[position])
        except BadImageError as error:
            return position, None, 0, 0, error.reason, str(error)
        try:
            pixels = self.preprocessing.per_image(decoded.image)
        except Exception as error:  # noqa: BLE001 - a transform failing on one file must not stop the run
            return position, None, 0, 0, "unreadable", f"{self.paths[position]}: cannot resize ({error})"
        return position, pixels, decoded.width, decoded.height, decoded.sha256, ""


@dataclass(frozen=True)
class CollateDecoded:
    """Stack a batch's pixels and finish the preprocessing; keep the bad files apart with their reasons."""

    preprocessing: BatchPreprocessing

    def __call__(self, items: list[Item]) -> DecodedBatch:
        good = [item for item in items if item[1] is not None]
        bad = [(item[0], item[4], item[5]) for item in items if item[1] is None]
        if good:
            images = self.preprocessing.per_batch(torch.from_numpy(np.stack([item[1] for item in good])))
        else:
            images = torch.zeros(0)
        return DecodedBatch(positions=torch.tensor([item[0] for item in good], dtype=torch.int64), images=images,
                            widths=[item[2] for item in good], heights=[item[3] for item in good],
                            sha256=[item[4] for item in good], skipped=bad)


def aligned_batches(todo: Sequence[int], batch_size: int) -> list[list[int]]:
    """Positions to decode, grouped by their fixed slot ``position // batch_size``.

    Grouping by slot (not by order among the remaining items) means a resumed run sends the
    encoder the same batches as an uninterrupted one, so the vectors are identical bit for bit.
    """
    groups: dict[int, list[int]] = {}
    for position in todo:
        groups.setdefault(position // batch_size, []).append(position)
    return [groups[slot] for slot in sorted(groups)]


def iter_decoded(paths: Sequence[Path], encoder: Encoder, batches: list[list[int]], *, workers: int,
                 pin_memory: bool = False) -> Iterator[DecodedBatch]:
    """Decode ``paths`` for ``encoder`` in ``batches`` (lists of positions) with ``workers`` processes (0 = here)."""
    if not batches:
        return iter(())
    preprocessing = BatchPreprocessing.of(encoder)
    loader = torch.utils.data.DataLoader(
        ImageFiles(paths, preprocessing), batch_sampler=batches, num_workers=workers, collate_fn=CollateDecoded(preprocessing),
        pin_memory=pin_memory, prefetch_factor=4 if workers else None, persistent_workers=False)
    return iter(loader)
