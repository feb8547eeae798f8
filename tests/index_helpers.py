"""Helpers for the index and search tests: small embedding stores of seeded, realistic synthetic vectors."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sslsearch.index.synthetic import synthetic_embeddings
from sslsearch.store import StoreWriter

FINGERPRINT = {"id": "enc-test0000000000", "spec": "timm:synthetic", "dim": 32}


def make_store(directory: Path, n: int, dim: int = 32, *, seed: int = 0, ids: np.ndarray | None = None,
               dtype: str = "float32", shard_rows: int = 2_000, encoder: dict | None = None,
               vectors: np.ndarray | None = None) -> np.ndarray:
    """Write a complete store of ``n`` clustered, low-intrinsic-dimension vectors; return them (n, dim).

    ``ids`` default to 0..n-1; paths are ``c<cluster-ish>/<id>.png``.
    """
    if vectors is None:
        vectors = synthetic_embeddings(n, dim, intrinsic_dim=12, n_clusters=20, seed=seed)
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
    fingerprint = dict(encoder or {**FINGERPRINT, "dim": dim})
    with StoreWriter(directory, dim=dim, dtype=dtype, encoder=fingerprint, source_root="/images",
                     shard_rows=shard_rows) as writer:
        for start in range(0, n, 997):
            stop = min(n, start + 997)
            writer.write(ids[start:stop], [f"c{int(i) % 7}/{int(i)}.png" for i in ids[start:stop]], vectors[start:stop])
    stored = vectors.astype(dtype).astype(np.float32)
    return stored


def held_out_queries(n: int, count: int, dim: int = 32, *, seed: int = 0) -> np.ndarray:
    """``count`` vectors from the same distribution as ``make_store(.., n, dim, seed=seed)`` but not in it."""
    return synthetic_embeddings(n + count, dim, intrinsic_dim=12, n_clusters=20, seed=seed)[n:]


def brute_force(queries: np.ndarray, database: np.ndarray, k: int) -> np.ndarray:
    """(q, k) row positions of the k largest inner products (ties by position), by numpy."""
    scores = queries @ database.T
    order = np.lexsort((np.broadcast_to(np.arange(len(database)), scores.shape), -scores), axis=1)
    return order[:, :k]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean |found ∩ truth| / |truth| over rows."""
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


def planted_copies(n: int, dim: int, copies: int, *, seed: int, cluster_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit vectors whose last ``copies`` rows are noisy copies (noise 0.03) of random earlier rows:
    (vectors, the row each copy was made from)."""
    rng = np.random.default_rng(seed)
    vectors = synthetic_embeddings(n, dim, intrinsic_dim=12, n_clusters=20, seed=cluster_seed)
    sources = rng.choice(n - copies, copies, replace=False)
    noisy = vectors[sources] + rng.normal(0, 0.03, (copies, dim)).astype(np.float32)
    vectors[n - copies:] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    return vectors, sources
