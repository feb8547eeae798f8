"""View generation for self-supervised methods: two-view (SimCLR/MoCo) and multi-crop (DINO)."""
from __future__ import annotations

from .defaults import SMALL_IMAGE_PX, local_crop_size, resolve_augmentation
from .multi_crop import DINOTransform
from .ops import RandomGaussianBlur, RandomSolarize
from .two_view import SimCLRTransform

__all__ = ["DINOTransform", "RandomGaussianBlur", "RandomSolarize", "SMALL_IMAGE_PX", "SimCLRTransform",
           "local_crop_size", "resolve_augmentation"]
