"""What every benchmark records beside its figures: the commit it ran at (one place, imported by each bench_*.py)."""
from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit() -> str:
    """The short hash of HEAD of the checkout holding the benchmarks, or "unknown" outside git."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
