"""P11 Nystrom reproduction (proofs/README.md section 6; proof in p11_nystrom_reproduction.md).

Linear kernel with the constant feature: if g_t = A g_0 + b and the landmarks'
augmented cached embeddings span those of all targets, ghat_t = g_t exactly;
rank(Ghat_t) <= m always. Tolerance: 1e-9 relative to max |g_t| (proofs/README.md section 6.14, float64
tolerance); examples are restricted to a singular-value ratio >= 1e-2 of the
landmarks' augmented embeddings (cond of the kept part of K_LL <= 1e4).
"""

from __future__ import annotations

import numpy as np
from hypothesis import assume, example, given
from hypothesis import strategies as st

from proofs.strategies_nystrom import affine_problems, kernels, seeds
from reference.nystrom import NystromMap, linear

REL_TOL = 1e-9  # proofs/README.md section 6.14: deterministic identities in float64
MIN_SV_RATIO = 1e-2  # kept singular values of X_L; their squares are >= 1e-4 * max >> cutoff 1e-10


def _augmented(G0: np.ndarray, c: float) -> np.ndarray:
    return np.hstack([G0, np.full((G0.shape[0], 1), c)])


def _well_conditioned_rank(X: np.ndarray) -> int:
    """Numerical rank of X, or reject the example if the spectrum has no clear gap."""
    sv = np.linalg.svd(X, compute_uv=False)
    rank = int(np.count_nonzero(sv > 1e-8 * sv[0]))
    assume(sv[rank - 1] >= MIN_SV_RATIO * sv[0])
    return rank


def _scale(X: np.ndarray, A: np.ndarray, b: np.ndarray, c: float) -> float:
    """max_y,j |(M^T x(y))_j| is at most max|x| * max_j sum_i |M_ij|: the scale of g_t
    that rounding errors are relative to (g_t itself may cancel to ~0)."""
    M = np.vstack([A.T, b[None, :] / c])
    return float(np.abs(X).max() * np.abs(M).sum(axis=0).max())


def _ghat(nmap: NystromMap, G0: np.ndarray, G_L: np.ndarray) -> np.ndarray:
    return nmap.approximate(nmap.features(G0), nmap.project(G_L))


@given(affine_problems(spanning=True))
def test_p11_affine_update_is_reproduced_exactly(p):
    """P11: spanning landmarks + constant feature => ghat_t == A g_0 + b for all targets."""
    X = _augmented(p.G0, p.const)
    r = _well_conditioned_rank(X[p.landmarks])
    assume(np.linalg.matrix_rank(X, tol=1e-8 * np.abs(X).max()) == r)  # the landmarks span
    g_t = p.G0 @ p.A.T + p.b
    nmap = NystromMap(linear(p.const)).fit(p.G0, p.landmarks)
    assert nmap.rank == r  # the cutoff drops exactly the null directions of K_LL
    ghat = _ghat(nmap, p.G0, g_t[p.landmarks])
    np.testing.assert_allclose(ghat, g_t, rtol=0, atol=REL_TOL * _scale(X, p.A, p.b, p.const))
    # right after a refresh (A = I, b = 0) the map returns the cache itself
    np.testing.assert_allclose(_ghat(nmap, p.G0, p.G0[p.landmarks]), p.G0, rtol=0,
                               atol=REL_TOL * np.abs(p.G0).max())


@given(affine_problems(spanning=False))
def test_p11_non_spanning_landmarks_give_the_projection(p):
    """Remark of P11: without spanning, ghat_t = M^T P x(y) (affine map of the projection
    of x(y) = [g_0(y), c] onto span x(L)) -- an approximation, not a reproduction."""
    X = _augmented(p.G0, p.const)
    X_L = X[p.landmarks]
    sv = np.linalg.svd(X_L, compute_uv=False)
    assume(sv[-1] >= MIN_SV_RATIO * sv[0])  # m <= r + 1 rows, all directions kept
    g_t = p.G0 @ p.A.T + p.b
    nmap = NystromMap(linear(p.const)).fit(p.G0, p.landmarks)
    ghat = _ghat(nmap, p.G0, g_t[p.landmarks])
    M = np.vstack([p.A.T, p.b[None, :] / p.const])  # g_t = M^T x
    P = X_L.T @ np.linalg.solve(X_L @ X_L.T, X_L)  # projector onto the row space of X_L
    want = X @ P @ M
    scale = _scale(X, p.A, p.b, p.const)
    np.testing.assert_allclose(ghat, want, rtol=0, atol=REL_TOL * scale * 10)
    # The targets off span x(L) are not reproduced: the error equals M^T (I - P) x exactly.
    off = np.linalg.norm(X - X @ P, axis=1) > 1e-3 * np.abs(X).max()
    assume(off.any())
    resid = np.linalg.norm((X - X @ P) @ M, axis=1)
    assert np.all(np.linalg.norm(ghat - g_t, axis=1) <= resid + REL_TOL * scale * 10)


@given(kernels(), seeds, st.integers(1, 10), st.integers(1, 6))
def test_p11_rank_of_ghat_is_at_most_m(kernel, seed, m, d_out):
    """P11: rank(Ghat_t) <= m for any kernel and any G_t(L)."""
    rng = np.random.default_rng(seed)
    N, d = 40, 5
    G0 = rng.normal(size=(N, d)) / np.sqrt(d)
    L = rng.choice(N, size=m, replace=False)
    nmap = NystromMap(kernel).fit(G0, L)
    ghat = _ghat(nmap, G0, rng.normal(size=(m, d_out)))
    assert np.linalg.matrix_rank(ghat) <= min(m, nmap.rank)


@given(seeds, st.integers(2, 6))
@example(seed=0, d=3)
def test_p11_constant_feature_is_needed_for_offsets(seed, d):
    """The constant feature carries b: full-rank embeddings, b != 0. With c > 0 the
    update is reproduced exactly; with c = 0 the best linear map misses b."""
    rng = np.random.default_rng(seed)
    N, m = 60, 2 * d + 2
    G0 = rng.normal(size=(N, d))  # spans R^d, affine hull contains the origin
    L = rng.choice(N, size=m, replace=False)
    A = rng.normal(size=(d, d))
    b = 1.0 + rng.random(d)  # every coordinate of the offset >= 1
    g_t = G0 @ A.T + b
    with_c = _ghat(NystromMap(linear(1.0)).fit(G0, L), G0, g_t[L])
    np.testing.assert_allclose(with_c, g_t, rtol=0, atol=REL_TOL * np.abs(g_t).max())
    no_c = _ghat(NystromMap(linear(0.0)).fit(G0, L), G0, g_t[L])
    assert np.abs(no_c - g_t).max() > 1e-3
