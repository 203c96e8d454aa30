"""Nystrom update map: carry an encoder update from m landmarks to all targets.

proofs/README.md section 5. The cache holds g_0(y), the target embeddings from the last
full encode. A kernel kappa on cached embeddings and m landmark targets L give

    K_LL = kappa(g_0(L), g_0(L))                  (m, m)
    k(y) = kappa(g_0(L), g_0(y))                  (m,)
    phi(y) = K_LL^{-1/2} k(y)                     (m,)   Nystrom coordinates
    W_t = K_LL^{-1/2} G_t(L)                      (m, d) from the landmarks' current encodings
    ghat_t(y) = W_t^T phi(y)
              = G_t(L)^T K_LL^{-1} k(y)           approximate current embedding (rank <= m)

so ``ghat_t`` is the kernel interpolant of the map g_0 -> g_t through the
landmarks. Two readings of the formula help:

- Right after a refresh the landmarks' current encodings are their cached
  ones, G_t(L) = g_0(L), and ghat_0(y) = g_0(L)^T K_LL^{-1} k(y) is the
  Nystrom approximation of the cache itself. For the linear kernel it is the
  orthogonal projection of the (augmented) embedding x(y) = [g_0(y), c] onto
  the span of the landmarks' x(L): exact when the landmarks span, only
  approximate otherwise.
- For the linear kernel ghat_t is the least-squares affine map from g_0(L) to
  G_t(L) applied to g_0(y), so any affine change g_t = A g_0 + b is carried
  exactly when the landmarks span (P11); the constant feature c != 0 is what
  carries the offset b. Non-linear kernels (RBF, polynomial) interpolate
  non-linear changes.

K_LL^{-1/2} is the symmetric pseudo-inverse square root computed by
``scipy.linalg.eigh``: eigenvalues below ``cutoff * max eigenvalue`` are
dropped (their directions get weight 0), and an optional ``ridge`` is added to
the diagonal first. phi and W therefore always have m columns / rows whatever
the effective rank, and phi varies smoothly with the cache (no eigenbasis
sign flips), which is what lets the dynamic index repair its tree after a
refresh instead of rebuilding it (``reference/dynamic.py``).

Cost per training step: m target-encoder passes for G_t(L) and O(m^2 d) for
W_t; nothing of size N is recomputed. ``features`` (O(N m d)) runs only when
the cache or the landmarks change.

References
----------
Williams, Seeger, "Using the Nystrom method to speed up kernel machines",
NIPS 2001. Monath, Zaheer, Allen, McCallum, "Improving Dual-Encoder Training
through Dynamic Indexes for Negative Mining", AISTATS 2023, section 4.
Alaoui, Mahoney, "Fast randomized kernel ridge regression with statistical
guarantees", NIPS 2015 (ridge leverage scores).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Union

import numpy as np
import scipy.linalg

from reference._validation import (
    MAX_ABS_COORD,
    as_float_array,
    InvariantError,
    as_index_array,
    check_choice,
    check_int,
    check_nonnegative,
    check_positive,
    check_rng,
)

__all__ = [
    "Kernel",
    "LinearKernel",
    "RBFKernel",
    "PolynomialKernel",
    "linear",
    "rbf",
    "polynomial",
    "make_kernel",
    "select_landmarks",
    "ridge_leverage_scores",
    "NystromMap",
    "LANDMARK_METHODS",
    "KERNELS",
]

LANDMARK_METHODS = ("uniform", "kmeans++", "rls")
KERNELS = ("linear", "rbf", "polynomial")


# --------------------------------------------------------------------------
# Kernels on cached embeddings
# --------------------------------------------------------------------------


class Kernel(Protocol):
    """What the Nystrom map needs from a kernel: ``kappa(A, B)`` and its diagonal."""

    def __call__(self, A: np.ndarray, B: np.ndarray) -> np.ndarray: ...

    def diag(self, A: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class LinearKernel:
    """kappa(a, b) = <a, b> + const^2: the inner product of x = [a, const].

    Parameters
    ----------
    const : float, default 0.0
        Value of the constant feature appended to every embedding. A non-zero
        value lets the Nystrom map carry an offset b of an affine change
        g_t = A g_0 + b (P11).
    """

    const: float = 0.0

    def __call__(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        return A @ B.T + self.const**2

    def diag(self, A: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", A, A) + self.const**2


@dataclass(frozen=True)
class RBFKernel:
    """kappa(a, b) = exp(-gamma ||a - b||^2).

    Parameters
    ----------
    gamma : float, default 1.0
        Inverse squared length scale, > 0. For unit-norm embeddings
        ||a - b||^2 is in [0, 4], so gamma of order 1 is a sensible scale.
    """

    gamma: float = 1.0

    def __call__(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        sq = (
            np.einsum("ij,ij->i", A, A)[:, None]
            + np.einsum("ij,ij->i", B, B)[None, :]
            - 2.0 * (A @ B.T)
        )
        return np.exp(-self.gamma * np.maximum(sq, 0.0))

    def diag(self, A: np.ndarray) -> np.ndarray:
        return np.ones(A.shape[0])


@dataclass(frozen=True)
class PolynomialKernel:
    """kappa(a, b) = (<a, b> + c)^degree.

    Parameters
    ----------
    degree : int, default 2
        Degree >= 1.
    c : float, default 1.0
        Offset >= 0 (c > 0 keeps all lower-degree monomials).
    """

    degree: int = 2
    c: float = 1.0

    def __call__(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        return (A @ B.T + self.c) ** self.degree

    def diag(self, A: np.ndarray) -> np.ndarray:
        return (np.einsum("ij,ij->i", A, A) + self.c) ** self.degree


def linear(const: float = 0.0) -> LinearKernel:
    """Linear kernel <a, b> + const^2 (see :class:`LinearKernel`)."""
    return LinearKernel(const=check_nonnegative(const, "const"))


def rbf(gamma: float = 1.0) -> RBFKernel:
    """RBF kernel exp(-gamma ||a - b||^2) (see :class:`RBFKernel`)."""
    return RBFKernel(gamma=check_positive(gamma, "gamma"))


def polynomial(degree: int = 2, c: float = 1.0) -> PolynomialKernel:
    """Polynomial kernel (<a, b> + c)^degree (see :class:`PolynomialKernel`)."""
    return PolynomialKernel(degree=check_int(degree, "degree", low=1), c=check_nonnegative(c, "c"))


KernelSpec = Union[str, LinearKernel, RBFKernel, PolynomialKernel]


def make_kernel(kernel: KernelSpec) -> LinearKernel | RBFKernel | PolynomialKernel:
    """Return a kernel object from a name (default parameters) or a kernel object.

    Parameters
    ----------
    kernel : {"linear", "rbf", "polynomial"} or kernel object
        A name gives ``linear()``, ``rbf()`` or ``polynomial()``; an object
        made by those functions is returned as it is.

    Returns
    -------
    LinearKernel or RBFKernel or PolynomialKernel
    """
    if isinstance(kernel, (LinearKernel, RBFKernel, PolynomialKernel)):
        return kernel
    if isinstance(kernel, str):
        name = check_choice(kernel, "kernel", KERNELS)
        return {"linear": linear, "rbf": rbf, "polynomial": polynomial}[name]()
    raise ValueError(
        f"kernel: expected one of {KERNELS!r} or a kernel from linear()/rbf()/polynomial(), "
        f"got {type(kernel).__name__} {kernel!r}"[:200]
    )


# --------------------------------------------------------------------------
# Landmark selection
# --------------------------------------------------------------------------


def _landmark_matrix(kernel: Any, A: np.ndarray, ridge: float) -> np.ndarray:
    """K_LL + ridge I of the landmarks' embeddings ``A``, made exactly symmetric (the one definition
    that ``fit`` decomposes and ``check_invariants`` reconstructs)."""
    K = kernel(A, A) + ridge * np.eye(A.shape[0])
    return 0.5 * (K + K.T)


def _inv_sqrt(K: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Symmetric pseudo-inverse square root of a PSD matrix by ``scipy.linalg.eigh``.

    Returns ``(K^{+1/2}, eigenvalues descending, effective rank)``; eigenvalues
    <= ``cutoff * max eigenvalue`` (and all non-positive ones) are dropped.
    """
    K = 0.5 * (K + K.T)  # exact symmetry; eigh reads one triangle anyway
    s, U = scipy.linalg.eigh(K)
    s, U = s[::-1], U[:, ::-1]
    s_max = s[0] if s.size else 0.0
    keep = s > max(cutoff * s_max, 0.0) if s_max > 0 else np.zeros(s.shape, dtype=bool)
    r = int(np.count_nonzero(keep))
    Ur = U[:, :r]
    inv_sqrt = (Ur / np.sqrt(s[:r])) @ Ur.T
    return inv_sqrt, s, r


def ridge_leverage_scores(
    G0: Any,
    kernel: KernelSpec = "linear",
    *,
    ridge: float | None = None,
    pilot: int | None = None,
    rng: np.random.Generator,
) -> np.ndarray:
    """Approximate ridge leverage scores l_i = (K (K + ridge I)^{-1})_ii.

    With an N x p feature matrix Phi such that K ~= Phi Phi^T,
    l_i = phi_i^T (Phi^T Phi + ridge I)^{-1} phi_i. The features are exact for
    the linear kernel (x = [g_0, const], p = d + 1); for the other kernels
    they are Nystrom features on a uniform pilot sample of ``pilot`` targets
    (the two-pass scheme of Alaoui and Mahoney 2015). Cost O(N p^2).

    Parameters
    ----------
    G0 : array_like, shape (N, d)
        Cached target embeddings. Any real dtype, converted to float64 first:
        float32 input gives bitwise the scores of its float64 copy.
    kernel : str or kernel object, default "linear"
    ridge : float, optional
        Ridge lambda > 0. Default trace(K) / p, which makes the scores sum to
        at most p (the effective dimension at that ridge).
    pilot : int, optional
        Pilot sample size for non-linear kernels, default min(N, 256)
        (:func:`select_landmarks` passes min(N, max(64, 2 m))): ``pilot``
        distinct targets, drawn uniformly without replacement.
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray of float64, shape (N,)
        Scores in [0, 1].

    References
    ----------
    Alaoui, Mahoney, "Fast randomized kernel ridge regression with statistical
    guarantees", NIPS 2015.
    """
    G0 = as_float_array(G0, "G0", ndim=2, dtype=np.float64, max_abs=MAX_ABS_COORD)
    kern = make_kernel(kernel)
    rng = check_rng(rng)
    N = G0.shape[0]
    if isinstance(kern, LinearKernel):
        Phi = np.hstack([G0, np.full((N, 1), kern.const)])
    else:
        p = min(N, 256) if pilot is None else check_int(pilot, "pilot", low=1, high=N)
        S = np.sort(rng.choice(N, size=p, replace=False))
        inv_sqrt, _, _ = _inv_sqrt(kern(G0[S], G0[S]), 1e-10)
        Phi = kern(G0, G0[S]) @ inv_sqrt
    p = Phi.shape[1]
    lam = float(kern.diag(G0).sum()) / p if ridge is None else check_positive(ridge, "ridge")
    if lam <= 0:  # all-zero embeddings with const 0: no kernel mass anywhere
        return np.zeros(N)
    M = Phi.T @ Phi + lam * np.eye(p)
    C = scipy.linalg.cho_factor(M)
    scores = np.einsum("ij,ij->i", Phi, scipy.linalg.cho_solve(C, Phi.T).T)
    return np.clip(scores, 0.0, 1.0)


def select_landmarks(
    G0: Any,
    m: int,
    *,
    method: str = "uniform",
    rng: np.random.Generator,
    kernel: KernelSpec = "linear",
    ridge: float | None = None,
    pilot: int | None = None,
) -> np.ndarray:
    """Choose m distinct landmark targets from the cached embeddings (proofs/README.md section 5).

    Parameters
    ----------
    G0 : array_like, shape (N, d)
        Cached target embeddings g_0.
    m : int
        Number of landmarks, 1 <= m <= N.
    method : {"uniform", "kmeans++", "rls"}
        ``uniform``: m ids uniformly without replacement.
        ``kmeans++``: D^2 seeding in the kernel's feature space
        (squared distance kappa(a,a) + kappa(b,b) - 2 kappa(a,b)); the first
        landmark is uniform; a row equal to a chosen one is at distance 0
        exactly (not the rounding residue of the formula), and once every
        remaining target equals a chosen one, the rest are uniform among the
        unchosen.
        ``rls``: m ids without replacement with probability proportional to
        ridge leverage scores (:func:`ridge_leverage_scores`), successively
        renormalised (``Generator.choice(replace=False, p=...)``).
    rng : numpy.random.Generator
    kernel : str or kernel object, default "linear"
        Kernel used by ``kmeans++`` and ``rls`` (ignored by ``uniform``).
    ridge, pilot : optional
        Passed to :func:`ridge_leverage_scores` (``rls`` only); the default
        pilot is min(N, max(64, 2 m)) targets.

    Returns
    -------
    numpy.ndarray of int64, shape (m,)
        Distinct target ids, in the order they were chosen.
    """
    G0 = as_float_array(G0, "G0", ndim=2, dtype=np.float64, max_abs=MAX_ABS_COORD)
    N = G0.shape[0]
    m = check_int(m, "m", low=1)
    if m > N:
        raise ValueError(f"m: expected at most N={N} landmarks (one per target), got {m}")
    method = check_choice(method, "method", LANDMARK_METHODS)
    rng = check_rng(rng)
    kern = make_kernel(kernel)
    if method == "uniform":
        return rng.choice(N, size=m, replace=False).astype(np.int64)
    if method == "rls":
        if pilot is None:
            pilot = min(N, max(64, 2 * m))
        scores = ridge_leverage_scores(G0, kern, ridge=ridge, pilot=pilot, rng=rng)
        # A strictly positive floor keeps choice() valid when fewer than m
        # targets have a positive score (e.g. duplicated embeddings).
        w = scores + 1e-12 * max(float(scores.max()), 1.0)
        return rng.choice(N, size=m, replace=False, p=w / w.sum()).astype(np.int64)
    # k-means++ (D^2 seeding): a loop over the m landmarks, vectorised over N.
    diag = kern.diag(G0)
    ids = np.empty(m, dtype=np.int64)
    chosen = np.zeros(N, dtype=bool)
    ids[0] = rng.integers(N)
    chosen[ids[0]] = True
    d2 = np.full(N, np.inf)
    for j in range(1, m):
        last = ids[j - 1]
        new = diag + diag[last] - 2.0 * kern(G0, G0[last : last + 1])[:, 0]
        new[(G0 == G0[last]).all(axis=1)] = 0.0   # a copy of the landmark: 0 exactly, not a rounding residue
        d2 = np.minimum(d2, np.maximum(new, 0.0))
        w = np.where(chosen, 0.0, d2)
        total = w.sum()
        if not total > 0:  # every unchosen target coincides with a landmark
            w = (~chosen).astype(np.float64)
            total = w.sum()
        ids[j] = rng.choice(N, p=w / total)
        chosen[ids[j]] = True
    return ids


# --------------------------------------------------------------------------
# The Nystrom map
# --------------------------------------------------------------------------


class NystromMap:
    """phi(y) = K_LL^{-1/2} k(y) and W_t = K_LL^{-1/2} G_t(L) (proofs/README.md section 5).

    ``fit`` fixes the landmarks and their cached embeddings g_0(L);
    ``features`` maps cached embeddings to Nystrom coordinates phi;
    ``project`` maps the landmarks' current encodings G_t(L) to W_t;
    ``approximate`` returns ghat_t = phi W_t.

    Parameters
    ----------
    kernel : {"linear", "rbf", "polynomial"} or kernel object, default "linear"
    cutoff : float, default 1e-10
        Relative eigenvalue cutoff in [0, 1): eigenvalues of K_LL + ridge I
        at or below ``cutoff * max eigenvalue`` are treated as zero
        (pseudo-inverse). A numerically singular K_LL is handled here and
        reported by :attr:`rank` and :attr:`record`, never by NaN.
    ridge : float, default 0.0
        Added to the diagonal of K_LL before the inverse square root
        (kernel ridge regression through the landmarks; P10's exact
        interpolation needs ridge = 0).

    Attributes (after ``fit``)
    --------------------------
    landmarks : ndarray (m,)         landmark ids L
    anchor : ndarray (m, d)          their cached embeddings g_0(L)
    eigenvalues : ndarray (m,)       eigenvalues of K_LL + ridge I, descending
    rank : int                       effective rank (eigenvalues kept)
    inv_sqrt : ndarray (m, m)        K_LL^{-1/2} (symmetric pseudo-inverse square root)
    record : dict                    m, rank, dropped, cutoff, ridge, eig_max, eig_min_kept, condition

    References
    ----------
    Williams, Seeger, NIPS 2001; Monath et al., AISTATS 2023, section 4.
    """

    #: What :mod:`reference.persist` saves of a map (its file format: a change
    #: here is a new ``persist.FORMAT_VERSION``); nothing is derived.
    SAVED_FIELDS = ("kernel", "cutoff", "ridge", "landmarks", "anchor", "eigenvalues", "inv_sqrt", "rank", "record")
    DERIVED_FIELDS = ()

    def __init__(self, kernel: KernelSpec = "linear", *, cutoff: float = 1e-10, ridge: float = 0.0):
        self.kernel = make_kernel(kernel)
        cutoff = check_nonnegative(cutoff, "cutoff")
        if cutoff >= 1.0:
            raise ValueError(f"cutoff: expected a relative eigenvalue cutoff in [0, 1), got {cutoff!r}")
        self.cutoff = cutoff
        self.ridge = check_nonnegative(ridge, "ridge")
        self.landmarks: np.ndarray | None = None
        self.anchor: np.ndarray | None = None
        self.eigenvalues: np.ndarray | None = None
        self.inv_sqrt: np.ndarray | None = None
        self.rank: int = 0
        self.record: dict[str, float | int] = {}

    # -- state ---------------------------------------------------------------

    @property
    def fitted(self) -> bool:
        return self.inv_sqrt is not None

    @property
    def m(self) -> int:
        """Number of landmarks (0 before ``fit``)."""
        return 0 if self.landmarks is None else int(self.landmarks.size)

    @property
    def dim(self) -> int:
        """Dimension d of the cached embeddings the map was fitted on."""
        self._require_fit()
        return int(self.anchor.shape[1])

    def _require_fit(self) -> None:
        if not self.fitted:
            raise ValueError("NystromMap: not fitted; call fit(G0, landmarks) first")

    # -- fit -----------------------------------------------------------------

    def fit(self, G0: Any, landmarks: Any) -> "NystromMap":
        """Fix the landmarks and compute K_LL^{-1/2} (proofs/README.md section 5).

        Parameters
        ----------
        G0 : array_like, shape (N, d)
            Cached embeddings g_0 of all targets (only rows ``landmarks`` are
            kept; N is used to check the ids).
        landmarks : array_like of int, shape (m,)
            Distinct ids in [0, N), m <= N.

        Returns
        -------
        NystromMap
            ``self``.
        """
        G0 = as_float_array(G0, "G0", ndim=2, dtype=np.float64, max_abs=MAX_ABS_COORD)
        N = G0.shape[0]
        L = np.asarray(landmarks)
        if L.ndim == 1 and L.size > N:
            raise ValueError(f"landmarks: expected at most N={N} distinct ids, got {L.size}")
        L = as_index_array(L, "landmarks", upper=N, unique=True)
        self.fit_anchor(G0[L], L)
        return self

    def fit_anchor(self, anchor: Any, landmarks: Any | None = None) -> "NystromMap":
        """Fit on the landmarks' cached embeddings g_0(L) directly.

        Parameters
        ----------
        anchor : array_like, shape (m, d)
            Cached embeddings of the landmarks. Any real dtype; stored (as
            :attr:`anchor`) and used as float64, so float32 input gives bitwise
            the map of its float64 copy (as every method of the map does).
        landmarks : array_like of int, shape (m,), optional
            Their ids (stored for reference only; default 0..m-1).

        Returns
        -------
        NystromMap
            ``self``.
        """
        A = np.array(as_float_array(anchor, "anchor", ndim=2, dtype=np.float64, max_abs=MAX_ABS_COORD), copy=True)
        m = A.shape[0]
        if landmarks is None:
            L = np.arange(m, dtype=np.int64)
        else:
            L = as_index_array(landmarks, "landmarks", unique=True)
            if L.size != m:
                raise ValueError(f"landmarks: expected {m} ids (one per anchor row), got {L.size}")
        with np.errstate(over="ignore", invalid="ignore"):  # reported below as a ValueError
            K = _landmark_matrix(self.kernel, A, self.ridge)
        if not np.isfinite(K).all():
            raise ValueError(
                "anchor: the kernel matrix K_LL overflowed (non-finite entries); "
                "rescale the embeddings or lower the polynomial degree / offset"
            )
        inv_sqrt, s, r = _inv_sqrt(K, self.cutoff)
        if r == 0:
            raise ValueError(
                "anchor: the kernel matrix K_LL is zero (all landmark embeddings are zero "
                "under this kernel); expected at least one positive eigenvalue"
            )
        # Validation passed: commit the new state.
        self.landmarks, self.anchor = L.copy(), A
        self.eigenvalues, self.inv_sqrt, self.rank = s, inv_sqrt, r
        self.record = self._record(s, r)
        return self

    def _record(self, s: np.ndarray, r: int) -> dict[str, float | int]:
        """:attr:`record` of a fit with eigenvalues ``s`` (descending) and effective rank ``r``."""
        m = int(s.shape[0])
        return {
            "m": m,
            "rank": int(r),
            "dropped": int(m - r),
            "cutoff": float(self.cutoff),
            "ridge": float(self.ridge),
            "eig_max": float(s[0]),
            "eig_min_kept": float(s[r - 1]),
            "condition": float(s[0] / s[r - 1]),
        }

    def _kernel_matrix(self) -> np.ndarray:
        """K_LL + ridge I of the anchor, symmetrised as ``fit`` does (finite: the anchor passed ``fit``)."""
        return _landmark_matrix(self.kernel, self.anchor, self.ridge)

    def reconstruction_error(self) -> float:
        """||phi(L) phi(L)^T - K||_F / ||K||_F with phi(L) = K inv_sqrt and K = K_LL + ridge I.

        How well the map reconstructs its landmarks' kernel matrix: ``inv_sqrt``
        = K^{+1/2} gives phi(L) phi(L)^T = K K^+ K = K_r, the best rank-r
        approximation of K, so the error is that of dropping the eigenvalues
        at or below the cutoff plus rounding (about 1e-15 for a well-conditioned
        K_LL). A wrongly scaled ``inv_sqrt`` (by c) gives about |c^2 - 1|.
        """
        self._require_fit()
        K = self._kernel_matrix()
        B = K @ self.inv_sqrt
        norm = float(np.linalg.norm(K))
        return float(np.linalg.norm(B @ B.T - K)) / norm if norm > 0 else float("inf")

    def reconstruction_tolerance(self) -> float:
        """The largest :meth:`reconstruction_error` :meth:`check_invariants` accepts.

        ``sqrt(m - r) * max(cutoff, 16 m eps) + 16 m^1.5 eps sqrt(condition)``,
        eps = 2.2e-16. The first term bounds the dropped eigenvalues (each at
        most ``cutoff`` times the largest, or a negative rounding error of a
        positive semi-definite K of at most about ``m eps`` times it), relative
        to ||K||_F >= the largest eigenvalue. The second bounds the rounding of
        ``eigh`` (backward error about ``m eps ||K||_2``, at most sqrt(m) times
        that in the Frobenius norm) and of the product K inv_sqrt, whose
        entries grow with 1/sqrt(smallest kept eigenvalue): relative error
        about ``m^1.5 eps sqrt(condition)``. The factor 16 is margin over the
        constants of those bounds: over 600 random fits (every kernel, m up to
        400, near-duplicate landmarks, ridge and cutoff 0) the largest error
        measured was 24 m eps (m = 124), 0.14 of this tolerance. An
        ``inv_sqrt`` scaled by 1 + 1e-6 (error 2e-6) is refused whenever
        the tolerance is below 2e-6: for a well-conditioned K_LL with the
        default cutoff, any m up to about 10^5.
        """
        self._require_fit()
        eps = float(np.finfo(np.float64).eps)
        m, r = self.m, int(self.rank)
        cond = float(self.eigenvalues[0] / self.eigenvalues[r - 1])
        return float(np.sqrt(m - r)) * max(float(self.cutoff), 16 * m * eps) + 16 * m**1.5 * eps * float(np.sqrt(cond))

    def check_invariants(self) -> None:
        """Check that the map is one :meth:`fit` could have produced (the checks of the constructor and ``fit``).

        Parameters (kernel by its validating constructor, ``cutoff`` in [0, 1),
        ``ridge`` >= 0); for a fitted map: ``landmarks`` distinct ids >= 0, one
        per ``anchor`` row; ``anchor`` finite float64 within ``MAX_ABS_COORD``;
        ``eigenvalues`` those of K_LL + ridge I (descending, within
        ``16 m eps`` times the largest of a fresh ``eigh``, Weyl's bound for
        two backward-stable decompositions); ``rank`` the number above the
        cutoff, all of them positive; ``record`` exactly what ``fit`` records;
        ``inv_sqrt`` finite (m, m) and reconstructing K_LL
        (:meth:`reconstruction_error` <= :meth:`reconstruction_tolerance`).
        Cost O(m^2 d + m^3), independent of N.

        Raises
        ------
        InvariantError
            (an ``AssertionError``) naming the first violation.
        """

        def fail(msg: str) -> None:
            raise InvariantError(f"NystromMap: {msg}")

        kern = self.kernel
        checkers = {LinearKernel: lambda k: linear(k.const), RBFKernel: lambda k: rbf(k.gamma),
                    PolynomialKernel: lambda k: polynomial(k.degree, k.c)}
        if type(kern) not in checkers:
            fail(f"kernel: expected a LinearKernel, RBFKernel or PolynomialKernel, got {type(kern).__name__}")
        try:
            if checkers[type(kern)](kern) != kern:
                fail(f"kernel: {kern!r} is not what its constructor makes of its parameters")
            check_nonnegative(self.cutoff, "cutoff")
            if not self.cutoff < 1.0:
                raise ValueError(f"cutoff: expected a relative eigenvalue cutoff in [0, 1), got {self.cutoff!r}")
            check_nonnegative(self.ridge, "ridge")
        except ValueError as exc:
            fail(str(exc))
        if not self.fitted:
            # Compared one by one: a tuple comparison would compare a leftover array elementwise (ValueError).
            leftover = any(x is not None for x in (self.landmarks, self.anchor, self.eigenvalues))
            if leftover or (self.rank, self.record) != (0, {}):
                fail("an unfitted map (inv_sqrt None) must have no landmarks, anchor, eigenvalues, rank or record")
            return
        for name in ("landmarks", "anchor", "eigenvalues", "inv_sqrt"):
            if not isinstance(getattr(self, name), np.ndarray):
                fail(f"{name}: expected an array, got {type(getattr(self, name)).__name__}")
        try:
            L = as_index_array(self.landmarks, "landmarks", unique=True)
            if self.landmarks.dtype != np.int64:
                raise ValueError(f"landmarks: expected int64 ids, got {self.landmarks.dtype}")
            m = L.size
            for name, shape in (("anchor", (m, None)), ("eigenvalues", (m,)), ("inv_sqrt", (m, m))):
                a = getattr(self, name)
                if a.dtype != np.float64:
                    raise ValueError(f"{name}: expected float64, got {a.dtype}")
                as_float_array(a, name, shape=shape, max_abs=MAX_ABS_COORD if name == "anchor" else None)
            r = check_int(self.rank, "rank", low=1, high=m)
        except ValueError as exc:
            fail(str(exc))
        s = self.eigenvalues
        if (np.diff(s) > 0).any():
            fail("eigenvalues: expected them in descending order")
        with np.errstate(over="ignore", invalid="ignore"):
            K = self._kernel_matrix()
        if not np.isfinite(K).all():
            fail("anchor: the kernel matrix K_LL overflows")
        s_ref = scipy.linalg.eigvalsh(K)[::-1]
        eps = float(np.finfo(np.float64).eps)
        tol = 16 * m * eps * float(np.max(np.abs(s_ref)))
        diff = float(np.max(np.abs(s - s_ref)))
        if not diff <= tol:
            fail(f"eigenvalues: expected those of K_LL + ridge I of the anchor (within {tol:.3g}), "
                 f"got a difference of {diff:.3g}")
        kept = int(np.count_nonzero(s > max(self.cutoff * s[0], 0.0)))
        if kept != r or not s[r - 1] > 0:
            fail(f"rank: expected the number of positive eigenvalues above the cutoff ({kept}), got {r}")
        if self.record != self._record(s, r):
            fail(f"record: expected {self._record(s, r)} (what fit records), got {self.record}")
        err, err_tol = self.reconstruction_error(), self.reconstruction_tolerance()
        if not err <= err_tol:
            fail(f"inv_sqrt: expected K_LL^(+1/2), reconstructing K_LL within {err_tol:.3g} "
                 f"(reconstruction_error), got an error of {err:.3g}")

    # -- maps ----------------------------------------------------------------

    def features(self, G: Any) -> np.ndarray:
        """Nystrom coordinates phi(y) = K_LL^{-1/2} kappa(g_0(L), g(y)) (proofs/README.md section 5).

        Parameters
        ----------
        G : array_like, shape (n, d)
            Cached embeddings of any targets (d as in ``fit``).

        Returns
        -------
        numpy.ndarray, shape (n, m)
            phi, one row per target. Cost O(n m d + n m^2).
        """
        self._require_fit()
        G = as_float_array(G, "G", ndim=2, dtype=np.float64, allow_empty=True, max_abs=MAX_ABS_COORD)
        if G.shape[1] != self.dim:
            raise ValueError(
                f"G: expected cached embeddings with d={self.dim} columns (as in fit), got shape {G.shape}"
            )
        with np.errstate(over="ignore", invalid="ignore"):  # reported below as a ValueError
            phi = self.kernel(G, self.anchor) @ self.inv_sqrt  # inv_sqrt is symmetric
        if not np.isfinite(phi).all():
            raise ValueError(
                "G: the kernel values kappa(g_0(L), g(y)) overflowed (non-finite); "
                "rescale the embeddings or lower the polynomial degree / offset"
            )
        return phi

    def project(self, G_L: Any) -> np.ndarray:
        """W_t = K_LL^{-1/2} G_t(L) from the landmarks' current encodings (proofs/README.md section 5).

        Parameters
        ----------
        G_L : array_like, shape (m, d_out)
            Current encodings of the landmarks, in the order of ``landmarks``.

        Returns
        -------
        numpy.ndarray, shape (m, d_out)
            W_t. Cost O(m^2 d_out), independent of N.
        """
        self._require_fit()
        G_L = as_float_array(G_L, "G_L", ndim=2, dtype=np.float64, max_abs=MAX_ABS_COORD)
        if G_L.shape[0] != self.m:
            raise ValueError(
                f"G_L: expected one row per landmark, shape ({self.m}, d), got {G_L.shape}"
            )
        # Every flag ignored: an overflowing product comes out +-inf, or NaN where the BLAS adds
        # partial sums of both signs (platform-dependent); either is reported below as a ValueError.
        with np.errstate(all="ignore"):
            W = self.inv_sqrt @ G_L
        big = float(np.max(np.abs(W))) if W.size else 0.0
        if not big <= MAX_ABS_COORD:  # also NaN / inf: the product overflowed
            raise ValueError(
                f"G_L: expected W = K_LL^{{-1/2}} G_L with |entries| <= MAX_ABS_COORD = {MAX_ABS_COORD:g} "
                f"(so that W^T phi and W f stay far from overflow), got {big:g}; rescale the embeddings"
            )
        return W

    def approximate(self, phi: Any, W: Any) -> np.ndarray:
        """Approximate current embeddings ghat_t(y) = W_t^T phi(y) (proofs/README.md section 5).

        Parameters
        ----------
        phi : array_like, shape (n, m)
            Nystrom coordinates from :meth:`features`.
        W : array_like, shape (m, d_out)
            Projection from :meth:`project`.

        Returns
        -------
        numpy.ndarray, shape (n, d_out)
            ghat_t, one row per target (rank <= m, P11).
        """
        self._require_fit()
        phi = as_float_array(phi, "phi", ndim=2, dtype=np.float64, allow_empty=True, max_abs=MAX_ABS_COORD)
        W = as_float_array(W, "W", ndim=2, dtype=np.float64, max_abs=MAX_ABS_COORD)
        if phi.shape[1] != self.m:
            raise ValueError(f"phi: expected {self.m} columns (one per landmark), got shape {phi.shape}")
        if W.shape[0] != self.m:
            raise ValueError(f"W: expected {self.m} rows (one per landmark), got shape {W.shape}")
        with np.errstate(over="ignore", invalid="ignore"):  # reported below as a ValueError
            out = phi @ W
        if not np.isfinite(out).all():
            raise ValueError("phi, W: the product W^T phi overflowed (non-finite entries); rescale phi or W")
        return out

    def __repr__(self) -> str:
        state = f"m={self.m}, rank={self.rank}" if self.fitted else "unfitted"
        return f"NystromMap(kernel={self.kernel!r}, cutoff={self.cutoff!r}, ridge={self.ridge!r}; {state})"
