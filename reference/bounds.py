"""Certified bounds on the softmax partition function over a cut of the tree.

SPEC section 4 and propositions P1-P5, P7 (SPEC section 6). Notation:
a query vector ``q`` in R^k (temperature folded in), target vectors ``z_y``,
logits ``a_y = <q, z_y>``, ``Z = sum_y exp(a_y)``. A tree node ``v`` has a
representative ``r_v``, a count ``n_v`` of live descendant targets ``D(v)`` and
a radius ``rho_v`` with ``||z_y - r_v|| <= rho_v`` for ``y`` in ``D(v)``
(invariant I3), so that by Cauchy-Schwarz

    |a_y - <q, r_v>| <= eps_v(q) = ||q|| rho_v                       (P1)

A *cut* ``C`` is a set of entries whose descendant sets partition the live
targets. An entry is either a tree node or, after a leaf has been expanded, a
single target ``y`` (representative ``z_y``, radius 0, count 1); a cut made of
single targets only gives ``lo == hi == log Z`` (P7). Summing P1 over a cut
brackets the partition function (P2):

    lo        = logsumexp_v (log n_v + <q, r_v> - eps_v)  <=  log Z
    hi        = logsumexp_v (log n_v + <q, r_v> + eps_v)  >=  log Z
    log_z_hat = logsumexp_v (log n_v + <q, r_v>)

and the *cut distribution* ``Phat_C(y) = exp(<q, r_v(y)>) / Zhat_C`` (pick a
node with weight ``n_v exp(<q, r_v>)``, then a uniform descendant) is within
``2 eps_C`` of the softmax in log space, ``eps_C = max_{v in C} eps_v`` (P4).

Everything here takes a batch of queries; each query has its own cut, and a
batch of cuts is stored flat in one :class:`Cut` (entries sorted by query).
The tree is any object with the flat arrays of ``reference.tree.Tree``
(``rep``, ``radius``, ``count``, ``child_ptr``, ``child_idx``, ``is_leaf``,
``order``, ``start``, ``stop``, ``points``, ``alive``, ``n_live``, ``dim``,
and the caches ``points_dfs`` = ``points[order]`` and ``rep_norm`` =
``||r_v||``); it is read, never modified.

References
----------
Monath, Zaheer, Allen, McCallum, "Improving Dual-Encoder Training through
Dynamic Indexes for Negative Mining", AISTATS 2023 (section 3: tree index,
bounds on the partition function, rejection sampling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from reference._validation import as_float_array, as_index_array, check_nonnegative, check_positive

__all__ = [
    "DEFAULT_TOL",
    "Cut",
    "validate_cut",
    "log_partition_bracket",
    "adaptive_cut",
    "cut_eps",
    "cut_distribution",
    "log_prob_bound",
    "tv_bound",
    "kl_bound",
    "grad_bias_bound",
]

#: Default bracket width ``hi - lo`` for :func:`adaptive_cut` and the samplers.
#: The rejection sampler's acceptance rate per proposal is >= exp(-DEFAULT_TOL).
DEFAULT_TOL = 1.0

# Rows gathered per chunk when scoring entries: two buffers of _CHUNK * k
# float64 that stay in cache (2048 x 64 x 8 B = 1 MiB each).
_CHUNK = 2048

# Rows (targets plus queries) of the temporaries of one batched product in
# :func:`_range_logits`: about 2^16 x k float64, 32 MiB at k = 64.
_CHUNK_ROWS = 1 << 16

# Relative slack allowed for floating-point rounding when a computed logit is
# checked against its certified bound <q, r_v> + eps_v: the rounding error of an
# inner product is about k * 2^-53 * ||q|| (||r_v|| + rho_v), far below 1e-9 of
# that scale for any k < 1e6.
_ROUNDING = 1e-9

_TREE_ATTRS = ("rep", "radius", "count", "child_ptr", "child_idx", "is_leaf",
               "order", "start", "stop", "points", "alive", "n_live", "dim", "points_dfs", "rep_norm")


# --------------------------------------------------------------------------
# The cut data structure
# --------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Cut:
    """A batch of cuts, one per query, stored as flat arrays of entries.

    Entry ``e`` belongs to query ``query[e]`` and is either the tree node
    ``node[e]`` (then ``target[e] == -1``) or the single target ``target[e]``
    (then ``node[e] == -1``; such entries appear when a leaf is expanded, with
    representative ``z_y``, radius 0 and count 1). Entries are sorted by query
    and every query has at least one entry.

    Parameters
    ----------
    query, node, target : numpy.ndarray of int64, shape (E,)
        Entry arrays as described above.
    n_queries : int
        Number of queries ``B``; ``query`` takes values in ``[0, B)``.

    Notes
    -----
    The arrays are not checked against a tree here (see :func:`validate_cut`,
    which every function of this module calls). Build cuts with
    :meth:`root`, :meth:`from_entries`, :meth:`stack` or :func:`adaptive_cut`.
    """

    query: np.ndarray
    node: np.ndarray
    target: np.ndarray
    n_queries: int

    def __post_init__(self) -> None:
        arrays = {}
        for name in ("query", "node", "target"):
            a = np.asarray(getattr(self, name))
            if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
                raise ValueError(f"Cut.{name}: expected a 1-D integer array, got shape {a.shape} dtype {a.dtype}")
            arrays[name] = a.astype(np.int64, copy=False)
        q, v, y = arrays["query"], arrays["node"], arrays["target"]
        if not (q.size == v.size == y.size):
            raise ValueError(f"Cut: expected equal-length entry arrays, got {q.size}, {v.size}, {y.size}")
        b = self.n_queries
        if isinstance(b, (bool, np.bool_)) or not isinstance(b, (int, np.integer)) or b < 1:
            raise ValueError(f"Cut.n_queries: expected an integer >= 1, got {b!r}")
        if q.size and (q.min() < 0 or q.max() >= b):
            raise ValueError(f"Cut.query: expected values in [0, {b}), got range [{q.min()}, {q.max()}]")
        if np.any(np.diff(q) < 0):
            raise ValueError("Cut.query: expected entries sorted by query (non-decreasing)")
        if np.bincount(q, minlength=b).min() == 0:
            raise ValueError("Cut: expected at least one entry for every query, got a query with an empty cut")
        if np.any((v >= 0) == (y >= 0)):
            raise ValueError("Cut: expected each entry to be a node (target == -1) or a target (node == -1)")
        for name, a in arrays.items():
            a.setflags(write=False)
            object.__setattr__(self, name, a)
        object.__setattr__(self, "n_queries", int(b))

    # -- constructors -----------------------------------------------------
    @classmethod
    def root(cls, n_queries: int = 1) -> "Cut":
        """The coarsest cut ``{root}`` for each of ``n_queries`` queries."""
        n = int(n_queries)
        return cls(np.arange(n), np.zeros(n, np.int64), np.full(n, -1, np.int64), n)

    @classmethod
    def from_entries(cls, nodes: Any = (), targets: Any = ()) -> "Cut":
        """A single-query cut made of the given nodes and single targets."""
        v = as_index_array(nodes, "nodes", allow_empty=True)
        y = as_index_array(targets, "targets", allow_empty=True)
        e = v.size + y.size
        return cls(np.zeros(e, np.int64), np.concatenate([v, np.full(y.size, -1)]),
                   np.concatenate([np.full(v.size, -1), y]), 1)

    @classmethod
    def stack(cls, cuts: "list[Cut]") -> "Cut":
        """Concatenate cuts (query ``b`` of ``cuts[i]`` becomes query ``offset_i + b``)."""
        cuts = list(cuts)
        if not cuts or not all(isinstance(c, Cut) for c in cuts):
            raise ValueError("cuts: expected a non-empty list of Cut objects")
        offsets = np.cumsum([0] + [c.n_queries for c in cuts])
        return cls(np.concatenate([c.query + o for c, o in zip(cuts, offsets)]),
                   np.concatenate([c.node for c in cuts]),
                   np.concatenate([c.target for c in cuts]), int(offsets[-1]))

    # -- views ------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.query.size)

    @property
    def ptr(self) -> np.ndarray:
        """CSR pointer ``(B+1,)``: query ``b`` owns entries ``ptr[b]:ptr[b+1]``."""
        return np.searchsorted(self.query, np.arange(self.n_queries + 1)).astype(np.int64)

    @property
    def sizes(self) -> np.ndarray:
        """Number of entries of each query's cut, ``(B,)``."""
        return np.bincount(self.query, minlength=self.n_queries)

    @property
    def is_target(self) -> np.ndarray:
        """``(E,)`` bool: the entry is a single target (radius 0, count 1)."""
        return self.node < 0

    def of_query(self, b: int) -> "Cut":
        """The single-query cut of query ``b``."""
        lo, hi = self.ptr[b], self.ptr[b + 1]
        return Cut(np.zeros(hi - lo, np.int64), self.node[lo:hi], self.target[lo:hi], 1)


def validate_cut(tree: Any, cut: Any, *, n_queries: int | None = None, full: bool = False) -> Cut:
    """Check that ``cut`` is a cut of ``tree`` (for ``n_queries`` queries), or raise ``ValueError``.

    The cheap checks (always): node ids in range, targets alive, and for each
    query ``sum_{v in C} n_v == tree.n_live``. With ``full=True`` also the
    partition property itself: every live target lies in exactly one entry
    (O(B N) time and memory; use it on hand-made cuts).

    Parameters
    ----------
    tree : Tree
    cut : Cut
    n_queries : int, optional
        Required number of queries.
    full : bool, default False

    Returns
    -------
    Cut
        ``cut`` itself.
    """
    _check_tree(tree)
    if not isinstance(cut, Cut):
        raise ValueError(f"cut: expected a reference.bounds.Cut, got {type(cut).__name__}")
    if n_queries is not None and cut.n_queries != n_queries:
        raise ValueError(f"cut: expected a cut for {n_queries} queries, got one for {cut.n_queries}")
    m, cap = tree.radius.shape[0], tree.points.shape[0]
    is_t = cut.is_target
    v, y = cut.node[~is_t], cut.target[is_t]
    if v.size and v.max() >= m:
        raise ValueError(f"cut: expected node ids < {m} (number of tree nodes), got {int(v.max())}")
    if y.size and y.max() >= cap:
        raise ValueError(f"cut: expected target ids < {cap}, got {int(y.max())}")
    if y.size and not tree.alive[y].all():
        raise ValueError(f"cut: expected live targets, got deleted target {int(y[~tree.alive[y]][0])}")
    n = _entry_counts(tree, cut.node, cut.target)
    totals = np.bincount(cut.query, weights=n, minlength=cut.n_queries)
    bad = np.flatnonzero(totals != tree.n_live)
    if bad.size:
        raise ValueError(
            f"cut: expected the counts of each query's cut to sum to n_live = {tree.n_live}, "
            f"got {int(totals[bad[0]])} for query {int(bad[0])} (not a partition of the live targets)"
        )
    if full:
        q, ids = _entry_targets(tree, cut.query, cut.node, cut.target)
        cover = np.zeros((cut.n_queries, tree.points.shape[0]), np.int64)
        np.add.at(cover, (q, ids), 1)
        wrong = (cover != tree.alive[None, :].astype(np.int64))
        if wrong.any():
            b, yy = np.argwhere(wrong)[0]
            raise ValueError(f"cut: target {yy} is covered {cover[b, yy]} times in the cut of query {b} "
                             f"(expected {int(tree.alive[yy])})")
    return cut


# --------------------------------------------------------------------------
# Bracket on log Z (P2) and the adaptive cut (P7)
# --------------------------------------------------------------------------

def log_partition_bracket(tree: Any, q: Any, cut: Cut) -> tuple[Any, Any, Any]:
    """Certified bracket on ``log Z`` from a cut (P2, SPEC sections 4 and 6).

    ``lo = logsumexp_v(log n_v + <q,r_v> - eps_v)``,
    ``hi = logsumexp_v(log n_v + <q,r_v> + eps_v)``,
    ``log_z_hat = logsumexp_v(log n_v + <q,r_v>)`` over the entries ``v`` of
    each query's cut, with ``eps_v = ||q|| rho_v``; entries with ``n_v == 0``
    (emptied by deletes) contribute nothing. Under I3,
    ``lo <= log Z <= hi``, ``hi - lo <= 2 eps_C`` and
    ``|log_z_hat - log Z| <= eps_C``.

    Parameters
    ----------
    tree : Tree
    q : array_like, shape (k,) or (B, k)
        Query vector(s), temperature folded in.
    cut : Cut
        One cut per query (``cut.n_queries == B``; 1 for a single query).

    Returns
    -------
    lo, hi, log_z_hat : float or numpy.ndarray of shape (B,)
    """
    Q, single = _as_queries(tree, q)
    validate_cut(tree, cut, n_queries=Q.shape[0])
    t = _terms(tree, Q, cut.query, cut.node, cut.target)
    lo, hi, hat = t.bracket(cut.ptr)
    if single:
        return lo[0], hi[0], hat[0]
    return lo, hi, hat


def adaptive_cut(tree: Any, q: Any, tol: float = DEFAULT_TOL) -> Cut:
    """Refine the root cut until the bracket is narrower than ``tol`` (P7, SPEC section 4).

    SPEC states the sequential rule: expand the entry of largest slack until
    ``hi - lo <= tol``. Here all queries are refined together, in rounds: in
    each round, for every query whose bracket is still wider than ``tol``,
    the largest-slack entries that together carry the excess slack are
    expanded (see Notes). This always includes the entry of largest slack, so
    the argument of P7 applies unchanged. A node expands into its children
    with ``n_c > 0``; a leaf into its targets (radius 0), so a cut refined to
    the end gives ``lo == hi == log Z``. A batch and per-query calls give the
    same cuts.

    Parameters
    ----------
    tree : Tree
    q : array_like, shape (k,) or (B, k)
    tol : float > 0
        Target width of ``[lo, hi]`` (natural log units). The rejection
        sampler's acceptance rate per proposal is ``>= exp(-tol)`` (P6).

    Returns
    -------
    Cut
        One cut per query; on return ``hi - lo <= tol`` for each query, or the
        query's entries all have ``eps_v == 0`` (then ``lo == hi == log Z``).

    Notes
    -----
    The slack of entry ``v`` is its share of ``exp(hi) - exp(lo)``:
    ``S_v = n_v exp(<q,r_v>) (exp(eps_v) - exp(-eps_v))``. The bracket is wide,
    ``hi - lo > tol``, exactly when ``S = sum_v S_v`` exceeds
    ``(exp(tol) - 1) exp(lo)``. Each round marks, per wide query, the
    smallest set of largest-slack entries whose slack covers the excess
    ``S - (exp(tol) - 1) exp(lo)`` (bulk marking, as in adaptive finite
    elements) and expands them. Entries with ``eps_v == 0`` and queries
    already narrow are set aside, so a round costs O(entries of unfinished
    queries); the number of rounds is about the tree height plus a few.
    """
    Q, _ = _as_queries(tree, q)
    tol = check_positive(tol, "tol")
    return _refine(tree, Q, tol=tol).cut()


# --------------------------------------------------------------------------
# The cut distribution and the bounds of P4, P5
# --------------------------------------------------------------------------

def cut_eps(tree: Any, q: Any, cut: Cut) -> Any:
    """``eps_C = max_{v in C, n_v > 0} ||q|| rho_v`` for each query (P2, P4)."""
    Q, single = _as_queries(tree, q)
    validate_cut(tree, cut, n_queries=Q.shape[0])
    t = _terms(tree, Q, cut.query, cut.node, cut.target)
    eps = np.where(np.isfinite(t.log_n), t.eps, 0.0)
    out = np.maximum.reduceat(eps, cut.ptr[:-1])
    return out[0] if single else out


def cut_distribution(tree: Any, q: Any, cut: Cut) -> np.ndarray:
    """Dense ``log Phat_C(y)`` over all target ids (P4, SPEC section 4).

    ``Phat_C(y) = exp(<q, r_v(y)>) / Zhat_C`` where ``v(y)`` is the entry of
    the cut holding ``y`` and ``Zhat_C = sum_v n_v exp(<q, r_v>)``: the
    distribution of :func:`reference.sampling.cut_sample`.

    This is an analysis helper: it costs O(B N) time and memory.

    Parameters
    ----------
    tree : Tree
    q : array_like, shape (k,) or (B, k)
    cut : Cut

    Returns
    -------
    numpy.ndarray, shape (capacity,) or (B, capacity)
        ``log Phat_C(y)`` indexed by target id; ``-inf`` for deleted rows.
    """
    Q, single = _as_queries(tree, q)
    validate_cut(tree, cut, n_queries=Q.shape[0])
    t = _terms(tree, Q, cut.query, cut.node, cut.target)
    _, _, hat = t.bracket(cut.ptr)
    qq, ids, e = _entry_targets(tree, cut.query, cut.node, cut.target, return_entry=True)
    out = np.full((Q.shape[0], tree.points.shape[0]), -np.inf)
    out[qq, ids] = t.s[e] - hat[qq]
    return out[0] if single else out


def log_prob_bound(tree: Any, q: Any, cut: Cut) -> Any:
    """``2 eps_C``: bound on ``max_y |log Phat_C(y) - log P(y)|`` (P4, SPEC section 6)."""
    return 2.0 * cut_eps(tree, q, cut)


def tv_bound(tree: Any, q: Any, cut: Cut) -> Any:
    """``1 - exp(-2 eps_C)``: bound on ``TV(Phat_C, P)`` (P4, SPEC section 6)."""
    return -np.expm1(-2.0 * cut_eps(tree, q, cut))


def kl_bound(tree: Any, q: Any, cut: Cut) -> Any:
    """``2 eps_C``: bound on ``KL(P || Phat_C)`` and ``KL(Phat_C || P)`` (P4, SPEC section 6)."""
    return 2.0 * cut_eps(tree, q, cut)


def grad_bias_bound(tree: Any, q: Any, cut: Cut, H: float | None = None) -> Any:
    """Bound on ``||E_Phat[h] - E_P[h]||`` for ``||h(y) - c|| <= H`` (P5, SPEC section 6).

    Returns ``2 (1 - exp(-2 eps_C)) H``. With ``H=None`` the bound is for
    ``h(y) = z_y``, i.e. for the gradient ``grad_q log Z = E_P[z_y]`` and its
    cut estimate ``E_Phat[z_y]``: then ``c = r_root`` and ``H = rho_root``
    (every live target lies in the root ball by I3).

    Parameters
    ----------
    tree : Tree
    q : array_like, shape (k,) or (B, k)
    cut : Cut
    H : float >= 0, optional
    """
    if H is None:
        _check_tree(tree)
        H = float(tree.radius[0])
    H = check_nonnegative(H, "H")
    return 2.0 * tv_bound(tree, q, cut) * H


# --------------------------------------------------------------------------
# Internals shared with reference.sampling
# --------------------------------------------------------------------------

def _check_tree(tree: Any) -> None:
    missing = [a for a in _TREE_ATTRS if not hasattr(tree, a)]
    if missing:
        raise ValueError(f"tree: expected a reference.tree.Tree (flat arrays {', '.join(_TREE_ATTRS)}), "
                         f"got {type(tree).__name__} without {', '.join(missing)}")
    if int(tree.n_live) < 1:
        raise ValueError("tree: expected at least one live target, got an empty tree (n_live == 0)")


def _as_queries(tree: Any, q: Any, name: str = "q") -> tuple[np.ndarray, bool]:
    """Validate the tree and queries; return ``(Q (B, k) float64, single)``."""
    _check_tree(tree)
    Q = as_float_array(q, name)
    if Q.ndim not in (1, 2):
        raise ValueError(f"{name}: expected shape (k,) or (B, k), got shape {Q.shape}")
    single = Q.ndim == 1
    Q = np.atleast_2d(Q).astype(np.float64, copy=False)
    if Q.shape[1] != tree.dim:
        raise ValueError(f"{name}: expected query vectors of dimension tree.dim = {tree.dim}, got shape "
                         f"{Q.shape[1:] if single else Q.shape}")
    return Q, single


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + l)`` for each (s, l), vectorised."""
    lengths = lengths.astype(np.int64, copy=False)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    before = np.cumsum(lengths) - lengths
    return np.repeat(starts.astype(np.int64) - before, lengths) + np.arange(total, dtype=np.int64)


def _rowdot(X: np.ndarray, xi: np.ndarray, Q: np.ndarray, qi: np.ndarray) -> np.ndarray:
    """``out[j] = <X[xi[j]], Q[qi[j]]>``, gathered in chunks of ``_CHUNK`` rows.

    The gathered rows go into two small preallocated buffers that stay in
    cache (``np.take(..., out=)``), which is several times faster than
    allocating a fresh ``X[xi]`` temporary for large gathers.
    """
    out = np.empty(xi.size)
    if xi.size == 0:
        return out
    c = min(_CHUNK, xi.size)
    bx = np.empty((c, X.shape[1]), dtype=np.result_type(X.dtype, np.float64))
    bq = np.empty((c, Q.shape[1]))
    for lo in range(0, xi.size, c):
        m = min(c, xi.size - lo)
        np.take(X, xi[lo:lo + m], axis=0, out=bx[:m])
        np.take(Q, qi[lo:lo + m], axis=0, out=bq[:m])
        np.einsum("ij,ij->i", bx[:m], bq[:m], out=out[lo:lo + m])
    return out


def _bucket_ceil(x: np.ndarray) -> np.ndarray:
    """Smallest size >= x on the ladder 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (x >= 1), elementwise.

    Rounding up by at most a factor 1.5 bounds the padding of the batched
    products of :func:`_grouped_logits` while keeping the number of shapes
    (Python iterations) logarithmic.
    """
    p = np.left_shift(1, np.ceil(np.log2(np.maximum(x, 1))).astype(np.int64))
    h = 3 * p // 4
    return np.where(x <= h, h, p)


def _range_logits(tree: Any, Q: np.ndarray, q: np.ndarray, v: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits ``a_y = <q, z_y>`` of every target ``y`` in ``D(v)``, for each (query, node) pair.

    Returns ``(a, ptr, perm)``: the pairs are reordered by ``perm`` and pair
    ``p = perm[j]`` owns ``a[ptr[j]:ptr[j+1]]``, in DFS order:
    ``a[ptr[j] + i] = <Q[q[p]], points_dfs[start[v[p]] + i]>``. See
    :func:`_grouped_logits` for how they are computed.
    """
    n = (tree.stop[v] - tree.start[v]).astype(np.int64)
    return _grouped_logits(tree.points_dfs, None, tree.start[v], n, Q, q, v)


def _child_logits(tree: Any, Q: np.ndarray, q: np.ndarray, v: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(query, child, <q, r_child>)`` for the children with ``n_c > 0`` of internal nodes ``v``.

    The same pairs as ``reference.sampling._children`` (in another order),
    scored by :func:`_grouped_logits` over the rows ``rep[child_idx[...]]``.
    """
    deg = (tree.child_ptr[v + 1] - tree.child_ptr[v]).astype(np.int64)
    s, _, perm = _grouped_logits(tree.rep, tree.child_idx, tree.child_ptr[v], deg, Q, q, v)
    c = tree.child_idx[_ranges(tree.child_ptr[v[perm]], deg[perm])]
    qc = np.repeat(q[perm], deg[perm])
    keep = tree.count[c] > 0
    return qc[keep], c[keep], s[keep]


def _grouped_logits(X: np.ndarray, index: np.ndarray | None, row0: np.ndarray, length: np.ndarray,
                    Q: np.ndarray, q: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inner products of query ``Q[q[p]]`` with rows ``X[index[row0[p] + i]]``, ``i < length[p]``, per pair ``p``.

    (``index=None`` means the rows ``X[row0[p] + i]``.) Pairs with the same
    ``v[p]`` read the same rows. Returns ``(a, ptr, perm)``: pair
    ``perm[j]`` owns ``a[ptr[j]:ptr[j+1]]``.

    The pairs are grouped by ``v``, and the groups by shape: a node requested
    by ``g`` queries with ``n`` rows goes to the bucket ``(G, L) = (g, n)``
    rounded up by :func:`_bucket_ceil`. Each bucket is one batched matrix product
    ``(U, G, k) @ (U, k, L)`` over its ``U`` nodes (padding repeats a real
    row or query and is dropped): every row is read once per node and block
    of queries rather than once per pair, and the Python loop is over the
    few buckets (and chunks of ``_CHUNK_ROWS`` rows), not over nodes.

    The summation order of a matrix product depends on the shapes, so the
    same (query, row) can differ in the last bits between calls (about
    ``k 2^-53 ||q|| ||x||``, far below ``_ROUNDING``); callers that need
    bit-reproducible logits (top-k ties) recompute the few they keep with
    :func:`_rowdot`.
    """
    n = np.asarray(length, np.int64)
    if v.size == 0:
        return np.zeros(0), np.zeros(1, np.int64), np.zeros(0, np.int64)
    o = np.argsort(v, kind="stable")
    vs = v[o]
    first = np.flatnonzero(np.concatenate([[True], vs[1:] != vs[:-1]]))
    g = np.diff(np.append(first, vs.size))          # pairs per distinct node
    nu = n[o[first]]
    r0 = row0[o[first]]
    G, L = _bucket_ceil(g), _bucket_ceil(nu)
    key = np.lexsort((vs[first], L, G))             # nodes by bucket, then by id
    Gk, Lk = G[key], L[key]
    bucket_first = np.flatnonzero(np.concatenate([[True], (Gk[1:] != Gk[:-1]) | (Lk[1:] != Lk[:-1])]))
    bucket_end = np.append(bucket_first[1:], key.size)
    out_a, out_perm = [], []
    for b0, b1 in zip(bucket_first.tolist(), bucket_end.tolist()):
        Gb, Lb = int(Gk[b0]), int(Lk[b0])
        step = max(1, _CHUNK_ROWS // (Lb + Gb))     # nodes per chunk: bounded temporaries
        for c0 in range(b0, b1, step):
            ks = key[c0:min(c0 + step, b1)]          # nodes of this chunk
            gi, ni = g[ks], nu[ks]
            rows = r0[ks][:, None] + np.minimum(np.arange(Lb), ni[:, None] - 1)
            if index is not None:
                rows = index[rows]
            cols = first[ks][:, None] + np.minimum(np.arange(Gb), gi[:, None] - 1)   # into o
            R = np.matmul(Q[q[o[cols]]], np.take(X, rows, axis=0).transpose(0, 2, 1))  # (U, Gb, Lb)
            real = (np.arange(Gb)[None, :, None] < gi[:, None, None]) & (np.arange(Lb) < ni[:, None])[:, None, :]
            out_a.append(R[real])                    # node by node, pair by pair, rows in order
            out_perm.append(o[_ranges(first[ks], gi)])
    perm = np.concatenate(out_perm)
    ptr = np.zeros(v.size + 1, np.int64)
    np.cumsum(n[perm], out=ptr[1:])
    return np.concatenate(out_a), ptr, perm


def _entry_counts(tree: Any, node: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``n_v`` of each entry (1 for single targets)."""
    n = np.ones(node.size, np.int64)
    isn = node >= 0
    n[isn] = tree.count[node[isn]]
    return n


def _entry_targets(tree: Any, query: np.ndarray, node: np.ndarray, target: np.ndarray,
                   return_entry: bool = False):
    """All (query, target) pairs covered by the entries: D(v) = order[start[v]:stop[v]]."""
    n = _entry_counts(tree, node, target)
    e = np.repeat(np.arange(node.size), n)
    isn = node >= 0
    first = np.where(isn, tree.start[np.maximum(node, 0)], 0)
    pos = _ranges(first, n)
    ids = np.where(isn[e], tree.order[np.minimum(pos, max(tree.order.size - 1, 0))], target[e])
    if return_entry:
        return query[e], ids, e
    return query[e], ids


@dataclass
class _Terms:
    """Per-entry quantities of a batch of cuts: s = <q, r_v>, log n_v, eps_v = ||q|| rho_v."""

    s: np.ndarray
    log_n: np.ndarray
    eps: np.ndarray

    def bracket(self, ptr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(lo, hi, log_z_hat)`` per query (P2)."""
        base = self.log_n + self.s
        return (_segment_logsumexp(base - self.eps, ptr), _segment_logsumexp(base + self.eps, ptr),
                _segment_logsumexp(base, ptr))


def _terms(tree: Any, Q: np.ndarray, query: np.ndarray, node: np.ndarray, target: np.ndarray,
           target_pos: np.ndarray | None = None) -> _Terms:
    """Score cut entries: ``s = <q, r_v>`` (``<q, z_y>`` for single targets).

    ``target_pos``, if given, holds the DFS position of each single target
    (``order[target_pos] == target``); those rows are then read from the
    tree's ``points_dfs`` (the same numbers, read from nearby rows).
    """
    isn = node >= 0
    s = np.empty(node.size)
    s[isn] = _rowdot(tree.rep, node[isn], Q, query[isn])
    if target_pos is not None:
        s[~isn] = _rowdot(tree.points_dfs, target_pos[~isn], Q, query[~isn])
    else:
        s[~isn] = _rowdot(tree.points, target[~isn], Q, query[~isn])
    n = _entry_counts(tree, node, target)
    log_n = np.full(node.size, -np.inf)
    pos = n > 0
    log_n[pos] = np.log(n[pos])
    rho = np.zeros(node.size)
    rho[isn] = tree.radius[node[isn]]
    eps = np.linalg.norm(Q, axis=1)[query] * rho
    return _Terms(s, log_n, eps)


def _segment_logsumexp(x: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """``logsumexp`` of each segment ``x[ptr[b]:ptr[b+1]]`` (segments non-empty)."""
    starts = ptr[:-1]
    m = np.maximum.reduceat(x, starts)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    sizes = np.diff(ptr)
    ssum = np.add.reduceat(np.exp(x - np.repeat(m_safe, sizes)), starts)
    with np.errstate(divide="ignore"):
        return m_safe + np.log(ssum)


def _segment_softmax(x: np.ndarray, ptr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(logsumexp of each segment, exp(x - logsumexp of x's segment))``; segments non-empty, x finite."""
    starts, sizes = ptr[:-1], np.diff(ptr)
    m = np.maximum.reduceat(x, starts)
    w = np.exp(x - np.repeat(m, sizes))
    ssum = np.add.reduceat(w, starts)
    w /= np.repeat(ssum, sizes)
    return m + np.log(ssum), w


def _group_logsumexp(x: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """``logsumexp`` of ``x`` over each group (unsorted ``group``); ``-inf`` for empty groups."""
    m = np.full(n_groups, -np.inf)
    np.maximum.at(m, group, x)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    ssum = np.bincount(group, weights=np.exp(x - m_safe[group]), minlength=n_groups)
    with np.errstate(divide="ignore"):
        return m_safe + np.log(ssum)


def _ptr(query: np.ndarray, n_queries: int) -> np.ndarray:
    return np.searchsorted(query, np.arange(n_queries + 1)).astype(np.int64)


class _CutState:
    """A refined batch of cuts with its entry terms (internal).

    The entry arrays ``raw[f]`` (f in ``_FIELDS``) are kept in the order the
    refinement produced them; ``order`` sorts them by query. Sorted views are
    computed on demand, so a caller that only needs a few of them (the
    rejection sampler) does not pay for permuting all of them.

    With ``exact_leaves`` (the rejection sampler's envelope), an expanded leaf
    ``v`` is kept as one *exact* entry ``x = raw["x"] >= 0`` instead of its
    ``n_v`` single targets: ``eps = 0``, ``log_n + s = logsumexp_{y in D(v)} a_y``,
    and the softmax of its targets in DFS order, ``exp(a_y - log_n - s)``,
    is ``exact_prob[exact_ptr[x]:exact_ptr[x+1]]`` (``raw["x"] == -1`` for
    the other entries). It stands for the same ``n_v`` single-target entries of
    the cut (:meth:`cut` lists them), with the same terms in ``lo``, ``hi``
    and ``log_z_hat``.
    """

    def __init__(self, raw: dict[str, np.ndarray], order: np.ndarray, n_queries: int,
                 node_logits: int, target_logits: int, rounds: int,
                 exact_prob: np.ndarray | None = None, exact_ptr: np.ndarray | None = None,
                 tree: Any = None) -> None:
        self.raw, self.order, self.n_queries, self.tree = raw, order, n_queries, tree
        self.node_logits, self.target_logits, self.rounds = node_logits, target_logits, rounds
        self.exact_prob = np.zeros(0) if exact_prob is None else exact_prob
        self.exact_ptr = np.zeros(1, np.int64) if exact_ptr is None else exact_ptr
        self._sorted: dict[str, np.ndarray] = {}

    def sorted(self, field: str) -> np.ndarray:
        if field not in self._sorted:
            self._sorted[field] = self.raw[field][self.order]
        return self._sorted[field]

    @property
    def n_exact(self) -> int:
        """Number of exact (evaluated leaf) entries."""
        return int(self.exact_ptr.size - 1)

    @property
    def size(self) -> int:
        """Entries of the cut (:meth:`cut`): an exact entry counts as its ``n_v`` single targets."""
        return int(self.order.size - self.n_exact + self.exact_prob.size)

    @property
    def ptr(self) -> np.ndarray:
        counts = np.bincount(self.raw["query"], minlength=self.n_queries)
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    @property
    def query(self) -> np.ndarray:
        return self.sorted("query")

    @property
    def node(self) -> np.ndarray:
        return self.sorted("node")

    @property
    def target(self) -> np.ndarray:
        return self.sorted("target")

    @property
    def terms(self) -> _Terms:
        if self.n_exact:
            raise RuntimeError("_CutState.terms: exact entries have no per-entry terms; use raw and exact_prob")
        return _Terms(self.sorted("s"), self.sorted("log_n"), self.sorted("eps"))

    def cut(self) -> Cut:
        """The cut as a :class:`Cut`; an exact entry becomes its single targets ``order[start[v]:stop[v]]``."""
        if not self.n_exact:
            return Cut(self.query, self.node, self.target, self.n_queries)
        x = self.sorted("x")
        isx = x >= 0
        c = np.where(isx, self.exact_ptr[np.maximum(x, 0) + 1] - self.exact_ptr[np.maximum(x, 0)], 1)
        e = np.repeat(np.arange(x.size), c)
        within = np.arange(e.size) - np.repeat(np.cumsum(c) - c, c)
        ex = isx[e]
        target = self.target[e]
        target[ex] = self.tree.order[self.tree.start[self.node[e[ex]]] + within[ex]]
        node = np.where(ex, -1, self.node[e])
        return Cut(self.query[e], node, target, self.n_queries)


def _expand(tree: Any, query: np.ndarray, node: np.ndarray, return_pos: bool = False):
    """Children (with n_c > 0) of internal nodes and targets of leaves, per (query, node) pair.

    Returns ``(query, node, target)``, and with ``return_pos`` also
    ``target_pos``, the DFS position of each leaf target (-1 for child entries).
    """
    leaf = tree.is_leaf[node]
    vi, qi = node[~leaf], query[~leaf]
    deg = tree.child_ptr[vi + 1] - tree.child_ptr[vi]
    child = tree.child_idx[_ranges(tree.child_ptr[vi], deg)]
    qc = np.repeat(qi, deg)
    keep = tree.count[child] > 0
    child, qc = child[keep], qc[keep]
    vl, ql = node[leaf], query[leaf]
    n = tree.stop[vl] - tree.start[vl]
    pos = _ranges(tree.start[vl], n)
    ys = tree.order[pos]
    qy = np.repeat(ql, n)
    new_q = np.concatenate([qc, qy])
    new_v = np.concatenate([child, np.full(ys.size, -1, np.int64)])
    new_y = np.concatenate([np.full(child.size, -1, np.int64), ys])
    if not return_pos:
        return new_q, new_v, new_y
    new_p = np.concatenate([np.full(child.size, -1, np.int64), pos])
    return new_q, new_v, new_y, new_p


_FIELDS = ("query", "node", "target", "s", "log_n", "eps", "x")


def _slack_before(r: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Exclusive prefix sums of ``r`` within each run of equal ``group`` (sorted).

    Computed row by row on a padded 2-D array, so that each query's sums do not
    depend on the other queries of the batch.
    """
    rows, row = np.unique(group, return_inverse=True)
    first = np.searchsorted(group, rows)
    rank = np.arange(group.size) - first[row]
    pad = np.zeros((rows.size, int(rank.max()) + 1))
    pad[row, rank] = r
    cs = np.cumsum(pad, axis=1)
    return np.where(rank > 0, cs[row, np.maximum(rank - 1, 0)], 0.0)


def _entry_logs(part: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-entry terms of lo, hi and log_z_hat (P2)."""
    base = part["log_n"] + part["s"]
    return dict(lo=base - part["eps"], hi=base + part["eps"], hat=base)


def _refine(tree: Any, Q: np.ndarray, tol: float | None = None, n_draws: int | None = None,
            exact_leaves: bool = False, full_count: int = 0) -> _CutState:
    """Refine the root cut for all queries at once; the only loop is over rounds.

    Two marking rules; at least one of ``tol``, ``n_draws`` is given (with
    both, the ``tol`` rule acts on a query only in rounds where the cost rule
    marks nothing for it, i.e. as a safety net):

    ``tol`` (:func:`adaptive_cut`, P7)
        Refine while ``hi - lo > tol``. Each round, for every such query, the
        entries are ranked by slack ``n_v exp(s_v) (exp(eps_v) - exp(-eps_v))``
        and the smallest set of largest-slack entries whose slack covers the
        excess ``S - (exp(tol) - 1) exp(lo)`` (``S`` = total slack) is expanded
        ("bulk marking"; the entry of largest slack is always marked).
    ``n_draws`` (the rejection sampler's default, P6)
        Balance the cost of refining against the cost of proposals: drawing
        ``n`` samples costs about ``n U / Z`` proposals (one target logit
        each), and expanding ``v`` removes at most ``U_v - n_v exp(s_v) =
        n_v exp(s_v) (exp(eps_v) - 1)`` from ``U`` at the price of scoring its
        children (or its ``n_v`` targets, for a leaf). Expand ``v`` when
        ``n (U_v - n_v exp(s_v)) / Zhat > cost_v``, with ``Zhat`` the
        ``log_z_hat`` estimate (``<= Z`` when representatives are centroids,
        by Jensen, so this errs towards refining). Entries not marked are not
        worth expanding later either (``Zhat`` only grows under refinement)
        and are frozen, unless their query's bracket is still wider than
        ``tol``. The cut only affects speed, never exactness.

    Entries of finished queries are set aside, so a round costs O(entries of
    unfinished queries); entries stay unsorted until the end (per-query sums
    by ``bincount``).

    With ``exact_leaves`` an expanded leaf becomes one exact entry (see
    :class:`_CutState`) instead of ``n_v`` single targets: the same cut and
    the same ``lo``, ``hi``, ``log_z_hat`` up to rounding, with far fewer
    entries to carry. Its targets are scored by :func:`_range_logits` (one
    matrix product per leaf and block of queries).
    """
    B = Q.shape[0]
    root = dict(query=np.arange(B, dtype=np.int64), node=np.zeros(B, np.int64),
                target=np.full(B, -1, np.int64))
    t0 = _terms(tree, Q, root["query"], root["node"], root["target"])
    root.update(s=t0.s, log_n=t0.log_n, eps=t0.eps, x=np.full(B, -1, np.int64))
    node_logits, target_logits, rounds = B, 0, 0
    qnorm = np.linalg.norm(Q, axis=1)
    # Entries that will never be expanded again are "frozen": moved out of the
    # pool, with their contributions to lo / hi / log_z_hat accumulated per query.
    frozen: list[dict[str, np.ndarray]] = []
    acc = {key: np.full(B, -np.inf) for key in ("lo", "hi", "hat")}
    exact_prob: list[np.ndarray] = []         # softmax of each exact entry's targets, entry after entry
    exact_sizes: list[np.ndarray] = []        # n_v of each exact entry, in the order of their ids x
    n_exact = 0

    def freeze(part: dict[str, np.ndarray], zero_eps: bool = False) -> None:
        if part["query"].size:
            frozen.append(part)
            if zero_eps:  # lo, hi and log_z_hat terms coincide
                g = _group_logsumexp(part["log_n"] + part["s"], part["query"], B)
                for key in acc:
                    acc[key] = np.logaddexp(acc[key], g)
                return
            for key, val in _entry_logs(part).items():
                acc[key] = np.logaddexp(acc[key], _group_logsumexp(val, part["query"], B))

    def split_zero_eps(part: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Freeze entries with eps_v == 0 (single targets, zero-radius nodes): they have no slack."""
        z = part["eps"] == 0
        if not z.any():
            return part
        freeze({f: a[z] for f, a in part.items()}, zero_eps=True)
        return {f: a[~z] for f, a in part.items()}

    pool = split_zero_eps(root)
    if tol is not None:
        log_allow = np.log(np.expm1(tol))
    if n_draws is not None:
        log_draws = np.log(float(n_draws))
        n_child = np.diff(tree.child_ptr)
    max_rounds = int(tree.radius.shape[0]) + 2  # each round expands >= 1 node per unfinished query
    while pool["query"].size:
        query, s, log_n, eps = pool["query"], pool["s"], pool["log_n"], pool["eps"]
        logs = _entry_logs(pool)
        tot = {key: np.logaddexp(acc[key], _group_logsumexp(val, query, B)) for key, val in logs.items()}
        marked = np.zeros(query.size, bool)
        if n_draws is not None:
            v = pool["node"]
            cost = np.where(tree.is_leaf[v] | (tree.count[v] <= full_count), tree.count[v], n_child[v])
            log_gain = log_draws + log_n + s + eps + np.log(-np.expm1(-eps)) - tot["hat"][query]  # e^eps - 1
            marked = log_gain > np.log(np.maximum(cost, 1))
        wide = np.zeros(B, bool)
        if tol is not None:
            with np.errstate(invalid="ignore"):
                wide = (tot["hi"] - tot["lo"]) > tol
            # With both rules, the bracket rule only acts once the cost rule is done with a query.
            busy = np.zeros(B, bool)
            busy[query[marked]] = True
            ci = np.flatnonzero((wide & ~busy)[query])
            if ci.size:
                cq, e = query[ci], eps[ci]
                log_slack = log_n[ci] + s[ci] + e + np.log(-np.expm1(-2.0 * e))
                log_S = _group_logsumexp(log_slack, cq, B)
                # Entry i (by decreasing slack) is marked iff the slack before it is less than the
                # excess S - A, A = (exp(tol) - 1) exp(lo) the slack allowed; equivalently iff the
                # slack from i on (i included) exceeds A. The second form is computed: summed from
                # the smallest entry up, it has full relative precision even where A << S, so its
                # comparisons with A do not flip with the last bits of the logits (the first form
                # compares shares close to 1, and did; batch and single-query calls then differed).
                with np.errstate(invalid="ignore"):
                    allow = np.exp(np.minimum(log_allow + tot["lo"] - log_S, 0.0))   # A / S, in [0, 1]
                o = np.lexsort((log_slack, cq))               # by query, slack increasing
                cq_o = cq[o]
                share = np.exp(log_slack[o] - log_S[cq_o])
                from_here = _slack_before(share, cq_o) + share
                mark = from_here > allow[cq_o]
                mark[np.append(cq_o[1:] != cq_o[:-1], True)] = True   # the largest slack: always marked
                marked[ci[o[mark]]] = True
        keep = wide[query] & ~marked   # stays in the pool; other unmarked entries are final
        final = np.flatnonzero(~marked & ~keep)
        freeze({f: a[final] for f, a in pool.items()})
        if not marked.any():           # then no query is wide (they always mark), keep is all False
            pool = {f: a[keep] for f, a in pool.items()}
            break
        rounds += 1
        if rounds > max_rounds:
            raise RuntimeError("adaptive_cut: no progress after as many rounds as tree nodes (corrupt tree?)")
        mq, mv = query[marked], pool["node"][marked]
        if exact_leaves:  # expanded leaves become exact entries: logsumexp of their target logits, eps = 0
            leaf = tree.is_leaf[mv] | (tree.count[mv] <= full_count)
            a, aptr, perm = _range_logits(tree, Q, mq[leaf], mv[leaf])
            xq, xv = mq[leaf][perm], mv[leaf][perm]
            target_logits += a.size
            n_x = np.diff(aptr)
            log_n_x = np.log(n_x)
            lse, prob = _segment_softmax(a, aptr)
            freeze(dict(query=xq, node=xv, target=np.full(xv.size, -1, np.int64),
                        s=lse - log_n_x, log_n=log_n_x, eps=np.zeros(xv.size),
                        x=n_exact + np.arange(xv.size)), zero_eps=True)
            exact_prob.append(prob)
            exact_sizes.append(n_x)
            n_exact += xv.size
            mq, mv = mq[~leaf], mv[~leaf]
        if exact_leaves:  # only internal nodes left: their children, scored by batched products
            new_q, new_v, s_new = _child_logits(tree, Q, mq, mv)
            node_logits += int((tree.child_ptr[mv + 1] - tree.child_ptr[mv]).sum())
            new = dict(query=new_q, node=new_v, target=np.full(new_q.size, -1, np.int64), s=s_new,
                       log_n=np.log(tree.count[new_v]), eps=qnorm[new_q] * tree.radius[new_v])
        else:
            new_q, new_v, new_y, new_p = _expand(tree, mq, mv, return_pos=True)
            nt = _terms(tree, Q, new_q, new_v, new_y, new_p)
            n_new_nodes = int(np.count_nonzero(new_v >= 0))
            node_logits += n_new_nodes
            target_logits += new_v.size - n_new_nodes
            new = dict(query=new_q, node=new_v, target=new_y, s=nt.s, log_n=nt.log_n, eps=nt.eps)
        new = split_zero_eps({**new, "x": np.full(new_q.size, -1, np.int64)})
        if keep.any():
            kept = np.flatnonzero(keep)
            pool = {f: np.concatenate([pool[f][kept], new[f]]) for f in _FIELDS}
        else:
            pool = new
    parts = frozen + [pool]
    allf = {f: np.concatenate([p[f] for p in parts]) for f in _FIELDS}
    # counting (radix) sort when the query index fits in 16 bits
    key = allf["query"].astype(np.uint16) if B <= np.iinfo(np.uint16).max else allf["query"]
    exact_ptr = np.concatenate([[0], np.cumsum(np.concatenate(exact_sizes))]).astype(np.int64) \
        if exact_sizes else np.zeros(1, np.int64)
    return _CutState(allf, np.argsort(key, kind="stable"), B, node_logits, target_logits, rounds,
                     np.concatenate(exact_prob) if exact_prob else np.zeros(0), exact_ptr, tree)
