"""Step-indexed schedules (warm-up + cosine, linear ramps): pure functions of the step, so resuming needs only it."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .plan import TrainingPlan  # re-exported: StepContext carries the plan


def cosine(step: float, total_steps: int, start: float, end: float) -> float:
    """Cosine interpolation from ``start`` (step 0) to ``end`` (step ``total_steps``), clamped outside."""
    if total_steps <= 0:
        return end
    progress = min(max(step / total_steps, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(step: float, total_steps: int, base: float, final: float, warmup_steps: int) -> float:
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


def linear_ramp(step: float, ramp_steps: int, start: float, end: float) -> float:
    """``start`` at step 0, linear to ``end`` at ``ramp_steps``, then ``end``."""
    if ramp_steps <= 0 or step >= ramp_steps:
        return end
    return start + (end - start) * step / ramp_steps


@dataclass(frozen=True)
class StepContext:
    """Where a step sits in the run; passed to the method's hooks so its schedules need nothing else.

    Schedules read ``schedule_step`` (with ``plan.total_steps``) or ``progress``, not ``step``: a
    ``--max-minutes`` run may be re-planned while it runs (``plan.replan``), and only these stay
    continuous through it. ``step`` counts optimizer steps (epochs, checkpoints, previews).
    """

    step: int
    plan: TrainingPlan

    @property
    def epoch(self) -> int:
        return self.step // self.plan.steps_per_epoch

    @property
    def progress(self) -> float:
        return self.plan.progress(self.step)

    @property
    def schedule_step(self) -> float:
        """The step's position on the plan's schedules (the step itself unless the run was re-planned)."""
        return self.plan.schedule_step(self.step)


__all__ = ["StepContext", "TrainingPlan", "cosine", "linear_ramp", "warmup_cosine"]
