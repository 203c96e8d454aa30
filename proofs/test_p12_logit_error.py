"""P12 logit error (proofs/README.md section 6; proof in p12_logit_error.md).

|<f, ghat(y)> - <f, g(y)>| <= ||f|| ||ghat(y) - g(y)||, and a tree over phi(y)
certifies P1-P8 for the approximate softmax at every step without being touched.

Tolerances: 1e-9 relative to the logits' magnitude (float64 tolerance of proofs/README.md section 6.14;
the two sides are computed along different paths, ~1e-15 apart). Statistical
tests: G-test (reference.stats.g_test: groups of >= 20 expected draws),
failure at p < 1e-6 per test.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import logsumexp

from proofs.strategies_nystrom import kernels, nystrom_by_definition, seeds
from reference.dynamic import DynamicIndex
from reference.nystrom import linear, rbf
from reference.stats import g_test

REL_TOL = 1e-9
P_FAIL = 1e-6


def _unit(X):
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def _drift(G, rng, size):
    d = G.shape[1]
    A = np.eye(d) + size * rng.normal(size=(d, d)) / np.sqrt(d)
    return _unit(np.tanh(G @ A.T + size * rng.normal(size=d)))


def _ghat_reference(kernel, G0, L, G_L, cutoff=1e-10):
    """ghat = k(y)^T K_LL^+ G_t(L), computed without the index (numpy pseudo-inverse)."""
    K = kernel(G0[L], G0[L])
    return kernel(G0, G0[L]) @ np.linalg.pinv(K, rcond=cutoff, hermitian=True) @ G_L


@given(kernels(), seeds, st.integers(2, 20), st.sampled_from([0.1, 0.5, 1.5]),
       st.sampled_from([0.1, 1.0, 10.0]), st.sampled_from([1.0, 10.0]))
def test_p12_logit_and_partition_errors_are_bounded(kernel, seed, m, drift, fnorm, beta):
    """P12 (first part) and its consequences for log Z and log P.

    The bound e(y) = beta ||f|| ||ghat_t(y) - g_t(y)|| is computed from the
    definitions (``nystrom_by_definition``: phi and W from K_LL^{-1/2} by
    scipy.linalg.eigh, ghat = W^T phi), not from the index. Three of the six
    queries are aligned with ghat_t(y) - g_t(y) for a target y, where the
    bound is attained: there |ahat - a| must equal e, so an index whose logits
    follow any other ghat fails. The index's ``approximate()`` and ``logits``
    are also pinned to ghat_t. Tolerance: 1e-9 of the logits' magnitude for
    cond(K_LL) <= 1e5 (P10: ghat's rounding error is about cond * 1e-16),
    growing in proportion to cond(K_LL) above that.
    """
    rng = np.random.default_rng(seed)
    G0 = _unit(rng.normal(size=(80, 5)))
    L = rng.choice(80, size=m, replace=False)
    G = _drift(G0, rng, drift)
    index = DynamicIndex(G0, L, kernel=kernel, beta=beta, leaf_size=8)
    index.step(G[L])
    ref = nystrom_by_definition(kernel, G0, L, G[L])
    ghat = ref.ghat                                          # not index.approximate()
    cond = max(1.0, ref.condition / 1e5)                     # tolerances grow with cond(K_LL) beyond 1e5
    err = np.linalg.norm(ghat - G, axis=1)
    F = rng.normal(size=(6, 5))
    tight = np.argsort(-err)[:3]                             # queries 0-2: aligned, the bound attained
    F[:3] = ghat[tight] - G[tight]
    F *= fnorm / np.linalg.norm(F, axis=1, keepdims=True)
    a_hat = index.logits(F)
    a = beta * F @ G.T
    e = beta * np.linalg.norm(F, axis=1)[:, None] * err[None, :]
    slack = REL_TOL * (1.0 + np.abs(a).max() + np.abs(a_hat).max()) * cond
    assert np.all(np.abs(a_hat - a) <= e + slack)
    rows = np.arange(3)
    np.testing.assert_allclose(np.abs(a_hat - a)[rows, tight], e[rows, tight], rtol=0, atol=slack)
    np.testing.assert_allclose(a_hat, beta * F @ ghat.T, rtol=0, atol=slack)
    np.testing.assert_allclose(index.approximate(), ghat, rtol=0,
                               atol=REL_TOL * (1.0 + np.abs(ghat).max() + np.abs(G).max()) * cond)
    delta = e.max(axis=1)
    logz_hat, logz = logsumexp(a_hat, axis=1), logsumexp(a, axis=1)
    assert np.all(np.abs(logz_hat - logz) <= delta + slack)
    log_p_err = np.abs((a_hat - logz_hat[:, None]) - (a - logz[:, None]))
    assert np.all(log_p_err <= 2 * delta[:, None] + 2 * slack)


def _simulation(seed=3, N=400, d=6, m=16, steps=25, beta=6.0):
    rng = np.random.default_rng(seed)
    G0 = _unit(rng.normal(size=(N, d)))
    L = rng.choice(N, size=m, replace=False)
    index = DynamicIndex(G0, L, kernel=rbf(1.0), beta=beta, leaf_size=8)
    Gs, G = [], G0
    for _ in range(steps):
        G = _drift(G, rng, 0.08)
        Gs.append(G)
    return rng, G0, L, index, Gs


def test_p12_tree_certifies_the_approximate_softmax_at_every_step_untouched():
    """P12 (second part): bracket and top-k valid for ahat_t at every step; tree unchanged."""
    rng, G0, L, index, Gs = _simulation()
    tree = index.tree
    snap = {k: getattr(tree, k).copy() for k in ("points", "rep", "radius", "count", "order", "start",
                                                    "stop", "parent", "alive")}
    beta, tol = index.beta, 0.4
    worst_true_gap = 0.0
    for t, G in enumerate(Gs):
        index.step(G[L])
        F = _unit(rng.normal(size=(8, G0.shape[1])))
        ghat = _ghat_reference(rbf(1.0), G0, L, G[L])
        a_hat = beta * F @ ghat.T          # approximate logits, not through the index
        a = beta * F @ G.T                 # true logits
        logz_hat, logz = logsumexp(a_hat, axis=1), logsumexp(a, axis=1)
        slack = REL_TOL * (1.0 + np.abs(a_hat).max())
        lo, hi, _ = index.bracket(F, tol=tol)
        assert np.all(lo <= logz_hat + slack) and np.all(logz_hat <= hi + slack), f"step {t}"
        assert np.all(hi - lo <= tol + slack)
        ids, vals = index.topk(F, 5)
        want = np.lexsort((np.broadcast_to(np.arange(a_hat.shape[1]), a_hat.shape), -a_hat), axis=1)[:, :5]
        np.testing.assert_array_equal(ids, want, err_msg=f"top-k at step {t}")
        delta = (beta * np.linalg.norm(F, axis=1)[:, None] * np.linalg.norm(ghat - G, axis=1)[None, :]).max(1)
        assert np.all(lo - delta <= logz + slack) and np.all(logz <= hi + delta + slack)
        worst_true_gap = max(worst_true_gap, float(np.abs(logz - logz_hat).max()))
    assert worst_true_gap > 1e-3  # the approximate softmax really differs from the true one
    for k, v in snap.items():
        np.testing.assert_array_equal(getattr(tree, k), v, err_msg=f"tree.{k} changed")
    tree.check_invariants()


def test_p12_rejection_sampler_is_exact_for_the_approximate_softmax_across_steps():
    """P12 + P6: at three steps the rejection sampler draws from Phat_t (not from P_t)."""
    rng, G0, L, index, Gs = _simulation(N=150, steps=24, beta=5.0)
    f = _unit(rng.normal(size=(1, G0.shape[1])))
    n = 20000
    for t, G in enumerate(Gs):
        index.step(G[L])
        if t not in (3, 12, 23):
            continue
        ghat = _ghat_reference(rbf(1.0), G0, L, G[L])
        a_hat = index.beta * (f @ ghat.T)[0]
        p_hat = np.exp(a_hat - logsumexp(a_hat))
        ids, counters = index.rejection_sample(f, n, np.random.default_rng(100 + t), tol=0.5)
        counts = np.bincount(ids[0], minlength=p_hat.size)
        assert g_test(counts, p_hat).p_value > P_FAIL, f"rejection sampler is not Phat_t at step {t}"
        if t == 23:
            a = index.beta * (f @ G.T)[0]
            p = np.exp(a - logsumexp(a))
            assert g_test(counts, p).p_value < P_FAIL  # the drift is visible: the test has power


def test_p12_tree_points_and_query_map_are_phi_and_psi():
    """The tree is built over phi(y) = K_LL^{-1/2} k(y) and queried with psi_t = beta W_t f,
    W_t = K_LL^{-1/2} G_t(L) (section 5.3), checked against scipy.linalg.eigh of K_LL from the
    kernel's definition: at construction (W_0), after a step, and after a full refresh. Another
    factorisation of K_LL^+ (phi = K_LL^+ k(y), W = G_t(L)) gives the same logits but fails.
    Tolerance 1e-9 of each array's magnitude (cond(K_LL) <= 1e4 here)."""
    rng = np.random.default_rng(13)
    G0 = _unit(rng.normal(size=(60, 4)))
    L = rng.choice(60, size=8, replace=False)
    kernel, beta = rbf(1.0), 3.0
    index = DynamicIndex(G0, L, kernel=kernel, beta=beta, leaf_size=8)
    F = rng.normal(size=(5, 4))

    def check(G_cache, G_L, when):
        ref = nystrom_by_definition(kernel, G_cache, L, G_L)
        assert ref.rank == 8 and ref.condition <= 1e4, when
        for name, got, want in (("phi (tree.points)", index.phi[index.ids], ref.phi), ("W", index.W, ref.W),
                                ("psi = queries(F)", index.queries(F), beta * F @ ref.W.T)):
            np.testing.assert_allclose(got, want, rtol=0, atol=REL_TOL * np.abs(want).max(),
                                       err_msg=f"{name}, {when}")

    check(G0, G0[L], "at construction")
    np.testing.assert_allclose(index.W0, index.W, rtol=0, atol=0)
    G = _drift(G0, rng, 0.5)
    index.step(G[L])
    check(G0, G[L], "after a step")
    index.refresh(G)
    check(G, G[L], "after a full refresh")
