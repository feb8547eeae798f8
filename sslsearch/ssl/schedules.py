"""Step-indexed schedules (warm-up + cosine, linear ramps): pure functions of the step, so resuming needs only it."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


def cosine(step: int, total_steps: int, start: float, end: float) -> float:
    """Cosine interpolation from ``start`` (step 0) to ``end`` (step ``total_steps``), clamped outside."""
    if total_steps <= 0:
        return end
    progress = min(max(step / total_steps, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(step: int, total_steps: int, base: float, final: float, warmup_steps: int) -> float:
    """Linear warm-up from ``base / warmup_steps`` to ``base`` over ``warmup_steps``, then cosine to ``final``.

    Example:
        >>> warmup_cosine(0, 100, 1.0, 0.0, 10)
        0.1
        >>> warmup_cosine(100, 100, 1.0, 0.0, 10)
        0.0
    """
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    return cosine(step - warmup_steps, total_steps - warmup_steps, base, final)


def linear_ramp(step: int, ramp_steps: int, start: float, end: float) -> float:
    """``start`` at step 0, linear to ``end`` at ``ramp_steps``, then ``end``."""
    if ramp_steps <= 0 or step >= ramp_steps:
        return end
    return start + (end - start) * step / ramp_steps


@dataclass(frozen=True)
class TrainingPlan:
    """How long the run is, fixed before the first step and stored in every checkpoint.

    Attributes:
        total_steps: optimizer steps of the whole run (the schedules end here).
        steps_per_epoch: steps per pass over the data (global batch, last partial batch dropped).
        warmup_steps: lr warm-up steps.
        dataset_size: images the plan was made for.
        global_batch_size: images per step over all processes.
        budget_seconds: the wall-clock budget the plan was sized to, or None for an epoch count.
    """

    total_steps: int
    steps_per_epoch: int
    warmup_steps: int
    dataset_size: int
    global_batch_size: int
    budget_seconds: float | None = None

    @property
    def epochs(self) -> float:
        return self.total_steps / self.steps_per_epoch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainingPlan":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class StepContext:
    """Where a step sits in the run; passed to the method's hooks so its schedules need nothing else."""

    step: int
    plan: TrainingPlan

    @property
    def epoch(self) -> int:
        return self.step // self.plan.steps_per_epoch

    @property
    def progress(self) -> float:
        return min(self.step / max(self.plan.total_steps, 1), 1.0)
