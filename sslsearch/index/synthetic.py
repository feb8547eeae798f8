"""Seeded synthetic embeddings that look like real ones: clustered, low intrinsic dimension, L2-normalised.

Isotropic Gaussian blobs flatter IVF (every cluster is a ball) and punish PQ; image embeddings
instead lie near a curved low-dimensional manifold with clusters of very different sizes and
spreads. ``synthetic_embeddings`` draws latent points from a Zipf-sized mixture of anisotropic
clusters in ``intrinsic_dim`` dims, maps them through a fixed random two-layer tanh network into
``dim`` dims, adds a little ambient noise and normalises. Used by tests and benchmarks.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def _generator_params(dim: int, intrinsic_dim: int, n_clusters: int, hidden: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, 0])
    weights = 1.0 / np.arange(1, n_clusters + 1) ** 0.8  # Zipf-like cluster sizes
    return {
        "probabilities": weights / weights.sum(),
        "centers": rng.standard_normal((n_clusters, intrinsic_dim)) * 1.5,
        # per-cluster anisotropic spread: a random linear map per cluster with scales in [0.15, 0.9]
        "spreads": rng.standard_normal((n_clusters, intrinsic_dim, intrinsic_dim)) / np.sqrt(intrinsic_dim)
        * rng.uniform(0.15, 0.9, (n_clusters, 1, 1)),
        "w1": rng.standard_normal((intrinsic_dim, hidden)) / np.sqrt(intrinsic_dim),
        "w2": rng.standard_normal((hidden, dim)) / np.sqrt(hidden),
    }


def iter_synthetic_embeddings(n: int, dim: int = 384, *, intrinsic_dim: int = 48, n_clusters: int = 200,
                              noise: float = 0.15, seed: int = 0, chunk_size: int = 65536) -> Iterator[np.ndarray]:
    """Yield the rows of ``synthetic_embeddings`` chunk by chunk (same values, bounded memory).

    Yields:
        (≤ chunk_size, dim) float32 arrays, L2-normalised rows.
    """
    params = _generator_params(dim, intrinsic_dim, n_clusters, hidden=4 * intrinsic_dim, seed=seed)
    for number, start in enumerate(range(0, n, chunk_size)):
        rows = min(chunk_size, n - start)
        # one stream per quantity, so that the first rows are the same whatever n is
        labels = np.random.default_rng([seed, 1, number]).choice(n_clusters, size=rows, p=params["probabilities"])
        local = np.random.default_rng([seed, 2, number]).standard_normal((rows, 1, intrinsic_dim))
        latent = params["centers"][labels] + (local @ params["spreads"][labels])[:, 0, :]
        hidden = np.tanh(latent @ params["w1"])
        vectors = hidden @ params["w2"] + noise * np.random.default_rng([seed, 3, number]).standard_normal((rows, dim))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        yield vectors.astype(np.float32)


def synthetic_embeddings(n: int, dim: int = 384, *, intrinsic_dim: int = 48, n_clusters: int = 200,
                         noise: float = 0.15, seed: int = 0) -> np.ndarray:
    """(n, dim) float32 L2-normalised vectors with clustered, low-intrinsic-dimension structure.

    Args:
        n: rows.
        dim: ambient dimension.
        intrinsic_dim: dimension of the latent manifold.
        n_clusters: mixture components (sizes follow a Zipf law).
        noise: std of isotropic ambient noise added before normalising.
        seed: the same seed gives the same vectors (and the first rows do not depend on n).

    Example:
        >>> synthetic_embeddings(1000, 64, seed=1).shape
        (1000, 64)
    """
    parts = list(iter_synthetic_embeddings(n, dim, intrinsic_dim=intrinsic_dim, n_clusters=n_clusters, noise=noise,
                                           seed=seed))
    return np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
