"""How long a training run is: the budget it is asked for, the steps that fit, and the plan stored in checkpoints."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_EPOCHS = 100.0  # the run's length when neither --epochs nor --max-minutes is given
CALIBRATION_STEPS = 3  # timed steps (after one untimed) that size a --max-minutes run
BUDGET_SAFETY = 0.93  # plan for this fraction of the time left, so the run ends inside the budget
BUDGET_HARD_STOP = 1.10  # stop (checkpoint, export) if the run overshoots its budget by this factor
END_RESERVE_SECONDS = 2.0  # kept back from the budget for the last checkpoint and the export
REPLAN_FIRST_STEPS = 20  # a --max-minutes run re-plans from its measured rate after this many steps...
REPLAN_FIRST_FRACTION = 0.08  # ...or this fraction of the first plan, whichever is later...
REPLAN_LATEST_FRACTION = 0.25  # ...but no later than this fraction of it (short runs of few, slow steps)
REPLAN_MIN_STEPS = 4  # timed steps (the session's first one left out) a measured rate needs at least
REPLAN_DRIFT = 0.15  # later, re-plan again only when the measured rate is off the plan's by more than this
REPLAN_CHECK_FRACTION = 0.2  # look at the rate again every this fraction of the run...
REPLAN_LAST_PROGRESS = 0.75  # ...until the schedules are this far along (later changes would gain little)
MAX_REPLANS = 3  # rate-check re-plans in a run: the first and at most two for drift (late overruns aside)


@dataclass(frozen=True)
class TrainingPlan:
    """How long the run is: made before the first step, stored in every checkpoint, re-made (``replan``)
    when a ``--max-minutes`` run measures its real rate.

    Schedules read the run's **progress** (``progress(step)``, 0 → 1 at ``total_steps``) or its
    position on the schedules (``schedule_step(step)`` = progress × ``total_steps``), never the raw
    step: for a first plan both are the step itself; after a re-plan at ``anchor_step`` the
    progress reached then (``anchor_progress``) is kept and the rest of the schedules is spread
    over the new remaining steps, so no schedule jumps (see ``replan``).

    Attributes:
        total_steps: optimizer steps of the whole run (the schedules end here).
        steps_per_epoch: steps per pass over the data (global batch, last partial batch dropped).
        warmup_steps: lr warm-up length, in schedule steps (``warmup_fraction`` × ``total_steps``).
        dataset_size: images the plan was made for.
        global_batch_size: images per step over all processes.
        budget_seconds: the wall-clock budget the plan was sized to, or None for an epoch count.
        step_seconds: seconds of one step the plan was sized with (budgeted runs), or None.
        anchor_step: the step this plan took over at (0: the first plan).
        anchor_progress: the schedules' progress at ``anchor_step`` (0 → 1).
        replans: re-plans so far in the run.
        first_total_steps: ``total_steps`` of the run's first plan (EMA horizons are sized from it); 0: this one.
    """

    total_steps: int
    steps_per_epoch: int
    warmup_steps: int
    dataset_size: int
    global_batch_size: int
    budget_seconds: float | None = None
    step_seconds: float | None = None
    anchor_step: int = 0
    anchor_progress: float = 0.0
    replans: int = 0
    first_total_steps: int = 0

    @property
    def epochs(self) -> float:
        return self.total_steps / self.steps_per_epoch

    @property
    def horizon_steps(self) -> int:
        """The first plan's length: EMA momenta are sized from it once, so a re-plan never moves them abruptly."""
        return self.first_total_steps or self.total_steps

    def progress(self, step: int) -> float:
        """How far the schedules are at ``step``: 0 at the start, 1 at ``total_steps`` (clamped).

        Example:
            >>> plan = TrainingPlan(100, 10, 10, 640, 64)
            >>> plan.progress(25), replan(plan, step=25, total_steps=175, warmup_fraction=0.1).progress(100)
            (0.25, 0.625)
        """
        if step >= self.total_steps:
            return 1.0
        if self.anchor_step <= 0:
            return max(step, 0) / max(self.total_steps, 1)
        if step <= self.anchor_step:  # steps before the re-plan (not scheduled again): proportional
            return self.anchor_progress * max(step, 0) / self.anchor_step
        return self.anchor_progress + (1.0 - self.anchor_progress) * (step - self.anchor_step) / (
            self.total_steps - self.anchor_step)

    def schedule_step(self, step: int) -> float:
        """The position of ``step`` on the plan's schedules (``total_steps`` long): ``step`` itself for a first plan."""
        if self.anchor_step <= 0:
            return float(step)
        return self.progress(step) * self.total_steps

    def step_at(self, progress: float) -> int:
        """The first step whose progress reaches ``progress`` (``int(progress × total_steps)`` for a first plan)."""
        if self.anchor_step <= 0 or progress <= self.anchor_progress:
            base = int(progress * self.total_steps) if self.anchor_step <= 0 else \
                int(progress / max(self.anchor_progress, 1e-12) * self.anchor_step)
            return min(base, self.total_steps)
        share = (progress - self.anchor_progress) / (1.0 - self.anchor_progress)
        return min(self.anchor_step + int(share * (self.total_steps - self.anchor_step)), self.total_steps)

    @property
    def warmup_end_step(self) -> int:
        """The step at which the lr warm-up ends."""
        if self.anchor_step <= 0:
            return self.warmup_steps
        return self.step_at(self.warmup_steps / max(self.total_steps, 1))

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


def make_plan(budget: Budget, total_steps: int, *, warmup_fraction: float,
              step_seconds: float | None = None) -> TrainingPlan:
    """The ``TrainingPlan`` of ``total_steps`` steps, warming up over ``warmup_fraction`` of them."""
    return TrainingPlan(total_steps=total_steps, steps_per_epoch=budget.steps_per_epoch,
                        warmup_steps=int(warmup_fraction * total_steps), dataset_size=budget.dataset_size,
                        global_batch_size=budget.global_batch_size, budget_seconds=budget.budget_seconds,
                        step_seconds=step_seconds)


def replan(plan: TrainingPlan, *, step: int, total_steps: int, warmup_fraction: float,
           step_seconds: float | None = None) -> TrainingPlan:
    """``plan`` re-made at ``step`` to end at ``total_steps`` (> ``step``), its schedules kept continuous.

    What is kept and why: every schedule (lr warm-up + cosine, weight decay, DINO's teacher
    temperature and momentum, MoCo's momentum, the collapse monitor's grace, DINO's frozen last
    layer) is a function of the run's progress. The new plan keeps the progress reached at
    ``step`` and spreads the rest of it evenly over the new remaining steps, so each schedule goes
    on from the value it has now (never back, never a jump) and still reaches its final value on
    the last step. The warm-up stays ``warmup_fraction`` of the progress: re-planned while still
    warming up, the rest of the warm-up stretches or shrinks with the run; re-planned after it, it
    lies in the past and nothing changes for it. EMA momenta keep the horizon sized from the first
    plan (``horizon_steps``): resizing it would step the momentum. Epoch-based quantities (the
    batch order, epochs done) do not depend on the plan.

    Example:
        >>> first = TrainingPlan(total_steps=100, steps_per_epoch=10, warmup_steps=10, dataset_size=640,
        ...                      global_batch_size=64)
        >>> later = replan(first, step=20, total_steps=420, warmup_fraction=0.1)
        >>> later.progress(20), later.progress(420), later.warmup_steps, later.horizon_steps
        (0.2, 1.0, 42, 100)
    """
    if total_steps <= step:
        raise ValueError(f"a re-plan at step {step} must end after it, got total_steps={total_steps}")
    return dataclasses.replace(plan, total_steps=total_steps, warmup_steps=int(warmup_fraction * total_steps),
                               step_seconds=step_seconds, anchor_step=step, anchor_progress=plan.progress(step),
                               replans=plan.replans + 1, first_total_steps=plan.horizon_steps)


def first_replan_step(plan: TrainingPlan, session_start_step: int) -> int | None:
    """The step at which a session of a ``--max-minutes`` run first measures its rate, or None (never).

    The session's first step is left out of the measure (a new loader, cold caches), then it times
    ``REPLAN_FIRST_STEPS`` steps or ``REPLAN_FIRST_FRACTION`` of the plan, whichever is more, but
    no more than ``REPLAN_LATEST_FRACTION`` of it and no fewer than ``REPLAN_MIN_STEPS``.

    Example:
        >>> plan = TrainingPlan(total_steps=400, steps_per_epoch=80, warmup_steps=40, dataset_size=5120,
        ...                     global_batch_size=64, budget_seconds=900.0)
        >>> first_replan_step(plan, 0), first_replan_step(dataclasses.replace(plan, total_steps=40), 0)
        (33, 11)
    """
    if plan.budget_seconds is None or plan.replans >= MAX_REPLANS:
        return None
    window = max(math.ceil(REPLAN_FIRST_FRACTION * plan.total_steps), REPLAN_FIRST_STEPS)
    window = max(REPLAN_MIN_STEPS, min(window, math.ceil(REPLAN_LATEST_FRACTION * plan.total_steps)))
    step = session_start_step + 1 + window
    return step if step < plan.total_steps else None


def next_replan_step(plan: TrainingPlan, step: int) -> int | None:
    """After a look at the rate at ``step``, the step of the next one, or None (no further re-plan)."""
    if plan.budget_seconds is None or plan.replans >= MAX_REPLANS:
        return None
    later = step + max(REPLAN_MIN_STEPS, math.ceil(REPLAN_CHECK_FRACTION * plan.total_steps))
    return later if later < plan.total_steps and plan.progress(later) < REPLAN_LAST_PROGRESS else None


def rate_drifted(plan: TrainingPlan, measured_step_seconds: float) -> bool:
    """Whether ``measured_step_seconds`` calls for a new plan: the plan was sized by the calibration before
    the first step (it always does), or the rate is off the plan's by more than ``REPLAN_DRIFT``."""
    if plan.replans == 0 or not plan.step_seconds:
        return True
    return abs(measured_step_seconds / plan.step_seconds - 1.0) > REPLAN_DRIFT


def replanned_steps(budget: Budget, *, step: int, used_seconds: float, step_seconds: float,
                    eval_seconds: float = 0.0, val_every_steps: int = 1) -> int:
    """The run's new total steps at ``step``: the steps that fit what is left of the budget at the measured
    rate (``steps_in_budget``), capped by the asked epochs, at least one more step.

    Example:
        >>> minutes = requested_budget(None, 10.0, dataset_size=6400, global_batch_size=64, device_type="cpu")
        >>> replanned_steps(minutes, step=40, used_seconds=100.0, step_seconds=0.85)
        584
    """
    left = steps_in_budget(budget.budget_seconds or 0.0, used_seconds=used_seconds, step_seconds=step_seconds,
                           eval_seconds=eval_seconds, val_every_steps=val_every_steps)
    total = step + max(left, 1)
    return min(total, budget.epoch_steps) if budget.epoch_steps and budget.epoch_steps > step else total
