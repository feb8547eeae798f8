"""Training checkpoints: atomic step-numbered files plus last.pt, loaded without unpickling objects, and RNG state."""
from __future__ import annotations

import errno
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..files import atomic_path

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
FORMAT_VERSION = 1
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")


def checkpoint_dir(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def step_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Step-numbered checkpoints, newest first."""
    directory = checkpoint_dir(run_dir)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def save_checkpoint(run_dir: str | os.PathLike[str], step: int, payload: dict[str, Any], *, keep: int = 2) -> Path:
    """Write ``checkpoints/step-<step>.pt`` atomically, point ``last.pt`` at it, delete all but ``keep`` step files.

    A crash or a full disk at any moment leaves the previous ``last.pt`` (and step files) intact.

    Raises:
        CheckpointError: the file could not be written (names the intact previous checkpoint).
    """
    directory = checkpoint_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{step:08d}.pt"
    last = directory / LAST
    try:
        with atomic_path(path) as tmp:
            torch.save({"format_version": FORMAT_VERSION, **payload}, tmp)
        with atomic_path(last) as tmp:
            tmp.unlink()
            try:
                os.link(path, tmp)  # no second copy of the bytes
            except OSError:
                import shutil

                shutil.copyfile(path, tmp)
    except OSError as error:
        previous = last if last.exists() else None
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        hint = "free disk space, then" if error.errno == errno.ENOSPC else "fix the cause, then"
        raise CheckpointError(f"could not write checkpoint {path} ({error.strerror or error}); {kept}; "
                              f"{hint} continue with --resume") from None
    for old in step_checkpoints(run_dir)[max(keep, 1):]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(run_dir: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read ``checkpoints/last.pt`` (or the newest step file if last.pt is missing) with ``weights_only=True``.

    Raises:
        CheckpointError: no checkpoint, or a corrupt/truncated one (naming an intact older checkpoint).
    """
    directory = checkpoint_dir(run_dir)
    last = directory / LAST
    steps = step_checkpoints(run_dir)
    path = last if last.exists() else (steps[0] if steps else None)
    if path is None:
        raise CheckpointError(f"{run_dir} has no checkpoint to resume from ({directory} is empty or missing); "
                              "start the run again without --resume")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(payload, dict) or "step" not in payload or "model" not in payload:
            raise ValueError("not an sslsearch training checkpoint")
    except Exception as error:  # noqa: BLE001 - every reader failure means the file is unusable
        older = [p for p in steps if not _same_file(p, path)]
        fallback = (f"the older checkpoint {older[0]} looks intact: copy it over {last} to resume from it"
                    if older else "no older checkpoint exists; start again without --resume")
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(error).__name__}: "
                              f"{str(error).splitlines()[0][:120] if str(error) else 'unreadable'}); {fallback}") from None
    if int(payload.get("format_version", 1)) > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format {payload['format_version']}, newer than this sslsearch")
    return payload


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python RNG states, as tensors and plain lists (weights_only-safe)."""
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(numpy_state[1].astype(np.int64)), "pos": int(numpy_state[2]),
                  "has_gauss": int(numpy_state[3]), "cached_gaussian": float(numpy_state[4])},
        "python": {"version": python_state[0], "state": list(python_state[1]), "gauss": python_state[2]},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``rng_state``."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
