"""Optimisers for pretraining: SGD and LARS for CNNs, AdamW for ViTs; the choice and its defaults."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import unknown_name
from .config import OptimizerConfig

OPTIMIZERS = ("sgd", "lars", "adamw")
INIT_LAYER_DECAY = 0.75  # continued pretraining: as BEiT/MAE fine-tuning use (0.65-0.75); not tuned here


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017, arXiv:1708.03888).

    Each parameter's update is scaled by ``η·‖w‖ / ‖∇w + λw‖``; groups with ``lars_exclude``
    (biases, norm weights) get plain SGD with momentum and no weight decay, as in SimCLR.
    """

    def __init__(self, params: Any, lr: float, *, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001) -> None:
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum,
                    "trust_coefficient": trust_coefficient, "lars_exclude": False}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            updates = [p.grad for p in params]
            if not group["lars_exclude"]:
                updates = torch._foreach_add(updates, params, alpha=group["weight_decay"])
                parameter_norms = torch.stack(torch._foreach_norm(params))
                update_norms = torch.stack(torch._foreach_norm(updates))
                ratios = torch.where((parameter_norms > 0) & (update_norms > 0),
                                     group["trust_coefficient"] * parameter_norms / update_norms,
                                     torch.ones_like(parameter_norms))
                updates = [u * r for u, r in zip(updates, ratios.unbind())]
            buffers = []
            for parameter, update in zip(params, updates):
                state = self.state[parameter]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(parameter)
                buffers.append(state["momentum_buffer"])
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, updates)
            torch._foreach_add_(params, buffers, alpha=-group["lr"])
        return loss


def choose_optimizer(config: OptimizerConfig, *, is_transformer: bool, cnn_default: str) -> str:
    """``auto`` → AdamW for ViTs, the method's choice for CNNs; other names are checked."""
    if config.name == "auto":
        return "adamw" if is_transformer else cnn_default
    if config.name not in OPTIMIZERS:
        raise unknown_name("optimizer", config.name, ("auto",) + OPTIMIZERS)
    return config.name


def build_optimizer(groups: list[dict[str, Any]], name: str, config: OptimizerConfig) -> torch.optim.Optimizer:
    """An optimizer over ``groups`` (lr and weight decay are set per step by the trainer's schedules)."""
    groups = [dict(g) for g in groups if g["params"]]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=0.0, betas=tuple(config.betas), weight_decay=0.0, foreach=True)
    if name == "lars":
        return LARS(groups, lr=0.0, momentum=config.momentum, trust_coefficient=config.lars_trust_coefficient)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=config.momentum, weight_decay=0.0, foreach=True)
    raise unknown_name("optimizer", name, OPTIMIZERS)


def set_hyperparameters(optimizer: torch.optim.Optimizer, *, lr: float, weight_decay: float) -> None:
    """Apply this step's lr (× the group's ``lr_scale``, layer-wise decay) to every group and its weight decay to
    the groups that take decay."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if group.get("apply_weight_decay", True):
            group["weight_decay"] = weight_decay


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def resolve_optimizer_config(config: OptimizerConfig, defaults: Any, *, is_transformer: bool,
                             from_init: bool = False) -> OptimizerConfig:
    """Fill ``auto`` and ``None`` fields from the method's ``OptimizerDefaults`` for the chosen optimizer.

    ``from_init`` (continued pretraining): the default lr is scaled by ``init_lr_ratio`` and layer-wise
    lr decay defaults to ``INIT_LAYER_DECAY``.
    """
    import dataclasses

    name = choose_optimizer(config, is_transformer=is_transformer, cnn_default=defaults.cnn_optimizer)
    weight_decay = config.weight_decay if config.weight_decay is not None else defaults.weight_decay[name]
    final = config.weight_decay_final
    if final is None:
        final = defaults.weight_decay_final.get(name)
    return dataclasses.replace(
        config, name=name, weight_decay=weight_decay,
        lr=config.lr if config.lr is not None else defaults.lr[name] * (config.init_lr_ratio if from_init else 1.0),
        layer_decay=config.layer_decay if config.layer_decay is not None else (INIT_LAYER_DECAY if from_init else 1.0),
        weight_decay_final=final if final is not None else weight_decay,
        clip_grad_norm=config.clip_grad_norm if config.clip_grad_norm is not None else defaults.clip_grad_norm)
