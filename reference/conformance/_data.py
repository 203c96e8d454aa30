"""Internal: the scenario data shared by the checks (seeded generators and the oracle logits).

Not public API: each protocol module of :mod:`reference.conformance` builds
its fixed scenarios from these helpers, so every scenario is reproducible
from :data:`SCENARIO_SEED` alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Seed of the scenario data (fixed, so reports are reproducible; --seed only
#: changes the seeds handed to the backend).
SCENARIO_SEED = 20230425


def clustered(rng: np.random.Generator, n: int, k: int, n_clusters: int, spread: float) -> np.ndarray:
    """n points in R^k around n_clusters unit-normal centres (the shape of real embeddings)."""
    centres = rng.standard_normal((n_clusters, k))
    return centres[rng.integers(0, n_clusters, n)] + spread * rng.standard_normal((n, k))


def directions(rng: np.random.Generator, B: int, k: int, norms: Any) -> np.ndarray:
    """B random directions in R^k scaled to the given norms."""
    u = rng.standard_normal((B, k))
    return u / np.linalg.norm(u, axis=1, keepdims=True) * np.asarray(norms, dtype=np.float64).reshape(-1, 1)


def with_duplicates(rng: np.random.Generator, unique: np.ndarray, max_copies: int) -> np.ndarray:
    """Repeat every row 1..max_copies times and shuffle (exact duplicate points)."""
    copies = rng.integers(1, max_copies + 1, unique.shape[0])
    copies[: min(3, copies.size)] = max_copies  # make sure there are duplicates
    rows = np.repeat(np.arange(unique.shape[0]), copies)
    return unique[rng.permutation(rows)].copy()


def near_duplicates(rng: np.random.Generator, unique: np.ndarray, copies: int, rel: float) -> np.ndarray:
    """Every row repeated ``copies`` times, each copy moved by ``rel`` times its norm, shuffled.

    With rel = 1e-9 the copies are distinct in float64 (their logits differ by
    ~1e-9 |q|.|z|) and identical after rounding to float32 (relative spacing
    6e-8): a float32 backend sees exact ties where the float64 oracle sees an order.
    """
    rows = np.repeat(np.arange(unique.shape[0]), copies)
    base = unique[rows]
    scale = rel * np.linalg.norm(base, axis=1, keepdims=True) / np.sqrt(base.shape[1])
    return (base + scale * rng.standard_normal(base.shape))[rng.permutation(rows.size)].copy()


def distinct_rows(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct rows of ``points``, the index of each point's row among them).

    The index is 1-D, shape (n,), on every NumPy the project declares: NumPy 2.0.0's
    ``np.unique(..., axis=0, return_inverse=True)`` returns it as (n, 1), others as (n,).
    """
    uniq, inv = np.unique(points, axis=0, return_inverse=True)
    return uniq, inv.reshape(-1)


def logits(
    points: np.ndarray, queries: np.ndarray, distinct: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """Oracle logits a = Q Z^T in float64, with exactly equal values for duplicate points.

    Computed on the distinct rows of ``points`` and broadcast back, so exact
    duplicates share one bit-identical logit whatever BLAS does with row order.
    ``distinct`` is :func:`distinct_rows` of ``points`` when already known
    (queries processed in blocks).
    """
    uniq, inv = distinct_rows(points) if distinct is None else distinct
    return (queries @ uniq.T)[:, inv]
