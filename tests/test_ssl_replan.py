"""Re-planning a --max-minutes run from its measured rate: more or fewer steps, schedules that follow, resume.

The trainer's clock is faked: each training step takes exactly ``STEP_SECONDS`` of it and nothing
else does, and ``calibrate`` is made to report a step 4× slower (or faster) than that, so what
the run decides never depends on how fast this machine is.
"""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sslsearch.ssl import TrainConfig
from sslsearch.ssl.checkpoint import load_checkpoint
from sslsearch.ssl.config import build_config, from_flat
from sslsearch.ssl.plan import END_RESERVE_SECONDS, TrainingPlan
from sslsearch.ssl.rundir import read_metrics
from sslsearch.ssl.train import Trainer

STEP_SECONDS = 1.0
TINY = {"backbone": "test_resnet", "image_size": 32, "batch_size": 8, "workers": 0, "log_every_steps": 1,
        "progress": False}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_list(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 images of the sample set as a .txt list: 3 steps per epoch at batch 8."""
    paths = sorted(p for p in sample_dir.rglob("*") if p.suffix in (".png", ".jpg"))[::5][:24]
    listing = tmp_path_factory.mktemp("replan") / "images.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    return listing


class FakeClock:
    """The trainer's wall clock: moves only when a training step runs (``STEP_SECONDS`` each)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_clock(monkeypatch: pytest.MonkeyPatch, step_seconds: float | Callable[[int], float] = STEP_SECONDS
               ) -> FakeClock:
    """Each training step takes ``step_seconds`` (or ``step_seconds(step)``) of the trainer's clock."""
    fake = FakeClock()
    monkeypatch.setattr(Trainer, "clock", staticmethod(fake))
    step = Trainer.train_step

    def timed_step(self: Trainer, views: list[torch.Tensor]):
        fake.now += step_seconds(self.step) if callable(step_seconds) else step_seconds
        return step(self, views)

    monkeypatch.setattr(Trainer, "train_step", timed_step)
    return fake


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    return fake_clock(monkeypatch)


@dataclasses.dataclass(frozen=True)
class Finished:
    out: Path
    result: object
    lines: list[str]
    seconds: float


@pytest.fixture(scope="module")
def faster_run(small_list: Path, tmp_path_factory: pytest.TempPathFactory) -> Finished:
    """A 1-minute run whose calibration reported a step 4× slower than the loop's."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests' runs (one_thread): the resume test compares weights exactly
    with pytest.MonkeyPatch.context() as monkeypatch:
        clock = fake_clock(monkeypatch)
        calibrated(monkeypatch, 4 * STEP_SECONDS)
        out = tmp_path_factory.mktemp("faster") / "run"
        started = clock.now
        try:
            result, lines = run(tiny_config(small_list, out, max_minutes=1))
        finally:
            torch.set_num_threads(threads)
        return Finished(out, result, lines, clock.now - started)


def calibrated(monkeypatch: pytest.MonkeyPatch, step_seconds: float) -> None:
    monkeypatch.setattr(Trainer, "calibrate", lambda self: step_seconds)


def tiny_config(data: Path, out: Path, **overrides: object) -> TrainConfig:
    return from_flat({**TINY, "data": str(data), "out": str(out), **overrides}, TrainConfig())


def run(config: TrainConfig, *, resume: bool = False):
    lines: list[str] = []
    result = Trainer(config, resume=resume, log=lines.append).run()
    return result, lines


def replans(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r.get("event") == "replan"]


def learning_rates(run_dir: Path) -> list[float]:
    return [r["lr"] for r in read_metrics(run_dir) if "lr" in r and "event" not in r]


def assert_warmup_then_cosine(rates: list[float], final: float, tolerance: float = 0.01) -> None:
    """Up to one peak, then never up again (a re-plan must not move the schedule back), ending at ``final``."""
    peak = rates.index(max(rates))
    assert all(a <= b + 1e-12 for a, b in zip(rates[:peak], rates[1:peak + 1])), rates
    assert all(a >= b - 1e-12 for a, b in zip(rates[peak:], rates[peak + 1:])), rates
    assert rates[-1] - final <= tolerance * (max(rates) - final), rates


def test_a_run_faster_than_calibrated_replans_to_more_steps(faster_run: Finished) -> None:
    out, result, lines = faster_run.out, faster_run.result, faster_run.lines
    events = replans(out)
    assert len(events) == result.replans == 1
    first_total = events[0]["previous_total_steps"]
    assert events[0]["measured_step_seconds"] == pytest.approx(STEP_SECONDS)
    assert events[0]["planned_step_seconds"] == pytest.approx(4 * STEP_SECONDS)
    assert result.finished and result.steps == result.planned_steps == events[0]["total_steps"]
    assert result.steps > 3 * first_total  # the time the slow estimate left unused is trained
    assert faster_run.seconds <= 60 - END_RESERVE_SECONDS  # and the run still ends inside its budget
    assert any(line.startswith(f"re-planned at step {events[0]['step']}: measured 1.00 s/step (planned 4.00) → "
                               f"{result.steps} steps") for line in lines)
    config = build_config({}, resume_run=out)
    base_lr = config.optimizer.lr * config.batch_size / 256
    assert_warmup_then_cosine(learning_rates(out), base_lr * config.optimizer.final_lr_ratio)
    plan = TrainingPlan.from_dict(load_checkpoint(out)["plan"])
    assert plan.total_steps == result.steps and plan.horizon_steps == first_total and plan.replans == 1


def test_a_run_slower_than_calibrated_replans_to_fewer_steps_within_budget(
        small_list: Path, tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    calibrated(monkeypatch, STEP_SECONDS / 4)
    out = tmp_path / "run"
    started = clock.now
    result, _ = run(tiny_config(small_list, out, max_minutes=1))
    events = replans(out)
    assert len(events) == 1 and events[0]["total_steps"] < events[0]["previous_total_steps"]
    assert result.finished and result.steps == events[0]["total_steps"]
    assert clock.now - started <= 60 - END_RESERVE_SECONDS
    config = build_config({}, resume_run=out)
    base_lr = config.optimizer.lr * config.batch_size / 256
    assert_warmup_then_cosine(learning_rates(out), base_lr * config.optimizer.final_lr_ratio)


def test_an_epochs_run_never_replans(small_list: Path, tmp_path: Path, clock: FakeClock,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def no_calibration(self: Trainer) -> float:
        raise AssertionError("an --epochs run has no budget to calibrate")

    monkeypatch.setattr(Trainer, "calibrate", no_calibration)
    out = tmp_path / "run"
    result, lines = run(tiny_config(small_list, out, epochs=8))
    assert result.finished and result.steps == result.planned_steps == 24 and result.replans == 0
    assert replans(out) == [] and not any("re-planned" in line for line in lines)


def test_resume_after_a_replan_continues_the_replanned_plan(small_list: Path, tmp_path: Path, clock: FakeClock,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            faster_run: Finished) -> None:
    calibrated(monkeypatch, 4 * STEP_SECONDS)
    straight = faster_run.result  # the same run, uninterrupted
    first, _ = run(tiny_config(small_list, tmp_path / "resumed", max_minutes=1, stop_after_steps=10))
    assert first.steps == 10 and first.replans == 1 and first.planned_steps == straight.planned_steps
    saved = TrainingPlan.from_dict(load_checkpoint(tmp_path / "resumed")["plan"])
    assert saved.total_steps == straight.planned_steps and saved.replans == 1
    monkeypatch.setattr(Trainer, "calibrate", lambda self: pytest.fail("a resumed run keeps its plan"))
    config = dataclasses.replace(build_config({}, resume_run=tmp_path / "resumed"), progress=False)
    second, _ = run(config, resume=True)
    assert second.finished and second.steps == straight.steps and second.replans == 1
    assert learning_rates(tmp_path / "resumed") == pytest.approx(learning_rates(faster_run.out))
    expected, actual = load_checkpoint(faster_run.out)["model"], load_checkpoint(tmp_path / "resumed")["model"]
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)


def test_the_hard_stop_catches_slow_steps_between_logging_lines(small_list: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # re-planning off: steps 4× slower than measured run into the hard stop (110 % of the budget + 10 s),
    # checked every step when a step is planned to take more than 5 s (not only every 10 logging steps)
    clock = fake_clock(monkeypatch, step_seconds=16.0)
    calibrated(monkeypatch, 4.0)
    trainer_module = importlib.import_module("sslsearch.ssl.train")  # the attribute is the train() function
    monkeypatch.setattr(trainer_module, "first_replan_step", lambda plan, step: None)
    monkeypatch.setattr(trainer_module, "OVERRUN_WINDOW_STEPS", 10**6)  # nor the late overrun checks
    started = clock.now
    result, lines = run(tiny_config(small_list, tmp_path / "run", max_minutes=1, log_every_steps=10))
    assert result.planned_steps == 13 and result.steps == 5  # 5 × 16 s > 60 × 1.1 + 10 s
    assert not result.finished and result.encoder_exported and clock.now - started == 5 * 16.0
    assert any(line.startswith("stopping at step 5/13") for line in lines)


def test_a_slowdown_after_the_last_rate_check_shortens_the_run(small_list: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # an accurate calibration, then from step 45 (after the last rate check) each step takes 5× longer:
    # the late checks re-plan to end the run (its schedules annealed) before the hard stop would cut it
    clock = fake_clock(monkeypatch, step_seconds=lambda step: 5.0 if step >= 44 else 1.0)
    calibrated(monkeypatch, 1.0)
    started = clock.now
    out = tmp_path / "run"
    result, _ = run(tiny_config(small_list, out, max_minutes=1))
    last = replans(out)[-1]
    assert last["measured_step_seconds"] == pytest.approx(5.0) and last["step"] > 44
    assert last["total_steps"] < last["previous_total_steps"]
    assert result.finished and result.steps == last["total_steps"] < 50
    assert clock.now - started < 60 * 1.1 + 10  # ended before the hard stop, which would have cut it unfinished
    config = build_config({}, resume_run=out)
    base_lr = config.optimizer.lr * config.batch_size / 256
    # re-planned with few steps left: the last step's lr is one short step before the schedule's end
    assert_warmup_then_cosine(learning_rates(out), base_lr * config.optimizer.final_lr_ratio, tolerance=0.05)
