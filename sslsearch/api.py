"""The public functions that mirror the CLI commands one for one (``sslsearch.search``, ``sslsearch.train``, ...).

Each is a thin layer over the library call its command makes: it takes what the command takes,
as Python values, and returns the typed result the command prints. ``train_config`` is
``train --print-config``; ``training_transform`` is the view generator a run trains on.
Re-exported, lazily, by ``sslsearch/__init__.py``.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InvalidArgumentError

if TYPE_CHECKING:  # the heavy modules are imported by the calls, so `import sslsearch` stays light
    import numpy as np

    from .dedup import DedupResult
    from .evaluate import (EvaluationSplit, IndexSweepResult, KNNResult, LinearProbeResult, RetrievalResult,
                           RevisitedResult)
    from .index import Index, IndexCard, SearchResult
    from .ssl import TrainConfig, TrainResult
    from .store import EmbeddingStore

PathLike = str | os.PathLike[str]


def open_store(directory: PathLike, *, allow_incomplete: bool = False) -> "EmbeddingStore":
    """Open an embedding store written by ``embed_images`` (``sslsearch embed``) for reading.

    ``directory`` is a local directory or a URI that pyarrow.fs opens, such as ``s3://bucket/emb``
    (credentials and endpoint from the standard AWS environment variables).

    Returns:
        An ``EmbeddingStore``: ``.dim``, ``.manifest``, ``.encoder``, ``.read_all()``,
        ``.iter_batches(n)`` (streaming ``StoreBatch``es of ids and (n, dim) embeddings), ``.paths(ids)``.

    Raises:
        StoreError: not a store, incomplete (unless ``allow_incomplete``), or inconsistent.

    Example:
        >>> store = open_store("emb/")  # doctest: +SKIP
        >>> batch = store.read_all(("id", "path", "embedding"))  # doctest: +SKIP
    """
    from .store import EmbeddingStore

    return EmbeddingStore.open(directory, allow_incomplete=allow_incomplete)


def search(index: "Index | PathLike", images: PathLike | Sequence[PathLike] | None = None, *,
           vectors: "np.ndarray | PathLike | None" = None, ids: Sequence[int] | None = None, k: int = 10,
           device: str = "auto") -> list["SearchResult"]:
    """The ``k`` nearest neighbours of each query, as ``sslsearch search`` finds them.

    Give exactly one kind of query:

    - ``images``: image files or folders, embedded with the index's own encoder;
    - ``vectors``: a (q, dim) array (or (dim,) for one query), a ``.npy`` file of one, or an
      embedding store directory (its encoder must be the index's);
    - ``ids``: store ids of vectors already in the index (each query's own id is left out).

    Args:
        index: an ``Index`` from ``load_index``, or an index directory.
        k: neighbours per query.
        device: where image queries are embedded; an index given as a directory is loaded on the CPU
            unless ``device="cuda"``.

    Returns:
        One ``SearchResult`` per query: ``.query``, ``.neighbors`` (``Neighbor``: rank, score, id, path).

    Raises:
        InvalidArgumentError: no query or more than one kind; bad k. EncoderMismatchError: the
        vectors come from another encoder or dim. InputNotFoundError: a query file is missing.

    Example:
        >>> results = search("idx/", ["query.jpg"], k=5)  # doctest: +SKIP
        >>> results[0].neighbors[0].path  # doctest: +SKIP
    """
    from .index.search import Index, load_index, search_query_file

    given = [name for name, value in (("images", images), ("vectors", vectors), ("ids", ids)) if value is not None]
    if len(given) != 1:
        raise InvalidArgumentError("give exactly one kind of query: images=PATHS, vectors=ARRAY or ids=[3, 17]"
                                   + (f" (got {' and '.join(given)})" if given else ""))
    if not isinstance(index, Index):
        index = load_index(index, device="cpu" if device == "auto" else device)
    if ids is not None:
        return index.search_ids(list(ids), k)
    if vectors is not None:
        if isinstance(vectors, (str, os.PathLike)):
            return search_query_file(index, vectors, k)
        return index.search(vectors, k)
    paths = [images] if isinstance(images, (str, os.PathLike)) else list(images or [])
    return index.search_images(paths, k, device=device)


def deduplicate(data: PathLike, out: PathLike, *, encoder: str | None = None, weights: PathLike | None = None,
                image_size: int | None = None, batch_size: int = 64, pretrained: bool = False,
                allow_download: bool = False, device: str = "auto", overwrite: bool = False,
                **options: Any) -> "DedupResult":
    """Exact and near-duplicate clusters of an embedding store, or of images when ``encoder`` is given.

    Mirrors ``sslsearch dedup``: with ``encoder``, the images of ``data`` are embedded into
    ``out/embeddings`` first. Writes ``clusters.parquet``, ``keep.txt``, ``remove.txt``,
    ``summary.json`` (and ``report.html`` with ``report=True``) into ``out``.

    Args:
        data: an embedding store (a directory or a URI such as ``s3://bucket/emb``), or images (folder or
            list file) with ``encoder``.
        out: the output directory (new or empty unless ``overwrite``; local, also for a store on s3://).
        encoder, weights, image_size, batch_size, pretrained, allow_download: how to embed images (as
            ``embed_images``).
        **options: those of ``sslsearch.dedup.deduplicate``: ``threshold``, ``precision``, ``keep``,
            ``neighbors``, ``method``, ``sample_size``, ``seed``, ``against``, ``score``, ``edits``, ``report``,
            ``report_max_clusters``, ``progress``, ``memory_budget``.

    Returns:
        A ``DedupResult``: ``.clusters`` (``DuplicateCluster``: ``.keeper``, ``.removed``), ``.removed`` (a
        count), ``.threshold``, ``.summary``.

    Raises:
        InvalidArgumentError: ``data`` is neither a store nor embedded with ``encoder``; bad options.
        OutputExistsError: ``out`` holds other files.

    Example:
        >>> result = deduplicate("emb/", "dups/", precision=0.99)  # doctest: +SKIP
        >>> result.removed  # doctest: +SKIP
    """
    from .dedup import deduplicate as deduplicate_store
    from .dedup.convenience import deduplicate_images
    from .store import is_store

    if encoder is not None:
        return deduplicate_images(data, encoder, out, weights=weights, image_size=image_size, batch_size=batch_size,
                                  pretrained=pretrained, allow_download=allow_download, device=device,
                                  overwrite=overwrite, **options)
    if weights is not None or image_size is not None or pretrained:
        raise InvalidArgumentError("weights/image_size/pretrained describe the encoder=... that embeds images; a "
                                   "store is already embedded")
    if is_store(data) or not Path(data).exists():  # a URI is a store; a missing path gets the store's error
        return deduplicate_store(data, out, device=device, overwrite=overwrite, **options)
    raise InvalidArgumentError(f"{data} is not an embedding store (no manifest.json); pass encoder=... to embed its "
                               "images first, or give a store made by embed_images")


def train_config(data: PathLike | None = None, out: PathLike | None = None, *, method: str | None = None,
                 backbone: str | None = None, image_size: int | None = None, epochs: float | None = None,
                 max_minutes: float | None = None, batch_size: int | None = None, device: str | None = None,
                 workers: int | None = None, val: PathLike | None = None, strict: bool | None = None,
                 init: str | PathLike | None = None, pretrained: bool = False, allow_download: bool = False,
                 config: "TrainConfig | PathLike | None" = None,
                 settings: Mapping[str, Any] | Sequence[str] | None = None, resume: bool = False) -> "TrainConfig":
    """The config ``train`` runs with for these arguments, without training (``sslsearch train --print-config``).

    Built as the command builds it: defaults (or the run's own config with ``resume``), then
    ``config``, then the keyword arguments that are not None, then ``settings`` (as ``--set`` wins
    over the other flags). Takes the
    arguments of ``train``; the result can be changed (``dataclasses.replace``) and passed back as
    ``train(config=...)``.

    Args:
        data: training images (a folder or a list file). out: the run directory.
        method: simclr, moco, dino or mae. backbone: a timm architecture (random init).
        image_size, epochs, max_minutes, batch_size, device, workers, val, strict: as the CLI options.
        init, pretrained, allow_download: continued pretraining from ``timm:NAME`` (published weights,
            with ``pretrained``), a run directory, a checkpoint folder or a weights file.
        config: a ``TrainConfig``, a YAML file of config fields, or a training run directory (the
            ``config.yaml`` it was started with).
        settings: config fields by dotted key, as a dict (``{"optimizer.lr": 0.5}``) or as the
            ``KEY=VALUE`` strings ``--set`` takes (``["optimizer.lr=0.5"]``, values parsed as YAML).
        resume: continue the run in ``out`` from its last checkpoint (its own config is the base).

    Returns:
        The resolved ``TrainConfig`` (``sslsearch.ssl.to_yaml(config)`` prints it as the command does).

    Raises:
        InvalidArgumentError: an unknown config key (with the nearest names), a value of the wrong
        type, a setting that is not ``KEY=VALUE``, ``resume`` without ``out`` or with a ``TrainConfig``.
        InputNotFoundError: ``resume`` or ``config`` names a directory that is not a training run.

    Example:
        >>> train_config(method="dino", settings=["optimizer.lr=0.5"]).optimizer.lr
        0.5
    """
    from .ssl.config import TrainConfig, build_config, from_flat, load_run_config, parse_assignments

    if isinstance(settings, str):
        settings = [settings]
    if settings is not None and not isinstance(settings, Mapping):
        settings = parse_assignments(list(settings))
    if resume and out is None:
        raise InvalidArgumentError("resume=True continues the run in out=RUN; pass out")
    if isinstance(config, (str, os.PathLike)) and Path(config).is_dir():
        config = load_run_config(config)
    overrides = {"data": os.fspath(data) if data is not None else None,
                 "out": os.fspath(out) if out is not None else None, "method": method, "backbone": backbone,
                 "image_size": image_size, "epochs": epochs, "max_minutes": max_minutes, "batch_size": batch_size,
                 "device": device, "workers": workers, "val": os.fspath(val) if val is not None else None,
                 "strict": strict, "init": os.fspath(init) if init is not None else None,
                 "pretrained": pretrained or None, "allow_download": allow_download or None, **(settings or {})}
    if isinstance(config, TrainConfig):
        if resume:
            raise InvalidArgumentError("resume=True takes the run's own config; pass settings=... for changes, "
                                       "not a TrainConfig")
        return from_flat({key: value for key, value in overrides.items() if value is not None}, config)
    return build_config(overrides, config_file=config, resume_run=out if resume else None)


def train(data: PathLike | None = None, out: PathLike | None = None, *, method: str | None = None,
          backbone: str | None = None, image_size: int | None = None, epochs: float | None = None,
          max_minutes: float | None = None, batch_size: int | None = None, device: str | None = None,
          workers: int | None = None, val: PathLike | None = None, strict: bool | None = None,
          init: str | PathLike | None = None, pretrained: bool = False, allow_download: bool = False,
          config: "TrainConfig | PathLike | None" = None, settings: Mapping[str, Any] | Sequence[str] | None = None,
          resume: bool = False) -> "TrainResult":
    """Self-supervised pretraining into a run directory, as ``sslsearch train`` does.

    The config is ``train_config`` of the same arguments: defaults (or the run's own config with
    ``resume``), then ``config``, then the keyword arguments that are not None, then ``settings``
    (dotted keys, e.g. ``{"optimizer.lr": 0.5}``).

    Args:
        data, out, method, ..., config, settings, resume: as ``train_config``.

    Returns:
        A ``TrainResult`` (``.run_dir`` is an encoder for ``create_encoder``/``embed_images`` once
        ``.encoder_exported``); ``read_metrics(run_dir)`` gives the logged losses and rates.

    Raises:
        The errors of ``train_config`` and of ``sslsearch.ssl.train`` (UnknownNameError, CheckpointError, ...).

    Example:
        >>> result = train("sample-data", "runs/quick", backbone="resnet18", max_minutes=3)  # doctest: +SKIP
    """
    from .ssl.train import train as run_training

    resolved = train_config(data, out, method=method, backbone=backbone, image_size=image_size, epochs=epochs,
                            max_minutes=max_minutes, batch_size=batch_size, device=device, workers=workers, val=val,
                            strict=strict, init=init, pretrained=pretrained, allow_download=allow_download,
                            config=config, settings=settings, resume=resume)
    return run_training(resolved, resume=resume)


def training_transform(config: "TrainConfig", *, mean: Sequence[float] | None = None,
                       std: Sequence[float] | None = None) -> Callable[[Any], list[Any]]:
    """The view generator a run of ``config`` trains on: a PIL RGB image → its list of view tensors.

    Two views for SimCLR/MoCo, 2 global + ``augmentation.local_crop_count`` local crops for DINO,
    one crop for MAE; the augmentation knobs left ``None`` take the method's defaults at
    ``config.image_size``, as ``train`` resolves them.

    Args:
        config: a ``TrainConfig`` (e.g. from ``train_config``).
        mean, std: the normalisation; default: the backbone's (timm's data config of
            ``config.backbone``). A run started from ``init`` weights uses the checkpoint's instead.

    Returns:
        A callable; each call draws new random views: (3, S, S) float32 tensors, S the view's size.

    Raises:
        UnknownNameError: an unknown method or backbone.

    Example:
        >>> views = training_transform(train_config(method="simclr", image_size=32))(image)  # doctest: +SKIP
        >>> [v.shape for v in views]  # doctest: +SKIP
        [torch.Size([3, 32, 32]), torch.Size([3, 32, 32])]
    """
    from .ssl.methods import get_method
    from .ssl.transforms import resolve_augmentation

    method_cls = get_method(config.method)
    augmentation = resolve_augmentation(config.augmentation, config.method, config.image_size)
    if mean is None or std is None:
        from .encoders import create_backbone, default_preprocessing

        preprocessing = default_preprocessing(create_backbone(config.backbone)[0], config.image_size)
        mean = preprocessing.mean if mean is None else mean
        std = preprocessing.std if std is None else std
    return method_cls.build_transform(config.image_size, augmentation, tuple(mean), tuple(std))


def load_split(store: PathLike, *, queries: PathLike | None = None, labels: PathLike | None = None,
               drop_unlabelled: bool = False, holdout: float | None = None, leave_one_out: bool | None = None,
               seed: int = 0, require_labels: bool = True) -> "EvaluationSplit":
    """Read a store's embeddings and labels once and split them into database and query rows.

    What each ``evaluate_*`` call does first; pass the result as their ``store`` to evaluate one
    split several ways without reading the Parquet again. Labels come from the store (ImageFolder
    classes) or ``labels`` (CSV/Parquet of path,label). Queries: ``queries`` (another store, e.g. the
    test split), a seeded ``holdout`` fraction of each class, or leave-one-out (the default without
    either; ``leave_one_out=False`` holds out 20 % instead).

    Returns:
        An ``EvaluationSplit``: ``.train`` and ``.queries`` (``.embeddings`` (n, dim) float32,
        ``.labels``, ``.ids``), ``.kind`` ("queries", "holdout" or "leave-one-out").

    Raises:
        InvalidArgumentError: no labels (unless ``require_labels=False``), an empty split.
        EncoderMismatchError: the two stores come from different encoders.

    Example:
        >>> split = load_split("emb-train/", queries="emb-test/")  # doctest: +SKIP
        >>> evaluate_knn(split).weighted[20], evaluate_retrieval(split).recall[10]  # doctest: +SKIP
    """
    from .evaluate.labels import load_split as read_split

    return read_split(store, queries=queries, labels_file=labels, drop_unlabelled=drop_unlabelled, holdout=holdout,
                      leave_one_out=leave_one_out, seed=seed, require_labels=require_labels)


def _split(store: "PathLike | EvaluationSplit", *, queries: PathLike | None, labels: PathLike | None,
           drop_unlabelled: bool, holdout: float | None, leave_one_out: bool | None, seed: int,
           require_labels: bool = True) -> Any:
    from .evaluate.labels import EvaluationSplit

    if isinstance(store, EvaluationSplit):
        given = [name for name, value in (("queries", queries), ("labels", labels), ("holdout", holdout))
                 if value is not None] + (["drop_unlabelled"] if drop_unlabelled else [])
        if given:
            raise InvalidArgumentError(f"{' and '.join(given)} describe how to split a store; the EvaluationSplit "
                                       "given is already split — pass them to load_split instead")
        return store
    return load_split(store, queries=queries, labels=labels, drop_unlabelled=drop_unlabelled, holdout=holdout,
                      leave_one_out=leave_one_out, seed=seed, require_labels=require_labels)


def evaluate_knn(store: "PathLike | EvaluationSplit", *, queries: PathLike | None = None,
                 labels: PathLike | None = None, drop_unlabelled: bool = False, holdout: float | None = None,
                 leave_one_out: bool | None = None, ks: Sequence[int] | None = None, temperature: float = 0.07,
                 seed: int = 0, device: str = "auto") -> "KNNResult":
    """k-NN classification accuracy of a store's embeddings (DINO protocol), as ``sslsearch bench knn``.

    Labels come from the store (ImageFolder classes) or ``labels`` (CSV/Parquet of path,label).
    Queries: ``queries`` (another store, e.g. the test split), a ``holdout`` fraction of each class,
    or leave-one-out (the default). ``store`` may also be an ``EvaluationSplit`` from ``load_split``.

    Returns:
        A ``KNNResult``: ``.ks``, ``.weighted[k]`` and ``.majority[k]`` accuracies in [0, 1], ``.best``.

    Raises:
        InvalidArgumentError: no labels, an empty split, bad ks. EncoderMismatchError: stores of two encoders.

    Example:
        >>> evaluate_knn("emb-train/", queries="emb-test/").weighted[20]  # doctest: +SKIP
    """
    from .evaluate import knn_evaluate

    split = _split(store, queries=queries, labels=labels, drop_unlabelled=drop_unlabelled, holdout=holdout,
                   leave_one_out=leave_one_out, seed=seed)
    return knn_evaluate(split, ks=ks, temperature=temperature, device=device)


def evaluate_linear(store: "PathLike | EvaluationSplit", *, queries: PathLike | None = None,
                    labels: PathLike | None = None, drop_unlabelled: bool = False, holdout: float | None = None,
                    epochs: int = 50, batch_size: int = 256, seed: int = 0,
                    device: str = "auto") -> "LinearProbeResult":
    """Linear-probe accuracy on frozen embeddings, as ``sslsearch bench linear``.

    Test rows are ``queries`` (another store) or a ``holdout`` fraction of each class (default 0.2);
    ``store`` may also be an ``EvaluationSplit`` from ``load_split`` (not leave-one-out).

    Returns:
        A ``LinearProbeResult``: ``.test_accuracy``, ``.train_accuracy``, the chosen ``.learning_rate``
        and ``.weight_decay``.
    """
    from .evaluate import linear_evaluate

    split = _split(store, queries=queries, labels=labels, drop_unlabelled=drop_unlabelled, holdout=holdout,
                   leave_one_out=False, seed=seed)
    return linear_evaluate(split, epochs=epochs, batch_size=batch_size, seed=seed, device=device)


def evaluate_retrieval(store: "PathLike | EvaluationSplit", *, queries: PathLike | None = None,
                       labels: PathLike | None = None, pairs: PathLike | Sequence[tuple[str, str]] | None = None,
                       drop_unlabelled: bool = False, holdout: float | None = None, leave_one_out: bool | None = None,
                       ks: Sequence[int] = (1, 5, 10), map_depth: int | None = None, seed: int = 0,
                       device: str = "auto") -> "RetrievalResult":
    """Retrieval recall@k, precision@k and mAP of a store, as ``sslsearch bench retrieval``.

    Ground truth: classes (the store's labels or ``labels``), or positive ``pairs`` of paths (a CSV
    of two path columns such as the sample data's ``near_duplicates.csv``, or a list of tuples).
    ``store`` may also be an ``EvaluationSplit`` from ``load_split``.

    Returns:
        A ``RetrievalResult``: ``.recall[k]``, ``.precision[k]``, ``.mean_average_precision``.

    Example:
        >>> evaluate_retrieval("emb/", pairs="sample-data/near_duplicates.csv").recall[10]  # doctest: +SKIP
    """
    from .evaluate import read_positive_pairs, retrieval_evaluate

    if isinstance(pairs, (str, os.PathLike)):
        pairs = read_positive_pairs(pairs)
    split = _split(store, queries=queries, labels=labels, drop_unlabelled=drop_unlabelled, holdout=holdout,
                   leave_one_out=leave_one_out, seed=seed, require_labels=pairs is None)
    return retrieval_evaluate(split, pairs=pairs, ks=ks, map_depth=map_depth, device=device)


def evaluate_revisited(store: PathLike, ground_truth: PathLike, *, queries: PathLike | None = None,
                       device: str = "auto") -> "RevisitedResult":
    """Revisited Oxford/Paris mAP (Easy/Medium/Hard) from a ``gnd_*.pkl``, as ``bench retrieval --revisited``."""
    from .evaluate.revisited import revisited_from_stores

    return revisited_from_stores(store, ground_truth, queries=queries, device=device)


def evaluate_index(index: PathLike, store: PathLike | None = None, *, k: int = 10, n_queries: int = 1000,
                   target_recall: float = 0.95, values: Sequence[int] | None = None, apply: bool = False,
                   seed: int = 0, device: str = "auto") -> "IndexSweepResult":
    """Recall@k against exact search and queries/s over an index's search parameter, as ``sslsearch bench index``.

    Returns:
        An ``IndexSweepResult``: ``.settings`` (``SweepSetting``: recall, QPS) and ``.operating_point``,
        the fastest setting reaching ``target_recall`` (written into the card with ``apply``).

    Example:
        >>> evaluate_index("idx/", target_recall=0.95).operating_point  # doctest: +SKIP
    """
    from .evaluate import sweep_index

    return sweep_index(index, store, k=k, n_queries=n_queries, target_recall=target_recall, values=values,
                       apply=apply, seed=seed, device=device)


def index_info(index: PathLike, *, verify: bool = False) -> "IndexCard":
    """The card (``IndexCard``) of an index directory, as ``sslsearch index info``; ``verify`` also reads the index."""
    from .index.io import read_card, read_index_files

    return read_index_files(index)[1] if verify else read_card(index)
