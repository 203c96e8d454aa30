"""P7 (proofs/README.md section 6): adaptive_cut terminates with lo <= log Z <= hi and hi - lo <= tol
(or every entry has eps_v = 0, and then lo = hi = log Z).

Proof: ``proofs/p07_adaptive_cut.md``.

Tolerance: FP_RTOL = 1e-9 of ``fp_scale`` (the largest term magnitude, proofs/README.md
section 6).
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from proofs.strategies_bounds import (
    FP_RTOL,
    brute_log_z,
    fp_scale,
    line_pair_tree,
    make_point_set,
    make_queries,
    trees_with_queries,
)
from reference.bounds import Cut, adaptive_cut, cut_eps, log_partition_bracket, validate_cut
from reference.tree import Tree

TOLS = (1e-3, 0.1, 1.0, 5.0)


def _check_p7(tree, Q, tol, cut):
    validate_cut(tree, cut, n_queries=Q.shape[0], full=True)
    lo, hi, _ = log_partition_bracket(tree, Q, cut)
    log_z = brute_log_z(tree, Q)
    fp = FP_RTOL * fp_scale(tree, Q)
    assert (lo <= log_z + fp).all() and (log_z <= hi + fp).all(), (lo, log_z, hi)
    exhausted = cut_eps(tree, Q, cut) == 0           # every entry has eps_v = 0
    assert ((hi - lo <= tol + fp) | exhausted).all(), f"hi - lo = {hi - lo} > tol = {tol}"
    assert (np.abs(hi[exhausted] - lo[exhausted]) <= fp[exhausted]).all()
    assert (np.abs(hi[exhausted] - log_z[exhausted]) <= fp[exhausted]).all()


@given(trees_with_queries(n_queries=4), st.sampled_from(TOLS))
def test_p7_adaptive_cut(data, tol):
    """Terminates; a partition; bracket contains log Z; width <= tol unless exhausted."""
    tree, Q, _ = data
    _check_p7(tree, Q, tol, adaptive_cut(tree, Q, tol))


@given(trees_with_queries(n_queries=2, kinds=("uniform", "clustered", "duplicates", "collinear", "huge")),
       st.sampled_from(TOLS))
def test_p7_after_deletes_and_updates(data, tol):
    """Still terminates and certifies after deletes (empty nodes) and updates (I3 only)."""
    tree, Q, seed = data
    rng = np.random.default_rng(seed)
    live = np.flatnonzero(tree.alive)
    if live.size > 2:
        tree.delete(rng.choice(live, size=live.size // 3, replace=False))
        live = np.flatnonzero(tree.alive)
        ids = rng.choice(live, size=max(1, live.size // 3), replace=False)
        tree.update(ids, tree.points[ids] + rng.normal(scale=0.2, size=(ids.size, tree.dim)))
    Q = make_queries(tree, rng, 2, 30.0, aligned=True)
    _check_p7(tree, Q, tol, adaptive_cut(tree, Q, tol))


def test_p7_tiny_tol_is_exhaustive():
    """tol = 1e-12 on 300 clustered points: the bracket closes on the brute-force log Z."""
    rng = np.random.default_rng(0)
    tree = Tree.build(make_point_set("clustered", 300, 3, 0), branching=4, leaf_size=6)
    Q = make_queries(tree, rng, 3, 20.0)
    cut = adaptive_cut(tree, Q, 1e-12)
    _check_p7(tree, Q, 1e-12, cut)
    lo, hi, _ = log_partition_bracket(tree, Q, cut)
    np.testing.assert_allclose(lo, brute_log_z(tree, Q), rtol=0, atol=1e-11)


@given(trees_with_queries(n_queries=3), st.sampled_from(TOLS))
def test_p7_round_count_within_potential_bound(data, tol):
    """The number of rounds is at most M + N (the potential argument of the proof)."""
    tree, Q, _ = data
    _, counters = adaptive_cut(tree, Q, tol, return_counters=True)
    assert counters["rounds"] <= tree.count.size + tree.n_live


def test_p7_zero_query_needs_no_refinement():
    """q = 0: every eps_v = 0, the root cut is already exact (lo = hi = log N in exact arithmetic).

    The reported bracket is widened outward by its floating-point rounding
    bound (proofs/p02_bracket.md, "Floating point"), so it contains the
    irrational log 50 and is at most that bound wide.
    """
    tree = Tree.build(np.random.default_rng(1).normal(size=(50, 2)), leaf_size=4)
    cut = adaptive_cut(tree, np.zeros(2), 1e-3)
    assert len(cut) == 1 and cut.node[0] == 0
    lo, hi, _ = log_partition_bracket(tree, np.zeros(2), cut)
    assert lo <= np.log(50) <= hi and hi - lo < 1e-13


def test_p7_line_pair_wide_tol_keeps_the_root():
    """{-1, +1}, q = 100, tol = 250 > hi - lo = 200: the root cut is returned, and it brackets log Z
    (hi = 100 + log 2 >= log Z = 100 + log(1 + e^-200)); a radius 1% too small would give hi < log Z."""
    tree = line_pair_tree()
    q = np.array([100.0])
    cut = adaptive_cut(tree, q, 250.0)
    assert len(cut) == 1 and cut.node[0] == 0
    _check_p7(tree, q[None, :], 250.0, Cut.root())
