"""The head network: a linear layer or a small MLP over standardised embeddings, giving logits."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import unknown_name

KINDS = ("linear", "mlp")


class HeadModel(nn.Module):
    """Standardise the embedding, then a linear layer or a one-hidden-layer MLP.

    The standardisation (the training rows' per-dimension mean and std) lives in buffers, so the
    saved weights, the exported ONNX graph and ``predict`` all apply exactly the same input scaling.

    Shapes: (n, dim) float32 embeddings → (n, n_labels) logits.

    Args:
        dim: embedding dimension.
        n_labels: classes (single-label) or labels (multi-label).
        kind: ``linear`` or ``mlp`` (Linear → GELU → Dropout → Linear).
        hidden_dim: width of the MLP's hidden layer.
        dropout: dropout of the MLP's hidden layer during training.

    Example:
        >>> HeadModel(384, 10, kind="mlp")(torch.zeros(2, 384)).shape
        torch.Size([2, 10])
    """

    def __init__(self, dim: int, n_labels: int, *, kind: str = "linear", hidden_dim: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if kind not in KINDS:
            raise unknown_name("head kind", kind, KINDS)
        self.kind = kind
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        if kind == "linear":
            self.layers: nn.Module = nn.Linear(dim, n_labels)
        else:
            self.layers = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                                        nn.Linear(hidden_dim, n_labels))

    def set_standardization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Use these (dim,) statistics to standardise inputs (std is floored at 1e-6)."""
        with torch.no_grad():
            self.mean.copy_(mean)
            self.std.copy_(std.clamp_min(1e-6))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers((embeddings - self.mean) / self.std)
