"""Internal: the scenario data shared by the checks (seeded generators and the oracle logits).

Not public API: each protocol module of :mod:`reference.conformance` builds
its fixed scenarios from these helpers, so every scenario is reproducible
from :data:`SCENARIO_SEED` alone. The checks that accept caller-given
scenarios validate them here too (:func:`scenario_label`,
:func:`scenario_arrays`), before the backend is called, with messages naming
the scenario (``scenarios[i] ('name')``) and the field.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reference._validation import as_float_array

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


def scenario_label(sc: Any, i: int, kind: type, *, seq: str = "scenarios", name: str = "name") -> str:
    """Validate a caller-given scenario's class, name and ``about``; return its label for messages.

    ``sc`` must be a ``kind`` instance whose field ``name`` is a non-empty str
    and whose ``about`` is a str. The label is ``seq[i] ('its name')``, e.g.
    ``scenarios[1] ('bad')`` (or ``script[2] ('move')`` for a dynamic step,
    named by its op); every message about the scenario's fields starts with it.

    Raises
    ------
    ValueError
        Naming ``seq[i]`` and the expected class, or the label and the field.
    """
    if not isinstance(sc, kind):
        raise ValueError(f"{seq}[{i}]: expected a {kind.__name__}, got {type(sc).__name__}")
    value = getattr(sc, name)
    label = f"{seq}[{i}] ({value!r})"
    if not isinstance(value, str) or not value:
        raise ValueError(f"{label}.{name}: expected a non-empty str, got {value!r}")
    if not isinstance(sc.about, str):
        raise ValueError(f"{label}.about: expected a str, got {type(sc.about).__name__}")
    return label


def scenario_arrays(sc: Any, i: int, kind: type) -> tuple[str, np.ndarray, np.ndarray]:
    """Validate the common fields of a caller-given scenario: (its label, points, queries as float64).

    ``sc`` must be a ``kind`` instance with a non-empty str ``name``, a str
    ``about`` (:func:`scenario_label`), ``points`` a finite non-empty (N, d)
    array and ``queries`` a finite non-empty (B, d) array of the same d. Shared
    by the checks that accept caller-given scenarios of points and queries
    (top-k, sampler, bracket), so that a malformed one is refused before the
    backend is called.

    Raises
    ------
    ValueError
        Naming the scenario (``scenarios[i]`` and its name) and the field.
    """
    label = scenario_label(sc, i, kind)
    points = as_float_array(sc.points, f"{label}.points", ndim=2, dtype=np.float64)
    queries = as_float_array(sc.queries, f"{label}.queries", shape=(None, points.shape[1]), dtype=np.float64)
    return label, points, queries
