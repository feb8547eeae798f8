"""One benchmark report: report.json (every figure) and report.md (tables + plots) in an output folder."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files import atomic_write_json, atomic_write_text
from .index_sweep import IndexSweepResult
from .knn import KNNResult
from .linear import LinearProbeResult
from .plots import TrainingCurves
from .retrieval import RetrievalResult
from .revisited import RevisitedResult

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass(frozen=True)
class BenchmarkReport:
    """Every result of a ``bench all`` run; absent parts are None.

    Attributes:
        store: {"directory", "rows", "dim", "encoder"} of the evaluated store.
        queries: the same for the query store, or None.
        plots: {name: file name in the report folder}.
        command: the command line that produced the report (for "reproduce").
    """

    store: dict[str, Any]
    queries: dict[str, Any] | None = None
    knn: KNNResult | None = None
    linear: LinearProbeResult | None = None
    retrieval: RetrievalResult | None = None
    instance_retrieval: RetrievalResult | None = None
    revisited: RevisitedResult | None = None
    index: IndexSweepResult | None = None
    training: TrainingCurves | None = None
    plots: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    command: str = ""
    created: str = field(default_factory=_now)

    def to_dict(self) -> dict[str, Any]:
        from .. import __version__

        def part(value: Any) -> Any:
            return None if value is None else value.to_dict()

        return {"sslsearch_version": __version__, "created": self.created, "command": self.command,
                "store": self.store, "queries": self.queries, "knn": part(self.knn), "linear": part(self.linear),
                "retrieval": part(self.retrieval), "instance_retrieval": part(self.instance_retrieval),
                "revisited": part(self.revisited), "index": part(self.index), "training": part(self.training),
                "plots": dict(self.plots), "notes": list(self.notes)}


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _describe(store: dict[str, Any]) -> str:
    encoder = store.get("encoder", {})
    return (f"`{store.get('directory')}`: {store.get('rows')} rows, dim {store.get('dim')}, encoder "
            f"`{encoder.get('spec', '?')}` ({encoder.get('id', '?')})")


def render_markdown(report: BenchmarkReport) -> str:
    """The report as Markdown: one section per part, figures in percent, plots linked by file name."""
    from .. import __version__

    lines = ["# sslsearch benchmark report", "", f"- Store: {_describe(report.store)}"]
    if report.queries:
        lines.append(f"- Queries: {_describe(report.queries)}")
    lines += [f"- Created {report.created} by sslsearch {__version__}", ""]
    if report.knn is not None:
        knn = report.knn
        best_k, best = knn.best
        lines += ["## k-NN classification", "",
                  f"DINO protocol: cosine similarity, softmax-weighted votes with T = {knn.temperature:g}; and a plain "
                  f"majority vote. Split: {knn.split}, {knn.n_queries} queries vs {knn.n_database} database rows, "
                  f"{knn.n_classes} classes. Best: **{_pct(best)} %** top-1 at k = {best_k}.", ""]
        lines += _table(["k", "weighted top-1 (%)", "majority top-1 (%)"],
                        [[k, _pct(knn.weighted[k]), _pct(knn.majority[k])] for k in knn.ks])
        if "knn" in report.plots:
            lines += [f"![k-NN accuracy vs k]({report.plots['knn']})", ""]
    if report.linear is not None:
        lin = report.linear
        lines += ["## Linear probe", "",
                  f"Logistic regression on standardised frozen embeddings (Adam, cosine schedule, {lin.epochs} "
                  f"epochs); learning rate × L2 chosen on a validation tenth of the training rows, then refitted. "
                  f"Split: {lin.split}, {lin.n_train} train / {lin.n_test} test rows, {lin.n_classes} classes.", ""]
        lines += _table(["test top-1 (%)", "train top-1 (%)", "learning rate", "weight decay", "device"],
                        [[f"**{_pct(lin.test_accuracy)}**", _pct(lin.train_accuracy), f"{lin.learning_rate:g}",
                          f"{lin.weight_decay:g}", lin.device]])
    for title, result in (("Retrieval (class ground truth)", report.retrieval),
                          ("Retrieval (instance ground truth)", report.instance_retrieval)):
        if result is None:
            continue
        lines += [f"## {title}", "",
                  f"Split: {result.split}, {result.n_queries} queries with a positive ({result.n_without_positives} "
                  f"without) vs {result.n_database} database rows. Recall@k: share of queries with a positive in the "
                  f"top k; P@k: share of positives in the top k.", ""]
        headers = [f"R@{k} (%)" for k in result.ks] + [f"P@{k} (%)" for k in result.ks] + [f"{result.map_label} (%)"]
        lines += _table(headers, [[_pct(result.recall[k]) for k in result.ks]
                                  + [_pct(result.precision[k]) for k in result.ks]
                                  + [_pct(result.mean_average_precision)]])
    if report.revisited is not None:
        rev = report.revisited
        lines += ["## Revisited Oxford / Paris", "", f"{rev.n_queries} queries from {rev.queries_from}, "
                  f"{rev.n_database} database images; junk images ignored per protocol.", ""]
        lines += _table(["protocol", "mAP (%)"] + [f"mP@{k} (%)" for k in next(iter(rev.mean_precision.values()))],
                        [[p, _pct(rev.mean_average_precision[p])] + [_pct(v) for v in rev.mean_precision[p].values()]
                         for p in rev.mean_average_precision])
    if report.index is not None:
        idx = report.index
        lines += ["## Index: recall vs speed", "",
                  f"`{idx.factory}`, {idx.ntotal:,} vectors; recall@{idx.k} against exact search for "
                  f"{idx.queries_from}; QPS for the batch of {idx.n_queries} and for {idx.n_single_queries} queries "
                  f"one at a time on one thread (median of repeats). Exact search (blocked matmul): "
                  f"{idx.exact_qps:,.0f} QPS.", ""]
        lines += _table(["setting", f"recall@{idx.k}", "QPS (batch)", "QPS (single)"],
                        [[("**" + s.label + "**") if s == idx.operating_point else s.label, f"{s.recall:.4f}",
                          f"{s.qps_batch:,.0f}", f"{s.qps_single:,.0f}"] for s in idx.settings])
        point = idx.operating_point
        lines += [f"Operating point for recall@{idx.k} ≥ {idx.target_recall:g}: "
                  + (f"**{point.label}** ({point.recall:.4f}, {point.qps_batch:,.0f} QPS batch)"
                     + (" — written to the index card." if idx.applied else ".") if point else "none met."), ""]
        if "recall_qps" in report.plots:
            lines += [f"![recall vs QPS]({report.plots['recall_qps']})", ""]
    if report.training is not None:
        summary = report.training.to_dict()
        loss = {k: v for k, v in summary["final"].items() if "loss" in k}
        lines += ["## Training", "", f"{summary['steps']} steps in `{report.training.source}`; final "
                  + (", ".join(f"{k} {v:.4g}" for k, v in loss.items()) or "values in report.json") + ".", ""]
        if "training" in report.plots:
            lines += [f"![training curves]({report.plots['training']})", ""]
    notes = list(report.notes)
    for result in (report.knn, report.linear, report.retrieval, report.instance_retrieval, report.revisited,
                   report.index):
        notes += list(getattr(result, "notes", ()) or ())
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in dict.fromkeys(notes)] + [""]
    if report.command:
        lines += ["## Reproduce", "", "```", report.command, "```", ""]
    return "\n".join(lines)


def write_report(report: BenchmarkReport, out: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``report.json`` and ``report.md`` into ``out`` (the plots are written beside them by the caller).

    Returns:
        {"json": path, "markdown": path}.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / REPORT_JSON, report.to_dict())
    atomic_write_text(out / REPORT_MD, render_markdown(report))
    return {"json": out / REPORT_JSON, "markdown": out / REPORT_MD}
