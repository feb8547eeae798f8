"""Self-supervised methods as pluggable objects, and the registry the trainer picks from."""
from __future__ import annotations

from ...errors import unknown_name
from .base import Method, MethodOutput, OptimizerDefaults, frozen_copy, short_run_momentum, update_momentum
from .dino import DINO
from .mae import MAE
from .moco import MoCo
from .simclr import SimCLR

METHODS: dict[str, type[Method]] = {"simclr": SimCLR, "moco": MoCo, "dino": DINO, "mae": MAE}


def register_method(cls: type[Method]) -> type[Method]:
    """Add a ``Method`` subclass to ``METHODS`` under ``cls.name`` (usable as a class decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no `name`")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    """The method class for ``name``.

    Raises:
        UnknownNameError: lists the registered methods and the nearest name.
    """
    try:
        return METHODS[name]
    except KeyError:
        raise unknown_name("method", name, METHODS) from None


__all__ = ["DINO", "MAE", "METHODS", "Method", "MethodOutput", "MoCo", "OptimizerDefaults", "SimCLR", "frozen_copy",
           "get_method", "register_method", "short_run_momentum", "update_momentum"]
