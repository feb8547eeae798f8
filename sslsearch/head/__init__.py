"""Task heads on frozen embeddings: train (balanced, early-stopped, calibrated), save, predict, export to ONNX.

Modules: model (linear / MLP network), labels (labels file or store folders), train (train_head),
calibration (temperature, thresholds), metrics, plot (confusion PNG), io (save/load), predict,
evaluate (metrics on a labelled store), export (ONNX).
"""
from __future__ import annotations

from .evaluate import HeadEvaluation, evaluate_head
from .export import OnnxExport, export_onnx
from .io import Head, load_head, save_head
from .labels import LabelledRows, labelled_rows, read_label_file
from .metrics import MultiLabelMetrics, SingleLabelMetrics
from .predict import HeadPredictions, predict_head, write_predictions
from .train import EpochRecord, HeadConfig, HeadTrainResult, train_head

__all__ = ["EpochRecord", "Head", "HeadConfig", "HeadEvaluation", "HeadPredictions", "HeadTrainResult",
           "LabelledRows", "MultiLabelMetrics", "OnnxExport", "SingleLabelMetrics", "evaluate_head", "export_onnx",
           "labelled_rows", "load_head", "predict_head", "read_label_file", "save_head", "train_head",
           "write_predictions"]
