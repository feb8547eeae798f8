"""A head directory: head.safetensors (weights) + head.json (labels, encoder, dim, kind, temperature, metrics)."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, InputNotFoundError
from ..files import atomic_path, atomic_write_json
from .model import HeadModel

HEAD_FORMAT_VERSION = 1
HEAD_JSON = "head.json"
HEAD_WEIGHTS = "head.safetensors"
METRICS_JSON = "metrics.json"
CONFUSION_PNG = "confusion.png"
HEAD_FILES = (HEAD_JSON, HEAD_WEIGHTS, METRICS_JSON, CONFUSION_PNG)


@dataclass(frozen=True)
class Head:
    """A trained head, ready to predict.

    Attributes:
        module: the network (eval mode, CPU): (n, dim) embeddings → (n, C) logits.
        labels: the class (or label) names; logit column c is ``labels[c]``.
        multi_label: per-label sigmoids (else one softmax).
        kind: ``linear`` or ``mlp``.
        dim: embedding dimension the head takes.
        encoder: fingerprint of the encoder whose embeddings it was trained on (from the store manifest).
        temperature: logits are divided by it before the softmax / sigmoid (temperature scaling).
        thresholds: (C,) per-label decision thresholds on calibrated probabilities (multi-label), else ().
        normalized: the training embeddings were L2-normalised (images are embedded the same way).
        metrics: the validation metrics recorded at training time.
        meta: everything else in head.json (config, store, best epoch, versions).
        directory: where it was loaded from (None for a head not yet saved).
    """

    module: HeadModel
    labels: tuple[str, ...]
    multi_label: bool
    kind: str
    dim: int
    encoder: dict[str, Any]
    temperature: float = 1.0
    thresholds: tuple[float, ...] = ()
    normalized: bool = True
    metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    directory: Path | None = None

    @property
    def encoder_name(self) -> str:
        """``spec (id)`` of the head's encoder, for messages."""
        return f"{self.encoder.get('spec', '?')} ({self.encoder.get('id', '?')})"

    @torch.inference_mode()
    def probabilities(self, embeddings: np.ndarray, *, batch_size: int = 65536) -> np.ndarray:
        """(n, dim) float32 embeddings → (n, C) float32 calibrated probabilities (softmax or per-label sigmoid)."""
        embeddings = np.asarray(embeddings, np.float32)
        parts = []
        for start in range(0, len(embeddings), batch_size):
            logits = self.module(torch.from_numpy(embeddings[start:start + batch_size])) / self.temperature
            parts.append(torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=1))
        if not parts:
            return np.zeros((0, len(self.labels)), np.float32)
        return torch.cat(parts).numpy()

    def to_json(self) -> dict[str, Any]:
        from .. import __version__

        return {"format_version": HEAD_FORMAT_VERSION, "kind": self.kind, "multi_label": self.multi_label,
                "labels": list(self.labels), "dim": self.dim, "temperature": self.temperature,
                "thresholds": list(self.thresholds), "normalized": self.normalized, "encoder": self.encoder,
                "metrics": self.metrics, **self.meta,
                "sslsearch_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def save_head(head: Head, directory: str | os.PathLike[str]) -> Path:
    """Write ``head.safetensors`` then ``head.json`` (each atomically): a present head.json means complete weights."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in head.module.state_dict().items()}
    with atomic_path(directory / HEAD_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    atomic_write_json(directory / HEAD_JSON, head.to_json())
    return directory


def _meta_keys() -> set[str]:
    return {"format_version", "kind", "multi_label", "labels", "dim", "temperature", "thresholds", "normalized",
            "encoder", "metrics", "sslsearch_version", "created"}


def load_head(directory: str | os.PathLike[str]) -> Head:
    """Load a head directory written by ``train_head``.

    Raises:
        InputNotFoundError: the directory or its head.json / head.safetensors is missing.
        CheckpointError: head.json is invalid or newer than this sslsearch, or the weights do not fit it.

    Example:
        >>> head = load_head("head/")  # doctest: +SKIP
        >>> head.labels
        ('cat', 'dog')
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if isinstance(directory, Head):
        return directory
    directory = Path(directory)
    path = directory / HEAD_JSON
    if not path.is_file():
        raise InputNotFoundError(f"{directory} is not a head directory: no {HEAD_JSON}; train one with "
                                 "`sslsearch head train EMB --labels CSV|folders --out HEAD`")
    try:
        meta = json.loads(path.read_text())
        version = int(meta.get("format_version", 1))
        labels = tuple(str(v) for v in meta["labels"])
        kind, dim, multi_label = str(meta["kind"]), int(meta["dim"]), bool(meta["multi_label"])
        config = dict(meta.get("config", {}))
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path} is not a valid head description ({type(error).__name__}: {error}); "
                              "train the head again") from None
    if version > HEAD_FORMAT_VERSION:
        raise CheckpointError(f"{path} has head format {version}, newer than this sslsearch reads "
                              f"({HEAD_FORMAT_VERSION}); upgrade sslsearch")
    weights = directory / HEAD_WEIGHTS
    if not weights.is_file():
        raise InputNotFoundError(f"head {directory} has {HEAD_JSON} but no {HEAD_WEIGHTS}; train the head again")
    module = HeadModel(dim, len(labels), kind=kind, hidden_dim=int(config.get("hidden_dim", 256)),
                       dropout=float(config.get("dropout", 0.1)))
    try:
        module.load_state_dict(load_file(str(weights)), strict=True)
    except (SafetensorError, RuntimeError, OSError) as error:
        raise CheckpointError(f"weights {weights} do not fit {path} ({str(error).splitlines()[0]}); train the head "
                              "again") from None
    module.eval()
    return Head(module=module, labels=labels, multi_label=multi_label, kind=kind, dim=dim,
                encoder=dict(meta.get("encoder", {})), temperature=float(meta.get("temperature", 1.0)),
                thresholds=tuple(float(t) for t in meta.get("thresholds", ())),
                normalized=bool(meta.get("normalized", True)), metrics=dict(meta.get("metrics", {})),
                meta={k: v for k, v in meta.items() if k not in _meta_keys()}, directory=directory)
