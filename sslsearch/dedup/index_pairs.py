"""Near-duplicate pairs of a store too large for memory, through its IVF index: stream, search, re-score exactly.

``graph.similar_pairs`` needs every vector in memory (10M × 384 float32 = 15 GB). Here the store
streams in chunks instead, each chunk is searched in the store's own index (typically an on-disk
IVF built with ``build_index(on_disk=True)``, its lists memory-mapped), and only candidate pairs
are kept: pairs whose indexed similarity is at least ``min_similarity - margin`` (SQ8/PQ codes
shift similarities by up to a few hundredths). A second pass over the store reads the vectors of
the rows in candidate pairs and recomputes every candidate's similarity exactly, so the pairs
returned carry exact similarities. Memory: the index's quantizer, one chunk, the candidate pairs
and, for re-scoring, the vectors of the rows they touch up to a budget (more passes over the store
beyond it) — never N×N, never all vectors at once.

``method="join"`` uses the index's lists as a partition instead of searching it row by row: each
list is joined with its nearest lists by matrix products over a list-order copy of the store
(``cell_join``), exact similarities, no re-scoring pass — far fewer seconds per row where the lists
are long (10M rows in 4,096 lists), at the price of a temporary copy of the store on disk.
"""
from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np

from ..errors import InvalidArgumentError, StoreError, unknown_name
from ..progress import progress_bar
from ..index.spec import parse_memory
from ..store import EmbeddingStore, manifest_hash
from .cell_join import DEFAULT_CELL_NEIGHBORS, cell_join_pairs
from .graph import DEFAULT_NEIGHBORS, SimilarPairs, _canonical

METHODS = ("search", "join")
DEFAULT_METHOD = "search"
DEFAULT_MARGIN = 0.03  # below the floor that candidates may score in the index (8-bit codes: a few hundredths)
CHUNK_ROWS = 16_384
PAIR_BLOCK = 65_536  # pairs re-scored at once
RESCORE_BYTES = 2 * 2**30  # default memory for the vectors being re-scored (without a memory_budget)


def similar_pairs_from_index(store_dir: str | os.PathLike[str], index_dir: str | os.PathLike[str],
                             min_similarity: float, *, neighbors: int = DEFAULT_NEIGHBORS, nprobe: int | None = None,
                             margin: float = DEFAULT_MARGIN, chunk_rows: int = CHUNK_ROWS,
                             memory_budget: str | int | None = None, progress: bool | None = None,
                             method: str = DEFAULT_METHOD, cell_neighbors: int = DEFAULT_CELL_NEIGHBORS,
                             work_dir: str | os.PathLike[str] | None = None,
                             lists: Sequence[int] | None = None) -> SimilarPairs:
    """The pairs of store rows with cosine similarity >= ``min_similarity``, found through the store's index.

    Args:
        store_dir: the embedding store; its ids must be 0..n-1 in store order (what ``embed`` writes).
        index_dir: an index built from exactly this store (the card's manifest hash is checked).
        min_similarity: keep pairs at or above this cosine similarity, in (-1, 1].
        neighbors: neighbours searched per row (the row itself left out).
        nprobe: ``search``: inverted lists visited per query (IVF); default: the card's tuned value.
        margin: ``search``: candidates are pairs within this of the floor in the index's (approximate) scores.
        chunk_rows: store rows searched at once.
        memory_budget: passed to ``load_index`` (a larger IVF index is memory-mapped); half of it
            (default 1 GiB) holds the vectors being re-scored — more passes over the store when the
            rows in candidate pairs do not fit.
        progress: progress bar on stderr.
        method: ``search`` (each row searched in the index, candidates re-scored exactly) or
            ``join`` (each inverted list joined with its ``cell_neighbors`` nearest lists by matrix
            products over a list-order copy of the store, exact similarities; ``cell_join``; IVF only).
        cell_neighbors: ``join``: nearby lists each list is joined with.
        work_dir: ``join``: where the temporary list-order copy of the store goes (rows × dim × the
            store's bytes per value; default: the system temp folder).
        lists: ``join``: join only the rows of these inverted lists (one machine's part, or a
            measured share of the cost); default all.

    Returns:
        ``SimilarPairs`` (method ``"index"``, or ``"index-join"`` with the join's stats in ``details``): row positions = store ids, exact similarities, unique
        pairs sorted by (first, second); ``cells`` is the index's number of lists (0 if not IVF).

    Raises:
        StoreError: the index was built from another store, or the store's ids are not 0..n-1.
        InvalidArgumentError: ``neighbors < 1``, a floor outside (-1, 1], a negative margin, an
            unknown method, or ``join`` with an index that is not IVF.

    Example:
        >>> pairs = similar_pairs_from_index("emb/", "idx/", 0.95)  # doctest: +SKIP
    """
    import faiss

    from ..index.search import apply_search_params, load_index

    if neighbors < 1:
        raise InvalidArgumentError(f"neighbors must be >= 1, got {neighbors}")
    if not -1 < min_similarity <= 1:
        raise InvalidArgumentError(f"min_similarity must be in (-1, 1], got {min_similarity}")
    if margin < 0:
        raise InvalidArgumentError(f"margin must be >= 0, got {margin}")
    if method not in METHODS:
        raise unknown_name("index dedup method", method, METHODS)
    started = time.perf_counter()
    store = EmbeddingStore.open(store_dir)
    index = load_index(index_dir, memory_budget=memory_budget)
    if index.card.store.get("manifest_sha256") != manifest_hash(store_dir):
        raise StoreError(f"the index {index_dir} was built from {index.card.store.get('path')}, not from the store "
                         f"{store_dir} as it is now; rebuild it with `sslsearch index build {store_dir} --out ...`")
    raw = index.faiss_index
    cells = 0
    try:
        ivf = faiss.extract_index_ivf(raw)
        cells = int(ivf.nlist)
        if nprobe is not None:
            apply_search_params(raw, {"nprobe": int(nprobe)})
    except RuntimeError:  # not an IVF index (flat, HNSW): searched as it is
        if method == "join":
            raise InvalidArgumentError(f"method 'join' joins the inverted lists of an IVF index; {index_dir} holds a "
                                       f"{index.card.factory} index — use method='search'") from None
    budget = parse_memory(memory_budget) if memory_budget is not None else RESCORE_BYTES
    if method == "join":
        first, second, similarity, stats = cell_join_pairs(store, ivf, min_similarity, neighbors=neighbors,
                                                           cell_neighbors=cell_neighbors, memory_budget_bytes=budget,
                                                           work_dir=work_dir, chunk_rows=chunk_rows,
                                                           progress=progress, lists=lists)
        return SimilarPairs(first, second, similarity, float(min_similarity), int(neighbors), "index-join", "cpu",
                            time.perf_counter() - started, cells, details=stats.to_dict())
    k = min(neighbors + 1, len(store))
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    expected = 0
    with progress_bar(len(store), "dedup (index)", unit="vec", enabled=progress) as bar:
        for batch in store.iter_batches(chunk_rows):
            if not np.array_equal(batch.ids, np.arange(expected, expected + len(batch.ids))):
                raise StoreError(f"store {store_dir} ids are not 0..n-1 in store order (row {expected} has id "
                                 f"{int(batch.ids[0])}); similar_pairs_from_index needs a store written by "
                                 "`sslsearch embed`")
            expected += len(batch.ids)
            scores, found = raw.search(batch.embeddings, k)
            queries = np.broadcast_to(batch.ids[:, None], found.shape)
            keep = (found >= 0) & (found != queries) & (scores >= min_similarity - margin)
            parts.append(_canonical(queries[keep], found[keep], scores[keep]))  # a chunk's repeats dropped early
            bar.update(len(batch.ids))
    first, second, _ = _canonical(*[np.concatenate([p[i] for p in parts]) if parts else np.zeros(0)
                                    for i in range(3)])
    del parts
    similarity = _exact_similarities(store, first, second, chunk_rows, budget // 2)
    keep = similarity >= min_similarity
    return SimilarPairs(first[keep], second[keep], similarity[keep], float(min_similarity), int(neighbors), "index",
                        "cpu", time.perf_counter() - started, cells)


def _exact_similarities(store: EmbeddingStore, first: np.ndarray, second: np.ndarray, chunk_rows: int,
                        vector_bytes: int) -> np.ndarray:
    """Inner products of the stored vectors of each (first, second) pair, reading only the rows involved.

    The rows in pairs are cut into groups whose vectors (kept in the store's dtype, so the values
    are exactly the stored ones) fit ``vector_bytes`` per two groups; one pass over the store per
    pair of groups scores the pairs between them: one pass when everything fits, g(g+1)/2 for g groups.
    """
    similarity = np.empty(len(first), np.float32)
    if len(first) == 0:
        return similarity
    rows = np.union1d(first, second)
    dtype = np.float16 if store.manifest.dtype == "float16" else np.float32
    per_group = max(1, vector_bytes // (2 * store.dim * np.dtype(dtype).itemsize))
    groups = -(-len(rows) // per_group)
    group_of_first = np.searchsorted(rows, first) // per_group
    group_of_second = np.searchsorted(rows, second) // per_group
    for g in range(groups):
        for h in range(g, groups):
            wanted = np.union1d(rows[g * per_group:(g + 1) * per_group], rows[h * per_group:(h + 1) * per_group])
            vectors = np.zeros((len(wanted), store.dim), dtype)
            for batch in store.iter_batches(chunk_rows):
                lo, hi = np.searchsorted(wanted, [batch.ids[0], batch.ids[-1] + 1])
                if hi > lo:
                    vectors[lo:hi] = batch.embeddings[wanted[lo:hi] - batch.ids[0]]
            mine = np.flatnonzero(((group_of_first == g) & (group_of_second == h))
                                  | ((group_of_first == h) & (group_of_second == g)))
            for start in range(0, len(mine), PAIR_BLOCK):  # bounded temporaries: two (block, dim) gathers
                pairs = mine[start:start + PAIR_BLOCK]
                a = vectors[np.searchsorted(wanted, first[pairs])].astype(np.float32)
                b = vectors[np.searchsorted(wanted, second[pairs])].astype(np.float32)
                similarity[pairs] = np.einsum("ij,ij->i", a, b)
            del vectors
    return similarity
