"""Continued pretraining: the weights a run starts from (``--init``), and layer-wise lr decay over the backbone.

``--init`` takes what ``--encoder`` takes — ``timm:NAME`` with ``--pretrained`` (published weights
from the local Hugging Face cache), a ``sslsearch train`` run directory, a checkpoint folder —
or a weights file for ``--backbone``. The backbone is built for training (the run's image size)
and the weights are adapted to it by timm's own checkpoint filter (position embeddings resampled).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..encoders import ENCODER_JSON, Preprocessing, _load_into, create_encoder, read_encoder_json
from ..errors import CheckpointError, InputNotFoundError, InvalidArgumentError
from ..files import atomic_write_json

INIT_JSON = "init.json"  # in the run directory: where the run's starting weights came from
TRAINING_SIZE_KWARGS = ("img_size", "dynamic_img_size")  # set by the trainer for its crops, not by the checkpoint


@dataclass(frozen=True)
class InitialWeights:
    """Resolved ``--init``: the architecture, its construction arguments and the weights to start from.

    Attributes:
        spec: ``--init`` as given.
        backbone: timm architecture (with tag, when given by name).
        model_kwargs: the checkpoint's construction arguments, without the input-size ones.
        preprocessing: the checkpoint's eval preprocessing (its mean/std normalise training views).
        fingerprint: the encoder fingerprint of the checkpoint (spec, weights sha256, ...).
        state: the state dict (CPU tensors).
    """

    spec: str
    pretrained: bool
    backbone: str
    model_kwargs: dict[str, Any]
    preprocessing: Preprocessing
    fingerprint: dict[str, Any]
    state: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    def record(self) -> dict[str, Any]:
        """What ``init.json`` keeps (everything but the tensors)."""
        return {"spec": self.spec, "pretrained": self.pretrained, "backbone": self.backbone,
                "model_kwargs": self.model_kwargs, "preprocessing": self.preprocessing.to_dict(),
                "weights_sha256": self.fingerprint.get("weights_sha256"), "encoder_id": self.fingerprint.get("id"),
                "fingerprint": self.fingerprint}


def resolve_initial_weights(spec: str, *, backbone: str, pretrained: bool = False, allow_download: bool = False,
                            default_backbone: str | None = None) -> InitialWeights:
    """Read the weights ``--init SPEC`` names (on the CPU).

    Args:
        spec: ``timm:NAME`` (needs ``pretrained``), a run directory (``encoder.json``), a checkpoint
            folder (weights + config.json) or a weights file; the last two are for ``backbone``.
        backbone: the run's ``--backbone``: used for folders and files; for ``timm:`` and run
            directories it must agree with theirs unless it is ``default_backbone`` (not given).

    Raises:
        InvalidArgumentError: ``timm:NAME`` without ``pretrained``; a ``--backbone`` that disagrees.
        InputNotFoundError, CheckpointError: as ``create_encoder`` (missing or unreadable weights).
    """
    path = Path(spec).expanduser()
    if spec.startswith("timm:"):
        if not pretrained:
            raise InvalidArgumentError(f"--init {spec} starts from published weights: add --pretrained (for a random "
                                       f"init use --backbone {spec.removeprefix('timm:')} without --init)")
        name = spec.removeprefix("timm:")
        encoder = create_encoder(spec, pretrained=True, allow_download=allow_download, device="cpu")
    elif (path / ENCODER_JSON).is_file():
        if pretrained:
            raise InvalidArgumentError(f"--init {spec} is a run directory with its own weights; drop --pretrained")
        name = read_encoder_json(path)["backbone"]
        encoder = create_encoder(path, device="cpu")
    elif path.exists():
        name = backbone
        encoder = create_encoder(f"timm:{backbone}", weights=path, pretrained=pretrained, device="cpu")
    else:
        raise InputNotFoundError(f"--init {spec!r} is neither timm:<name> nor an existing run directory, checkpoint "
                                 "folder or weights file")
    if name != backbone and backbone != default_backbone and name.split(".")[0] != backbone.split(".")[0]:
        raise InvalidArgumentError(f"--backbone {backbone} disagrees with --init {spec} (a {name}); drop --backbone")
    kwargs = {k: v for k, v in encoder.fingerprint.model_kwargs.items() if k not in TRAINING_SIZE_KWARGS}
    state = {k: v.detach().clone() for k, v in encoder.module.state_dict().items()}
    return InitialWeights(spec=spec, pretrained=pretrained, backbone=name, model_kwargs=kwargs,
                          preprocessing=encoder.preprocessing, fingerprint=encoder.fingerprint.to_dict(), state=state)


def load_initial_weights(module: nn.Module, initial: InitialWeights) -> None:
    """Copy the initial weights into the training backbone (resampling ViT positions to its input size).

    Raises:
        CheckpointError: the weights do not fit the backbone.
    """
    from ..pretrained import adapt_state_dict

    state = adapt_state_dict(module, dict(initial.state), f"--init {initial.spec}")
    _load_into(module, state, f"--init {initial.spec}")


def training_preprocessing(default: Preprocessing, initial: dict[str, Any] | None) -> Preprocessing:
    """The run's preprocessing: ``default`` (its size), with the initial checkpoint's normalisation when there is one."""
    if not initial:
        return default
    pre = Preprocessing.from_dict(initial["preprocessing"])
    return dataclasses.replace(default, interpolation=pre.interpolation, mean=pre.mean, std=pre.std)


def write_init_record(run_dir: str | os.PathLike[str], initial: InitialWeights) -> None:
    atomic_write_json(Path(run_dir) / INIT_JSON, initial.record())


def read_init_record(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``init.json`` of a run started with ``--init`` (needed to resume it exactly).

    Raises:
        CheckpointError: missing or unreadable.
    """
    path = Path(run_dir) / INIT_JSON
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {path} ({error}); the run was started with --init and needs it to "
                              "resume; start a new run") from None


def layer_scales(backbone: nn.Module, decay: float) -> dict[int, float]:
    """``id(parameter)`` → lr multiplier ``decay ** (last - layer)`` for the backbone's parameters.

    Layers are timm's fine-grained groups (``group_matcher``): for a ViT the stem (patch/position
    embeddings, class and register tokens), then each block (the final norm with the last);
    for a CNN the stem, then each residual block. Parameters outside the backbone (heads,
    projectors, decoders) are not in the map: they keep the full lr.
    """
    from timm.models import group_parameters

    matcher = getattr(backbone, "group_matcher", None)
    if matcher is None:
        raise InvalidArgumentError(f"{type(backbone).__name__} does not describe its layers (no group_matcher), so "
                                   "layer-wise lr decay cannot apply; set optimizer.layer_decay=1.0")
    layer_of = group_parameters(backbone, matcher(coarse=False), reverse=True)
    last = max(layer_of.values())
    return {id(p): decay ** (last - layer_of[name]) for name, p in backbone.named_parameters() if name in layer_of}


def apply_layer_decay(groups: list[dict[str, Any]], backbone: nn.Module, decay: float) -> list[dict[str, Any]]:
    """Split optimizer groups so each holds parameters of one lr multiplier (``lr_scale``; see ``layer_scales``)."""
    if decay == 1.0:
        return groups
    if not 0 < decay < 1:
        raise InvalidArgumentError(f"optimizer.layer_decay must be in (0, 1], got {decay}; e.g. 0.75")
    scales = layer_scales(backbone, decay)
    split: list[dict[str, Any]] = []
    for group in groups:
        by_scale: dict[float, list[Any]] = {}
        for parameter in group["params"]:
            by_scale.setdefault(scales.get(id(parameter), 1.0), []).append(parameter)
        split += [{**group, "params": params, "lr_scale": scale} for scale, params in sorted(by_scale.items())]
    return split
