"""DINO's self-distillation loss: cross entropy from a centred, sharpened teacher to the student over all crop pairs."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import all_reduce_max, all_reduce_sum, world_size

CENTERINGS = ("mean", "sinkhorn")
SINKHORN_ITERATIONS = 3


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, iterations: int = SINKHORN_ITERATIONS) -> torch.Tensor:
    """Soft assignments of n samples to K prototypes with equal mass per prototype (Cuturi 2013; SwAV,
    Caron et al. 2020, arXiv:2006.09882, section 3.1; DINOv2's teacher centering, Oquab et al. 2023,
    arXiv:2304.07193).

    ``exp(scores)`` is scaled alternately so every prototype (column) holds 1/K of the mass and every
    sample (row) 1/n, over the samples of all processes; the rows are returned as distributions.

    Args:
        scores: (n, K) teacher logits already divided by the temperature (computed in float64).
        iterations: row/column normalisation rounds (3, as SwAV and DINOv2).

    Returns:
        (n, K) float32, each row summing to 1.
    """
    # float64: logits / 0.02 span 100, and exp(-100) is below float32's normal range
    scores = scores.double()
    q = torch.exp(scores - all_reduce_max(scores.max())).T  # (K, n)
    prototypes, samples = q.shape[0], q.shape[1] * world_size()
    q = q / all_reduce_sum(q.sum())
    for _ in range(iterations):
        q = q / all_reduce_sum(q.sum(dim=1, keepdim=True)).clamp_min(1e-300) / prototypes
        q = q / q.sum(dim=0, keepdim=True).clamp_min(1e-300) / samples
    return (q * samples).T.float()


class DINOLoss(nn.Module):
    """Cross entropy H(P_teacher(global v), P_student(crop u)) for every pair u ≠ v (Caron et al. 2021,
    arXiv:2104.14294, eq. 3 and algorithm 1), with the teacher centred (``center``, an EMA of the
    teacher's batch mean, all-reduced across processes) and sharpened by a low temperature.

    With ``centering="sinkhorn"`` the teacher is centred by Sinkhorn-Knopp instead (DINOv2): the
    batch's sharpened teacher outputs are rescaled so every prototype gets an equal share, which
    rules out both collapses (uniform, one prototype) by construction; the center is then unused.

    Args:
        prototypes: K, the head's output dim.
        center_momentum: EMA momentum of the center.
        centering: "mean" (the paper's EMA center) or "sinkhorn".

    Buffers:
        center: (1, K) float32.
    """

    def __init__(self, prototypes: int, center_momentum: float = 0.9, centering: str = "mean") -> None:
        super().__init__()
        if centering not in CENTERINGS:
            raise ValueError(f"centering must be one of {CENTERINGS}, got {centering!r}")
        self.center_momentum = center_momentum
        self.centering = centering
        self.register_buffer("center", torch.zeros(1, prototypes))

    def teacher_probabilities(self, teacher_logits: torch.Tensor, teacher_temperature: float) -> torch.Tensor:
        """(n, K) teacher logits → (n, K) float32 centred, sharpened probabilities (no gradient).

        With Sinkhorn centering ``teacher_logits`` must hold the whole step's teacher batch (all
        global crops), since the prototypes' shares are balanced over it.
        """
        if self.centering == "sinkhorn":
            return sinkhorn_knopp(teacher_logits.detach().float() / teacher_temperature)
        return F.softmax((teacher_logits.detach().float() - self.center) / teacher_temperature, dim=-1)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, student_temperature: float,
                teacher_temperature: float, global_crops: int = 2) -> torch.Tensor:
        """The loss (the center is not updated here; call ``update_center`` after).

        Args:
            student_logits: (C·B, K) for C crops, crop-major (all of crop 0, then crop 1, ...);
                the first ``global_crops`` crops are the global ones.
            teacher_logits: (global_crops·B, K), crop-major.
            student_temperature, teacher_temperature: softmax temperatures.

        Returns:
            Scalar float32 loss, the mean over crop pairs of the batch-mean cross entropy.
        """
        return self.cross_entropy(student_logits, self.teacher_probabilities(teacher_logits, teacher_temperature),
                                  student_temperature=student_temperature, global_crops=global_crops)

    def cross_entropy(self, student_logits: torch.Tensor, teacher_probabilities: torch.Tensor, *,
                      student_temperature: float, global_crops: int = 2) -> torch.Tensor:
        """``forward`` from the teacher's probabilities (``teacher_probabilities``), for a caller that
        also logs them: the centering (Sinkhorn's all-reduces included) then runs once per step."""
        teacher = teacher_probabilities.chunk(global_crops)
        crops = student_logits.shape[0] // teacher[0].shape[0]
        student = F.log_softmax(student_logits.float() / student_temperature, dim=-1).chunk(crops)
        total = student_logits.new_zeros((), dtype=torch.float32)
        pairs = 0
        for v, q in enumerate(teacher):
            for u, log_p in enumerate(student):
                if u == v:
                    continue
                total = total + (-(q * log_p).sum(dim=-1)).mean()
                pairs += 1
        return total / pairs

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """center ← m·center + (1-m)·mean of the teacher logits over this step's batch on all processes."""
        batch_sum = all_reduce_sum(teacher_logits.detach().float().sum(dim=0, keepdim=True))
        batch_center = batch_sum / (teacher_logits.shape[0] * world_size())
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)
