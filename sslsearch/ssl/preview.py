"""Reconstruction previews for masked pretraining: a PNG grid of original / masked / reconstruction per image."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..files import atomic_path
from .losses.mae import NORM_PIXEL_EPS, patchify, unpatchify

PREVIEW_DIR = "previews"
MIN_CELL_PX = 96  # small training images are enlarged (nearest neighbour) so patches stay visible
GAP_PX = 2
MASKED_GREY = 0.5  # display value of hidden patches


def reconstruct(images: torch.Tensor, predictions: torch.Tensor, mask: torch.Tensor, patch_size: int, *,
                norm_pixel_loss: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The masked input and the reconstruction, in the input's (normalised) pixel space.

    With ``norm_pixel_loss`` the decoder predicts standardised patches; they are mapped back with
    each true patch's mean and standard deviation (as the paper's figures do), so the preview
    shows structure, not the per-patch brightness the model was never asked for.

    Args:
        images: (B, C, H, W) normalised inputs.
        predictions: (B, N, p·p·C) decoder outputs.
        mask: (B, N), 1 for hidden patches.

    Returns:
        (masked, reconstruction), each (B, C, H, W) float32: ``masked`` has hidden patches set to
        ``nan`` (drawn grey); ``reconstruction`` keeps the visible patches and fills the hidden
        ones with the predictions.
    """
    images = images.detach().float()
    batch, channels, height, width = images.shape
    grid = (height // patch_size, width // patch_size)
    patches = patchify(images, patch_size)  # (B, N, P)
    predicted = predictions.detach().float()
    if norm_pixel_loss:
        mean = patches.mean(dim=-1, keepdim=True)
        std = (patches.var(dim=-1, keepdim=True) + NORM_PIXEL_EPS).sqrt()
        predicted = predicted * std + mean
    hidden = mask.detach().bool().unsqueeze(-1)  # (B, N, 1)
    masked = unpatchify(patches.masked_fill(hidden, float("nan")), patch_size, grid, channels)
    reconstruction = unpatchify(torch.where(hidden, predicted, patches), patch_size, grid, channels)
    return masked, reconstruction


def to_uint8(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(B, C, H, W) normalised → (B, H, W, C) uint8 RGB; ``nan`` pixels become grey."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    pixels = images.float().cpu() * std_t + mean_t
    pixels = torch.nan_to_num(pixels, nan=MASKED_GREY).clamp(0, 1)
    return (pixels.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)


def preview_grid(columns: list[torch.Tensor], mean: tuple[float, ...], std: tuple[float, ...], *,
                 min_cell_px: int = MIN_CELL_PX) -> Image.Image:
    """One row per image, one column per tensor (e.g. original, masked, reconstruction), white gaps.

    Args:
        columns: tensors of the same shape (B, 3, H, W), normalised with ``mean``/``std``.

    Returns:
        An RGB PIL image of B rows × len(columns) cells, each cell enlarged to at least ``min_cell_px``.
    """
    cells = [to_uint8(column, mean, std) for column in columns]
    rows, height, width = cells[0].shape[:3]
    scale = max(1, -(-min_cell_px // max(height, width)))
    cell_h, cell_w = height * scale, width * scale
    canvas = np.full((rows * cell_h + (rows + 1) * GAP_PX, len(cells) * cell_w + (len(cells) + 1) * GAP_PX, 3),
                     255, np.uint8)
    for c, column in enumerate(cells):
        for r in range(rows):
            enlarged = column[r].repeat(scale, axis=0).repeat(scale, axis=1)
            top, left = GAP_PX + r * (cell_h + GAP_PX), GAP_PX + c * (cell_w + GAP_PX)
            canvas[top:top + cell_h, left:left + cell_w] = enlarged
    return Image.fromarray(canvas)


def preview_path(run_dir: str | os.PathLike[str], step: int) -> Path:
    return Path(run_dir) / PREVIEW_DIR / f"step-{step:08d}.png"


def save_preview(image: Image.Image, path: str | os.PathLike[str]) -> Path:
    """Write ``image`` as PNG atomically (a crash never leaves a half-written file); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
