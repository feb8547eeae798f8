"""Random image operations for views (blur, solarise, colour distortion); all randomness from torch's RNG."""
from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T


def uniform(low: float, high: float) -> float:
    """A float in [low, high) from torch's global RNG (so per-sample seeding covers it)."""
    return low + (high - low) * float(torch.rand(()))


class RandomGaussianBlur:
    """Gaussian blur with probability ``probability`` and sigma uniform in [sigma_min, sigma_max] px."""

    def __init__(self, probability: float, sigma_min: float, sigma_max: float) -> None:
        self.probability, self.sigma_min, self.sigma_max = probability, sigma_min, sigma_max

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.probability <= 0 or float(torch.rand(())) >= self.probability:
            return image
        return image.filter(ImageFilter.GaussianBlur(radius=uniform(self.sigma_min, self.sigma_max)))

    def __repr__(self) -> str:
        return f"RandomGaussianBlur(p={self.probability}, sigma=[{self.sigma_min:.3g}, {self.sigma_max:.3g}])"


class RandomSolarize:
    """Invert pixels above 128 with probability ``probability`` (BYOL / DINO)."""

    def __init__(self, probability: float) -> None:
        self.probability = probability

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.probability <= 0 or float(torch.rand(())) >= self.probability:
            return image
        return ImageOps.solarize(image, threshold=128)

    def __repr__(self) -> str:
        return f"RandomSolarize(p={self.probability})"


def random_resized_crop(size: int, scale: tuple[float, float], ratio: tuple[float, float]) -> T.RandomResizedCrop:
    return T.RandomResizedCrop(size, scale=scale, ratio=ratio, interpolation=T.InterpolationMode.BICUBIC,
                               antialias=True)


def color_distortion(*, flip_probability: float, jitter_probability: float, brightness: float, contrast: float,
                     saturation: float, hue: float, grayscale_probability: float) -> list[Callable]:
    """Flip, colour jitter (applied with a probability) and random grayscale, in SimCLR's order."""
    ops: list[Callable] = [T.RandomHorizontalFlip(p=flip_probability)]
    if jitter_probability > 0:
        ops.append(T.RandomApply([T.ColorJitter(brightness, contrast, saturation, hue)], p=jitter_probability))
    if grayscale_probability > 0:
        ops.append(T.RandomGrayscale(p=grayscale_probability))
    return ops


def to_normalized_tensor(mean: tuple[float, ...], std: tuple[float, ...]) -> list[Callable]:
    """PIL → (3, H, W) float32 tensor normalised with ``mean``/``std``."""
    return [T.ToTensor(), T.Normalize(mean, std)]
