"""Internals of the batched fast path shared by bounds.py and sampling.py; not public API.

:mod:`reference.bounds` and :mod:`reference.sampling` work on flat arrays of
(query, entry) pairs for a whole batch of queries (proofs/README.md section 4.8). What
both of them use lives here: the checks of the tree and the queries, the
batched inner products (row by row, :func:`rowdot`; grouped by node into
matrix products computed and used block by block in cache, :func:`node_blocks`;
every target of a query, :func:`dense_blocks`, for the dense fallback), the
per-entry terms of the bracket (P2), segment and group logsumexps, and the
batched refinement of the root cut (:func:`refine`, the rounds of proofs/README.md
section 4.3) with the state it returns (:class:`CutState`, its exact entries
in an :class:`ExactStore`). Notation as in :mod:`reference.bounds`.

Where the time goes, and why the kernels are shaped as they are (gathers in
blocks that stay in cache, no per-target Python work, reductions on the
blocks), is measured in reference/PERFORMANCE.md, section "Profile and design history of
the fast path".

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

# Rows (targets plus queries) gathered for one block of batched products
# (:func:`node_blocks`): 4096 x 64 float64 = 2 MiB at k = 64, so that the gathered
# rows and their products are still in the processor's cache when they are used.
CHUNK_ROWS = 4096

# Products (query, row) in one block of :func:`node_blocks`: 2^18 float64 = 2 MiB.
CHUNK_PRODUCTS = 1 << 18

# Multiply-adds of one node's matrix product in :func:`node_blocks` (queries x rows x k),
# at most: a node requested by more queries is split into groups of queries. OpenBLAS
# runs a product of more than 2^18 multiply-adds on several threads; on a busy machine
# such a call waits for a second core, milliseconds for a product of microseconds.
NODE_PRODUCT = 1 << 17

# Dense fallback (proofs/README.md section 4.8): a query for which, after DENSE_ROUND
# rounds of refinement (the root's top levels expanded), the bounds have not excluded
# a tenth of the targets (its marked or surviving entries hold >= DENSE_MASS of them)
# is scored against every target by blocked matrix products instead: where nothing is
# pruned, the tree's per-node work only adds to the N logits it will evaluate anyway.
# Only trees of at least DENSE_MIN live targets (below, both ways cost little).
DENSE_ROUND = 3
DENSE_MASS = 0.9
DENSE_MIN = 1 << 13

# Bytes of logits of one block of queries in the dense fallback: the block-size rule
# of the brute-force baseline (reference.bench.BRUTE_BLOCK_BYTES), 256 MiB.
DENSE_BLOCK_BYTES = 1 << 28

# With the cost rule, unmarked entries of queries still wider than tol are parked out of the
# pool (see :func:`refine`). False keeps them in the pool, re-examined every round: the same
# cut, more work per round (tests compare the two).
PARKING = True

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
        np.take(X, xi[lo:lo + m], axis=0, out=bx[:m], mode="clip")   # indices are valid: "clip" does not
        np.take(Q, qi[lo:lo + m], axis=0, out=bq[:m], mode="clip")   # buffer `out` as "raise" does
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


def group_order(v: np.ndarray) -> np.ndarray:
    """A stable permutation that sorts the non-negative integers ``v`` (radix sort on 16-bit digits)."""
    v = np.asarray(v, np.int64)
    if v.size == 0:
        return np.zeros(0, np.int64)
    top = int(v.max())
    o = np.argsort((v & 0xFFFF).astype(np.uint16), kind="stable")
    shift = 16
    while top >> shift:
        o = o[np.argsort(((v[o] >> shift) & 0xFFFF).astype(np.uint16), kind="stable")]
        shift += 16
    return o


def node_blocks(X: np.ndarray, index: np.ndarray | None, row0: np.ndarray, length: np.ndarray,
                Q: np.ndarray, q: np.ndarray, v: np.ndarray):
    """Inner products of query ``Q[q[p]]`` with rows ``X[index[row0[p] + i]]``, ``i < length[p]``, in blocks.

    (``index=None`` means the rows ``X[row0[p] + i]``.) Pairs with the same
    ``v[p]`` read the same rows. Yields ``(pair, g, n, R)`` per block of
    ``U`` nodes: ``R[u, j, i] = <Q[q[pair[u, j]]], i-th row of node u>`` for
    ``j < g[u]`` and ``i < n[u]``; every pair is in exactly one block. Slots
    ``j >= g[u]`` repeat pair ``pair[u, g[u] - 1]`` and columns ``i >= n[u]``
    the last row (padding: duplicates of real products, to be ignored). ``R``
    lives in a buffer that the next block overwrites.

    The pairs are grouped by ``v`` (:func:`group_order`), and the nodes by
    shape: a node requested by ``g`` queries with ``n`` rows goes to the bucket
    ``(G, L) = (g, n)`` rounded up by :func:`bucket_ceil`, and within it
    nodes are taken in the order of their rows (a node requested by so many
    queries that ``G L k > NODE_PRODUCT`` counts as several nodes, each with a
    group of the queries). A block is one batched matrix
    product ``(U, G, k) @ (U, k, L)`` over at most ``CHUNK_ROWS`` gathered rows
    and queries and ``CHUNK_PRODUCTS`` products, so that it is computed and
    used in cache: every row is read from memory once per node and block of
    queries, not once per pair, and the Python loop is over blocks, not
    nodes. A node too large for one block (more rows or queries than
    ``CHUNK_ROWS``) is one block per group of its queries, its rows read in
    place when they are contiguous (``index=None``).

    The summation order of a matrix product depends on the shapes, so the
    same (query, row) can differ in the last bits between calls (about
    ``k 2^-53 ||q|| ||x||``, far below ``ROUNDING``); callers that need
    bit-reproducible logits (top-k ties) recompute the few they keep with
    :func:`rowdot`.
    """
    n = np.asarray(length, np.int64)
    if v.size == 0:
        return
    row0 = np.asarray(row0, np.int64)
    k = X.shape[1]
    o = group_order(v)
    vs = v[o]
    first = np.flatnonzero(np.concatenate([[True], vs[1:] != vs[:-1]]))
    g = np.diff(np.append(first, vs.size))          # pairs per distinct node
    nu = n[o[first]]
    r0 = row0[o[first]]
    cap = np.maximum(1, NODE_PRODUCT // (bucket_ceil(nu) * k))   # queries per product
    pieces = -(-g // cap)
    if (pieces > 1).any():   # split the pairs of a node into groups of at most `cap` (same rows)
        u = np.repeat(np.arange(g.size), pieces)
        j = np.arange(u.size) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        first, g = first[u] + j * cap[u], np.minimum(cap[u], g[u] - j * cap[u])
        nu, r0 = nu[u], r0[u]
    G, L = bucket_ceil(g), bucket_ceil(nu)
    key = np.lexsort((r0, L, G))                    # nodes by bucket, then by their rows
    Gk, Lk = G[key], L[key]
    bucket_first = np.flatnonzero(np.concatenate([[True], (Gk[1:] != Gk[:-1]) | (Lk[1:] != Lk[:-1])]))
    bucket_end = np.append(bucket_first[1:], key.size)
    xbuf = np.empty(CHUNK_ROWS * k, dtype=np.result_type(X.dtype, np.float64))
    qbuf = np.empty(CHUNK_ROWS * k)
    rbuf = np.empty(CHUNK_PRODUCTS)
    for b0, b1 in zip(bucket_first.tolist(), bucket_end.tolist()):
        Gb, Lb = int(Gk[b0]), int(Lk[b0])
        step = min(CHUNK_ROWS // (Lb + Gb), CHUNK_PRODUCTS // (Gb * Lb))   # nodes per block
        if step < 1:                                # large nodes: one block per group of queries
            for u in key[b0:b1].tolist():
                yield from _large_node_blocks(X, index, int(r0[u]), int(nu[u]), Q, q, o[first[u]:first[u] + g[u]])
            continue
        ar_l, ar_g = np.arange(Lb), np.arange(Gb)
        for c0 in range(b0, b1, step):
            ks = key[c0:min(c0 + step, b1)]          # nodes of this block
            U = ks.size
            gi, ni = g[ks], nu[ks]
            rows = r0[ks][:, None] + np.minimum(ar_l, ni[:, None] - 1)
            if index is not None:
                rows = index[rows]
            pair = o[first[ks][:, None] + np.minimum(ar_g, gi[:, None] - 1)]
            xg = xbuf[:U * Lb * k].reshape(U, Lb, k)
            qg = qbuf[:U * Gb * k].reshape(U, Gb, k)
            np.take(X, rows, axis=0, out=xg, mode="clip")        # indices are valid; "clip" does not
            np.take(Q, q[pair], axis=0, out=qg, mode="clip")     # buffer `out` as "raise" does
            R = rbuf[:U * Gb * Lb].reshape(U, Gb, Lb)
            np.matmul(qg, xg.transpose(0, 2, 1), out=R)
            yield pair, gi, ni, R


def _large_node_blocks(X, index, r0, n, Q, q, pairs):
    """:func:`node_blocks` for one node of ``n`` rows too large for a block: groups of its queries."""
    rows = X[r0:r0 + n] if index is None else np.take(X, index[r0:r0 + n], axis=0)
    per = max(1, min(CHUNK_ROWS, CHUNK_PRODUCTS // max(n, 1)))
    for j0 in range(0, pairs.size, per):
        p = pairs[j0:j0 + per]
        R = np.matmul(Q[q[p]], rows.T)[None]
        yield p[None], np.array([p.size]), np.array([n]), R


def real_products(g: np.ndarray, n: np.ndarray, R: np.ndarray) -> np.ndarray:
    """The mask of the real (not padding) products of a block of :func:`node_blocks`."""
    U, Gb, Lb = R.shape
    return (np.arange(Gb) < g[:, None])[:, :, None] & (np.arange(Lb) < n[:, None])[:, None, :]


def grouped_logits(X: np.ndarray, index: np.ndarray | None, row0: np.ndarray, length: np.ndarray,
                   Q: np.ndarray, q: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inner products of query ``Q[q[p]]`` with rows ``X[index[row0[p] + i]]``, ``i < length[p]``, per pair ``p``.

    (``index=None`` means the rows ``X[row0[p] + i]``.) Returns ``(a, ptr, perm)``:
    pair ``perm[j]`` owns ``a[ptr[j]:ptr[j+1]]``, rows in order. Computed by
    :func:`node_blocks` (pairs grouped by ``v``, batched matrix products).
    """
    n = np.asarray(length, np.int64)
    a = np.empty(int(n.sum()))
    perm = np.empty(v.size, np.int64)
    pos = j = 0
    for pair, gi, ni, R in node_blocks(X, index, row0, n, Q, q, v):
        vals = R.ravel() if (gi == R.shape[1]).all() and (ni == R.shape[2]).all() else R[real_products(gi, ni, R)]
        a[pos:pos + vals.size] = vals                # node by node, pair by pair, rows in order
        pos += vals.size
        p = pair[np.arange(pair.shape[1]) < gi[:, None]]
        perm[j:j + p.size] = p
        j += p.size
    ptr = np.zeros(v.size + 1, np.int64)
    np.cumsum(n[perm], out=ptr[1:])
    return a, ptr, perm


def range_weights(tree: Any, Q: np.ndarray, q: np.ndarray, v: np.ndarray, shift: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weights ``exp(a_y - c_p)`` of every target of ``D(v)``, and their ``logsumexp``, per (query, node) pair.

    ``c_p`` is ``shift[p]``, the bound ``<q, r_v> + eps_v >= a_y`` (P1): the
    weights are at most 1 and, when ``eps_v <= 300``, their largest is at
    least ``exp(-2 eps_v) >= e^-600``, a normal float64. Pairs with a larger
    ``eps_v`` are shifted by their largest logit instead. Returns ``(lse, w,
    ptr, perm, total)``: pair ``perm[j]`` owns ``w[ptr[j]:ptr[j+1]]`` (its
    targets in DFS order), ``total[j]`` is their sum and ``lse[j] = c + log
    total[j]`` the ``logsumexp`` of its logits. Computed block by block of
    :func:`node_blocks` while the products are in cache.

    Raises ``ValueError`` if a sum overflows or vanishes: the logits then lie
    far outside ``<q, r_v> +- eps_v`` (invariant I3 violated).
    """
    n = (tree.stop[v] - tree.start[v]).astype(np.int64)
    w = np.empty(int(n.sum()))
    c_out = np.empty(v.size)
    total = np.empty(v.size)
    perm = np.empty(v.size, np.int64)
    qnorm = np.linalg.norm(Q, axis=1)
    loose = qnorm[q] * tree.radius[v] > 300.0           # eps_v > 300: shift by the largest logit
    pos = j = 0
    for pair, gi, ni, R in node_blocks(tree.points_dfs, None, tree.start[v], n, Q, q, v):
        U, Gb, Lb = R.shape
        c = shift[pair]
        big = loose[pair]
        if big.any():
            c = np.where(big, R.max(axis=2), c)           # padding repeats a real row: the real maximum
        R -= c[:, :, None]
        cols = np.arange(Lb) < ni[:, None]
        with np.errstate(over="ignore", invalid="ignore"):  # a corrupt tree's inf / NaN: reported below
            np.exp(R, out=R)
            tot = np.matmul(R, cols[:, :, None].astype(np.float64))[:, :, 0]   # sums over the real columns
        if (gi == Gb).all() and cols.all():
            vals, p, tot, c = R.ravel(), pair.ravel(), tot.ravel(), c.ravel()
        else:
            slot = np.arange(Gb) < gi[:, None]
            vals, p, tot, c = R[slot[:, :, None] & cols[:, None, :]], pair[slot], tot[slot], c[slot]
        w[pos:pos + vals.size] = vals
        pos += vals.size
        total[j:j + p.size] = tot
        c_out[j:j + p.size] = c
        perm[j:j + p.size] = p
        j += p.size
    bad = ~((total > 1e-300) & (total < 1e300))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"tree: invariant I3 violated (rejection_sample): the logits of node {int(v[perm[i]])}'s "
                         f"targets lie far outside <q, r_v> +- eps_v (sum of exp(a_y - <q, r_v> - eps_v) = "
                         f"{total[i]:.3g}); run tree.check_invariants()")
    ptr = np.zeros(v.size + 1, np.int64)
    np.cumsum(n[perm], out=ptr[1:])
    return c_out + np.log(total), w, ptr, perm, total


class ExactStore:
    """The exact entries of a refinement (see :class:`CutState`), round after round.

    Entry ``x`` (ids given in order, from 0) holds the targets ``D(v)`` of its
    node in DFS order; their weights ``exp(a_y - c_x)`` (:func:`range_weights`)
    are kept as each round computed them, one array per round, and only the
    entries a sampler draws from are gathered (:meth:`probabilities_of`).
    """

    def __init__(self) -> None:
        self.rounds: list[np.ndarray] = []        # flat weights of one round's entries, entry after entry
        self.round_ptr: list[np.ndarray] = []     # offsets of the entries within their round's array
        self.totals: list[np.ndarray] = []        # sum of each entry's weights
        self.ids: list[np.ndarray] = []           # the ids given to each round's entries
        self.count = 0

    def add(self, tree: Any, Q: np.ndarray, q: np.ndarray, v: np.ndarray, shift: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
        """Score the (query, node) pairs as new exact entries; return ``(lse, perm)`` (ids in ``perm`` order)."""
        lse, w, ptr, perm, total = range_weights(tree, Q, q, v, shift)
        self.rounds.append(w)
        self.round_ptr.append(ptr)
        self.totals.append(total)
        self.ids.append(self.count + np.arange(v.size))
        self.count += v.size
        return lse, perm

    @property
    def ptr(self) -> np.ndarray:
        """Offsets of every entry's targets in the concatenation of all rounds (``exact_ptr``)."""
        if not self.rounds:
            return np.zeros(1, np.int64)
        sizes = np.concatenate([np.diff(p) for p in self.round_ptr])
        out = np.zeros(sizes.size + 1, np.int64)
        np.cumsum(sizes, out=out[1:])
        return out

    def probabilities_of(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(p, ptr)``: the softmax of entries ``x`` (in that order), entry ``x[i]`` owning ``p[ptr[i]:ptr[i+1]]``.

        Each entry's weights divided by their sum, so that every segment sums
        to 1: one cumulative sum over the segments of many entries then
        resolves each of them to full precision (weights of different
        entries may differ by hundreds of orders of magnitude).
        """
        first = np.cumsum([0] + [ids.size for ids in self.ids])   # id of each round's first entry
        r = np.searchsorted(first, x, side="right") - 1          # (an empty round shares the next one's)
        local = x - first[r]
        size = np.empty(x.size, np.int64)
        start = np.empty(x.size, np.int64)
        total = np.empty(x.size)
        for k in np.unique(r).tolist():
            sel = r == k
            size[sel] = np.diff(self.round_ptr[k])[local[sel]]
            start[sel] = self.round_ptr[k][local[sel]]
            total[sel] = self.totals[k][local[sel]]
        ptr = np.zeros(x.size + 1, np.int64)
        np.cumsum(size, out=ptr[1:])
        p = np.empty(int(ptr[-1]))
        for k in np.unique(r).tolist():
            sel = np.flatnonzero(r == k)
            p[ranges(ptr[sel], size[sel])] = self.rounds[k][ranges(start[sel], size[sel])]
        p /= np.repeat(total, size)
        return p, ptr

    def probabilities(self) -> np.ndarray:
        """The softmax of every entry's targets, entry after entry (all rounds concatenated)."""
        if not self.rounds:
            return np.zeros(0)
        return np.concatenate([w / np.repeat(t, np.diff(p)) for w, t, p in zip(self.rounds, self.totals, self.round_ptr)])


def dense_queries(tree: Any, query: np.ndarray, node: np.ndarray, n_queries: int, level: int) -> np.ndarray | None:
    """The queries that leave the tree for the dense fallback, or None (the rule of ``DENSE_*``).

    At level (refinement round) ``DENSE_ROUND`` of a tree of at least
    ``DENSE_MIN`` live targets: the queries whose entries ``node`` (marked
    for expansion, or surviving the pruning) hold at least ``DENSE_MASS`` of
    the targets. Returns a boolean mask over the queries.
    """
    if level != DENSE_ROUND or int(tree.n_live) < DENSE_MIN:
        return None
    mass = np.bincount(query, weights=tree.count[node], minlength=n_queries)
    return mass >= DENSE_MASS * float(tree.n_live)


def dense_blocks(tree: Any, Q: np.ndarray):
    """Logits of queries ``Q`` against every live target, in DFS order, block of queries after block.

    Yields ``(b0, b1, A)`` with ``A[i, j] = <Q[b0 + i], points_dfs[j]>``: one
    matrix product over the contiguous rows per block of
    ``DENSE_BLOCK_BYTES // (8 N)`` queries (the dense fallback; the
    brute-force baseline's block rule). ``A`` is the caller's to overwrite.
    """
    N = int(tree.n_live)
    per = max(1, DENSE_BLOCK_BYTES // (8 * max(N, 1)))
    for b0 in range(0, Q.shape[0], per):
        b1 = min(b0 + per, Q.shape[0])
        yield b0, b1, Q[b0:b1] @ tree.points_dfs.T


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
    and the weights ``exp(a_y - c_x)`` of its targets in DFS order are kept
    in ``exact`` (an :class:`ExactStore`; ``raw["x"] == -1`` for the other
    entries); the softmax of an entry is gathered only when a sampler draws
    from it (:attr:`exact_prob` gives all of them). It stands for the same
    ``n_v`` single-target entries of the cut (:meth:`cut_fields` lists them),
    with the same terms in ``lo``, ``hi`` and ``log_z_hat``.

    ``bracket``, when the refinement gives it, is ``(lo, hi, log_z_hat)`` per
    query, summed over all entries as they were frozen (the same values as a
    fresh sum over the entries, up to rounding).
    """

    def __init__(self, raw: dict[str, np.ndarray], order: np.ndarray, n_queries: int,
                 node_logits: int, target_logits: int, rounds: int, exact: "ExactStore | None" = None,
                 tree: Any = None, bracket: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                 dense: np.ndarray | None = None) -> None:
        self.raw, self.order, self.n_queries, self.tree = raw, order, n_queries, tree
        self.dense = np.zeros(0, np.int64) if dense is None else dense
        for f in ("target", "x"):   # absent when no entry has one: every entry is a node / not exact
            if f not in raw:
                raw[f] = np.full(order.size, -1, np.int64)
        self.node_logits, self.target_logits, self.rounds = node_logits, target_logits, rounds
        self.exact = ExactStore() if exact is None else exact
        self.exact_ptr = self.exact.ptr
        self.bracket = bracket
        self._sorted: dict[str, np.ndarray] = {}

    @property
    def exact_prob(self) -> np.ndarray:
        """The softmax of each exact entry's targets, entry after entry (``exact_ptr`` segments)."""
        return self.exact.probabilities()

    def sorted(self, field: str) -> np.ndarray:
        if field not in self._sorted:
            self._sorted[field] = self.raw[field][self.order]
        return self._sorted[field]

    @property
    def n_exact(self) -> int:
        """Number of exact entries (evaluated leaves and small nodes) in the cut."""
        return int(np.count_nonzero(self.raw["x"] >= 0))

    @property
    def size(self) -> int:
        """Entries of the cut (:meth:`cut_fields`): an exact entry counts as its ``n_v`` single targets,
        a dense query as its ``N`` targets."""
        x = self.raw["x"]
        x = x[x >= 0]
        held = int((self.exact_ptr[x + 1] - self.exact_ptr[x]).sum())
        dense = 0 if self.tree is None else self.dense.size * int(self.tree.n_live)
        return int(self.order.size - x.size + held + dense)

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
            raise RuntimeError("CutState.terms: exact entries have no per-entry terms; use raw and exact")
        return Terms(self.sorted("s"), self.sorted("log_n"), self.sorted("eps"))

    def cut_fields(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """``(query, node, target, n_queries)`` of the cut, the fields of a :class:`reference.bounds.Cut`.

        An exact entry becomes its single targets ``order[start[v]:stop[v]]``,
        a dense query (:attr:`dense`) every live target.
        """
        if self.dense.size:
            q, v, y, _ = self._cut_fields()
            N = int(self.tree.n_live)
            q = np.concatenate([q, np.repeat(self.dense, N)])
            v = np.concatenate([v, np.full(self.dense.size * N, -1, np.int64)])
            y = np.concatenate([y, np.tile(self.tree.order, self.dense.size)])
            o = np.argsort(q, kind="stable")
            return q[o], v[o], y[o], self.n_queries
        return self._cut_fields()

    def _cut_fields(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
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


class PoolSums:
    """Per-query ``logsumexp`` of the entry terms of a pool (``lo``, ``hi``, ``hat``; :func:`entry_logs`).

    The terms of every key are shifted by one maximum per query, that of the
    ``hi`` terms (each entry's largest: ``hi >= hat >= lo`` as ``eps >= 0``),
    and exponentiated once; the sums over the whole pool and over any part
    of it (the entries frozen or parked this round) are then ``bincount``s of
    the same weights. A query whose sum falls below ``1e-280`` (its ``lo`` or
    ``hat`` terms more than ~640 below its largest ``hi`` term) is summed
    again with its own maximum (:func:`group_logsumexp`), so no term is lost
    to underflow.
    """

    def __init__(self, logs: dict[str, np.ndarray], query: np.ndarray, n_queries: int) -> None:
        m = np.full(n_queries, -np.inf)
        np.maximum.at(m, query, logs["hi"])
        self.m = np.where(np.isfinite(m), m, 0.0)
        mq = self.m[query]
        self.w = {key: np.exp(val - mq) for key, val in logs.items()}
        self.logs, self.query, self.n_queries = logs, query, n_queries

    def lse(self, key: str, sel: np.ndarray | None = None) -> np.ndarray:
        """Per query, the ``logsumexp`` of the ``key`` terms of the entries ``sel`` (all by default)."""
        q = self.query if sel is None else self.query[sel]
        s = np.bincount(q, weights=self.w[key] if sel is None else self.w[key][sel], minlength=self.n_queries)
        with np.errstate(divide="ignore"):
            out = self.m + np.log(s)
        bad = s < 1e-280
        if bad.any():
            redo = bad[q]
            if redo.any():
                x = self.logs[key] if sel is None else self.logs[key][sel]
                out[bad] = group_logsumexp(x[redo], q[redo], self.n_queries)[bad]
        return out


def refine(tree: Any, Q: np.ndarray, tol: float | np.ndarray | None = None, n_draws: int | None = None,
           exact_leaves: bool = False, full_count: int = 0, dense: bool = False) -> CutState:
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
    Its targets are scored by :func:`range_weights` (one matrix product per
    node and block of queries, reduced to the entry's weights in cache).

    ``tol`` may be one number or one per query (``(B,)``); a query whose
    ``tol`` is ``<= 0`` (e.g. ``-inf``) is refined until every entry has
    ``eps_v == 0``.

    With ``dense`` (and ``exact_leaves``), a query whose entries marked in
    round ``DENSE_ROUND`` hold at least ``DENSE_MASS`` of the live targets
    (on a tree of at least ``DENSE_MIN``) leaves the refinement: its cut
    becomes every target as one exact entry, scored later by blocked matrix
    products (:func:`dense_blocks`); its entries so far are dropped, their
    logits still counted. ``CutState.dense`` lists these queries.

    With the cost rule, an entry that is not marked while its query's
    bracket is still wider than ``tol`` is parked rather than kept in the
    pool: its terms are summed once, and it returns to the pool in the
    round where the bracket rule acts on its query or where the cost rule
    could mark it (its gain over ``Zhat`` above its cost, tested with a
    margin). The decisions are those of a pool that keeps it.
    """
    B = Q.shape[0]
    root = dict(query=np.arange(B, dtype=np.int64), node=np.zeros(B, np.int64))
    t0 = terms(tree, Q, root["query"], root["node"], np.full(B, -1, np.int64))
    root.update(s=t0.s, log_n=t0.log_n, eps=t0.eps)
    node_logits, target_logits, rounds = B, 0, 0
    qnorm = np.linalg.norm(Q, axis=1)
    # Entries that will never be expanded again are "frozen": moved out of the
    # pool, with their contributions to lo / hi / log_z_hat accumulated per query.
    frozen: list[dict[str, np.ndarray]] = []
    acc = {key: np.full(B, -np.inf) for key in ("lo", "hi", "hat")}
    # With the cost rule, unmarked entries of queries still wider than tol are "parked": out of
    # the pool, their sums in `parked`, until a rule could mark one of them (see below).
    parked_parts: list[dict[str, np.ndarray]] = []
    parked = {key: np.full(B, -np.inf) for key in ("lo", "hi", "hat")}
    parked_key = np.full(B, -np.inf)          # max over a query's parked entries of gain - log cost
    exact = ExactStore()
    gone = np.zeros(B, bool)                  # queries moved to the dense fallback

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

    def take(part: dict[str, np.ndarray], sel: np.ndarray) -> dict[str, np.ndarray]:
        return {f: a[sel] for f, a in part.items()}

    def split_zero_eps(part: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Freeze entries with eps_v == 0 (single targets, zero-radius nodes): they have no slack."""
        z = part["eps"] == 0
        if not z.any():
            return part
        freeze(take(part, z), zero_eps=True)
        return take(part, ~z)

    if tol is not None:
        log_allow = log_allowance(tol)
    if n_draws is not None:
        log_draws = np.log(float(n_draws))
        cost = np.where(tree.is_leaf | (tree.count <= full_count), tree.count, np.diff(tree.child_ptr))
        log_cost = np.log(np.maximum(cost, 1))   # per node: the price of expanding it, in logits

    def with_gain(part: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Add ``gain``, the log of n (U_v - n_v exp(s_v)) (the cost rule's numerator, before / Zhat)."""
        if n_draws is not None:
            eps = part["eps"]
            part["gain"] = log_draws + part["log_n"] + part["s"] + eps + np.log(-np.expm1(-eps))  # e^eps - 1
        return part

    pool = with_gain(split_zero_eps(root))
    max_rounds = int(tree.radius.shape[0]) + 2  # each round expands >= 1 node per unfinished query
    while True:
        query, s, log_n, eps = pool["query"], pool["s"], pool["log_n"], pool["eps"]
        logs = entry_logs(pool)
        sums = PoolSums(logs, query, B)
        tot = {key: np.logaddexp(np.logaddexp(acc[key], parked[key]), sums.lse(key)) for key in logs}
        wide = np.zeros(B, bool)
        if tol is not None:
            with np.errstate(invalid="ignore"):
                wide = (tot["hi"] - tot["lo"]) > tol
        marked = np.zeros(query.size, bool)
        if n_draws is not None:
            marked = pool["gain"] - tot["hat"][query] > log_cost[pool["node"]]
            # A parked entry returns to the pool when the cost rule could mark it now (Zhat fell:
            # tested with a margin, the pool's own test decides) or when the bracket rule acts on
            # its query: the same decisions as if it had stayed in the pool.
            busy = np.zeros(B, bool)
            busy[query[marked]] = True
            hat = tot["hat"]
            back = np.isfinite(parked_key) & ((parked_key > hat - 1e-9 * (1.0 + np.abs(hat))) | (wide & ~busy))
            if back.any():
                sel = [p["query"] for p in parked_parts]
                back_parts = [take(p, back[q]) for p, q in zip(parked_parts, sel)]
                parked_parts = [take(p, ~back[q]) for p, q in zip(parked_parts, sel)]
                for key in parked:
                    parked[key][back] = -np.inf
                parked_key[back] = -np.inf
                pool = {f: np.concatenate([pool[f]] + [p[f] for p in back_parts]) for f in pool}
                query, s, log_n, eps = pool["query"], pool["s"], pool["log_n"], pool["eps"]
                logs = entry_logs(pool)
                sums = PoolSums(logs, query, B)
                marked = pool["gain"] - tot["hat"][query] > log_cost[pool["node"]]
        if not query.size:
            break
        if tol is not None:
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
        out = dense_queries(tree, query[marked], pool["node"][marked], B, rounds) if dense and exact_leaves else None
        if out is not None:
            if out.any():                # these queries leave: their entries are dropped, not frozen
                gone |= out
                parked_key[out] = -np.inf
                stay = ~out[query]
                pool = take(pool, stay)
                logs = {key: val[stay] for key, val in logs.items()}
                marked, wide = marked[stay], wide & ~out
                query, s, log_n, eps = pool["query"], pool["s"], pool["log_n"], pool["eps"]
                sums = PoolSums(logs, query, B)
        keep = wide[query] & ~marked   # stays in the pool (parked, with the cost rule); others are final
        final = ~marked & ~keep
        part = take(pool, final)
        if part["query"].size:
            frozen.append(part)
            for key in acc:
                acc[key] = np.logaddexp(acc[key], sums.lse(key, final))
        if not marked.any():           # then no query is wide (they always mark), keep is all False
            break
        if PARKING and n_draws is not None and keep.any():   # only the bracket rule or a lower Zhat can mark them
            part = take(pool, keep)
            parked_parts.append(part)
            for key in parked:
                parked[key] = np.logaddexp(parked[key], sums.lse(key, keep))
            np.maximum.at(parked_key, part["query"], part["gain"] - log_cost[part["node"]])
            keep[:] = False
        rounds += 1
        if rounds > max_rounds:
            raise RuntimeError("adaptive_cut: no progress after as many rounds as tree nodes (corrupt tree?)")
        mq, mv = query[marked], pool["node"][marked]
        if exact_leaves:  # expanded leaves become exact entries: logsumexp of their target logits, eps = 0
            leaf = tree.is_leaf[mv] | (tree.count[mv] <= full_count)
            lq, lv = mq[leaf], mv[leaf]
            lse, perm = exact.add(tree, Q, lq, lv, (s[marked] + eps[marked])[leaf])
            xq, xv = lq[perm], lv[perm]
            n_x = (tree.stop[xv] - tree.start[xv]).astype(np.int64)
            target_logits += int(n_x.sum())
            log_n_x = np.log(n_x)
            freeze(dict(query=xq, node=xv, s=lse - log_n_x, log_n=log_n_x, eps=np.zeros(xv.size),
                        x=exact.ids[-1]), zero_eps=True)
            mq, mv = mq[~leaf], mv[~leaf]
        if exact_leaves:  # only internal nodes left: their children, scored by batched products
            new_q, new_v, s_new = child_logits(tree, Q, mq, mv)
            node_logits += int((tree.child_ptr[mv + 1] - tree.child_ptr[mv]).sum())
            new = dict(query=new_q, node=new_v, s=s_new, log_n=np.log(tree.count[new_v]),
                       eps=qnorm[new_q] * tree.radius[new_v])
        else:
            new_q, new_v, new_y, new_p = expand(tree, mq, mv, return_pos=True)
            nt = terms(tree, Q, new_q, new_v, new_y, new_p)
            n_new_nodes = int(np.count_nonzero(new_v >= 0))
            node_logits += n_new_nodes
            target_logits += new_v.size - n_new_nodes
            new = dict(query=new_q, node=new_v, target=new_y, s=nt.s, log_n=nt.log_n, eps=nt.eps)
        new = split_zero_eps(new)
        new.pop("target", None)        # only single targets had one, and they have eps == 0
        new = with_gain(new)
        if keep.any():
            pool = {f: np.concatenate([pool[f][keep], new[f]]) for f in new}
        else:
            pool = new
    for key in acc:
        acc[key] = np.logaddexp(acc[key], parked[key])
    parts = frozen + parked_parts
    if gone.any():
        parts = [take(p, ~gone[p["query"]]) for p in parts]
    if not parts:  # every query left for the dense fallback before any entry was final: no entries
        parts = [{f: np.zeros(0, np.float64 if f in ("s", "log_n", "eps") else np.int64) for f in FIELDS}]
    allf = {}
    for f in FIELDS:
        have = [p for p in parts if f in p]
        if not have:
            continue
        if len(have) == len(parts):
            allf[f] = np.concatenate([p[f] for p in parts]) if parts else np.zeros(0, np.int64)
        else:
            allf[f] = np.concatenate([p[f] if f in p else np.full(p["query"].size, -1, np.int64) for p in parts])
    # counting (radix) sort when the query index fits in 16 bits
    key = allf["query"].astype(np.uint16) if B <= np.iinfo(np.uint16).max else allf["query"]
    return CutState(allf, np.argsort(key, kind="stable"), B, node_logits, target_logits, rounds,
                    exact=exact, tree=tree, bracket=(acc["lo"], acc["hi"], acc["hat"]), dense=np.flatnonzero(gone))


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
