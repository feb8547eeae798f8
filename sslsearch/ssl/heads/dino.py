"""DINO's head: an MLP to an L2-normalised bottleneck, then a weight-normalised linear layer over K prototypes."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    """MLP (GELU, optional batch norm) → bottleneck → L2 normalise → weight-normalised Linear to K logits
    (Caron et al. 2021, arXiv:2104.14294, section 3.1 and appendix C).

    Args:
        in_dim: backbone feature dim.
        out_dim: K, the number of prototypes.
        hidden_dim: MLP hidden width.
        bottleneck_dim: dim of the normalised bottleneck.
        num_layers: MLP layers before the bottleneck output (≥ 1).
        batch_norm: batch norm after each hidden layer (the paper's choice for ResNets).
        norm_last_layer: keep the last layer's weight norm fixed at 1 (``g`` is not trained).

    Shapes: (B, in_dim) → (B, out_dim) logits.
    """

    def __init__(self, in_dim: int, out_dim: int, *, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 num_layers: int = 3, batch_norm: bool = False, norm_last_layer: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(max(num_layers, 1) - 1):
            layers.append(nn.Linear(width, hidden_dim))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            width = hidden_dim
        layers.append(nn.Linear(width, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0  # g, (out_dim, 1)
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)

    def bottleneck(self, features: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) → (B, bottleneck_dim), L2-normalised."""
        return F.normalize(self.mlp(features), dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.bottleneck(features))
