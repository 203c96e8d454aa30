"""Sampling from the softmax and exact top-k through the tree index.

proofs/README.md section 4, propositions P4, P6 and P8 (proofs/README.md section 6). Notation as in
:mod:`reference.bounds`: logits ``a_y = <q, z_y>``, node ``v`` with
representative ``r_v``, count ``n_v``, radius ``rho_v`` and
``eps_v = ||q|| rho_v``, so that ``|a_y - <q, r_v>| <= eps_v`` for ``y`` in
``D(v)`` (P1).

- :func:`cut_sample` draws from the *cut distribution* ``Phat_C`` (approximate,
  P4) and returns ``log Phat_C`` of each draw for the logQ correction (P13).
- :func:`rejection_sample` draws *exactly* from ``P(y) = exp(a_y) / Z`` (P6)
  by rejection from the envelope ``U_v = n_v exp(<q, r_v> + eps_v)``.
- :func:`topk` returns the exact maximum-inner-product top-k (P8) by branch
  and bound on ``<q, r_v> + eps_v``.

All three take a batch of queries and work on flat arrays of (query, node)
pairs: the Python loops are over rounds (tree levels, refinement rounds,
rejection rounds), never over queries or targets, and the cost scales with the
number of pairs touched rather than with N. Descendants are drawn exactly
uniformly: ``D(v) = tree.order[tree.start[v]:tree.stop[v]]`` is a contiguous
range, and an offset is drawn with ``rng.integers(0, n_v)``.

References
----------
Monath, Zaheer, Allen, McCallum, "Improving Dual-Encoder Training through
Dynamic Indexes for Negative Mining", AISTATS 2023 (section 3).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reference._fastpath import (
    ROUNDING,
    as_queries,
    dense_blocks,
    dense_queries,
    node_blocks,
    query_ptr,
    range_logits,
    refine,
    refine_to_width,
    rowdot,
    segment_logsumexp,
    terms,
    tree_scale,
)
from reference._validation import check_int, check_positive, check_rng
from reference.bounds import DEFAULT_TOL, Cut, validate_cut
from reference.softmax import draw_in_place

__all__ = ["cut_sample", "rejection_envelope", "rejection_sample", "topk"]

# Queries processed together by the samplers and top-k: bounds the size of the
# flat (query, node) arrays; a loop over blocks of queries is a batching loop.
# Larger blocks share each row read from memory among more queries (at N = 1e6 a
# block of 256 clustered queries reads ~90% of the targets); 512 keeps the
# arrays of one block under ~30 MiB at N = 1e6.
_QUERY_BLOCK = 512

# The default rejection envelope evaluates a node with at most this many targets in full
# (one exact cut entry, scored by one matrix product per block of queries) rather than
# splitting it into children: inside the clusters of real data the children's radii barely
# shrink, so descending costs node logits and bookkeeping without pruning targets.
_FULL_COUNT = 48

# Beam width of the greedy descent that seeds top-k's pruning threshold.
_TOPK_BEAM = 4


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------

def cut_sample(tree: Any, queries: Any, n: int, rng: np.random.Generator, cut: Cut | None = None,
               *, tol: float = DEFAULT_TOL) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` i.i.d. targets per query from the cut distribution ``Phat_C`` (P4, proofs/README.md section 4).

    An entry ``v`` of the cut is drawn with probability ``n_v exp(<q,r_v>) / Zhat_C``,
    then a uniform descendant ``y`` in ``D(v)``, so
    ``Phat_C(y) = exp(<q, r_v(y)>) / Zhat_C``. It is within ``2 eps_C`` of the
    softmax in log space (P4); its bias on expectations obeys P5.

    Parameters
    ----------
    tree : Tree
    queries : array_like, shape (k,) or (B, k)
        Query vectors, temperature folded in.
    n : int >= 1
        Draws per query (with replacement).
    rng : numpy.random.Generator
    cut : Cut, optional
        One cut per query. Default: ``adaptive_cut(tree, queries, tol)``.
    tol : float > 0, default DEFAULT_TOL
        Bracket width of the default cut (ignored when ``cut`` is given).

    Returns
    -------
    ids : numpy.ndarray of int64, shape (n,) or (B, n)
    log_q : numpy.ndarray of float64, same shape
        ``log Phat_C(ids)``, for the logQ correction of the sampled softmax (P13).
    """
    Q, single = as_queries(tree, queries, "queries")
    n = check_int(n, "n", low=1)
    rng = check_rng(rng)
    tol = check_positive(tol, "tol")
    B = Q.shape[0]
    if cut is not None:
        validate_cut(tree, cut, n_queries=B)
    ids = np.empty((B, n), np.int64)
    log_q = np.empty((B, n))
    for b0 in range(0, B, _QUERY_BLOCK):
        b1 = min(b0 + _QUERY_BLOCK, B)
        if cut is None:
            st = refine_to_width(tree, Q[b0:b1], tol)  # the cut of adaptive_cut(tree, queries, tol)
            query, node, target, t = st.query, st.node, st.target, st.terms
        else:
            p = cut.ptr
            sl = slice(p[b0], p[b1])
            query, node, target = cut.query[sl] - b0, cut.node[sl], cut.target[sl]
            t = terms(tree, Q[b0:b1], query, node, target)
        live = np.isfinite(t.log_n)  # skip entries with n_v == 0 (emptied by deletes)
        query, node, target = query[live], node[live], target[live]
        s, log_w = t.s[live], (t.log_n + t.s)[live]
        ptr = query_ptr(query, b1 - b0)
        log_z_hat = segment_logsumexp(log_w, ptr)
        qb = np.repeat(np.arange(b1 - b0), n)
        e = _SegmentCDF(log_w, log_z_hat, ptr).draw(qb, rng)
        ids[b0:b1] = _uniform_descendant(tree, node[e], target[e], rng)[0].reshape(-1, n)
        log_q[b0:b1] = (s[e] - log_z_hat[qb]).reshape(-1, n)
    if single:
        return ids[0], log_q[0]
    return ids, log_q


def rejection_sample(tree: Any, queries: Any, n: int, rng: np.random.Generator, tol: float | None = None, *,
                     block: int | None = None) -> tuple[np.ndarray, dict[str, int]]:
    """Draw ``n`` i.i.d. targets per query exactly from the softmax ``P`` (P6, proofs/README.md section 4).

    Refine a cut (below, :func:`rejection_envelope`); propose an entry with
    probability proportional to its weight, ``U = sum of the weights = exp(hi)``.
    The cut has two kinds of entries (proofs/README.md section 4.5):

    - a node entry ``v``, weight ``U_v = n_v exp(<q,r_v> + eps_v)``: propose
      ``y`` uniform in ``D(v)``; accept with probability
      ``exp(a_y - <q,r_v> - eps_v)`` (<= 1 by P1), so
      ``Pr[propose y and accept] = (U_v / U)(1 / n_v) exp(a_y - <q,r_v> - eps_v)
      = exp(a_y) / U``;
    - an exact entry ``x``: an evaluated leaf or, in the default envelope
      (``tol=None``), a node of at most 48 targets, whose logits were all
      computed while refining; ``eps = 0`` and weight
      ``U_x = sum_{y in D(x)} exp(a_y)``. When proposed, its target is drawn
      from its own softmax ``exp(a_y) / U_x`` and accepted with probability 1,
      so ``Pr[propose y and accept] = (U_x / U)(exp(a_y) / U_x) = exp(a_y) / U``
      as well.

    Accepted draws are therefore exact i.i.d. draws from ``P`` whatever the
    cut, and the acceptance rate per proposal is
    ``Z / U = exp(log Z - hi) >= exp(-(hi - lo))``. Proposals are
    made in rounds for the slots still empty (all queries and slots at once);
    each query keeps its first ``n`` accepted proposals.

    Where the bounds prune nothing (unclustered targets, a flat softmax), a
    query whose entries marked three levels below the root still hold 90% of
    the targets (on a tree of at least 2^13) is served by the *dense
    fallback*: its cut becomes every target as one exact entry, all ``N``
    logits computed by blocked matrix products and ``n`` draws made from
    their softmax by inverse CDF (acceptance 1). Exact as well; it bounds the
    cost of such queries by about that of brute force.

    Parameters
    ----------
    tree : Tree
    queries : array_like, shape (k,) or (B, k)
    n : int >= 1
        Draws per query (with replacement).
    rng : numpy.random.Generator
    tol : float > 0, optional
        If given, the envelope's cut is refined by the rule of
        ``adaptive_cut(tree, queries, tol)`` (proofs/README.md section 4) until
        its computed bracket has ``hi - lo <= tol`` (without adaptive_cut's
        margin for the rounding of the reported bracket, on which exactness
        does not depend), so the acceptance rate is ``>= exp(-tol)``. If
        ``None`` (default), the cut balances refinement against proposals for
        ``n`` draws (see ``reference._fastpath.refine``), and is refined further
        where needed so that ``hi - lo <= max(1, log(N_live / n))``: the
        acceptance rate is then ``>= min(1/e, n / N_live)``, so the expected
        number of proposals never exceeds about the brute-force cost
        ``N_live``. Fewer logits in total than a small ``tol``, at a lower
        acceptance rate. Exactness does not depend on the cut.
    block : int >= 1, optional
        Queries processed together (default 512). The working memory of a
        block grows with ``block`` times the logits evaluated per query (the
        flat (query, entry) arrays of its refinement); at tens of millions of
        targets, where a query evaluates ~1e5 logits, a smaller block bounds
        it (``python -m reference bench`` sizes it from a pilot). The draws
        are those of calling this function on consecutive slices of
        ``block`` queries with the same ``rng``: exact for any block.

    Returns
    -------
    ids : numpy.ndarray of int64, shape (n,) or (B, n)
    counters : dict
        ``proposals`` (made, all queries), ``accepted`` (among them; may exceed
        ``B n`` because a round can overshoot), ``target_logits`` (``a_y``
        evaluated: every target of every exact entry, scored once while
        refining the envelope, plus one per proposal from a node entry;
        proposals from exact entries cost none; ``N`` per query of the dense
        fallback), ``node_logits``
        (``<q, r_v>`` evaluated while refining the cut), ``cut_entries``
        (final cut size, all queries, exact entries counted as their single
        targets: ``len`` of :func:`rejection_envelope`), ``rounds``
        (refinement plus proposal rounds, summed over query blocks).

    Raises
    ------
    ValueError
        On invalid input, or if a proposal's acceptance probability exceeds 1
        beyond rounding, i.e. a target lies outside its node's radius
        (invariant I3 violated; run ``tree.check_invariants()``).
    RuntimeError
        If a query needs more than ``100 (n + 10) exp(hi - lo)`` proposals
        (probability < e^-100 for a valid tree): the tree is corrupt.
    """
    Q, single = as_queries(tree, queries, "queries")
    n = check_int(n, "n", low=1)
    rng = check_rng(rng)
    if tol is not None:
        tol = check_positive(tol, "tol")
    bq = _QUERY_BLOCK if block is None else check_int(block, "block", low=1)
    B = Q.shape[0]
    ids = np.empty((B, n), np.int64)
    counters = dict(proposals=0, accepted=0, target_logits=0, node_logits=0, cut_entries=0, rounds=0)
    for b0 in range(0, B, bq):
        b1 = min(b0 + bq, B)
        ids[b0:b1] = _rejection_block(tree, Q[b0:b1], n, rng, tol, counters)
    if single:
        return ids[0], counters
    return ids, counters


def rejection_envelope(tree: Any, queries: Any, n: int, tol: float | None = None) -> Cut:
    """The cut of :func:`rejection_sample`'s envelope for these queries, ``n`` and ``tol``.

    ``rejection_sample(tree, queries, n, rng, tol=tol)`` proposes from
    ``U_v = n_v exp(<q,r_v> + eps_v)`` over exactly this cut (for a batch,
    query block by query block, as here), so its acceptance rate per proposal
    is ``exp(log Z - hi)`` with ``hi`` the bracket of this cut
    (:func:`reference.bounds.log_partition_bracket`, up to its rounding
    widening of about 1e-13 of the logit scale), and its counter
    ``cut_entries`` is ``len`` of this cut. Entries that the sampler keeps
    as one exact entry (an evaluated leaf, or a small node, whose targets are
    drawn from their own softmax) are listed as their single targets.

    The refinement's decisions compare sums of positive terms, so the cut of a
    query does not depend on the other queries of the batch except at exact
    ties (the batched products round the last bits of the logits differently
    for different batch shapes).

    Parameters
    ----------
    tree : Tree
    queries : array_like, shape (k,) or (B, k)
    n : int >= 1
        Draws per query (the default envelope balances refinement against ``n``).
    tol : float > 0, optional
        As in :func:`rejection_sample`.

    Returns
    -------
    Cut
        One cut per query (``n_queries == B``, 1 for a single query). A query
        served by the dense fallback (see :func:`rejection_sample`) lists
        every live target: three int64 per target, 24 MB per such query at
        N = 1e6, so on unclustered data at that scale ask for a few queries
        at a time.
    """
    Q, _ = as_queries(tree, queries, "queries")
    n = check_int(n, "n", low=1)
    if tol is not None:
        tol = check_positive(tol, "tol")
    cuts = [Cut(*_envelope_cut(tree, Q[b0:b0 + _QUERY_BLOCK], n, tol).cut_fields())
            for b0 in range(0, Q.shape[0], _QUERY_BLOCK)]
    return cuts[0] if len(cuts) == 1 else Cut.stack(cuts)


def topk(tree: Any, queries: Any, k: int, *, return_counters: bool = False, block: int | None = None):
    """Exact maximum-inner-product top-k by branch and bound (P8, proofs/README.md section 4).

    Every target ``y`` under node ``v`` has ``a_y <= ub_v = <q,r_v> + eps_v``
    (P1). With ``tau`` the k-th best logit among targets already evaluated,
    a node with ``ub_v < tau`` cannot hold a member of the top-k and is pruned.
    The search is vectorised over (query, node) pairs: a greedy beam descent
    (width 4 per query, by ``ub``) reaches a few leaves to set a first ``tau``;
    then the tree is swept level by level from the root, pruning against the
    current ``tau`` and raising ``tau`` as leaves are evaluated. The result is
    the brute-force top-k, ordered by decreasing logit, ties by smaller id.
    A query whose surviving nodes three levels below the root still hold 90%
    of the targets (on a tree of at least 2^13; nothing is being pruned) is
    finished by the dense fallback: all its ``N`` logits by blocked matrix
    products, the targets within the rounding margin of the k-th re-scored
    row by row, and the same ordering.

    Parameters
    ----------
    tree : Tree
    queries : array_like, shape (dim,) or (B, dim)
    k : int, 1 <= k <= tree.n_live
    return_counters : bool, default False
        Also return ``{"node_logits", "target_logits", "rounds"}``.
    block : int >= 1, optional
        Queries processed together (default 512); as in
        :func:`rejection_sample`, a smaller block bounds the working memory
        at large N. The result does not depend on it.

    Returns
    -------
    ids : numpy.ndarray of int64, shape (k,) or (B, k)
    logits : numpy.ndarray of float64, same shape
        ``a_y = <q, z_y>`` of the returned ids, non-increasing along each row.
    counters : dict, only if ``return_counters``

    Raises
    ------
    ValueError
        On invalid input, or if a target of a leaf it opens has a logit above
        that leaf's bound beyond rounding (invariant I3 violated). Only those
        targets are checked: a target outside its node's radius under a
        pruned node goes unseen (and may be missing from the result), and the
        dense fallback (queries for which the tree prunes too little), which
        scores every target and prunes with no bound, checks none; run
        ``tree.check_invariants()`` to check every target.
    """
    Q, single = as_queries(tree, queries, "queries")
    n_live = int(tree.n_live)
    if isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)) and k > n_live:
        raise ValueError(f"k: expected at most the number of live targets ({n_live}), got {k}")
    k = check_int(k, "k", low=1, high=n_live)
    bq = _QUERY_BLOCK if block is None else check_int(block, "block", low=1)
    B = Q.shape[0]
    ids = np.empty((B, k), np.int64)
    logits = np.empty((B, k))
    counters = dict(node_logits=0, target_logits=0, rounds=0)
    rep_norm = tree.rep_norm  # ||r_v||, cached on the tree
    for b0 in range(0, B, bq):
        b1 = min(b0 + bq, B)
        ids[b0:b1], logits[b0:b1] = _topk_block(tree, Q[b0:b1], k, rep_norm, counters)
    out = (ids[0], logits[0]) if single else (ids, logits)
    return (*out, counters) if return_counters else out


# --------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------

class _SegmentCDF:
    """Cumulative weights of each query's entries, for inverse-CDF draws (built once, drawn from often).

    Entry ``e`` of query ``b`` has probability ``exp(log_w[e] - log_total[b])``
    (``log_total`` = the segment's logsumexp; entries sorted by query, segment
    ``b`` is ``ptr[b]:ptr[b+1]``, non-empty), or ``prob[e]`` if the
    probabilities are given directly. The cumulative weights of all segments
    are one ``cumsum``; its rounding is ~1e-16 times the number of segments,
    far below any testable probability.
    """

    def __init__(self, log_w: np.ndarray | None, log_total: np.ndarray | None, ptr: np.ndarray,
                 prob: np.ndarray | None = None) -> None:
        if prob is None:
            query = np.repeat(np.arange(ptr.size - 1), np.diff(ptr))
            prob = np.exp(log_w - log_total[query])
        self.cs = np.cumsum(prob)
        self.base = np.where(ptr[:-1] > 0, self.cs[np.maximum(ptr[:-1] - 1, 0)], 0.0)
        self.end, self.ptr = self.cs[ptr[1:] - 1], ptr

    def draw(self, qb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One entry index per element of ``qb`` (a query index), drawn from that query's segment."""
        u = rng.random(qb.size)
        e = np.searchsorted(self.cs, self.base[qb] + u * (self.end[qb] - self.base[qb]), side="right")
        return np.clip(e, self.ptr[qb], self.ptr[qb + 1] - 1)


def _uniform_descendant(tree: Any, node: np.ndarray, target: np.ndarray,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """For node entries, a target uniform in D(v) = order[start[v]:stop[v]]; single targets as they are.

    Returns ``(y, pos)``: the targets, and for node entries their DFS position
    (``order[pos] == y[node >= 0]``), so their vectors are ``points_dfs[pos]``.
    """
    y = target.copy()
    isn = node >= 0
    v = node[isn]
    offset = rng.integers(0, tree.stop[v] - tree.start[v])  # exact: probability 1/n_v each
    pos = tree.start[v] + offset
    y[isn] = tree.order[pos]
    return y, pos


def _i3_violation(what: str, v: np.ndarray, y: np.ndarray, excess: np.ndarray) -> ValueError:
    j = int(np.argmax(excess))
    return ValueError(
        f"tree: invariant I3 violated ({what}): target {int(y[j])} has a_y - <q, r_v> - eps_v = "
        f"{excess[j]:.3g} > 0 for node {int(v[j])}, i.e. it lies outside the node's radius; "
        "run tree.check_invariants()"
    )


def _envelope_cut(tree: Any, Q: np.ndarray, n: int, tol: float | None):
    """The cut of the rejection envelope: ``adaptive_cut``'s refinement to ``tol``, or (``tol=None``) the
    cost-balanced cut for ``n`` draws with ``hi - lo <= max(1, log(N_live / n))`` as a safety net."""
    if tol is None:
        return refine(tree, Q, tol=max(1.0, float(np.log(tree.n_live / n))), n_draws=n, exact_leaves=True,
                       full_count=_FULL_COUNT, dense=True)
    return refine(tree, Q, tol=tol, exact_leaves=True, dense=True)


def _rejection_block(tree: Any, Q: np.ndarray, n: int, rng: np.random.Generator, tol: float | None,
                     counters: dict[str, int]) -> np.ndarray:
    """Rejection sampling (P6) for one block of queries; updates ``counters`` in place."""
    B = Q.shape[0]
    st = _envelope_cut(tree, Q, n, tol)
    raw = st.raw                                   # entry arrays, unsorted; st.order sorts them by query
    log_u = raw["log_n"] + raw["s"] + raw["eps"]   # log U_v, the envelope
    lo, hi, log_z_hat = (b.copy() for b in st.bracket)   # hi = log U, summed while refining
    for b in (lo, hi, log_z_hat):
        b[st.dense] = 0.0                          # dense queries: no entries, no proposals
    cdf = _SegmentCDF(log_u[st.order], hi, st.ptr) if st.order.size else None
    # Exact entries (evaluated leaves and, in the default envelope, nodes of at most _FULL_COUNT
    # targets): a proposal of one is accepted with probability 1 and its target drawn from the
    # entry's own softmax exp(a_y) / sum_{y' in D(v)} exp(a_y').
    # Liveness check: the acceptance rate is >= exp(lo - hi) (P6); needing more than
    # 100 (n + 10) / exp(lo - hi) proposals for n acceptances has probability < e^-100
    # under a valid tree, so it signals a broken invariant rather than bad luck.
    limit = 100.0 * (n + 10) * np.exp(np.minimum(hi - lo, 700.0))
    # Guess of the acceptance rate exp(log Z - hi) (log_z_hat <= log Z for centroid
    # representatives, by Jensen), only used to size the rounds; refined from the
    # observed acceptances after the first round.
    rate = np.clip(np.exp(log_z_hat - hi), 1e-9, 1.0)
    made = np.zeros(B)
    got = np.zeros(B)
    qnorm = np.linalg.norm(Q, axis=1)
    counters["node_logits"] += st.node_logits
    counters["target_logits"] += st.target_logits
    counters["cut_entries"] += st.size
    counters["rounds"] += st.rounds
    ids = np.full((B, n), -1, np.int64)
    filled = np.zeros(B, np.int64)
    if st.dense.size:  # the dense fallback: one exact entry of all targets, drawn by inverse CDF
        ids[st.dense] = _dense_sample(tree, Q[st.dense], n, rng)
        filled[st.dense] = n
        N, m = int(tree.n_live), st.dense.size
        counters["target_logits"] += N * m
        counters["proposals"] += n * m
        counters["accepted"] += n * m
        counters["rounds"] += 1
    while True:
        need = n - filled
        if not need.any():
            break
        counters["rounds"] += 1
        m = np.where(need > 0, np.ceil(need / rate * 1.2).astype(np.int64) + 2, 0)
        m = np.minimum(m, (1 << 22) // B + 4 * n)  # memory cap per round
        qb = np.repeat(np.arange(B), m)
        e = st.order[cdf.draw(qb, rng)]            # index into the raw arrays
        v, x = raw["node"][e], raw["x"][e]
        isx = x >= 0
        y, pos = _uniform_descendant(tree, np.where(isx, -1, v), raw["target"][e], rng)
        if isx.any():                              # inside an exact entry: y ~ exp(a_y) / sum_D(v) exp(a)
            y[isx] = tree.order[tree.start[v[isx]] + _exact_draw(st, x[isx], rng)]
        isn = (v >= 0) & ~isx
        v = v[isn]
        # log acceptance probability: a_y - <q,r_v> - eps_v for node entries, 0 for exact entries.
        log_acc = np.zeros(qb.size)
        a = rowdot(tree.points_dfs, pos, Q, qb[isn])  # rows of D(v) are consecutive in points_dfs
        log_acc[isn] = a - raw["s"][e[isn]] - raw["eps"][e[isn]]
        counters["target_logits"] += int(isn.sum())
        scale = qnorm[qb[isn]] * (tree.rep_norm[v] + tree.radius[v])
        excess = log_acc[isn] - ROUNDING * (1.0 + scale)
        if np.any(excess > 0):
            raise _i3_violation("rejection_sample", v, y[isn], excess)
        accept = rng.random(qb.size) < np.exp(np.minimum(log_acc, 0.0))
        counters["proposals"] += int(qb.size)
        counters["accepted"] += int(accept.sum())
        made += m
        got += np.bincount(qb[accept], minlength=B)
        rate = np.maximum(rate, (got + 1.0) / (made + 2.0))
        if np.any((made > limit) & (got < n)):
            raise RuntimeError(
                "rejection_sample: acceptance rate far below its certified lower bound exp(-(hi - lo)); "
                "the tree's radii do not cover its targets (run tree.check_invariants())"
            )
        aq, ay = qb[accept], y[accept]                  # sorted by query, proposal order kept
        rank = np.arange(aq.size) - np.searchsorted(aq, aq, side="left")
        take = rank < need[aq]
        ids[aq[take], filled[aq[take]] + rank[take]] = ay[take]
        filled += np.bincount(aq[take], minlength=B)
    return ids


def _exact_draw(st: Any, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each exact entry ``x[i]`` of the cut ``st``, an offset ``j`` into ``D(v)`` drawn with
    probability ``exp(a_j) / sum_{y in D(v)} exp(a_y)``: the entry's softmax, from its stored
    weights (:class:`reference._fastpath.ExactStore`) and gathered only for the entries drawn,
    by inverse CDF (one ``rng.random`` per draw, :class:`_SegmentCDF`)."""
    p, ptr = st.exact.probabilities_of(x)
    return _SegmentCDF(None, None, ptr, prob=p).draw(np.arange(x.size), rng) - ptr[:-1]


def _dense_sample(tree: Any, Q: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` exact draws per query from the softmax over all live targets (the dense fallback).

    All ``N`` logits of each query (:func:`reference._fastpath.dense_blocks`),
    then, as the brute-force baseline does, ``exp(a - max)``, cumulative sums
    and the first ``j`` with ``W_j > u W_{N-1}``
    (:func:`reference.softmax.draw_in_place`): ``Pr(j) = exp(a_j) / Z``.
    """
    out = np.empty((Q.shape[0], n), np.int64)
    for b0, b1, A in dense_blocks(tree, Q):
        out[b0:b1] = tree.order[draw_in_place(A, n, rng)[0]]
    return out


def _merge_topk(best_a: np.ndarray, best_y: np.ndarray, cq: np.ndarray, cy: np.ndarray, ca: np.ndarray):
    """Merge candidates (query, id, logit) into the running top-k, ordered by (-logit, id)."""
    B, k = best_a.shape
    all_q = np.concatenate([np.repeat(np.arange(B), k), cq])
    all_a = np.concatenate([best_a.ravel(), ca])
    all_y = np.concatenate([best_y.ravel(), cy])
    o = np.lexsort((all_y, -all_a, all_q))
    all_q, all_a, all_y = all_q[o], all_a[o], all_y[o]
    rank = np.arange(all_q.size) - query_ptr(all_q, B)[all_q]
    take = rank < k                                 # every query has >= k rows (the running top-k)
    return all_a[take].reshape(B, k), all_y[take].reshape(B, k)


def _node_bounds(tree: Any, Q: np.ndarray, qnorm: np.ndarray, rep_norm: np.ndarray,
                 q: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``ub = <q,r_v> + ||q|| rho_v`` and the rounding margin of that bound, per (query, node) pair."""
    s = rowdot(tree.rep, v, Q, q)
    ub = s + qnorm[q] * tree.radius[v]
    margin = ROUNDING * (1.0 + qnorm[q] * (rep_norm[v] + tree.radius[v]))
    return ub, margin


def _child_bounds(tree: Any, Q: np.ndarray, qnorm: np.ndarray, rep_norm: np.ndarray, q: np.ndarray,
                  v: np.ndarray, counters: dict[str, int], tau: np.ndarray | None = None):
    """``(query, child, ub, margin)`` for the children with ``n_c > 0`` of internal nodes ``v``.

    As :func:`_node_bounds`, with ``<q, r_c>`` from batched matrix products
    (:func:`reference._fastpath.node_blocks` over the rows ``rep[child_idx[...]]``,
    one block at a time while it is in cache); their last-bit rounding is far
    inside ``margin``. With ``tau``, only children with ``ub + margin >= tau``
    are returned (the others would be pruned at the next level: ``tau`` only
    grows).
    """
    deg = (tree.child_ptr[v + 1] - tree.child_ptr[v]).astype(np.int64)
    counters["node_logits"] += int(deg.sum())
    out_q, out_c, out_ub, out_m = [], [], [], []
    for pair, gi, ni, R in node_blocks(tree.rep, tree.child_idx, tree.child_ptr[v], deg, Q, q, v):
        U, Gb, Lb = R.shape
        c = tree.child_idx[tree.child_ptr[v[pair[:, 0]]][:, None] + np.minimum(np.arange(Lb), ni[:, None] - 1)]
        qn = qnorm[q[pair]][:, :, None]                        # (U, Gb, 1); children c: (U, 1, Lb)
        R += qn * tree.radius[c][:, None, :]                   # ub = <q, r_c> + ||q|| rho_c
        m = ROUNDING * (1.0 + qn * (rep_norm[c] + tree.radius[c])[:, None, :])
        ok = (tree.count[c] > 0)[:, None, :] & (np.arange(Lb) < ni[:, None])[:, None, :] \
            & (np.arange(Gb) < gi[:, None])[:, :, None]
        if tau is not None:
            ok &= R + m >= tau[q[pair]][:, :, None]
        u, j, i = np.nonzero(ok)
        out_q.append(q[pair[u, j]])
        out_c.append(c[u, i])
        out_ub.append(R[u, j, i])
        out_m.append(m[u, j, i])
    if not out_q:
        z = np.zeros(0)
        return np.zeros(0, np.int64), np.zeros(0, np.int64), z, z
    return np.concatenate(out_q), np.concatenate(out_c), np.concatenate(out_ub), np.concatenate(out_m)


def _leaf_logits(tree: Any, Q: np.ndarray, q: np.ndarray, v: np.ndarray, ub: np.ndarray, margin: np.ndarray,
                 counters: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits of all targets of the leaves ``v`` (for queries ``q``), with the I3 check ``a_y <= ub_v``.

    Scored by :func:`reference._fastpath.range_logits` (one matrix product per
    leaf and block of queries). Returns ``(a, owner, pos)``: logit, index of
    the (query, leaf) pair, and DFS position of each target.
    """
    a, ptr, perm = range_logits(tree, Q, q, v)
    counters["target_logits"] += int(a.size)
    owner = np.repeat(perm, np.diff(ptr))
    pos = tree.start[v][owner] + (np.arange(a.size) - np.repeat(ptr[:-1], np.diff(ptr)))
    excess = a - ub[owner] - margin[owner]
    if np.any(excess > 0):
        raise _i3_violation("topk", v[owner], tree.order[pos], excess)
    return a, owner, pos


def _evaluate_leaves(tree, Q, q, v, ub, margin, tau, counters):
    """Candidates ``(query, target, a_y)`` of the leaves ``v`` that may still enter the top-k.

    Every target of every (query, leaf) pair is scored (counted in
    ``target_logits``) by :func:`reference._fastpath.node_blocks` (one matrix
    product per leaf and block of queries), and each block is reduced while
    it is in cache: the I3 check ``a_y <= ub_v`` (``+ margin``) on its
    maximum, and the targets with ``a_y + margin >= tau`` (``k`` better
    targets are not yet known) kept. The logits of the matrix products may
    differ from a row-wise inner product in the last bits (within
    ``margin``); the kept targets are re-scored row by row
    (:func:`reference._fastpath.rowdot`, counted in ``target_logits``), so
    that returned logits, and the order of exactly tied duplicates, do not
    depend on how the queries were batched.
    """
    n = (tree.stop[v] - tree.start[v]).astype(np.int64)
    counters["target_logits"] += int(n.sum())
    kept_pair, kept_col = [], []
    for pair, gi, ni, R in node_blocks(tree.points_dfs, None, tree.start[v], n, Q, q, v):
        # Padding repeats real products (slots j >= g[u] a real pair, columns i >= n[u] a real
        # row): the I3 test sees real values only, and padding is dropped from the kept ones.
        R += margin[pair][:, :, None]                          # a_y + margin
        lim = ub[pair] + 2.0 * margin[pair]                     # a_y + margin > ub_v + 2 margin: I3 broken
        if np.any(R > lim[:, :, None]):
            _leaf_violation(tree, v, pair, gi, ni, R, lim)
        u, j, c = np.nonzero(R >= tau[q[pair]][:, :, None])
        real = (j < gi[u]) & (c < ni[u])
        kept_pair.append(pair[u[real], j[real]])
        kept_col.append(c[real])
    p = np.concatenate(kept_pair) if kept_pair else np.zeros(0, np.int64)
    pos = tree.start[v[p]] + (np.concatenate(kept_col) if kept_col else np.zeros(0, np.int64))
    tq = q[p]
    a = rowdot(tree.points_dfs, pos, Q, tq)
    counters["target_logits"] += int(a.size)
    return tq, tree.order[pos], a


def _leaf_violation(tree, v, pair, gi, ni, R, lim):
    """Raise the I3 error of :func:`_evaluate_leaves` for a block with a logit above its bound.

    ``R`` and ``lim`` are the very arrays the block's test compared (``a_y + margin`` and
    ``ub_v + 2 margin``), so the targets reported are those that fired it (never none), each
    with its excess ``a_y - ub_v - margin``.
    """
    real = (np.arange(R.shape[1]) < gi[:, None])[:, :, None] & (np.arange(R.shape[2]) < ni[:, None])[:, None, :]
    excess = np.where(real, R - lim[:, :, None], -np.inf)
    u, j, c = np.nonzero(excess > 0)
    p = pair[u, j]
    raise _i3_violation("topk", v[p], tree.order[tree.start[v[p]] + c], excess[u, j, c])


def _topk_block(tree: Any, Q: np.ndarray, k: int, rep_norm: np.ndarray, counters: dict[str, int]):
    """Branch and bound top-k (P8) for one block of queries."""
    B = Q.shape[0]
    qnorm = np.linalg.norm(Q, axis=1)
    best_a = np.full((B, k), -np.inf)
    best_y = np.full((B, k), np.iinfo(np.int64).max)
    root_q, root_v = np.arange(B), np.zeros(B, np.int64)

    # Phase 1: greedy beam descent to a few leaves per query, to seed tau.
    q, v = root_q, root_v
    ub, margin = _node_bounds(tree, Q, qnorm, rep_norm, q, v)
    counters["node_logits"] += B
    while True:
        leaf = tree.is_leaf[v]
        if leaf.all():
            break
        counters["rounds"] += 1
        cq, cv, cub, cmargin = _child_bounds(tree, Q, qnorm, rep_norm, q[~leaf], v[~leaf], counters)
        q = np.concatenate([q[leaf], cq])
        v = np.concatenate([v[leaf], cv])
        ub = np.concatenate([ub[leaf], cub])
        margin = np.concatenate([margin[leaf], cmargin])
        o = np.lexsort((-ub, q))
        q, v, ub, margin = q[o], v[o], ub[o], margin[o]
        keep = (np.arange(q.size) - query_ptr(q, B)[q]) < _TOPK_BEAM
        q, v, ub, margin = q[keep], v[keep], ub[keep], margin[keep]
    # a - margin <= the row-wise logit of each target: the k-th best of these lower bounds is
    # a valid lower bound on the final k-th logit.
    a, owner, pos = _leaf_logits(tree, Q, q, v, ub, margin, counters)
    seed_a, _ = _merge_topk(best_a, best_y, q[owner], tree.order[pos], a - margin[owner])
    tau = seed_a[:, k - 1]

    # Phase 2: level-synchronous sweep from the root, pruning ub_v + margin < tau.
    q, v = root_q, root_v
    ub, margin = _node_bounds(tree, Q, qnorm, rep_norm, q, v)
    counters["node_logits"] += B
    dense = np.zeros(B, bool)
    level = 0
    while q.size:
        counters["rounds"] += 1
        keep = ub + margin >= tau[q]
        q, v, ub, margin = q[keep], v[keep], ub[keep], margin[keep]
        out = dense_queries(tree, q, v, B, level)
        if out is not None:    # queries whose bound has not excluded enough targets: scored densely below
            dense = out
            stay = ~dense[q]
            q, v, ub, margin = q[stay], v[stay], ub[stay], margin[stay]
        level += 1
        leaf = tree.is_leaf[v]
        if leaf.any():
            tq, ty, a = _evaluate_leaves(tree, Q, q[leaf], v[leaf], ub[leaf], margin[leaf], tau, counters)
            best_a, best_y = _merge_topk(best_a, best_y, tq, ty, a)
            tau = np.maximum(tau, best_a[:, k - 1])
        q, v, ub, margin = _child_bounds(tree, Q, qnorm, rep_norm, q[~leaf], v[~leaf], counters, tau)
    if dense.any():
        d = np.flatnonzero(dense)
        best_a[d], best_y[d] = -np.inf, np.iinfo(np.int64).max   # every target is scored again below
        tq, ty, a = _dense_candidates(tree, Q, d, k, qnorm, counters)
        best_a, best_y = _merge_topk(best_a, best_y, tq, ty, a)
    return best_y, best_a


def _dense_candidates(tree: Any, Q: np.ndarray, d: np.ndarray, k: int, qnorm: np.ndarray,
                      counters: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k candidates ``(query, target, a_y)`` of the queries ``d`` from all their logits (the dense fallback).

    Every target is scored (:func:`reference._fastpath.dense_blocks`, ``N`` target
    logits per query); with ``t`` the k-th largest of a query's computed logits
    and ``m = ROUNDING (1 + ||q|| S)`` (``S`` bounds every ``||z_y||``, I3), a
    target of the exact top-k has a computed logit ``>= t - m``: those are
    kept and re-scored row by row (:func:`reference._fastpath.rowdot`, counted),
    as the leaves' candidates are.
    """
    N = int(tree.n_live)
    counters["target_logits"] += N * d.size
    m = ROUNDING * (1.0 + qnorm[d] * tree_scale(tree))
    cq, cp = [], []
    for b0, b1, A in dense_blocks(tree, Q[d]):
        kth = np.partition(A, N - k, axis=1)[:, N - k]
        r, pos = np.nonzero(A + m[b0:b1, None] >= kth[:, None])
        cq.append(d[b0 + r])
        cp.append(pos)
    tq, pos = np.concatenate(cq), np.concatenate(cp)
    a = rowdot(tree.points_dfs, pos, Q, tq)
    counters["target_logits"] += int(a.size)
    return tq, tree.order[pos], a
