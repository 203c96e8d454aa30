"""The dynamic index: a tree over Nystrom coordinates, queried with psi_t(x) = beta W_t f_t(x).

proofs/README.md section 5. With the Nystrom map of :mod:`reference.nystrom`,

    ghat_t(y) = W_t^T phi(y)    and so    beta <f_t(x), ghat_t(y)> = <psi_t(x), phi(y)>,
    psi_t(x) = beta W_t f_t(x)   (m,),

the approximate logits are *exact* inner products between a query vector
psi_t(x) and the fixed points phi(y). A :class:`reference.tree.Tree` built
once over phi therefore certifies the bounds and samplers of proofs/README.md section 4
(P1-P8) for the approximate softmax P_t^(y|x) ~ exp(<psi_t(x), phi(y)>) at
every step t, without being touched: a training step changes only W_t (m x d,
from m re-encoded landmarks). The gap to the true softmax is bounded by P12,
|beta <f, ghat(y)> - beta <f, g(y)>| <= beta ||f|| ||ghat(y) - g(y)||.

:class:`DynamicIndex` owns the cache, the landmarks, the map and the tree:

- ``step(G_L)``: take the landmarks' current encodings G_t(L), form W_t.
- ``queries(F)`` -> psi_t; ``bracket`` / ``cut_sample`` / ``rejection_sample``
  / ``topk`` for current query encodings F = f_t(X) (the approximate softmax).
- ``refresh(G, ids=None)``: new encodings for all targets or a subset.
  The map is re-anchored at the current time and the tree is *repaired*
  (``Tree.update`` of the moved points + ``Tree.rebuild(depth)``), never
  built from scratch.
- ``add(G)``: new targets, inserted into the tree without any rebuild.
- ``remove(ids)``: delete targets.

Refresh semantics (what the cache means)
----------------------------------------
The map is anchored at the time of the last refresh: the cache row of every
target is an estimate of its embedding at that time, and the landmarks' rows
are the anchor g_0(L). A refresh at step t makes every row an estimate of
g_t: refreshed rows take the given encodings, every other row takes its
current Nystrom approximation ghat_t(y) (the best estimate the index has;
keeping the old g_0(y) instead would mix two times in one coordinate system),
the map is re-fitted on the new landmark rows, phi of every target is
recomputed (O(N m d) arithmetic, no encoder pass beyond the refreshed rows),
and W is reset to W_0 = K_LL^{-1/2} g_0(L), so that right after the refresh
ghat_0 is the Nystrom approximation of the new cache itself (for the linear
kernel with spanning landmarks, the cache exactly). Call :meth:`step` with the
current landmark encodings before a partial refresh (or include the landmarks
in ``ids``), so that the carried rows are current.

Coordinates: phi has m columns whatever the effective rank of K_LL (the
symmetric pseudo-inverse square root, :class:`reference.nystrom.NystromMap`),
so the tree's dimension is fixed at m and phi moves continuously with the
cache, which is what makes a repair cheaper than a rebuild.

References
----------
Monath, Zaheer, Allen, McCallum, "Improving Dual-Encoder Training through
Dynamic Indexes for Negative Mining", AISTATS 2023, sections 3-4.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reference import _memory
from reference import bounds as _bounds
from reference import sampling as _sampling
from reference._fastpath import tree_scale
from reference._validation import (
    MAX_ABS_COORD,
    InvariantError,
    as_float_array,
    as_index_array,
    check_int,
    check_logit_scale,
    check_positive,
)
from reference.nystrom import KernelSpec, NystromMap
from reference.tree import Tree

__all__ = ["DynamicIndex"]


def _check_phi(phi: np.ndarray, name: str) -> np.ndarray:
    """Refuse Nystrom coordinates beyond the tree's point limit ``MAX_ABS_COORD``, naming the input ``name``."""
    big = float(np.max(np.abs(phi))) if phi.size else 0.0
    if not big <= MAX_ABS_COORD:
        raise ValueError(
            f"{name}: expected Nystrom coordinates phi = K_LL^{{-1/2}} k(y) with |entries| <= MAX_ABS_COORD = "
            f"{MAX_ABS_COORD:g} (the tree's point limit), got {big:g}; rescale the embeddings"
        )
    return phi


class DynamicIndex:
    """Tree over Nystrom coordinates phi(y), queried with psi_t(x) = beta W_t f_t(x) (proofs/README.md section 5).

    Parameters
    ----------
    cache : array_like, shape (N, d)
        Cached target embeddings g_0 (target y is row y).
    landmarks : array_like of int, shape (m,)
        Distinct landmark ids in [0, N) (e.g. from
        :func:`reference.nystrom.select_landmarks`).
    kernel : str or kernel object, default "linear"
        Kernel of the Nystrom map (:mod:`reference.nystrom`).
    cutoff : float, default 1e-10
        Relative eigenvalue cutoff of K_LL^{-1/2}.
    ridge : float, default 0.0
        Ridge added to K_LL.
    beta : float, default 1.0
        Temperature folded into the query map psi_t = beta W_t f_t.
    branching, leaf_size : int
        Tree parameters (:meth:`reference.tree.Tree.build`).
    rebuild_depth : int, default 1
        Depth of the partial rebuild after a refresh (subtrees rooted at this
        depth are re-clustered; the partition above it is kept).
    seed : int, default 0
        Seed of the tree's k-means.

    Attributes
    ----------
    cache : ndarray (capacity, d)
        Cached embeddings (rows of deleted targets kept; ids are never reused).
    nmap : NystromMap
        The map, fitted on ``cache[landmarks]``.
    tree : Tree
        Tree over phi; ``tree.points`` *is* phi (row y = phi(y)).
    W : ndarray (m, d)
        Current W_t (W_0 right after construction or a refresh).
    W0 : ndarray (m, d)
        W at the last refresh, K_LL^{-1/2} g_0(L).
    beta : float
    steps_since_refresh, n_refreshes : int
    last_refresh : dict
        Record of the last refresh (rows refreshed / carried, the map's rank,
        rebuild depth, largest move of a point phi(y)).
    """

    #: What :mod:`reference.persist` saves of an index (its file format: a
    #: change here is a new ``persist.FORMAT_VERSION``); nothing is derived.
    SAVED_FIELDS = ("cache", "nmap", "tree", "W0", "W", "beta", "rebuild_depth", "steps_since_refresh",
                    "n_refreshes", "last_refresh")  # fmt: skip
    DERIVED_FIELDS = ()

    def __init__(
        self,
        cache: Any,
        landmarks: Any,
        *,
        kernel: KernelSpec = "linear",
        cutoff: float = 1e-10,
        ridge: float = 0.0,
        beta: float = 1.0,
        branching: int = 8,
        leaf_size: int = 32,
        rebuild_depth: int = 1,
        seed: int = 0,
    ) -> None:
        G0 = np.array(as_float_array(cache, "cache", ndim=2, dtype=np.float64, max_abs=MAX_ABS_COORD), copy=True)
        self.beta = check_positive(beta, "beta")
        self.rebuild_depth = check_int(rebuild_depth, "rebuild_depth", low=0)
        nmap = NystromMap(kernel, cutoff=cutoff, ridge=ridge).fit(G0, landmarks)
        phi = _check_phi(nmap.features(G0), "cache")
        self.tree = Tree.build(phi, branching=branching, leaf_size=leaf_size, seed=seed)
        self.cache = G0
        self.nmap = nmap
        self.W0 = nmap.project(nmap.anchor)
        self.W = self.W0.copy()
        self.steps_since_refresh = 0
        self.n_refreshes = 0
        self.last_refresh: dict[str, Any] = {}

    # ------------------------------------------------------------------ state
    def check_invariants(self) -> None:
        """Check that the index is one the constructor and the methods could have produced.

        The map's own checks (:meth:`NystromMap.check_invariants`) and the
        tree's (:meth:`Tree.check_invariants`, I1-I4: ``order`` a permutation
        of the live targets, finite non-negative radii, ...), and between them:
        ``cache`` a finite float64 (capacity, d) array within ``MAX_ABS_COORD``;
        the tree over the m-dimensional phi with one point row per cache row;
        the landmarks live ids in range (< capacity), and the map's anchor
        their cache rows bitwise (``fit`` and ``refresh`` anchor the map
        there); ``W`` and ``W0`` finite (m, d) within ``MAX_ABS_COORD``, and
        ``W0`` = K_LL^{-1/2} g_0(L) as ``project`` computes it, within the
        standard bound 2 m eps |K_LL^{-1/2}| |g_0(L)| of two float64 matrix
        products (so a file written on a machine with another BLAS passes);
        ``beta`` > 0; the counters non-negative integers. Cost: the tree's,
        O(N depth) plus O(m^3).

        Raises
        ------
        InvariantError
            (an ``AssertionError``) naming the first violation.
        """

        def fail(msg: str) -> None:
            raise InvariantError(f"DynamicIndex: {msg}")

        for name, cls in (("cache", np.ndarray), ("nmap", NystromMap), ("tree", Tree), ("W", np.ndarray),
                          ("W0", np.ndarray), ("last_refresh", dict)):
            if not isinstance(getattr(self, name), cls):
                fail(f"{name}: expected a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        try:
            check_positive(self.beta, "beta")
            check_int(self.rebuild_depth, "rebuild_depth", low=0)
            check_int(self.steps_since_refresh, "steps_since_refresh", low=0)
            check_int(self.n_refreshes, "n_refreshes", low=0)
            if self.cache.dtype != np.float64:
                raise ValueError(f"cache: expected float64, got {self.cache.dtype}")
            as_float_array(self.cache, "cache", ndim=2, max_abs=MAX_ABS_COORD)
        except ValueError as exc:
            fail(str(exc))
        self.nmap.check_invariants()
        if not self.nmap.fitted:
            fail("nmap: expected a fitted map")
        self.tree.check_invariants()
        cap, d = self.cache.shape
        m = self.nmap.m
        if self.tree.points.shape != (cap, m) or self.nmap.dim != d:
            fail(f"tree: expected points phi of shape ({cap}, {m}) (one row per cache row, m = {m} landmarks) and "
                 f"a map of d = {d}, got {self.tree.points.shape} and d = {self.nmap.dim}")
        L = self.landmarks
        if L.size and (L.max() >= cap or not self.tree.alive[L].all()):
            fail(f"landmarks: expected live target ids < {cap}, got {L.tolist()[:20]}")
        if not np.array_equal(self.nmap.anchor, self.cache[L]):
            fail("nmap.anchor: expected the landmarks' cache rows (the map is anchored there)")
        try:
            for name in ("W", "W0"):
                a = getattr(self, name)
                if a.dtype != np.float64:
                    raise ValueError(f"{name}: expected float64, got {a.dtype}")
                as_float_array(a, name, shape=(m, d), max_abs=MAX_ABS_COORD)
        except ValueError as exc:
            fail(str(exc))
        S, A = self.nmap.inv_sqrt, self.nmap.anchor
        eps = float(np.finfo(np.float64).eps)
        excess = np.abs(self.W0 - S @ A) - 2 * m * eps * (np.abs(S) @ np.abs(A))
        if (excess > 0).any():
            fail("W0: expected K_LL^{-1/2} g_0(L) (project(anchor)), got values beyond rounding from it")

    @property
    def landmarks(self) -> np.ndarray:
        """Landmark ids L (m,), in the row order ``step`` expects."""
        return self.nmap.landmarks

    @property
    def m(self) -> int:
        """Number of landmarks (the tree's dimension)."""
        return self.nmap.m

    @property
    def dim(self) -> int:
        """Embedding dimension d."""
        return int(self.cache.shape[1])

    @property
    def phi(self) -> np.ndarray:
        """Nystrom coordinates of every target id, (capacity, m) (the tree's own points; read-only)."""
        return self.tree.points

    @property
    def ids(self) -> np.ndarray:
        """Live target ids, ascending (the row order of ``refresh(G)`` without ``ids``)."""
        return np.flatnonzero(self.tree.alive)

    @property
    def n_live(self) -> int:
        return int(self.tree.n_live)

    def _live_ids(self, ids: Any, name: str = "ids", *, unique: bool = False, allow_empty: bool = False) -> np.ndarray:
        y = as_index_array(ids, name, upper=self.tree.points.shape[0], unique=unique, allow_empty=allow_empty)
        if y.size and not self.tree.alive[y].all():
            raise ValueError(f"{name}: expected live target ids, got deleted id {int(y[~self.tree.alive[y]][0])}")
        return y

    def _check_embeddings(self, G: Any, name: str, rows: int | None) -> np.ndarray:
        G = as_float_array(G, name, ndim=2, dtype=np.float64, max_abs=MAX_ABS_COORD)
        if G.shape[1] != self.dim or (rows is not None and G.shape[0] != rows):
            want = f"({'n' if rows is None else rows}, {self.dim})"
            raise ValueError(f"{name}: expected shape {want}, got {G.shape}")
        return G

    # ------------------------------------------------------------------ training step
    def step(self, G_L: Any) -> np.ndarray:
        """Take the landmarks' current encodings and form W_t = K_LL^{-1/2} G_t(L) (proofs/README.md section 5).

        The tree is not touched. Cost O(m^2 d).

        Parameters
        ----------
        G_L : array_like, shape (m, d)
            g_t of the landmarks, in the order of :attr:`landmarks`.

        Returns
        -------
        numpy.ndarray, shape (m, d)
            W_t (also stored as :attr:`W`).
        """
        G_L = self._check_embeddings(G_L, "G_L", self.m)
        self.W = self.nmap.project(G_L)
        self.steps_since_refresh += 1
        return self.W

    def queries(self, F: Any) -> np.ndarray:
        """Query map psi_t(x) = beta W_t f_t(x) (proofs/README.md section 5).

        Parameters
        ----------
        F : array_like, shape (B, d) or (d,)
            Current query encodings f_t(x). Refused (``ValueError`` naming
            ``F``) beyond ``MAX_ABS_COORD``, or when psi would be; the
            logits, bracket, samplers and top-k also refuse an F whose logit
            scale ``||psi|| max_v (||r_v|| + rho_v)`` exceeds ``MAX_LOGIT``
            (:mod:`reference._validation`).

        Returns
        -------
        numpy.ndarray, shape (B, m) or (m,)
            psi_t, so that <psi_t(x), phi(y)> = beta <f_t(x), ghat_t(y)>.
        """
        F = as_float_array(F, "F", dtype=np.float64, max_abs=MAX_ABS_COORD)
        if F.ndim not in (1, 2) or F.shape[-1] != self.dim:
            raise ValueError(f"F: expected query encodings of shape (B, {self.dim}) or ({self.dim},), got {F.shape}")
        with np.errstate(over="ignore", invalid="ignore"):  # reported below as a ValueError
            psi = self.beta * (F @ self.W.T)
        big = float(np.max(np.abs(psi))) if psi.size else 0.0
        if not big <= MAX_ABS_COORD:
            raise ValueError(
                f"F: expected |psi| = |beta W_t f| <= MAX_ABS_COORD = {MAX_ABS_COORD:g} (queries far from float64 "
                f"overflow), got {big:g} (beta = {self.beta:g}, max |F| = {float(np.max(np.abs(F))):g})"
            )
        return psi

    def _psi(self, F: Any) -> np.ndarray:
        """:meth:`queries`, refused (``ValueError`` naming ``F``) when a logit could exceed ``MAX_LOGIT``."""
        psi = self.queries(F)
        check_logit_scale(psi, tree_scale(self.tree), "F",
                          "max_v(||r_v|| + rho_v) (q = psi = beta W_t f, tree over phi)")
        return psi

    def approximate(self, ids: Any | None = None) -> np.ndarray:
        """Approximate current embeddings ghat_t(y) = W_t^T phi(y) (proofs/README.md section 5).

        Parameters
        ----------
        ids : array_like of int, optional
            Live target ids (default: all live ids, ascending).

        Returns
        -------
        numpy.ndarray, shape (n, d)
        """
        y = self.ids if ids is None else self._live_ids(ids, allow_empty=True)
        return self.tree.points[y] @ self.W

    def logits(self, F: Any, ids: Any | None = None) -> np.ndarray:
        """Approximate logits <psi_t(x), phi(y)> = beta <f_t(x), ghat_t(y)>, shape (B, n) or (n,)."""
        psi = self._psi(F)
        y = self.ids if ids is None else self._live_ids(ids, allow_empty=True)
        return psi @ self.tree.points[y].T

    # ------------------------------------------------------------------ bounds and samplers
    def bracket(self, F: Any, *, tol: float = _bounds.DEFAULT_TOL) -> tuple[Any, Any, Any]:
        """Certified bracket on log Zhat_t(x) of the approximate softmax (P2/P7 through P12).

        Parameters
        ----------
        F : array_like, shape (B, d) or (d,)
            Current query encodings.
        tol : float > 0
            Width of the adaptive cut's bracket.

        Returns
        -------
        lo, hi, log_z_hat : float or ndarray (B,)
            ``lo <= log sum_y exp(<psi_t(x), phi(y)>) <= hi``. For the true
            softmax widen by max_y beta ||f|| ||ghat_t(y) - g_t(y)|| (P12).
        """
        psi = self._psi(F)
        cut = _bounds.adaptive_cut(self.tree, psi, tol)
        return _bounds.log_partition_bracket(self.tree, psi, cut)

    def cut_sample(
        self, F: Any, n: int, rng: np.random.Generator, *, tol: float = _bounds.DEFAULT_TOL
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draws from the cut distribution of the approximate softmax, with log Q (P4 through P12).

        Returns ``(ids, log_q)`` as :func:`reference.sampling.cut_sample`.
        """
        return _sampling.cut_sample(self.tree, self._psi(F), n, rng, tol=tol)

    def rejection_sample(
        self, F: Any, n: int, rng: np.random.Generator, *, tol: float = _bounds.DEFAULT_TOL
    ) -> tuple[np.ndarray, dict[str, int]]:
        """Exact draws from the approximate softmax exp(<psi_t, phi(y)>) / Zhat_t (P6 through P12).

        Returns ``(ids, counters)`` as :func:`reference.sampling.rejection_sample`.
        """
        return _sampling.rejection_sample(self.tree, self._psi(F), n, rng, tol=tol)

    def topk(self, F: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of the approximate logits (P8 through P12); ties by smaller id.

        Returns ``(ids, logits)`` as :func:`reference.sampling.topk`.
        """
        return _sampling.topk(self.tree, self._psi(F), k)

    # ------------------------------------------------------------------ cache maintenance
    def refresh(
        self,
        G: Any,
        ids: Any | None = None,
        *,
        landmarks: Any | None = None,
        depth: int | None = None,
    ) -> dict[str, Any]:
        """Re-anchor the map on new encodings and repair the tree (proofs/README.md section 5).

        Parameters
        ----------
        G : array_like, shape (n, d)
            Current encodings g_t of the refreshed targets: of every live id
            (``ids`` None; rows in the order of :attr:`ids`) or of ``ids``.
        ids : array_like of int, optional
            Distinct live ids refreshed. The others carry their current
            approximation ghat_t(y) into the new cache (module docstring).
        landmarks : array_like of int, optional
            New landmark ids (distinct, live, same number m: the tree's
            dimension is m). Default: keep the landmarks.
        depth : int, optional
            Depth of ``Tree.rebuild`` (default :attr:`rebuild_depth`), capped
            at the tree's height.

        Returns
        -------
        dict
            ``refreshed`` and ``carried`` row counts, the new map's ``rank``
            and ``dropped`` eigenvalues, ``depth``, and ``max_move``
            (largest ||phi_new(y) - phi_old(y)||). Also stored as
            :attr:`last_refresh`.
        """
        live = self.ids
        if ids is None:
            y = live
        else:
            y = self._live_ids(ids, unique=True)
        G = self._check_embeddings(G, "G", y.size)
        if landmarks is None:
            L = self.landmarks
        else:
            L = self._live_ids(landmarks, "landmarks", unique=True)
            if L.size != self.m:
                raise ValueError(
                    f"landmarks: expected {self.m} ids (the tree's dimension is m; a different m "
                    f"needs a new DynamicIndex), got {L.size}"
                )
        depth = self.rebuild_depth if depth is None else check_int(depth, "depth", low=0)
        depth = min(depth, int(self.tree.depth.max()))  # a shallow tree: rebuild from its deepest level
        # New cache: carried approximations, then the refreshed rows.
        new_cache = self.cache.copy()
        new_cache[live] = self.tree.points[live] @ self.W
        new_cache[y] = G
        nmap = NystromMap(self.nmap.kernel, cutoff=self.nmap.cutoff, ridge=self.nmap.ridge)
        nmap.fit_anchor(new_cache[L], L)  # raises before anything is changed
        phi = _check_phi(nmap.features(new_cache[live]), "G")
        W0 = nmap.project(nmap.anchor)  # may refuse (ValueError): before anything is changed
        # Commit: repair the tree in place (update + partial rebuild), no build.
        max_move = float(np.sqrt(np.max(np.sum((phi - self.tree.points[live]) ** 2, axis=1))))
        self.tree.update(live, phi)
        self.tree.rebuild(depth)
        self.cache, self.nmap = new_cache, nmap
        self.W0 = W0
        self.W = self.W0.copy()
        self.steps_since_refresh = 0
        self.n_refreshes += 1
        self.last_refresh = {
            "refreshed": int(y.size),
            "carried": int(live.size - y.size),
            "rank": int(nmap.rank),
            "dropped": int(nmap.record["dropped"]),
            "depth": int(depth),
            "max_move": max_move,
        }
        return self.last_refresh

    def add(self, G: Any, *, current: bool = True) -> np.ndarray:
        """Insert new targets into the tree, without a rebuild (proofs/README.md section 5).

        Parameters
        ----------
        G : array_like, shape (n, d)
            Embeddings of the new targets.
        current : bool, default True
            ``True``: G are encodings by the *current* model, g_t(y). phi(y)
            is the minimum-norm solution of W_t^T phi = g_t(y) (least
            squares), so ghat_t(y) = g_t(y) whenever g_t(y) lies in the span
            of the landmarks' encodings; for the linear kernel with spanning
            landmarks and affine dynamics this phi is the target's exact
            Nystrom coordinate (P11). The cache row is set to W_0^T phi(y),
            the anchor-time estimate.
            ``False``: G are anchor-time embeddings (as if encoded at the last
            refresh); phi(y) = K_LL^{-1/2} k(y) as for every cached target.

        Returns
        -------
        numpy.ndarray of int64, shape (n,)
            The new target ids.
        """
        G = self._check_embeddings(G, "G", None)
        if not isinstance(current, (bool, np.bool_)):
            raise ValueError(f"current: expected a bool, got {current!r}")
        if current:
            with np.errstate(over="ignore", invalid="ignore"):  # reported by _check_phi as a ValueError
                phi = _check_phi(np.linalg.lstsq(self.W.T, G.T, rcond=None)[0].T, "G")
                rows = phi @ self.W0
            if not np.isfinite(rows).all():
                raise ValueError("G: the cache rows W_0^T phi of the new targets overflowed; rescale the embeddings")
        else:
            phi = _check_phi(self.nmap.features(G), "G")
            rows = G
        new = self.tree.insert(phi)
        cap = max(self.cache.shape[0], int(new.max()) + 1)
        if cap > self.cache.shape[0]:
            grown = np.zeros((cap, self.dim))
            grown[: self.cache.shape[0]] = self.cache
            self.cache = grown
        self.cache[new] = rows
        return new

    def remove(self, ids: Any) -> None:
        """Delete targets from the index (their cache rows are kept; ids are never reused).

        Landmarks cannot be removed: they anchor the map until the next refresh
        chooses new ones (``refresh(..., landmarks=...)``).
        """
        y = self._live_ids(ids, unique=True)
        hit = np.intersect1d(y, self.landmarks)
        if hit.size:
            raise ValueError(
                f"ids: expected non-landmark ids, got landmark {int(hit[0])} "
                "(choose new landmarks with refresh(..., landmarks=...) first)"
            )
        self.tree.delete(y)

    def memory(self) -> dict[str, int]:
        """Bytes the index holds, by place (proofs/README.md section 5.4).

        The inventory of :func:`reference._memory.index_arrays`, the one the
        miners' accounting (:func:`reference.miners.memory_accounting`) uses
        for ``tree_nystrom``, at this index's sizes. ``host_bytes``: the cache
        (capacity x d), the tree over phi (its two capacity / live x m point
        arrays, O(capacity) ids and flags, the node arrays), the landmark ids,
        g_0(L), the eigenvalues of K_LL and W_0. ``accelerator_bytes``: what a
        training step keeps there, K_LL^{-1/2} (m x m) and W_t (m x d),
        independent of N (the per-step landmark encodings are the encoder's and
        are counted by the miners' accounting).

        Returns
        -------
        dict
            ``host_bytes`` and ``accelerator_bytes``.
        """
        t = self.tree
        arrays = _memory.index_arrays(t.points.shape[0], t.order.shape[0], self.dim, self.m, t.radius.shape[0])
        return {"host_bytes": _memory.total(arrays, "host"), "accelerator_bytes": _memory.total(arrays, "accelerator")}

    def __repr__(self) -> str:
        return (
            f"DynamicIndex(N={self.n_live}, d={self.dim}, m={self.m}, rank={self.nmap.rank}, "
            f"kernel={self.nmap.kernel!r}, steps_since_refresh={self.steps_since_refresh})"
        )
