"""ONNX export of a head together with its backbone: pixels in, calibrated probabilities and embeddings out."""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InvalidArgumentError, OutputExistsError
from ..files import atomic_path
from .io import Head, load_head
from .predict import HeadLike, head_encoder

INPUT_NAME = "images"
OUTPUT_NAMES = ("probabilities", "embeddings")
VERIFY_BATCH = 3  # rows checked against torch; differs from the traced batch of 2 to exercise the dynamic axis


class HeadPipeline(nn.Module):
    """Backbone + head in one module, the graph that is exported.

    Shapes: (n, 3, S, S) float32 RGB in [0, 1], already resized and centre-cropped to S as the
    encoder's preprocessing says → ((n, C) calibrated probabilities, (n, dim) embeddings, L2-normalised
    when the head was trained on normalised embeddings). The mean/std normalisation is in the graph.
    """

    def __init__(self, backbone: nn.Module, head: Head, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head.module
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.temperature = float(head.temperature)
        self.multi_label = head.multi_label
        self.normalized = head.normalized

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.backbone((images - self.pixel_mean) / self.pixel_std).float()
        if self.normalized:
            embeddings = nn.functional.normalize(embeddings, dim=1)
        logits = self.head(embeddings) / self.temperature
        probabilities = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=1)
        return probabilities, embeddings


@dataclass(frozen=True)
class OnnxExport:
    """What ``export_onnx`` wrote.

    Attributes:
        path: the .onnx file (weights inside it).
        image_size: S of the (n, 3, S, S) input.
        labels: column order of the ``probabilities`` output.
        max_abs_difference: largest |onnxruntime − torch| over both outputs on random inputs, or None
            when onnxruntime is not installed (then nothing was verified).
        size_bytes: file size.
    """

    path: Path
    image_size: int
    labels: tuple[str, ...]
    max_abs_difference: float | None
    size_bytes: int

    @property
    def verified(self) -> bool:
        return self.max_abs_difference is not None

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "image_size": self.image_size, "labels": list(self.labels),
                "input": INPUT_NAME, "outputs": list(OUTPUT_NAMES), "max_abs_difference": self.max_abs_difference,
                "verified": self.verified, "size_bytes": self.size_bytes}


def build_pipeline(head: Head) -> tuple[HeadPipeline, int]:
    """The head's encoder (rebuilt on the CPU) and the head as one eval-mode module, and its input size S."""
    encoder = head_encoder(head, device="cpu")
    backbone = encoder.module.to(memory_format=torch.contiguous_format)
    pre = encoder.preprocessing
    pipeline = HeadPipeline(backbone, head, pre.mean, pre.std).eval()
    return pipeline, int(pre.image_size)


def _require_onnx() -> None:
    try:
        for name in ("onnx", "onnxscript"):  # the exporter imports them itself; fail early with the fix
            importlib.import_module(name)
    except ImportError as error:
        raise InvalidArgumentError(f"ONNX export needs the onnx and onnxscript packages ({error.name} is missing): "
                                   "pip install 'sslsearch[onnx]'") from None


def _run_onnxruntime(path: Path, images: np.ndarray) -> list[np.ndarray] | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})


def export_onnx(head: HeadLike, out: str | os.PathLike[str], *, opset: int | None = None, verify: bool = True,
                overwrite: bool = False) -> OnnxExport:
    """Export backbone + head as one ONNX graph (dynamic batch), checked against torch with onnxruntime.

    The graph takes ``images`` (n, 3, S, S) float32 RGB in [0, 1], resized and centre-cropped as
    the encoder's preprocessing says (recorded in the model's metadata as ``preprocessing``), and
    returns ``probabilities`` (n, C), calibrated with the head's temperature, and ``embeddings``
    (n, dim). The metadata also holds ``labels``, ``multi_label``, ``thresholds`` and ``encoder_id``.

    Args:
        head: a head directory or a loaded Head.
        out: the .onnx file to write (atomically).
        opset: ONNX opset (default: torch's).
        verify: when onnxruntime is installed, run it on random inputs and record the largest
            difference from torch in ``max_abs_difference``.
        overwrite: replace an existing ``out``.

    Raises:
        InvalidArgumentError: onnx / onnxscript are not installed.
        EncoderMismatchError: the head's encoder cannot be rebuilt identically.
        OutputExistsError: ``out`` exists and ``overwrite`` is false.

    Example:
        >>> export_onnx("head/", "classifier.onnx").max_abs_difference  # doctest: +SKIP
        2.4e-07
    """
    _require_onnx()
    head = load_head(head) if not isinstance(head, Head) else head
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists; choose another file or pass --overwrite")
    pipeline, size = build_pipeline(head)
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1)
    # the exporter reports its progress on stdout, which the CLI keeps for data
    with contextlib.redirect_stdout(sys.stderr), torch.no_grad():
        program = torch.onnx.export(pipeline, (example,), None, input_names=[INPUT_NAME],
                                    output_names=list(OUTPUT_NAMES), opset_version=opset, dynamo=True,
                                    dynamic_shapes={"images": {0: batch}}, verbose=False)
    encoder = head.encoder
    metadata = {"labels": json.dumps(list(head.labels)), "multi_label": json.dumps(head.multi_label),
                "thresholds": json.dumps(list(head.thresholds)), "temperature": json.dumps(head.temperature),
                "encoder_id": str(encoder.get("id", "")), "encoder_spec": str(encoder.get("spec", "")),
                "preprocessing": json.dumps(encoder.get("preprocessing", {})),
                "input": f"{INPUT_NAME}: (n, 3, {size}, {size}) float32 RGB in [0, 1]"}
    program.model.metadata_props.update(metadata)
    with atomic_path(out) as tmp:
        program.save(str(tmp), external_data=False)
    difference = None
    if verify:
        images = torch.rand(VERIFY_BATCH, 3, size, size, generator=torch.Generator().manual_seed(1))
        outputs = _run_onnxruntime(out, images.numpy())
        if outputs is not None:
            with torch.no_grad():
                expected = [t.numpy() for t in pipeline(images)]
            difference = float(max(np.abs(got - want).max() for got, want in zip(outputs, expected)))
    return OnnxExport(path=out, image_size=size, labels=head.labels, max_abs_difference=difference,
                      size_bytes=out.stat().st_size)
