"""Evaluation of embeddings and indexes: the protocols papers publish numbers in.

Modules: labels (labelled store rows, splits), datasets (path/label tables, ImageFolder, CIFAR),
pickles (restricted unpickler), neighbors (exact k-NN), knn (DINO k-NN accuracy), linear
(linear probe), retrieval (recall@k, precision@k, mAP), revisited (Oxford/Paris protocol),
index_sweep (recall vs QPS, operating point), plots (PNG figures), report (report.md/json),
suite (`bench all`).
"""
from __future__ import annotations

from .datasets import ArrayDataset, export_cifar, image_folder_labels, read_cifar, read_label_table, write_image_folder
from .index_sweep import IndexSweepResult, SweepSetting, apply_search_setting, sweep_index
from .knn import DINO_KS, DINO_TEMPERATURE, KNNResult, knn_accuracy, knn_evaluate, knn_predict
from .labels import EvaluationSplit, LabelledEmbeddings, load_labelled, make_split
from .linear import LinearProbeResult, linear_evaluate, linear_probe
from .pickles import load_pickle
from .plots import (PLOT_SIZE, TrainingCurves, plot_knn_accuracy, plot_recall_qps, plot_training_curves,
                    read_training_curves)
from .report import BenchmarkReport, render_markdown, write_report
from .retrieval import (RetrievalResult, average_precision, class_retrieval, instance_retrieval, read_positive_pairs,
                        retrieval_evaluate)
from .revisited import (RevisitedGroundTruth, RevisitedResult, read_revisited_ground_truth,
                        revisited_average_precision, revisited_evaluate)
from .suite import SuiteOptions, run_benchmarks

__all__ = [
    "ArrayDataset", "BenchmarkReport", "DINO_KS", "DINO_TEMPERATURE", "EvaluationSplit", "IndexSweepResult",
    "KNNResult", "LabelledEmbeddings", "LinearProbeResult", "PLOT_SIZE", "RetrievalResult", "RevisitedGroundTruth",
    "RevisitedResult", "SuiteOptions", "SweepSetting", "TrainingCurves", "apply_search_setting", "average_precision",
    "class_retrieval", "export_cifar", "image_folder_labels", "instance_retrieval", "knn_accuracy", "knn_evaluate",
    "knn_predict", "linear_evaluate", "linear_probe", "load_labelled", "load_pickle", "make_split",
    "plot_knn_accuracy", "plot_recall_qps", "plot_training_curves", "read_cifar", "read_label_table",
    "read_positive_pairs", "read_revisited_ground_truth", "read_training_curves", "render_markdown",
    "retrieval_evaluate", "revisited_average_precision", "revisited_evaluate", "run_benchmarks", "sweep_index",
    "write_image_folder", "write_report",
]
