"""InfoNCE against a queue of negatives, MoCo's contrastive loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def info_nce_loss(query: torch.Tensor, key: torch.Tensor, negatives: torch.Tensor,
                  temperature: float = 0.2, *, batch_keys: torch.Tensor | None = None,
                  batch_keys_excluded: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE with one positive key per query and shared negatives (He et al. 2020, arXiv:1911.05722, eq. 1).

    ``ℓ_i = -log exp(q_i·k_i/τ) / (exp(q_i·k_i/τ) + Σ_n exp(q_i·n/τ))``, averaged over the batch.

    Args:
        query: (B, d) query projections (normalised here in float32; gradients flow).
        key: (B, d) positive keys from the momentum encoder (no gradient expected).
        negatives: (K, d) the queue of earlier keys.
        temperature: τ > 0.
        batch_keys: optional (M, d) keys of this step's images, also negatives (MoCo v3's in-batch
            negatives, here beside the queue).
        batch_keys_excluded: (B, M) bool, True where a batch key belongs to the query's own image
            (its positive or another view of it): left out of that query's denominator.

    Returns:
        Scalar float32 loss.
    """
    query = F.normalize(query.float(), dim=1)
    key = F.normalize(key.float(), dim=1)
    negatives = F.normalize(negatives.float(), dim=1)
    positive = (query * key).sum(dim=1, keepdim=True)  # (B, 1)
    negative = query @ negatives.T  # (B, K)
    columns = [positive, negative]
    if batch_keys is not None:
        in_batch = query @ F.normalize(batch_keys.float(), dim=1).T  # (B, M)
        if batch_keys_excluded is not None:
            in_batch = in_batch.masked_fill(batch_keys_excluded, float("-inf"))
        columns.append(in_batch)
    logits = torch.cat(columns, dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(query.shape[0], dtype=torch.long, device=query.device))


class InfoNCELoss(nn.Module):
    """``info_nce_loss`` as a module with a fixed temperature."""

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, query: torch.Tensor, key: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        return info_nce_loss(query, key, negatives, self.temperature)
