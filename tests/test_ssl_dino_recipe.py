"""DINO's recipe (dino.recipe: auto | short | paper): chosen from the budget, user-set fields kept, idempotent."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from sslsearch.cli.app import main
from sslsearch.errors import UnknownNameError
from sslsearch.ssl import TrainConfig, train
from sslsearch.ssl.config import build_config, from_flat
from sslsearch.ssl.methods import DINO
from sslsearch.ssl.methods.dino import SHORT_RECIPE, short_run_reason
from sslsearch.ssl.plan import Budget, requested_budget

PAPER = TrainConfig(method="dino")  # the defaults, before any recipe


def budget(*, device: str = "cpu", minutes: float | None = None, epochs: float | None = None,
           images: int = 1000, batch: int = 64) -> Budget:
    return requested_budget(epochs, minutes, dataset_size=images, global_batch_size=batch, device_type=device)


def dino_config(**overrides: object) -> TrainConfig:
    return from_flat({"method": "dino", **overrides}, TrainConfig())


@pytest.mark.parametrize(("the_budget", "recipe", "why"), [
    (budget(device="cpu", minutes=15), "short", "a CPU device"),
    (budget(device="cpu", epochs=400, images=1_281_167, batch=256), "short", "a CPU device"),
    (budget(device="cuda", minutes=15), "short", "--max-minutes 15 ≤ 60"),
    (budget(device="cuda", minutes=60), "short", "--max-minutes 60 ≤ 60"),
    (budget(device="cuda", epochs=100, images=1000, batch=64), "short", "100 epochs = 1,500 steps < 5,000"),
    (budget(device="cuda"), "short", "100 epochs = 1,500 steps < 5,000"),  # neither given: DEFAULT_EPOCHS
    (budget(device="cuda", minutes=120), "paper", None),
    (budget(device="cuda", epochs=100, images=1_281_167, batch=1024), "paper", None),
    (budget(device="cuda", epochs=100, images=6400, batch=64), "paper", None),  # exactly 10,000 steps
])
def test_auto_recipe_is_chosen_from_the_budget(the_budget: Budget, recipe: str, why: str | None) -> None:
    assert short_run_reason(the_budget) == why
    adapted = DINO.adapt_to_budget(dino_config(), the_budget)
    assert adapted.dino.recipe == recipe
    if recipe == "paper":
        assert adapted == dataclasses.replace(PAPER, dino=dataclasses.replace(PAPER.dino, recipe="paper"))
    else:
        assert (adapted.dino.centering, adapted.dino.prototypes, adapted.dino.teacher_temperature,
                adapted.dino.teacher_temperature_start, adapted.augmentation.local_crop_count,
                adapted.dino.koleo_weight) == ("sinkhorn", 256, 0.02, 0.02, 0, 0.1)
        # nothing outside the recipe moves
        assert dataclasses.replace(adapted.dino, centering="mean", prototypes=4096, teacher_temperature=0.04,
                                   teacher_temperature_start=0.04, koleo_weight=0.0, recipe="auto") == PAPER.dino
        assert adapted.optimizer == PAPER.optimizer and adapted.image_size == PAPER.image_size


def test_the_short_recipe_keeps_what_the_user_set() -> None:
    asked = dino_config(**{"dino.prototypes": 1024, "augmentation.local_crop_count": 2, "dino.koleo_weight": 0.05,
                           "dino.teacher_temperature": 0.03})
    adapted = DINO.adapt_to_budget(asked, budget(device="cpu", minutes=10))
    assert adapted.dino.recipe == "short"
    assert (adapted.dino.prototypes, adapted.augmentation.local_crop_count, adapted.dino.koleo_weight,
            adapted.dino.teacher_temperature) == (1024, 2, 0.05, 0.03)
    assert adapted.dino.centering == "sinkhorn" and adapted.dino.teacher_temperature_start == 0.02
    note = DINO.explain_budget_choice(asked, adapted, budget(device="cpu", minutes=10))
    assert note is not None and "\n" not in note
    assert note.startswith("dino recipe: short, as the run is short (a CPU device)")
    assert "dino.centering=sinkhorn" in note and "dino.teacher_temperature_start=0.02" in note
    assert "kept as set: dino.prototypes, dino.teacher_temperature, augmentation.local_crop_count, " \
           "dino.koleo_weight" in note


@pytest.mark.parametrize("the_budget", [budget(device="cpu", minutes=10), budget(device="cuda", minutes=600)])
@pytest.mark.parametrize("overrides", [{}, {"dino.prototypes": 1024, "augmentation.local_crop_count": 2}])
def test_adapting_twice_changes_nothing_more(the_budget: Budget, overrides: dict) -> None:
    """A resume applies the hook again to the saved (resolved) config: it must come back unchanged."""
    once = DINO.adapt_to_budget(dino_config(**overrides), the_budget)
    assert once.dino.recipe in ("short", "paper")
    assert DINO.adapt_to_budget(once, the_budget) == once
    assert DINO.adapt_to_budget(once, budget(device="cuda", epochs=1000, images=10**6)) == once  # any budget
    assert DINO.explain_budget_choice(once, once, the_budget) is None  # said once, when it was chosen


def test_an_explicit_recipe_wins_over_the_budget() -> None:
    paper = dino_config(**{"dino.recipe": "paper"})
    assert DINO.adapt_to_budget(paper, budget(device="cpu", minutes=5)) == paper  # the paper defaults stay
    short = DINO.adapt_to_budget(dino_config(**{"dino.recipe": "short"}), budget(device="cuda", minutes=600))
    assert short.dino.prototypes == SHORT_RECIPE["dino.prototypes"] and short.dino.centering == "sinkhorn"


def test_koleo_is_left_off_when_the_batch_cannot_pair_images() -> None:
    adapted = DINO.adapt_to_budget(dino_config(batch_size=1), budget(device="cpu", minutes=5, batch=1))
    assert adapted.dino.recipe == "short" and adapted.dino.koleo_weight == 0.0
    DINO.validate(adapted)


def test_an_unknown_recipe_lists_the_choices(sample_dir: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(UnknownNameError, match=r"unknown dino.recipe 'shrt' \(did you mean 'short'\?\); "
                                                r"choose one of: auto, paper, short"):
        DINO.validate(dino_config(**{"dino.recipe": "shrt"}))
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(sample_dir), "--out", str(tmp_path / "run"), "--method", "dino", "--backbone",
              "test_resnet", "--epochs", "1", "--set", "dino.recipe=fast"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "unknown dino.recipe 'fast'" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_tiny_run_records_the_resolved_recipe_and_resumes(sample_dir: Path, tmp_path: Path,
                                                            one_thread: None) -> None:
    paths = sorted(p for p in sample_dir.rglob("*") if p.suffix in (".png", ".jpg"))[::5][:24]
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    run = tmp_path / "run"
    config = from_flat({"method": "dino", "data": str(listing), "out": str(run), "backbone": "test_resnet",
                        "image_size": 32, "batch_size": 8, "workers": 0, "epochs": 1, "device": "cpu",
                        "stop_after_steps": 1, "dino.hidden_dim": 32, "dino.bottleneck_dim": 16}, TrainConfig())
    lines: list[str] = []
    first = train(config, log=lines.append)
    assert first.steps == 1 and not first.finished
    assert [line for line in lines if line.startswith("dino recipe: short, as the run is short (a CPU device)")]
    saved = build_config({}, resume_run=run)
    assert saved.dino.recipe == "short" and saved.dino.centering == "sinkhorn" and saved.dino.prototypes == 256
    assert saved.augmentation.local_crop_count == 0 and saved.dino.koleo_weight == 0.1
    assert "recipe: short" in (run / "config.yaml").read_text()
    lines.clear()
    second = train(saved, resume=True, log=lines.append)  # the hook runs again on the saved config: no change
    assert second.finished and second.steps == 3
    assert not [line for line in lines if line.startswith("dino recipe")]


def test_a_run_saved_before_the_recipe_existed_resumes_with_its_own_settings(tmp_path: Path) -> None:
    from sslsearch.ssl.config import load_run_config, to_yaml

    run = tmp_path / "old-run"
    run.mkdir()
    text = to_yaml(dino_config(data="x", out=str(run)))
    old_text = "\n".join(line for line in text.splitlines()
                         if not line.strip().startswith(("recipe:", "# auto, short")))
    assert "recipe" not in old_text
    (run / "config.yaml").write_text(old_text)
    saved = load_run_config(run)
    assert saved.dino.recipe == "paper" and saved.dino.centering == "mean"  # as it was trained
    assert DINO.adapt_to_budget(saved, budget(device="cpu", minutes=5)) == saved
