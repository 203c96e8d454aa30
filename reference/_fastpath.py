"""Internals of the batched fast path shared by bounds.py and sampling.py; not public API.

:mod:`reference.bounds` and :mod:`reference.sampling` work on flat arrays of
(query, entry) pairs for a whole batch of queries (proofs/README.md section 4.8). What
both of them use lives here: the checks of the tree and the queries, the
batched inner products (row by row, and grouped into matrix products), the
per-entry terms of the bracket (P2), segment and group logsumexps, and the
batched refinement of the root cut (:func:`refine`, the rounds of proofs/README.md
section 4.3) with the state it returns (:class:`CutState`). Notation as in
:mod:`reference.bounds`.

The module is private as a whole, so its names carry no leading underscore;
only ``bounds``, ``sampling`` and tests of these internals import it, and
``tree`` for :func:`ranges` (the positions of contiguous runs of rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from reference._validation import as_float_array, check_logit_scale

# Rows gathered per chunk when scoring entries: two buffers of CHUNK * k
# float64 that stay in cache (2048 x 64 x 8 B = 1 MiB each).
CHUNK = 2048

# Rows (targets plus queries) of the temporaries of one batched product in
# :func:`range_logits`: about 2^16 x k float64, 32 MiB at k = 64.
CHUNK_ROWS = 1 << 16

# Relative slack allowed for floating-point rounding when a computed logit is
# checked against its certified bound <q, r_v> + eps_v: the rounding error of an
# inner product is about k * 2^-53 * ||q|| (||r_v|| + rho_v), far below 1e-9 of
# that scale for any k < 1e6.
ROUNDING = 1e-9

TREE_ATTRS = ("rep", "radius", "count", "child_ptr", "child_idx", "is_leaf",
              "order", "start", "stop", "points", "alive", "n_live", "dim", "points_dfs", "rep_norm")


def check_tree(tree: Any) -> None:
    missing = [a for a in TREE_ATTRS if not hasattr(tree, a)]
    if missing:
        raise ValueError(f"tree: expected a reference.tree.Tree (flat arrays {', '.join(TREE_ATTRS)}), "
                         f"got {type(tree).__name__} without {', '.join(missing)}")
    if int(tree.n_live) < 1:
        raise ValueError("tree: expected at least one live target, got an empty tree (n_live == 0)")


def as_queries(tree: Any, q: Any, name: str = "q") -> tuple[np.ndarray, bool]:
    """Validate the tree and queries; return ``(Q (B, k) float64, single)``.

    Queries whose logits could overflow are refused (``ValueError``):
    ``|q_i| <= MAX_ABS_COORD`` and ``||q|| max_v (||r_v|| + rho_v) <= MAX_LOGIT``
    (:mod:`reference._validation`).
    """
    check_tree(tree)
    Q = as_float_array(q, name)
    if Q.ndim not in (1, 2):
        raise ValueError(f"{name}: expected shape (k,) or (B, k), got shape {Q.shape}")
    single = Q.ndim == 1
    Q = np.atleast_2d(Q).astype(np.float64, copy=False)
    if Q.shape[1] != tree.dim:
        raise ValueError(f"{name}: expected query vectors of dimension tree.dim = {tree.dim}, got shape "
                         f"{Q.shape[1:] if single else Q.shape}")
    check_logit_scale(Q, tree_scale(tree), name)
    return Q, single


def tree_scale(tree: Any) -> float:
    """``max_v (||r_v|| + rho_v)`` over all nodes: by I3 a bound on ``||z_y||`` of every live target.

    ``||q||`` times it bounds every logit, ``|<q, r_v>|`` and ``eps_v`` of the
    query (the logit scale limited by ``MAX_LOGIT``).
    """
    if tree.radius.shape[0] == 0:
        return 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.max(np.asarray(tree.rep_norm) + np.asarray(tree.radius)))


# --------------------------------------------------------------------------
# Rounding bound of the bracket (proofs/p02_bracket.md, "Floating point")
# --------------------------------------------------------------------------

#: Unit roundoff of float64 (round to nearest): ``|fl(x) - x| <= U |x|``.
U = 2.0**-53


def gamma(n: Any) -> Any:
    """``gamma_n = n U / (1 - n U)``, the classical bound on ``n`` accumulated roundings (Higham)."""
    n = np.asarray(n, dtype=np.float64)
    return n * U / (1.0 - n * U)


def tree_height(tree: Any) -> int:
    """Largest node depth (``tree.depth``), or the node count for a tree object without depths."""
    depth = getattr(tree, "depth", None)
    if depth is not None and np.size(depth):
        return int(np.max(depth))
    return int(tree.radius.shape[0])


def bracket_rounding(tree: Any, qnorm: np.ndarray, n_terms: Any, center: Any) -> np.ndarray:
    """``W``: bound on the float64 error of a computed ``lo`` or ``hi`` (proofs/p02_bracket.md, "Floating point").

    ``W = 2 [gamma(2k + H + 12) ||q|| S + gamma(2n + 16) + U (16 log(N + M + 1) + 2 |center|)
    + sqrt(k) 2^-537 ((H + 2) ||q|| + 2 S) + k (H + 3) 2^-1074]``, with ``S`` = :func:`tree_scale`,
    ``H`` the tree height, ``n`` the number of terms of the logsumexp and
    ``center`` the computed value (or a bound on its magnitude). It covers the
    inner products, ``||q||``, the stored radii (which may fall short of the
    true distances by rounding), the additions, ``exp``/``log`` and the sum;
    ``lo - W <= log Z <= hi + W`` under I3. Per query (vectorised over ``qnorm``).
    """
    k = int(tree.dim)
    H = tree_height(tree)
    S = tree_scale(tree)
    lam = float(np.log(float(tree.n_live) + float(tree.radius.shape[0]) + 1.0))
    tiny = float(np.sqrt(k)) * 2.0**-537
    qnorm = np.asarray(qnorm, dtype=np.float64)
    w = (gamma(2 * k + H + 12) * qnorm * S + gamma(2 * np.asarray(n_terms, dtype=np.float64) + 16)
         + U * (16.0 * lam + 2.0 * np.abs(center)) + tiny * ((H + 2) * qnorm + 2.0 * S) + k * (H + 3) * 2.0**-1074)
    return 2.0 * w


def bracket_rounding_bound(tree: Any, qnorm: np.ndarray) -> np.ndarray:
    """:func:`bracket_rounding` for any cut of the tree: ``n = N + M`` terms, ``|center| <= ||q|| S + 2 log(N + M + 1) + 1``."""
    lam = float(np.log(float(tree.n_live) + float(tree.radius.shape[0]) + 1.0))
    qnorm = np.asarray(qnorm, dtype=np.float64)
    n = int(tree.n_live) + int(tree.radius.shape[0])
    return bracket_rounding(tree, qnorm, n, qnorm * tree_scale(tree) * (1.0 + 1e-10) + 2.0 * lam + 1.0)


def widen(lo: np.ndarray, hi: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(lo - w, hi + w)`` rounded outward (one step past the rounded result: ``<= lo - w``, ``>= hi + w``)."""
    return np.nextafter(lo - w, -np.inf), np.nextafter(hi + w, np.inf)


def width_target(tree: Any, Q: np.ndarray, tol: float) -> np.ndarray:
    """Per-query refinement target ``tol - 8 W_bound(q)`` (``-inf`` when not positive: refine to the end).

    The margin covers the widening of the reported bracket (``2 W``) and the
    difference between two float64 evaluations of the same bracket (``4 W``);
    see :func:`refine_to_width`.
    """
    target = tol - 8.0 * bracket_rounding_bound(tree, np.linalg.norm(Q, axis=1))
    return np.where(target > 0, target, -np.inf)


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + l)`` for each (s, l), vectorised."""
    lengths = lengths.astype(np.int64, copy=False)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    before = np.cumsum(lengths) - lengths
    return np.repeat(starts.astype(np.int64) - before, lengths) + np.arange(total, dtype=np.int64)


def rowdot(X: np.ndarray, xi: np.ndarray, Q: np.ndarray, qi: np.ndarray) -> np.ndarray:
    """``out[j] = <X[xi[j]], Q[qi[j]]>``, gathered in chunks of ``CHUNK`` rows.

    The gathered rows go into two small preallocated buffers that stay in
    cache (``np.take(..., out=)``), which is several times faster than
    allocating a fresh ``X[xi]`` temporary for large gathers.
    """
    out = np.empty(xi.size)
    if xi.size == 0:
        return out
    c = min(CHUNK, xi.size)
    bx = np.empty((c, X.shape[1]), dtype=np.result_type(X.dtype, np.float64))
    bq = np.empty((c, Q.shape[1]))
    for lo in range(0, xi.size, c):
        m = min(c, xi.size - lo)
        np.take(X, xi[lo:lo + m], axis=0, out=bx[:m])
        np.take(Q, qi[lo:lo + m], axis=0, out=bq[:m])
        np.einsum("ij,ij->i", bx[:m], bq[:m], out=out[lo:lo + m])
    return out


def bucket_ceil(x: np.ndarray) -> np.ndarray:
    """Smallest size >= x on the ladder 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (x >= 1), elementwise.

    Rounding up by at most a factor 1.5 bounds the padding of the batched
    products of :func:`grouped_logits` while keeping the number of shapes
    (Python iterations) logarithmic.
    """
    p = np.left_shift(1, np.ceil(np.log2(np.maximum(x, 1))).astype(np.int64))
    h = 3 * p // 4
    return np.where(x <= h, h, p)


def range_logits(tree: Any, Q: np.ndarray, q: np.ndarray, v: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits ``a_y = <q, z_y>`` of every target ``y`` in ``D(v)``, for each (query, node) pair.

    Returns ``(a, ptr, perm)``: the pairs are reordered by ``perm`` and pair
    ``p = perm[j]`` owns ``a[ptr[j]:ptr[j+1]]``, in DFS order:
    ``a[ptr[j] + i] = <Q[q[p]], points_dfs[start[v[p]] + i]>``. See
    :func:`grouped_logits` for how they are computed.
    """
    n = (tree.stop[v] - tree.start[v]).astype(np.int64)
    return grouped_logits(tree.points_dfs, None, tree.start[v], n, Q, q, v)


def child_logits(tree: Any, Q: np.ndarray, q: np.ndarray, v: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(query, child, <q, r_child>)`` for the children with ``n_c > 0`` of internal nodes ``v``.

    The same pairs as :func:`expand` gives for internal nodes (in another order),
    scored by :func:`grouped_logits` over the rows ``rep[child_idx[...]]``.
    """
    deg = (tree.child_ptr[v + 1] - tree.child_ptr[v]).astype(np.int64)
    s, _, perm = grouped_logits(tree.rep, tree.child_idx, tree.child_ptr[v], deg, Q, q, v)
    c = tree.child_idx[ranges(tree.child_ptr[v[perm]], deg[perm])]
    qc = np.repeat(q[perm], deg[perm])
    keep = tree.count[c] > 0
    return qc[keep], c[keep], s[keep]


def grouped_logits(X: np.ndarray, index: np.ndarray | None, row0: np.ndarray, length: np.ndarray,
                   Q: np.ndarray, q: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inner products of query ``Q[q[p]]`` with rows ``X[index[row0[p] + i]]``, ``i < length[p]``, per pair ``p``.

    (``index=None`` means the rows ``X[row0[p] + i]``.) Pairs with the same
    ``v[p]`` read the same rows. Returns ``(a, ptr, perm)``: pair
    ``perm[j]`` owns ``a[ptr[j]:ptr[j+1]]``.

    The pairs are grouped by ``v``, and the groups by shape: a node requested
    by ``g`` queries with ``n`` rows goes to the bucket ``(G, L) = (g, n)``
    rounded up by :func:`bucket_ceil`. Each bucket is one batched matrix product
    ``(U, G, k) @ (U, k, L)`` over its ``U`` nodes (padding repeats a real
    row or query and is dropped): every row is read once per node and block
    of queries rather than once per pair, and the Python loop is over the
    few buckets (and chunks of ``CHUNK_ROWS`` rows), not over nodes.

    The summation order of a matrix product depends on the shapes, so the
    same (query, row) can differ in the last bits between calls (about
    ``k 2^-53 ||q|| ||x||``, far below ``ROUNDING``); callers that need
    bit-reproducible logits (top-k ties) recompute the few they keep with
    :func:`rowdot`.
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
    G, L = bucket_ceil(g), bucket_ceil(nu)
    key = np.lexsort((vs[first], L, G))             # nodes by bucket, then by id
    Gk, Lk = G[key], L[key]
    bucket_first = np.flatnonzero(np.concatenate([[True], (Gk[1:] != Gk[:-1]) | (Lk[1:] != Lk[:-1])]))
    bucket_end = np.append(bucket_first[1:], key.size)
    out_a, out_perm = [], []
    for b0, b1 in zip(bucket_first.tolist(), bucket_end.tolist()):
        Gb, Lb = int(Gk[b0]), int(Lk[b0])
        step = max(1, CHUNK_ROWS // (Lb + Gb))     # nodes per chunk: bounded temporaries
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
            out_perm.append(o[ranges(first[ks], gi)])
    perm = np.concatenate(out_perm)
    ptr = np.zeros(v.size + 1, np.int64)
    np.cumsum(n[perm], out=ptr[1:])
    return np.concatenate(out_a), ptr, perm


def entry_counts(tree: Any, node: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``n_v`` of each entry (1 for single targets)."""
    n = np.ones(node.size, np.int64)
    isn = node >= 0
    n[isn] = tree.count[node[isn]]
    return n


@dataclass
class Terms:
    """Per-entry quantities of a batch of cuts: s = <q, r_v>, log n_v, eps_v = ||q|| rho_v."""

    s: np.ndarray
    log_n: np.ndarray
    eps: np.ndarray

    def bracket(self, ptr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(lo, hi, log_z_hat)`` per query (P2)."""
        base = self.log_n + self.s
        return (segment_logsumexp(base - self.eps, ptr), segment_logsumexp(base + self.eps, ptr),
                segment_logsumexp(base, ptr))


def terms(tree: Any, Q: np.ndarray, query: np.ndarray, node: np.ndarray, target: np.ndarray,
          target_pos: np.ndarray | None = None) -> Terms:
    """Score cut entries: ``s = <q, r_v>`` (``<q, z_y>`` for single targets).

    ``target_pos``, if given, holds the DFS position of each single target
    (``order[target_pos] == target``); those rows are then read from the
    tree's ``points_dfs`` (the same numbers, read from nearby rows).
    """
    isn = node >= 0
    s = np.empty(node.size)
    s[isn] = rowdot(tree.rep, node[isn], Q, query[isn])
    if target_pos is not None:
        s[~isn] = rowdot(tree.points_dfs, target_pos[~isn], Q, query[~isn])
    else:
        s[~isn] = rowdot(tree.points, target[~isn], Q, query[~isn])
    n = entry_counts(tree, node, target)
    log_n = np.full(node.size, -np.inf)
    pos = n > 0
    log_n[pos] = np.log(n[pos])
    rho = np.zeros(node.size)
    rho[isn] = tree.radius[node[isn]]
    eps = np.linalg.norm(Q, axis=1)[query] * rho
    return Terms(s, log_n, eps)


def segment_logsumexp(x: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """``logsumexp`` of each segment ``x[ptr[b]:ptr[b+1]]`` (segments non-empty)."""
    starts = ptr[:-1]
    m = np.maximum.reduceat(x, starts)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    sizes = np.diff(ptr)
    ssum = np.add.reduceat(np.exp(x - np.repeat(m_safe, sizes)), starts)
    with np.errstate(divide="ignore"):
        return m_safe + np.log(ssum)


def segment_softmax(x: np.ndarray, ptr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(logsumexp of each segment, exp(x - logsumexp of x's segment))``; segments non-empty, x finite."""
    starts, sizes = ptr[:-1], np.diff(ptr)
    m = np.maximum.reduceat(x, starts)
    w = np.exp(x - np.repeat(m, sizes))
    ssum = np.add.reduceat(w, starts)
    w /= np.repeat(ssum, sizes)
    return m + np.log(ssum), w


def group_logsumexp(x: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """``logsumexp`` of ``x`` over each group (unsorted ``group``); ``-inf`` for empty groups."""
    m = np.full(n_groups, -np.inf)
    np.maximum.at(m, group, x)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    ssum = np.bincount(group, weights=np.exp(x - m_safe[group]), minlength=n_groups)
    with np.errstate(divide="ignore"):
        return m_safe + np.log(ssum)


def query_ptr(query: np.ndarray, n_queries: int) -> np.ndarray:
    """CSR pointer ``(n_queries + 1,)`` of entries sorted by ``query``: query ``b`` owns ``ptr[b]:ptr[b+1]``."""
    return np.searchsorted(query, np.arange(n_queries + 1)).astype(np.int64)


class CutState:
    """A refined batch of cuts with its entry terms (internal).

    The entry arrays ``raw[f]`` (f in ``FIELDS``) are kept in the order the
    refinement produced them; ``order`` sorts them by query. Sorted views are
    computed on demand, so a caller that only needs a few of them (the
    rejection sampler) does not pay for permuting all of them.

    With ``exact_leaves`` (the rejection sampler's envelope), an expanded leaf
    ``v`` (and, with ``full_count``, an expanded node of at most
    ``full_count`` targets) is kept as one *exact* entry ``x = raw["x"] >= 0``
    instead of its ``n_v`` single targets: ``eps = 0``, ``log_n + s = logsumexp_{y in D(v)} a_y``,
    and the softmax of its targets in DFS order, ``exp(a_y - log_n - s)``,
    is ``exact_prob[exact_ptr[x]:exact_ptr[x+1]]`` (``raw["x"] == -1`` for
    the other entries). It stands for the same ``n_v`` single-target entries of
    the cut (:meth:`cut_fields` lists them), with the same terms in ``lo``, ``hi``
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
        """Number of exact entries (evaluated leaves and small nodes)."""
        return int(self.exact_ptr.size - 1)

    @property
    def size(self) -> int:
        """Entries of the cut (:meth:`cut_fields`): an exact entry counts as its ``n_v`` single targets."""
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
    def terms(self) -> Terms:
        if self.n_exact:
            raise RuntimeError("CutState.terms: exact entries have no per-entry terms; use raw and exact_prob")
        return Terms(self.sorted("s"), self.sorted("log_n"), self.sorted("eps"))

    def cut_fields(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """``(query, node, target, n_queries)`` of the cut, the fields of a :class:`reference.bounds.Cut`.

        An exact entry becomes its single targets ``order[start[v]:stop[v]]``.
        """
        if not self.n_exact:
            return self.query, self.node, self.target, self.n_queries
        x = self.sorted("x")
        isx = x >= 0
        c = np.where(isx, self.exact_ptr[np.maximum(x, 0) + 1] - self.exact_ptr[np.maximum(x, 0)], 1)
        e = np.repeat(np.arange(x.size), c)
        within = np.arange(e.size) - np.repeat(np.cumsum(c) - c, c)
        ex = isx[e]
        target = self.target[e]
        target[ex] = self.tree.order[self.tree.start[self.node[e[ex]]] + within[ex]]
        node = np.where(ex, -1, self.node[e])
        return self.query[e], node, target, self.n_queries


def expand(tree: Any, query: np.ndarray, node: np.ndarray, return_pos: bool = False):
    """Children (with n_c > 0) of internal nodes and targets of leaves, per (query, node) pair.

    Returns ``(query, node, target)``, and with ``return_pos`` also
    ``target_pos``, the DFS position of each leaf target (-1 for child entries).
    """
    leaf = tree.is_leaf[node]
    vi, qi = node[~leaf], query[~leaf]
    deg = tree.child_ptr[vi + 1] - tree.child_ptr[vi]
    child = tree.child_idx[ranges(tree.child_ptr[vi], deg)]
    qc = np.repeat(qi, deg)
    keep = tree.count[child] > 0
    child, qc = child[keep], qc[keep]
    vl, ql = node[leaf], query[leaf]
    n = tree.stop[vl] - tree.start[vl]
    pos = ranges(tree.start[vl], n)
    ys = tree.order[pos]
    qy = np.repeat(ql, n)
    new_q = np.concatenate([qc, qy])
    new_v = np.concatenate([child, np.full(ys.size, -1, np.int64)])
    new_y = np.concatenate([np.full(child.size, -1, np.int64), ys])
    if not return_pos:
        return new_q, new_v, new_y
    new_p = np.concatenate([np.full(child.size, -1, np.int64), pos])
    return new_q, new_v, new_y, new_p


FIELDS = ("query", "node", "target", "s", "log_n", "eps", "x")


def slack_before(r: np.ndarray, group: np.ndarray) -> np.ndarray:
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


def log_allowance(tol: Any) -> Any:
    """``log(exp(tol) - 1)``, without overflow for large ``tol``; ``-inf`` where ``tol <= 0``."""
    t = np.asarray(tol, dtype=np.float64)
    safe = np.where(t > 0, t, 1.0)
    small = np.log(np.expm1(np.minimum(safe, 1.0)))
    big = np.maximum(safe, 1.0)           # the branch used where safe > 1; no log1p(-1) elsewhere
    large = big + np.log1p(-np.exp(-big))
    return np.where(t > 0, np.where(safe > 1.0, large, small), -np.inf)


def entry_logs(part: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-entry terms of lo, hi and log_z_hat (P2)."""
    base = part["log_n"] + part["s"]
    return dict(lo=base - part["eps"], hi=base + part["eps"], hat=base)


def refine(tree: Any, Q: np.ndarray, tol: float | np.ndarray | None = None, n_draws: int | None = None,
           exact_leaves: bool = False, full_count: int = 0) -> CutState:
    """Refine the root cut for all queries at once; the only loop is over rounds.

    Two marking rules; at least one of ``tol``, ``n_draws`` is given (with
    both, the ``tol`` rule acts on a query only in rounds where the cost rule
    marks nothing for it, i.e. as a safety net):

    ``tol`` (:func:`reference.bounds.adaptive_cut`, P7)
        Refine while ``hi - lo > tol``. Each round, for every such query, the
        entries are ranked by slack ``n_v exp(s_v) (exp(eps_v) - exp(-eps_v))``
        and the smallest set of largest-slack entries whose slack covers the
        excess ``S - A`` (``S`` = total slack, ``A = (exp(tol) - 1) exp(lo)``
        the allowance) is expanded ("bulk marking"; the entry of largest
        slack is always marked). Computed as: an entry is marked when the
        slack from it on (itself and all smaller ones, summed from the
        smallest up) exceeds ``A``, the same condition with full relative
        precision, so batch and single-query calls give the same cuts.
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
    :class:`CutState`) instead of ``n_v`` single targets: the same cut and
    the same ``lo``, ``hi``, ``log_z_hat`` up to rounding, with far fewer
    entries to carry. With ``full_count`` as well, an expanded internal node
    of at most ``full_count`` targets becomes one exact entry too (the cut
    in which it is listed as its single targets), instead of its children.
    Its targets are scored by :func:`range_logits` (one matrix product per
    node and block of queries).

    ``tol`` may be one number or one per query (``(B,)``); a query whose
    ``tol`` is ``<= 0`` (e.g. ``-inf``) is refined until every entry has
    ``eps_v == 0``.
    """
    B = Q.shape[0]
    root = dict(query=np.arange(B, dtype=np.int64), node=np.zeros(B, np.int64),
                target=np.full(B, -1, np.int64))
    t0 = terms(tree, Q, root["query"], root["node"], root["target"])
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
                g = group_logsumexp(part["log_n"] + part["s"], part["query"], B)
                for key in acc:
                    acc[key] = np.logaddexp(acc[key], g)
                return
            for key, val in entry_logs(part).items():
                acc[key] = np.logaddexp(acc[key], group_logsumexp(val, part["query"], B))

    def split_zero_eps(part: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Freeze entries with eps_v == 0 (single targets, zero-radius nodes): they have no slack."""
        z = part["eps"] == 0
        if not z.any():
            return part
        freeze({f: a[z] for f, a in part.items()}, zero_eps=True)
        return {f: a[~z] for f, a in part.items()}

    pool = split_zero_eps(root)
    if tol is not None:
        log_allow = log_allowance(tol)
    if n_draws is not None:
        log_draws = np.log(float(n_draws))
        n_child = np.diff(tree.child_ptr)
    max_rounds = int(tree.radius.shape[0]) + 2  # each round expands >= 1 node per unfinished query
    while pool["query"].size:
        query, s, log_n, eps = pool["query"], pool["s"], pool["log_n"], pool["eps"]
        logs = entry_logs(pool)
        tot = {key: np.logaddexp(acc[key], group_logsumexp(val, query, B)) for key, val in logs.items()}
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
                log_S = group_logsumexp(log_slack, cq, B)
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
                from_here = slack_before(share, cq_o) + share
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
            a, aptr, perm = range_logits(tree, Q, mq[leaf], mv[leaf])
            xq, xv = mq[leaf][perm], mv[leaf][perm]
            target_logits += a.size
            n_x = np.diff(aptr)
            log_n_x = np.log(n_x)
            lse, prob = segment_softmax(a, aptr)
            freeze(dict(query=xq, node=xv, target=np.full(xv.size, -1, np.int64),
                        s=lse - log_n_x, log_n=log_n_x, eps=np.zeros(xv.size),
                        x=n_exact + np.arange(xv.size)), zero_eps=True)
            exact_prob.append(prob)
            exact_sizes.append(n_x)
            n_exact += xv.size
            mq, mv = mq[~leaf], mv[~leaf]
        if exact_leaves:  # only internal nodes left: their children, scored by batched products
            new_q, new_v, s_new = child_logits(tree, Q, mq, mv)
            node_logits += int((tree.child_ptr[mv + 1] - tree.child_ptr[mv]).sum())
            new = dict(query=new_q, node=new_v, target=np.full(new_q.size, -1, np.int64), s=s_new,
                       log_n=np.log(tree.count[new_v]), eps=qnorm[new_q] * tree.radius[new_v])
        else:
            new_q, new_v, new_y, new_p = expand(tree, mq, mv, return_pos=True)
            nt = terms(tree, Q, new_q, new_v, new_y, new_p)
            n_new_nodes = int(np.count_nonzero(new_v >= 0))
            node_logits += n_new_nodes
            target_logits += new_v.size - n_new_nodes
            new = dict(query=new_q, node=new_v, target=new_y, s=nt.s, log_n=nt.log_n, eps=nt.eps)
        new = split_zero_eps({**new, "x": np.full(new_q.size, -1, np.int64)})
        if keep.any():
            kept = np.flatnonzero(keep)
            pool = {f: np.concatenate([pool[f][kept], new[f]]) for f in FIELDS}
        else:
            pool = new
    parts = frozen + [pool]
    allf = {f: np.concatenate([p[f] for p in parts]) for f in FIELDS}
    # counting (radix) sort when the query index fits in 16 bits
    key = allf["query"].astype(np.uint16) if B <= np.iinfo(np.uint16).max else allf["query"]
    exact_ptr = np.concatenate([[0], np.cumsum(np.concatenate(exact_sizes))]).astype(np.int64) \
        if exact_sizes else np.zeros(1, np.int64)
    return CutState(allf, np.argsort(key, kind="stable"), B, node_logits, target_logits, rounds,
                    np.concatenate(exact_prob) if exact_prob else np.zeros(0), exact_ptr, tree)


def refine_to_width(tree: Any, Q: np.ndarray, tol: float) -> CutState:
    """The adaptive cut (P7) whose *reported* bracket has ``hi - lo <= tol``, or is exhausted.

    :func:`reference.bounds.log_partition_bracket` widens ``lo`` and ``hi``
    by the rounding bound ``W <= W_bound(q)`` (:func:`bracket_rounding`), so the
    refinement aims at ``tol - 8 W_bound(q)`` (:func:`width_target`). The
    refinement decides on running sums (accumulated over rounds) whose
    rounding is not covered by ``W``; so the bracket of the final cut is
    recomputed here from its entries, and a query whose recomputed width still
    exceeds the target (never seen in practice) is refined again to the end
    (every entry with ``eps_v == 0``). Any two float64 evaluations of the
    bracket of one cut differ by at most ``2 W`` at each end, hence the
    reported width is ``<= target + 4 W + 2 W + (last-bit steps) <= tol``.
    """
    target = width_target(tree, Q, tol)
    st = refine(tree, Q, tol=target)
    if st.n_queries == 0:
        return st
    lo, hi, _ = st.terms.bracket(st.ptr)
    eps = st.sorted("eps")
    ptr = st.ptr
    live = np.isfinite(st.sorted("log_n"))
    open_eps = np.add.reduceat(np.where(live, eps, 0.0) > 0, ptr[:-1]) > 0  # some entry still has slack
    with np.errstate(invalid="ignore"):
        redo = np.flatnonzero(open_eps & ~(hi - lo <= target))
    if not redo.size:
        return st
    again = refine(tree, Q[redo], tol=np.full(redo.size, -np.inf))
    keep = ~np.isin(st.raw["query"], redo)
    raw = {f: np.concatenate([st.raw[f][keep], again.raw[f] if f != "query" else redo[again.raw["query"]]])
           for f in FIELDS}
    order = np.argsort(raw["query"], kind="stable")
    return CutState(raw, order, st.n_queries, st.node_logits + again.node_logits,
                    st.target_logits + again.target_logits, st.rounds + again.rounds, tree=tree)
