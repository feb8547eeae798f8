"""MAE's masking and loss: per-sample random patch masks, patchify/unpatchify, MSE on the masked patches."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import InvalidArgumentError

NORM_PIXEL_EPS = 1e-6  # added to a patch's pixel variance before the square root (as in the paper's code)


@dataclass(frozen=True)
class PatchMask:
    """Which patches of each image the encoder sees.

    Attributes:
        keep: (B, K) int64, indices of the visible patches, in shuffled order (K = visible count).
        restore: (B, N) int64, the permutation that puts [visible…, masked…] tokens back in patch order.
        mask: (B, N) float32, 1 for masked (hidden) patches, 0 for visible ones, in patch order.
    """

    keep: torch.Tensor
    restore: torch.Tensor
    mask: torch.Tensor

    @property
    def visible_count(self) -> int:
        return int(self.keep.shape[1])


def visible_patch_count(num_patches: int, mask_ratio: float) -> int:
    """Patches each image keeps: ``int(N · (1 - mask_ratio))`` (as in the paper's code).

    Raises:
        InvalidArgumentError: the ratio is outside (0, 1), or leaves no visible or no masked patch.

    Example:
        >>> visible_patch_count(64, 0.75)
        16
    """
    if not 0.0 < mask_ratio < 1.0:
        raise InvalidArgumentError(f"mae.mask_ratio must be between 0 and 1 (exclusive), got {mask_ratio}; "
                                   "the paper uses 0.75")
    visible = int(num_patches * (1.0 - mask_ratio))
    if visible < 1 or visible >= num_patches:
        raise InvalidArgumentError(f"mae.mask_ratio {mask_ratio} with {num_patches} patches leaves "
                                   f"{visible} visible and {num_patches - visible} masked; each must be at least 1 — "
                                   "choose a ratio nearer 0.75 or use more patches (smaller patch size)")
    return visible


def random_patch_mask(batch_size: int, num_patches: int, mask_ratio: float, *, device: torch.device | str = "cpu",
                      generator: torch.Generator | None = None) -> PatchMask:
    """Independent uniform random masks per image (He et al. 2021, arXiv:2111.06377, section 3).

    Each image gets its own random permutation of patches (argsort of uniform noise); the first
    ``visible_patch_count`` of it are kept. Randomness comes from ``generator`` or, when None,
    torch's global RNG (which training checkpoints restore, so resumed runs mask identically).

    Returns:
        A ``PatchMask``.

    Example:
        >>> m = random_patch_mask(2, 16, 0.75)
        >>> m.keep.shape, float(m.mask.sum())
        (torch.Size([2, 4]), 24.0)
    """
    visible = visible_patch_count(num_patches, mask_ratio)
    noise = torch.rand(batch_size, num_patches, generator=generator,
                       device=generator.device if generator is not None else device).to(device)
    shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    restore = torch.argsort(shuffle, dim=1)
    keep = shuffle[:, :visible]
    mask = torch.ones(batch_size, num_patches, device=device)
    mask[:, :visible] = 0
    mask = torch.gather(mask, 1, restore)  # back to patch order
    return PatchMask(keep=keep, restore=restore, mask=mask)


def gather_tokens(tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Select tokens per sample: (B, N, D) and (B, K) int64 → (B, K, D)."""
    return torch.gather(tokens, 1, indices.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) → (B, N, p·p·C) with patches in row-major order and pixels ordered (row, column, channel).

    Raises:
        InvalidArgumentError: H or W not a multiple of ``patch_size``.
    """
    batch, channels, height, width = images.shape
    if height % patch_size or width % patch_size:
        raise InvalidArgumentError(f"image size {height}×{width} is not a multiple of the {patch_size} px patches; "
                                   f"use a multiple of {patch_size}")
    rows, columns = height // patch_size, width // patch_size
    x = images.reshape(batch, channels, rows, patch_size, columns, patch_size)
    x = torch.einsum("bchpwq->bhwpqc", x)
    return x.reshape(batch, rows * columns, patch_size * patch_size * channels)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int], channels: int = 3) -> torch.Tensor:
    """Inverse of ``patchify``: (B, rows·columns, p·p·C) → (B, C, rows·p, columns·p)."""
    batch = patches.shape[0]
    rows, columns = grid
    x = patches.reshape(batch, rows, columns, patch_size, patch_size, channels)
    x = torch.einsum("bhwpqc->bchpwq", x)
    return x.reshape(batch, channels, rows * patch_size, columns * patch_size)


def normalized_patch_targets(patches: torch.Tensor) -> torch.Tensor:
    """Each patch's pixels standardised by its own mean and variance: (B, N, P) → (B, N, P) float32.

    The variance is the unbiased one (``torch.var``'s default), as in the paper's code.
    """
    patches = patches.float()
    mean = patches.mean(dim=-1, keepdim=True)
    variance = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (variance + NORM_PIXEL_EPS) ** 0.5


def mae_loss(predictions: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, patch_size: int, *,
             norm_pixel_loss: bool = True) -> torch.Tensor:
    """Mean squared error of the reconstruction, on the masked patches only (He et al. 2021, arXiv:2111.06377).

    ``loss = Σ_i,n mask[i,n] · mean_p (pred[i,n,p] - target[i,n,p])² / Σ_i,n mask[i,n]``, where the
    target is the input's pixels of patch n, standardised per patch when ``norm_pixel_loss``.

    Args:
        predictions: (B, N, p·p·C) decoder outputs, patches in row-major order.
        images: (B, C, H, W) the (normalised) input images; N = (H/p)·(W/p).
        mask: (B, N), 1 for masked patches, 0 for visible ones.
        patch_size: p.
        norm_pixel_loss: standardise each target patch (the paper's default; better features).

    Returns:
        Scalar float32 loss.

    Example:
        >>> images = torch.randn(2, 3, 8, 8)
        >>> mask = torch.ones(2, 4)
        >>> float(mae_loss(patchify(images, 4), images, mask, 4, norm_pixel_loss=False))
        0.0
    """
    targets = patchify(images.float(), patch_size)
    if norm_pixel_loss:
        targets = normalized_patch_targets(targets)
    if predictions.shape != targets.shape:
        raise InvalidArgumentError(f"MAE predictions {tuple(predictions.shape)} do not match the image patches "
                                   f"{tuple(targets.shape)}")
    per_patch = (predictions.float() - targets).pow(2).mean(dim=-1)  # (B, N)
    mask = mask.float()
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)
