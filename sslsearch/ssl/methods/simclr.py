"""SimCLR: two views, a projection MLP and NT-Xent over all other views in the (global) batch."""
from __future__ import annotations

import torch
from torch import nn

from ..config import AugmentationConfig, TrainConfig
from ..heads import ProjectionHead
from ..losses import nt_xent_loss
from ..schedules import StepContext
from ..transforms import SimCLRTransform
from .base import Method, MethodOutput, OptimizerDefaults


class SimCLR(Method):
    """SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
    Representations", arXiv:2002.05709).

    Both views go through the backbone in one batch (so batch norm sees 2B images), then the
    projection head; the loss is NT-Xent with negatives gathered from every process.
    """

    name = "simclr"
    min_batch_size = 2
    optimizer_defaults = OptimizerDefaults(lr={"lars": 1.2, "sgd": 0.5, "adamw": 2e-3},
                                           weight_decay={"lars": 1e-6, "sgd": 1e-5, "adamw": 0.05},
                                           cnn_optimizer="lars")

    def __init__(self, backbone: nn.Module, feature_dim: int, config: TrainConfig) -> None:
        super().__init__(backbone, feature_dim, config)
        section = config.simclr
        self.temperature = section.temperature
        self.head = ProjectionHead(feature_dim, section.projection_hidden_dim or feature_dim, section.projection_dim,
                                   batch_norm=True)

    @classmethod
    def build_transform(cls, image_size: int, augmentation: AugmentationConfig, mean: tuple[float, ...],
                        std: tuple[float, ...]) -> SimCLRTransform:
        return SimCLRTransform(image_size, augmentation, mean, std)

    def forward_loss(self, views: list[torch.Tensor], ctx: StepContext) -> MethodOutput:
        z = self.head(self.backbone(torch.cat(views[:2])))  # (2B, projection_dim)
        z_a, z_b = z.chunk(2)
        loss = nt_xent_loss(z_a, z_b, self.temperature)
        return MethodOutput(loss=loss, embeddings=z_a.detach())
