"""MAE's single view: a random resized crop and a horizontal flip, nothing else (masking does the rest)."""
from __future__ import annotations

import torch
from PIL import Image
from torchvision import transforms as T

from ..config import AugmentationConfig
from .ops import random_resized_crop, to_normalized_tensor


class MAETransform:
    """One view per image (He et al. 2021, arXiv:2111.06377, appendix A.1: crop scale [0.2, 1], flip).

    Colour jitter, grayscale and blur are not used: the task is to reconstruct the pixels, and the
    paper found they do not help.

    Args:
        image_size: output side in px.
        augmentation: a resolved ``AugmentationConfig``; only the crop and flip knobs are read.
        mean, std: normalisation of the backbone.

    Call with a PIL RGB image → a list of one (3, image_size, image_size) float32 tensor.
    """

    def __init__(self, image_size: int, augmentation: AugmentationConfig, mean: tuple[float, ...],
                 std: tuple[float, ...]) -> None:
        a = augmentation
        self.view = T.Compose([
            random_resized_crop(image_size, (a.crop_scale_min, a.crop_scale_max), (a.crop_ratio_min, a.crop_ratio_max)),
            T.RandomHorizontalFlip(p=a.flip_probability),
            *to_normalized_tensor(mean, std),
        ])
        self.sizes = (image_size,)

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        return [self.view(image)]

    def __repr__(self) -> str:
        return f"MAETransform({self.view})"
