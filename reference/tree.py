"""The tree index over target vectors z_y (SPEC section 3).

A :class:`Tree` is a hierarchy of nodes v, each with a representative r_v (the
centroid of its descendants), a descendant set D(v) of live targets, a count
n_v = |D(v)| and a certified radius rho_v. Everything is stored in flat NumPy
arrays (no node objects), so that the bounds and samplers of SPEC section 4
can work on a whole frontier of nodes, and a whole batch of queries, at once.

Invariants (checked by :meth:`Tree.check_invariants`)
-----------------------------------------------------
I1 partition
    every live target is in exactly one leaf; deleted ones are in none.
I2 counts
    ``count[v]`` is the number of live targets under v.
I3 containment
    ``||z_y - r_v|| <= radius[v]`` for every y in D(v).
I4 nesting (holds after ``build``, ``refresh``, ``rebuild``; see :attr:`Tree.nested`)
    ``radius[v] >= ||r_c - r_v|| + radius[c]`` for every child c of v with
    ``count[c] > 0``. By the triangle inequality I4 (plus I3 at the leaves)
    implies I3 everywhere. Empty children are exempt: cuts skip them, and a
    refresh gives them radius 0 and keeps their old representative.

Layout
------
Nodes are numbered in breadth-first order: ``depth`` is non-decreasing, the
root is node 0, and the children of a node are consecutive nodes
(``child_idx[child_ptr[v]:child_ptr[v + 1]]``, which is a run of consecutive
integers). Live targets are listed in depth-first order in ``order``; the
descendants of v are the contiguous range ``order[start[v]:stop[v]]``, so a
uniform descendant is ``order[start[v] + floor(u * count[v])]`` (SPEC section 4).

Design choices
--------------
- Build: top-down hierarchical k-means, vectorised over every node of a level
  (segment operations on targets sorted by node; the only Python loops are over
  levels and Lloyd iterations). A node whose targets k-means cannot separate
  (duplicates) is split by index, so every input terminates.
- ``insert`` descends greedily to the nearest child representative and
  appends to that leaf. Leaves are NOT split on overflow: a leaf may exceed
  ``leaf_size`` until the next :meth:`Tree.rebuild`, which re-clusters it.
  Keeping the node set fixed keeps insert cheap and every node id stable.
- Deleting every live target is refused (``ValueError``): a tree always holds
  at least one target, so every query on it is well defined.
- :meth:`Tree.check_invariants` raises :class:`InvariantError` (a subclass of
  ``AssertionError``: a violation is a bug, not bad input) naming the first
  violating node and the numbers.
- Public mutating methods validate all of their input before changing
  anything; a rejected call leaves the tree unchanged.

References
----------
Monath, Zaheer, Allen, McCallum, "Improving Dual-Encoder Training through
Dynamic Indexes for Negative Mining", AISTATS 2023 (section 3: the tree and
its certified radii).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse

from reference._validation import as_float_array, as_index_array, check_int

__all__ = ["Tree", "InvariantError", "row_distances"]

#: Largest accepted absolute coordinate. Squared distances of vectors with
#: entries up to 1e150 stay finite in float64 (1e300 * k < 1.8e308 for any
#: practical k), so every radius is a finite number.
MAX_ABS_COORD = 1e150

#: Rows processed per block in the passes over all targets (bounds the memory
#: of temporaries to about ``_BLOCK * branching * k * 8`` bytes).
_BLOCK = 1 << 15

#: Targets per node on which the Lloyd iterations run (a random subsample of
#: larger nodes; the final assignment always uses all targets).
_KMEANS_SAMPLE = 1024

#: Depth below which nodes are split by index instead of k-means, so that a
#: pathological point set cannot produce a tree of depth ~N.
_MAX_KMEANS_DEPTH = 48


class InvariantError(AssertionError):
    """An invariant I1-I4 (or the array layout) of a :class:`Tree` is violated."""


def row_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances ``||a_i - b_i||`` between matching rows.

    This single function computes every radius the tree certifies and every
    distance :meth:`Tree.check_invariants` compares against one, so both sides
    round the same way. Each difference ``a_ij - b_ij`` is correctly rounded,
    so the result has relative error at most about ``(k / 2 + 2) * eps``
    (eps = 2.2e-16), relative to the distance itself, not to ``||a||``.
    """
    d = a - b
    return np.sqrt(np.einsum("ij,ij->i", d, d))


def _segment_positions(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + l)`` for every (s, l), vectorised."""
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(lens) - lens
    return np.arange(total, dtype=np.int64) + np.repeat(starts - offsets, lens)


def _blocked_sqdist_to_centers(
    points: np.ndarray, rows: np.ndarray, group: np.ndarray, centers: np.ndarray
) -> np.ndarray:
    """Squared distances of ``points[rows[i]]`` to each center of its group.

    Returns an array (n, b): entry (i, j) is ``||z - c_{group[i], j}||^2`` up to
    the constant ``||z||^2`` (which does not change an argmin), computed in
    blocks so that memory stays bounded.
    """
    n = rows.shape[0]
    b = centers.shape[1]
    cn = np.einsum("gbk,gbk->gb", centers, centers)
    out = np.empty((n, b))
    for lo in range(0, n, _BLOCK):
        hi = min(n, lo + _BLOCK)
        x = points[rows[lo:hi]]
        g = group[lo:hi]
        out[lo:hi] = cn[g] - 2.0 * np.einsum("nk,nbk->nb", x, centers[g])
    return out


def _kmeans_labels(
    points: np.ndarray,
    work: np.ndarray,
    group: np.ndarray,
    starts: np.ndarray,
    lens: np.ndarray,
    b: int,
    iters: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Vectorised k-means (k-means++ seeding, Lloyd) in every segment at once.

    Segment g holds the targets ``work[starts[g]:starts[g] + lens[g]]``;
    ``group`` is the segment of each position. Returns a label in [0, b) for
    each position. Seeding and Lloyd iterations use a random subsample of at
    most ``_KMEANS_SAMPLE`` targets per segment; the returned labels assign
    every target to its nearest final center.
    """
    n = work.shape[0]
    G = lens.shape[0]
    k = points.shape[1]
    # A random order inside each segment: sort by (segment, uniform key).
    perm = np.lexsort((rng.random(n), group))
    rank = np.arange(n, dtype=np.int64) - np.repeat(starts, lens)
    sub = perm[rank < _KMEANS_SAMPLE]  # positions of the subsample, grouped by segment
    s_lens = np.minimum(lens, _KMEANS_SAMPLE)
    s_starts = np.cumsum(s_lens) - s_lens
    gs = group[sub]
    xs = points[work[sub]].astype(np.float64, copy=False)

    # k-means++ seeding (Arthur & Vassilvitskii 2007), one center per round for
    # every segment at once. Squared distances are normalised by their segment
    # total so that one global cumsum serves every segment exactly.
    centers = np.empty((G, b, k))
    centers[:, 0] = xs[s_starts]
    d2 = np.einsum("ij,ij->i", xs - centers[gs, 0], xs - centers[gs, 0])
    for j in range(1, b):
        tot = np.add.reduceat(d2, s_starts)
        ok = tot > 0
        w = d2 / np.where(ok, tot, 1.0)[gs]
        cs = np.cumsum(w)
        base = cs[s_starts] - w[s_starts]
        u = base + rng.random(G) * np.where(ok, 1.0, 0.0)
        pick = np.searchsorted(cs, u, side="right")
        pick = np.clip(pick, s_starts, s_starts + s_lens - 1)
        # Segments whose points all coincide with the chosen centers: any point.
        pick = np.where(ok, pick, s_starts + (j % s_lens))
        centers[:, j] = xs[pick]
        diff = xs - centers[gs, j]
        np.minimum(d2, np.einsum("ij,ij->i", diff, diff), out=d2)

    ident = np.arange(sub.shape[0], dtype=np.int64)
    for _ in range(iters):
        lab = np.argmin(_blocked_sqdist_to_centers(xs, ident, gs, centers), axis=1)
        key = gs * b + lab
        onehot = scipy.sparse.csr_matrix(
            (np.ones(key.shape[0]), (key, ident)), shape=(G * b, key.shape[0])
        )
        sums = np.asarray(onehot @ xs).reshape(G, b, k)
        cnt = np.bincount(key, minlength=G * b).reshape(G, b)
        filled = cnt > 0
        centers[filled] = sums[filled] / cnt[filled][:, None]  # empty clusters keep their center
    return np.argmin(_blocked_sqdist_to_centers(points, work, group, centers), axis=1)


def _grow(
    points: np.ndarray,
    work: np.ndarray,
    lens: np.ndarray,
    root_depth: np.ndarray,
    branching: int,
    leaf_size: int,
    iters: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Grow a forest top-down by hierarchical k-means, one level at a time.

    ``work`` lists target ids grouped into ``len(lens)`` root segments (root g
    holds ``lens[g]`` consecutive entries, at depth ``root_depth[g]``).

    Returns
    -------
    parent : (m,) int64
        Local parent of each new node; -1 for the roots (nodes 0..G-1).
    depth : (m,) int64
    is_leaf : (m,) bool
    leaf_ids, leaf_nodes : (n,) int64
        Every target id with the local leaf that holds it.
    """
    G0 = lens.shape[0]
    parent = [np.full(G0, -1, dtype=np.int64)]
    depth = [root_depth.astype(np.int64)]
    leaf_parts_ids: list[np.ndarray] = []
    leaf_parts_nodes: list[np.ndarray] = []
    leaf_marks: list[np.ndarray] = []
    n_nodes = G0
    act_nodes = np.arange(G0, dtype=np.int64)
    act_depth = depth[0].copy()
    act_lens = lens.astype(np.int64)
    while act_nodes.shape[0]:
        G = act_nodes.shape[0]
        starts = np.cumsum(act_lens) - act_lens
        group = np.repeat(np.arange(G, dtype=np.int64), act_lens)
        leaf = act_lens <= leaf_size
        if leaf.any():
            pos = _segment_positions(starts[leaf], act_lens[leaf])
            leaf_parts_ids.append(work[pos])
            leaf_parts_nodes.append(np.repeat(act_nodes[leaf], act_lens[leaf]))
            leaf_marks.append(act_nodes[leaf])
        split = ~leaf
        if not split.any():
            break
        keep = split[group]
        work = work[keep]
        s_nodes, s_lens, s_depth = act_nodes[split], act_lens[split], act_depth[split]
        Gs = s_nodes.shape[0]
        s_starts = np.cumsum(s_lens) - s_lens
        s_group = np.repeat(np.arange(Gs, dtype=np.int64), s_lens)
        labels = _kmeans_labels(points, work, s_group, s_starts, s_lens, branching, iters, rng)
        cnt = np.bincount(s_group * branching + labels, minlength=Gs * branching).reshape(Gs, branching)
        # Nodes k-means cannot separate (duplicates), and nodes too deep: split by index.
        by_index = ((cnt > 0).sum(axis=1) < 2) | (s_depth >= _MAX_KMEANS_DEPTH)
        if by_index.any():
            rank = np.arange(work.shape[0], dtype=np.int64) - np.repeat(s_starts, s_lens)
            idx_label = (rank * branching) // s_lens[s_group]
            labels = np.where(by_index[s_group], idx_label, labels)
            cnt = np.bincount(s_group * branching + labels, minlength=Gs * branching).reshape(Gs, branching)
        srt = np.argsort(s_group * branching + labels, kind="stable")
        work = work[srt]
        row, col = np.nonzero(cnt)  # row-major: children grouped by parent, in label order
        m = row.shape[0]
        new_nodes = np.arange(n_nodes, n_nodes + m, dtype=np.int64)
        n_nodes += m
        parent.append(s_nodes[row])
        depth.append(s_depth[row] + 1)
        act_nodes, act_lens, act_depth = new_nodes, cnt[row, col].astype(np.int64), s_depth[row] + 1
    parent_a = np.concatenate(parent)
    depth_a = np.concatenate(depth)
    is_leaf = np.zeros(n_nodes, dtype=bool)
    if leaf_marks:
        is_leaf[np.concatenate(leaf_marks)] = True
    leaf_ids = np.concatenate(leaf_parts_ids) if leaf_parts_ids else np.zeros(0, dtype=np.int64)
    leaf_nodes = np.concatenate(leaf_parts_nodes) if leaf_parts_nodes else np.zeros(0, dtype=np.int64)
    return parent_a, depth_a, is_leaf, leaf_ids, leaf_nodes


def _check_branching_leaf(branching: Any, leaf_size: Any) -> tuple[int, int]:
    return check_int(branching, "branching", low=2), check_int(leaf_size, "leaf_size", low=1)


def _copy_points(points: Any, name: str, dim: int | None) -> np.ndarray:
    """Validate ``points`` (N, k) and return a float64 copy, reading in blocks.

    Accepts float32/float64/int arrays and ``np.memmap`` (read ``_BLOCK`` rows
    at a time). Raises ``ValueError`` for wrong shape, empty input, NaN/inf or
    entries beyond :data:`MAX_ABS_COORD`.
    """
    arr = as_float_array(points, name, ndim=2, finite=False, allow_empty=True)
    if arr.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one point, got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name}: expected at least one coordinate per point, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name}: expected shape (*, {dim}) to match the tree's dim, got {arr.shape}")
    out = np.empty(arr.shape, dtype=np.float64)
    for lo in range(0, arr.shape[0], _BLOCK):
        blk = np.asarray(arr[lo : lo + _BLOCK], dtype=np.float64)
        if not np.isfinite(blk).all():
            raise ValueError(f"{name}: expected finite values, got NaN or infinite entries (rows {lo}..)")
        if blk.size and np.abs(blk).max() > MAX_ABS_COORD:
            raise ValueError(
                f"{name}: expected |entries| <= {MAX_ABS_COORD:g} (squared distances must stay finite), "
                f"got {np.abs(blk).max():g}"
            )
        out[lo : lo + _BLOCK] = blk
    return out


class Tree:
    """Tree index with certified radii over target vectors z_y (SPEC section 3).

    Create one with :meth:`Tree.build`. All attributes are plain NumPy arrays,
    read-only for other modules (mutate only through the methods).

    Attributes
    ----------
    points : (capacity, k) float64
        The tree's own copy of the targets; row y is z_y. Rows of deleted
        targets are kept (ids are never reused).
    alive : (capacity,) bool
    n_live, dim : int
    rep : (M, k) float64
        Representatives r_v (centroids of D(v) after build/refresh/rebuild).
    radius : (M,) float64
        Certified radii rho_v (I3; I4 when :attr:`nested`).
    count : (M,) int64
        n_v, the number of live targets under v (may be 0 after deletes).
    parent : (M,) int64
        -1 for the root (node 0).
    child_ptr : (M + 1,) int64, child_idx : (M - 1,) int64
        CSR lists of child nodes.
    depth : (M,) int64
    is_leaf : (M,) bool
    order : (n_live,) int64
        Live target ids in depth-first order; D(v) = order[start[v]:stop[v]].
    start, stop : (M,) int64
    leaf_of : (capacity,) int64
        The leaf holding y, or -1 if y is deleted.
    nested : bool
        Whether I4 is guaranteed (set by build/refresh/rebuild, cleared by
        insert/update; delete keeps it).
    branching, leaf_size : int
        Build parameters, reused by :meth:`rebuild`.
    """

    root: int = 0

    def __init__(self) -> None:  # use Tree.build
        self.points = np.zeros((0, 0))
        self.alive = np.zeros(0, dtype=bool)
        self.n_live = 0
        self.dim = 0
        self.rep = np.zeros((0, 0))
        self.radius = np.zeros(0)
        self.count = np.zeros(0, dtype=np.int64)
        self.parent = np.zeros(0, dtype=np.int64)
        self.child_ptr = np.zeros(1, dtype=np.int64)
        self.child_idx = np.zeros(0, dtype=np.int64)
        self.depth = np.zeros(0, dtype=np.int64)
        self.is_leaf = np.zeros(0, dtype=bool)
        self.order = np.zeros(0, dtype=np.int64)
        self.start = np.zeros(0, dtype=np.int64)
        self.stop = np.zeros(0, dtype=np.int64)
        self.leaf_of = np.zeros(0, dtype=np.int64)
        self.nested = False
        self.branching = 8
        self.leaf_size = 32
        self.kmeans_iters = 4
        self._rng = np.random.default_rng(0)

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        points: Any,
        *,
        branching: int = 8,
        leaf_size: int = 32,
        seed: int | np.random.Generator = 0,
        kmeans_iters: int = 4,
    ) -> "Tree":
        """Build the tree by top-down hierarchical k-means (SPEC section 3).

        Parameters
        ----------
        points : array_like (N, k)
            Target vectors z_y (float32, float64 or int; ``np.memmap`` is read
            in blocks). The tree keeps a float64 copy: for N x k float64 input
            this doubles the memory of the points.
        branching : int, default 8
            b, the number of k-means children per node (>= 2).
        leaf_size : int, default 32
            Nodes with at most this many targets become leaves (>= 1).
        seed : int or numpy.random.Generator, default 0
            Seed of k-means++ seeding and subsampling; also seeds the
            generator that later :meth:`rebuild` calls draw from.
        kmeans_iters : int, default 4
            Lloyd iterations per level (>= 0).

        Returns
        -------
        Tree
            A tree satisfying I1-I4.
        """
        branching, leaf_size = _check_branching_leaf(branching, leaf_size)
        kmeans_iters = check_int(kmeans_iters, "kmeans_iters", low=0)
        if isinstance(seed, np.random.Generator):
            rng = seed
        else:
            rng = np.random.default_rng(check_int(seed, "seed", low=0))
        z = _copy_points(points, "points", None)
        t = cls()
        t.branching, t.leaf_size, t.kmeans_iters, t._rng = branching, leaf_size, kmeans_iters, rng
        n, k = z.shape
        t.points = z
        t.dim = k
        t.alive = np.ones(n, dtype=bool)
        t.n_live = n
        t.leaf_of = np.full(n, -1, dtype=np.int64)
        parent, depth, is_leaf, leaf_ids, leaf_nodes = _grow(
            z, np.arange(n, dtype=np.int64), np.array([n], dtype=np.int64),
            np.zeros(1, dtype=np.int64), branching, leaf_size, kmeans_iters, rng,
        )
        t._install(parent, depth, is_leaf, leaf_ids, leaf_nodes, np.zeros((parent.shape[0], k)))
        t._refresh_all()
        return t

    # --------------------------------------------------------------- layout
    def _install(
        self,
        parent: np.ndarray,
        depth: np.ndarray,
        is_leaf: np.ndarray,
        leaf_ids: np.ndarray,
        leaf_nodes: np.ndarray,
        rep: np.ndarray,
        radius: np.ndarray | None = None,
    ) -> None:
        """Renumber nodes breadth-first and set every structural array.

        ``parent`` may list nodes in any order as long as parents come before
        their children's level is processed (depth is given). Children of a
        node end up consecutive, ordered by their old number.
        """
        m = parent.shape[0]
        # Breadth-first renumbering: sort by depth, then by the NEW number of
        # the parent (known once the previous level is numbered), then old id.
        new_of_old = np.full(m, -1, dtype=np.int64)
        by_depth = np.argsort(depth, kind="stable")
        dsorted = depth[by_depth]
        bounds = np.flatnonzero(np.diff(dsorted)) + 1
        levels = np.split(by_depth, bounds)
        nxt = 0
        for lvl in levels:
            p = parent[lvl]
            pnew = np.where(p >= 0, new_of_old[np.maximum(p, 0)], -1)
            o = np.lexsort((lvl, pnew))
            new_of_old[lvl[o]] = np.arange(nxt, nxt + lvl.shape[0])
            nxt += lvl.shape[0]
        old_of_new = np.empty(m, dtype=np.int64)
        old_of_new[new_of_old] = np.arange(m)
        p_old = parent[old_of_new]
        self.parent = np.where(p_old >= 0, new_of_old[np.maximum(p_old, 0)], -1)
        self.depth = depth[old_of_new].astype(np.int64)
        self.is_leaf = is_leaf[old_of_new].copy()
        self.rep = rep[old_of_new].copy()
        self.radius = np.zeros(m) if radius is None else radius[old_of_new].copy()
        nchild = np.bincount(self.parent[1:], minlength=m) if m > 1 else np.zeros(m, dtype=np.int64)
        self.child_ptr = np.concatenate([[0], np.cumsum(nchild)]).astype(np.int64)
        self.child_idx = np.arange(1, m, dtype=np.int64)
        self.leaf_of = np.full(self.points.shape[0], -1, dtype=np.int64)
        self.leaf_of[leaf_ids] = new_of_old[leaf_nodes]
        self._reindex()

    def _levels(self) -> list[slice]:
        """Node slices of each depth (nodes are stored breadth-first)."""
        h = int(self.depth[-1]) if self.depth.shape[0] else -1
        b = np.searchsorted(self.depth, np.arange(h + 2))
        return [slice(int(b[i]), int(b[i + 1])) for i in range(h + 1)]

    def _reindex(self) -> None:
        """Recompute ``count``, ``start``, ``stop`` and ``order`` from ``leaf_of`` (O(N))."""
        m = self.parent.shape[0]
        live = np.flatnonzero(self.alive)
        count = np.bincount(self.leaf_of[live], minlength=m).astype(np.int64)
        levels = self._levels()
        for sl in reversed(levels[1:]):  # children are consecutive and sorted by parent
            count += np.bincount(self.parent[sl], weights=count[sl], minlength=m).astype(np.int64)
        start = np.zeros(m, dtype=np.int64)
        for sl in levels[1:]:
            c = count[sl]
            excl = np.cumsum(c) - c  # exclusive prefix over the level
            first = self.child_idx[self.child_ptr[self.parent[sl]]] - sl.start  # first sibling, level-relative
            start[sl] = start[self.parent[sl]] + excl - excl[first]
        self.count = count
        self.start = start
        self.stop = start + count
        self.order = live[np.argsort(start[self.leaf_of[live]], kind="stable")]
        self.n_live = int(live.shape[0])

    # --------------------------------------------------------------- refresh
    def _leaf_stats(self) -> None:
        """Leaf reps (centroids) and radii (max distance) from the live points, in blocks."""
        leaves = np.flatnonzero(self.is_leaf & (self.count > 0))
        leaves = leaves[np.argsort(self.start[leaves], kind="stable")]
        if leaves.shape[0] == 0:
            return
        cum = self.stop[leaves]
        # Blocks of whole leaves holding about _BLOCK targets each.
        cut = np.searchsorted(cum, np.arange(_BLOCK, int(cum[-1]), _BLOCK), side="left")
        edges = np.unique(np.concatenate([[0], cut + 1, [leaves.shape[0]]]))
        edges = edges[edges <= leaves.shape[0]]
        for a, bnd in zip(edges[:-1], edges[1:]):
            lv = leaves[a:bnd]
            lo, hi = int(self.start[lv[0]]), int(self.stop[lv[-1]])
            x = self.points[self.order[lo:hi]]
            offs = self.start[lv] - lo
            cnt = self.count[lv]
            r = np.add.reduceat(x, offs, axis=0) / cnt[:, None]
            self.rep[lv] = r
            dist = row_distances(x, np.repeat(r, cnt, axis=0))
            self.radius[lv] = np.maximum.reduceat(dist, offs)

    def _nest_upwards(self, levels: list[slice]) -> None:
        """Internal reps = count-weighted means of children; nested radii (I4), bottom-up."""
        for sl_parent, sl_child in zip(reversed(levels[:-1]), reversed(levels[1:])):
            ch = np.arange(sl_child.start, sl_child.stop)
            live_ch = ch[self.count[ch] > 0]
            if live_ch.shape[0] == 0:
                continue
            p = self.parent[live_ch]
            w = self.count[live_ch].astype(np.float64)
            firsts = np.flatnonzero(np.concatenate([[True], p[1:] != p[:-1]]))
            pv = p[firsts]
            sums = np.add.reduceat(self.rep[live_ch] * w[:, None], firsts, axis=0)
            self.rep[pv] = sums / self.count[pv][:, None]
            reach = row_distances(self.rep[live_ch], self.rep[p]) + self.radius[live_ch]
            self.radius[pv] = np.maximum.reduceat(reach, firsts)

    def _refresh_all(self) -> None:
        empty = self.count == 0
        self.radius[empty] = 0.0
        self._leaf_stats()
        self._nest_upwards(self._levels())
        self.nested = True

    def refresh(self) -> None:
        """Recompute every representative and the nested radii, bottom-up.

        Leaves get the centroid of their live targets and the exact covering
        radius; internal nodes the count-weighted mean of their non-empty
        children and ``radius[v] = max_c ||r_c - r_v|| + radius[c]`` (I4).
        Empty nodes keep their representative and get radius 0. The node
        structure is unchanged. Vectorised level by level.
        """
        self._refresh_all()

    # -------------------------------------------------------------- checking
    def containment_tolerance(self) -> np.ndarray:
        """Per-node slack allowed by :meth:`check_invariants` for I3 and I4.

        ``tol_v = 4 * (height + 2) * (k + 4) * eps * radius[v]``. Every radius
        and checked distance comes from :func:`row_distances`, whose error is
        relative to the distance itself (about (k/2 + 2) eps); a nested radius
        accumulates one such error and one addition per level, and the
        triangle inequality in I4 => I3 chains them over at most
        ``height + 1`` levels. The tolerance is relative to rho_v, not to
        the scale of the points, so for points of norm 1e4 and radius 1e-3 it
        is ~1e-15, far below a 1% change of any radius.
        """
        h = int(self.depth.max()) if self.depth.shape[0] else 0
        eps = np.finfo(np.float64).eps
        return 4.0 * (h + 2) * (self.dim + 4) * eps * self.radius

    def check_invariants(self) -> None:
        """Check the array layout and I1-I4 (I4 only if :attr:`nested`).

        Raises
        ------
        InvariantError
            (an ``AssertionError``) naming the first violating node or target
            and the numbers involved.
        """

        def fail(msg: str) -> None:
            raise InvariantError(msg)

        m = self.parent.shape[0]
        cap = self.points.shape[0]
        k = self.dim
        # ---- layout
        for name, arr, shape, kind in [
            ("points", self.points, (cap, k), "f"), ("alive", self.alive, (cap,), "b"),
            ("rep", self.rep, (m, k), "f"), ("radius", self.radius, (m,), "f"),
            ("count", self.count, (m,), "i"), ("parent", self.parent, (m,), "i"),
            ("child_ptr", self.child_ptr, (m + 1,), "i"), ("child_idx", self.child_idx, (max(m - 1, 0),), "i"),
            ("depth", self.depth, (m,), "i"), ("is_leaf", self.is_leaf, (m,), "b"),
            ("order", self.order, (self.n_live,), "i"), ("start", self.start, (m,), "i"),
            ("stop", self.stop, (m,), "i"), ("leaf_of", self.leaf_of, (cap,), "i"),
        ]:
            if arr.shape != shape or arr.dtype.kind != kind:
                fail(f"layout: {name} has shape {arr.shape} dtype {arr.dtype}, expected {shape} kind {kind!r}")
        if m == 0 or self.parent[0] != -1 or self.depth[0] != 0:
            fail("layout: node 0 must be the root (parent -1, depth 0)")
        if int(self.alive.sum()) != self.n_live:
            fail(f"layout: n_live = {self.n_live} but {int(self.alive.sum())} targets are alive")
        if not (np.isfinite(self.rep).all() and np.isfinite(self.radius).all() and (self.radius >= 0).all()):
            bad = int(np.flatnonzero(~(np.isfinite(self.radius) & (self.radius >= 0)) | ~np.isfinite(self.rep).all(1))[0])
            fail(f"layout: node {bad} has a non-finite representative or a negative/non-finite radius {self.radius[bad]}")
        # ---- structure (parent / children / depth)
        nodes = np.arange(m)
        for v in np.flatnonzero((self.parent[1:] < 0) | (self.parent[1:] >= nodes[1:]))[:1] + 1:
            fail(f"structure: node {v} has parent {self.parent[v]} (must be an earlier node)")
        for c in np.flatnonzero(self.depth[1:] != self.depth[self.parent[1:]] + 1)[:1] + 1:
            fail(f"structure: node {c} has depth {self.depth[c]} but its parent {self.parent[c]} has depth {self.depth[self.parent[c]]}")
        ptr = self.child_ptr
        if ptr[0] != 0 or ptr[-1] != m - 1 or (np.diff(ptr) < 0).any():
            fail(f"structure: child_ptr must rise from 0 to {m - 1}, got {ptr[0]}..{ptr[-1]}")
        if not np.array_equal(np.sort(self.child_idx), nodes[1:]):
            fail("structure: child_idx must list every non-root node exactly once")
        cp_parent = np.repeat(nodes, np.diff(ptr))
        for i in np.flatnonzero(self.parent[self.child_idx] != cp_parent)[:1]:
            fail(f"structure: child_idx lists node {self.child_idx[i]} under {cp_parent[i]}, "
                 f"but its parent is {self.parent[self.child_idx[i]]}")
        if not np.array_equal(self.child_idx, nodes[1:]):
            fail("structure: nodes must be stored breadth-first (child_idx == arange(1, M))")
        nchild = np.diff(ptr)
        for v in np.flatnonzero(self.is_leaf != (nchild == 0))[:1]:
            fail(f"structure: node {v} has is_leaf={self.is_leaf[v]} but {nchild[v]} children")
        # ---- I1 partition
        live = np.flatnonzero(self.alive)
        dead = np.flatnonzero(~self.alive)
        for y in dead[self.leaf_of[dead] != -1][:1]:
            fail(f"I1: deleted target {y} is still in leaf {self.leaf_of[y]}")
        lf = self.leaf_of[live]
        for y in live[(lf < 0) | (lf >= m)][:1]:
            fail(f"I1: live target {y} has leaf_of = {self.leaf_of[y]}")
        for y in live[~self.is_leaf[lf]][:1]:
            fail(f"I1: live target {y} is assigned to node {self.leaf_of[y]}, which is not a leaf")
        if not np.array_equal(np.sort(self.order), live):
            fail("I1: order is not a permutation of the live targets")
        # ---- I2 counts and descendant ranges
        leafcount = np.bincount(lf, minlength=m)
        for v in np.flatnonzero(self.is_leaf & (leafcount != self.count))[:1]:
            fail(f"I2: leaf {v} has count {self.count[v]} but holds {leafcount[v]} live targets")
        childsum = np.bincount(self.parent[1:], weights=self.count[1:], minlength=m).astype(np.int64)
        for v in np.flatnonzero(~self.is_leaf & (childsum != self.count))[:1]:
            fail(f"I2: node {v} has count {self.count[v]} but its children hold {childsum[v]}")
        for v in np.flatnonzero(self.stop - self.start != self.count)[:1]:
            fail(f"I2: node {v} has stop - start = {self.stop[v] - self.start[v]} but count {self.count[v]}")
        if self.count[0] != self.n_live or self.start[0] != 0:
            fail(f"I2: root count {self.count[0]} / start {self.start[0]} != n_live {self.n_live} / 0")
        pos = np.empty(self.points.shape[0], dtype=np.int64)
        pos[self.order] = np.arange(self.n_live)
        p_live = pos[live]
        for y in live[(p_live < self.start[lf]) | (p_live >= self.stop[lf])][:1]:
            fail(f"I2: target {y} is at position {pos[y]} of order, outside its leaf {self.leaf_of[y]}'s range [{self.start[self.leaf_of[y]]}, {self.stop[self.leaf_of[y]]})")
        c = nodes[1:]
        pr = self.parent[c]
        for v in c[(self.start[c] < self.start[pr]) | (self.stop[c] > self.stop[pr])][:1]:
            fail(f"I2: node {v}'s range [{self.start[v]}, {self.stop[v]}) is outside its parent {self.parent[v]}'s range [{self.start[self.parent[v]]}, {self.stop[self.parent[v]]})")
        # ---- I3 containment, every live target against every ancestor
        tol = self.containment_tolerance()
        anc = lf.copy()
        while anc.shape[0]:
            for lo in range(0, anc.shape[0], _BLOCK):
                a = anc[lo : lo + _BLOCK]
                ys = live[lo : lo + _BLOCK]
                d = row_distances(self.points[ys], self.rep[a])
                bad = np.flatnonzero(d > self.radius[a] + tol[a])
                if bad.shape[0]:
                    i = bad[0]
                    fail(f"I3: target {ys[i]} is at distance {d[i]!r} from node {a[i]}'s representative, "
                         f"radius {self.radius[a[i]]!r} (excess {d[i] - self.radius[a[i]]:.3e}, tol {tol[a[i]]:.3e})")
            keep = self.parent[anc] >= 0
            anc = self.parent[anc[keep]]
            live = live[keep]
        # ---- I4 nesting over non-empty children
        if self.nested:
            ch = c[self.count[c] > 0]
            p = self.parent[ch]
            reach = row_distances(self.rep[ch], self.rep[p]) + self.radius[ch]
            bad = np.flatnonzero(reach > self.radius[p] + tol[p])
            if bad.shape[0]:
                i = bad[0]
                fail(f"I4: node {p[i]} has radius {self.radius[p[i]]!r} < ||r_c - r_v|| + radius[c] = {reach[i]!r} "
                     f"for child {ch[i]} (tol {tol[p[i]]:.3e})")
