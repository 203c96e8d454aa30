"""Hypothesis strategies for the Nystrom propositions (P10-P12).

Structural choices (sizes, kernel, ranks, scales) are drawn by Hypothesis;
the arrays themselves come from a NumPy generator seeded by a drawn integer,
which keeps examples fast to generate and still reproducible and shrinkable
(the seed shrinks towards 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
from hypothesis import strategies as st

from reference.nystrom import LinearKernel, PolynomialKernel, RBFKernel, linear, polynomial, rbf

__all__ = ["Problem", "kernels", "interpolation_problems", "affine_problems", "kernel_by_definition",
           "NystromReference", "nystrom_by_definition"]


def kernel_by_definition(kernel, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """[kappa(a_i, b_j)] from the definitions of proofs/README.md section 5.1, not the kernel's own code.

    Linear: <a, b> + const^2; RBF: exp(-gamma ||a - b||^2) with the squared
    distance summed from the coordinate differences (the reference expands
    it); polynomial: (<a, b> + c)^degree.
    """
    A, B = np.asarray(A, np.float64), np.asarray(B, np.float64)
    dots = np.einsum("ik,jk->ij", A, B)
    if isinstance(kernel, LinearKernel):
        return dots + kernel.const ** 2
    if isinstance(kernel, RBFKernel):
        diff = A[:, None, :] - B[None, :, :]
        return np.exp(-kernel.gamma * np.einsum("ijk,ijk->ij", diff, diff))
    if isinstance(kernel, PolynomialKernel):
        return (dots + kernel.c) ** kernel.degree
    raise TypeError(f"unknown kernel {kernel!r}")


@dataclass
class NystromReference:
    """The map of proofs/README.md section 5.2 computed from its definitions (one row per target)."""

    K: np.ndarray           # (m, m) K_LL
    inv_sqrt: np.ndarray    # (m, m) K_LL^{-1/2}: symmetric pseudo-inverse square root, relative cutoff
    rank: int               # eigenvalues kept
    condition: float        # s_max / s_min over the kept eigenvalues
    phi: np.ndarray         # (N, m) phi(y) = K_LL^{-1/2} k(y)
    W: np.ndarray           # (m, d_out) W_t = K_LL^{-1/2} G_t(L)
    ghat: np.ndarray        # (N, d_out) ghat_t(y) = W_t^T phi(y)


def nystrom_by_definition(kernel, G0: np.ndarray, landmarks: np.ndarray, G_L: np.ndarray,
                          cutoff: float = 1e-10) -> NystromReference:
    """phi, W_t and ghat_t by the formulas of section 5.2, independently of ``reference.nystrom``.

    K_LL = U diag(s) U^T by ``scipy.linalg.eigh``; the kept set is
    S = {i : s_i > cutoff * s_max}; K_LL^{-1/2} = U_S diag(s_S^{-1/2}) U_S^T
    (unique: it does not depend on the eigenvector basis chosen inside an
    eigenspace); phi(y) = K_LL^{-1/2} k(y), W_t = K_LL^{-1/2} G_t(L) and
    ghat_t(y) = W_t^T phi(y).
    """
    G0 = np.asarray(G0, np.float64)
    L = np.asarray(landmarks)
    K = kernel_by_definition(kernel, G0[L], G0[L])
    s, U = scipy.linalg.eigh(K)
    keep = s > cutoff * s.max()
    inv_sqrt = (U[:, keep] / np.sqrt(s[keep])) @ U[:, keep].T
    phi = kernel_by_definition(kernel, G0, G0[L]) @ inv_sqrt     # row y: (K_LL^{-1/2} k(y))^T
    W = inv_sqrt @ np.asarray(G_L, np.float64)
    ghat = phi @ W                                                # row y: (W_t^T phi(y))^T
    return NystromReference(K, inv_sqrt, int(keep.sum()), float(s.max() / s[keep].min()), phi, W, ghat)


@dataclass
class Problem:
    """One randomly drawn Nystrom set-up."""

    G0: np.ndarray          # (N, d) cached embeddings
    landmarks: np.ndarray   # (m,) distinct ids
    G_L: np.ndarray         # (m, d_out) current encodings of the landmarks
    kernel: object
    seed: int


seeds = st.integers(min_value=0, max_value=2**32 - 1)


@st.composite
def kernels(draw, *, linear_const: bool | None = None):
    """A kernel object: linear (optional constant feature), RBF or polynomial."""
    kind = draw(st.sampled_from(["linear", "rbf", "polynomial"]))
    if kind == "linear":
        if linear_const is None:
            c = draw(st.sampled_from([0.0, 0.5, 1.0, 3.0]))
        else:
            c = draw(st.sampled_from([0.5, 1.0, 3.0])) if linear_const else 0.0
        return linear(c)
    if kind == "rbf":
        return rbf(draw(st.sampled_from([0.1, 0.5, 1.0, 2.0])))
    return polynomial(draw(st.integers(2, 3)), draw(st.sampled_from([0.5, 1.0])))


@st.composite
def interpolation_problems(draw):
    """Landmarks with (typically) non-singular K_LL and arbitrary G_t(L).

    For the linear kernel K_LL has rank <= d (+1 with the constant), so m is
    kept within that; RBF and polynomial kernels may take more landmarks.
    """
    seed = draw(seeds)
    kernel = draw(kernels())
    d = draw(st.integers(2, 8))
    if type(kernel).__name__ == "LinearKernel":
        m = draw(st.integers(1, d + (1 if kernel.const > 0 else 0)))
    else:
        m = draw(st.integers(1, 12))
    N = draw(st.integers(m, m + 40))
    d_out = draw(st.integers(1, 6))
    scale = draw(st.sampled_from([0.3, 1.0, 3.0]))
    rng = np.random.default_rng(seed)
    G0 = scale * rng.normal(size=(N, d)) / np.sqrt(d)
    L = rng.choice(N, size=m, replace=False)
    G_L = rng.normal(size=(m, d_out)) * draw(st.sampled_from([1e-3, 1.0, 1e3]))
    return Problem(G0, L, G_L, kernel, seed)


@dataclass
class AffineProblem:
    G0: np.ndarray          # (N, d) on an r-dimensional affine subspace
    landmarks: np.ndarray   # (m,)
    A: np.ndarray           # (d_out, d)
    b: np.ndarray           # (d_out,)
    const: float            # constant feature c (> 0)
    r: int
    seed: int


@st.composite
def affine_problems(draw, *, spanning: bool):
    """Cached embeddings of random intrinsic rank r and a random affine update.

    ``spanning=True`` takes m >= r + 1 landmarks (generic points of an
    r-dimensional affine subspace span it); ``spanning=False`` takes m <= r.
    """
    seed = draw(seeds)
    d = draw(st.integers(1, 8))
    r = draw(st.integers(1, d))
    if spanning:
        m = draw(st.integers(r + 1, r + 8))
    else:
        m = draw(st.integers(1, r))
    N = draw(st.integers(max(m, r + 2), 60))
    d_out = draw(st.integers(1, 8))
    const = draw(st.sampled_from([0.5, 1.0, 2.0]))
    rng = np.random.default_rng(seed)
    B = rng.normal(size=(r, d))
    mu = rng.normal(size=d) * draw(st.sampled_from([0.0, 1.0]))
    G0 = rng.normal(size=(N, r)) @ B / np.sqrt(d) + mu
    L = rng.choice(N, size=m, replace=False)
    A = rng.normal(size=(d_out, d))
    b = rng.normal(size=d_out) * draw(st.sampled_from([0.0, 1.0, 5.0]))
    return AffineProblem(G0, L, A, b, const, r, seed)
