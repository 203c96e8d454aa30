"""Hypothesis strategies and brute-force helpers for the bound / sampler proofs (P1-P8).

Other test modules import these::

    from proofs.strategies_bounds import trees_with_queries, random_cut, brute_logits

The point sets come from :mod:`proofs.strategies_tree` (adversarial kinds:
duplicates, collinear, huge norms, grid ties, d = 1, float32). On top of them:

- ``trees_with_queries`` draws a built tree and a batch of queries whose
  logit scale ``||q|| max ||z||`` ranges from 0 (a zero query) to 1e4 (proofs/README.md
  section 2: nothing may overflow there), including queries aligned with a
  node's worst-case direction ``z_y - r_v``, which make P1 an equality.
- ``random_cut`` refines the root cut at random (nodes, leaves and single
  targets mixed), giving cuts that :func:`reference.bounds.adaptive_cut`
  would never produce.
- ``brute_*`` are the exhaustive O(N) references the propositions are
  checked against. ``brute_logits`` evaluates ``<q, z_y>`` with the same
  row-wise ``einsum`` as the tree code, so that exactly tied targets
  (duplicates) get bit-identical logits in both.
- ``line_pair_tree``: the two points {-1, +1} on a line, a tree whose single
  node is tight in every bound: the standard counterexample when a radius is
  even slightly too small.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from scipy.special import logsumexp

from proofs.strategies_tree import make_point_set, point_sets, seeds, tree_params
from reference.bounds import Cut
from reference.plain import expand
from reference.tree import Tree

__all__ = [
    "LOGIT_SCALES",
    "FP_RTOL",
    "trees_with_queries",
    "make_tree",
    "make_queries",
    "random_cut",
    "random_cuts",
    "brute_logits",
    "brute_log_z",
    "brute_log_p",
    "fp_scale",
    "line_pair_tree",
]

#: ``||q|| * max_y ||z_y||`` values drawn for queries: a zero query, moderate
#: softmaxes, near one-hot ones, and the overflow limit 1e4 of proofs/README.md section 2.
LOGIT_SCALES = (0.0, 1.0, 10.0, 60.0, 1e4)

#: Relative tolerance of deterministic float64 identities (proofs/README.md section 6),
#: applied to :func:`fp_scale` (the magnitude of the largest term involved).
FP_RTOL = 1e-9


def make_tree(points: np.ndarray, params: dict) -> Tree:
    """``Tree.build(points, **params)``."""
    return Tree.build(points, **params)


def make_queries(tree: Tree, rng: np.random.Generator, n_queries: int, scale: float,
                 aligned: bool = False) -> np.ndarray:
    """``n_queries`` query vectors with ``||q|| max ||z|| = scale``.

    With ``aligned`` each query points along ``z_y - r_v`` for a random node v
    and its farthest live descendant y, so ``a_y - <q, r_v> = eps_v`` up to
    rounding (the equality case of P1).
    """
    z = tree.points[tree.alive]
    zmax = max(float(np.linalg.norm(z, axis=1).max()), 1e-12)
    Q = rng.normal(size=(n_queries, tree.dim))
    if aligned:
        live_nodes = np.flatnonzero(tree.count > 0)
        v = rng.choice(live_nodes, size=n_queries)
        for i, vi in enumerate(v):
            ys = tree.order[tree.start[vi]:tree.stop[vi]]
            d = tree.points[ys] - tree.rep[vi]
            far = d[np.argmax(np.einsum("ij,ij->i", d, d))]
            if np.linalg.norm(far) > 0:
                Q[i] = far
    Q /= np.maximum(np.linalg.norm(Q, axis=1, keepdims=True), 1e-300)
    return Q * (scale / zmax)


@st.composite
def trees_with_queries(draw, *, max_n: int = 120, max_dim: int = 6, n_queries: int = 3,
                       scales: tuple[float, ...] = LOGIT_SCALES, kinds=None):
    """(tree, Q (B, k), seed): a tree on an adversarial point set and B queries.

    Query directions are random or aligned with a node's worst case (half
    each), at a drawn logit scale.
    """
    kw = {} if kinds is None else dict(kinds=kinds)
    pts = draw(point_sets(max_n=max_n, max_dim=max_dim, **kw))
    params = draw(tree_params())
    tree = make_tree(pts, params)
    seed = draw(seeds)
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from(scales))
    aligned = draw(st.booleans())
    Q = make_queries(tree, rng, n_queries, scale, aligned)
    return tree, Q, seed


def random_cut(tree: Tree, rng: np.random.Generator, n_expand: int) -> Cut:
    """A single-query cut: expand ``n_expand`` random entries of the root cut.

    A node expands into its children with ``n_c > 0``; a leaf into its live
    targets (single-target entries): :func:`reference.plain.expand`. Stops
    early when only targets remain.
    """
    nodes, targets = [tree.root], []
    for _ in range(n_expand):
        if not nodes:
            break
        children, leaf_targets = expand(tree, nodes.pop(int(rng.integers(len(nodes)))))
        nodes += children
        targets += leaf_targets
    return Cut.from_entries(nodes, targets)


def random_cuts(tree: Tree, rng: np.random.Generator, n_queries: int, max_expand: int) -> Cut:
    """A cut for each of ``n_queries`` queries, each :func:`random_cut` with its own number of
    expansions drawn uniformly from 0..``max_expand``."""
    return Cut.stack([random_cut(tree, rng, int(rng.integers(0, max_expand + 1))) for _ in range(n_queries)])


def brute_logits(tree: Tree, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, a)``: live target ids (increasing) and their logits ``a_y = <q, z_y>``, per query.

    ``q`` (k,) gives ``a`` of shape (N_live,); ``q`` (B, k) gives (B, N_live).
    Row-wise ``einsum`` as in the tree code (bit-identical for identical rows).
    """
    ids = np.flatnonzero(tree.alive)
    z = tree.points[ids]
    Q = np.atleast_2d(q)
    a = np.stack([np.einsum("ij,ij->i", z, np.broadcast_to(qi, z.shape)) for qi in Q])
    return ids, (a[0] if np.ndim(q) == 1 else a)


def brute_log_z(tree: Tree, q: np.ndarray) -> np.ndarray:
    """Exhaustive ``log Z = logsumexp_y <q, z_y>`` over live targets."""
    return logsumexp(brute_logits(tree, q)[1], axis=-1)


def brute_log_p(tree: Tree, q: np.ndarray) -> np.ndarray:
    """Dense ``log P(y)`` indexed by target id (``-inf`` for deleted rows)."""
    ids, a = brute_logits(tree, q)
    out = np.full(a.shape[:-1] + (tree.points.shape[0],), -np.inf)
    out[..., ids] = a - logsumexp(a, axis=-1, keepdims=True)
    return out


def fp_scale(tree: Tree, q: np.ndarray) -> np.ndarray:
    """Magnitude of the largest term in a bracket: ``1 + ||q|| (max ||z|| + max ||r_v|| + rho_root) + log N``.

    Every logit and every ``<q, r_v> +- eps_v`` is bounded by it; float64
    inner products and logsumexp are exact to a few 1e-16 of it, so
    ``FP_RTOL * fp_scale`` is a safe tolerance for deterministic identities.
    """
    qn = np.linalg.norm(np.atleast_2d(q), axis=1)
    zmax = float(np.linalg.norm(tree.points[tree.alive], axis=1).max())
    rmax = float(np.linalg.norm(tree.rep[tree.count > 0], axis=1).max())
    s = 1.0 + qn * (zmax + rmax + float(tree.radius[0])) + np.log(max(tree.n_live, 1))
    return s[0] if np.ndim(q) == 1 else s


def line_pair_tree() -> Tree:
    """Points {-1, +1} in one dimension, one leaf: r = 0, rho = 1 (tight for q = +-t)."""
    return Tree.build(np.array([[-1.0], [1.0]]), leaf_size=2)


# Re-exported for convenience of the proof modules.
__all__ += ["make_point_set", "point_sets", "seeds", "tree_params"]
