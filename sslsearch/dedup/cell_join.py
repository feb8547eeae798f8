"""Near-duplicate pairs by joining an IVF index's cells: each list with itself and its nearby lists, as GEMMs.

``index_pairs`` searches the index once per store row (SQ8 scanning, a few GFLOP/s on a CPU). Here
the index's inverted lists are used as a partition of the store instead:

1. one pass over the store writes every vector, exactly as stored, into a scratch file in *list
   order* (through bucket files when the copy does not fit the memory budget) (list 0's members, then list
   1's, ...), so that a list's vectors are one contiguous slice read from disk;
2. a graph of lists: each centroid's ``cell_neighbors`` nearest centroids (the quantizer's own
   metric, inner product);
3. for each list c, its members X are multiplied with its own members and with the members of
   each nearby list c' (dense float32 GEMMs, an order of magnitude more flops per second than
   scanning codes). A row x of c can only have a partner y of similarity >= f in c' when x lies
   within ‖x - y‖ <= sqrt(|x|² + max|y|² - 2f) of the boundary between the two cells (y is
   assigned to c', so ⟨y, μc - μc'⟩ <= 0, while ⟨x, μc - μc'⟩ >= 0): a row is multiplied only with
   the nearby lists whose boundary it is that close to, and with only the rows y of c' that are
   within reach from their side (‖x - y‖ >= hx + hy, the two distances to the boundary) — an exact
   pruning, no pair is lost by it;
4. each row keeps its ``neighbors`` most similar partners at or above the floor, as the search
   path does; similarities are exact (the stored vectors, not the codes), so no re-scoring pass.

What is missed: partners in lists outside a list's ``cell_neighbors`` nearest (a row close to a
far boundary). Memory: the list of ids (8 bytes a row), the row → list-order map (8 bytes a row),
one list and its neighbours at a time (read from the scratch file, which is not memory-mapped),
the candidate pairs (12 bytes each, at most ``neighbors`` per row); never all vectors.
Disk: the scratch copy, rows × dim × the store's bytes per value, deleted at the end.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import InvalidArgumentError, StoreError
from ..progress import progress_bar
from ..store import EmbeddingStore
from .graph import _canonical, _concat

DEFAULT_CELL_NEIGHBORS = 32  # nearby lists a list is joined with (pruned per row by the boundary test)
GROUP_ROWS = 1024  # nearby partners fewer than this are multiplied together (a product per list costs overhead)
SLACK = 1e-3  # added to the boundary radius: float32 rounding in faiss's assignment and here
SCRATCH_NAME = "list-order.vectors"


@dataclasses.dataclass(frozen=True)
class JoinStats:
    """What a cell join did.

    Attributes:
        cells: inverted lists (non-empty ones joined).
        cell_neighbors: nearby lists per list.
        copy_buckets: pieces the list-order copy was assembled in (1: in memory; more: through
            bucket files on disk, within the memory budget) — one pass over the store either way.
        copy_seconds: time of the copy.
        join_seconds: time of the products.
        flops: multiply-adds × 2 of the products.
        pruned_share: share of (row, nearby list) products skipped by the boundary test.
        partner_pruned_share: share of a nearby list's rows left out of its product by the same
            test from their side (only rows within reach of the boundary can be partners).
        candidates: pairs kept before removing the ones found from both ends.
        lists_joined: lists whose rows were joined (all, unless ``lists`` chose some).
        rows_joined: rows in those lists.
    """

    cells: int
    cell_neighbors: int
    copy_buckets: int
    copy_seconds: float
    join_seconds: float
    flops: float
    pruned_share: float
    partner_pruned_share: float
    candidates: int
    lists_joined: int
    rows_joined: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def cell_join_pairs(store: EmbeddingStore, ivf: Any, min_similarity: float, *, neighbors: int,
                    cell_neighbors: int = DEFAULT_CELL_NEIGHBORS, memory_budget_bytes: int = 2 * 2**30,
                    work_dir: str | os.PathLike[str] | None = None, chunk_rows: int = 16_384,
                    progress: bool | None = None, lists: Sequence[int] | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, JoinStats]:
    """(first, second, similarity, stats): each row's ``neighbors`` most similar partners >= the floor, by a cell join.

    Args:
        store: the embedding store the index was built from; ids 0..n-1 in store order.
        ivf: the faiss IVF index (``faiss.extract_index_ivf`` of the loaded index), inner product.
        min_similarity: the floor (cosine similarity for normalised vectors).
        neighbors: partners kept per row (its most similar ones at or above the floor).
        cell_neighbors: nearby lists joined with each list (>= 0; 0 joins each list with itself).
        memory_budget_bytes: bounds the buffer of the list-order copy (half of it; assembled
            through bucket files on disk when the copy does not fit) — the join itself holds one list and its
            neighbours and each row's best partners.
        work_dir: where the scratch copy goes (default: the system temp folder); removed at the end.
        chunk_rows: store rows read at once.
        progress: progress bars on stderr.
        lists: join only the rows of these lists (with all their nearby lists): a share of the
            work, e.g. one machine's part, or a measured sample of the cost. Default: every list.

    Returns:
        Unique pairs ``first < second`` (int64 store ids) sorted by (first, second), their exact
        float32 similarities, and ``JoinStats``.

    Raises:
        InvalidArgumentError: a negative ``cell_neighbors``, ``neighbors < 1``, ``lists`` outside
            0..nlist-1, or an index that is not inner product.
        StoreError: store ids that are not 0..n-1, or an index whose lists do not hold every row once.
    """
    import faiss

    if cell_neighbors < 0:
        raise InvalidArgumentError(f"cell_neighbors must be >= 0, got {cell_neighbors}")
    if neighbors < 1:
        raise InvalidArgumentError(f"neighbors must be >= 1, got {neighbors}")
    if ivf.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise InvalidArgumentError("the cell join needs an inner-product IVF index (what `sslsearch index build` "
                                   "writes); rebuild the index, or use method='search'")
    chosen = range(int(ivf.nlist)) if lists is None else sorted({int(c) for c in lists})
    if chosen and (chosen[0] < 0 or chosen[-1] >= ivf.nlist):
        raise InvalidArgumentError(f"lists must be in 0..{ivf.nlist - 1}, got {chosen[0]}..{chosen[-1]}")
    n, dim = len(store), store.dim
    ids, starts = list_ids(ivf)
    if len(ids) != n or (n and (ids.min() < 0 or ids.max() >= n)):
        raise StoreError(f"the index's lists hold {len(ids):,} ids, not the store's {n:,} rows 0..{n - 1}; rebuild "
                         "the index from this store")
    order = np.empty(n, np.int64)  # store id → position in list order
    order[ids] = np.arange(n)
    dtype = np.float16 if store.manifest.dtype == "float16" else np.float32
    with _scratch(work_dir) as folder:
        path = folder / SCRATCH_NAME
        tick = time.perf_counter()
        buckets, max_norm = _write_list_order(store, order, path, dtype, memory_budget_bytes // 2, chunk_rows, progress)
        copy_seconds = time.perf_counter() - tick
        tick = time.perf_counter()
        centroids = np.ascontiguousarray(ivf.quantizer.reconstruct_n(0, ivf.nlist), dtype=np.float32)
        graph = _centroid_graph(centroids, cell_neighbors)
        with _Rows(path, dtype, dim) as vectors:
            joined = _join(vectors, ids, starts, graph, centroids, min_similarity, neighbors, max_norm, progress,
                           chosen)
    first, second, similarity, flops, pruned, partners_pruned, candidates, rows_joined = joined
    stats = JoinStats(int(ivf.nlist), int(graph.shape[1]), buckets, round(copy_seconds, 3),
                      round(time.perf_counter() - tick, 3), float(flops), round(pruned, 4), round(partners_pruned, 4),
                      int(candidates), len(chosen), int(rows_joined))
    return first, second, similarity, stats


def list_ids(ivf: Any) -> tuple[np.ndarray, np.ndarray]:
    """The ids of every list, concatenated in list order, and the lists' start offsets (nlist + 1)."""
    import faiss

    invlists = ivf.invlists
    sizes = np.array([invlists.list_size(c) for c in range(ivf.nlist)], np.int64)
    starts = np.zeros(ivf.nlist + 1, np.int64)
    np.cumsum(sizes, out=starts[1:])
    ids = np.empty(int(starts[-1]), np.int64)
    for c in np.flatnonzero(sizes):
        pointer = invlists.get_ids(int(c))
        ids[starts[c]:starts[c + 1]] = faiss.rev_swig_ptr(pointer, int(sizes[c]))
        invlists.release_ids(int(c), pointer)
    return ids, starts


@contextlib.contextmanager
def _scratch(work_dir: str | os.PathLike[str] | None) -> Iterator[Path]:
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="sslsearch-join-", dir=work_dir))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write_list_order(store: EmbeddingStore, order: np.ndarray, path: Path, dtype: Any, buffer_bytes: int,
                      chunk_rows: int, progress: bool | None) -> tuple[int, float]:
    """Write the store's vectors to ``path`` in list order in one pass over the store; (buckets, largest row norm).

    When the copy fits ``buffer_bytes`` it is assembled in memory. Otherwise the pass appends each
    row, with its list-order position, to the bucket file of its position range (buckets of half
    the buffer: sequential writes), then each bucket is read back, put in order and appended to
    ``path`` — one read of the store, twice the copy's size in extra disk traffic, memory bounded.
    """
    n, dim = len(order), store.dim
    row_bytes = dim * np.dtype(dtype).itemsize
    per_bucket = max(1, n) if n * row_bytes <= buffer_bytes else max(1, buffer_bytes // (2 * row_bytes))
    buckets = max(1, -(-n // per_bucket))
    single = buckets == 1
    max_norm = 0.0
    folder = path.parent / "buckets"
    folder.mkdir(exist_ok=True)
    buffer = np.empty((n, dim), dtype) if single else None
    with contextlib.ExitStack() as files, progress_bar(n, "dedup join: list-order copy", unit="vec",
                                                       enabled=progress) as bar:
        parts = [] if single else [(files.enter_context(open(folder / f"{b}.pos", "wb")),
                                    files.enter_context(open(folder / f"{b}.vec", "wb"))) for b in range(buckets)]
        expected = 0
        for batch in store.iter_batches(chunk_rows):
            if not np.array_equal(batch.ids, np.arange(expected, expected + len(batch.ids))):
                raise StoreError(f"store {store.uri} ids are not 0..n-1 in store order (row {expected} has id "
                                 f"{int(batch.ids[0])}); the cell join needs a store written by `sslsearch embed`")
            expected += len(batch.ids)
            where = order[batch.ids]
            vectors = np.asarray(batch.embeddings, dtype)
            if single:
                buffer[where] = vectors  # type: ignore[index]
            else:
                bucket = where // per_bucket
                for b in np.unique(bucket):
                    mine = bucket == b
                    parts[b][0].write(where[mine].astype(np.int64).tobytes())
                    parts[b][1].write(vectors[mine].tobytes())
            norms = np.linalg.norm(vectors.astype(np.float32), axis=1)
            max_norm = max(max_norm, float(norms.max(initial=0.0)))
            bar.update(len(batch.ids))
    with open(path, "wb") as handle:
        if single:
            handle.write(buffer.tobytes())  # type: ignore[union-attr]
        for b in range(0 if single else buckets):
            lo, hi = b * per_bucket, min(n, (b + 1) * per_bucket)
            where = np.fromfile(folder / f"{b}.pos", np.int64)
            rows = np.fromfile(folder / f"{b}.vec", dtype).reshape(-1, dim)
            ordered = np.empty((hi - lo, dim), dtype)
            ordered[where - lo] = rows
            del rows
            handle.write(ordered.tobytes())
            (folder / f"{b}.pos").unlink()
            (folder / f"{b}.vec").unlink()
    shutil.rmtree(folder, ignore_errors=True)
    return buckets, max_norm


class _Rows:
    """Rows lo..hi of the list-order copy as float32, read (not memory-mapped: the process maps nothing it has read)."""

    def __init__(self, path: Path, dtype: Any, dim: int) -> None:
        self.path, self.dtype, self.dim = path, np.dtype(dtype), dim
        self.row_bytes = self.dtype.itemsize * dim

    def __enter__(self) -> "_Rows":
        self.handle = open(self.path, "rb")
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()

    def read(self, lo: int, hi: int) -> np.ndarray:
        self.handle.seek(lo * self.row_bytes)
        raw = np.fromfile(self.handle, self.dtype, (hi - lo) * self.dim)
        return raw.reshape(hi - lo, self.dim).astype(np.float32)


def _centroid_graph(centroids: np.ndarray, cell_neighbors: int) -> np.ndarray:
    """(nlist, m) the nearest other centroids of each centroid (rows of ``centroids``) by inner product (-1 where
    fewer)."""
    import faiss

    nlist = len(centroids)
    m = min(cell_neighbors, nlist - 1)
    if m <= 0:
        return np.zeros((nlist, 0), np.int64)
    flat = faiss.IndexFlatIP(centroids.shape[1])
    flat.add(centroids)
    _, found = flat.search(centroids, m + 1)
    graph = np.full((nlist, m), -1, np.int64)
    for c in range(nlist):  # drop the centroid itself (usually first; not always with duplicate centroids)
        others = found[c][(found[c] != c) & (found[c] >= 0)][:m]
        graph[c, :len(others)] = others
    return graph


def _join(vectors: "_Rows", ids: np.ndarray, starts: np.ndarray, graph: np.ndarray, centroids: np.ndarray,
          floor: float, neighbors: int, max_norm: float, progress: bool | None, chosen: Sequence[int]
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float, float, int, int]:
    """Each list's rows: their ``neighbors`` best partners in the list and in the nearby lists they need (faiss blocks)."""
    import faiss

    buckets = _Buckets(len(ids), np.int32 if len(ids) < 2**31 else np.int64)
    flops = 0.0
    tests = skipped = partner_tests = partner_skipped = 0
    k = neighbors
    total = int(sum(starts[c + 1] - starts[c] for c in chosen))
    with progress_bar(total, "dedup join: lists", unit="vec", enabled=progress) as bar:
        for c in chosen:
            lo, hi = int(starts[c]), int(starts[c + 1])
            if hi == lo:
                continue
            x = vectors.read(lo, hi)
            # own list: k + 1 nearest, the row itself dropped
            scores, found = faiss.knn(x, x, min(k + 1, len(x)), faiss.METRIC_INNER_PRODUCT)
            flops += 2.0 * len(x) * len(x) * x.shape[1]
            found = np.where(found == np.arange(len(x))[:, None], -1, found)
            best_scores, best_ids = [_pad(scores, found >= 0, k + 1)], [_pad(np.where(found >= 0, ids[lo + found], -1),
                                                                             found >= 0, k + 1, fill=-1)]
            near = [int(o) for o in graph[c] if o >= 0 and starts[o + 1] > starts[o]]
            if near:  # the rows of c close enough to the boundary with each nearby list to have a partner there
                normal = centroids[c][None, :] - centroids[near]
                length = np.linalg.norm(normal, axis=1)
                margin = (x @ normal.T) / np.maximum(length, 1e-12)[None, :]
                radius = np.sqrt(np.maximum(np.einsum("ij,ij->i", x, x) + max_norm**2 - 2 * floor, 0.0)) + SLACK
                needs = (margin <= radius[:, None]) | (length[None, :] <= 1e-12)
                tests += needs.size
                skipped += int(needs.size - needs.sum())
                pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
                for j, o in enumerate(near):
                    which = np.flatnonzero(needs[:, j])
                    if not len(which):
                        continue
                    y = vectors.read(int(starts[o]), int(starts[o + 1]))
                    y_ids = ids[starts[o]:starts[o + 1]]
                    if length[j] > 1e-12:  # and the rows of o close enough to the same boundary: ‖x - y‖ >= hx + hy
                        reach = float((radius[which] - margin[which, j]).max()) + SLACK
                        keep = (y @ -normal[j]) / length[j] <= reach
                        partner_tests += len(y)
                        partner_skipped += int(len(y) - keep.sum())
                        y, y_ids = y[keep], y_ids[keep]
                    if len(y):
                        pieces.append((which, y, y_ids))
                for group in _groups(pieces):  # small pieces go together: fewer, larger products
                    which = np.unique(np.concatenate([p[0] for p in group]))
                    y = np.concatenate([p[1] for p in group])
                    y_ids = np.concatenate([p[2] for p in group])
                    scores, found = faiss.knn(x[which], y, min(k, len(y)), faiss.METRIC_INNER_PRODUCT)
                    flops += 2.0 * len(which) * len(y) * x.shape[1]
                    block_scores = np.full((len(x), k + 1), -np.inf, np.float32)
                    block_ids = np.full((len(x), k + 1), -1, np.int64)
                    block_scores[which, :found.shape[1]] = np.where(found >= 0, scores, -np.inf)
                    block_ids[which, :found.shape[1]] = np.where(found >= 0, y_ids[np.maximum(found, 0)], -1)
                    best_scores.append(block_scores)
                    best_ids.append(block_ids)
            scores, partners = np.concatenate(best_scores, axis=1), np.concatenate(best_ids, axis=1)
            if scores.shape[1] > k:  # each row's k best over its blocks
                top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
                scores, partners = np.take_along_axis(scores, top, 1), np.take_along_axis(partners, top, 1)
            rows, cols = np.nonzero((scores >= floor) & (partners >= 0))
            if len(rows):
                buckets.add(ids[lo + rows], partners[rows, cols], scores[rows, cols])
            bar.update(hi - lo)
    first, second, similarity = buckets.unique()
    return (first, second, similarity, flops, skipped / tests if tests else 0.0,
            partner_skipped / partner_tests if partner_tests else 0.0, buckets.count, total)


def _groups(pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[list[tuple[np.ndarray, ...]]]:
    """Consecutive (rows, partners, partner ids) pieces in groups of at least ``GROUP_ROWS`` partners (the last may be
    smaller)."""
    groups: list[list[tuple[np.ndarray, ...]]] = []
    current: list[tuple[np.ndarray, ...]] = []
    rows = 0
    for piece in pieces:
        current.append(piece)
        rows += len(piece[1])
        if rows >= GROUP_ROWS:
            groups.append(current)
            current, rows = [], 0
    if current:
        groups.append(current)
    return groups


def _pad(values: np.ndarray, valid: np.ndarray, width: int, fill: float = -np.inf) -> np.ndarray:
    """(rows, width): ``values`` where ``valid``, ``fill`` elsewhere and in the columns beyond theirs."""
    out = np.full((values.shape[0], width), fill, np.float32 if fill == -np.inf else np.int64)
    out[:, :values.shape[1]] = np.where(valid, values, fill)
    return out


class _Buckets:
    """Candidate pairs as (low, high) ids, kept in id-range buckets so that removing repeats sorts one at a time."""

    def __init__(self, n: int, id_type: Any, count: int = 64) -> None:
        self.size = max(1, -(-n // count))
        self.id_type = id_type
        self.parts: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [[] for _ in range(-(-n // self.size) or 1)]
        self.count = 0

    def add(self, a: np.ndarray, b: np.ndarray, similarity: np.ndarray) -> None:
        low, high = np.minimum(a, b), np.maximum(a, b)
        bucket = low // self.size
        for g in np.unique(bucket):
            mine = bucket == g
            self.parts[int(g)].append((low[mine].astype(self.id_type), high[mine].astype(self.id_type),
                                       similarity[mine]))
        self.count += len(low)

    def unique(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for g, parts in enumerate(self.parts):  # one bucket sorted at a time (``graph._canonical``)
            if parts:
                out.append(_canonical(*(np.concatenate([p[i] for p in parts]).astype(np.int64 if i < 2 else np.float32)
                                        for i in range(3))))
                self.parts[g] = []
        return _concat(out)
