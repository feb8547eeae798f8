"""PNG plots of evaluation results (matplotlib, no global pyplot state): k-NN vs k, recall–QPS, training curves."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputNotFoundError, InvalidArgumentError
from ..files import atomic_path
from .index_sweep import IndexSweepResult
from .knn import KNNResult

FIGURE_INCHES = (6.4, 4.0)
DPI = 100  # 640 x 400 px
PLOT_SIZE = (int(FIGURE_INCHES[0] * DPI), int(FIGURE_INCHES[1] * DPI))


def _figure(rows: int = 1, columns: int = 1) -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise InvalidArgumentError("plots need matplotlib: pip install matplotlib (or sslsearch[bench])") from None
    figure = Figure(figsize=FIGURE_INCHES, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, columns, squeeze=False)


def _save(figure: Any, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)  # no bbox_inches="tight": the size stays PLOT_SIZE
    return path


def plot_knn_accuracy(result: KNNResult, path: str | os.PathLike[str], *, title: str = "") -> Path:
    """k-NN top-1 accuracy vs k (weighted and majority votes) as a PNG of PLOT_SIZE pixels."""
    figure, axes = _figure()
    ax = axes[0][0]
    ks = list(result.ks)
    ax.plot(ks, [100 * result.weighted[k] for k in ks], "o-", label=f"weighted (T={result.temperature:g})")
    ax.plot(ks, [100 * result.majority[k] for k in ks], "s--", label="majority vote")
    if len(ks) > 1:
        ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("k (neighbours)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or f"k-NN accuracy ({result.split}: {result.n_queries} queries, {result.n_database} database)",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(figure, path)


def plot_recall_qps(result: IndexSweepResult, path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Recall@k vs queries/s (batch and one-by-one) over the swept settings, log QPS axis."""
    figure, axes = _figure()
    ax = axes[0][0]
    recalls = [s.recall for s in result.settings]
    ax.plot(recalls, [s.qps_batch for s in result.settings], "o-", label=f"batch of {result.n_queries}")
    ax.plot(recalls, [s.qps_single for s in result.settings], "s--", label="one query at a time")
    for setting in result.settings:
        ax.annotate(str(setting.value) if setting.parameter else "", (setting.recall, setting.qps_batch),
                    textcoords="offset points", xytext=(3, 4), fontsize=7)
    ax.axvline(result.target_recall, color="grey", linestyle=":", label=f"target {result.target_recall:g}")
    if result.operating_point is not None:
        ax.plot([result.operating_point.recall], [result.operating_point.qps_batch], "r*", markersize=12,
                label=f"operating point {result.operating_point.label}")
    ax.set_yscale("log")
    ax.set_xlabel(f"recall@{result.k} vs exact search")
    ax.set_ylabel("queries / s")
    parameter = result.settings[0].parameter if result.settings else ""
    ax.set_title(title or f"{result.factory} ({result.ntotal:,} vectors){', by ' + parameter if parameter else ''}",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(figure, path)


@dataclass(frozen=True)
class TrainingCurves:
    """Numeric series of a run's ``metrics.jsonl``: {name: (steps, values)}, nested keys joined by "."."""

    source: str
    series: dict[str, tuple[tuple[float, ...], tuple[float, ...]]]
    skipped_lines: int = 0

    def final(self, name: str) -> float | None:
        values = self.series.get(name, ((), ()))[1]
        return values[-1] if values else None

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "steps": int(max((s[0][-1] for s in self.series.values() if s[0]), default=0)),
                "final": {name: self.final(name) for name in sorted(self.series)}, "skipped_lines": self.skipped_lines}


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            flat[name] = float(value)
    return flat


def read_training_curves(run: str | os.PathLike[str]) -> TrainingCurves:
    """Read ``metrics.jsonl`` of a training run (the run directory or the file itself).

    Lines that are not JSON objects (a line being written) are skipped and counted.

    Raises:
        InputNotFoundError: no metrics file.
        InvalidArgumentError: no line with a ``step``.
    """
    path = Path(run)
    path = path / "metrics.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise InputNotFoundError(f"no training metrics at {path}; pass a run directory written by `sslsearch train`")
    series: dict[str, tuple[list[float], list[float]]] = {}
    skipped = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), (int, float)):
            skipped += 1
            continue
        if "event" in record:  # the run's summary ("end": steps, seconds, final_loss), not a step's metrics
            continue
        step = float(record["step"])
        for name, value in _flatten(record).items():
            if name != "step":
                steps, values = series.setdefault(name, ([], []))
                steps.append(step)
                values.append(value)
    if not series:
        raise InvalidArgumentError(f"{path} has no metrics lines with a step; is it a `sslsearch train` metrics file?")
    return TrainingCurves(source=str(path), series={k: (tuple(s), tuple(v)) for k, (s, v) in series.items()},
                          skipped_lines=skipped)


def _panels(curves: TrainingCurves) -> list[list[str]]:
    names = set(curves.series)
    loss = sorted(n for n in names if "loss" in n.lower())
    rate = sorted(n for n in names if n == "lr" or n.endswith(".lr") or "learning_rate" in n)
    quality = sorted(n for n in names if any(w in n.lower() for w in ("knn", "acc", "recall", "rank", "std")))
    return [panel for panel in (loss, rate, quality) if panel]


def plot_training_curves(curves: TrainingCurves, path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Loss, learning rate and monitors (k-NN accuracy, embedding std, ...) against the step."""
    panels = _panels(curves) or [sorted(curves.series)[:4]]
    figure, axes = _figure(1, len(panels))
    for ax, names in zip(axes[0], panels):
        for name in names[:6]:
            steps, values = curves.series[name]
            ax.plot(steps, values, "-" if len(steps) > 20 else ".-", label=name, linewidth=1.2)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    figure.suptitle(title or f"training curves ({Path(curves.source).parent.name})", fontsize=10)
    return _save(figure, path)
