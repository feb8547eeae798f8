"""The trainer end to end on tiny data: each method trains, resumes exactly, exports an encoder; bad input."""
from __future__ import annotations

import dataclasses
import errno
import json
from pathlib import Path

import pytest
import torch

from sslsearch.encoders import create_encoder
from sslsearch.errors import (BadImageError, CheckpointError, InputNotFoundError, InvalidArgumentError,
                              OutputExistsError, UnknownNameError)
from sslsearch.ssl import METHODS, TrainConfig, train
from sslsearch.ssl.checkpoint import load_checkpoint, step_checkpoints
from sslsearch.ssl.config import build_config, from_flat
from sslsearch.ssl.methods import SimCLR
from sslsearch.ssl.rundir import read_metrics

TINY = {"backbone": "test_resnet", "image_size": 32, "batch_size": 8, "workers": 0, "log_every_steps": 1,
        "dino.prototypes": 64, "dino.hidden_dim": 64, "dino.bottleneck_dim": 32, "augmentation.local_crop_count": 2,
        "moco.queue_size": 16}


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: tiny models gain nothing from two, and on a busy shared box two stall each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(data: Path, out: Path, **overrides: object) -> TrainConfig:
    return from_flat({**TINY, "data": str(data), "out": str(out), **overrides}, TrainConfig())


@pytest.fixture
def small_list(sample_dir: Path, tmp_path: Path) -> Path:
    """24 images of the sample set as a .txt list: 3 steps per epoch at batch 8."""
    paths = sorted(p for p in sample_dir.rglob("*") if p.suffix in (".png", ".jpg"))[::5][:24]
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    return listing


def model_state(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run)["model"]


@pytest.mark.parametrize("method", ["simclr", "moco", "dino"])
def test_resume_continues_exactly(method: str, small_list: Path, tmp_path: Path) -> None:
    # 4 steps over 2 epochs (3 steps each, the 2nd cut short) straight, vs 2 + resume + 2.
    straight = train(tiny_config(small_list, tmp_path / "straight", method=method, epochs=4 / 3))
    assert straight.finished and straight.steps == 4 and straight.encoder_exported
    first = train(tiny_config(small_list, tmp_path / "resumed", method=method, epochs=4 / 3, stop_after_steps=2))
    assert first.steps == 2 and not first.finished and not first.encoder_exported
    resumed_config = build_config({}, resume_run=tmp_path / "resumed")
    second = train(dataclasses.replace(resumed_config, workers=1), resume=True)  # worker count must not matter
    assert second.steps == 4 and second.finished
    expected, actual = model_state(tmp_path / "straight"), model_state(tmp_path / "resumed")
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6, msg=f"{method}: {name}")
    steps = [r["step"] for r in read_metrics(tmp_path / "resumed") if "loss" in r and "event" not in r]
    assert steps == [1, 2, 3, 4]
    straight_losses = [r["loss"] for r in read_metrics(tmp_path / "straight") if "loss" in r and "event" not in r]
    resumed_losses = [r["loss"] for r in read_metrics(tmp_path / "resumed") if "loss" in r and "event" not in r]
    assert resumed_losses == pytest.approx(straight_losses, rel=1e-5)


def test_exported_encoder_is_the_trained_backbone(small_list: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(small_list, run, method="moco", epochs=1))
    meta = json.loads((run / "encoder.json").read_text())
    assert meta["backbone"] == "test_resnet" and meta["metadata"]["method"] == "moco"
    assert meta["preprocessing"]["image_size"] == 32
    encoder = create_encoder(run, device="cpu")
    state = model_state(run)
    trained = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    for name, value in encoder.module.state_dict().items():
        torch.testing.assert_close(value.contiguous(), trained[name].contiguous())
    random_init = create_encoder("timm:test_resnet", image_size=32, device="cpu").module.state_dict()
    changed = [name for name, value in encoder.module.state_dict().items()
               if value.is_floating_point() and not torch.equal(value, random_init[name])]
    assert len(changed) > len(random_init) // 2  # training moved the weights away from the random init


def test_dino_vit_exports_the_teacher(small_list: Path, tmp_path: Path) -> None:
    run = tmp_path / "vit"
    result = train(tiny_config(small_list, run, method="dino", backbone="test_vit", epochs=2 / 3,
                               model_kwargs={"patch_size": 8}, **{"augmentation.local_crop_size": 16}))
    assert result.finished
    saved = build_config({}, resume_run=run)
    assert saved.optimizer.name == "adamw" and saved.model_kwargs["dynamic_img_size"] is True
    encoder = create_encoder(run, device="cpu")
    teacher = {k.removeprefix("teacher_backbone."): v for k, v in model_state(run).items()
               if k.startswith("teacher_backbone.")}
    for name, value in encoder.module.state_dict().items():
        torch.testing.assert_close(value, teacher[name])


def test_online_knn_monitor_and_budget(small_list: Path, sample_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = train(tiny_config(small_list, run, max_minutes=0.05, val=str(sample_dir), val_max_images=60))
    assert result.finished and result.planned_steps >= 1
    knn = [r for r in read_metrics(run) if "knn_accuracy" in r and "event" not in r]
    assert knn[0]["step"] == 0 and knn[-1]["step"] == result.steps
    assert all(0.0 <= r["knn_accuracy"] <= 1.0 for r in knn)
    plan = load_checkpoint(run)["plan"]
    assert plan["budget_seconds"] == pytest.approx(3.0)


def test_collapse_is_detected(small_list: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture) -> None:
    class CollapsedSimCLR(SimCLR):
        """Every image gets the same projection: the head only sees zeros."""

        name = "collapsed"

        def forward_loss(self, views, ctx):
            output = super().forward_loss([v * 0 for v in views], ctx)
            return output

    monkeypatch.setitem(METHODS, "collapsed", CollapsedSimCLR)
    run = tmp_path / "run"
    lines: list[str] = []
    from sslsearch.ssl.train import Trainer

    result = Trainer(tiny_config(small_list, run, method="collapsed", epochs=1), resume=False, log=lines.append).run()
    assert result.warnings and "collapsed" in result.warnings[0]
    warnings = [r for r in read_metrics(run) if r.get("warning") == "collapse"]
    assert warnings and warnings[0]["kind"] == "embeddings" and warnings[0]["hint"]
    assert any(line.startswith("warning: embeddings have collapsed") for line in lines)


def test_healthy_run_raises_no_collapse_warning(small_list: Path, tmp_path: Path) -> None:
    result = train(tiny_config(small_list, tmp_path / "run", epochs=1))
    assert result.warnings == ()


def test_bad_files_are_skipped_or_fatal_with_strict(images_with_bad_files: Path, tmp_path: Path) -> None:
    result = train(tiny_config(images_with_bad_files, tmp_path / "run", batch_size=2, epochs=1))
    assert result.skipped_images == 3 and result.finished
    with pytest.raises(BadImageError, match="--strict"):
        train(tiny_config(images_with_bad_files, tmp_path / "strict", batch_size=2, epochs=1, strict=True))


@pytest.mark.parametrize(("overrides", "error", "message"), [
    ({"method": "simclrr"}, UnknownNameError, "did you mean 'simclr'"),
    ({"backbone": "resnet18x"}, UnknownNameError, "did you mean"),
    ({"image_size": 16}, InvalidArgumentError, "too small for test_resnet"),
    ({"method": "dino", "augmentation.local_crop_size": 16}, InvalidArgumentError, "local_crop_size 16 is too small"),
    ({"batch_size": 1}, InvalidArgumentError, "at least 2"),
    ({"batch_size": 64}, InvalidArgumentError, "fewer than one global batch"),
    ({"epochs": 0}, InvalidArgumentError, "must be positive"),
    ({"optimizer.name": "adamx"}, UnknownNameError, "did you mean 'adamw'"),
])
def test_bad_arguments_are_one_line_errors(small_list: Path, tmp_path: Path, overrides: dict, error: type,
                                           message: str) -> None:
    with pytest.raises(error, match=message) as info:
        train(tiny_config(small_list, tmp_path / "run", **{"epochs": 1, **overrides}))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_empty_and_all_corrupt_data(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFoundError):
        train(tiny_config(tmp_path / "empty", tmp_path / "run1", epochs=1))
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"{i}.png").write_bytes(b"not an image at all")
    with pytest.raises(InputNotFoundError, match="unreadable"):
        train(tiny_config(bad, tmp_path / "run2", epochs=1))


def test_refuses_to_overwrite_or_to_resume_with_another_config(small_list: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(small_list, run, epochs=2 / 3, stop_after_steps=1))
    with pytest.raises(OutputExistsError, match="--resume"):
        train(tiny_config(small_list, run, epochs=2 / 3))
    changed = build_config({"batch_size": 4, "simclr.temperature": 0.5}, resume_run=run)
    with pytest.raises(CheckpointError, match=r"2 field\(s\): batch_size: run has 8, now 4; simclr.temperature"):
        train(changed, resume=True)
    with pytest.raises(InputNotFoundError, match="not a training run"):
        train(tiny_config(small_list, tmp_path / "nothing", epochs=1), resume=True)


def test_corrupt_checkpoint_names_the_intact_one(small_list: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(small_list, run, epochs=2, checkpoint_every_steps=2, stop_after_steps=5))
    steps = step_checkpoints(run)
    assert [p.name for p in steps] == ["step-00000005.pt", "step-00000004.pt"]
    data = steps[0].read_bytes()
    steps[0].write_bytes(data[: len(data) // 3])  # last.pt is the same file: both truncated
    with pytest.raises(CheckpointError, match="corrupt or truncated.*step-00000004.pt looks intact"):
        train(build_config({}, resume_run=run), resume=True)
    assert torch.load(steps[1], weights_only=True)["step"] == 4  # the older one is still good


def test_disk_full_while_checkpointing_keeps_the_old_checkpoint(small_list: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    train(tiny_config(small_list, run, epochs=2, stop_after_steps=2))
    before = (run / "checkpoints" / "last.pt").read_bytes()

    def full_disk(obj: object, path: object) -> None:
        Path(path).write_bytes(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("sslsearch.ssl.checkpoint.torch.save", full_disk)
    config = dataclasses.replace(build_config({}, resume_run=run), stop_after_steps=3)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint .*last.pt is intact"):
        train(config, resume=True)
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    assert load_checkpoint(run)["step"] == 2
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("method", ["simclr", "moco"])
def test_budget_calibration_changes_nothing(method: str, small_list: Path, tmp_path: Path) -> None:
    # A generous --max-minutes times a few whole steps (optimizer step and EMA/queue update included)
    # before training; the epoch bound then decides the length, so the weights must equal a plain run's.
    plain = train(tiny_config(small_list, tmp_path / "plain", method=method, epochs=2 / 3))
    budgeted = train(tiny_config(small_list, tmp_path / "budget", method=method, epochs=2 / 3, max_minutes=30))
    assert plain.steps == budgeted.steps == 2
    expected, actual = model_state(tmp_path / "plain"), model_state(tmp_path / "budget")
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)
