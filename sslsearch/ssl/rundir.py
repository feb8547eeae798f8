"""A training run directory (contract 4): resolved config.yaml, metrics.jsonl, checkpoints/, encoder.*."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, OutputExistsError
from ..files import LOCK_NAME, atomic_write_text
from .checkpoint import CHECKPOINT_DIR
from .config import RUN_CONFIG_NAME, TrainConfig, differences, load_run_config, to_yaml

CONFIG_NAME = RUN_CONFIG_NAME
METRICS_NAME = "metrics.jsonl"


class RunDirectory:
    """Paths and files of one training run."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.config_path = self.path / CONFIG_NAME
        self.metrics_path = self.path / METRICS_NAME
        self.checkpoints = self.path / CHECKPOINT_DIR

    def holds_run(self) -> bool:
        return self.config_path.exists() or self.checkpoints.exists()

    def check_fresh(self) -> None:
        """Refuse to start a new run over existing files.

        Raises:
            OutputExistsError: the directory holds a run (use --resume) or other files.
        """
        if self.path.exists() and not self.path.is_dir():
            raise OutputExistsError(f"--out {self.path} is a file; choose a directory for the run")
        if self.holds_run():
            raise OutputExistsError(f"{self.path} already holds a training run; continue it with --resume, "
                                    "or choose a new --out")
        if self.path.exists():
            others = sorted(p.name for p in self.path.iterdir() if p.name != LOCK_NAME)
            if others:
                raise OutputExistsError(f"--out {self.path} already holds {len(others)} other file(s) "
                                        f"(e.g. {others[0]!r}); choose an empty or new directory")

    def load_config(self) -> TrainConfig:
        """The resolved config the run was started with.

        Raises:
            InputNotFoundError: not a run directory.
        """
        return load_run_config(self.path)

    def check_same_config(self, current: TrainConfig) -> None:
        """Refuse a resume whose resolved config differs from the run's in anything but runtime fields.

        Raises:
            CheckpointError: naming every differing field.
        """
        changed = differences(self.load_config(), current)
        if changed:
            raise CheckpointError(f"cannot resume {self.path}: the config differs from the run's in "
                                  f"{len(changed)} field(s): {'; '.join(changed)}. Resume with the run's settings "
                                  "(omit those options) or start a new run with a new --out")

    def save_config(self, config: TrainConfig) -> None:
        header = "# Resolved training config of this run (sslsearch train). Every default is filled in.\n"
        atomic_write_text(self.config_path, header + to_yaml(config))

    def truncate_metrics(self, step: int) -> None:
        """Drop metrics lines logged after ``step`` (work a resume will redo)."""
        if not self.metrics_path.exists():
            return
        kept = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except ValueError:
                continue  # a line cut by a crash
        atomic_write_text(self.metrics_path, "".join(f"{line}\n" for line in kept))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=_json_default) + "\n")
            handle.flush()


def _json_default(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All metrics.jsonl records of a run, in order."""
    path = Path(run_dir) / METRICS_NAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
