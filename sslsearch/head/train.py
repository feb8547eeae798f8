"""Training a head on frozen embeddings: class balance, early stopping on held-out rows, temperature scaling."""
from __future__ import annotations

import copy
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from ..devices import resolve_device, torch_threads
from ..errors import InvalidArgumentError, OutputExistsError, unknown_name
from ..evaluate.labels import holdout_rows
from ..evaluate.linear import SINGLE_THREAD_STEP_WORK  # below this many multiply-adds per step, one thread is faster
from ..files import atomic_write_json, prepare_output_dir
from ..progress import progress_bar
from ..store import EmbeddingStore, manifest_hash
from .calibration import fit_temperature, fit_thresholds
from .io import CONFUSION_PNG, HEAD_FILES, HEAD_JSON, METRICS_JSON, Head, save_head
from .labels import FOLDERS, LabelledRows, labelled_rows
from .metrics import MultiLabelMetrics, SingleLabelMetrics, multi_label_metrics, single_label_metrics
from .model import KINDS, HeadModel
from .plot import plot_confusion

BALANCES = ("loss", "sampling", "none")
Metrics = Union[SingleLabelMetrics, MultiLabelMetrics]
# Few labelled rows in large batches would give one step per epoch, too few for early stopping to see progress.
MIN_STEPS_PER_EPOCH = 10


@dataclass(frozen=True)
class HeadConfig:
    """How a head is trained (saved as ``config`` in head.json)."""

    kind: str = "linear"  # linear | mlp (Linear → GELU → Dropout → Linear)
    hidden_dim: int = 256  # width of the MLP's hidden layer
    dropout: float = 0.1  # dropout of the MLP's hidden layer
    epochs: int = 200  # most passes over the training rows; early stopping usually ends sooner
    patience: int = 20  # stop after this many epochs without a lower validation loss
    learning_rate: float = 1e-3  # AdamW step size
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    batch_size: int = 256  # most rows per step (small sets use smaller steps: an epoch makes >= MIN_STEPS_PER_EPOCH steps)
    validation_fraction: float = 0.2  # rows held out (per class) for early stopping, calibration and metrics
    balance: str = "loss"  # loss: inverse-frequency class weights (multi-label: per-label pos_weight);
    #                        sampling: draw rows with inverse-frequency weights; none
    calibrate: bool = True  # fit a temperature on the validation rows (else temperature 1)
    seed: int = 0  # initialisation, data order, validation split

    def check(self) -> None:
        """Raise InvalidArgumentError / UnknownNameError for a value out of range."""
        if self.kind not in KINDS:
            raise unknown_name("head kind", self.kind, KINDS)
        if self.balance not in BALANCES:
            raise unknown_name("balance", self.balance, BALANCES)
        if not 0.0 < self.validation_fraction < 1.0:
            raise InvalidArgumentError(f"validation fraction must be in (0, 1), got {self.validation_fraction}; e.g. 0.2")
        for name in ("epochs", "patience", "batch_size", "hidden_dim"):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"{name.replace('_', ' ')} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.weight_decay < 0 or not 0.0 <= self.dropout < 1.0:
            raise InvalidArgumentError(f"need learning rate > 0, weight decay >= 0 and dropout in [0, 1); got "
                                       f"{self.learning_rate}, {self.weight_decay}, {self.dropout}")


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: mean training loss and the validation loss (the same objective, eval mode)."""

    epoch: int
    train_loss: float
    validation_loss: float


@dataclass(frozen=True)
class HeadTrainResult:
    """What ``train_head`` did.

    Attributes:
        head: the trained head (weights of the best epoch, fitted temperature and thresholds).
        directory: where it was saved (None when no ``out`` was given).
        metrics: validation metrics of the saved head.
        history: every epoch run.
        best_epoch: the epoch with the lowest validation loss, whose weights were kept.
        stopped_early: training ended before ``epochs`` because the validation loss stopped improving.
        n_train, n_validation: rows on each side of the split.
        unlabelled: store rows without a label (left out); unmatched: labels-file entries naming no store row.
        class_counts: rows (single-label) or positives (multi-label) per class, over all labelled rows.
        temperature: the fitted temperature.
        device: where training ran.
        seconds: wall time.
    """

    head: Head
    directory: Path | None
    metrics: Metrics
    history: tuple[EpochRecord, ...]
    best_epoch: int
    stopped_early: bool
    n_train: int
    n_validation: int
    unlabelled: int
    unmatched: int
    class_counts: dict[str, int]
    temperature: float
    device: str
    seconds: float

    def summary(self) -> str:
        """One line: the head, the split and the main validation figures."""
        m = self.metrics
        if isinstance(m, SingleLabelMetrics):
            figures = f"accuracy {m.accuracy:.3f}, balanced accuracy {m.balanced_accuracy:.3f}, macro-F1 {m.macro_f1:.3f}"
        else:
            figures = f"micro-F1 {m.micro_f1:.3f}, macro-F1 {m.macro_f1:.3f}, mAP {m.mean_average_precision:.3f}"
        stop = f"stopped at epoch {len(self.history)}" if self.stopped_early else f"ran {len(self.history)} epochs"
        return (f"{self.head.kind} head, {len(self.head.labels)} {'labels' if self.head.multi_label else 'classes'}, "
                f"{self.n_train} train / {self.n_validation} validation rows; best epoch {self.best_epoch} ({stop}); "
                f"validation {figures}; ECE {m.ece_before:.3f} → {m.ece_after:.3f} at temperature {self.temperature:.2f}")

    def to_dict(self) -> dict[str, Any]:
        return {"directory": str(self.directory) if self.directory else None, "kind": self.head.kind,
                "multi_label": self.head.multi_label, "labels": list(self.head.labels),
                "metrics": self.metrics.to_dict(), "best_epoch": self.best_epoch, "stopped_early": self.stopped_early,
                "epochs_run": len(self.history), "n_train": self.n_train, "n_validation": self.n_validation,
                "unlabelled": self.unlabelled, "unmatched": self.unmatched, "class_counts": self.class_counts,
                "temperature": self.temperature, "device": self.device, "seconds": round(self.seconds, 3),
                "history": [dataclasses.asdict(r) for r in self.history]}


def _validation_mask(rows: LabelledRows, fraction: float, seed: int) -> np.ndarray:
    """Per-class held-out rows (single-label), or a seeded random share (multi-label)."""
    if not rows.multi_label:
        mask = holdout_rows(rows.targets, fraction, seed)
    else:
        mask = np.zeros(len(rows), bool)
        take = min(len(rows) - 1, max(1, int(round(fraction * len(rows)))))
        if take > 0:
            mask[np.random.default_rng(seed).permutation(len(rows))[:take]] = True
    if not mask.any() or mask.all():
        raise InvalidArgumentError(f"{len(rows)} labelled rows are too few to hold out a validation split "
                                   f"(fraction {fraction}); label at least 2 images of some class")
    return mask


def _class_weights(rows: LabelledRows, targets: np.ndarray, balance: str) -> torch.Tensor | None:
    """Single-label: n / (C · count) per class ('balanced'); multi-label: negatives / positives per label."""
    if balance == "none":
        return None
    if rows.multi_label:
        positives = targets.sum(axis=0)
        return torch.as_tensor((len(targets) - positives) / np.maximum(positives, 1), dtype=torch.float32).clamp(
            0.1, 100.0)
    counts = np.bincount(targets, minlength=len(rows.classes)).astype(np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = len(targets) / (present.sum() * counts[present])
    return torch.as_tensor(weights, dtype=torch.float32)


def _loss_function(rows: LabelledRows, weights: torch.Tensor | None, balance: str):
    """The training objective; with balance=sampling the rows are drawn balanced and the loss unweighted."""
    loss_weights = weights if balance == "loss" else None
    if rows.multi_label:
        return torch.nn.BCEWithLogitsLoss(pos_weight=loss_weights)
    return torch.nn.CrossEntropyLoss(weight=loss_weights)


def _validation_loss_function(rows: LabelledRows, weights: torch.Tensor | None):
    """Early stopping judges the balanced objective whenever training balanced the classes."""
    if rows.multi_label:
        return torch.nn.BCEWithLogitsLoss(pos_weight=weights)
    return torch.nn.CrossEntropyLoss(weight=weights)


def _fit(rows: LabelledRows, train: np.ndarray, validation: np.ndarray, config: HeadConfig, device: torch.device,
         progress: bool | None) -> tuple[HeadModel, list[EpochRecord], int, bool]:
    """Train with AdamW; keep the weights of the epoch with the lowest validation loss."""
    features = torch.as_tensor(rows.embeddings[train], device=device)
    targets = torch.as_tensor(rows.targets[train], device=device)
    validation_features = torch.as_tensor(rows.embeddings[validation], device=device)
    validation_targets = torch.as_tensor(rows.targets[validation], device=device)
    weights = _class_weights(rows, rows.targets[train], config.balance)
    if weights is not None:
        weights = weights.to(device)
    loss_function = _loss_function(rows, weights, config.balance)
    validation_loss_function = _validation_loss_function(rows, weights)
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        model = HeadModel(features.shape[1], len(rows.classes), kind=config.kind, hidden_dim=config.hidden_dim,
                          dropout=config.dropout).to(device)
        model.set_standardization(features.mean(dim=0), features.std(dim=0) if len(features) > 1
                                  else torch.ones(features.shape[1], device=device))
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        sampling_weights = None
        if config.balance == "sampling" and not rows.multi_label:
            sampling_weights = weights.cpu()[targets.cpu()].double()
        n = len(features)
        batch_size = _step_rows(n, config)
        history: list[EpochRecord] = []
        best_loss, best_epoch, best_state, stale = float("inf"), 0, copy.deepcopy(model.state_dict()), 0
        with progress_bar(config.epochs, "head", unit="epoch", enabled=progress) as bar:
            for epoch in range(1, config.epochs + 1):
                model.train()
                if sampling_weights is not None:
                    order = torch.multinomial(sampling_weights, n, replacement=True, generator=generator)
                else:
                    order = torch.randperm(n, generator=generator)
                order = order.to(device)
                total, seen = 0.0, 0
                for start in range(0, n, batch_size):
                    batch = order[start:start + batch_size]
                    loss = loss_function(model(features[batch]), targets[batch])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach()) * len(batch)
                    seen += len(batch)
                model.eval()
                with torch.no_grad():
                    validation_loss = float(validation_loss_function(model(validation_features), validation_targets))
                history.append(EpochRecord(epoch, total / max(seen, 1), validation_loss))
                bar.update(1)
                bar.set_postfix(validation_loss=f"{validation_loss:.4f}", best=best_epoch)
                if validation_loss < best_loss:
                    best_loss, best_epoch, stale = validation_loss, epoch, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    stale += 1
                    if stale >= config.patience:
                        break
    model.load_state_dict(best_state)
    stopped_early = len(history) < config.epochs
    return model.eval().cpu(), history, best_epoch, stopped_early


def _step_rows(n_train: int, config: HeadConfig) -> int:
    """Rows per step: ``batch_size``, or fewer so that an epoch makes at least MIN_STEPS_PER_EPOCH steps."""
    return min(config.batch_size, max(8, -(-n_train // MIN_STEPS_PER_EPOCH)))


def _apply_overrides(config: HeadConfig | None, overrides: dict[str, Any]) -> HeadConfig:
    config = config or HeadConfig()
    known = {f.name for f in dataclasses.fields(HeadConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise unknown_name("head option", unknown[0], known)
    config = dataclasses.replace(config, **overrides)
    config.check()
    return config


def _probabilities(logits: torch.Tensor, temperature: float, multi_label: bool) -> np.ndarray:
    scaled = logits / temperature
    return (torch.sigmoid(scaled) if multi_label else torch.softmax(scaled, dim=1)).numpy()


def train_head(store: str | os.PathLike[str] | EmbeddingStore, labels: str | os.PathLike[str] | None = FOLDERS,
               out: str | os.PathLike[str] | None = None, *, multi_label: bool = False,
               config: HeadConfig | None = None, device: str = "auto", overwrite: bool = False,
               progress: bool | None = None, **options: Any) -> HeadTrainResult:
    """Train a classification head on a store's frozen embeddings and save it to ``out``.

    The labelled rows are split into training and validation rows (per class, seeded). The head
    (linear or a small MLP over standardised embeddings) trains with AdamW on a class-balanced
    objective; after each epoch the validation loss is measured and the weights of the best epoch
    are kept (early stopping after ``patience`` epochs without improvement). A temperature is then
    fitted on the validation rows (temperature scaling, Guo et al. 2017, "On Calibration of Modern
    Neural Networks") so that probabilities are calibrated; multi-label heads (per-label sigmoid
    and binary cross-entropy) also get per-label thresholds maximising F1 on the validation rows.

    The metrics are measured on the validation rows, which also chose the epoch and the
    temperature: they are slightly optimistic. Score an independent labelled store with
    ``predict_head`` for an unbiased figure.

    Args:
        store: embedding store directory (or open store).
        labels: a CSV/Parquet file (``path`` or ``id`` column, ``label`` column; ``a|b`` or several rows
            for several labels), or ``"folders"`` for the store's ImageFolder labels.
        out: head directory to write (head.safetensors, head.json, metrics.json, confusion.png); None
            keeps the head in memory only.
        multi_label: several labels per image.
        config: a HeadConfig; ``**options`` override its fields (e.g. ``kind="mlp", epochs=50``).
        device: ``auto``, ``cpu`` or ``cuda``.
        overwrite: replace a head in ``out``, or write into an ``out`` that holds other files.
        progress: progress bar on stderr (default: when stderr is a terminal).

    Returns:
        A HeadTrainResult; ``.summary()`` is one line.

    Raises:
        InvalidArgumentError / UnknownNameError: bad labels, too few rows, an option out of range.
        InputNotFoundError / StoreError: the store or labels file cannot be read.
        OutputExistsError: ``out`` holds a head or other data (without ``overwrite``).

    Example:
        >>> result = train_head("emb/", "folders", "head/", kind="mlp")  # doctest: +SKIP
        >>> print(result.summary())  # doctest: +SKIP
    """
    started = time.perf_counter()
    config = _apply_overrides(config, options)
    if multi_label and config.balance == "sampling":
        raise InvalidArgumentError("balance 'sampling' draws rows by class, which a multi-label head does not have; "
                                   "use --balance loss (per-label positive weights) or none")
    torch_device = resolve_device(device)
    opened = store if isinstance(store, EmbeddingStore) else EmbeddingStore.open(store)
    if out is not None:
        if (Path(out) / HEAD_JSON).exists() and not overwrite:
            raise OutputExistsError(f"{out} already holds a head; pass --overwrite to replace it, or choose another --out")
        prepare_output_dir(out, overwrite=overwrite, allowed=HEAD_FILES)
    rows = labelled_rows(opened, labels, multi_label=multi_label)
    validation = _validation_mask(rows, config.validation_fraction, config.seed)
    train = ~validation
    width = max(len(rows.classes), config.hidden_dim if config.kind == "mlp" else 1)
    step_work = _step_rows(int(train.sum()), config) * rows.embeddings.shape[1] * width
    small = torch_device.type == "cpu" and step_work < SINGLE_THREAD_STEP_WORK
    with torch_threads(1 if small else None):
        model, history, best_epoch, stopped_early = _fit(rows, train, validation, config, torch_device, progress)
        with torch.no_grad():
            validation_logits = model(torch.as_tensor(rows.embeddings[validation]))
            train_logits = model(torch.as_tensor(rows.embeddings[train]))
        validation_targets = torch.as_tensor(rows.targets[validation])
        temperature = fit_temperature(validation_logits, validation_targets, multi_label=multi_label) \
            if config.calibrate else 1.0
    before = _probabilities(validation_logits, 1.0, multi_label)
    after = _probabilities(validation_logits, temperature, multi_label)
    train_probabilities = _probabilities(train_logits, temperature, multi_label)
    if multi_label:
        thresholds = fit_thresholds(after, rows.targets[validation])
        metrics: Metrics = multi_label_metrics(before, after, rows.targets[validation], thresholds)
        train_metrics: Metrics = multi_label_metrics(train_probabilities, train_probabilities, rows.targets[train],
                                                     thresholds)
    else:
        thresholds = np.zeros(0)
        metrics = single_label_metrics(before, after, rows.targets[validation])
        train_metrics = single_label_metrics(train_probabilities, train_probabilities, rows.targets[train])
    counts = rows.class_counts()
    class_counts = {name: int(count) for name, count in zip(rows.classes, counts)}
    record = {"split": "validation", "note": "the validation rows also chose the epoch and the temperature",
              "validation": metrics.to_dict(), "train": train_metrics.to_dict(), "labels": list(rows.classes),
              "class_counts": class_counts, "best_epoch": best_epoch,
              "history": [dataclasses.asdict(r) for r in history]}
    head = Head(module=model, labels=rows.classes, multi_label=multi_label, kind=config.kind,
                dim=int(rows.embeddings.shape[1]), encoder=dict(opened.encoder), temperature=temperature,
                thresholds=tuple(float(t) for t in thresholds), normalized=bool(opened.manifest.normalized),
                metrics=metrics.to_dict(),
                meta={"config": dataclasses.asdict(config), "best_epoch": best_epoch, "epochs_run": len(history),
                      "n_train": int(train.sum()), "n_validation": int(validation.sum()), "class_counts": class_counts,
                      "labels_source": rows.source, "store": {"directory": opened.uri,
                                                              "manifest_sha256": manifest_hash(opened.directory)}},
                directory=Path(out) if out is not None else None)
    if out is not None:
        # an old head.json goes first: until the new one is written the directory is not a head
        (Path(out) / HEAD_JSON).unlink(missing_ok=True)
        atomic_write_json(Path(out) / METRICS_JSON, record)
        _plot(metrics, rows.classes, Path(out) / CONFUSION_PNG)
        save_head(head, out)
    return HeadTrainResult(
        head=head, directory=Path(out) if out is not None else None, metrics=metrics, history=tuple(history),
        best_epoch=best_epoch, stopped_early=stopped_early, n_train=int(train.sum()),
        n_validation=int(validation.sum()), unlabelled=rows.unlabelled, unmatched=rows.unmatched,
        class_counts=class_counts, temperature=temperature, device=str(torch_device),
        seconds=time.perf_counter() - started)


def _plot(metrics: Metrics, classes: tuple[str, ...], path: Path) -> None:
    if isinstance(metrics, SingleLabelMetrics):
        plot_confusion(np.asarray(metrics.confusion), list(classes), list(classes), path,
                       title=f"validation confusion matrix ({metrics.rows} rows)", xlabel="predicted", ylabel="true")
    else:
        plot_confusion(np.asarray(metrics.per_label), list(classes), ["TP", "FP", "FN", "TN"], path,
                       title=f"validation decisions per label ({metrics.rows} rows)", xlabel="", ylabel="label")
