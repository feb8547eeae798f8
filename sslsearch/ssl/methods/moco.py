"""MoCo v2: a momentum key encoder, a queue of negative keys and InfoNCE."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AugmentationConfig, TrainConfig
from ..distributed import gather
from ..heads import ProjectionHead
from ..losses import info_nce_loss
from ..schedules import StepContext, cosine
from ..transforms import SimCLRTransform
from .base import Method, MethodOutput, OptimizerDefaults, frozen_copy, short_run_momentum, update_momentum


class MoCo(Method):
    """MoCo v2 (Chen, Fan, Girshick, He 2020, "Improved Baselines with Momentum Contrastive Learning",
    arXiv:2003.04297; MoCo: He et al. 2020, arXiv:1911.05722).

    Queries come from the backbone + MLP head; keys from an EMA copy of both; the loss contrasts
    each query with its key and with a queue of keys from earlier batches (gathered over all
    processes, so every process holds the same queue). Shuffled batch norm is emulated within
    a process: keys are shuffled and encoded in ``batch_norm_splits`` groups, queries in
    contiguous groups, so a query and its key rarely share batch statistics.

    Buffers:
        queue: (queue_size, projection_dim) float32, L2-normalised keys.
        queue_pointer: (1,) int64, the next row to overwrite.
    """

    name = "moco"
    min_batch_size = 2
    # LARS on CNNs, as MoCo v3 (Chen, Xie, He 2021, arXiv:2104.02057) does for ResNets: on the sample
    # data (resnet18 @ 32 px, 150 steps) leave-one-out k-NN 0.120 with SGD, 0.164 with LARS.
    optimizer_defaults = OptimizerDefaults(lr={"sgd": 0.24, "lars": 1.0, "adamw": 2e-3},
                                           weight_decay={"sgd": 1e-4, "lars": 1e-6, "adamw": 0.05},
                                           cnn_optimizer="lars")

    def __init__(self, backbone: nn.Module, feature_dim: int, config: TrainConfig) -> None:
        super().__init__(backbone, feature_dim, config)
        section = config.moco
        self.section = section
        self.head = ProjectionHead(feature_dim, section.projection_hidden_dim or feature_dim, section.projection_dim,
                                   batch_norm=section.head_batch_norm)
        self.key_backbone = frozen_copy(self.backbone)
        self.key_head = frozen_copy(self.head)
        generator = torch.Generator().manual_seed(config.seed)
        queue = F.normalize(torch.randn(section.queue_size, section.projection_dim, generator=generator), dim=1)
        self.register_buffer("queue", queue)
        self.register_buffer("queue_pointer", torch.zeros(1, dtype=torch.long))

    @classmethod
    def resolve_config(cls, config: TrainConfig, *, dataset_size: int, global_batch_size: int) -> TrainConfig:
        # A queue longer than the data would hold keys of the query's own image as negatives.
        cap = max(global_batch_size, (dataset_size // 2) // global_batch_size * global_batch_size)
        size = max(1, min(config.moco.queue_size, cap))
        return dataclasses.replace(config, moco=dataclasses.replace(config.moco, queue_size=size))

    @classmethod
    def build_transform(cls, image_size: int, augmentation: AugmentationConfig, mean: tuple[float, ...],
                        std: tuple[float, ...]) -> SimCLRTransform:
        return SimCLRTransform(image_size, augmentation, mean, std)

    def momentum(self, ctx: StepContext) -> float:
        start = short_run_momentum(self.section.momentum, ctx.plan.horizon_steps)
        final = self.section.momentum_final if self.section.momentum_final is not None else start
        return cosine(ctx.schedule_step, ctx.plan.total_steps, start, max(final, start))

    def _splits(self, batch: int) -> int:
        return max(1, min(self.section.batch_norm_splits, batch // 2))

    def _encode_queries(self, images: torch.Tensor) -> torch.Tensor:
        splits = self._splits(images.shape[0])
        features = torch.cat([self.backbone(chunk) for chunk in images.chunk(splits)]) if splits > 1 \
            else self.backbone(images)
        return self.head(features)

    @torch.no_grad()
    def _encode_keys(self, images: torch.Tensor) -> torch.Tensor:
        splits = self._splits(images.shape[0])
        if splits == 1:
            return F.normalize(self.key_head(self.key_backbone(images)).float(), dim=1)
        order = torch.randperm(images.shape[0], device=images.device)
        shuffled = torch.cat([self.key_backbone(chunk) for chunk in images[order].chunk(splits)])
        keys = torch.empty_like(shuffled)
        keys[order] = shuffled
        return F.normalize(self.key_head(keys).float(), dim=1)

    def _batch_negatives(self, keys: torch.Tensor, batch: int) -> dict[str, torch.Tensor]:
        """With ``moco.batch_negatives``: this step's keys of the other images, as extra negatives.

        ``keys`` is (V·B, d), view-major; key j belongs to image ``j % B``, so query i skips keys i, B+i, ...
        """
        if not self.section.batch_negatives:
            return {}
        owner = torch.arange(keys.shape[0], device=keys.device) % batch
        excluded = owner[None, :] == torch.arange(batch, device=keys.device)[:, None]  # (B, V·B)
        return {"batch_keys": keys, "batch_keys_excluded": excluded}

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        keys = gather(keys)
        size = self.queue.shape[0]
        rows = (self.queue_pointer + torch.arange(keys.shape[0], device=keys.device)) % size
        if keys.shape[0] > size:
            keys, rows = keys[-size:], rows[-size:]
        self.queue[rows] = keys.to(self.queue.dtype)
        self.queue_pointer.copy_((self.queue_pointer + keys.shape[0]) % size)

    def forward_loss(self, views: list[torch.Tensor], ctx: StepContext) -> MethodOutput:
        view_1, view_2 = views[0], views[1]
        negatives = self.queue.clone()  # the enqueue below must not change what this step contrasts with
        if self.section.symmetric:
            # Both views in one pass per encoder: half the forward calls, and batch norm groups of B
            # images instead of B / splits (the keys are shuffled across both views before grouping).
            both = torch.cat([view_1, view_2])
            q_1, q_2 = self._encode_queries(both).chunk(2)
            keys = self._encode_keys(both)
            k_1, k_2 = keys.chunk(2)
            extra = self._batch_negatives(keys, view_1.shape[0])
            loss = (info_nce_loss(q_1, k_2, negatives, self.section.temperature, **extra)
                    + info_nce_loss(q_2, k_1, negatives, self.section.temperature, **extra)) / 2
        else:
            q_1 = self._encode_queries(view_1)
            k_2 = self._encode_keys(view_2)
            loss = info_nce_loss(q_1, k_2, negatives, self.section.temperature,
                                 **self._batch_negatives(k_2, view_1.shape[0]))
        self._enqueue(k_2)
        return MethodOutput(loss=loss, logs={"momentum": self.momentum(ctx)}, embeddings=q_1.detach())

    def on_step_end(self, ctx: StepContext) -> None:
        momentum = self.momentum(ctx)
        update_momentum(self.key_backbone, self.backbone, momentum)
        update_momentum(self.key_head, self.head, momentum)
