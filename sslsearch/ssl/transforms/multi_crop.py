"""DINO multi-crop views: two global crops (blur on the first, solarisation on the second) and N local crops."""
from __future__ import annotations

import torch
from PIL import Image
from torchvision import transforms as T

from ..config import AugmentationConfig
from .ops import RandomGaussianBlur, RandomSolarize, color_distortion, random_resized_crop, to_normalized_tensor


class DINOTransform:
    """Multi-crop views (Caron et al. 2021, arXiv:2104.14294, section 3.1 and appendix).

    Args:
        image_size: global crop side in px.
        augmentation: a resolved ``AugmentationConfig``; local crops use ``local_crop_*``.
        mean, std: normalisation of the backbone.

    Call with a PIL RGB image → ``[global_1, global_2, local_1, ..., local_N]``: the globals are
    (3, image_size, image_size), the locals (3, local_crop_size, local_crop_size), float32.
    """

    def __init__(self, image_size: int, augmentation: AugmentationConfig, mean: tuple[float, ...],
                 std: tuple[float, ...]) -> None:
        a = augmentation
        sigma_scale = image_size / 224
        ratio = (a.crop_ratio_min, a.crop_ratio_max)
        colour = color_distortion(flip_probability=a.flip_probability, jitter_probability=a.color_jitter_probability,
                                  brightness=a.brightness, contrast=a.contrast, saturation=a.saturation, hue=a.hue,
                                  grayscale_probability=a.grayscale_probability)
        tail = to_normalized_tensor(mean, std)
        blur_1, blur_2 = a.global_blur_probabilities

        def blur(probability: float) -> RandomGaussianBlur:
            return RandomGaussianBlur(probability, a.blur_sigma_min * sigma_scale, a.blur_sigma_max * sigma_scale)

        global_crop = random_resized_crop(image_size, (a.crop_scale_min, a.crop_scale_max), ratio)
        self.global_1 = T.Compose([global_crop, *colour, blur(blur_1), *tail])
        self.global_2 = T.Compose([global_crop, *colour, blur(blur_2), RandomSolarize(a.solarize_probability), *tail])
        local_crop = random_resized_crop(a.local_crop_size, (a.local_crop_scale_min, a.local_crop_scale_max), ratio)
        self.local = T.Compose([local_crop, *colour, blur(a.local_blur_probability), *tail])
        self.local_crop_count = a.local_crop_count
        self.sizes = (image_size, image_size) + (a.local_crop_size,) * a.local_crop_count

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        views = [self.global_1(image), self.global_2(image)]
        views.extend(self.local(image) for _ in range(self.local_crop_count))
        return views

    def __repr__(self) -> str:
        return f"DINOTransform(globals={self.sizes[:2]}, {self.local_crop_count} locals of {self.sizes[2:3]})"
