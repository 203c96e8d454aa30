"""P4 (proofs/README.md section 6): the cut distribution Phat_C is within 2 eps_C of the softmax.

Proof: ``proofs/p04_cut_distribution.md``.

Tolerances: log-space quantities FP_RTOL = 1e-9 of ``fp_scale`` (the largest
term magnitude, proofs/README.md section 6); TV, a probability summed over <= 121 terms,
1e-9 absolute. The goodness-of-fit tests use the G-test of reference.stats
(groups of >= 20 expected draws, Williams' correction) and fail at p < 1e-6
(false-alarm rate 1e-6 per test), on fixed seeds.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proofs.strategies_bounds import (
    FP_RTOL,
    brute_log_p,
    fp_scale,
    line_pair_tree,
    make_point_set,
    make_queries,
    random_cut,
    random_cuts,
    trees_with_queries,
)
from reference.bounds import DEFAULT_TOL, Cut, adaptive_cut, cut_distribution, kl_bound, log_prob_bound, tv_bound
from reference.sampling import cut_sample
from reference.stats import g_test
from reference.tree import Tree

GOF_ALPHA = 1e-6


@given(trees_with_queries(n_queries=3), st.integers(0, 60))
def test_p4_pointwise_tv_kl(data, n_expand):
    """|log Phat - log P| <= 2 eps_C, TV <= 1 - exp(-2 eps_C), both KLs <= 2 eps_C."""
    tree, Q, seed = data
    rng = np.random.default_rng(seed)
    cut = random_cuts(tree, rng, Q.shape[0], n_expand)
    log_phat = cut_distribution(tree, Q, cut)
    log_p = brute_log_p(tree, Q)
    live = tree.alive
    tol = FP_RTOL * fp_scale(tree, Q)
    assert np.isneginf(log_phat[:, ~live]).all() and np.isfinite(log_phat[:, live]).all()
    phat, p = np.exp(log_phat[:, live]), np.exp(log_p[:, live])
    # normalisation: log Phat = <q, r_v> - log_z_hat is exact to tol (log space), so sum Phat = 1 to ~tol
    assert (np.abs(phat.sum(axis=1) - 1.0) <= tol).all(), phat.sum(axis=1) - 1.0
    diff = np.abs(log_phat[:, live] - log_p[:, live]).max(axis=1)
    assert (diff <= log_prob_bound(tree, Q, cut) + tol).all(), (diff, log_prob_bound(tree, Q, cut))
    tv = 0.5 * np.abs(phat - p).sum(axis=1)
    assert (tv <= tv_bound(tree, Q, cut) + 1e-9).all(), (tv, tv_bound(tree, Q, cut))
    kl_p_phat = (p * (log_p[:, live] - log_phat[:, live])).sum(axis=1)
    kl_phat_p = (phat * (log_phat[:, live] - log_p[:, live])).sum(axis=1)
    bound = kl_bound(tree, Q, cut)
    assert (kl_p_phat <= bound + tol).all() and (kl_phat_p <= bound + tol).all(), (kl_p_phat, kl_phat_p, bound)


@given(trees_with_queries(n_queries=3), st.integers(0, 60))
def test_cut_sample_log_q_is_log_phat(data, n_expand):
    """``cut_sample`` returns live ids and log_q = log Phat_C(ids) (the logQ correction)."""
    tree, Q, seed = data
    rng = np.random.default_rng(seed)
    cut = Cut.stack([random_cut(tree, rng, n_expand) for _ in range(Q.shape[0])])
    ids, log_q = cut_sample(tree, Q, 50, rng, cut=cut)
    assert ids.shape == log_q.shape == (Q.shape[0], 50)
    assert tree.alive[ids].all()
    log_phat = cut_distribution(tree, Q, cut)
    want = np.take_along_axis(log_phat, ids, axis=1)
    tol = FP_RTOL * fp_scale(tree, Q)[:, None]
    assert (np.abs(log_q - want) <= tol).all(), np.abs(log_q - want).max()


@pytest.mark.parametrize("kind, n, dim, seed", [
    ("clustered", 150, 3, 0), ("uniform", 120, 2, 1), ("duplicates", 100, 4, 2), ("collinear", 90, 1, 3),
])
def test_cut_sample_goodness_of_fit(kind, n, dim, seed):
    """Draws of ``cut_sample`` follow Phat_C (G-test, fail at p < 1e-6), for a random and an adaptive cut."""
    rng = np.random.default_rng(seed)
    tree = Tree.build(make_point_set(kind, n, dim, seed), branching=3, leaf_size=4, seed=seed)
    Q = make_queries(tree, rng, 2, 4.0)
    for cut in (Cut.stack([random_cut(tree, rng, 12) for _ in range(2)]), None):
        ids, _ = cut_sample(tree, Q, 20000, rng, cut=cut)
        if cut is None:  # the default cut is adaptive_cut(tree, Q, DEFAULT_TOL)
            cut = adaptive_cut(tree, Q, DEFAULT_TOL)
        phat = np.exp(cut_distribution(tree, Q, cut))
        for b in range(2):
            counts = np.bincount(ids[b], minlength=tree.points.shape[0])
            p = g_test(counts, phat[b]).p_value
            assert p >= GOF_ALPHA, f"cut_sample draws do not follow Phat_C (query {b}): G-test p = {p:.2e}"


def test_p4_line_pair():
    """{-1, +1}, root cut, q = 100: Phat uniform; max |log Phat - log P| = 200 - log 2 <= 2 eps_C = 200."""
    tree = line_pair_tree()
    q = np.array([100.0])
    log_phat = cut_distribution(tree, q, Cut.root())
    np.testing.assert_allclose(log_phat, np.log([0.5, 0.5]), rtol=1e-15)
    diff = np.abs(log_phat - brute_log_p(tree, q)).max()
    np.testing.assert_allclose(diff, 200.0 - np.log(2.0), rtol=1e-12)
    assert diff <= log_prob_bound(tree, q, Cut.root()) == 200.0
