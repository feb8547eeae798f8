"""Choosing an index: a pure function of (vectors, dim, memory budget) → faiss factory string + parameters.

Nothing here builds or imports faiss, so the choice is table-tested (``tests/test_index_spec.py``).

The ``auto`` policy (metric: inner product, i.e. cosine on the L2-normalised store vectors):

1. up to ``FLAT_MAX_VECTORS`` vectors → ``Flat``: exact, no training, and at that size a scan of
   the whole set costs about as much as a graph walk;
2. up to ``HNSW_MAX_VECTORS`` → ``HNSW32,Flat`` (efConstruction ``HNSW_EF_CONSTRUCTION`` = 80), the best
   recall/QPS trade-off while full vectors fit in memory and the graph builds in reasonable time;
3. beyond that → ``IVF{nlist},SQ8`` (nlist ≈ 4·√n), 4× smaller than float32 with a small recall loss;
4. whenever the preferred index does not fit ``memory_budget_bytes``, the next smaller one is
   taken, down to ``IVF{nlist},PQ{m}`` with the largest sub-quantizer count m that fits; a budget
   below the smallest IVF-PQ raises an error naming the minimum.

Search parameters (``efSearch``, ``nprobe``) given here are starting points; ``build_index`` tunes
them on held-out queries to the smallest setting that reaches the recall target.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidArgumentError, unknown_name

KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq")
METRIC = "ip"  # inner product on L2-normalised vectors = cosine similarity

FLAT_MAX_VECTORS = 20_000  # exact search up to this many vectors (exact and perfect; the build is instant)
HNSW_MAX_VECTORS = 2_000_000  # above this, a 2-core HNSW build takes hours; IVF trains on a sample
HNSW_M = 32  # graph degree (level 0 holds 2·M links per vector)
# efConstruction 80, not the usual 200: measured on 100k × 384 clustered vectors, faiss builds the
# graph 2.8× faster for the same recall-vs-efSearch curve within noise (docs/search.md, "Building").
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 64  # start value, tuned at build time
IVF_NPROBE = 16  # start value, tuned at build time
IVF_MIN_POINTS_PER_LIST = 40  # faiss k-means wants ≥ 39 training points per centroid
PQ_MIN_TRAIN = 256 * 40  # 8-bit sub-quantizers: 256 centroids each
MAX_TRAIN_SIZE = 500_000

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


@dataclass(frozen=True)
class IndexSpec:
    """What to build.

    Attributes:
        kind: flat, hnsw, ivf or ivfpq.
        factory: faiss ``index_factory`` string, e.g. ``"HNSW32,Flat"`` (id mapping is added at build).
        metric: ``"ip"`` (inner product).
        search_params: starting search parameters, e.g. ``{"efSearch": 64}`` or ``{"nprobe": 16}``.
        train_size: vectors sampled to train the index (0: no training needed).
        estimated_bytes: approximate memory of the built index (vectors, codes, links, centroids).
        reason: one line saying why this index was chosen.
        build_params: construction parameters, e.g. ``{"efConstruction": 200}``.
    """

    kind: str
    factory: str
    metric: str
    search_params: dict[str, Any]
    train_size: int
    estimated_bytes: int
    reason: str
    build_params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "factory": self.factory, "metric": self.metric,
                "search_params": dict(self.search_params), "train_size": self.train_size,
                "estimated_bytes": self.estimated_bytes, "reason": self.reason, "build_params": dict(self.build_params)}


def parse_memory(text: str | int) -> int:
    """Parse a memory size: ``"4GB"``, ``"512MiB"``, ``"1.5G"``, ``"800M"``, ``"1000000"`` → bytes.

    Decimal units (KB, MB, GB, TB and their one-letter forms) are powers of 1000, binary ones
    (KiB, MiB, GiB, TiB) powers of 1024; case is ignored.

    Raises:
        InvalidArgumentError: not a positive size.

    Example:
        >>> parse_memory("1.5GiB")
        1610612736
    """
    if isinstance(text, bool):
        raise InvalidArgumentError(f"memory size must be a number of bytes or text like '4GB', got {text!r}")
    if isinstance(text, int):
        value = text
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
        unit = match.group(2).lower() if match else ""
        if not match or unit not in _UNITS:
            raise InvalidArgumentError(f"cannot read memory size {text!r}; write a number with a unit, e.g. 4GB, "
                                       "512MiB or 1.5G")
        value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise InvalidArgumentError(f"memory size must be positive, got {text!r}; e.g. --memory-budget 4GB")
    return value


def format_bytes(n: int | float, *, round_up: bool = False) -> str:
    """Human-readable size with binary units, e.g. ``1.4 GiB`` (``round_up`` for a minimum to ask for)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            if unit == "B":
                return f"{math.ceil(value) if round_up else round(value)} B"
            return f"{(math.ceil(value * 10) / 10 if round_up else value):.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------- memory model


def flat_bytes(n: int, dim: int) -> int:
    return 4 * n * dim


def hnsw_bytes(n: int, dim: int, m: int = HNSW_M) -> int:
    # float32 vectors + about 2M+1 int32 links per vector (M/(M-1) on upper levels) + offsets/levels.
    return n * (4 * dim + 4 * (2 * m + 1) + 12)


def ivf_bytes(n: int, dim: int, nlist: int, code_bytes: int) -> int:
    # codes + int64 ids per vector, float32 centroids, plus scalar-quantizer / PQ tables (small).
    return n * (code_bytes + 8) + 4 * nlist * dim + 4 * 256 * dim


def choose_nlist(n: int) -> int:
    """Inverted lists for n vectors: ≈ 4·√n rounded to a power of two, ≥ 40 training points per list."""
    nlist = 2 ** max(0, round(math.log2(4 * math.sqrt(max(n, 1)))))
    most = max(1, n // IVF_MIN_POINTS_PER_LIST)
    return int(min(nlist, 2 ** int(math.log2(most))))


def pq_choices(dim: int) -> list[int]:
    """Sub-quantizer counts m for IVF-PQ, largest first: divisors of dim with 4 to 64 dims per sub-vector."""
    smallest = max(1, math.ceil(dim / 64))
    return [m for m in range(max(1, dim // 4), smallest - 1, -1) if dim % m == 0] or [max(1, dim // 4)]


# --------------------------------------------------------------------------- candidates


def _flat(n: int, dim: int) -> IndexSpec:
    return IndexSpec("flat", "Flat", METRIC, {}, 0, flat_bytes(n, dim), "")


def _hnsw(n: int, dim: int) -> IndexSpec:
    return IndexSpec("hnsw", f"HNSW{HNSW_M},Flat", METRIC, {"efSearch": HNSW_EF_SEARCH}, 0, hnsw_bytes(n, dim), "",
                     {"efConstruction": HNSW_EF_CONSTRUCTION})


def _ivf(n: int, dim: int, encoding: str) -> IndexSpec:
    nlist = choose_nlist(n)
    code_bytes = 4 * dim if encoding == "Flat" else dim
    return IndexSpec("ivf", f"IVF{nlist},{encoding}", METRIC, {"nprobe": min(IVF_NPROBE, nlist)},
                     _train_size(n, nlist, pq=False), ivf_bytes(n, dim, nlist, code_bytes), "")


def _ivfpq(n: int, dim: int, m: int) -> IndexSpec:
    nlist = choose_nlist(n)
    return IndexSpec("ivfpq", f"IVF{nlist},PQ{m}", METRIC, {"nprobe": min(IVF_NPROBE, nlist)},
                     _train_size(n, nlist, pq=True), ivf_bytes(n, dim, nlist, m), "")


def _train_size(n: int, nlist: int, *, pq: bool) -> int:
    wanted = IVF_MIN_POINTS_PER_LIST * nlist
    if pq:
        wanted = max(wanted, PQ_MIN_TRAIN)
    return int(min(n, wanted, MAX_TRAIN_SIZE))


def _with(spec: IndexSpec, reason: str) -> IndexSpec:
    return IndexSpec(spec.kind, spec.factory, spec.metric, spec.search_params, spec.train_size, spec.estimated_bytes,
                     reason, spec.build_params)


def _fits(spec: IndexSpec, budget: int | None) -> bool:
    return budget is None or spec.estimated_bytes <= budget


def _smallest(n: int, dim: int) -> IndexSpec:
    return _ivfpq(n, dim, pq_choices(dim)[-1])


def _too_small(n: int, dim: int, budget: int, what: str) -> InvalidArgumentError:
    need = _smallest(n, dim)
    return InvalidArgumentError(
        f"memory budget {format_bytes(budget)} is too small for {what} of {n:,} vectors × {dim} dims: the smallest "
        f"index ({need.factory}) needs about {format_bytes(need.estimated_bytes)}; raise --memory-budget to at least "
        f"{format_bytes(need.estimated_bytes, round_up=True)}")


def _pq_fitting(n: int, dim: int, budget: int | None) -> IndexSpec | None:
    for m in pq_choices(dim):
        spec = _ivfpq(n, dim, m)
        if _fits(spec, budget):
            return spec
    return None


def choose_index_spec(n_vectors: int, dim: int, *, kind: str = "auto",
                      memory_budget_bytes: int | None = None) -> IndexSpec:
    """Choose the index for ``n_vectors`` vectors of ``dim`` dims (pure; nothing is built).

    Args:
        n_vectors: vectors to index (> 0).
        dim: their dimension (> 0).
        kind: ``auto`` (the policy in this module's docstring) or one of flat, hnsw, ivf, ivfpq.
            ``ivf`` is IVF-Flat, or IVF-SQ8 when the budget has no room for full vectors;
            ``ivfpq`` takes the largest PQ code (≤ dim/4 bytes) that fits the budget.
        memory_budget_bytes: the most memory the built index may take; None for no limit.

    Returns:
        The IndexSpec, with ``reason`` saying why.

    Raises:
        UnknownNameError: an unknown kind (lists the choices).
        InvalidArgumentError: no vectors, a bad dim, too few vectors for the kind, or a budget too
            small (the message names the minimum).

    Example:
        >>> choose_index_spec(1_000_000, 384).factory
        'HNSW32,Flat'
    """
    if kind not in KINDS:
        raise unknown_name("index kind", kind, KINDS)
    if n_vectors <= 0:
        raise InvalidArgumentError(f"cannot build an index of {n_vectors} vectors; the store is empty — embed some "
                                   "images first")
    if dim <= 0:
        raise InvalidArgumentError(f"vector dim must be > 0, got {dim}")
    if memory_budget_bytes is not None and memory_budget_bytes <= 0:
        raise InvalidArgumentError(f"memory budget must be positive, got {memory_budget_bytes}")
    n, budget = n_vectors, memory_budget_bytes
    size = f"{n:,} × {dim}"
    if kind == "flat":
        spec = _flat(n, dim)
        if not _fits(spec, budget):
            raise InvalidArgumentError(f"a flat index of {size} needs about {format_bytes(spec.estimated_bytes)}, more "
                                       f"than the memory budget {format_bytes(budget or 0)}; use --kind auto or ivfpq, "
                                       "or raise --memory-budget")
        return _with(spec, f"flat asked: exact search over {size} vectors")
    if kind == "hnsw":
        spec = _hnsw(n, dim)
        if not _fits(spec, budget):
            raise InvalidArgumentError(f"an HNSW index of {size} needs about {format_bytes(spec.estimated_bytes)}, more "
                                       f"than the memory budget {format_bytes(budget or 0)}; use --kind auto or ivfpq, "
                                       "or raise --memory-budget")
        return _with(spec, f"hnsw asked: graph index (M={HNSW_M}) over {size} vectors")
    if kind == "ivf":
        for encoding in ("Flat", "SQ8"):
            spec = _ivf(n, dim, encoding)
            if _fits(spec, budget):
                note = "" if encoding == "Flat" else " (8-bit scalar codes: full vectors do not fit the budget)"
                return _with(spec, f"ivf asked: {spec.factory} over {size} vectors{note}")
        raise InvalidArgumentError(f"an IVF index of {size} needs at least {format_bytes(spec.estimated_bytes)} "
                                   f"(IVF-SQ8), more than the memory budget {format_bytes(budget or 0)}; use "
                                   "--kind ivfpq or raise --memory-budget")
    if kind == "ivfpq":
        if n < PQ_MIN_TRAIN:
            raise InvalidArgumentError(f"ivfpq needs at least {PQ_MIN_TRAIN:,} vectors to train its 8-bit product "
                                       f"quantizer, the store has {n:,}; use --kind flat or auto")
        spec = _pq_fitting(n, dim, budget)
        if spec is None:
            raise _too_small(n, dim, budget or 0, "an ivfpq index")
        return _with(spec, f"ivfpq asked: {spec.factory} ({spec.factory.rsplit('PQ', 1)[1]} bytes per vector) over "
                           f"{size} vectors")

    # auto
    preferred = "flat" if n <= FLAT_MAX_VECTORS else "hnsw" if n <= HNSW_MAX_VECTORS else "ivf"
    ladder: list[tuple[str, IndexSpec]] = []
    if preferred == "flat":
        ladder.append(("flat", _flat(n, dim)))
    if preferred in ("flat", "hnsw"):
        ladder.append(("hnsw", _hnsw(n, dim)))
    if n >= IVF_MIN_POINTS_PER_LIST:
        ladder.append(("ivf", _ivf(n, dim, "SQ8")))
    if n >= PQ_MIN_TRAIN:
        pq = _pq_fitting(n, dim, budget)
        if pq is not None:
            ladder.append(("ivfpq", pq))
    why = {
        "flat": f"{n:,} ≤ {FLAT_MAX_VECTORS:,} vectors: exact search is cheap and perfect",
        "hnsw": f"{n:,} ≤ {HNSW_MAX_VECTORS:,} vectors: an HNSW graph gives the best recall per query time",
        "ivf": f"{n:,} > {HNSW_MAX_VECTORS:,} vectors: IVF with 8-bit scalar codes trains on a sample and stays compact",
    }
    first = ladder[0][1]
    for position, (name, spec) in enumerate(ladder):
        if not _fits(spec, budget):
            continue
        if position == 0:
            return _with(spec, f"auto: {why[name]}")
        return _with(spec, f"auto: {first.factory} would need about {format_bytes(first.estimated_bytes)}, more than the "
                           f"memory budget {format_bytes(budget or 0)}; {spec.factory} needs about "
                           f"{format_bytes(spec.estimated_bytes)}")
    if n < PQ_MIN_TRAIN:
        smallest = ladder[-1][1]
        raise InvalidArgumentError(
            f"memory budget {format_bytes(budget or 0)} is too small for {n:,} vectors × {dim} dims: the smallest index "
            f"for this few vectors ({smallest.factory}) needs about {format_bytes(smallest.estimated_bytes)}; raise "
            f"--memory-budget to at least {format_bytes(smallest.estimated_bytes, round_up=True)}")
    raise _too_small(n, dim, budget or 0, "any index")
