"""Unit tests for reference/nystrom.py: kernels, landmark selection, NystromMap, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats

from reference.nystrom import (
    LANDMARK_METHODS,
    NystromMap,
    linear,
    make_kernel,
    polynomial,
    rbf,
    ridge_leverage_scores,
    select_landmarks,
)

TOL = 1e-9  # deterministic float64 identities (proofs/README.md section 6.14)


@pytest.fixture
def G0():
    return np.random.default_rng(0).normal(size=(200, 6))


# -- kernels ------------------------------------------------------------------


def test_kernels_match_their_formulas(G0):
    A, B = G0[:7], G0[7:12]
    np.testing.assert_allclose(linear(2.0)(A, B), A @ B.T + 4.0, rtol=TOL)
    sq = ((A[:, None, :] - B[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(rbf(0.3)(A, B), np.exp(-0.3 * sq), rtol=TOL)
    np.testing.assert_allclose(polynomial(3, 0.5)(A, B), (A @ B.T + 0.5) ** 3, rtol=TOL)
    for k in (linear(2.0), rbf(0.3), polynomial(3, 0.5)):
        np.testing.assert_allclose(k.diag(A), np.diag(k(A, A)), rtol=TOL)


def test_rbf_is_exactly_one_on_the_diagonal_despite_cancellation():
    A = np.full((3, 4), 1e4)  # ||a||^2 + ||a||^2 - 2<a,a> cancels to rounding noise
    np.testing.assert_array_equal(np.diag(rbf(1.0)(A, A)), 1.0)


def test_make_kernel_accepts_names_and_objects():
    assert make_kernel("linear") == linear()
    assert make_kernel("rbf") == rbf()
    assert make_kernel(polynomial(2, 0.0)) == polynomial(2, 0.0)
    for bad in ("cosine", 3, None):
        with pytest.raises(ValueError, match="kernel"):
            make_kernel(bad)
    for call, name in ((lambda: rbf(0.0), "gamma"), (lambda: rbf(np.nan), "gamma"),
                       (lambda: polynomial(0), "degree"), (lambda: polynomial(2.5), "degree"),
                       (lambda: polynomial(2, -1.0), "c"), (lambda: linear(-1.0), "const")):
        with pytest.raises(ValueError, match=name):
            call()


# -- landmark selection -------------------------------------------------------


@pytest.mark.parametrize("method", LANDMARK_METHODS)
@pytest.mark.parametrize("kernel", ["linear", "rbf", "polynomial"])
def test_landmarks_are_distinct_valid_and_deterministic(G0, method, kernel):
    a = select_landmarks(G0, 25, method=method, rng=np.random.default_rng(3), kernel=kernel)
    b = select_landmarks(G0, 25, method=method, rng=np.random.default_rng(3), kernel=kernel)
    assert a.dtype == np.int64 and a.shape == (25,)
    assert np.unique(a).size == 25 and a.min() >= 0 and a.max() < 200
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method", LANDMARK_METHODS)
def test_m_equal_to_n_takes_every_target(G0, method):
    ids = select_landmarks(G0[:30], 30, method=method, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(np.sort(ids), np.arange(30))


def test_kmeanspp_covers_well_separated_clusters():
    """D^2 seeding picks one landmark per far-apart cluster (a uniform draw of 5 of
    500 points misses some of 5 equal clusters with probability ~0.96)."""
    rng = np.random.default_rng(1)
    centers = 100.0 * np.eye(5)
    labels = np.repeat(np.arange(5), 100)
    G0 = centers[labels] + rng.normal(size=(500, 5))
    for seed in range(5):
        ids = select_landmarks(G0, 5, method="kmeans++", rng=np.random.default_rng(seed))
        assert set(labels[ids]) == set(range(5))


def test_kmeanspp_with_duplicates_falls_back_to_uniform():
    G0 = np.ones((10, 3))  # every target coincides: all D^2 are zero after the first pick
    ids = select_landmarks(G0, 10, method="kmeans++", rng=np.random.default_rng(0))
    np.testing.assert_array_equal(np.sort(ids), np.arange(10))


def test_linear_rls_scores_are_the_exact_ridge_leverage_scores(G0):
    lam = 3.0
    scores = ridge_leverage_scores(G0, linear(1.0), ridge=lam, rng=np.random.default_rng(0))
    K = linear(1.0)(G0, G0)
    exact = np.diag(K @ np.linalg.inv(K + lam * np.eye(200)))
    np.testing.assert_allclose(scores, exact, rtol=1e-8, atol=1e-12)  # inverse of a 200x200, cond ~1e2


def test_rls_prefers_outliers():
    """A direction carried by one target has leverage ~1; rls picks it far more often
    than uniform (probability 10/201 per draw uniformly)."""
    rng = np.random.default_rng(2)
    G0 = np.hstack([rng.normal(size=(201, 3)), np.zeros((201, 1))])
    G0[200, 3] = 5.0  # the only target with a 4th coordinate
    hits = sum(200 in select_landmarks(G0, 10, method="rls", rng=np.random.default_rng(s)) for s in range(40))
    # Under uniform selection hits ~ Binomial(40, 10/201): P(hits >= 15) < 1e-8.
    assert scipy.stats.binom.sf(14, 40, 10 / 201) < 1e-8
    assert hits >= 15


def test_rls_for_nonlinear_kernels_uses_a_pilot(G0):
    s = ridge_leverage_scores(G0, rbf(0.5), pilot=50, rng=np.random.default_rng(0))
    assert s.shape == (200,) and np.all((s >= 0) & (s <= 1)) and s.sum() > 0


def test_landmark_selection_rejects_bad_input(G0):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="at most N=200"):
        select_landmarks(G0, 201, rng=rng)
    with pytest.raises(ValueError, match="m: expected an integer >= 1"):
        select_landmarks(G0, 0, rng=rng)
    with pytest.raises(ValueError, match="method"):
        select_landmarks(G0, 5, method="random", rng=rng)
    with pytest.raises(ValueError, match="rng"):
        select_landmarks(G0, 5, rng=0)
    bad = G0.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="G0: expected finite"):
        select_landmarks(bad, 5, rng=rng)
    with pytest.raises(ValueError, match="G0: expected a 2-D"):
        select_landmarks(G0[0], 5, rng=rng)


# -- NystromMap ---------------------------------------------------------------


def test_right_after_a_refresh_ghat_is_the_nystrom_approximation_of_the_cache(G0):
    """G_t(L) = g_0(L): ghat_0 = g_0(L)^T K^+ k(y); for the linear kernel with spanning
    landmarks that is g_0 itself, otherwise the projection onto span g_0(L)."""
    L = np.arange(0, 200, 10)  # 20 landmarks span R^6
    nmap = NystromMap(linear()).fit(G0, L)
    ghat = nmap.approximate(nmap.features(G0), nmap.project(G0[L]))
    np.testing.assert_allclose(ghat, G0, rtol=0, atol=TOL * np.abs(G0).max())
    L3 = L[:3]  # 3 landmarks do not span R^6: the projection onto their span
    nmap3 = NystromMap(linear()).fit(G0, L3)
    ghat3 = nmap3.approximate(nmap3.features(G0), nmap3.project(G0[L3]))
    Q, _ = np.linalg.qr(G0[L3].T)
    np.testing.assert_allclose(ghat3, G0 @ Q @ Q.T, rtol=0, atol=TOL * np.abs(G0).max())


def test_phi_inner_products_are_the_nystrom_kernel(G0):
    """<phi(y), phi(y')> = k(y)^T K_LL^{-1} k(y') (the Nystrom kernel approximation)."""
    L = np.arange(0, 200, 20)
    nmap = NystromMap(rbf(0.5)).fit(G0, L)
    phi = nmap.features(G0[:30])
    k = nmap.kernel(G0[L], G0[:30])
    want = k.T @ np.linalg.solve(nmap.kernel(G0[L], G0[L]), k)
    np.testing.assert_allclose(phi @ phi.T, want, rtol=0, atol=1e-9 * np.abs(want).max() * nmap.record["condition"] * 1e-3)


def test_singular_kernel_matrix_is_reported_not_nan(G0):
    """Duplicated landmark embeddings make K_LL singular: rank reported, no warning, finite."""
    G = G0.copy()
    G[1] = G[0]
    G[2] = G[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nmap = NystromMap(rbf(1.0)).fit(G, np.arange(10))
        phi = nmap.features(G)
        ghat = nmap.approximate(phi, nmap.project(np.random.default_rng(0).normal(size=(10, 4))))
    assert nmap.rank == 8 and nmap.record["dropped"] == 2 and nmap.record["m"] == 10
    assert np.isfinite(phi).all() and np.isfinite(ghat).all()
    assert nmap.record["condition"] >= 1.0 and np.isfinite(nmap.record["condition"])


def test_linear_kernel_with_more_landmarks_than_dimensions(G0):
    nmap = NystromMap(linear(1.0)).fit(G0, np.arange(40))
    assert nmap.rank == 7  # d + 1 with the constant feature; the rest is cut
    assert nmap.features(G0).shape == (200, 40)  # phi keeps m coordinates regardless


def test_float32_inputs_are_computed_in_float64(G0):
    L = np.arange(12)
    a = NystromMap(rbf(1.0)).fit(G0.astype(np.float32), L)
    phi = a.features(G0.astype(np.float32))
    assert phi.dtype == np.float64 and a.project(G0[L].astype(np.float32)).dtype == np.float64


def test_zero_kernel_matrix_is_a_clear_error():
    with pytest.raises(ValueError, match="K_LL is zero"):
        NystromMap(linear(0.0)).fit(np.zeros((5, 3)), [0, 1])


def test_polynomial_overflow_is_a_clear_error():
    G = np.full((4, 3), 1e60)
    with pytest.raises(ValueError, match="overflowed"):
        NystromMap(polynomial(3, 1.0)).fit(G, [0, 1])


def test_map_rejects_bad_input_and_stays_unchanged(G0):
    nmap = NystromMap(rbf(1.0)).fit(G0, [0, 5, 9])
    before = (nmap.landmarks.copy(), nmap.inv_sqrt.copy(), dict(nmap.record))
    cases = [
        (lambda: nmap.fit(G0, [0, 200]), "landmarks: expected ids < 200"),
        (lambda: nmap.fit(G0, [-1, 3]), "landmarks: expected ids >= 0"),
        (lambda: nmap.fit(G0, [3, 3, 4]), "landmarks: expected distinct ids"),
        (lambda: nmap.fit(G0[:4], np.arange(5)), "at most N=4"),
        (lambda: nmap.fit(G0, []), "landmarks: expected at least one id"),
        (lambda: nmap.fit(G0, [[0, 1]]), "landmarks: expected a 1-D"),
        (lambda: nmap.fit(G0, [0.5, 2]), "non-integral"),
        (lambda: nmap.fit(np.full((3, 2), np.inf), [0]), "G0: expected finite"),
        (lambda: nmap.features(G0[:, :5]), "d=6 columns"),
        (lambda: nmap.project(G0[:4]), r"shape \(3, d\)"),
        (lambda: nmap.project(np.full((3, 2), np.nan)), "G_L: expected finite"),
        (lambda: nmap.approximate(np.ones((5, 4)), np.ones((3, 2))), "phi: expected 3 columns"),
        (lambda: nmap.approximate(np.ones((5, 3)), np.ones((4, 2))), "W: expected 3 rows"),
    ]
    for call, msg in cases:
        with pytest.raises(ValueError, match=msg):
            call()
    np.testing.assert_array_equal(nmap.landmarks, before[0])
    np.testing.assert_array_equal(nmap.inv_sqrt, before[1])
    assert nmap.record == before[2]


def test_unfitted_map_and_bad_options_raise():
    with pytest.raises(ValueError, match="not fitted"):
        NystromMap().features(np.ones((2, 2)))
    with pytest.raises(ValueError, match="cutoff"):
        NystromMap(cutoff=1.0)
    with pytest.raises(ValueError, match="cutoff"):
        NystromMap(cutoff=-1e-3)
    with pytest.raises(ValueError, match="ridge"):
        NystromMap(ridge=np.nan)


def test_empty_target_batch_is_allowed(G0):
    nmap = NystromMap().fit(G0, [0, 1, 2])
    assert nmap.features(np.empty((0, 6))).shape == (0, 3)


def test_nystrom_error_shrinks_with_m_for_a_nonlinear_update():
    """Sanity: ghat_t tracks a smooth non-linear change better with more RBF landmarks."""
    rng = np.random.default_rng(4)
    G0 = rng.normal(size=(400, 3))
    g_t = np.tanh(G0 @ rng.normal(size=(3, 3)) * 0.7) + 0.1 * np.sin(2 * G0)
    errs = []
    for m in (10, 40, 160):
        L = select_landmarks(G0, m, method="kmeans++", rng=np.random.default_rng(0), kernel=rbf(0.5))
        nmap = NystromMap(rbf(0.5), ridge=1e-8).fit(G0, L)
        ghat = nmap.approximate(nmap.features(G0), nmap.project(g_t[L]))
        errs.append(np.linalg.norm(ghat - g_t) / np.linalg.norm(g_t))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.1, errs


# -- pinned defaults, validations and the rls pilot ------------------------------


def test_polynomial_defaults_are_degree_2_offset_1(G0):
    """polynomial() and make_kernel("polynomial") are (<a, b> + 1)^2, as documented."""
    A, B = G0[:4], G0[4:9]
    for k in (polynomial(), make_kernel("polynomial")):
        assert (k.degree, k.c) == (2, 1.0)
        np.testing.assert_allclose(k(A, B), (A @ B.T + 1.0) ** 2, rtol=TOL)
    assert polynomial(3).c == 1.0 and polynomial(c=0.5).degree == 2


@pytest.mark.parametrize("N, m, pilot", [(200, 25, 64), (200, 50, 100), (40, 10, 40)])
def test_rls_default_pilot_is_min_n_max_64_2m(N, m, pilot):
    """select_landmarks(method="rls") with a non-linear kernel draws its pilot of
    min(N, max(64, 2 m)) targets: the same ids as passing that pilot explicitly
    (a different pilot size changes the scores, hence the draw)."""
    G = np.random.default_rng(N + m).normal(size=(N, 3))
    for kernel in (rbf(0.5), polynomial(3, 1.0)):
        got = select_landmarks(G, m, method="rls", rng=np.random.default_rng(7), kernel=kernel)
        want = select_landmarks(G, m, method="rls", rng=np.random.default_rng(7), kernel=kernel, pilot=pilot)
        np.testing.assert_array_equal(got, want)
        if pilot < N:
            other = select_landmarks(G, m, method="rls", rng=np.random.default_rng(7), kernel=kernel, pilot=N)
            assert not np.array_equal(got, other)  # the pilot size is visible in the result


@pytest.mark.parametrize("N", [100, 300])
def test_rls_scores_default_pilot_is_min_n_256(N):
    G = np.random.default_rng(N).normal(size=(N, 3))
    got = ridge_leverage_scores(G, rbf(0.5), rng=np.random.default_rng(1))
    want = ridge_leverage_scores(G, rbf(0.5), pilot=min(N, 256), rng=np.random.default_rng(1))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kernel", [polynomial(1, 1.0), polynomial(2, 1.0)])
@pytest.mark.parametrize("pilot", [60, 120])
def test_rls_with_a_singular_pilot_kernel_matrix_is_exact(kernel, pilot):
    """A polynomial kernel in R^4 has rank 5 (degree 1) or 15 (degree 2), so the pilot's
    60 x 60 or 120 x 120 kernel matrix is singular. Its pseudo-inverse square root
    must drop the (rounding-level) null eigenvalues: the pilot points span the
    kernel's feature space, so the Nystrom features are then exact and the scores
    equal the exact ridge leverage scores diag(K (K + ridge I)^-1) of the full
    kernel, to ~1e-13 (measured ~1e-14). Keeping the null eigenvalues (a cutoff
    of 0, or of the wrong sign) adds ~1e-9 of rounding noise amplified by
    1/sqrt(eigenvalue); the tolerance 1e-11 sits between the two."""
    G = np.random.default_rng(3).normal(size=(120, 4))
    lam = 1.0
    scores = ridge_leverage_scores(G, kernel, ridge=lam, pilot=pilot, rng=np.random.default_rng(0))
    K = kernel(G, G)
    exact = np.diag(K @ np.linalg.inv(K + lam * np.eye(120)))
    np.testing.assert_allclose(scores, exact, rtol=0, atol=1e-11)


def test_fit_anchor_copies_the_callers_array(G0):
    """Mutating the array passed to fit_anchor afterwards changes nothing in the map."""
    A = G0[:8].copy()
    nmap = NystromMap(rbf(0.5)).fit_anchor(A)
    phi = nmap.features(G0[:20])
    anchor = nmap.anchor.copy()
    A[...] = 0.0
    np.testing.assert_array_equal(nmap.anchor, anchor)
    np.testing.assert_array_equal(nmap.features(G0[:20]), phi)
    np.testing.assert_array_equal(nmap.landmarks, np.arange(8))
    L = np.array([3, 1, 4])
    nmap.fit_anchor(G0[L], L)
    L[0] = 9
    np.testing.assert_array_equal(nmap.landmarks, [3, 1, 4])


def test_fit_anchor_rejects_repeated_or_miscounted_landmarks(G0):
    nmap = NystromMap(rbf(0.5)).fit_anchor(G0[:3], [0, 1, 2])
    with pytest.raises(ValueError, match="landmarks: expected distinct ids"):
        nmap.fit_anchor(G0[:3], [4, 4, 5])
    with pytest.raises(ValueError, match="landmarks: expected 3 ids"):
        nmap.fit_anchor(G0[:3], [4, 5])
    np.testing.assert_array_equal(nmap.landmarks, [0, 1, 2])


def test_rng_must_be_a_generator_for_every_method(G0):
    """No global or legacy random state: RandomState has .choice, so only the check stops it."""
    legacy = np.random.RandomState(0)
    for method in LANDMARK_METHODS:
        for kernel in ("linear", "rbf"):
            for bad in (legacy, 0, None):
                with pytest.raises(ValueError, match="rng: expected a numpy.random.Generator"):
                    select_landmarks(G0, 5, method=method, rng=bad, kernel=kernel)
    for kernel in ("linear", "rbf"):  # the linear scores do not draw at all
        for bad in (legacy, 0, None):
            with pytest.raises(ValueError, match="rng: expected a numpy.random.Generator"):
                ridge_leverage_scores(G0, kernel, rng=bad)
