"""Augmentation defaults that scale with the image size and the method; every one can be overridden."""
from __future__ import annotations

import dataclasses

from ..config import AugmentationConfig

SMALL_IMAGE_PX = 96  # below this, blur destroys most of the signal and tiny crops miss the object
CROP_SCALE_MIN = {"simclr": 0.08, "moco": 0.2, "dino": 0.4}
# Small images: a crop of under ~40 % of a 32-64 px image often misses the object. Measured on the
# sample data (resnet18 @ 32 px, SimCLR with hue ±0.5, 600 steps, held-out k-NN): 0.212 at 0.2, 0.236 at 0.35,
# 0.258 at 0.5. SimCLR keeps 70 %: on the real sets (benchmarks/real_sets.py; resnet18 @ 64 px, 2 epochs,
# leave-one-out) a 0.7 floor against 0.4 gave k-NN 0.731 vs 0.701 / cross-source recall@10 0.952 vs
# 0.942 on glyphs and 0.179 vs 0.163 / 0.414 vs 0.393 on icons (docs/benchmarks.md > SSL quality).
# MoCo and DINO were not measured at 0.7 and keep 0.4.
SMALL_CROP_SCALE_MIN = {"simclr": 0.7, "moco": 0.4, "dino": 0.4}


def local_crop_size(image_size: int) -> int:
    """DINO's local/global size ratio (96/224), rounded to a multiple of 8, at least 32 px."""
    return max(32, 8 * round(image_size * 96 / 224 / 8))


def resolve_augmentation(config: AugmentationConfig, method: str, image_size: int) -> AugmentationConfig:
    """Fill every ``None`` knob with its default for ``method`` at ``image_size``; explicit values are kept.

    Example:
        >>> resolve_augmentation(AugmentationConfig(), "simclr", 64).blur_probability
        0.0
    """
    small = image_size < SMALL_IMAGE_PX
    table = SMALL_CROP_SCALE_MIN if small else CROP_SCALE_MIN
    crop_scale_min = config.crop_scale_min if config.crop_scale_min is not None else table.get(method, 0.2)
    values = {
        "crop_scale_min": crop_scale_min,
        "blur_probability": config.blur_probability if config.blur_probability is not None else (0.0 if small else 0.5),
        "global_blur_probabilities": config.global_blur_probabilities if config.global_blur_probabilities is not None
        else ((0.0, 0.0) if small else (1.0, 0.1)),
        "local_crop_size": config.local_crop_size or local_crop_size(image_size),
        "local_crop_scale_max": config.local_crop_scale_max if config.local_crop_scale_max is not None
        else crop_scale_min,
        "local_blur_probability": config.local_blur_probability if config.local_blur_probability is not None
        else (0.0 if small else 0.5),
    }
    return dataclasses.replace(config, **values)
