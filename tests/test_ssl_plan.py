"""ssl/plan.py: the budget a run asks for, the steps that fit it, the stored plan; the method hooks the trainer calls."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from sslsearch.errors import InvalidArgumentError, UnknownNameError
from sslsearch.ssl import METHODS, TrainConfig, train
from sslsearch.ssl.config import from_flat
from sslsearch.ssl.methods import DINO, SimCLR
from sslsearch.ssl.plan import (BUDGET_SAFETY, DEFAULT_EPOCHS, END_RESERVE_SECONDS, MAX_REPLANS, Budget, TrainingPlan,
                                first_replan_step, make_plan, next_replan_step, planned_steps, rate_drifted, replan,
                                replanned_steps, requested_budget, steps_in_budget)
from sslsearch.ssl.schedules import TrainingPlan as ScheduleTrainingPlan
from sslsearch.ssl.train import validate_config


def budget(epochs: float | None = None, max_minutes: float | None = None, images: int = 1000,
           batch: int = 64) -> Budget:
    return requested_budget(epochs, max_minutes, dataset_size=images, global_batch_size=batch, device_type="cpu")


def test_requested_budget_defaults_to_epochs_only_when_no_length_is_given() -> None:
    assert budget().epochs == DEFAULT_EPOCHS and budget().budget_seconds is None
    assert budget(max_minutes=3).epochs is None and budget(max_minutes=3).budget_seconds == 180
    assert budget(epochs=2.5).steps_per_epoch == 15 and budget(epochs=2.5).epoch_steps == 38  # ceil(37.5)


@pytest.mark.parametrize("budget_seconds, used, step, evaluation, every, expected", [
    (60.0, 10.0, 0.5, 0.0, 1, int((60 - 10 - END_RESERVE_SECONDS) * BUDGET_SAFETY / 0.5)),
    (60.0, 10.0, 0.5, 4.0, 8, int((60 - 10 - 4 - END_RESERVE_SECONDS) * BUDGET_SAFETY / 1.0)),
    (10.0, 9.0, 0.5, 0.0, 1, 0),      # the budget is spent before the first step
    (1.0, 5.0, 0.5, 0.0, 1, 0),       # overspent: never negative
])
def test_steps_in_budget(budget_seconds: float, used: float, step: float, evaluation: float, every: int,
                         expected: int) -> None:
    assert steps_in_budget(budget_seconds, used_seconds=used, step_seconds=step, eval_seconds=evaluation,
                           val_every_steps=every) == expected


@pytest.mark.parametrize("epochs, minutes, fit, expected", [
    (2.0, None, None, 30),   # epochs alone
    (2.0, 3.0, 100, 30),     # both: the epochs are shorter
    (2.0, 3.0, 12, 12),      # both: the budget is shorter
    (None, 3.0, 500, 500),   # minutes alone
    (None, 3.0, 0, 1),       # no full step fits: one step
])
def test_planned_steps(epochs: float | None, minutes: float | None, fit: int | None, expected: int) -> None:
    assert planned_steps(budget(epochs, minutes), fit) == expected


def test_a_budget_in_minutes_needs_a_measured_step() -> None:
    with pytest.raises(ValueError, match="measure a step"):
        planned_steps(budget(max_minutes=3), None)


def test_make_plan_and_its_round_trip() -> None:
    plan = make_plan(budget(epochs=2.0, max_minutes=1.0), 30, warmup_fraction=0.1)
    assert plan == TrainingPlan(total_steps=30, steps_per_epoch=15, warmup_steps=3, dataset_size=1000,
                                global_batch_size=64, budget_seconds=60.0)
    assert plan.epochs == 2.0 and plan.hard_stop_seconds == pytest.approx(60 * 1.1 + 10)
    assert TrainingPlan.from_dict({**plan.to_dict(), "unknown": 1}) == plan
    assert make_plan(budget(epochs=1.0), 15, warmup_fraction=0.1).hard_stop_seconds is None
    assert ScheduleTrainingPlan is TrainingPlan  # checkpoints and methods still find it in schedules


@pytest.mark.parametrize("overrides, error, message", [
    ({"dino.centering": "sinkorn"}, UnknownNameError, "did you mean 'sinkhorn'"),
    ({"dino.koleo_weight": -0.1}, InvalidArgumentError, "0 \\(off\\) or positive"),
    ({"dino.koleo_weight": 0.1, "batch_size": 1}, InvalidArgumentError, "at least 2 images per step"),
])
def test_dino_validates_its_own_settings(overrides: dict, error: type, message: str) -> None:
    config = from_flat({"method": "dino", "data": "x", "out": "y", **overrides}, TrainConfig())
    with pytest.raises(error, match=message):
        DINO.validate(config)
    with pytest.raises(error, match=message):
        validate_config(config)  # the trainer's checks call the method's hook
    SimCLR.validate(config)  # another method does not read DINO's section


def test_dino_input_sizes_include_the_local_crops_only_when_there_are_some() -> None:
    config = TrainConfig(method="dino", image_size=64)
    with_locals = dataclasses.replace(config.augmentation, local_crop_count=2, local_crop_size=32)
    without = dataclasses.replace(config.augmentation, local_crop_count=0, local_crop_size=32)
    assert DINO.input_sizes(config, with_locals) == {"--image-size": 64, "augmentation.local_crop_size": 32}
    assert DINO.input_sizes(config, without) == {"--image-size": 64}
    assert SimCLR.input_sizes(config, with_locals) == {"--image-size": 64}
    assert DINO.multi_size_views and not SimCLR.multi_size_views


class BudgetedSimCLR(SimCLR):
    """SimCLR whose temperature is chosen from the budget: a method adapting itself with no trainer edit."""

    name = "simclr-budgeted"
    budgets: list[Budget] = []

    @classmethod
    def adapt_to_budget(cls, config: TrainConfig, budget: Budget) -> TrainConfig:
        cls.budgets.append(budget)
        temperature = 0.5 if budget.epoch_steps is not None and budget.epoch_steps <= 10 else 0.2
        return dataclasses.replace(config, simclr=dataclasses.replace(config.simclr, temperature=temperature))


def test_a_registered_method_adapts_its_config_to_the_budget(small_list_for_plan: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    monkeypatch.setitem(METHODS, BudgetedSimCLR.name, BudgetedSimCLR)
    config = from_flat({"method": BudgetedSimCLR.name, "data": str(small_list_for_plan), "out": str(tmp_path / "run"),
                        "backbone": "test_resnet", "image_size": 32, "batch_size": 8, "workers": 0, "epochs": 2 / 3},
                       TrainConfig())
    result = train(config)
    assert result.steps == 2 and result.finished
    assert BudgetedSimCLR.budgets[-1] == Budget(epochs=2 / 3, max_minutes=None, dataset_size=24, global_batch_size=8,
                                                device_type="cpu")
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "temperature: 0.5" in saved  # the adapted setting is what the run was trained and saved with


@pytest.fixture
def one_thread():
    """One torch thread: a tiny model gains nothing from two, and on a busy shared box two stall each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_list_for_plan(sample_dir: Path, tmp_path: Path) -> Path:
    """24 images of the sample set as a .txt list: 3 steps per epoch at batch 8."""
    paths = sorted(p for p in sample_dir.rglob("*") if p.suffix in (".png", ".jpg"))[::5][:24]
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    return listing


# -- re-planning a --max-minutes run ------------------------------------------------------------------

def first_plan(total: int = 100, **overrides) -> TrainingPlan:
    return dataclasses.replace(make_plan(budget(max_minutes=10.0), total, warmup_fraction=0.1, step_seconds=2.0),
                               **overrides)


def test_a_first_plan_schedules_by_the_step_itself() -> None:
    plan = first_plan()
    assert [plan.schedule_step(s) for s in (0, 7, 100)] == [0.0, 7.0, 100.0]
    assert plan.progress(25) == 0.25 and plan.progress(150) == 1.0
    assert plan.step_at(0.3) == 30 and plan.warmup_end_step == 10 and plan.horizon_steps == 100


@pytest.mark.parametrize("step, total", [(5, 400), (30, 400), (60, 70), (8, 20)])
def test_replan_keeps_the_progress_and_ends_the_schedules_at_the_new_total(step: int, total: int) -> None:
    before = first_plan()
    after = replan(before, step=step, total_steps=total, warmup_fraction=0.1, step_seconds=0.5)
    assert after.progress(step) == pytest.approx(before.progress(step))  # no schedule jumps
    assert after.progress(total) == 1.0 and after.schedule_step(total) == pytest.approx(total)
    progress = [after.progress(s) for s in range(step, total + 1)]
    assert all(b > a for a, b in zip(progress, progress[1:]))  # forward, evenly, to the end
    assert after.warmup_steps == int(0.1 * total) and after.horizon_steps == 100 and after.replans == 1
    assert after.step_seconds == 0.5 and after.anchor_step == step
    for p in (0.1, 0.3, 0.9):  # step_at is the inverse of progress (the first step to reach it)
        if p > after.anchor_progress:
            s = after.step_at(p)
            assert after.progress(s) <= p + 1e-9 < after.progress(s + 1) + 1e-9
    again = replan(after, step=step + 1, total_steps=total + 10, warmup_fraction=0.1)
    assert again.progress(step + 1) == pytest.approx(after.progress(step + 1)) and again.horizon_steps == 100
    assert TrainingPlan.from_dict(again.to_dict()) == again


def test_replan_must_leave_a_step() -> None:
    with pytest.raises(ValueError, match="must end after it"):
        replan(first_plan(), step=10, total_steps=10, warmup_fraction=0.1)


def test_a_plan_saved_before_replanning_existed_still_loads() -> None:
    old = {"total_steps": 30, "steps_per_epoch": 15, "warmup_steps": 3, "dataset_size": 1000,
           "global_batch_size": 64, "budget_seconds": 60.0}
    plan = TrainingPlan.from_dict(old)
    assert plan.anchor_step == 0 and plan.replans == 0 and plan.horizon_steps == 30 and plan.schedule_step(4) == 4


@pytest.mark.parametrize("total, start, expected", [
    (400, 0, 33),    # 8 % of the plan (32 steps) is more than 20
    (100, 0, 21),    # 20 steps is more than 8 %
    (40, 0, 11),     # at most a quarter of the plan (10 steps)
    (12, 0, 5),      # but at least 4 timed steps
    (5, 0, None),    # the plan ends first: no re-plan
    (400, 100, 133),  # a resumed session measures its own steps
])
def test_first_replan_step(total: int, start: int, expected: int | None) -> None:
    assert first_replan_step(first_plan(total), start) == expected


def test_no_replan_for_an_epochs_run_or_after_the_last_one() -> None:
    epochs_plan = make_plan(budget(epochs=10.0), 150, warmup_fraction=0.1)
    assert first_replan_step(epochs_plan, 0) is None and next_replan_step(epochs_plan, 30) is None
    assert first_replan_step(first_plan(replans=MAX_REPLANS), 0) is None
    assert next_replan_step(first_plan(), 33) == 53  # every fifth of the run
    assert next_replan_step(first_plan(), 60) is None  # the next look would be past 75 % of the schedules


@pytest.mark.parametrize("replans, planned, measured, expected", [
    (0, 2.0, 2.0, True),     # the first look always re-plans from the loop's own rate
    (1, 2.0, 2.2, False),    # within 15 %
    (1, 2.0, 2.4, True),     # slower by 20 %
    (1, 2.0, 1.6, True),     # faster by 20 %
])
def test_rate_drifted(replans: int, planned: float, measured: float, expected: bool) -> None:
    assert rate_drifted(first_plan(replans=replans, step_seconds=planned), measured) is expected


def test_replanned_steps_fill_the_budget_but_not_more_than_the_epochs() -> None:
    minutes = budget(max_minutes=10.0)
    total = replanned_steps(minutes, step=40, used_seconds=100.0, step_seconds=0.5)
    assert total == 40 + steps_in_budget(600.0, used_seconds=100.0, step_seconds=0.5)
    assert replanned_steps(budget(epochs=20.0, max_minutes=10.0), step=40, used_seconds=100.0,
                           step_seconds=0.5) == 300  # 20 epochs of 15 steps
    assert replanned_steps(minutes, step=40, used_seconds=700.0, step_seconds=0.5) == 41  # spent: one more
