"""The tree algorithms for one query, written plainly: the definitions of proofs/README.md section 4.

Each function here is one loop (and, for top-k, a heap) over the entries of
one query's cut, short enough to read with the paper open. It imports no
internal module of the fast path: besides NumPy and SciPy it uses only the
tree (:class:`reference.tree.Tree`), the cut type and two constants of
:mod:`reference.bounds` (``Cut``, ``DEFAULT_TOL``, ``ROUNDING``), and the
package's shared argument checks (:mod:`reference._validation`: input
validation only, no algorithm). ``python -m reference walkthrough`` runs
these functions on a dozen points and prints every step.

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
    (3), ties to the smaller node id, until hi - lo <= tol, or until every
    entry has eps_v = 0 (then lo = hi = log Z). Only nodes are expanded,
    each at most once, so this ends after at most M expansions (M nodes).
(6) Cut distribution (P4). Phat_C(y) = exp(<q, r_v(y)>) / Zhat_C with
    Zhat_C = sum_v n_v exp(<q, r_v>), v(y) the entry holding y: draw the
    entry v with probability n_v exp(<q, r_v>) / Zhat_C, then y by (7).
    TV(Phat_C, P) <= 1 - exp(-(hi - lo)) (P4b): what tol buys.
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
    Targets are ranked by larger a_y, then smaller y. Best first: pop the
    node of largest ub_v from a heap; with tau the logit of the k-th best
    target evaluated so far, stop when the popped ub_v < tau (every node
    left has ub <= the popped one, so none holds a member of the top-k);
    evaluate a popped leaf's targets, push a popped node's children.
(10) Rounding margin. A computed inner product errs by about k 2^-53 ||q|| ||x||;
    a pruning test and the check of (1) compare ub_v plus the margin
    ROUNDING (1 + ||q|| (||r_v|| + rho_v)), so rounding never prunes a target
    whose computed logit is in the top-k, nor flags a valid tree as
    violating (1).

What plain leaves out (the fast path carries it)
------------------------------------------------
- Certified rounding. :func:`bracket` returns (2) as float64 computes it:
  ``logsumexp`` of the rounded terms. ``lo <= log Z <= hi`` holds in exact
  arithmetic, and for the returned floats only up to the rounding bound W
  of proofs/p02_bracket.md ("Floating point"; about 3e-14 of the logit scale
  ||q|| max_v (||r_v|| + rho_v) at k = 64). The fast
  :func:`reference.bounds.log_partition_bracket` widens by W and rounds
  outward, so its bracket holds literally; its adaptive cut aims at
  ``tol - 8 W`` to stay within ``tol`` after the widening (below
  ``tol = 8 W`` it refines to the end), where plain stops at its own
  unwidened ``hi - lo <= tol``.
- Running sums. Every step of (5) recomputes lo, hi and every slack from all
  entries of the cut: O(|C|) work per expansion. The fast path updates sums
  and expands many entries per round.
- Speed devices of the samplers and of top-k (proofs/README.md section 4.8):
  batches of queries, bulk refinement rounds, exact entries, the
  cost-balanced default envelope and the dense fallback of the rejection
  sampler, the beam seed and level sweep of top-k.

The fast path under other names (proofs/README.md section 4.8 has the table
of what differs and what is tested equal):

- ``adaptive_cut(tree, q, tol)`` -- ``bounds.adaptive_cut(tree, queries, tol)``
- ``bracket(tree, q, tol) -> (lo, hi)`` -- ``bounds.log_partition_bracket(tree,
  queries, cut) -> (lo, hi, log_z_hat)`` over that cut, widened by W
- ``cut_sample(tree, q, n, rng, tol)`` -- ``sampling.cut_sample(tree, queries,
  n, rng, cut=None, *, tol)``
- ``rejection_sample(tree, q, n, rng, *, tol=DEFAULT_TOL) -> ids`` --
  ``sampling.rejection_sample(tree, queries, n, rng, tol=None) -> (ids,
  counters)``, whose default envelope is the cost-balanced one
- ``topk(tree, q, k)`` -- ``sampling.topk(tree, queries, k)``
- ``expand``, ``refinement_order`` -- none (the fast refinement expands in
  bulk rounds)

References
----------
proofs/README.md sections 2, 4 and 6; the proofs ``proofs/p01_node_bound.md``,
``proofs/p02_bracket.md``, ``proofs/p04_cut_distribution.md``,
``proofs/p04b_tv_width.md``, ``proofs/p06_rejection_exact.md``,
``proofs/p07_adaptive_cut.md`` and ``proofs/p08_topk_exact.md``.
"""

from __future__ import annotations

import heapq
import math
from typing import Any, NamedTuple

import numpy as np
from scipy.special import logsumexp

from reference._validation import as_float_array, check_int, check_logit_scale, check_positive, check_rng
from reference.bounds import DEFAULT_TOL, ROUNDING, Cut
from reference.tree import Tree

__all__ = ["ROUNDING", "Pop", "Proposal", "Step", "adaptive_cut", "bracket", "cut_sample", "expand",
           "refinement_order", "rejection_sample", "topk"]

# ROUNDING (from reference.bounds, the same margin the fast path uses) is the relative
# rounding margin of (10): far above the k 2^-53 relative error of an inner product
# for any k < 1e6, far below any real gap between logits.


class Step(NamedTuple):
    """One expansion of (5), as recorded by ``adaptive_cut(..., trace=[])``."""

    node: int         #: the node expanded: the entry of largest slack (3)
    log_slack: float  #: its log S_v
    lo: float         #: lo of (2) over the cut before the expansion
    hi: float         #: hi of (2) over the cut before the expansion


class Proposal(NamedTuple):
    """One proposal of (8), as recorded by ``rejection_sample(..., trace=[])``."""

    node: int          #: the proposing entry's node, or -1 for a single-target entry
    target: int        #: the proposed target y
    logit: float       #: a_y
    bound: float       #: <q, r_v> + eps_v (= a_y for a single target)
    log_accept: float  #: a_y - <q, r_v> - eps_v; the acceptance probability is exp(min(0, log_accept))
    uniform: float     #: the uniform compared with the acceptance probability
    accepted: bool


class Pop(NamedTuple):
    """One node popped by the best-first search of (9), as recorded by ``topk(..., trace=[])``."""

    node: int
    ub: float    #: ub_v plus the rounding margin of (10)
    tau: float   #: the k-th best logit evaluated before this pop (-inf while fewer than k)
    action: str  #: "stop" (ub < tau), "leaf" (its targets evaluated) or "expand" (children pushed)


class _Entries(NamedTuple):
    """The entries of one query's cut, as parallel arrays."""

    node: np.ndarray    # node id v, or -1 for a single target
    target: np.ndarray  # target id y, or -1 for a node
    log_n: np.ndarray   # log n_v (0 for a single target)
    s: np.ndarray       # <q, r_v> (a_y for a single target)
    eps: np.ndarray     # eps_v = ||q|| rho_v (0 for a single target)


def _check_tree(tree: Any) -> None:
    """Validate the tree: a :class:`reference.tree.Tree` with at least one live target."""
    if not isinstance(tree, Tree) or tree.n_live < 1:
        got = f"a Tree with n_live = {tree.n_live}" if isinstance(tree, Tree) else type(tree).__name__
        raise ValueError(f"tree: expected a reference.tree.Tree with at least one live target, got {got}")


def _check_query(tree: Any, q: Any) -> np.ndarray:
    """Validate the tree and ``q`` (shape ``(tree.dim,)``, finite, logits far from overflow); return q as float64.

    ``|q_i| <= MAX_ABS_COORD`` and ``||q|| max_v (||r_v|| + rho_v) <= MAX_LOGIT``
    (proofs/README.md section 2, "Limits"), as on the fast path.
    """
    _check_tree(tree)
    q = as_float_array(q, "q", shape=(tree.dim,)).astype(np.float64)
    check_logit_scale(q, float(np.max(tree.rep_norm + tree.radius)), "q")
    return q


def _dot(q: np.ndarray, x: np.ndarray) -> float:
    """<q, x>: every inner product of this module (logits a_y and <q, r_v>) is computed here."""
    return float(q @ x)


def _entries(tree: Tree, q: np.ndarray, nodes: list[int], targets: list[int]) -> _Entries:
    """Node entries (1) and single-target entries (r = z_y, n = 1, eps = 0), scored for ``q``."""
    qnorm = float(np.linalg.norm(q))
    return _Entries(np.array(nodes + [-1] * len(targets), np.int64), np.array([-1] * len(nodes) + targets, np.int64),
                    np.array([math.log(tree.count[v]) for v in nodes] + [0.0] * len(targets)),
                    np.array([_dot(q, tree.rep[v]) for v in nodes] + [_dot(q, tree.points[y]) for y in targets]),
                    np.array([qnorm * float(tree.radius[v]) for v in nodes] + [0.0] * len(targets)))


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


def _bracket(c: _Entries) -> tuple[float, float]:
    """lo and hi of (2) over the entries ``c``, as float64 computes them (not widened)."""
    return float(logsumexp(c.log_n + c.s - c.eps)), float(logsumexp(c.log_n + c.s + c.eps))


def _log_slack(c: _Entries) -> np.ndarray:
    """log S_v = log n_v + <q, r_v> + eps_v + log(1 - exp(-2 eps_v)) of (3); -inf where eps_v = 0."""
    out = np.full(c.eps.shape, -np.inf)
    pos = c.eps > 0
    out[pos] = c.log_n[pos] + c.s[pos] + c.eps[pos] + np.log(-np.expm1(-2.0 * c.eps[pos]))
    return out


def _cut(tree: Tree, q: np.ndarray, tol: float, trace: list[Step] | None = None) -> _Entries:
    """The adaptive cut (5): from the root, expand the largest slack until hi - lo <= tol or every eps_v = 0."""
    c = _entries(tree, q, [tree.root], [])
    while True:
        lo, hi = _bracket(c)                                                    # (2)
        if hi - lo <= tol or not (c.eps > 0).any():                            # (5): narrow enough, or exact
            return c
        log_slack = _log_slack(c)                                               # (3)
        i = min(np.flatnonzero(log_slack == log_slack.max()), key=lambda j: c.node[j])  # largest; ties: smaller id
        if trace is not None:
            trace.append(Step(int(c.node[i]), float(log_slack[i]), lo, hi))
        new = _entries(tree, q, *expand(tree, int(c.node[i])))                 # (4)
        keep = np.arange(c.node.size) != i
        c = _Entries(*(np.concatenate([old[keep], add]) for old, add in zip(c, new)))


def adaptive_cut(tree: Tree, q: Any, tol: float = DEFAULT_TOL, *, trace: list[Step] | None = None) -> Cut:
    """The adaptive cut of one query: expand the largest slack until ``hi - lo <= tol`` (5), P7.

    Parameters
    ----------
    tree : Tree
    q : array_like, shape (tree.dim,)
        The query vector, temperature folded in; finite.
    tol : float > 0, default DEFAULT_TOL
        Target width of the bracket [lo, hi] on log Z (natural log units).
    trace : list, optional
        If given, one :class:`Step` (node, log slack, lo, hi before it) is
        appended per expansion, in order.

    Returns
    -------
    Cut
        A single-query :class:`reference.bounds.Cut` (nodes first, then single
        targets, each in the order the expansions added them). The bracket
        (2) of its entries, as :func:`bracket` computes it, has
        ``hi - lo <= tol`` (literally, for those float64 numbers), or every
        entry has eps_v = 0 and ``lo = hi``.
    """
    q = _check_query(tree, q)
    c = _cut(tree, q, check_positive(tol, "tol"), trace)
    return Cut.from_entries(c.node[c.node >= 0], c.target[c.node < 0])


def refinement_order(tree: Tree, q: Any) -> np.ndarray:
    """The nodes that the rule of (5) expands, in order, when no ``tol`` stops it: P3, P7.

    Expansion m (4) replaces ``order[m]``, the entry of largest slack (3) of
    the cut that the m expansions before it leave, by its children or its
    targets. The sequence ends when no entry has eps_v > 0; the cut is then
    exact, lo = hi = log Z (P7). Each cut along the way refines the one
    before, so on a nested tree (I4) its bracket (2) never widens (P3).
    :func:`adaptive_cut` with any ``tol`` is the root cut after a prefix of
    this order: the shortest prefix whose cut has ``hi - lo <= tol``.

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
    steps: list[Step] = []
    _cut(tree, q, -math.inf, steps)  # (5) without its stop: hi - lo <= -inf never holds
    return np.array([s.node for s in steps], dtype=np.int64)


def bracket(tree: Tree, q: Any, tol: float = DEFAULT_TOL) -> tuple[float, float]:
    """The bracket ``lo <= log Z <= hi`` (2) over the cut of :func:`adaptive_cut`, P2 and P7; not widened.

    Parameters
    ----------
    tree : Tree
    q : array_like, shape (tree.dim,)
    tol : float > 0, default DEFAULT_TOL

    Returns
    -------
    lo, hi : float
        ``logsumexp_v(log n_v + <q, r_v> -/+ eps_v)`` over the adaptive cut,
        as float64 computes it (the numbers the stop of (5) tested):
        ``hi - lo <= tol`` or the cut is exact. ``lo <= log Z <= hi`` holds in
        exact arithmetic; the returned floats may miss log Z by up to the
        rounding bound W (proofs/p02_bracket.md, "Floating point"), a few
        1e-16 of the logit scale. For a bracket certified in float64 use
        :func:`reference.bounds.log_partition_bracket`.
    """
    q = _check_query(tree, q)
    return _bracket(_cut(tree, q, check_positive(tol, "tol")))


def _margin(tree: Tree, qnorm: float, v: int) -> float:
    """The rounding margin ROUNDING (1 + ||q|| (||r_v|| + rho_v)) of (10)."""
    return ROUNDING * (1.0 + qnorm * float(tree.rep_norm[v] + tree.radius[v]))


def _uniform_descendant(tree: Tree, c: _Entries, j: int, rng: np.random.Generator) -> int:
    """A target uniform in D(v) for a node entry (7); the target itself for a single-target entry."""
    v = int(c.node[j])
    if v < 0:
        return int(c.target[j])
    return int(tree.order[tree.start[v] + rng.integers(tree.count[v])])  # (7): probability 1/n_v


def cut_sample(tree: Tree, q: Any, n: int, rng: np.random.Generator, tol: float = DEFAULT_TOL
               ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` i.i.d. draws from the cut distribution Phat_C of :func:`adaptive_cut` (6), P4 and P4b.

    Parameters
    ----------
    tree : Tree
    q : array_like, shape (tree.dim,)
    n : int >= 1
        Number of draws (with replacement).
    rng : numpy.random.Generator
    tol : float > 0, default DEFAULT_TOL
        Bracket width of the cut. What it buys: TV(Phat_C, P) <= 1 - exp(-tol)
        (P4b: the cut's hi - lo <= tol; up to rounding, a few 1e-16 of the
        logit scale), so the expectation of any h with ||h(y) - c|| <= H is
        off by at most 2 (1 - exp(-tol)) H (P5). It does not bound the error
        pointwise: |log Phat_C(y) - log P(y)| <= 2 eps_C (P4), and eps_C,
        the largest ||q|| rho_v in the cut, can stay large on entries of
        little mass.

    Returns
    -------
    ids : numpy.ndarray of int64, shape (n,)
    log_q : numpy.ndarray of float64, shape (n,)
        log Phat_C(ids), for the logQ correction of the sampled softmax (P13).
    """
    q = _check_query(tree, q)
    n, rng = check_int(n, "n", low=1), check_rng(rng)
    c = _cut(tree, q, check_positive(tol, "tol"))   # the cut of adaptive_cut
    log_w = c.log_n + c.s                            # (6): log(n_v exp(<q, r_v>))
    log_z_hat = float(logsumexp(log_w))              # (6): log Zhat_C
    ids, log_q = np.empty(n, np.int64), np.empty(n)
    for i, j in enumerate(rng.choice(log_w.size, size=n, p=np.exp(log_w - log_z_hat))):  # (6): the entry
        ids[i] = _uniform_descendant(tree, c, j, rng)  # (7)
        log_q[i] = c.s[j] - log_z_hat                  # (6): log Phat_C(y) = <q, r_v(y)> - log Zhat_C
    return ids, log_q


def rejection_sample(tree: Tree, q: Any, n: int, rng: np.random.Generator, *, tol: float = DEFAULT_TOL,
                     trace: list[Proposal] | None = None) -> np.ndarray:
    """``n`` i.i.d. exact draws from the softmax P, by rejection from the envelope (8), P6.

    Parameters
    ----------
    tree : Tree
    q : array_like, shape (tree.dim,)
    n : int >= 1
        Number of draws (with replacement).
    rng : numpy.random.Generator
    tol : float > 0, default DEFAULT_TOL
        The envelope is (8) over the cut of ``adaptive_cut(tree, q, tol)``
        (the same ``tol`` as every function here), so each proposal is
        accepted with probability Z / U = exp(log Z - hi) >= exp(-tol) (up to
        rounding). The draws are exact whatever ``tol``.
    trace : list, optional
        If given, one :class:`Proposal` is appended per proposal, in order.

    Returns
    -------
    numpy.ndarray of int64, shape (n,)
        The first n accepted proposals.

    Raises
    ------
    ValueError
        On invalid input, or if an acceptance probability exceeds 1 beyond
        rounding (10): a target outside its node's radius, i.e. I3 fails.
    """
    q = _check_query(tree, q)
    n, rng = check_int(n, "n", low=1), check_rng(rng)
    c = _cut(tree, q, check_positive(tol, "tol"))     # the cut of adaptive_cut
    log_u = c.log_n + c.s + c.eps                      # (8): log U_v
    p_propose = np.exp(log_u - logsumexp(log_u))       # (8): U_v / U
    qnorm, ids = float(np.linalg.norm(q)), []
    while len(ids) < n:
        for j in rng.choice(log_u.size, size=n - len(ids), p=p_propose):    # (8): v ~ U_v / U
            y = _uniform_descendant(tree, c, j, rng)                        # (7)
            a, bound = _dot(q, tree.points[y]), float(c.s[j] + c.eps[j])   # a_y and <q, r_v> + eps_v
            log_accept = a - bound                                          # (8): a_y - <q, r_v> - eps_v
            if c.node[j] >= 0 and log_accept > _margin(tree, qnorm, int(c.node[j])):  # (1) fails beyond (10)
                raise ValueError(f"tree: invariant I3 violated: target {y} lies outside the radius of node "
                                 f"{int(c.node[j])}")
            u = float(rng.random())
            accepted = u < math.exp(min(log_accept, 0.0))                   # (8): <= 1 by (1)
            if trace is not None:
                trace.append(Proposal(int(c.node[j]), y, a, bound, log_accept, u, accepted))
            if accepted:
                ids.append(y)
    return np.array(ids, dtype=np.int64)


def topk(tree: Tree, q: Any, k: int, *, trace: list[Pop] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact maximum-inner-product top-k by best-first branch and bound (9), P8.

    Exact for the logits as this function computes them (P8 in floating
    point, proofs/README.md section 6.8): the first k live targets in the
    order (larger computed a_y, then smaller y).

    Parameters
    ----------
    tree : Tree
    q : array_like, shape (tree.dim,)
    k : int, 1 <= k <= tree.n_live
    trace : list, optional
        If given, one :class:`Pop` (node, ub, tau, action) is appended per
        node taken from the heap, in order.

    Returns
    -------
    ids : numpy.ndarray of int64, shape (k,)
    logits : numpy.ndarray of float64, shape (k,)
        a_y of the ids, ``float(q @ tree.points[y])``; ordered by decreasing
        logit, equal logits by smaller id.

    Raises
    ------
    ValueError
        On invalid input, or if an evaluated target's logit exceeds its
        leaf's ub_v beyond the rounding margin (10): I3 fails.
    """
    q = _check_query(tree, q)
    k = check_int(k, "k", low=1, high=tree.n_live)
    qnorm = float(np.linalg.norm(q))

    def ub(v: int) -> float:  # (9): <q, r_v> + eps_v, plus the rounding margin of (10)
        return _dot(q, tree.rep[v]) + qnorm * float(tree.radius[v]) + _margin(tree, qnorm, v)

    nodes = [(-ub(tree.root), tree.root)]  # max-heap on ub
    best: list[tuple[float, int]] = []     # min-heap of (a_y, -y): best[0] is the k-th best target (9)
    while nodes:
        neg_ub, v = heapq.heappop(nodes)
        tau = best[0][0] if len(best) == k else -math.inf
        stop = -neg_ub < tau                             # (9): ub_v < tau, and so for every node left
        if trace is not None:
            trace.append(Pop(v, -neg_ub, tau, "stop" if stop else "leaf" if tree.is_leaf[v] else "expand"))
        if stop:
            break
        if tree.is_leaf[v]:
            for y in tree.order[tree.start[v]:tree.stop[v]]:
                item = (_dot(q, tree.points[y]), -int(y))  # (9): larger a_y first, then smaller y
                if item[0] > -neg_ub:                       # (1) fails beyond the margin (10)
                    raise ValueError(f"tree: invariant I3 violated: target {int(y)} has logit {item[0]!r} above "
                                     f"the bound {-neg_ub!r} of its leaf {v}")
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
