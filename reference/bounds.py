"""Certified bounds on the softmax partition function over a cut of the tree.

proofs/README.md section 4 and propositions P1-P5, P7 (proofs/README.md section 6). Notation:
a query vector ``q`` in R^k (temperature folded in), target vectors ``z_y``,
logits ``a_y = <q, z_y>``, ``Z = sum_y exp(a_y)``. A tree node ``v`` has a
representative ``r_v``, a count ``n_v`` of live descendant targets ``D(v)`` and
a radius ``rho_v`` with ``||z_y - r_v|| <= rho_v`` for ``y`` in ``D(v)``
(invariant I3), so that by Cauchy-Schwarz

    |a_y - <q, r_v>| <= eps_v(q) = ||q|| rho_v                       (P1)

A *cut* ``C`` is a set of entries whose descendant sets partition the live
targets. An entry is either a tree node or, after a leaf has been expanded, a
single target ``y`` (representative ``z_y``, radius 0, count 1); a cut made of
single targets only gives ``lo == hi == log Z`` up to rounding (P7). Summing P1 over a cut
brackets the partition function (P2):

    lo        = logsumexp_v (log n_v + <q, r_v> - eps_v)  <=  log Z
    hi        = logsumexp_v (log n_v + <q, r_v> + eps_v)  >=  log Z
    log_z_hat = logsumexp_v (log n_v + <q, r_v>)

(``lo`` and ``hi`` are returned widened by a derived bound on their float64
rounding, so that the certificate holds for the float64 numbers themselves:
proofs/p02_bracket.md, "Floating point"), and the *cut distribution*
``Phat_C(y) = exp(<q, r_v(y)>) / Zhat_C`` (pick a node with weight
``n_v exp(<q, r_v>)``, then a uniform descendant) is within ``2 eps_C`` of the
softmax in log space, ``eps_C = max_{v in C} eps_v`` (P4).

Everything here takes a batch of queries; each query has its own cut, and a
batch of cuts is stored flat in one :class:`Cut` (entries sorted by query).
The tree is any object with the flat arrays of ``reference.tree.Tree``
(``rep``, ``radius``, ``count``, ``child_ptr``, ``child_idx``, ``is_leaf``,
``order``, ``start``, ``stop``, ``points``, ``alive``, ``n_live``, ``dim``,
and the caches ``points_dfs`` = ``points[order]`` and ``rep_norm`` =
``||r_v||``); it is read, never modified. The batched machinery behind these
functions (entry terms, grouped inner products, the refinement rounds) is in
:mod:`reference._fastpath`, shared with :mod:`reference.sampling`.

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

from reference._fastpath import (
    ROUNDING,
    as_queries,
    bracket_rounding,
    check_tree,
    entry_counts,
    ranges,
    refine_to_width,
    terms,
    widen,
)
from reference._validation import MAX_PARAM, as_index_array, check_int, check_nonnegative, check_positive

__all__ = [
    "DEFAULT_TOL",
    "ROUNDING",
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

# ROUNDING (imported above, public here): the relative margin 1e-9 by which a computed
# inner product may exceed its bound a_y <= <q, r_v> + eps_v (P1) before the samplers
# and top-k treat it as a broken invariant rather than rounding; one value for the plain
# and the fast paths.

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
    The entry arrays are copied (as int64) and the copies made read-only;
    the arrays given are not modified. The arrays are not checked against a
    tree here (see :func:`validate_cut`, which every function of this module
    calls). Build cuts with
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
            arrays[name] = np.array(a, dtype=np.int64)   # a copy: the caller's array stays writable
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
        """The coarsest cut ``{root}`` for each of ``n_queries`` queries (an integer >= 1)."""
        n = check_int(n_queries, "n_queries", low=1)
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
        """The single-query cut of query ``b`` (``0 <= b < n_queries``)."""
        b = check_int(b, "b", low=0, high=self.n_queries - 1)
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
    check_tree(tree)
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
    n = entry_counts(tree, cut.node, cut.target)
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
    """Certified bracket on ``log Z`` from a cut (P2, proofs/README.md sections 4 and 6).

    ``lo = logsumexp_v(log n_v + <q,r_v> - eps_v)``,
    ``hi = logsumexp_v(log n_v + <q,r_v> + eps_v)``,
    ``log_z_hat = logsumexp_v(log n_v + <q,r_v>)`` over the entries ``v`` of
    each query's cut, with ``eps_v = ||q|| rho_v``; entries with ``n_v == 0``
    (emptied by deletes) contribute nothing. Under I3,
    ``lo <= log Z <= hi``, ``hi - lo <= 2 eps_C`` and
    ``|log_z_hat - log Z| <= eps_C``.

    The certificate holds literally in float64: the computed ``lo`` and
    ``hi`` are widened by a derived bound ``W`` on their rounding error
    (inner products, ``||q||``, stored radii, logsumexp; about 3e-14 of the
    logit scale, :func:`reference._fastpath.bracket_rounding`) and rounded
    one step outward, so ``lo <= log Z <= hi`` for the exact ``log Z`` of the
    float64 inputs (proofs/p02_bracket.md, "Floating point"). Then
    ``hi - lo <= 2 eps_C + 2 W``; ``log_z_hat`` (an estimate) is not widened.

    Parameters
    ----------
    tree : Tree
    q : array_like, shape (k,) or (B, k)
        Query vector(s), temperature folded in. Refused (``ValueError``) if a
        coordinate exceeds ``MAX_ABS_COORD`` or ``||q|| max_v (||r_v|| + rho_v)``
        exceeds ``MAX_LOGIT`` (both 1e150, :mod:`reference._validation`).
    cut : Cut
        One cut per query (``cut.n_queries == B``; 1 for a single query).

    Returns
    -------
    lo, hi, log_z_hat : float or numpy.ndarray of shape (B,)
    """
    Q, single = as_queries(tree, q)
    validate_cut(tree, cut, n_queries=Q.shape[0])
    t = terms(tree, Q, cut.query, cut.node, cut.target)
    ptr = cut.ptr
    lo, hi, hat = t.bracket(ptr)
    # Round outward by the float64 error bound W (proofs/p02_bracket.md, "Floating point").
    w = bracket_rounding(tree, np.linalg.norm(Q, axis=1), np.diff(ptr), np.maximum(np.abs(lo), np.abs(hi)))
    lo, hi = widen(lo, hi, w)
    if single:
        return lo[0], hi[0], hat[0]
    return lo, hi, hat


def adaptive_cut(tree: Any, q: Any, tol: float = DEFAULT_TOL, *, return_counters: bool = False
                 ) -> Cut | tuple[Cut, dict[str, int]]:
    """Refine the root cut until the bracket is narrower than ``tol`` (P7, proofs/README.md section 4).

    proofs/README.md section 4.3 states the sequential rule: expand the entry of largest slack until
    ``hi - lo <= tol``. Here all queries are refined together, in rounds: in
    each round, for every query whose bracket is still wider than ``tol``,
    the largest-slack entries that together carry the excess slack are
    expanded (see Notes). This always includes the entry of largest slack, so
    the argument of P7 applies unchanged. A node expands into its children
    with ``n_c > 0``; a leaf into its targets (radius 0), so a cut refined to
    the end gives ``lo == hi == log Z`` (before the rounding widening). A batch and per-query calls give the
    same cuts.

    Parameters
    ----------
    tree : Tree
    q : array_like, shape (k,) or (B, k)
    tol : float > 0
        Target width of ``[lo, hi]`` (natural log units). The rejection
        sampler's acceptance rate per proposal is ``>= exp(-tol)`` (P6).
    return_counters : bool, default False
        Also return ``{"node_logits", "target_logits", "rounds"}``: the
        ``<q, r_v>`` and ``a_y`` evaluated (all queries) and the number of
        refinement rounds of the batch.

    Returns
    -------
    Cut
        One cut per query; on return the bracket that
        :func:`log_partition_bracket` reports for it (widened for rounding)
        has ``hi - lo <= tol`` for each query, as float64 numbers, or the
        query's entries all have ``eps_v == 0`` (then ``lo`` and ``hi`` differ
        from ``log Z`` by the rounding bound ``W`` only). The refinement aims
        at ``tol - 8 W_bound(q)`` and rechecks the final cut
        (:func:`reference._fastpath.refine_to_width`; proofs/p02_bracket.md,
        "Floating point"); a ``tol`` below that rounding floor (about 1e-13
        of the logit scale) refines to the end.
    counters : dict, only if ``return_counters``

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
    queries); the number of rounds is about the tree height plus a few. The
    rounds are :func:`reference._fastpath.refine`, which also refines the
    rejection sampler's envelope.
    """
    Q, _ = as_queries(tree, q)
    tol = check_positive(tol, "tol")
    st = refine_to_width(tree, Q, tol)
    cut = Cut(*st.cut_fields())
    if return_counters:
        return cut, dict(node_logits=st.node_logits, target_logits=st.target_logits, rounds=st.rounds)
    return cut


# --------------------------------------------------------------------------
# The cut distribution and the bounds of P4, P5
# --------------------------------------------------------------------------

def cut_eps(tree: Any, q: Any, cut: Cut) -> Any:
    """``eps_C = max_{v in C, n_v > 0} ||q|| rho_v`` for each query (P2, P4)."""
    Q, single = as_queries(tree, q)
    validate_cut(tree, cut, n_queries=Q.shape[0])
    t = terms(tree, Q, cut.query, cut.node, cut.target)
    eps = np.where(np.isfinite(t.log_n), t.eps, 0.0)
    out = np.maximum.reduceat(eps, cut.ptr[:-1])
    return out[0] if single else out


def cut_distribution(tree: Any, q: Any, cut: Cut) -> np.ndarray:
    """Dense ``log Phat_C(y)`` over all target ids (P4, proofs/README.md section 4).

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
    Q, single = as_queries(tree, q)
    validate_cut(tree, cut, n_queries=Q.shape[0])
    t = terms(tree, Q, cut.query, cut.node, cut.target)
    _, _, hat = t.bracket(cut.ptr)
    qq, ids, e = _entry_targets(tree, cut.query, cut.node, cut.target, return_entry=True)
    out = np.full((Q.shape[0], tree.points.shape[0]), -np.inf)
    out[qq, ids] = t.s[e] - hat[qq]
    return out[0] if single else out


def log_prob_bound(tree: Any, q: Any, cut: Cut) -> Any:
    """``2 eps_C``: bound on ``max_y |log Phat_C(y) - log P(y)|`` (P4, proofs/README.md section 6)."""
    return 2.0 * cut_eps(tree, q, cut)


def tv_bound(tree: Any, q: Any, cut: Cut) -> Any:
    """``1 - exp(-2 eps_C)``: bound on ``TV(Phat_C, P)`` (P4, proofs/README.md section 6)."""
    return -np.expm1(-2.0 * cut_eps(tree, q, cut))


def kl_bound(tree: Any, q: Any, cut: Cut) -> Any:
    """``2 eps_C``: bound on ``KL(P || Phat_C)`` and ``KL(Phat_C || P)`` (P4, proofs/README.md section 6)."""
    return 2.0 * cut_eps(tree, q, cut)


def grad_bias_bound(tree: Any, q: Any, cut: Cut, H: float | None = None) -> Any:
    """Bound on ``||E_Phat[h] - E_P[h]||`` for ``||h(y) - c|| <= H`` (P5, proofs/README.md section 6).

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
        check_tree(tree)
        H = float(tree.radius[0])
    H = check_nonnegative(H, "H", high=MAX_PARAM)
    return 2.0 * tv_bound(tree, q, cut) * H


# --------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------

def _entry_targets(tree: Any, query: np.ndarray, node: np.ndarray, target: np.ndarray,
                   return_entry: bool = False):
    """All (query, target) pairs covered by the entries: D(v) = order[start[v]:stop[v]]."""
    n = entry_counts(tree, node, target)
    e = np.repeat(np.arange(node.size), n)
    isn = node >= 0
    first = np.where(isn, tree.start[np.maximum(node, 0)], 0)
    pos = ranges(first, n)
    ids = np.where(isn[e], tree.order[np.minimum(pos, max(tree.order.size - 1, 0))], target[e])
    if return_entry:
        return query[e], ids, e
    return query[e], ids
