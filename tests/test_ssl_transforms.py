"""View generation: size-scaled defaults, overrides, view counts and shapes, per-seed determinism."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from sslsearch.ssl.config import AugmentationConfig
from sslsearch.ssl.transforms import (DINOTransform, RandomGaussianBlur, RandomSolarize, SimCLRTransform,
                                      local_crop_size, resolve_augmentation)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))


@pytest.mark.parametrize(("method", "size", "crop_min", "blur"), [
    ("simclr", 224, 0.08, 0.5), ("simclr", 64, 0.7, 0.0), ("simclr", 32, 0.7, 0.0), ("simclr", 96, 0.08, 0.5), ("moco", 224, 0.2, 0.5), ("moco", 32, 0.4, 0.0),
    ("dino", 224, 0.4, 0.5), ("dino", 64, 0.4, 0.0),
])
def test_defaults_scale_with_image_size(method: str, size: int, crop_min: float, blur: float) -> None:
    resolved = resolve_augmentation(AugmentationConfig(), method, size)
    assert resolved.crop_scale_min == crop_min
    assert resolved.blur_probability == blur
    assert resolved.local_blur_probability == blur
    assert resolved.global_blur_probabilities == ((1.0, 0.1) if size >= 96 else (0.0, 0.0))
    assert resolved.local_crop_scale_max == crop_min
    assert all(getattr(resolved, f.name) is not None for f in dataclasses.fields(resolved))


@pytest.mark.parametrize(("size", "local"), [(224, 96), (96, 40), (64, 32), (32, 32)])
def test_local_crop_size(size: int, local: int) -> None:
    assert local_crop_size(size) == local


def test_explicit_knobs_are_kept() -> None:
    config = AugmentationConfig(crop_scale_min=0.5, blur_probability=0.3, local_crop_size=24,
                                global_blur_probabilities=(0.7, 0.2))
    resolved = resolve_augmentation(config, "dino", 64)
    assert (resolved.crop_scale_min, resolved.blur_probability, resolved.local_crop_size) == (0.5, 0.3, 24)
    assert resolved.global_blur_probabilities == (0.7, 0.2)


def test_two_views_have_the_right_shape_and_differ(image: Image.Image) -> None:
    transform = SimCLRTransform(32, resolve_augmentation(AugmentationConfig(), "simclr", 32), MEAN, STD)
    torch.manual_seed(0)
    views = transform(image)
    assert len(views) == 2
    assert all(v.shape == (3, 32, 32) and v.dtype == torch.float32 for v in views)
    assert not torch.equal(views[0], views[1])


def test_multi_crop_views(image: Image.Image) -> None:
    config = resolve_augmentation(AugmentationConfig(local_crop_count=3), "dino", 64)
    views = DINOTransform(64, config, MEAN, STD)(image)
    assert [tuple(v.shape) for v in views] == [(3, 64, 64)] * 2 + [(3, 32, 32)] * 3


def test_views_are_deterministic_under_a_seed(image: Image.Image) -> None:
    transform = DINOTransform(64, resolve_augmentation(AugmentationConfig(), "dino", 224), MEAN, STD)
    torch.manual_seed(5)
    first = transform(image)
    torch.manual_seed(5)
    second = transform(image)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_no_augmentation_gives_the_plain_resized_image(image: Image.Image) -> None:
    config = resolve_augmentation(AugmentationConfig(crop_scale_min=1.0, crop_ratio_min=40 / 48, crop_ratio_max=40 / 48,
                                                     flip_probability=0, color_jitter_probability=0,
                                                     grayscale_probability=0, blur_probability=0), "simclr", 32)
    a, b = SimCLRTransform(32, config, MEAN, STD)(image)
    torch.testing.assert_close(a, b)


def test_blur_and_solarize_ops(image: Image.Image) -> None:
    assert RandomGaussianBlur(0.0, 1, 2)(image) is image
    blurred = np.asarray(RandomGaussianBlur(1.0, 2, 2)(image), dtype=float)
    assert blurred.std() < np.asarray(image, dtype=float).std()
    solarized = np.asarray(RandomSolarize(1.0)(image))
    original = np.asarray(image)
    assert np.array_equal(solarized, np.where(original >= 128, 255 - original, original))
    assert RandomSolarize(0.0)(image) is image
