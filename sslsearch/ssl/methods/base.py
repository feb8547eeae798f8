"""The method interface the trainer drives: views → loss, hooks around the optimizer step, EMA helpers."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from ..config import AugmentationConfig, TrainConfig
from ..plan import Budget
from ..schedules import StepContext


@dataclass
class MethodOutput:
    """What one forward pass of a method gives the trainer.

    Attributes:
        loss: scalar float32 tensor to minimise.
        logs: extra scalars for metrics.jsonl (floats or 0-dim tensors; read only on logging steps).
        embeddings: (B, d) detached projections of one view, for the collapse monitor (None: not monitored).
    """

    loss: torch.Tensor
    logs: dict[str, Any] = field(default_factory=dict)
    embeddings: torch.Tensor | None = None


@dataclass(frozen=True)
class OptimizerDefaults:
    """A method's defaults for ``OptimizerConfig`` fields left at ``None`` (per optimizer name)."""

    lr: dict[str, float]
    weight_decay: dict[str, float]
    weight_decay_final: dict[str, float | None] = field(default_factory=dict)
    clip_grad_norm: float = 0.0
    cnn_optimizer: str = "sgd"


class Method(nn.Module):
    """A self-supervised method: owns the backbone, its heads and any extra state (teacher, queue, center).

    Everything that must survive a resume is a parameter or buffer, so ``state_dict()`` is the
    method's whole state. The trainer calls, per step::

        output = method(views, ctx)            # forward_loss; under DDP through the wrapper
        output.loss.backward()
        method.before_optimizer_step(ctx)      # e.g. DINO drops the last layer's gradient
        optimizer.step()
        method.on_step_end(ctx)                # e.g. EMA teacher update

    Before anything is built the trainer asks the class, in this order: ``validate(config)``
    (rules of the method's own settings), ``adapt_to_budget(config, budget)`` (settings chosen
    from the run's length), then, with the backbone built, ``input_sizes`` and ``resolve_config``
    (data-dependent defaults). So a new method needs no edit in the trainer.

    Subclasses set ``name``, ``min_batch_size``, ``optimizer_defaults`` (and ``multi_size_views``
    when views of several sizes go through the backbone), implement ``build_transform`` and
    ``forward_loss``, and register in ``methods.METHODS``.

    Args:
        backbone: the network to pretrain (a timm model without classifier: (B, 3, H, W) → (B, dim)).
        feature_dim: its output dim.
        config: the resolved training config (the method reads its own section).
    """

    name: ClassVar[str] = ""
    min_batch_size: ClassVar[int] = 1
    multi_size_views: ClassVar[bool] = False  # views of several sizes (DINO's local crops): ViTs interpolate positions
    optimizer_defaults: ClassVar[OptimizerDefaults] = OptimizerDefaults(lr={"sgd": 0.05, "lars": 0.3, "adamw": 5e-4},
                                                                        weight_decay={"sgd": 1e-4, "lars": 1e-6,
                                                                                      "adamw": 0.05})

    def __init__(self, backbone: nn.Module, feature_dim: int, config: TrainConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.config = config

    # -- configuration ---------------------------------------------------------------------------

    @classmethod
    def validate(cls, config: TrainConfig) -> None:
        """Check the method's own settings before any data is read or model built; default: nothing to check.

        Raises:
            InvalidArgumentError, UnknownNameError: with the value seen and what to pass instead.
        """

    @classmethod
    def adapt_to_budget(cls, config: TrainConfig, budget: Budget) -> TrainConfig:
        """Settings chosen from the run's length (e.g. a recipe for short CPU budgets); default: unchanged.

        Called before the backbone, views and optimizer are built, with the budget asked for
        (epochs or minutes, images, global batch, device). It must be idempotent: on ``--resume``
        it is applied again to the run's saved config, which must come back unchanged.
        """
        return config

    @classmethod
    def input_sizes(cls, config: TrainConfig, augmentation: AugmentationConfig) -> dict[str, int]:
        """The view sizes the backbone must take, by the option that sets each (checked against its stride)."""
        return {"--image-size": config.image_size}

    @classmethod
    def resolve_config(cls, config: TrainConfig, *, dataset_size: int, global_batch_size: int) -> TrainConfig:
        """Fill data-dependent defaults of the method's section (e.g. MoCo's queue size); default: unchanged."""
        return config

    @classmethod
    def build_transform(cls, image_size: int, augmentation: AugmentationConfig, mean: tuple[float, ...],
                        std: tuple[float, ...]) -> Callable[[Image.Image], list[torch.Tensor]]:
        """The training view generator: PIL RGB image → list of view tensors (fixed count and sizes)."""
        raise NotImplementedError

    # -- the step ----------------------------------------------------------------------------------

    def forward(self, views: list[torch.Tensor], ctx: StepContext) -> MethodOutput:
        return self.forward_loss(views, ctx)

    def forward_loss(self, views: list[torch.Tensor], ctx: StepContext) -> MethodOutput:
        """Views of a batch (each (B, 3, h, w), on the device) → loss and logs."""
        raise NotImplementedError

    def before_optimizer_step(self, ctx: StepContext) -> None:
        """Called after backward (and gradient all-reduce), before clipping and the optimizer step."""

    def on_step_end(self, ctx: StepContext) -> None:
        """Called after the optimizer step (momentum encoders are updated here)."""

    def export_backbone(self) -> nn.Module:
        """The backbone to export as the encoder (DINO: the teacher's)."""
        return self.backbone

    def trainable_modules(self) -> Iterable[nn.Module]:
        """Modules whose parameters the optimizer updates (others are EMA copies)."""
        return [self]

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters in two groups: with weight decay, and biases/norm weights without it.

        The no-decay group is also excluded from LARS adaptation (``lars_exclude``), as in SimCLR.
        """
        decay, no_decay = [], []
        seen: set[int] = set()
        for module in self.trainable_modules():
            for parameter in module.parameters():
                if not parameter.requires_grad or id(parameter) in seen:
                    continue
                seen.add(id(parameter))
                (no_decay if parameter.ndim <= 1 else decay).append(parameter)
        return [{"params": decay, "apply_weight_decay": True, "lars_exclude": False},
                {"params": no_decay, "weight_decay": 0.0, "apply_weight_decay": False, "lars_exclude": True}]


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters are not trained (momentum encoders, teachers)."""
    import copy

    clone = copy.deepcopy(module)
    for parameter in clone.parameters():
        parameter.requires_grad_(False)
    return clone


@torch.no_grad()
def update_momentum(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """target ← momentum·target + (1 - momentum)·source, parameter by parameter (buffers untouched)."""
    target_params = list(target.parameters())
    source_params = [p.detach() for p in source.parameters()]
    torch._foreach_mul_(target_params, momentum)
    torch._foreach_add_(target_params, source_params, alpha=1 - momentum)


def short_run_momentum(momentum: float, total_steps: int, horizon_fraction: float = 0.1,
                       floor: float = 0.9) -> float:
    """Cap an EMA momentum so the average spans at most ``horizon_fraction`` of the run, but not below ``floor``.

    A teacher with momentum 0.996 averages over ~250 steps: in a 200-step run it would stay
    mostly at its random initialisation; ``1 - 1 / (horizon_fraction · total_steps)`` keeps it
    moving. Below ``floor`` the key encoder / teacher would follow the student too closely to
    give consistent targets (MoCo's queue then collapses), so very short runs keep 0.9.
    """
    horizon = max(horizon_fraction * total_steps, 1.0)
    return min(momentum, max(1.0 - 1.0 / horizon, floor))
