"""DINO: self-distillation from an EMA teacher on global crops to a student on all crops, no labels."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InvalidArgumentError, unknown_name
from ..backbone import is_vision_transformer
from ..config import AugmentationConfig, TrainConfig
from ..heads import DINOHead
from ..losses import DINOLoss, koleo_loss
from ..losses.dino import CENTERINGS
from ..plan import Budget
from ..schedules import StepContext, cosine, linear_ramp
from ..transforms import DINOTransform
from .base import Method, MethodOutput, OptimizerDefaults, frozen_copy, short_run_momentum, update_momentum

FREEZE_LAST_LAYER_MAX_FRACTION = 0.2

RECIPES = ("auto", "short", "paper")
# The short recipe: measured to leave the ln K plateau within 10 CPU minutes on test_resnet @ 32 px
# (k-NN 0.218 vs 0.134 with the paper defaults; docs/benchmarks.md › SSL quality). Keys are
# "section.field"; each is applied only where the user left the field at its default.
SHORT_RECIPE: dict[str, Any] = {"dino.centering": "sinkhorn", "dino.prototypes": 256,
                                "dino.teacher_temperature": 0.02, "dino.teacher_temperature_start": 0.02,
                                "augmentation.local_crop_count": 0, "dino.koleo_weight": 0.1}
SHORT_MAX_MINUTES = 60.0  # a --max-minutes budget up to this is a short run
SHORT_MAX_STEPS = 5000  # so is an --epochs length of fewer steps than this


def short_run_reason(budget: Budget) -> str | None:
    """Why a run of this budget is short (DINO's ``recipe: auto`` then picks "short"), or None when it is not.

    Example:
        >>> short_run_reason(Budget(epochs=None, max_minutes=15, dataset_size=5000, global_batch_size=64,
        ...                         device_type="cuda"))
        '--max-minutes 15 ≤ 60'
    """
    if budget.device_type == "cpu":
        return "a CPU device"
    if budget.max_minutes is not None and budget.max_minutes <= SHORT_MAX_MINUTES:
        return f"--max-minutes {budget.max_minutes:g} ≤ {SHORT_MAX_MINUTES:g}"
    steps = budget.epoch_steps
    if steps is not None and steps < SHORT_MAX_STEPS:
        return f"{budget.epochs:g} epochs = {steps:,} steps < {SHORT_MAX_STEPS:,}"
    return None


def apply_short_recipe(config: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """``config`` with the short recipe on every field still at its default; also the names of the fields kept."""
    defaults = TrainConfig()
    sections = {"dino": config.dino, "augmentation": config.augmentation}
    changes: dict[str, dict[str, Any]] = {"dino": {}, "augmentation": {}}
    kept: list[str] = []
    for key, value in SHORT_RECIPE.items():
        section, name = key.split(".")
        if key == "dino.koleo_weight" and config.batch_size < 2:
            continue  # KoLeo pairs each image with its nearest neighbour in the batch
        if getattr(sections[section], name) == getattr(getattr(defaults, section), name):
            changes[section][name] = value
        elif getattr(sections[section], name) != value:
            kept.append(key)
    adapted = dataclasses.replace(config, dino=dataclasses.replace(config.dino, recipe="short", **changes["dino"]),
                                  augmentation=dataclasses.replace(config.augmentation, **changes["augmentation"]))
    return adapted, kept


class DINO(Method):
    """DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers",
    arXiv:2104.14294).

    The student (backbone + DINO head) sees all crops; the teacher, an EMA of the student with a
    cosine momentum schedule towards 1, sees the two global crops. The teacher's output is
    centred (EMA of its batch mean) and sharpened (temperature warmed up from
    ``teacher_temperature_start``). The head's last layer is frozen for the first epoch. Crops of
    one size go through the backbone as one batch. The teacher backbone is the exported encoder.
    With ``dino.koleo_weight`` > 0, DINOv2's KoLeo term on the student's backbone features of each
    global crop is added (over this process's batch under DDP, as DINOv2).
    """

    name = "dino"
    min_batch_size = 1
    multi_size_views = True
    optimizer_defaults = OptimizerDefaults(lr={"sgd": 0.2, "lars": 1.0, "adamw": 5e-4},
                                           weight_decay={"sgd": 1e-5, "lars": 1e-6, "adamw": 0.04},
                                           weight_decay_final={"adamw": 0.4}, clip_grad_norm=3.0)

    def __init__(self, backbone: nn.Module, feature_dim: int, config: TrainConfig) -> None:
        super().__init__(backbone, feature_dim, config)
        section = config.dino
        self.section = section
        batch_norm = section.head_batch_norm if section.head_batch_norm is not None \
            else not is_vision_transformer(backbone)
        self.head = DINOHead(feature_dim, section.prototypes, hidden_dim=section.hidden_dim,
                             bottleneck_dim=section.bottleneck_dim, num_layers=section.head_layers,
                             batch_norm=batch_norm, norm_last_layer=section.norm_last_layer)
        self.teacher_backbone = frozen_copy(self.backbone)
        self.teacher_head = frozen_copy(self.head)
        self.loss = DINOLoss(section.prototypes, section.center_momentum, section.centering)

    @classmethod
    def validate(cls, config: TrainConfig) -> None:
        """Known centering, a KoLeo weight of 0 (off) or more, and a batch KoLeo can pair images in."""
        section = config.dino
        if section.recipe not in RECIPES:
            raise unknown_name("dino.recipe", section.recipe, RECIPES)
        if section.centering not in CENTERINGS:
            raise unknown_name("dino.centering", section.centering, CENTERINGS)
        if not section.koleo_weight >= 0:
            raise InvalidArgumentError(f"dino.koleo_weight must be 0 (off) or positive, got {section.koleo_weight}; "
                                       "DINOv2 uses 0.1")
        if section.koleo_weight > 0 and config.batch_size < 2:
            raise InvalidArgumentError(f"dino.koleo_weight needs at least 2 images per step (each image's nearest "
                                       f"neighbour in the batch), got --batch-size {config.batch_size}")

    @classmethod
    def adapt_to_budget(cls, config: TrainConfig, budget: Budget) -> TrainConfig:
        """Resolve ``dino.recipe: auto`` from the budget (``short_run_reason``): short or paper.

        The resolved name is written back, so a resume (which applies this again to the saved
        config) finds ``short`` or ``paper`` and changes nothing.
        """
        if config.dino.recipe == "short" or (config.dino.recipe == "auto" and short_run_reason(budget)):
            return apply_short_recipe(config)[0]
        if config.dino.recipe == "auto":
            return dataclasses.replace(config, dino=dataclasses.replace(config.dino, recipe="paper"))
        return config

    @classmethod
    def explain_budget_choice(cls, asked: TrainConfig, adapted: TrainConfig, budget: Budget) -> str | None:
        """One line: the recipe chosen and why, and the fields kept at the user's values."""
        recipe = adapted.dino.recipe
        if asked.dino.recipe != "auto":
            return None
        if recipe == "paper":
            return ("dino recipe: paper (the run is long: not on CPU, not ≤ "
                    f"{SHORT_MAX_MINUTES:g} minutes, not < {SHORT_MAX_STEPS:,} steps)")

        def value(config: TrainConfig, key: str) -> Any:
            section, name = key.split(".")
            return getattr(getattr(config, section), name)

        changed = [f"{key}={value(adapted, key)}" for key in SHORT_RECIPE if value(adapted, key) != value(asked, key)]
        kept = apply_short_recipe(asked)[1]
        return (f"dino recipe: short, as the run is short ({short_run_reason(budget)}): "
                f"{', '.join(changed) or 'nothing to change'}"
                + (f"; kept as set: {', '.join(kept)}" if kept else "")
                + " (--set dino.recipe=paper for the paper defaults)")

    @classmethod
    def input_sizes(cls, config: TrainConfig, augmentation: AugmentationConfig) -> dict[str, int]:
        sizes = {"--image-size": config.image_size}
        if augmentation.local_crop_count > 0:
            sizes["augmentation.local_crop_size"] = augmentation.local_crop_size
        return sizes

    @classmethod
    def build_transform(cls, image_size: int, augmentation: AugmentationConfig, mean: tuple[float, ...],
                        std: tuple[float, ...]) -> DINOTransform:
        return DINOTransform(image_size, augmentation, mean, std)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.head]

    def export_backbone(self) -> nn.Module:
        return self.teacher_backbone

    # -- schedules ---------------------------------------------------------------------------------

    def teacher_temperature(self, ctx: StepContext) -> float:
        ramp = int(self.section.teacher_temperature_warmup_fraction * ctx.plan.total_steps)
        return linear_ramp(ctx.schedule_step, ramp, self.section.teacher_temperature_start,
                           self.section.teacher_temperature)

    def teacher_momentum(self, ctx: StepContext) -> float:
        start = short_run_momentum(self.section.teacher_momentum, ctx.plan.horizon_steps)
        return cosine(ctx.schedule_step, ctx.plan.total_steps, start, 1.0)

    def freeze_last_layer_steps(self, ctx: StepContext) -> int:
        steps = int(self.section.freeze_last_layer_epochs * ctx.plan.steps_per_epoch)
        return min(steps, ctx.plan.step_at(FREEZE_LAST_LAYER_MAX_FRACTION))

    # -- the step ----------------------------------------------------------------------------------

    def forward_loss(self, views: list[torch.Tensor], ctx: StepContext) -> MethodOutput:
        global_views = torch.cat(views[:2])  # (2B, 3, S, S)
        with torch.no_grad():
            teacher_logits = self.teacher_head(self.teacher_backbone(global_views))  # (2B, K)
        features = [self.backbone(global_views)]
        if len(views) > 2:
            features.append(self.backbone(torch.cat(views[2:])))  # (N·B, dim): locals share one size
        student_logits = self.head(torch.cat(features))  # ((2+N)·B, K)
        teacher_temperature = self.teacher_temperature(ctx)
        probabilities = self.loss.teacher_probabilities(teacher_logits, teacher_temperature)  # no gradient
        loss = self.loss.cross_entropy(student_logits, probabilities,
                                       student_temperature=self.section.student_temperature)
        logs: dict = {}
        if self.section.koleo_weight > 0:
            koleo = sum(koleo_loss(crop) for crop in features[0].chunk(2)) / 2  # per global crop, as DINOv2
            logs["dino_loss"] = loss.detach()
            logs["koleo_loss"] = koleo.detach()
            loss = loss + self.section.koleo_weight * koleo
        with torch.no_grad():
            entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(-1).mean()
            mean_probability = probabilities.mean(0)
            mean_entropy = -(mean_probability * mean_probability.clamp_min(1e-12).log()).sum()
        if self.loss.centering == "mean":
            self.loss.update_center(teacher_logits)
        batch = views[0].shape[0]
        logs |= {"teacher_temperature": teacher_temperature, "teacher_momentum": self.teacher_momentum(ctx),
                "teacher_entropy": entropy, "teacher_mean_entropy": mean_entropy,
                "log_prototypes": math.log(self.section.prototypes)}
        embeddings = F.normalize(student_logits[:batch].detach().float(), dim=1)
        return MethodOutput(loss=loss, logs=logs, embeddings=embeddings)

    def before_optimizer_step(self, ctx: StepContext) -> None:
        if ctx.step < self.freeze_last_layer_steps(ctx):
            for parameter in self.head.last_layer.parameters():
                parameter.grad = None

    def on_step_end(self, ctx: StepContext) -> None:
        momentum = self.teacher_momentum(ctx)
        update_momentum(self.teacher_backbone, self.backbone, momentum)
        update_momentum(self.teacher_head, self.head, momentum)
