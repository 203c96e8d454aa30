"""The tree algorithms for one query, written plainly: the definitions of proofs/README.md section 4.

Each function here is a loop and a heap over the entries of one query's cut,
short enough to read with the paper open. The batched, vectorised versions of
the same names (:mod:`reference.bounds`, :mod:`reference.sampling`) are the
fast path; ``tests/test_plain.py`` checks them against these, and these
against brute force. Two building blocks are public as well, for figures and
proofs that follow a refinement step by step: :func:`expand` (4) and
:func:`refinement_order` (5).

Notation (proofs/README.md section 2): query q in R^k, targets z_y, logits a_y = <q, z_y>,
Z = sum_y exp(a_y), P(y) = exp(a_y) / Z. A node v of the tree has the
representative r_v (``tree.rep[v]``), the radius rho_v (``tree.radius[v]``),
the live descendants D(v) = ``tree.order[tree.start[v]:tree.stop[v]]`` and
their number n_v (``tree.count[v]``, 0 when deletes emptied v; such nodes are
skipped everywhere). A cut C is a set of entries whose D(v) partition the live
targets; an entry is a node, or a single target y (r = z_y, n = 1, rho = 0).

The numbered statements, cited in the comments of the code
------------------------------------------------------------
(1) Node bound (P1). For y in D(v): |a_y - <q, r_v>| <= eps_v = ||q|| rho_v
    (I3 and Cauchy-Schwarz).
(2) Bracket (P2). Summing (1) over the entries of a cut:
        lo = logsumexp_v (log n_v + <q, r_v> - eps_v)  <=  log Z
        hi = logsumexp_v (log n_v + <q, r_v> + eps_v)  >=  log Z.
(3) Slack. exp(hi) - exp(lo) = sum_v S_v with
        S_v = n_v exp(<q, r_v>) (exp(eps_v) - exp(-eps_v)) >= 0,
    and S_v = 0 exactly when eps_v = 0.
(4) Expansion. A node is replaced by its children c with n_c > 0 (their D(c)
    partition D(v)); a leaf by its targets as single entries (eps = 0). The
    result is again a cut.
(5) Adaptive cut (P7). From the root cut, expand the entry of largest slack
    (3) until hi - lo <= tol, or until every entry has eps_v = 0 (then
    lo = hi = log Z). Only nodes are expanded, each at most once, so this
    ends after at most M expansions (M nodes in the tree).
(6) Cut distribution (P4). Phat_C(y) = exp(<q, r_v(y)>) / Zhat_C with
    Zhat_C = sum_v n_v exp(<q, r_v>), v(y) the entry holding y: draw the
    entry v with probability n_v exp(<q, r_v>) / Zhat_C, then y by (7).
(7) Uniform descendant. D(v) is the contiguous range
    order[start[v]:stop[v]], so y = order[start[v] + j] with j uniform in
    {0, ..., n_v - 1} has probability exactly 1/n_v.
(8) Rejection (P6). Envelope U_v = n_v exp(<q, r_v> + eps_v), so that
    U = sum_v U_v = exp(hi). Propose v with probability U_v / U, y by (7),
    and accept with probability exp(a_y - <q, r_v> - eps_v), which is <= 1 by
    (1). Then Pr[y proposed and accepted] = (U_v / U)(1 / n_v)
    exp(a_y - <q, r_v> - eps_v) = exp(a_y) / U for every y: accepted draws
    are exact draws from P, at the rate Z / U >= exp(-(hi - lo)).
(9) Top-k (P8). ub_v = <q, r_v> + eps_v >= a_y for y in D(v), by (1).
    Targets are ranked by larger a_y, then smaller y. With tau the logit of
    the k-th best target seen so far, a node with ub_v < tau holds no member
    of the top-k (strictly: a target with a_y = tau can still win on its id).
    Best first: when the popped node has ub_v < tau, so has every node left.
(10) Rounding. A computed inner product errs by about k 2^-53 ||q|| ||x||;
    a pruning test compares ub_v plus the margin
    ROUNDING (1 + ||q|| (||r_v|| + rho_v)), so rounding never prunes a true
    member of the top-k, nor flags a valid tree as violating (1).
(11) Certified in float64. The computed lo and hi of (2) are widened by W,
    a derived bound on all their rounding errors (inner products, ||q||,
    stored radii, logsumexp), and rounded one step outward, so
    lo <= log Z <= hi holds for the returned floats; (5) stops at
    hi - lo <= tol - 8 W_bound so that the widened bracket is within tol
    (proofs/p02_bracket.md, "Floating point"; the same W as the fast path).

References
----------
proofs/README.md sections 2, 4 and 6; the proofs ``proofs/p01_node_bound.md``,
``proofs/p02_bracket.md``, ``proofs/p04_cut_distribution.md``,
``proofs/p06_rejection_exact.md``, ``proofs/p07_adaptive_cut.md`` and
``proofs/p08_topk_exact.md``.
"""

from __future__ import annotations

import heapq
import math
from typing import Any, NamedTuple

import numpy as np
from scipy.special import logsumexp

from reference._fastpath import bracket_rounding, tree_scale, widen, width_target
from reference._validation import as_float_array, check_int, check_logit_scale, check_positive, check_rng
from reference.bounds import DEFAULT_TOL, ROUNDING, Cut
from reference.tree import Tree

__all__ = ["ROUNDING", "adaptive_cut", "bracket", "cut_sample", "expand", "refinement_order", "rejection_sample",
           "topk"]

# ROUNDING (from reference.bounds, the same margin the fast path uses) is the relative
# rounding margin of (10): far above the k 2^-53 relative error of an inner product
# for any k < 1e6, far below any real gap between logits.

#: The running sums of (2) are recomputed from the cut's entries when their
#: rounding error bound exceeds this fraction of the sum (1e-10 in log units).
_SUM_ACCURACY = 1e-10

_ULP = 2.0**-52


class _Entry(NamedTuple):
    """One entry of a cut: a node (``target == -1``) or a single target (``node == -1``)."""

    node: int
    target: int
    log_n: float  # log n_v (0 for a single target)
    s: float      # <q, r_v> (<q, z_y> for a single target)
    eps: float    # eps_v = ||q|| rho_v (0 for a single target)

    @property
    def lo(self) -> float:
        return self.log_n + self.s - self.eps  # term of lo in (2)

    @property
    def hi(self) -> float:
        return self.log_n + self.s + self.eps  # term of hi in (2)


class _RunningLogSum:
    """``log sum_i exp(x_i)`` over terms added and removed one at a time (the sums of (2)).

    The sum is held as ``total * exp(shift)``, ``shift`` the largest term added
    since the last reset. Removing a term subtracts: when the removed terms were
    far larger than what is left (hi falls by orders of magnitude as the cut is
    refined) the difference loses digits. ``err`` bounds the absolute rounding
    error (per term: ``exp`` of the rounded ``x - shift`` is off by at most
    ``(1 + |x| + |shift|) 2^-52`` relative; per operation: the rounding of the
    new total); the caller recomputes the sum from its terms when
    :attr:`accurate` turns false, and before trusting it to stop.
    """

    def __init__(self) -> None:
        self.shift, self.total, self.err = -math.inf, 0.0, 0.0

    def reset(self, terms: list[float]) -> None:
        self.shift = max(terms)
        self.total = math.fsum(math.exp(x - self.shift) for x in terms)  # positive terms: no cancellation
        self.err = _ULP * (2.0 + max(abs(x) for x in terms) + abs(self.shift)) * self.total

    def add(self, x: float, sign: float = 1.0) -> None:
        if x > self.shift:  # rescale so that every term is at most 1
            f = math.exp(self.shift - x)
            self.shift, self.total, self.err = x, self.total * f, self.err * f
        w = math.exp(x - self.shift)
        self.total += sign * w
        self.err += _ULP * ((2.0 + abs(x) + abs(self.shift)) * w + abs(self.total))

    @property
    def accurate(self) -> bool:
        return self.err <= _SUM_ACCURACY * self.total

    @property
    def log(self) -> float:
        return self.shift + math.log(self.total)


def _check_tree(tree: Any) -> None:
    """Validate the tree: a :class:`reference.tree.Tree` with at least one live target."""
    if not isinstance(tree, Tree) or tree.n_live < 1:
        got = f"a Tree with n_live = {tree.n_live}" if isinstance(tree, Tree) else type(tree).__name__
        raise ValueError(f"tree: expected a reference.tree.Tree with at least one live target, got {got}")


def _check_query(tree: Any, q: Any) -> np.ndarray:
    """Validate the tree and ``q`` (shape ``(tree.dim,)``, finite, logits far from overflow); return q as float64.

    ``|q_i| <= MAX_ABS_COORD`` and ``||q|| max_v (||r_v|| + rho_v) <= MAX_LOGIT``
    (:mod:`reference._validation`), as on the fast path.
    """
    _check_tree(tree)
    q = as_float_array(q, "q", shape=(tree.dim,)).astype(np.float64)
    check_logit_scale(q, tree_scale(tree), "q")
    return q


def _target(tree: Tree, q: np.ndarray, tol: float) -> float:
    """The refinement target of (5): ``tol`` less the rounding margin of the reported bracket (11)."""
    return float(width_target(tree, q[None, :], tol)[0])


def _node_entry(tree: Tree, q: np.ndarray, qnorm: float, v: int) -> _Entry:
    return _Entry(v, -1, math.log(tree.count[v]), float(q @ tree.rep[v]), qnorm * float(tree.radius[v]))  # (1)


def _target_entry(tree: Tree, q: np.ndarray, y: int) -> _Entry:
    return _Entry(-1, y, 0.0, float(q @ tree.points[y]), 0.0)  # a single target: r = z_y, n = 1, eps = 0


def expand(tree: Tree, v: int) -> tuple[list[int], list[int]]:
    """The entries that replace node ``v`` in a cut (4): ``(nodes, targets)``.

    Parameters
    ----------
    tree : Tree
    v : int
        A node id, ``0 <= v < tree.count.size``.

    Returns
    -------
    nodes, targets : list of int
        For an internal node, its children with n_c > 0, in the order of
        ``tree.child_idx``, and no targets; for a leaf, no nodes and its live
        targets D(v) = ``tree.order[tree.start[v]:tree.stop[v]]``, which
        become single-target entries. Either way the D of these entries
        partition D(v).
    """
    _check_tree(tree)
    v = check_int(v, "v", low=0, high=tree.count.size - 1)
    if tree.is_leaf[v]:
        return [], [int(y) for y in tree.order[tree.start[v]:tree.stop[v]]]
    children = tree.child_idx[tree.child_ptr[v]:tree.child_ptr[v + 1]]
    return [int(c) for c in children if tree.count[c] > 0], []


def _expand(tree: Tree, q: np.ndarray, qnorm: float, e: _Entry) -> list[_Entry]:
    """The entries that replace node entry ``e`` in the cut (4), scored for ``q``."""
    nodes, targets = expand(tree, e.node)
    return [_node_entry(tree, q, qnorm, c) for c in nodes] + [_target_entry(tree, q, y) for y in targets]


def _log_slack(e: _Entry) -> float:
    """log S_v = log n_v + <q, r_v> + eps_v + log(1 - exp(-2 eps_v)), for eps_v > 0 (3)."""
    return e.log_n + e.s + e.eps + math.log(-math.expm1(-2.0 * e.eps))


def _cut_entries(tree: Tree, q: np.ndarray, tol: float, expanded: list[int] | None = None) -> list[_Entry]:
    """The entries of the adaptive cut (5), with lo and hi of (2) kept as running sums.

    With ``expanded``, the expanded nodes are appended to it, in order.
    """
    qnorm = float(np.linalg.norm(q))
    heap: list[tuple[float, int, _Entry]] = []  # entries with eps > 0; largest slack (3) on top
    done: list[_Entry] = []                     # entries with eps = 0: no slack, never expanded
    lo, hi = _RunningLogSum(), _RunningLogSum()

    def add(e: _Entry) -> None:
        lo.add(e.lo)                                                   # (2)
        hi.add(e.hi)                                                   # (2)
        if e.eps > 0:
            heapq.heappush(heap, (-_log_slack(e), e.node, e))          # (3)
        else:
            done.append(e)

    add(_node_entry(tree, q, qnorm, tree.root))
    while heap:                                                        # (5): some entry has eps > 0
        if not (lo.accurate and hi.accurate) or hi.log - lo.log <= tol:
            entries = [e for *_, e in heap] + done                     # (2) recomputed from the entries,
            lo.reset([e.lo for e in entries])                          # so that the stop is decided on
            hi.reset([e.hi for e in entries])                          # accurate sums
            if hi.log - lo.log <= tol:                                 # (5): narrow enough
                break
        _, _, e = heapq.heappop(heap)                                  # (5): the largest slack (3)
        if expanded is not None:
            expanded.append(e.node)
        lo.add(e.lo, -1.0)
        hi.add(e.hi, -1.0)
        for c in _expand(tree, q, qnorm, e):                           # (4)
            add(c)
    return [e for *_, e in heap] + done


def adaptive_cut(tree: Tree, q: Any, tol: float = DEFAULT_TOL) -> Cut:
    """The adaptive cut of one query: expand the largest slack until ``hi - lo <= tol`` (5), P7.

    Parameters
    ----------
    tree : Tree
    q : array_like, shape (tree.dim,)
        The query vector, temperature folded in; finite.
    tol : float > 0, default DEFAULT_TOL
        Target width of the bracket [lo, hi] on log Z (natural log units).

    Returns
    -------
    Cut
        A single-query :class:`reference.bounds.Cut` (nodes first, then single
        targets). Its bracket (2), widened as in (11), has ``hi - lo <= tol``,
        or every entry has eps_v = 0 and ``lo = hi = log Z`` up to the
        widening: (5) stops at ``tol - 8 W_bound`` (11).
    """
    q = _check_query(tree, q)
    entries = _cut_entries(tree, q, _target(tree, q, check_positive(tol, "tol")))
    return Cut.from_entries([e.node for e in entries if e.node >= 0], [e.target for e in entries if e.node < 0])


def refinement_order(tree: Tree, q: Any) -> np.ndarray:
    """The nodes that the rule of (5) expands, in order, when no ``tol`` stops it: P3, P7.

    Expansion m (4) replaces ``order[m]``, the entry of largest slack (3) of
    the cut that the m expansions before it leave, by its children or its
    targets. The sequence ends when no entry has eps_v > 0; the cut is then
    exact, lo = hi = log Z (P7). Each cut along the way refines the one
    before, so on a nested tree (I4) its bracket (2) never widens (P3).
    :func:`adaptive_cut` with any ``tol`` is the root cut after a prefix of
    this order: it stops at the first of these cuts whose bracket has
    ``hi - lo <= tol`` (up to the rounding of its running sums,
    ``_SUM_ACCURACY``).

    Parameters
    ----------
    tree : Tree
    q : array_like, shape (tree.dim,)

    Returns
    -------
    numpy.ndarray of int64, shape (number of expansions,)
        Node ids, each at most once. Apply them with :func:`expand` to follow
        the cut step by step.
    """
    q = _check_query(tree, q)
    expanded: list[int] = []
    _cut_entries(tree, q, -math.inf, expanded)  # (5) without its stop: hi - lo <= -inf never holds
    return np.array(expanded, dtype=np.int64)


def bracket(tree: Tree, q: Any, tol: float = DEFAULT_TOL) -> tuple[float, float]:
    """The certified bracket ``lo <= log Z <= hi`` (2) of :func:`adaptive_cut`, P2 and P7.

    Parameters
    ----------
    tree : Tree
    q : array_like, shape (tree.dim,)
    tol : float > 0, default DEFAULT_TOL

    Returns
    -------
    lo, hi : float
        ``logsumexp_v(log n_v + <q, r_v> -/+ eps_v)`` over the adaptive cut,
        recomputed from its entries (not the running sums), widened by the
        rounding bound W and rounded outward (11): ``lo <= log Z <= hi`` for
        these float64 numbers.
    """
    q = _check_query(tree, q)
    entries = _cut_entries(tree, q, _target(tree, q, check_positive(tol, "tol")))
    lo = logsumexp([e.log_n + e.s - e.eps for e in entries])  # (2)
    hi = logsumexp([e.log_n + e.s + e.eps for e in entries])  # (2)
    w = bracket_rounding(tree, np.linalg.norm(q), len(entries), max(abs(lo), abs(hi)))  # (11)
    lo, hi = widen(lo, hi, w)                                                               # (11)
    return float(lo), float(hi)


def _margin(tree: Tree, qnorm: float, v: int) -> float:
    """The rounding margin ROUNDING (1 + ||q|| (||r_v|| + rho_v)) of (10)."""
    return ROUNDING * (1.0 + qnorm * float(tree.rep_norm[v] + tree.radius[v]))


def _uniform_descendant(tree: Tree, e: _Entry, rng: np.random.Generator) -> int:
    """A target uniform in D(v) for a node entry (7); the target itself for a single-target entry."""
    if e.node < 0:
        return e.target
    return int(tree.order[tree.start[e.node] + rng.integers(tree.count[e.node])])  # (7): probability 1/n_v


def cut_sample(tree: Tree, q: Any, n: int, rng: np.random.Generator, tol: float = DEFAULT_TOL
               ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` i.i.d. draws from the cut distribution Phat_C of :func:`adaptive_cut` (6), P4.

    Parameters
    ----------
    tree : Tree
    q : array_like, shape (tree.dim,)
    n : int >= 1
        Number of draws (with replacement).
    rng : numpy.random.Generator
    tol : float > 0, default DEFAULT_TOL
        Bracket width of the cut; Phat_C is within 2 eps_C of P in log space (P4).

    Returns
    -------
    ids : numpy.ndarray of int64, shape (n,)
    log_q : numpy.ndarray of float64, shape (n,)
        log Phat_C(ids), for the logQ correction of the sampled softmax (P13).
    """
    q = _check_query(tree, q)
    n, rng = check_int(n, "n", low=1), check_rng(rng)
    entries = _cut_entries(tree, q, _target(tree, q, check_positive(tol, "tol")))  # the cut of adaptive_cut
    log_w = np.array([e.log_n + e.s for e in entries])  # (6): log(n_v exp(<q, r_v>))
    log_z_hat = float(logsumexp(log_w))                # (6): log Zhat_C
    ids, log_q = np.empty(n, np.int64), np.empty(n)
    for i, j in enumerate(rng.choice(len(entries), size=n, p=np.exp(log_w - log_z_hat))):  # (6): the entry
        ids[i] = _uniform_descendant(tree, entries[j], rng)  # (7)
        log_q[i] = entries[j].s - log_z_hat                  # (6): log Phat_C(y) = <q, r_v(y)> - log Zhat_C
    return ids, log_q


def rejection_sample(tree: Tree, q: Any, n: int, rng: np.random.Generator, *, tol: float = DEFAULT_TOL
                     ) -> np.ndarray:
    """``n`` i.i.d. exact draws from the softmax P, by rejection from the envelope (8), P6.

    Parameters
    ----------
    tree : Tree
    q : array_like, shape (tree.dim,)
    n : int >= 1
        Number of draws (with replacement).
    rng : numpy.random.Generator
    tol : float > 0, default DEFAULT_TOL
        Bracket width of the envelope's cut; each proposal is accepted with
        probability Z / U >= exp(-tol). The draws are exact whatever ``tol``.

    Returns
    -------
    numpy.ndarray of int64, shape (n,)

    Raises
    ------
    ValueError
        On invalid input, or if an acceptance probability exceeds 1 beyond
        rounding (10): a target outside its node's radius, i.e. I3 fails.
    """
    q = _check_query(tree, q)
    n, rng = check_int(n, "n", low=1), check_rng(rng)
    entries = _cut_entries(tree, q, check_positive(tol, "tol"))
    log_u = np.array([e.log_n + e.s + e.eps for e in entries])  # (8): log U_v
    p_propose = np.exp(log_u - logsumexp(log_u))               # (8): U_v / U
    qnorm, ids = float(np.linalg.norm(q)), []
    while len(ids) < n:
        for j in rng.choice(len(entries), size=n - len(ids), p=p_propose):  # (8): v ~ U_v / U
            e = entries[j]
            y = _uniform_descendant(tree, e, rng)                           # (7)
            log_accept = float(q @ tree.points[y]) - e.s - e.eps            # (8): a_y - <q, r_v> - eps_v
            if e.node >= 0 and log_accept > _margin(tree, qnorm, e.node):    # (1) fails beyond rounding (10)
                raise ValueError(f"tree: invariant I3 violated: target {y} lies outside the radius of node {e.node}")
            if rng.random() < math.exp(min(log_accept, 0.0)):             # (8): <= 1 by (1)
                ids.append(y)
    return np.array(ids, dtype=np.int64)


def topk(tree: Tree, q: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact maximum-inner-product top-k by best-first branch and bound (9), P8.

    Parameters
    ----------
    tree : Tree
    q : array_like, shape (tree.dim,)
    k : int, 1 <= k <= tree.n_live

    Returns
    -------
    ids : numpy.ndarray of int64, shape (k,)
    logits : numpy.ndarray of float64, shape (k,)
        a_y of the ids; ordered by decreasing logit, exact ties by smaller id
        (the brute-force order ``np.lexsort((ids, -logits))``).
    """
    q = _check_query(tree, q)
    k = check_int(k, "k", low=1, high=tree.n_live)
    qnorm = float(np.linalg.norm(q))

    def ub(v: int) -> float:  # (9): <q, r_v> + eps_v, plus the rounding margin of (10)
        return float(q @ tree.rep[v]) + qnorm * float(tree.radius[v]) + _margin(tree, qnorm, v)

    nodes = [(-ub(tree.root), tree.root)]  # max-heap on ub
    best: list[tuple[float, int]] = []     # min-heap of (a_y, -y): best[0] is the k-th best target (9)
    while nodes:
        neg_ub, v = heapq.heappop(nodes)
        if len(best) == k and -neg_ub < best[0][0]:  # (9): ub_v < tau, and so for every node left
            break
        if tree.is_leaf[v]:
            for y in tree.order[tree.start[v]:tree.stop[v]]:
                item = (float(q @ tree.points[y]), -int(y))  # (9): larger a_y first, then smaller y
                if len(best) < k:
                    heapq.heappush(best, item)
                elif item > best[0]:
                    heapq.heapreplace(best, item)
            continue
        for c in tree.child_idx[tree.child_ptr[v]:tree.child_ptr[v + 1]]:
            if tree.count[c] > 0:                        # (4): children with n_c > 0
                u = ub(int(c))
                if len(best) < k or u >= best[0][0]:     # (9): prune ub_c < tau
                    heapq.heappush(nodes, (-u, int(c)))
    ranked = sorted(best, reverse=True)  # decreasing a_y, then increasing y (9)
    return np.array([-m for _, m in ranked], dtype=np.int64), np.array([a for a, _ in ranked])
