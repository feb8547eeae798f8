"""sslsearch: vector retrieval on self-supervised image embeddings.

The public API is one import away and mirrors the CLI (see docs/python-api.md)::

    import sslsearch
    encoder = sslsearch.create_encoder("timm:resnet18", image_size=64)
    sslsearch.embed_images("images/", encoder, "emb/")
    sslsearch.build_index("emb/", "idx/")
    results = sslsearch.search("idx/", ["query.jpg"], k=5)

Names are loaded lazily (PEP 562), so ``import sslsearch`` does not import torch or faiss.

Modules: api (the functions that mirror the CLI), errors (exceptions), files (atomic writes, locks),
sources (list/decode images), sample_data (offline sample set), encoders (timm / trained encoders),
store (Parquet embedding store), embed (extraction), index/ (FAISS choice, build, search, synthetic
test vectors), dedup, evaluate, head/ (task heads), ssl/ (training), serve (HTTP server and client).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module (relative to this package) that defines it
_EXPORTS: dict[str, str] = {
    # the functions that mirror the CLI commands
    "make_sample_dataset": ".sample_data",         # sslsearch sample-data
    "create_encoder": ".encoders",                 # --encoder SPEC
    "embed_images": ".embed",                      # sslsearch embed
    "open_store": ".api",                          # read what embed wrote
    "build_index": ".index",                       # sslsearch index build
    "index_info": ".api",                          # sslsearch index info
    "load_index": ".index",
    "search": ".api",                              # sslsearch search
    "deduplicate": ".api",                         # sslsearch dedup
    "train": ".api",                               # sslsearch train
    "train_config": ".api",                        # sslsearch train --print-config
    "read_metrics": ".ssl.rundir",                 # RUN/metrics.jsonl
    "load_split": ".api",                          # what each bench command reads first
    "evaluate_knn": ".api",                        # sslsearch bench knn
    "evaluate_linear": ".api",                     # sslsearch bench linear
    "evaluate_retrieval": ".api",                  # sslsearch bench retrieval
    "evaluate_revisited": ".api",                  # sslsearch bench retrieval --revisited
    "evaluate_index": ".api",                      # sslsearch bench index
    "run_benchmarks": ".evaluate",                 # sslsearch bench all
    "export_cifar": ".evaluate",                   # sslsearch bench dataset
    "train_head": ".head",                         # sslsearch head train
    "load_head": ".head",
    "predict_head": ".head",                       # sslsearch head predict
    "evaluate_head": ".head",                      # sslsearch head evaluate
    "export_onnx": ".head",                        # sslsearch head export --onnx
    "create_app": ".serve",                        # sslsearch serve (the FastAPI app; needs the serve extra)
    "run_server": ".serve.server",                 # sslsearch serve (uvicorn in the foreground)
    "Client": ".serve",                            # sslsearch search --server URL
    # building blocks on arrays and images
    "list_images": ".sources",
    "load_image": ".sources",
    "list_backbones": ".encoders",
    "create_backbone": ".encoders",
    "default_preprocessing": ".encoders",
    "save_encoder": ".encoders",
    "find_checkpoint": ".pretrained",
    "embed_paths": ".embed",
    "default_workers": ".embed",
    "training_transform": ".api",
    "synthetic_embeddings": ".index.synthetic",
    "iter_synthetic_embeddings": ".index.synthetic",
    "choose_index_spec": ".index",
    "exact_search": ".index",
    "recall_at_k": ".index",
    "similar_pairs": ".dedup",
    "similar_pairs_from_index": ".dedup.index_pairs",
    "connected_groups": ".dedup",
    "knn_accuracy": ".evaluate",
    "linear_probe": ".evaluate",
    "class_retrieval": ".evaluate",
    "single_label_metrics": ".head.metrics",
    "resolve_device": ".devices",
    # typed results and options
    "SampleDataset": ".sample_data",
    "ImageSource": ".sources",
    "DecodedImage": ".sources",
    "Encoder": ".encoders",
    "EncoderFingerprint": ".encoders",
    "Preprocessing": ".encoders",
    "PretrainedCheckpoint": ".pretrained",
    "EmbedResult": ".embed",
    "EmbeddingStore": ".store",
    "StoreWriter": ".store",
    "StoreManifest": ".store",
    "StoreBatch": ".store",
    "Index": ".index",
    "IndexCard": ".index",
    "IndexSpec": ".index",
    "SearchResult": ".index",
    "Neighbor": ".index",
    "DedupResult": ".dedup",
    "DuplicateCluster": ".dedup",
    "ClusterMember": ".dedup",
    "ThresholdChoice": ".dedup",
    "SimilarPairs": ".dedup",
    "TrainConfig": ".ssl",
    "TrainResult": ".ssl",
    "EvaluationSplit": ".evaluate",
    "KNNResult": ".evaluate",
    "LinearProbeResult": ".evaluate",
    "RetrievalResult": ".evaluate",
    "RevisitedResult": ".evaluate",
    "IndexSweepResult": ".evaluate",
    "SweepSetting": ".evaluate",
    "SuiteOptions": ".evaluate",
    "BenchmarkReport": ".evaluate",
    "SingleLabelMetrics": ".head.metrics",
    "Head": ".head",
    "HeadConfig": ".head",
    "HeadTrainResult": ".head",
    "HeadPredictions": ".head",
    "HeadEvaluation": ".head",
    "OnnxExport": ".head",
    # errors (all subclass SSLSearchError)
    "SSLSearchError": ".errors",
    "InputNotFoundError": ".errors",
    "InvalidArgumentError": ".errors",
    "UnknownNameError": ".errors",
    "BadImageError": ".errors",
    "StoreError": ".errors",
    "IndexFileError": ".errors",
    "EncoderMismatchError": ".errors",
    "OutputExistsError": ".errors",
    "LockedError": ".errors",
    "CheckpointError": ".errors",
    "ServerError": ".errors",
    "TrainingDivergedError": ".ssl",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names above load on first use
    from .api import (deduplicate, evaluate_index, evaluate_knn, evaluate_linear, evaluate_retrieval,
                      evaluate_revisited, index_info, load_split, open_store, search, train, train_config,
                      training_transform)
    from .dedup import (ClusterMember, DedupResult, DuplicateCluster, SimilarPairs, ThresholdChoice, connected_groups,
                        similar_pairs)
    from .dedup.index_pairs import similar_pairs_from_index
    from .devices import resolve_device
    from .embed import EmbedResult, default_workers, embed_images, embed_paths
    from .encoders import (Encoder, EncoderFingerprint, Preprocessing, create_backbone, create_encoder,
                           default_preprocessing, list_backbones, save_encoder)
    from .errors import (BadImageError, CheckpointError, EncoderMismatchError, IndexFileError, InputNotFoundError,
                         InvalidArgumentError, LockedError, OutputExistsError, ServerError, SSLSearchError, StoreError,
                         UnknownNameError)
    from .evaluate import (BenchmarkReport, EvaluationSplit, IndexSweepResult, KNNResult, LinearProbeResult,
                           RetrievalResult, RevisitedResult, SuiteOptions, SweepSetting, class_retrieval, export_cifar,
                           knn_accuracy, linear_probe, run_benchmarks)
    from .head import (Head, HeadConfig, HeadEvaluation, HeadPredictions, HeadTrainResult, OnnxExport, evaluate_head,
                       export_onnx, load_head, predict_head, train_head)
    from .head.metrics import SingleLabelMetrics, single_label_metrics
    from .index import (Index, IndexCard, IndexSpec, Neighbor, SearchResult, build_index, choose_index_spec,
                        exact_search, load_index, recall_at_k)
    from .index.synthetic import iter_synthetic_embeddings, synthetic_embeddings
    from .pretrained import PretrainedCheckpoint, find_checkpoint
    from .sample_data import SampleDataset, make_sample_dataset
    from .serve import Client, create_app
    from .serve.server import run_server
    from .sources import DecodedImage, ImageSource, list_images, load_image
    from .ssl import TrainConfig, TrainingDivergedError, TrainResult
    from .ssl.rundir import read_metrics
    from .store import EmbeddingStore, StoreBatch, StoreManifest, StoreWriter
