"""Choosing the torch device from --device auto|cpu|cuda[:N]."""
from __future__ import annotations

import torch

from .errors import InvalidArgumentError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Map ``auto`` to CUDA when torch sees a GPU, else CPU; validate explicit choices.

    Raises:
        InvalidArgumentError: an unknown device name, or ``cuda`` on a machine without one.
    """
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidArgumentError(f"--device {device} asked for a GPU, but torch sees none; use --device cpu or auto")
        return torch.device(name)
    raise InvalidArgumentError(f"unknown device {device!r}; choose auto, cpu or cuda (cuda:N for one GPU)")
