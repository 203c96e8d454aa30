"""P1 (proofs/README.md section 6): |a_y - <q, r_v>| <= eps_v(q) = ||q|| rho_v for y in D(v).

Proof: ``proofs/p01_node_bound.md``.

Tolerance: an inner product of length k in float64 has absolute rounding error
below k 2^-53 ||q|| ||x||; we allow FP_RTOL = 1e-9 of ||q|| (||z_y|| + ||r_v||)
(proofs/README.md section 6) plus ||q|| times the tree's certified containment tolerance
(``Tree.containment_tolerance``, ~1e-14 rho_v). A 1% smaller radius moves the
aligned-query case by 1% of eps_v, far above either.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from proofs.strategies_bounds import (
    FP_RTOL,
    line_pair_tree,
    make_queries,
    random_cut,
    seeds,
    trees_with_queries,
)
from reference.bounds import Cut, cut_eps


def _pairs(tree):
    """Every (node, live descendant) pair, vectorised: D(v) = order[start[v]:stop[v]]."""
    v = np.repeat(np.arange(tree.count.size), tree.count)
    pos = np.concatenate([np.arange(a, b) for a, b in zip(tree.start, tree.stop)])
    return v, tree.order[pos]


def _check_p1(tree, Q):
    v, y = _pairs(tree)
    tol_tree = tree.containment_tolerance()
    for q in Q:
        qn = np.linalg.norm(q)
        a = tree.points[y] @ q
        s = tree.rep[v] @ q
        eps = qn * tree.radius[v]
        tol = FP_RTOL * qn * (np.linalg.norm(tree.points[y], axis=1) + np.linalg.norm(tree.rep[v], axis=1)) \
            + qn * tol_tree[v]
        excess = np.abs(a - s) - eps - tol
        assert excess.max() <= 0, (
            f"P1 violated: node {v[excess.argmax()]}, target {y[excess.argmax()]}: "
            f"|a_y - <q,r_v>| = {abs(a - s)[excess.argmax()]!r} > eps_v = {eps[excess.argmax()]!r}"
        )


@given(trees_with_queries(n_queries=4))
def test_p1_every_node_and_descendant(data):
    """P1 for every (node, live descendant) pair, adversarial sets, random and aligned queries."""
    tree, Q, _ = data
    _check_p1(tree, Q)


@given(trees_with_queries(n_queries=2), seeds)
def test_p1_after_updates(data, seed):
    """P1 needs only I3: it holds after ``Tree.update`` (radii enlarged, no refresh)."""
    tree, Q, _ = data
    rng = np.random.default_rng(seed)
    live = np.flatnonzero(tree.alive)
    ids = rng.choice(live, size=max(1, live.size // 3), replace=False)
    z = tree.points[ids]
    scale = max(float(np.abs(z).max()), 1.0)
    tree.update(ids, z + rng.normal(scale=0.3 * scale, size=z.shape))
    _check_p1(tree, make_queries(tree, rng, 3, 60.0, aligned=True))


@given(trees_with_queries(n_queries=1, scales=(1.0, 60.0)), seeds)
def test_p1_is_tight_at_leaves(data, seed):
    """The bound is attained: for q along z_y - r_v (y farthest in leaf v), a_y - <q,r_v> = eps_v.

    A leaf's radius is its exact covering radius, so this is an equality up to
    rounding; it fails if radii are too small (P1 breaks) or needlessly large.
    """
    tree, _, _ = data
    leaves = np.flatnonzero(tree.is_leaf & (tree.count > 0) & (tree.radius > 0))
    rng = np.random.default_rng(seed)
    for v in rng.choice(leaves, size=min(5, leaves.size), replace=False) if leaves.size else []:
        ys = tree.order[tree.start[v]:tree.stop[v]]
        d = tree.points[ys] - tree.rep[v]
        dist = np.sqrt(np.einsum("ij,ij->i", d, d))
        j = int(np.argmax(dist))
        q = 7.0 * d[j] / dist[j]
        gap = float(tree.points[ys[j]] @ q - tree.rep[v] @ q)
        eps = float(np.linalg.norm(q) * tree.radius[v])
        tol = FP_RTOL * np.linalg.norm(q) * (np.linalg.norm(tree.points[ys[j]]) + np.linalg.norm(tree.rep[v]))
        assert abs(gap - eps) <= tol + 1e-9 * eps, (v, gap, eps)


@given(trees_with_queries(n_queries=3), st.integers(0, 40))
def test_cut_eps_is_max_node_eps(data, n_expand):
    """``cut_eps`` (the eps_C of P2, P4, P5) is max_{v in C, n_v > 0} ||q|| rho_v; 0 for single targets."""
    tree, Q, seed = data
    rng = np.random.default_rng(seed)
    cuts = [random_cut(tree, rng, n_expand) for _ in range(Q.shape[0])]
    got = cut_eps(tree, Q, Cut.stack(cuts))
    for b, c in enumerate(cuts):
        nodes = c.node[c.node >= 0]
        nodes = nodes[tree.count[nodes] > 0]
        want = np.linalg.norm(Q[b]) * tree.radius[nodes].max() if nodes.size else 0.0
        np.testing.assert_allclose(got[b], want, rtol=1e-12, atol=0)  # same product, one rounding


def test_p1_line_pair_equality():
    """{-1, +1}, one leaf with r = 0, rho = 1: a_y - <q, r> = +-eps exactly for q = +-100."""
    tree = line_pair_tree()
    assert tree.radius[0] == 1.0 and tree.rep[0, 0] == 0.0
    for t in (100.0, -100.0):
        q = np.array([t])
        eps = cut_eps(tree, q, Cut.root())
        a = tree.points[:, 0] * t
        assert np.max(np.abs(a - tree.rep[0] @ q)) == eps == 100.0
