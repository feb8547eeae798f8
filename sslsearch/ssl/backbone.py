"""The backbone to pretrain: a random-init timm model, sized for the run's crops, with input-size checks."""
from __future__ import annotations

from typing import Any

from torch import nn

from ..encoders import create_backbone
from ..errors import InvalidArgumentError


def is_vision_transformer(module: nn.Module) -> bool:
    """True for patch-based transformers (timm ViT, DeiT, ...), which take AdamW and need sized positions."""
    return getattr(module, "patch_embed", None) is not None


def build_backbone(name: str, model_kwargs: dict[str, Any], *, image_size: int,
                   multi_size: bool) -> tuple[nn.Module, int, dict[str, Any]]:
    """Create the backbone for training at ``image_size``.

    ViTs get ``img_size=image_size`` (unless given) and, when the method feeds crops of several
    sizes (``multi_size``, DINO), ``dynamic_img_size=True`` so positions are interpolated.

    Returns:
        (module, feature dim, the model kwargs actually used — what the exported encoder needs).

    Raises:
        UnknownNameError: not a timm architecture (with the nearest names).
    """
    kwargs = dict(model_kwargs)
    module, dim = create_backbone(name, **kwargs)
    if is_vision_transformer(module):
        changed = False
        if "img_size" not in kwargs:
            kwargs["img_size"] = image_size
            changed = True
        if multi_size and not kwargs.get("dynamic_img_size"):
            kwargs["dynamic_img_size"] = True
            changed = True
        if changed:
            module, dim = create_backbone(name, **kwargs)
    return module, dim, kwargs


def downsampling(module: nn.Module) -> int:
    """Total stride of the backbone: the patch size of a ViT, the last feature reduction of a CNN."""
    if is_vision_transformer(module):
        patch = module.patch_embed.patch_size
        return int(patch[0] if isinstance(patch, (tuple, list)) else patch)
    info = getattr(module, "feature_info", None)
    try:
        return int(info[-1]["reduction"])
    except (TypeError, KeyError, IndexError):
        return 32


def check_input_sizes(module: nn.Module, name: str, sizes: dict[str, int]) -> None:
    """Refuse crop sizes the backbone cannot take.

    Args:
        sizes: ``{"--image-size": 64, "augmentation.local_crop_size": 32}``: the option name to blame.

    Raises:
        InvalidArgumentError: a size below the backbone's stride, or (ViT) not a multiple of its patch.
    """
    stride = downsampling(module)
    vit = is_vision_transformer(module)
    for option, size in sizes.items():
        if size < stride:
            what = f"its patches are {stride} px" if vit else f"it downsamples {stride}×"
            raise InvalidArgumentError(f"{option} {size} is too small for {name} ({what}); use at least {stride} px"
                                       f" or a smaller backbone")
        if vit and size % stride and not getattr(module.patch_embed, "dynamic_img_pad", False):
            lower, upper = size // stride * stride, (size // stride + 1) * stride
            raise InvalidArgumentError(f"{option} {size} is not a multiple of {name}'s {stride} px patches; "
                                       f"use {lower} or {upper}")
