"""Hypothesis strategies for the Nystrom propositions (P10-P12).

Structural choices (sizes, kernel, ranks, scales) are drawn by Hypothesis;
the arrays themselves come from a NumPy generator seeded by a drawn integer,
which keeps examples fast to generate and still reproducible and shrinkable
(the seed shrinks towards 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from reference.nystrom import linear, polynomial, rbf

__all__ = ["Problem", "kernels", "interpolation_problems", "affine_problems"]


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
