"""KoLeo regulariser: pushes each L2-normalised feature away from its nearest neighbour in the batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``-mean_i log(min_{j≠i} ||x_i - x_j||)`` over L2-normalised rows, the Kozachenko-Leonenko
    differential-entropy estimator (Sablayrolles et al. 2019, arXiv:1806.03198; DINOv2's KoLeo term,
    Oquab et al. 2023, arXiv:2304.07193, section 4).

    Minimising it spreads the batch uniformly over the sphere; only the nearest-neighbour distance
    carries a gradient.

    Args:
        features: (n, d), n ≥ 2; normalised here (float32).
        eps: added to the distance inside the log (duplicate rows would give log 0).

    Returns:
        Scalar float32 tensor.
    """
    if features.shape[0] < 2:
        raise ValueError(f"koleo_loss needs at least 2 rows, got {features.shape[0]}")
    x = F.normalize(features.float(), dim=-1)
    with torch.no_grad():
        similarity = x @ x.T
        similarity.fill_diagonal_(-2.0)  # below any cosine: a row is never its own neighbour
        nearest = similarity.argmax(dim=1)
    distance = (x - x[nearest]).norm(dim=-1)
    return -torch.log(distance + eps).mean()
