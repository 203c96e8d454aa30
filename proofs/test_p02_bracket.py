"""P2 (proofs/README.md section 6): lo <= log Z <= hi, hi - lo <= 2 eps_C, |log_z_hat - log Z| <= eps_C.

Proof: ``proofs/p02_bracket.md``.

Tolerance: FP_RTOL = 1e-9 (proofs/README.md section 6) times ``fp_scale`` = the largest
term magnitude 1 + ||q|| (max ||z|| + max ||r_v|| + rho_root) + log N; the
float64 logsumexp of such terms is exact to a few 1e-16 of it.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import logsumexp

from proofs.strategies_bounds import (
    FP_RTOL,
    brute_log_z,
    fp_scale,
    line_pair_tree,
    make_point_set,
    make_queries,
    random_cut,
    random_cuts,
    seeds,
    trees_with_queries,
)
from reference.bounds import Cut, cut_eps, log_partition_bracket, validate_cut
from reference.tree import Tree


def _check_p2(tree, Q, cut):
    lo, hi, hat = log_partition_bracket(tree, Q, cut)
    eps_c = cut_eps(tree, Q, cut)
    log_z = brute_log_z(tree, Q)
    tol = FP_RTOL * fp_scale(tree, Q)
    for name, x in (("lo", lo), ("hi", hi), ("log_z_hat", hat)):
        assert np.isfinite(x).all(), f"{name} not finite: {x}"
    assert (lo <= log_z + tol).all(), f"lo > log Z: {lo - log_z}"
    assert (log_z <= hi + tol).all(), f"log Z > hi: {log_z - hi}"
    assert (hi - lo <= 2 * eps_c + tol).all(), f"hi - lo > 2 eps_C: {hi - lo} vs {2 * eps_c}"
    assert (np.abs(hat - log_z) <= eps_c + tol).all(), f"|log_z_hat - log Z| > eps_C: {hat - log_z} vs {eps_c}"


@given(trees_with_queries(n_queries=4), st.integers(0, 60))
def test_p2_random_cuts(data, n_expand):
    """P2 for a batch of queries, each with its own random cut (validated as a partition)."""
    tree, Q, seed = data
    rng = np.random.default_rng(seed)
    cut = random_cuts(tree, rng, Q.shape[0], n_expand)
    validate_cut(tree, cut, full=True)
    _check_p2(tree, Q, cut)


@given(trees_with_queries(n_queries=3, kinds=("uniform", "clustered", "duplicates", "grid", "huge")),
       st.integers(0, 30))
def test_p2_after_deletes(data, n_expand):
    """Cuts over a tree with emptied nodes (n_v = 0): those entries are skipped, P2 still holds."""
    tree, Q, seed = data
    rng = np.random.default_rng(seed)
    live = np.flatnonzero(tree.alive)
    if live.size > 1:
        tree.delete(rng.choice(live, size=int(rng.integers(1, live.size)), replace=False))
    cut = Cut.stack([random_cut(tree, rng, n_expand) for _ in range(Q.shape[0])])
    _check_p2(tree, Q, cut)


def test_p2_root_cut_single_query_scalars():
    """A single query (k,) gives scalar results; the root cut brackets log Z."""
    tree = line_pair_tree()
    lo, hi, hat = log_partition_bracket(tree, np.array([0.5]), Cut.root())
    assert np.ndim(lo) == np.ndim(hi) == np.ndim(hat) == 0
    assert lo <= brute_log_z(tree, np.array([0.5])) <= hi


def test_p2_line_pair_tight():
    """{-1, +1}, root cut, q = 100: hi - log Z = log 2 - 1e-87 (tight up to log 2)."""
    tree = line_pair_tree()
    q = np.array([100.0])
    lo, hi, hat = log_partition_bracket(tree, q, Cut.root())
    log_z = 100.0 + np.log1p(np.exp(-200.0))
    assert abs(brute_log_z(tree, q) - log_z) <= 1e-12
    np.testing.assert_allclose([lo, hi, hat], [np.log(2) - 100.0, np.log(2) + 100.0, np.log(2)], rtol=1e-14)
    assert hi >= log_z and hi - log_z < np.log(2) + 1e-12


@given(seeds)
def test_p2_large_logits_finite(seed):
    """||q|| max ||z|| = 1e4 (proofs/README.md section 2): everything finite and the bracket holds."""
    rng = np.random.default_rng(seed)
    tree = Tree.build(rng.normal(size=(200, 3)), branching=3, leaf_size=4)
    Q = rng.normal(size=(3, 3))
    Q *= 1e4 / (np.linalg.norm(Q, axis=1, keepdims=True) * np.linalg.norm(tree.points, axis=1).max())
    cut = Cut.stack([random_cut(tree, rng, 20) for _ in range(3)])
    _check_p2(tree, Q, cut)


# ---------------------------------------------------------------- P2's bracket itself, not just a valid one
def _bracket_by_definition(tree, q, cut):
    """(lo, hi, log_z_hat) of section 4.2, entry by entry, without the code under test.

    For each entry v of the (single-query) cut: n_v, r_v, rho_v from the tree
    for a node entry, (1, z_y, 0) for a single target; t_v = log n_v + <q, r_v>,
    eps_v = ||q|| rho_v; entries with n_v = 0 are skipped. Then
    lo = logsumexp(t_v - eps_v), hi = logsumexp(t_v + eps_v),
    log_z_hat = logsumexp(t_v) (scipy.special.logsumexp).
    """
    qn = float(np.sqrt(np.sum(np.asarray(q, dtype=np.float64) ** 2)))
    t, eps = [], []
    for v, y in zip(cut.node.tolist(), cut.target.tolist()):
        if v >= 0:
            n, r, rho = int(tree.count[v]), tree.rep[v], float(tree.radius[v])
        else:
            n, r, rho = 1, tree.points[y], 0.0
        if n == 0:
            continue
        t.append(np.log(n) + float(np.dot(q, r)))
        eps.append(qn * rho)
    t, eps = np.array(t), np.array(eps)
    return float(logsumexp(t - eps)), float(logsumexp(t + eps)), float(logsumexp(t))


def _check_p2_formula(tree, Q, cut):
    """log_partition_bracket equals the formulas of section 4.2 to 1e-9 of the term magnitude."""
    lo, hi, hat = log_partition_bracket(tree, Q, cut)
    scale = fp_scale(tree, Q)
    for b in range(Q.shape[0]):
        want = _bracket_by_definition(tree, Q[b], cut.of_query(b))
        for name, got, w in zip(("lo", "hi", "log_z_hat"), (lo[b], hi[b], hat[b]), want):
            assert abs(got - w) <= FP_RTOL * scale[b], (
                f"query {b}: {name} = {got!r}, but section 4.2 gives {w!r} (difference {got - w:.3g})")


@given(trees_with_queries(n_queries=4), st.integers(0, 60))
def test_p2_bracket_is_the_one_p2_defines(data, n_expand):
    """lo, hi, log_z_hat are exactly logsumexp_v(log n_v + <q,r_v> -/+ eps_v) and logsumexp_v(log n_v + <q,r_v>).

    The validity checks above pass for any valid bracket, for example the
    looser log_z_hat -/+ eps_C; this pins the bracket P2 defines.
    """
    tree, Q, seed = data
    rng = np.random.default_rng(seed)
    cut = random_cuts(tree, rng, Q.shape[0], n_expand)
    _check_p2_formula(tree, Q, cut)


@given(trees_with_queries(n_queries=3, kinds=("uniform", "clustered", "duplicates", "grid", "huge")),
       st.integers(0, 30))
def test_p2_bracket_formula_after_deletes(data, n_expand):
    """The same, with emptied entries (n_v = 0) in the cuts: they contribute nothing."""
    tree, Q, seed = data
    rng = np.random.default_rng(seed)
    live = np.flatnonzero(tree.alive)
    if live.size > 1:
        tree.delete(rng.choice(live, size=int(rng.integers(1, live.size)), replace=False))
    cut = Cut.stack([_with_empty_entries(tree, random_cut(tree, rng, n_expand), rng) for _ in range(Q.shape[0])])
    validate_cut(tree, cut, full=True)
    _check_p2_formula(tree, Q, cut)


def _with_empty_entries(tree, cut, rng, k=3):
    """``cut`` plus up to ``k`` emptied nodes (n_v = 0): still a cut, since they hold no target.

    (``random_cut`` expands through ``plain.expand``, which skips empty
    children, so without this no cut would contain an entry with n_v = 0.)
    """
    empty = np.flatnonzero(tree.count == 0)
    extra = rng.choice(empty, size=min(k, empty.size), replace=False) if empty.size else []
    return Cut.from_entries(list(cut.node[cut.node >= 0]) + [int(v) for v in extra],
                            list(cut.target[cut.target >= 0]))


def test_p2_bracket_formula_separates_from_looser_brackets():
    """A fixed mixed cut (nodes of different radii, emptied nodes, single targets) on which P2's
    bracket lies far inside log_z_hat -/+ eps_C: a looser valid bracket cannot pass."""
    rng = np.random.default_rng(11)
    tree = Tree.build(make_point_set("clustered", 300, 3, 11), branching=3, leaf_size=5, seed=11)
    leaf = int(np.flatnonzero(tree.is_leaf & (tree.count > 0))[0])
    tree.delete(tree.order[tree.start[leaf]:tree.stop[leaf]])      # the leaf and maybe ancestors: n_v = 0
    Q = make_queries(tree, rng, 3, 60.0)
    cut = Cut.stack([_with_empty_entries(tree, random_cut(tree, rng, 12), rng) for _ in range(3)])
    validate_cut(tree, cut, full=True)
    assert (tree.count[cut.node[cut.node >= 0]] == 0).sum() >= 3      # every query's cut has one
    assert (cut.target >= 0).any() and np.unique(tree.radius[cut.node[cut.node >= 0]]).size > 3
    _check_p2_formula(tree, Q, cut)
    lo, hi, hat = log_partition_bracket(tree, Q, cut)
    eps_c = cut_eps(tree, Q, cut)
    assert (hat + eps_c - hi > 0.1).all() and (lo - (hat - eps_c) > 0.1).all()
