"""SimCLR / MoCo v2 views: two independent random crops with flip, colour jitter, grayscale and optional blur."""
from __future__ import annotations

import torch
from PIL import Image
from torchvision import transforms as T

from ..config import AugmentationConfig
from .ops import RandomGaussianBlur, color_distortion, random_resized_crop, to_normalized_tensor


class SimCLRTransform:
    """Two views of an image (Chen et al. 2020, arXiv:2002.05709; MoCo v2 uses the same family).

    Args:
        image_size: output side in px.
        augmentation: a resolved ``AugmentationConfig`` (no ``None`` knobs; see ``resolve_augmentation``).
        mean, std: normalisation of the backbone.

    Call with a PIL RGB image → list of two (3, image_size, image_size) float32 tensors.
    """

    def __init__(self, image_size: int, augmentation: AugmentationConfig, mean: tuple[float, ...],
                 std: tuple[float, ...]) -> None:
        a = augmentation
        sigma_scale = image_size / 224
        self.view = T.Compose([
            random_resized_crop(image_size, (a.crop_scale_min, a.crop_scale_max), (a.crop_ratio_min, a.crop_ratio_max)),
            *color_distortion(flip_probability=a.flip_probability, jitter_probability=a.color_jitter_probability,
                              brightness=a.brightness, contrast=a.contrast, saturation=a.saturation, hue=a.hue,
                              grayscale_probability=a.grayscale_probability),
            RandomGaussianBlur(a.blur_probability, a.blur_sigma_min * sigma_scale, a.blur_sigma_max * sigma_scale),
            *to_normalized_tensor(mean, std),
        ])
        self.sizes = (image_size, image_size)

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        return [self.view(image), self.view(image)]

    def __repr__(self) -> str:
        return f"SimCLRTransform(2 × {self.view})"
