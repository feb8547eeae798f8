"""How long a training run is: the budget it is asked for, the steps that fit, and the plan stored in checkpoints."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_EPOCHS = 100.0  # the run's length when neither --epochs nor --max-minutes is given
CALIBRATION_STEPS = 3  # timed steps (after one untimed) that size a --max-minutes run
BUDGET_SAFETY = 0.93  # plan for this fraction of the time left, so the run ends inside the budget
BUDGET_HARD_STOP = 1.10  # stop (checkpoint, export) if the run overshoots its budget by this factor
END_RESERVE_SECONDS = 2.0  # kept back from the budget for the last checkpoint and the export


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

    @property
    def hard_stop_seconds(self) -> float | None:
        """Elapsed seconds after which a budgeted run stops early (it ran slower than measured), or None."""
        return self.budget_seconds * BUDGET_HARD_STOP + 10 if self.budget_seconds else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainingPlan":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class Budget:
    """What a run is asked for, known before the model is built (a method may adapt its settings to it).

    Attributes:
        epochs: passes over the data asked for (``DEFAULT_EPOCHS`` when neither length is given), or None.
        max_minutes: the wall-clock budget asked for, or None.
        dataset_size: readable training images.
        global_batch_size: images per step over all processes.
        device_type: ``"cpu"`` or ``"cuda"``.
    """

    epochs: float | None
    max_minutes: float | None
    dataset_size: int
    global_batch_size: int
    device_type: str

    @property
    def steps_per_epoch(self) -> int:
        return self.dataset_size // self.global_batch_size

    @property
    def budget_seconds(self) -> float | None:
        return self.max_minutes * 60 if self.max_minutes else None

    @property
    def epoch_steps(self) -> int | None:
        """Steps of the asked epochs (rounded up), or None for a budget in minutes alone."""
        return math.ceil(self.epochs * self.steps_per_epoch) if self.epochs else None


def requested_budget(epochs: float | None, max_minutes: float | None, *, dataset_size: int,
                     global_batch_size: int, device_type: str) -> Budget:
    """The ``Budget`` of ``--epochs`` / ``--max-minutes`` (``DEFAULT_EPOCHS`` when neither is given)."""
    if not epochs and not max_minutes:
        epochs = DEFAULT_EPOCHS
    return Budget(epochs=epochs, max_minutes=max_minutes, dataset_size=dataset_size,
                  global_batch_size=global_batch_size, device_type=device_type)


def steps_in_budget(budget_seconds: float, *, used_seconds: float, step_seconds: float, eval_seconds: float = 0.0,
                    val_every_steps: int = 1) -> int:
    """Whole steps that fit in what is left of a wall-clock budget (0 when none does).

    Args:
        budget_seconds: the whole budget.
        used_seconds: spent before the first step (loading, building, calibrating).
        step_seconds: measured seconds of one whole training step.
        eval_seconds: seconds of one online k-NN evaluation (0 without ``--val``), run every
            ``val_every_steps`` steps and once at the end.

    Example:
        >>> steps_in_budget(60.0, used_seconds=10.0, step_seconds=0.5)
        89
    """
    per_step = step_seconds + eval_seconds / max(val_every_steps, 1)
    reserve = eval_seconds + END_RESERVE_SECONDS  # the final k-NN, checkpoint and export
    return int(max(budget_seconds - used_seconds - reserve, 0.0) * BUDGET_SAFETY / per_step)


def planned_steps(budget: Budget, fit: int | None) -> int:
    """The run's total steps: the asked epochs, capped by the steps that fit the time budget (``fit``; ≥ 1)."""
    if fit is None:
        if budget.epoch_steps is None:
            raise ValueError("a budget in minutes needs the steps that fit (measure a step first)")
        return budget.epoch_steps
    fit = max(fit, 1)
    return min(fit, budget.epoch_steps) if budget.epoch_steps else fit


def make_plan(budget: Budget, total_steps: int, *, warmup_fraction: float) -> TrainingPlan:
    """The ``TrainingPlan`` of ``total_steps`` steps, warming up over ``warmup_fraction`` of them."""
    return TrainingPlan(total_steps=total_steps, steps_per_epoch=budget.steps_per_epoch,
                        warmup_steps=int(warmup_fraction * total_steps), dataset_size=budget.dataset_size,
                        global_batch_size=budget.global_batch_size, budget_seconds=budget.budget_seconds)
