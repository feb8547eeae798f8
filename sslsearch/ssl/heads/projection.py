"""The projection MLP of SimCLR and MoCo v2: backbone features → the space where views are contrasted."""
from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """Linear → [BatchNorm] → ReLU → ... → Linear.

    SimCLR (Chen et al. 2020, arXiv:2002.05709, section 2.1) uses batch norm in the hidden layer;
    MoCo v2 (Chen et al. 2020, arXiv:2003.04297) uses the same 2-layer MLP without it.

    Args:
        in_dim: backbone feature dim.
        hidden_dim: hidden width.
        out_dim: projection dim.
        num_layers: linear layers (≥ 1).
        batch_norm: batch norm after each hidden linear layer.

    Shapes: (B, in_dim) → (B, out_dim).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, *, num_layers: int = 2,
                 batch_norm: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(width, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            width = hidden_dim
        layers.append(nn.Linear(width, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)
