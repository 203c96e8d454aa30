"""P10 Nystrom interpolation (proofs/README.md section 6; proof in p10_nystrom_interpolation.md).

With K_LL non-singular and no ridge, ghat_t(l) = G_t(l) for every landmark l.
Tolerance: 1e-9 relative to max |G_t(L)| (the float64 tolerance of proofs/README.md section 6.14, for
deterministic identities); the examples are restricted to cond(K_LL) <= 1e5,
where the computed product K K^{-1/2} K^{-1/2} has error ~cond * 1e-16 <= 1e-11.
"""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

from proofs.strategies_nystrom import interpolation_problems, nystrom_by_definition, seeds
from reference.nystrom import NystromMap, linear, polynomial, rbf

REL_TOL = 1e-9  # proofs/README.md section 6.14: deterministic identities in float64
MAX_COND = 1e5  # keeps the rounding error of K K^{-1} below ~1e-11


def _ghat_at_landmarks(nmap: NystromMap, G0: np.ndarray, L: np.ndarray, G_L: np.ndarray) -> np.ndarray:
    phi_L = nmap.features(G0[L])
    return nmap.approximate(phi_L, nmap.project(G_L))


@given(interpolation_problems())
def test_p10_landmarks_are_interpolated(p):
    """P10: ghat_t(l) == G_t(l) for every landmark, any kernel, any G_t(L)."""
    nmap = NystromMap(p.kernel).fit(p.G0, p.landmarks)
    s = nmap.eigenvalues
    assume(s[-1] > 0 and s[0] / s[-1] <= MAX_COND)  # "K_LL non-singular", with a margin
    assert nmap.rank == p.landmarks.size
    ghat_L = _ghat_at_landmarks(nmap, p.G0, p.landmarks, p.G_L)
    scale = np.abs(p.G_L).max()
    np.testing.assert_allclose(ghat_L, p.G_L, rtol=0, atol=REL_TOL * scale)


@given(seeds, st.integers(2, 6), st.integers(1, 4))
def test_p10_singular_kernel_interpolates_on_kept_eigenspace(seed, d, n_dup):
    """Remark of P10: a singular K_LL (duplicated landmark embeddings) is handled by
    the cutoff: Ghat_t(L) = P G_t(L), P the projector onto the kept eigenspace,
    the effective rank is reported, and nothing is NaN."""
    rng = np.random.default_rng(seed)
    n_dup = min(n_dup, d)
    base = rng.normal(size=(d, d))
    s_base = np.linalg.eigvalsh(rbf(0.5)(base, base))
    assume(s_base[-1] / s_base[0] <= MAX_COND)  # the distinct part is non-singular
    G0 = np.vstack([base, base[:n_dup]])  # n_dup landmarks duplicate others exactly
    L = np.arange(G0.shape[0])
    nmap = NystromMap(rbf(0.5)).fit(G0, L)
    assert nmap.rank == d and nmap.record["dropped"] == n_dup
    G_L = rng.normal(size=(L.size, 3))
    ghat_L = _ghat_at_landmarks(nmap, G0, L, G_L)
    assert np.isfinite(ghat_L).all()
    s, U = np.linalg.eigh(nmap.kernel(G0, G0))
    Ur = U[:, -d:]  # eigh sorts ascending: the d kept directions are the last ones
    np.testing.assert_allclose(ghat_L, Ur @ (Ur.T @ G_L), rtol=0, atol=REL_TOL * np.abs(G_L).max() * 1e2)
    # duplicated landmarks get the average of their targets (the projection)
    np.testing.assert_allclose(ghat_L[:n_dup], ghat_L[d : d + n_dup], rtol=0, atol=1e-9)


@given(seeds, st.sampled_from([1e-3, 1e-1, 1.0]))
def test_p10_ridge_shrinks_instead_of_interpolating(seed, lam):
    """Remark of P10: with a ridge, Ghat_t(L) = K_LL (K_LL + lam I)^{-1} G_t(L) != G_t(L)."""
    rng = np.random.default_rng(seed)
    G0 = rng.normal(size=(30, 4))
    L = rng.choice(30, size=8, replace=False)
    nmap = NystromMap(rbf(1.0), ridge=lam).fit(G0, L)
    G_L = rng.normal(size=(8, 2))
    ghat_L = _ghat_at_landmarks(nmap, G0, L, G_L)
    K = nmap.kernel(G0[L], G0[L])
    want = K @ np.linalg.solve(K + lam * np.eye(8), G_L)
    np.testing.assert_allclose(ghat_L, want, rtol=0, atol=REL_TOL * np.abs(G_L).max() * 1e2)
    assert np.abs(ghat_L - G_L).max() > 1e-6 * lam  # it really shrinks


def test_p10_linear_kernel_at_full_rank():
    """A fixed example: the linear kernel with the constant feature and m = d + 1."""
    rng = np.random.default_rng(7)
    G0 = rng.normal(size=(50, 5))
    L = np.array([3, 11, 17, 29, 41, 48])
    nmap = NystromMap(linear(1.0)).fit(G0, L)
    assert nmap.rank == 6
    G_L = rng.normal(size=(6, 5))
    np.testing.assert_allclose(_ghat_at_landmarks(nmap, G0, L, G_L), G_L, rtol=0, atol=1e-9 * np.abs(G_L).max())


# ---------------------------------------------------------------- phi and W themselves
# ghat = W^T phi depends only on the product of the two halves, so every test above passes
# for any factorisation of K_LL^+ (phi = K_LL^+ k(y) with W = G_t(L), say). Section 5.2 fixes
# the halves: phi(y) = K_LL^{-1/2} k(y) and W_t = K_LL^{-1/2} G_t(L), with the symmetric
# pseudo-inverse square root. The tree is built over phi, so its geometry depends on them.

def _assert_map_is_the_definition(nmap: NystromMap, ref, G0: np.ndarray, G_L: np.ndarray) -> None:
    assert nmap.rank == ref.rank
    for name, got, want in (("K_LL^{-1/2}", nmap.inv_sqrt, ref.inv_sqrt),
                            ("phi = features(G0)", nmap.features(G0), ref.phi),
                            ("W = project(G_L)", nmap.project(G_L), ref.W)):
        np.testing.assert_allclose(got, want, rtol=0, atol=REL_TOL * np.abs(want).max(), err_msg=name)


@given(interpolation_problems())
def test_p10_phi_and_W_are_the_symmetric_inverse_square_root(p):
    """features(G) = k(y)^T K_LL^{-1/2} and project(G_L) = K_LL^{-1/2} G_L, with K_LL^{-1/2}
    from scipy.linalg.eigh of K_LL evaluated from the kernel's definition (cond(K_LL) <= 1e5)."""
    ref = nystrom_by_definition(p.kernel, p.G0, p.landmarks, p.G_L)
    assume(ref.condition <= MAX_COND)
    _assert_map_is_the_definition(NystromMap(p.kernel).fit(p.G0, p.landmarks), ref, p.G0, p.G_L)


def test_p10_phi_and_W_pinned_on_small_fixed_cases():
    """Fixed cases: each kernel, and a singular K_LL (a duplicated landmark embedding: one
    eigenvalue dropped by the cutoff). phi = K_LL^+ k(y) with W = G_L gives the same ghat, but fails."""
    rng = np.random.default_rng(12)
    G0 = rng.normal(size=(30, 4)) / 2.0
    L = np.array([1, 4, 9, 16, 22, 27])
    G_L = rng.normal(size=(6, 3))
    for kernel in (linear(1.0), rbf(0.5), polynomial(2, 1.0)):
        m = 5 if kernel == linear(1.0) else 6                 # the linear kernel: rank <= d + 1 = 5
        ref = nystrom_by_definition(kernel, G0, L[:m], G_L[:m])
        assert ref.rank == m and ref.condition <= 1e4
        _assert_map_is_the_definition(NystromMap(kernel).fit(G0, L[:m]), ref, G0, G_L[:m])
    G0_dup = G0.copy()
    G0_dup[27] = G0_dup[9]                                    # landmarks 9 and 27 coincide: K_LL singular
    ref = nystrom_by_definition(rbf(0.5), G0_dup, L, G_L)
    assert ref.rank == 5 and ref.condition <= 1e4
    _assert_map_is_the_definition(NystromMap(rbf(0.5)).fit(G0_dup, L), ref, G0_dup, G_L)
