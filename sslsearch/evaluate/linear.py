"""Linear probe: multinomial logistic regression on frozen embeddings, with a small learning-rate × L2 sweep."""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..devices import resolve_device, torch_threads
from ..errors import InvalidArgumentError
from .knn import encode_labels
from .labels import EvaluationSplit, holdout_rows

LEARNING_RATES: tuple[float, ...] = (1e-3, 1e-2, 1e-1)  # Adam step sizes
WEIGHT_DECAYS: tuple[float, ...] = (0.0, 1e-5, 1e-4, 1e-3)  # L2 penalty λ/2·‖W‖² added to the mean cross-entropy


@dataclass(frozen=True)
class SweepPoint:
    """Validation accuracy of one (learning rate, weight decay) setting."""

    learning_rate: float
    weight_decay: float
    validation_accuracy: float


@dataclass(frozen=True)
class LinearProbeResult:
    """Linear-probe accuracy on the test split.

    Attributes:
        test_accuracy: top-1 accuracy of the chosen setting, refitted on all training rows.
        train_accuracy: its accuracy on the training rows.
        learning_rate, weight_decay: the setting chosen by validation accuracy.
        sweep: every setting tried with its validation accuracy.
        epochs: passes over the training rows per fit.
        n_train, n_test, n_classes: sizes.
        device: where it ran.
        split: how train and test were chosen.
        seconds: wall time.
    """

    test_accuracy: float
    train_accuracy: float
    learning_rate: float
    weight_decay: float
    sweep: tuple[SweepPoint, ...]
    epochs: int
    n_train: int
    n_test: int
    n_classes: int
    device: str
    split: str
    notes: tuple[str, ...] = ()
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"test_accuracy": self.test_accuracy, "train_accuracy": self.train_accuracy,
                "learning_rate": self.learning_rate, "weight_decay": self.weight_decay,
                "sweep": [vars(p) for p in self.sweep], "epochs": self.epochs, "n_train": self.n_train,
                "n_test": self.n_test, "n_classes": self.n_classes, "device": self.device, "split": self.split,
                "notes": list(self.notes), "seconds": self.seconds}


# Below this many multiply-adds per step, one thread is faster: the matmuls are too small to split,
# and on a busy machine the other threads' spin-waits cost tens of ms per step.
SINGLE_THREAD_STEP_WORK = 4_000_000


def _fit(features: torch.Tensor, targets: torch.Tensor, n_classes: int, settings: Sequence[tuple[float, float]], *,
         epochs: int, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train one linear classifier per (lr, wd) setting at once: (G, d, C) weights and (G, C) biases.

    The settings share the data order, not their parameters. The summed loss gives each its own
    gradient, and Adam (Kingma & Ba 2015, written out here so each setting has its own step size
    without one optimizer group per setting) updates all of them in a few tensor operations.
    """
    device = features.device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    n, dim = features.shape
    groups = len(settings)
    weights = torch.zeros(groups, dim + 1, n_classes, device=device, requires_grad=True)  # last row: bias
    learning_rates = torch.tensor([lr for lr, _ in settings], device=device).view(groups, 1, 1)
    decays = torch.tensor([wd for _, wd in settings], device=device).view(groups, 1, 1)
    ones = torch.ones(n, 1, device=device)
    small = device.type == "cpu" and batch_size * (dim + 1) * n_classes * groups < SINGLE_THREAD_STEP_WORK
    with torch_threads(1 if small else None):
        _train_epochs(features, targets, weights, learning_rates, decays, ones, epochs=epochs, batch_size=batch_size,
                      generator=generator)
    final = weights.detach()
    return final[:, :-1], final[:, -1]


def _train_epochs(features: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, learning_rates: torch.Tensor,
                  decays: torch.Tensor, ones: torch.Tensor, *, epochs: int, batch_size: int,
                  generator: torch.Generator) -> None:
    """Mini-batch Adam with a cosine learning-rate decay, in place on ``weights`` (G, d + 1, C)."""
    n, device = len(features), features.device
    groups, n_classes = weights.shape[0], weights.shape[2]
    first, second = torch.zeros_like(weights), torch.zeros_like(weights)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    total_steps = epochs * max(1, -(-n // batch_size))
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            batch = torch.cat([features[rows], ones[:len(rows)]], dim=1)  # (b, d + 1)
            logits = torch.matmul(batch, weights)  # (G, b, C)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, n_classes), targets[rows].repeat(groups),
                                                     reduction="sum") / len(rows)
            (gradient,) = torch.autograd.grad(loss, weights)
            with torch.no_grad():
                penalty = decays * weights
                penalty[:, -1] = 0.0  # no L2 on the bias
                gradient = gradient + penalty
                step += 1
                first.mul_(beta1).add_(gradient, alpha=1 - beta1)
                second.mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
                schedule = 0.5 * (1 + math.cos(math.pi * (step - 1) / total_steps))  # cosine decay to 0
                size = learning_rates * schedule / (1 - beta1 ** step)
                weights -= size * first / ((second / (1 - beta2 ** step)).sqrt() + eps)


def _accuracy(features: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, biases: torch.Tensor,
              block: int = 65536) -> np.ndarray:
    """(G,) accuracy of each stacked classifier."""
    correct = torch.zeros(len(weights), device=features.device)
    for start in range(0, len(features), block):
        logits = torch.einsum("nd,gdc->gnc", features[start:start + block], weights) + biases[:, None, :]
        correct += (logits.argmax(dim=2) == targets[start:start + block]).sum(dim=1)
    return (correct / max(1, len(features))).cpu().numpy()


def linear_probe(train_embeddings: np.ndarray, train_labels: np.ndarray, test_embeddings: np.ndarray,
                 test_labels: np.ndarray, *, learning_rates: Sequence[float] = LEARNING_RATES,
                 weight_decays: Sequence[float] = WEIGHT_DECAYS, epochs: int = 50, batch_size: int = 256,
                 validation_fraction: float = 0.1, seed: int = 0, device: str = "auto",
                 split: str = "queries") -> LinearProbeResult:
    """Test accuracy of a logistic-regression classifier trained on frozen embeddings.

    Features are standardised with the training mean and std. Every (learning rate, weight
    decay) setting is trained (Adam, cosine schedule) on the training rows minus a seeded,
    per-class validation fraction; the best on validation is refitted on all training rows and
    scored on the test rows. All settings train together in one batched model, so the sweep
    costs about one fit's Python overhead.

    Args:
        train_embeddings: (n, d) float32; train_labels: (n,) labels.
        test_embeddings: (m, d) float32; test_labels: (m,) labels.
        learning_rates, weight_decays: the sweep grid.
        epochs: passes over the training rows per fit.
        batch_size: rows per step.
        validation_fraction: share of each class held out to choose the setting.
        seed: data order and validation split.
        device: "auto" (CUDA when present), "cpu" or "cuda".

    Raises:
        InvalidArgumentError: fewer than two classes, an empty split, an empty grid or epochs < 1.

    Example:
        >>> linear_probe(train, train_y, test, test_y, epochs=30).test_accuracy  # doctest: +SKIP
        0.934
    """
    started = time.perf_counter()
    if len(train_labels) == 0 or len(test_labels) == 0:
        raise InvalidArgumentError(f"empty split: {len(train_labels)} training and {len(test_labels)} test rows")
    if epochs < 1 or batch_size < 1 or not learning_rates or not weight_decays:
        raise InvalidArgumentError("epochs and batch size must be >= 1 and the lr / weight-decay grids non-empty")
    (train_codes, test_codes), classes = encode_labels(train_labels, test_labels)
    if len(set(train_codes.tolist())) < 2:
        raise InvalidArgumentError(f"a linear probe needs at least 2 classes in the training rows, found "
                                   f"{len(set(train_codes.tolist()))}; label the data by class or pass --labels")
    torch_device = resolve_device(device)
    train = torch.as_tensor(np.asarray(train_embeddings, np.float32), device=torch_device)
    test = torch.as_tensor(np.asarray(test_embeddings, np.float32), device=torch_device)
    mean, std = train.mean(dim=0), train.std(dim=0).clamp_min(1e-6)
    train, test = (train - mean) / std, (test - mean) / std
    train_targets = torch.as_tensor(train_codes, device=torch_device)
    test_targets = torch.as_tensor(test_codes, device=torch_device)
    settings = list(itertools.product(learning_rates, weight_decays))
    notes: list[str] = []
    validation = torch.as_tensor(holdout_rows(train_codes, validation_fraction, seed), device=torch_device)
    if len(settings) > 1 and validation.any():
        weights, biases = _fit(train[~validation], train_targets[~validation], len(classes), settings, epochs=epochs,
                               batch_size=batch_size, seed=seed)
        scores = _accuracy(train[validation], train_targets[validation], weights, biases)
    else:
        scores = np.zeros(len(settings))
        if len(settings) > 1:
            notes.append("too few rows per class for a validation split: the first setting was used")
    best = int(np.argmax(scores))  # ties: the first setting (smaller lr, smaller weight decay)
    weights, biases = _fit(train, train_targets, len(classes), [settings[best]], epochs=epochs, batch_size=batch_size,
                           seed=seed)
    return LinearProbeResult(
        test_accuracy=float(_accuracy(test, test_targets, weights, biases)[0]),
        train_accuracy=float(_accuracy(train, train_targets, weights, biases)[0]),
        learning_rate=settings[best][0], weight_decay=settings[best][1],
        sweep=tuple(SweepPoint(lr, wd, float(acc)) for (lr, wd), acc in zip(settings, scores)),
        epochs=epochs, n_train=len(train_codes), n_test=len(test_codes), n_classes=len(classes),
        device=str(torch_device), split=split, notes=tuple(notes), seconds=time.perf_counter() - started)


def linear_evaluate(split: EvaluationSplit, **options: Any) -> LinearProbeResult:
    """Linear probe on an EvaluationSplit (train → database rows, test → query rows).

    Raises:
        InvalidArgumentError: a leave-one-out split (a probe needs disjoint train and test rows).
    """
    if split.leave_one_out:
        raise InvalidArgumentError("a linear probe needs separate train and test rows; use --queries EMB or --holdout "
                                   "FRACTION instead of --leave-one-out")
    return linear_probe(split.train.embeddings, split.train.labels, split.queries.embeddings, split.queries.labels,
                        split=split.kind, **options)
