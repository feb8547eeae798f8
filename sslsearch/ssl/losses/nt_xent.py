"""NT-Xent, SimCLR's contrastive loss, with negatives gathered from every process when distributed."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import gather_with_gradient, is_distributed, rank

_MASKED = -1e9  # logit of an image against itself: excluded from the softmax


def nt_xent_loss(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.2, *,
                 gather_across_processes: bool = True) -> torch.Tensor:
    """Normalized temperature-scaled cross entropy (Chen et al. 2020, arXiv:2002.05709, eq. 1).

    For every one of the 2B views, the other view of the same image is the positive and the
    2B·W - 2 views of other images (W processes when distributed) are the negatives:
    ``ℓ(i, j) = -log exp(sim(z_i, z_j)/τ) / Σ_{k≠i} exp(sim(z_i, z_k)/τ)``, averaged over all views.

    Args:
        z_a: (B, d) projections of the first views (any dtype; normalised here in float32).
        z_b: (B, d) projections of the second views, row i the same image as ``z_a[i]``.
        temperature: τ > 0.
        gather_across_processes: under torch.distributed, use the other processes' views as
            negatives too (gradients flow back to them).

    Returns:
        Scalar float32 loss.

    Example:
        >>> z = torch.randn(8, 16)
        >>> float(nt_xent_loss(z, z, temperature=0.1)) < float(nt_xent_loss(z, torch.randn(8, 16), temperature=0.1))
        True
    """
    z_a = F.normalize(z_a.float(), dim=1)
    z_b = F.normalize(z_b.float(), dim=1)
    batch = z_a.shape[0]
    if gather_across_processes and is_distributed():
        all_a, all_b, offset = gather_with_gradient(z_a), gather_with_gradient(z_b), rank() * batch
    else:
        all_a, all_b, offset = z_a, z_b, 0
    targets = torch.arange(batch, device=z_a.device) + offset
    self_mask = F.one_hot(targets, all_a.shape[0]).bool()  # (B, W·B): each view against itself
    logits_ab = z_a @ all_b.T / temperature
    logits_aa = (z_a @ all_a.T / temperature).masked_fill(self_mask, _MASKED)
    logits_ba = z_b @ all_a.T / temperature
    logits_bb = (z_b @ all_b.T / temperature).masked_fill(self_mask, _MASKED)
    loss_a = F.cross_entropy(torch.cat([logits_ab, logits_aa], dim=1), targets)
    loss_b = F.cross_entropy(torch.cat([logits_ba, logits_bb], dim=1), targets)
    return (loss_a + loss_b) / 2


class NTXentLoss(nn.Module):
    """``nt_xent_loss`` as a module with a fixed temperature."""

    def __init__(self, temperature: float = 0.2, *, gather_across_processes: bool = True) -> None:
        super().__init__()
        self.temperature = temperature
        self.gather_across_processes = gather_across_processes

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        return nt_xent_loss(z_a, z_b, self.temperature, gather_across_processes=self.gather_across_processes)
