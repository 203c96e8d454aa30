"""Hypothesis strategies for adversarial target sets (tree index, P1-P9).

Other test modules import these::

    from proofs.strategies_tree import point_sets, tree_params, make_point_set

Structural choices (kind of set, N, k, dtype, scale) are drawn by Hypothesis;
the arrays come from a NumPy generator seeded by a drawn integer (fast to
generate, reproducible, and the seed shrinks towards 0).

Kinds of point set (``KINDS``), each a known way to hurt a tree builder or a
bound:

``uniform``      i.i.d. uniform in a box (no cluster structure).
``clustered``    a Gaussian mixture with well separated, tight clusters.
``duplicates``   few distinct points, each repeated many times (k-means
                 cannot separate them; radii are exactly 0).
``all_equal``    every point identical (the extreme of ``duplicates``).
``collinear``    points on one line (rank-1; ties in projections).
``single``       exactly one target.
``huge``         a tight cluster far from the origin (norms ~1e3-1e4, spread
                 ~1e-2..1): the cancellation-prone case for
                 ``||z - r||`` and for ``<q, z> - <q, r>``.
``huge_spread``  points spread over a ball of radius ~1e3-1e4.
``grid``         integer lattice points (many exact ties in distances and logits).

Any kind can come out as float32 or float64 (``DTYPES``) and in dimension 1.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

__all__ = [
    "tree_with_empty_nodes",
    "DTYPES",
    "KINDS",
    "make_point_set",
    "point_sets",
    "query_for",
    "seeds",
    "tree_params",
]

KINDS = ("uniform", "clustered", "duplicates", "all_equal", "collinear", "single", "huge", "huge_spread", "grid")
DTYPES = (np.float32, np.float64)

seeds = st.integers(min_value=0, max_value=2**32 - 1)


def make_point_set(kind: str, n: int, dim: int, seed: int, dtype: type = np.float64) -> np.ndarray:
    """A deterministic point set of the given kind (see module docstring).

    Parameters
    ----------
    kind : str
        One of :data:`KINDS`.
    n, dim : int
        Number of points (``single`` always returns 1) and dimension (>= 1).
    seed : int
    dtype : float32 or float64

    Returns
    -------
    numpy.ndarray (n, dim)
    """
    rng = np.random.default_rng(seed)
    if kind == "single":
        n = 1
    if kind == "uniform":
        z = rng.uniform(-1.0, 1.0, size=(n, dim))
    elif kind == "clustered":
        c = int(rng.integers(1, 6))
        centers = rng.normal(scale=5.0, size=(c, dim))
        z = centers[rng.integers(0, c, size=n)] + rng.normal(scale=0.05, size=(n, dim))
    elif kind == "duplicates":
        c = int(rng.integers(1, 4))
        distinct = rng.normal(size=(c, dim))
        z = distinct[rng.integers(0, c, size=n)]
    elif kind == "all_equal":
        z = np.tile(rng.normal(size=(1, dim)), (n, 1))
    elif kind == "collinear":
        direction = rng.normal(size=dim)
        direction /= max(np.linalg.norm(direction), 1e-12)
        t = rng.choice([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0], size=n) if rng.random() < 0.5 else rng.normal(size=n)
        z = rng.normal(size=(1, dim)) + t[:, None] * direction
    elif kind == "single":
        z = rng.normal(size=(1, dim)) * 10.0 ** rng.uniform(-2, 3)
    elif kind == "huge":
        offset = rng.normal(size=dim)
        offset *= 10.0 ** rng.uniform(3, 4) / max(np.linalg.norm(offset), 1e-12)
        z = offset + rng.normal(scale=10.0 ** rng.uniform(-2, 0), size=(n, dim))
    elif kind == "huge_spread":
        z = rng.normal(size=(n, dim)) * 10.0 ** rng.uniform(3, 4)
    elif kind == "grid":
        z = rng.integers(-2, 3, size=(n, dim)).astype(np.float64)
    else:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    return np.ascontiguousarray(z, dtype=dtype)


@st.composite
def point_sets(
    draw,
    *,
    min_n: int = 1,
    max_n: int = 120,
    min_dim: int = 1,
    max_dim: int = 6,
    kinds: tuple[str, ...] = KINDS,
    dtypes: tuple[type, ...] = DTYPES,
    dim: int | None = None,
) -> np.ndarray:
    """An adversarial target set (N, k): a drawn kind, size, dimension and dtype.

    ``dim`` fixes k (e.g. for points to insert into an existing tree). The
    ``single`` kind is skipped when ``min_n > 1``.
    """
    if min_n > 1:
        kinds = tuple(k for k in kinds if k != "single")
    kind = draw(st.sampled_from(kinds))
    n = draw(st.integers(min_n, max_n))
    k = dim if dim is not None else draw(st.integers(min_dim, max_dim))
    dtype = draw(st.sampled_from(dtypes))
    return make_point_set(kind, n, k, draw(seeds), dtype)


@st.composite
def tree_params(draw, *, max_branching: int = 5, max_leaf_size: int = 8) -> dict:
    """Keyword arguments for ``Tree.build``: small branching and leaves, so that
    small sets still give trees several levels deep."""
    return dict(
        branching=draw(st.integers(2, max_branching)),
        leaf_size=draw(st.integers(1, max_leaf_size)),
        seed=draw(st.integers(0, 2**16)),
    )


def query_for(points: np.ndarray, rng: np.random.Generator, *, logit_scale: float = 30.0) -> np.ndarray:
    """A query q with ``||q|| * max_y ||z_y|| = logit_scale`` (a random direction).

    proofs/README.md section 2 requires everything to stay finite for
    ``||q|| max ||z|| <= 1e4``; the default 30 gives softmaxes that are neither
    uniform nor one-hot.
    """
    dim = points.shape[1]
    q = rng.normal(size=dim)
    q /= max(np.linalg.norm(q), 1e-300)
    zmax = float(np.max(np.linalg.norm(np.asarray(points, dtype=np.float64), axis=1))) if points.size else 1.0
    return q * logit_scale / max(zmax, 1e-12)


def tree_with_empty_nodes(n: int, seed: int, *, leaf_size: int, emptied: int, dim: int = 4):
    """A tree over ``make_targets(n, dim, seed)`` (branching 3) after deleting every target of
    ``emptied`` random leaves and a fifth of the rest: a tree with nodes of n_v = 0, the case
    every bound and sampler must skip."""
    from reference.data import make_targets
    from reference.tree import Tree

    tree = Tree.build(make_targets(n, dim, seed=seed), branching=3, leaf_size=leaf_size, seed=seed)
    rng = np.random.default_rng(seed)
    leaves = rng.choice(np.flatnonzero(tree.is_leaf), size=emptied, replace=False)
    gone = np.concatenate([tree.order[tree.start[v]:tree.stop[v]] for v in leaves])
    rest = np.setdiff1d(tree.order, gone)
    tree.delete(np.concatenate([gone, rng.choice(rest, size=rest.size // 5, replace=False)]))
    assert (tree.count == 0).any()
    return tree
