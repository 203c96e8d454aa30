"""P4b (proofs/README.md section 6): TV(Phat_C, P) <= 1 - exp(-(hi - lo)), the bound tol controls.

Proof: ``proofs/p04b_tv_width.md``.

Tolerances: TV is a probability summed over at most a few hundred float64
terms, compared with 1e-9 absolute; the bracket is the certified one of
``log_partition_bracket`` (widened), for which the bound holds literally.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from proofs.strategies_bounds import brute_log_p, random_cuts, trees_with_queries
from reference.bounds import Cut, adaptive_cut, cut_distribution, log_partition_bracket, tv_bound
from reference.tree import Tree

TV_ATOL = 1e-9


def width_tv_bound(tree: Tree, Q: np.ndarray, cut: Cut) -> np.ndarray:
    """1 - exp(-(hi - lo)) per query, hi and lo of ``log_partition_bracket`` (P4b)."""
    lo, hi, _ = log_partition_bracket(tree, Q, cut)
    return -np.expm1(-(np.asarray(hi) - np.asarray(lo)))


def true_tv(tree: Tree, Q: np.ndarray, cut: Cut) -> np.ndarray:
    """TV(Phat_C, P) per query, from the dense cut distribution and the brute-force softmax."""
    live = tree.alive
    phat = np.exp(np.atleast_2d(cut_distribution(tree, Q, cut))[:, live])
    p = np.exp(np.atleast_2d(brute_log_p(tree, Q))[:, live])
    return 0.5 * np.abs(phat - p).sum(axis=1)


@given(trees_with_queries(n_queries=3), st.integers(0, 60))
def test_p4b_random_cuts(data, n_expand):
    """Any cut: TV <= 1 - exp(-(hi - lo)) <= 1 - exp(-2 eps_C) (P4's bound)."""
    tree, Q, seed = data
    rng = np.random.default_rng(seed)
    cut = random_cuts(tree, rng, Q.shape[0], n_expand)
    bound = width_tv_bound(tree, Q, cut)
    tv = true_tv(tree, Q, cut)
    assert (tv <= bound + TV_ATOL).all(), (tv, bound)
    assert (bound <= np.asarray(tv_bound(tree, Q, cut)) + TV_ATOL).all()


@given(trees_with_queries(n_queries=3), st.sampled_from([0.05, 0.3, 1.0, 4.0]))
def test_p4b_adaptive_cuts(data, tol):
    """The adaptive cut: TV <= 1 - exp(-(hi - lo)) <= 1 - exp(-tol), what tol buys."""
    tree, Q, _ = data
    cut = adaptive_cut(tree, Q, tol)
    bound = width_tv_bound(tree, Q, cut)
    tv = true_tv(tree, Q, cut)
    assert (tv <= bound + TV_ATOL).all(), (tv, bound)
    assert (bound <= -np.expm1(-tol) + TV_ATOL).all()


def test_p4b_is_nearly_attained():
    """49 copies of -1 and one target at +20 on a line, the root cut, q = 5: P is almost all on the
    outlier and Phat_C is uniform, so TV = 0.98 - while the bound is 1 - exp(-200) - holds, at >= 0.97 of it."""
    z = np.concatenate([np.full(49, -1.0), [20.0]])[:, None]
    tree = Tree.build(z, branching=2, leaf_size=50, seed=0)
    q = np.array([5.0])
    cut = Cut.root()
    tv, bound = float(true_tv(tree, q, cut)[0]), float(width_tv_bound(tree, q, cut))
    assert tv <= bound + TV_ATOL
    assert tv >= 0.97 * bound, (tv, bound)


def test_p4b_exponent_constant_at_moderate_width():
    """The same family at a moderate width, with the representative at the midpoint (I3 needs no
    centroid, P1): 49 targets at -1 and one at +1, r = 0, rho = 1, q = 4, so hi - lo = 8 and
    TV = e^8 / (49 + e^8) - 1/50 = 0.9655 >= 1 - exp(-0.4 (hi - lo)): a bound 1 - exp(-c (hi - lo))
    with c <= 0.4 would be violated here."""
    z = np.concatenate([np.full(49, -1.0), [1.0]])[:, None]
    tree = Tree.build(z, branching=2, leaf_size=50, seed=0)
    tree.rep[0], tree.radius[0], tree.rep_norm[0] = 0.0, 1.0, 0.0  # every target at distance exactly 1
    tree.check_invariants()
    q = np.array([4.0])
    cut = Cut.root()
    lo, hi, _ = log_partition_bracket(tree, q, cut)
    tv, bound = float(true_tv(tree, q, cut)[0]), float(width_tv_bound(tree, q, cut))
    assert abs((hi - lo) - 8.0) <= 1e-12 and tv <= bound + TV_ATOL
    assert tv >= -np.expm1(-0.4 * (hi - lo)), tv
