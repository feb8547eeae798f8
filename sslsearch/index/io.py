"""The index directory (Contract 3): ``index.faiss`` + the ``index.json`` card, saved atomically, loaded with checks."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import IndexFileError, InputNotFoundError, OutputExistsError
from ..files import LOCK_NAME, atomic_path, atomic_write_json
from .spec import format_bytes

FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
CARD_FILE = "index.json"
ONDISK_DATA = "index.ivfdata"  # the inverted lists of an on-disk IVF index (``build_index(on_disk=True)``)
RECALL_HELD_OUT = ("mean over held-out queries of |ANN top-k ∩ exact top-k| / k; the queries are random store vectors "
                   "kept out of training and out of the index while it was measured and tuned (added afterwards)")
RECALL_IN_INDEX = ("mean over random store vectors of |top-k ∩ exact top-k| / k, each query's own id removed from both "
                   "lists (flat index: exact by construction)")
RECALL_DEFINITION = RECALL_HELD_OUT


@contextlib.contextmanager
def quiet_c_stdout() -> Iterator[None]:
    """Drop what C code prints on file descriptor 1 in the block.

    faiss's on-disk lists print notes there ("resizing ...", "IO_FLAG_ONDISK_SAME_DIR: updating
    ondisk filename ..."), which would corrupt ``--json`` output; its errors are exceptions.
    """
    sys.stdout.flush()
    try:
        saved = os.dup(1)
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:  # no stdout at all
        yield
        return
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _versions() -> tuple[str, str]:
    import faiss

    from .. import __version__

    return __version__, str(faiss.__version__)


@dataclass(frozen=True)
class IndexCard:
    """What ``index.json`` says about an index (Contract 3).

    Attributes:
        factory: faiss factory string of the built index, e.g. ``"HNSW32,Flat"`` (``IDMap2,`` in
            front when store ids are not 0..n-1 in store order).
        kind: flat, hnsw, ivf or ivfpq.
        metric: ``"ip"`` (inner product = cosine on L2-normalised vectors).
        dim: vector dimension.
        ntotal: vectors in the index.
        search_params: tuned search parameters, e.g. ``{"efSearch": 48}`` or ``{"nprobe": 8}``.
        encoder: fingerprint of the encoder that made the vectors (spec, weights sha256, id, ...).
        store: ``{"path": absolute store dir, "manifest_sha256": ..., "rows": ...}``.
        build_seconds: wall time of the whole build (read, train, add, measure, save).
        peak_memory_bytes: peak growth of the process's resident memory during the build.
        recall_at_10: measured recall@k (k = ``recall_k``, 10 unless the index holds ≤ 10
            vectors) against exact search; None when the index is too small to measure.
        n_eval_queries: held-out queries the recall was measured on (see ``recall_definition``).
        size_bytes: size of ``index.faiss``.
        sslsearch_version, faiss_version, created: provenance.
        reason: why this index was chosen (``choose_index_spec``).
        build_params: construction parameters (efConstruction, train_size, ...).
        recall_k: the k of ``recall_at_10``.
        tuning: the (search_params, recall, qps_batch) points measured while tuning, smallest first
            (qps_batch: queries per second of one batch of the eval queries during the build; absent in
            older cards); ``sslsearch bench index --apply`` appends its chosen point.
        timings: seconds per build phase (sample, train, add, tune, save).
        format_version: of this card.
    """

    factory: str
    kind: str
    metric: str
    dim: int
    ntotal: int
    search_params: dict[str, Any]
    encoder: dict[str, Any]
    store: dict[str, Any]
    build_seconds: float
    peak_memory_bytes: int
    recall_at_10: float | None
    n_eval_queries: int
    size_bytes: int
    sslsearch_version: str
    faiss_version: str
    created: str = field(default_factory=_now)
    reason: str = ""
    build_params: dict[str, Any] = field(default_factory=dict)
    recall_k: int = 10
    recall_definition: str = RECALL_DEFINITION
    tuning: tuple[dict[str, Any], ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["tuning"] = [dict(t) for t in self.tuning]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IndexCard":
        """Build a card from ``index.json`` content (unknown keys are ignored, for forward compatibility).

        Raises:
            IndexFileError: a required field is missing or has the wrong type.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
        missing = [name for name in required if name not in values]
        if missing:
            raise IndexFileError(f"index card lacks field {missing[0]!r}; it was not written by `sslsearch index build` "
                                 "— rebuild the index")
        try:
            values["tuning"] = tuple(dict(t) for t in values.get("tuning", ()))
            values["dim"], values["ntotal"], values["size_bytes"] = (int(values["dim"]), int(values["ntotal"]),
                                                                      int(values["size_bytes"]))
            for name in ("search_params", "encoder", "store"):
                if not isinstance(values[name], dict):
                    raise TypeError(f"{name} is {type(values[name]).__name__}, expected an object")
        except (TypeError, ValueError) as error:
            raise IndexFileError(f"index card is malformed ({error}); rebuild the index") from None
        return cls(**values)

    @property
    def encoder_spec(self) -> str:
        return str(self.encoder.get("spec", "?"))

    @property
    def encoder_id(self) -> str:
        return str(self.encoder.get("id", "?"))

    @property
    def qps(self) -> float | None:
        """Queries per second at the tuned search parameters, measured during the build (None if not)."""
        points = [t for t in self.tuning if t.get("search_params") == self.search_params and t.get("qps_batch")]
        return float(points[-1]["qps_batch"]) if points else None

    def summary_lines(self) -> list[str]:
        """Readable lines for ``sslsearch index info``."""
        queries = "held-out queries" if self.recall_definition == RECALL_HELD_OUT else "store vectors, own id left out"
        recall = ("not measured (too few vectors)" if self.recall_at_10 is None else
                  f"{self.recall_at_10:.4f} (recall@{self.recall_k} vs exact, {self.n_eval_queries} {queries})")
        params = ", ".join(f"{k}={v}" for k, v in self.search_params.items()) or "none (exact)"
        return [
            f"index      {self.factory} ({self.kind}, metric {self.metric})",
            f"vectors    {self.ntotal:,} × {self.dim}",
            f"encoder    {self.encoder_spec} ({self.encoder_id})",
            f"store      {self.store.get('path')} (manifest sha256 {str(self.store.get('manifest_sha256', '?'))[:12]}…)",
            f"search     {params}" + ("" if self.qps is None else
                                         f" ({self.qps:,.0f} queries/s, batch search on the building machine)"),
            f"recall     {recall}",
            f"size       {format_bytes(self.size_bytes)} on disk"
            + (f" + {ONDISK_DATA} {format_bytes(self.build_params.get('ivfdata_bytes', 0))} (memory-mapped lists)"
               if self.build_params.get("on_disk") else ""),
            f"build      {self.build_seconds:.1f} s, peak memory +{format_bytes(self.peak_memory_bytes)}",
            f"why        {self.reason}",
            f"made by    sslsearch {self.sslsearch_version}, faiss {self.faiss_version}, {self.created}",
        ]


def check_index_output(directory: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Check that ``directory`` may receive an index: new, empty, or (with overwrite) an index dir.

    Raises:
        OutputExistsError: it is a file, holds an index and overwrite is false, or holds other data.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise OutputExistsError(f"output {directory} is a file, expected a directory; choose another --out")
    if directory.exists():
        names = sorted(p.name for p in directory.iterdir() if p.name != LOCK_NAME)
        ours = {INDEX_FILE, CARD_FILE, ONDISK_DATA}
        foreign = [n for n in names if n not in ours and not (n.startswith(".") and n.endswith(".tmp"))]
        if foreign:
            raise OutputExistsError(f"output directory {directory} already holds {len(foreign)} other file(s) (e.g. "
                                    f"{foreign[0]!r}); choose an empty or new directory for the index")
        if any(n in ours for n in names) and not overwrite:
            raise OutputExistsError(f"{directory} already holds an index; pass --overwrite to replace it, or choose "
                                    "another --out")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def save_index_files(directory: Path, faiss_index: Any, make_card: Any) -> IndexCard:
    """Write ``index.faiss`` then ``index.json``, each to a temporary name and renamed.

    An old card is removed first, so a crash in between never leaves a card describing another
    file. ``make_card(size_bytes)`` builds the card once the index file's size is known.
    """
    import faiss

    (directory / CARD_FILE).unlink(missing_ok=True)
    with atomic_path(directory / INDEX_FILE) as tmp:
        faiss.write_index(faiss_index, str(tmp))
    card: IndexCard = make_card((directory / INDEX_FILE).stat().st_size)
    atomic_write_json(directory / CARD_FILE, card.to_dict())
    return card


def read_card(directory: str | os.PathLike[str]) -> IndexCard:
    """Read and check the card of an index directory.

    Raises:
        InputNotFoundError: the directory does not exist.
        IndexFileError: no card (not an index, or an interrupted build), unreadable or too new.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputNotFoundError(f"index directory {directory} does not exist; build one with "
                                 "`sslsearch index build EMB --out DIR`")
    path = directory / CARD_FILE
    if not path.is_file():
        hint = " (it holds index.faiss: the build was interrupted)" if (directory / INDEX_FILE).exists() else ""
        raise IndexFileError(f"{directory} is not an sslsearch index: no {CARD_FILE}{hint}; build one with "
                             "`sslsearch index build EMB --out DIR`")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise IndexFileError(f"{path} is not valid JSON ({error}); rebuild the index") from None
    if not isinstance(data, dict):
        raise IndexFileError(f"{path} is not an index card (a JSON object); rebuild the index")
    card = IndexCard.from_dict(data)
    if card.format_version > FORMAT_VERSION:
        raise IndexFileError(f"{path} has card format {card.format_version}, newer than this sslsearch reads "
                             f"({FORMAT_VERSION}); upgrade sslsearch")
    return card


def read_index_files(directory: str | os.PathLike[str], *, mmap: bool = False) -> tuple[Any, IndexCard]:
    """Read ``index.faiss`` and its card, checking that they belong together.

    An on-disk index's lists are found in ``index.ivfdata`` beside it (wherever the directory
    moved) and memory-mapped. ``mmap`` also memory-maps the lists of an ordinary IVF index
    (``faiss.IO_FLAG_MMAP``) instead of reading them into memory.

    Returns:
        ``(faiss_index, card)``.

    Raises:
        InputNotFoundError, IndexFileError: missing, corrupted or mismatched files.
    """
    import faiss

    directory = Path(directory)
    card = read_card(directory)
    path = directory / INDEX_FILE
    if not path.is_file():
        raise IndexFileError(f"{directory} has a card but no {INDEX_FILE}; rebuild the index with "
                             "`sslsearch index build EMB --out DIR --overwrite`")
    size = path.stat().st_size
    if size != card.size_bytes:
        raise IndexFileError(f"{path} does not match its card: {size:,} bytes, the card says {card.size_bytes:,}; the "
                             "file was replaced or damaged — rebuild the index with --overwrite")
    flags = 0
    if (directory / ONDISK_DATA).is_file():
        flags |= faiss.IO_FLAG_ONDISK_SAME_DIR
    if mmap and card.kind in ("ivf", "ivfpq"):
        flags |= faiss.IO_FLAG_MMAP
    try:
        with quiet_c_stdout():
            faiss_index = faiss.read_index(str(path), flags)
    except (RuntimeError, MemoryError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise IndexFileError(f"{path} is corrupted and cannot be read by faiss ({first_line[:160]}); rebuild the "
                             "index with --overwrite") from None
    metric = "ip" if faiss_index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"
    seen = (faiss_index.d, faiss_index.ntotal, metric)
    expected = (card.dim, card.ntotal, card.metric)
    if seen != expected:
        raise IndexFileError(f"{path} does not match its card: dim {seen[0]}, {seen[1]:,} vectors, metric {seen[2]}; "
                             f"the card says dim {expected[0]}, {expected[1]:,} vectors, metric {expected[2]} — "
                             "rebuild the index with --overwrite")
    return faiss_index, card
