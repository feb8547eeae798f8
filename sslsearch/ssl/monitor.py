"""Training monitors: collapse detection on every run, online k-NN accuracy on a labelled --val set."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..errors import BadImageError, InvalidArgumentError
from ..sources import list_images, load_image

SPREAD_COLLAPSED = 0.05  # embedding spread below this: every image maps to (nearly) the same vector
UNIFORM_ENTROPY_FRACTION = 0.97  # DINO teacher entropy above this × ln K: the teacher outputs ~uniform
ONE_PROTOTYPE_ENTROPY_FRACTION = 0.02  # entropy of the mean teacher output below this × ln K: one prototype wins
LOSS_AT_LOG_K_TOLERANCE = 0.01  # DINO loss within 1% of ln K: the student copies a uniform teacher

HINTS = {
    "embeddings": "lower optimizer.lr or raise the method's temperature; check the two views differ "
                  "(augmentation) and the batch is not tiny",
    "uniform": "DINO teacher is uniform: try dino.centering=sinkhorn with fewer dino.prototypes (256), "
               "dino.koleo_weight=0.1 and a sharper dino.teacher_temperature (0.02); on a small budget a smaller "
               "--backbone gets more steps",
    "one_prototype": "DINO teacher puts every image on one prototype: set dino.centering=sinkhorn (balances the "
                     "prototypes), or lower dino.center_momentum (centre faster) or raise "
                     "dino.teacher_temperature_start",
    "loss_at_log_k": "DINO loss is stuck at ln K (student copies a uniform teacher): try dino.centering=sinkhorn "
                     "with dino.prototypes=256, dino.koleo_weight=0.1 and dino.teacher_temperature=0.02, or train "
                     "longer; on a small budget a smaller --backbone gets more steps",
}


@torch.no_grad()
def embedding_spread(embeddings: torch.Tensor) -> float:
    """How spread a batch of embeddings is: per-dim std of the L2-normalised rows × sqrt(d).

    ≈ 1 for directions spread uniformly over the sphere, → 0 when every row is the same.

    Args:
        embeddings: (B, d), B ≥ 2.
    """
    z = F.normalize(embeddings.float(), dim=1)
    return float(z.std(dim=0).mean() * math.sqrt(z.shape[1]))


@dataclass
class CollapseMonitor:
    """Watches per-step statistics and reports representation collapse once it persists.

    Feed it every step (``observe``); ``check`` (on logging steps, after ``grace_steps``) returns
    new warnings as dicts ``{"warning": "collapse", "kind", "message", "hint", ...}``. A kind is
    reported again only after ``repeat_every`` further checks while it lasts.
    """

    grace_steps: int = 0
    repeat_every: int = 20
    _values: dict[str, list[float]] = field(default_factory=dict)
    _last_reported: dict[str, int] = field(default_factory=dict)
    _checks: int = 0

    def observe(self, **values: float) -> None:
        for name, value in values.items():
            if value is not None and math.isfinite(value):
                self._values.setdefault(name, []).append(float(value))

    def check(self, step: int) -> list[dict[str, Any]]:
        means = {name: float(np.mean(v)) for name, v in self._values.items() if v}
        self._values.clear()
        self._checks += 1
        if step < self.grace_steps:
            return []
        found: dict[str, str] = {}
        if "spread" in means and means["spread"] < SPREAD_COLLAPSED:
            found["embeddings"] = (f"embeddings have collapsed: spread across the batch {means['spread']:.3f} "
                                   f"(≈1 healthy, <{SPREAD_COLLAPSED} collapsed)")
        log_k = means.get("log_prototypes")
        if log_k:
            if means.get("teacher_entropy", 0.0) > UNIFORM_ENTROPY_FRACTION * log_k:
                found["uniform"] = (f"DINO teacher output is near uniform: entropy {means['teacher_entropy']:.3f} "
                                    f"vs ln K = {log_k:.3f}")
            if means.get("teacher_mean_entropy", log_k) < ONE_PROTOTYPE_ENTROPY_FRACTION * log_k:
                found["one_prototype"] = (f"DINO teacher collapsed onto one prototype: entropy of the mean output "
                                          f"{means['teacher_mean_entropy']:.3f} vs ln K = {log_k:.3f}")
            dino_loss = means.get("dino_loss", means.get("loss"))  # without a regulariser's share
            if dino_loss is not None and abs(dino_loss - log_k) < LOSS_AT_LOG_K_TOLERANCE * log_k:
                found["loss_at_log_k"] = f"DINO loss {dino_loss:.4f} is stuck at ln K = {log_k:.4f}"
        warnings = []
        for kind, message in found.items():
            last = self._last_reported.get(kind)
            if last is not None and self._checks - last < self.repeat_every:
                continue
            self._last_reported[kind] = self._checks
            warnings.append({"step": step, "warning": "collapse", "kind": kind, "message": message,
                             "hint": HINTS[kind]})
        return warnings


@torch.no_grad()
def knn_leave_one_out_accuracy(features: torch.Tensor, labels: torch.Tensor, *, k: int = 20,
                               temperature: float = 0.07, block: int = 8192) -> float:
    """Weighted k-NN accuracy where every image is classified by its k nearest *other* images.

    The DINO protocol (Caron et al. 2021, arXiv:2104.14294, appendix; Wu et al. 2018): cosine
    similarities, votes weighted by exp(sim / temperature), the class with the largest sum wins.
    The search and the vote are ``sslsearch.evaluate``'s (``bench knn`` gives the same figure).

    Args:
        features: (n, d), L2-normalised here.
        labels: (n,) int64 class ids.
        k: neighbours (capped at n - 1).
        temperature: vote temperature.
        block: queries voted at a time.

    Returns:
        Accuracy in [0, 1].
    """
    from ..evaluate.knn import vote_for_ks
    from ..evaluate.neighbors import exact_neighbors

    n = features.shape[0]
    if n < 2:
        raise InvalidArgumentError(f"k-NN accuracy needs at least 2 images, got {n}")
    k = min(k, n - 1)
    vectors = F.normalize(features.float(), dim=1).cpu().numpy()
    codes = labels.cpu().numpy().astype(np.int64)
    neighbors = exact_neighbors(vectors, vectors, k, device="cpu", exclude_self=True)
    predicted = vote_for_ks(codes[neighbors.positions], neighbors.scores, int(codes.max()) + 1, [k],
                            temperature=temperature, block=block)[k]
    return float((predicted == codes).mean())


class KNNMonitor:
    """Leave-one-out k-NN accuracy of the backbone on a labelled image folder (the ``--val`` set).

    Args:
        data: an ImageFolder (or labelled list file).
        transform: eval preprocessing, PIL → (3, S, S) tensor.
        max_images: use at most this many images (an evenly spaced subset).
        k, temperature: the k-NN protocol.

    Raises:
        InvalidArgumentError: the source has no labels or fewer than 2 classes.
    """

    def __init__(self, data: str, transform: Callable[[Image.Image], torch.Tensor], *, max_images: int = 2000,
                 k: int = 20, temperature: float = 0.07) -> None:
        source = list_images(data)
        if not source.has_labels or len(source.classes) < 2:
            raise InvalidArgumentError(f"--val {data} needs labels: an ImageFolder with one sub-folder per class "
                                       f"(at least 2), found {len(source.classes)} class(es)")
        records = source.records
        if len(records) > max_images:
            records = records[:: math.ceil(len(records) / max_images)]
        class_ids = {name: i for i, name in enumerate(source.classes)}
        self.images: list[Image.Image] = []
        labels = []
        for record in records:
            if record.label is None:
                continue
            try:
                self.images.append(load_image(source.abs_path(record)).image)
            except BadImageError:
                continue
            labels.append(class_ids[record.label])
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.transform = transform
        self.k, self.temperature = k, temperature

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def accuracy(self, backbone: nn.Module, device: torch.device, *, batch_size: int = 128,
                 channels_last: bool = False, autocast_dtype: torch.dtype | None = None) -> float:
        """Embed the images with ``backbone`` in eval mode (restoring its mode after) and score them."""
        was_training = backbone.training
        backbone.eval()
        features = []
        try:
            for start in range(0, len(self.images), batch_size):
                batch = torch.stack([self.transform(im) for im in self.images[start:start + batch_size]]).to(device)
                if channels_last:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    features.append(backbone(batch).float().cpu())
        finally:
            backbone.train(was_training)
        return knn_leave_one_out_accuracy(torch.cat(features), self.labels, k=self.k, temperature=self.temperature)
