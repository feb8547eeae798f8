"""Training config: YAML round trip with comments, dotted overrides, did-you-mean, resume differences."""
from __future__ import annotations

from pathlib import Path

import pytest

from sslsearch.errors import InputNotFoundError, InvalidArgumentError
from sslsearch.ssl.config import TrainConfig, differences, from_dict, from_flat, load_yaml, to_yaml


def test_yaml_round_trip_keeps_every_field(tmp_path: Path) -> None:
    config = from_flat({"method": "dino", "optimizer.lr": 0.01, "dino.prototypes": 256, "model_kwargs": {"a": 1},
                        "augmentation.global_blur_probabilities": [0.5, 0.1], "epochs": 3}, TrainConfig())
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml(config))
    assert load_yaml(path) == config


def test_yaml_has_a_comment_per_field() -> None:
    text = to_yaml(TrainConfig())
    assert "# NT-Xent temperature" in text
    assert "# wall-clock budget" in text
    assert "\noptimizer:\n" in text


def test_partial_yaml_applies_over_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("method: moco\nmoco:\n  queue_size: 128\noptimizer:\n  name: adamw\n")
    config = load_yaml(path)
    assert (config.method, config.moco.queue_size, config.optimizer.name) == ("moco", 128, "adamw")
    assert config.batch_size == TrainConfig().batch_size


def test_flag_strings_are_coerced() -> None:
    config = from_flat({"batch_size": "32", "optimizer.clip_grad_norm": "none", "dino.head_batch_norm": "false",
                        "optimizer.betas": "0.8,0.9", "max_minutes": "2.5"}, TrainConfig())
    assert config.batch_size == 32 and config.optimizer.clip_grad_norm is None
    assert config.dino.head_batch_norm is False and config.optimizer.betas == (0.8, 0.9)
    assert config.max_minutes == 2.5


@pytest.mark.parametrize(("overrides", "message"), [
    ({"bach_size": 3}, "did you mean 'batch_size'"),
    ({"optimizer.lrr": 3}, "did you mean 'optimizer.lr'"),
    ({"optimiser.lr": 3}, "did you mean"),
    ({"batch_size": "many"}, "not a number"),
    ({"batch_size": 2.5}, "whole number"),
    ({"strict": "maybe"}, "true/false"),
])
def test_bad_overrides_are_one_line_errors(overrides: dict, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message) as info:
        from_flat(overrides, TrainConfig())
    assert "\n" not in str(info.value)


def test_bad_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError):
        load_yaml(tmp_path / "missing.yaml")
    path = tmp_path / "bad.yaml"
    path.write_text("method: [unclosed\n")
    with pytest.raises(InvalidArgumentError, match="not valid YAML"):
        load_yaml(path)
    path.write_text("- a list\n")
    with pytest.raises(InvalidArgumentError, match="mapping"):
        load_yaml(path)


def test_differences_ignore_runtime_fields_and_other_methods() -> None:
    saved = from_dict({"method": "simclr", "device": "cpu", "workers": 1})
    same = from_dict({"method": "simclr", "device": "cuda", "workers": 4, "moco": {"queue_size": 7},
                      "checkpoint_every_steps": 3, "val": "x"})
    assert differences(saved, same) == []
    changed = from_dict({"method": "simclr", "batch_size": 8, "simclr": {"temperature": 0.5}})
    found = differences(saved, changed)
    assert any(line.startswith("batch_size: run has 64, now 8") for line in found)
    assert any(line.startswith("simclr.temperature") for line in found)
