"""The tree index over target vectors z_y (proofs/README.md section 3).

A :class:`Tree` is a hierarchy of nodes v, each with a representative r_v (the
centroid of its descendants), a descendant set D(v) of live targets, a count
n_v = |D(v)| and a certified radius rho_v. Everything is stored in flat NumPy
arrays (no node objects), so that the bounds and samplers of proofs/README.md section 4
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
uniform descendant is ``order[start[v] + j]`` with ``j = rng.integers(0, count[v])``,
exactly uniform in {0, ..., n_v - 1} (proofs/README.md section 4.7).

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

Cost
----
``build`` is O(N k b (iters + 2)) per level. Its memory is the tree's two
float64 N x k arrays (``points`` and ``points_dfs``), O(N) integers, the
O(M k) node arrays and O(_BLOCK b k) temporaries. Memmap input is read in
blocks (it stays on disk); in-RAM float64 input is held three times (input,
``points``, ``points_dfs``), or twice with ``build(..., copy=False)``, which
keeps the input itself as ``points``.
With ``Tree.build(..., storage=dir)`` the two N x k float64 arrays are
memory-mapped files (a disk-backed tree, for N beyond RAM): the build then
allocates only the O(N) integers, the node arrays and the block temporaries,
and queries allocate per block of queries only.
``insert`` and ``delete`` recompute the order in O(N) and ``insert``
reallocates ``points``, so insert in batches. ``update`` is
O(|ids| height k); ``refresh`` O(N k); ``rebuild(d)`` re-clusters all live
targets below depth d (the cost of ``build`` on them). Measured times and
memory at N up to 2e7 are in reference/PERFORMANCE.md (sections "The paper's
scale" and "Profile and design history of the fast path").

References
----------
Monath, Zaheer, Allen, McCallum, "Improving Dual-Encoder Training through
Dynamic Indexes for Negative Mining", AISTATS 2023 (section 3: the tree and
its certified radii).
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import numpy as np
import scipy.sparse

from reference._fastpath import ranges
from reference._validation import MAX_ABS_COORD, InvariantError, as_float_array, as_index_array, check_int

__all__ = ["InvariantError", "Tree", "row_distances"]

# MAX_ABS_COORD (from reference._validation, the one place the limits are set): the
# largest accepted absolute coordinate of a point. Squared distances of vectors with
# entries up to 1e150 stay finite in float64 (1e300 * k < 1.8e308 for any practical
# k), so every radius is a finite number.

#: Rows processed per block in the passes over all targets (bounds the memory
#: of temporaries to about ``_BLOCK * branching * k * 8`` bytes).
_BLOCK = 1 << 15

#: Targets per node on which the Lloyd iterations run (a random subsample of
#: larger nodes; the final assignment always uses all targets).
_KMEANS_SAMPLE = 1024

#: Targets per node on which the k-means++ seeding runs.
_SEED_SAMPLE = 128

#: Depth below which nodes are split by index instead of k-means, so that a
#: pathological point set cannot produce a tree of depth ~N.
_MAX_KMEANS_DEPTH = 48


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


def _nearest_centers(
    points: np.ndarray,
    rows: np.ndarray,
    starts: np.ndarray,
    lens: np.ndarray,
    centers: np.ndarray,
) -> np.ndarray:
    """Index in [0, b) of each target's nearest center among its segment's centers.

    Segment g holds ``points[rows[starts[g]:starts[g] + lens[g]]]`` and has the
    centers ``centers[g]`` (b, k). Returns (n,) int64, the argmin over j of
    ``||c_{g,j}||^2 - 2 <z, c_{g,j}>`` (adding ``||z||^2`` would not change the
    argmin; ties go to the smaller j). Segments are batched by size class
    (powers of two) and padded, so that each batch is one stacked matrix
    product (``np.matmul``); the distances exist only per batch, so memory
    stays at about ``_BLOCK`` rows whatever n is (8 bytes of output per target,
    not 8 b: this matters for the disk-backed build of N beyond RAM).
    """
    n = rows.shape[0]
    cn = np.einsum("gbk,gbk->gb", centers, centers)
    out = np.empty(n, dtype=np.int64)
    big = np.flatnonzero(lens > _BLOCK)
    for g in big:  # at most n / _BLOCK segments: row blocks of one large segment
        for lo in range(int(starts[g]), int(starts[g] + lens[g]), _BLOCK):
            hi = min(int(starts[g] + lens[g]), lo + _BLOCK)
            out[lo:hi] = np.argmin(cn[g] - 2.0 * (points[rows[lo:hi]] @ np.ascontiguousarray(centers[g].T)), axis=1)
    small = np.flatnonzero(lens <= _BLOCK)
    size_class = np.ceil(np.log2(np.maximum(lens[small], 1))).astype(np.int64)
    for c in np.unique(size_class):
        segs = small[size_class == c]
        L = int(lens[segs].max())
        per = max(1, _BLOCK // L)
        col = np.arange(L, dtype=np.int64)
        for lo in range(0, segs.shape[0], per):
            s = segs[lo : lo + per]
            pos = starts[s][:, None] + np.minimum(col, lens[s][:, None] - 1)  # pad: repeat the last row
            ct = np.ascontiguousarray(centers[s].transpose(0, 2, 1))  # (|s|, k, b); contiguous for BLAS
            dots = np.matmul(points[rows[pos]], ct)  # (|s|, L, b)
            valid = col < lens[s][:, None]
            out[pos[valid]] = np.argmin(cn[s][:, None, :] - 2.0 * dots, axis=2)[valid]
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
    # A random order inside each segment: sort by (segment, uniform key). The
    # first S entries of a segment in that order are its random subsample;
    # sorting the chosen positions back keeps ids ascending (memory locality).
    perm = np.lexsort((rng.random(n), group))
    rank = np.arange(n, dtype=np.int64) - np.repeat(starts, lens)

    def subsample(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        pos = np.sort(perm[rank < size])
        sl = np.minimum(lens, size)
        return work[pos], group[pos], np.cumsum(sl) - sl, sl

    # k-means++ seeding (Arthur & Vassilvitskii 2007) on at most _SEED_SAMPLE
    # targets per segment, one center per round for every segment at once.
    # Squared distances are normalised by their segment total so that one
    # global cumsum serves every segment exactly.
    rows, gs, s_starts, s_lens = subsample(_SEED_SAMPLE)
    centers = np.empty((G, b, k))
    first = s_starts + (rng.random(G) * s_lens).astype(np.int64)
    centers[:, 0] = points[rows[first]]
    d2 = np.empty(rows.shape[0])
    for j in range(1, b + 1):
        for lo in range(0, rows.shape[0], _BLOCK):
            d = points[rows[lo : lo + _BLOCK]] - centers[gs[lo : lo + _BLOCK], j - 1]
            dd = np.einsum("ij,ij->i", d, d)
            d2[lo : lo + _BLOCK] = dd if j == 1 else np.minimum(d2[lo : lo + _BLOCK], dd)
        if j == b:
            break
        tot = np.add.reduceat(d2, s_starts)
        ok = tot > 0
        w = d2 / np.where(ok, tot, 1.0)[gs]
        cs = np.cumsum(w)
        base = cs[s_starts] - w[s_starts]
        u = base + rng.random(G) * np.where(ok, 1.0, 0.0)
        pick = np.clip(np.searchsorted(cs, u, side="right"), s_starts, s_starts + s_lens - 1)
        # Segments whose points all coincide with the chosen centers: any point.
        pick = np.where(ok, pick, s_starts + (j % s_lens))
        centers[:, j] = points[rows[pick]]

    rows, gs, s_starts, s_lens = subsample(_KMEANS_SAMPLE)
    ns = rows.shape[0]
    # Lloyd iterations on the subsample; empty clusters keep their center.
    for _ in range(iters):
        lab = _nearest_centers(points, rows, s_starts, s_lens, centers)
        key = gs * b + lab
        # Cluster sums as a sparse (cluster x target id) one-hot product: reads
        # the rows of ``points`` in place, no gathered copy.
        onehot = scipy.sparse.csr_matrix(
            (np.ones(ns), (key, rows)), shape=(G * b, points.shape[0])
        )
        sums = np.asarray(onehot @ points)
        cnt = np.bincount(key, minlength=G * b).reshape(G, b)
        filled = cnt > 0
        centers[filled] = sums.reshape(G, b, k)[filled] / cnt[filled][:, None]
    return _nearest_centers(points, work, starts, lens, centers)


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
            pos = ranges(starts[leaf], act_lens[leaf])
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


def _check_storage(storage: Any) -> str:
    """Validate ``storage`` (a directory path; created if missing) and return it as an absolute ``str``."""
    if not isinstance(storage, (str, os.PathLike)):
        raise ValueError(f"storage: expected a directory path (str or os.PathLike) or None, got {type(storage).__name__}")
    path = os.path.abspath(os.fspath(storage))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"storage: expected a directory, got the existing non-directory {path!r}")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"storage: cannot create the directory {path!r} ({exc.strerror})") from None
    return path


def _storage_of(arr: np.ndarray) -> str | None:
    """Directory of the file behind ``arr`` if it is a file-backed ``np.memmap`` the tree made, else None."""
    name = getattr(arr, "filename", None) if isinstance(arr, np.memmap) else None
    return None if name is None else os.path.dirname(name)


def _allocate(shape: tuple[int, int], storage: str | None, kind: str) -> np.ndarray:
    """An uninitialised float64 (rows, k) array: in RAM, or a new ``.npy`` file in ``storage`` mapped read-write."""
    if storage is None:
        return np.empty(shape, dtype=np.float64)
    path = os.path.join(storage, f"tree-{kind}-{uuid.uuid4().hex}.npy")
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=shape)


def _release(arr: np.ndarray) -> None:
    """Delete the file behind a tree-made memmap (the mapping itself stays valid until unreferenced)."""
    if _storage_of(arr) is not None:
        arr.flush()
        try:
            os.unlink(arr.filename)
        except OSError:  # already gone, or a platform that refuses to unlink mapped files: leave it
            pass


def _gather_rows(src: np.ndarray, rows: np.ndarray, storage: str | None, kind: str) -> np.ndarray:
    """``src[rows]`` as a new array (in RAM, or a file in ``storage`` filled ``_BLOCK`` rows at a time)."""
    if storage is None:
        return src[rows]
    out = _allocate((rows.shape[0], src.shape[1]), storage, kind)
    for lo in range(0, rows.shape[0], _BLOCK):
        out[lo : lo + _BLOCK] = src[rows[lo : lo + _BLOCK]]
    return out


def _copy_points(points: Any, name: str, dim: int | None, storage: str | None = None,
                 copy: bool = True) -> np.ndarray:
    """Validate ``points`` (N, k) and return a float64 copy, reading in blocks.

    Accepts float32/float64/int arrays and ``np.memmap`` (read ``_BLOCK`` rows
    at a time). Raises ``ValueError`` for wrong shape, empty input, NaN/inf or
    entries beyond :data:`MAX_ABS_COORD`. With ``storage`` (a directory) the
    copy is a new ``.npy`` file there, memory-mapped; a rejected input leaves
    no file behind. With ``copy=False`` (and no ``storage``) an in-RAM,
    C-contiguous, writeable float64 ``points`` (not a memmap) is validated
    in blocks and returned itself; any other input is copied as above.
    """
    arr = as_float_array(points, name, ndim=2, finite=False, allow_empty=True)
    if arr.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one point, got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name}: expected at least one coordinate per point, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name}: expected shape (*, {dim}) to match the tree's dim, got {arr.shape}")
    shared = (not copy and storage is None and arr is points and arr.dtype == np.float64
              and arr.flags.c_contiguous and arr.flags.writeable and not isinstance(arr, np.memmap))
    out = arr if shared else _allocate(arr.shape, storage, "points")
    try:
        for lo in range(0, arr.shape[0], _BLOCK):
            blk = np.asarray(arr[lo : lo + _BLOCK], dtype=np.float64)
            if not np.isfinite(blk).all():
                raise ValueError(f"{name}: expected finite values, got NaN or infinite entries (rows {lo}..)")
            if blk.size and np.abs(blk).max() > MAX_ABS_COORD:
                raise ValueError(
                    f"{name}: expected |entries| <= MAX_ABS_COORD = {MAX_ABS_COORD:g} (squared distances must "
                    "stay finite), "
                    f"got {np.abs(blk).max():g}"
                )
            if not shared:
                out[lo : lo + _BLOCK] = blk
    except BaseException:
        _release(out)
        raise
    return out


class Tree:
    """Tree index with certified radii over target vectors z_y (proofs/README.md section 3).

    Create one with :meth:`Tree.build`. All attributes are plain NumPy arrays,
    read-only for other modules (mutate only through the methods).

    Attributes
    ----------
    points : (capacity, k) float64
        The tree's own copy of the targets; row y is z_y. Rows of deleted
        targets are kept (ids are never reused). A read-write ``np.memmap``
        of a file in :attr:`storage` for a disk-backed tree.
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
    points_dfs : (n_live, k) float64
        ``points[order]``: the live targets in depth-first order, so the
        vectors of D(v) are the consecutive rows ``start[v]:stop[v]``. A
        cache for the samplers' leaf scoring (an extra N x k float64 of
        memory, or of disk for a disk-backed tree), rebuilt whenever
        ``order`` is.
    rep_norm : (M,) float64
        ``||r_v||``, cached for the rounding margins of the samplers;
        recomputed whenever ``rep`` changes.
    start, stop : (M,) int64
    leaf_of : (capacity,) int64
        The leaf holding y, or -1 if y is deleted.
    nested : bool
        Whether I4 is guaranteed (set by build/refresh/rebuild, cleared by
        insert/update; delete keeps it).
    branching, leaf_size, kmeans_iters : int
        Build parameters, reused by :meth:`rebuild`.
    kmeans_rng : numpy.random.Generator
        The generator :meth:`build` drew from; later :meth:`rebuild` calls
        continue its stream.
    """

    root: int = 0

    #: What :mod:`reference.persist` saves of a tree (its file format: a change
    #: here is a new ``persist.FORMAT_VERSION``).
    SAVED_FIELDS = (
        "points", "alive", "n_live", "dim", "rep", "radius", "count", "parent", "child_ptr", "child_idx",
        "depth", "is_leaf", "order", "start", "stop", "leaf_of", "nested", "branching", "leaf_size",
        "kmeans_iters", "kmeans_rng",
    )  # fmt: skip
    #: Caches not saved: :meth:`restore_derived` recomputes them on load.
    DERIVED_FIELDS = ("points_dfs", "rep_norm")

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
        self.points_dfs = np.zeros((0, 0))
        self.rep_norm = np.zeros(0)
        self.start = np.zeros(0, dtype=np.int64)
        self.stop = np.zeros(0, dtype=np.int64)
        self.leaf_of = np.zeros(0, dtype=np.int64)
        self.nested = False
        self.branching = 8
        self.leaf_size = 32
        self.kmeans_iters = 4
        self.kmeans_rng = np.random.default_rng(0)

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
        storage: str | os.PathLike[str] | None = None,
        copy: bool = True,
    ) -> Tree:
        """Build the tree by top-down hierarchical k-means (proofs/README.md section 3).

        Parameters
        ----------
        points : array_like (N, k)
            Target vectors z_y (float32, float64 or int; ``np.memmap`` is read
            in blocks). The tree keeps a float64 copy and a second one in
            depth-first order (:attr:`points_dfs`): for N x k float64 input
            this triples the memory of the points.
        branching : int, default 8
            b, the number of k-means children per node (>= 2).
        leaf_size : int, default 32
            Nodes with at most this many targets become leaves (>= 1).
        seed : int or numpy.random.Generator, default 0
            Seed of k-means++ seeding and subsampling; also seeds the
            generator that later :meth:`rebuild` calls draw from.
        kmeans_iters : int, default 4
            Lloyd iterations per level (>= 0).
        storage : str or os.PathLike, optional
            A directory (created if missing). If given, the tree's two N x k
            float64 arrays (:attr:`points`, :attr:`points_dfs`) are ``.npy``
            files there, memory-mapped, instead of RAM: a disk-backed tree,
            for N beyond RAM. The RAM it needs is then O(N) integers and the
            O(M k) node arrays (``tests/test_tree_storage.py`` runs it with
            the process's data memory capped at 0.9 of the float64 points);
            the operating system's page cache decides how much of the files
            stays in memory. Results are bitwise those of the in-RAM tree.
            Operations that reallocate an
            array (insert, delete, rebuild) write a new file and delete the
            old one; the files of a live tree are its own, so delete the
            directory only when the tree is gone. A tree saved with
            :func:`reference.persist.save_tree` is loaded back into RAM.
        copy : bool, default True
            If False, and ``points`` is an in-RAM, C-contiguous, writeable
            float64 ndarray (not a memmap) and no ``storage`` is given, the
            tree keeps ``points`` itself as :attr:`points` instead of a copy
            (after the same validation): the memory of one N x k copy is
            saved, which decides whether tens of millions of targets fit in
            RAM. The array then belongs to the tree: do not write to it, and
            expect :meth:`update` to write into it (:meth:`insert` moves
            the tree to a new, grown array). Other input is copied whatever
            ``copy`` says.

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
        storage = None if storage is None else _check_storage(storage)
        if not isinstance(copy, (bool, np.bool_)):
            raise ValueError(f"copy: expected True or False, got {copy!r}")
        z = _copy_points(points, "points", None, storage, copy=bool(copy))
        t = cls()
        t.branching, t.leaf_size, t.kmeans_iters, t.kmeans_rng = branching, leaf_size, kmeans_iters, rng
        n, k = z.shape
        t.points = z
        t.dim = k
        t.alive = np.ones(n, dtype=bool)
        t.n_live = n
        t.leaf_of = np.full(n, -1, dtype=np.int64)
        grown = _grow(
            z, np.arange(n, dtype=np.int64), np.array([n], dtype=np.int64),
            np.zeros(1, dtype=np.int64), branching, leaf_size, kmeans_iters, rng,
        )
        t._install(*grown)
        del grown  # the (N,) leaf assignment of _grow, before the refresh's temporaries
        t._refresh_all()
        return t

    @property
    def storage(self) -> str | None:
        """Directory holding the files of a disk-backed tree (see :meth:`build`); None if in RAM."""
        return _storage_of(self.points)

    def restore_derived(self) -> None:
        """Recompute the caches :attr:`points_dfs` (``points[order]``) and :attr:`rep_norm` (``||r_v||``).

        :mod:`reference.persist` calls this after loading the saved fields
        (:attr:`SAVED_FIELDS`). The tree keeps both caches equal to these
        expressions bitwise at all times (``check_invariants`` checks it), so
        the loaded tree's caches are bitwise those of the saved tree.
        """
        old = self.__dict__.pop("points_dfs", None)  # at most one N x k copy in DFS order at a time
        if old is not None:
            _release(old)
            del old
        self.points_dfs = _gather_rows(self.points, self.order, self.storage, "points_dfs")
        self.rep_norm = np.linalg.norm(self.rep, axis=1)

    # --------------------------------------------------------------- layout
    def _install(
        self,
        parent: np.ndarray,
        depth: np.ndarray,
        is_leaf: np.ndarray,
        leaf_ids: np.ndarray,
        leaf_nodes: np.ndarray,
        rep: np.ndarray | None = None,
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
        self.rep = np.zeros((m, self.points.shape[1])) if rep is None else rep[old_of_new].copy()
        self.rep_norm = np.linalg.norm(self.rep, axis=1)
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
        """Recompute ``count``, ``start``, ``stop``, ``order`` and ``points_dfs`` from ``leaf_of`` (O(N))."""
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
        # Drop the old copy before gathering the new one, so that at most one
        # N x k copy in DFS order exists at a time.
        old, self.points_dfs = self.points_dfs, np.zeros((0, self.points.shape[1]))
        _release(old)
        del old
        self.points_dfs = _gather_rows(self.points, self.order, self.storage, "points_dfs")

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
            x = self.points_dfs[lo:hi]
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
            p_all = self.parent[live_ch]
            firsts_all = np.flatnonzero(np.concatenate([[True], p_all[1:] != p_all[:-1]]))
            # Blocks of whole sibling groups, about _BLOCK children each (bounds the (children, k)
            # temporaries; every group is reduced whole, so the results do not depend on the blocks).
            cuts = np.unique(firsts_all[np.searchsorted(firsts_all, np.arange(0, live_ch.shape[0], _BLOCK),
                                                        side="right") - 1])
            for a, b in zip(cuts, np.append(cuts[1:], live_ch.shape[0])):
                lc, p = live_ch[a:b], p_all[a:b]
                firsts = firsts_all[(firsts_all >= a) & (firsts_all < b)] - a
                w = self.count[lc].astype(np.float64)
                pv = p[firsts]
                sums = np.add.reduceat(self.rep[lc] * w[:, None], firsts, axis=0)
                self.rep[pv] = sums / self.count[pv][:, None]
                reach = row_distances(self.rep[lc], self.rep[p]) + self.radius[lc]
                self.radius[pv] = np.maximum.reduceat(reach, firsts)

    def _refresh_all(self) -> None:
        empty = self.count == 0
        self.radius[empty] = 0.0
        self._leaf_stats()
        self._nest_upwards(self._levels())
        self.rep_norm = np.linalg.norm(self.rep, axis=1)
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

    # -------------------------------------------------------------- dynamic
    def _check_ids(self, ids: Any, name: str = "ids") -> np.ndarray:
        """Distinct ids of live targets, or ``ValueError``."""
        ids = as_index_array(ids, name, upper=self.points.shape[0], unique=True)
        dead = ids[~self.alive[ids]]
        if dead.shape[0]:
            raise ValueError(
                f"{name}: expected ids of live targets, got {dead.shape[0]} deleted one(s), e.g. {int(dead[0])}"
            )
        return ids

    def _descend(self, z: np.ndarray) -> np.ndarray:
        """Leaf reached by greedy descent to the nearest child representative, per row of z."""
        P = z.shape[0]
        cur = np.zeros(P, dtype=np.int64)
        while True:
            idx = np.flatnonzero(~self.is_leaf[cur])
            if idx.shape[0] == 0:
                return cur
            v = cur[idx]
            first, last = self.child_ptr[v], self.child_ptr[v + 1] - 1
            width = int((last - first).max()) + 1
            slot = np.minimum(first[:, None] + np.arange(width), last[:, None])  # pad: repeat the last child
            ch = self.child_idx[slot]
            best = np.empty(idx.shape[0], dtype=np.int64)
            step = max(1, _BLOCK // width)
            for lo in range(0, idx.shape[0], step):
                d = z[idx[lo : lo + step], None, :] - self.rep[ch[lo : lo + step]]
                best[lo : lo + step] = np.argmin(np.einsum("pbk,pbk->pb", d, d), axis=1)
            cur[idx] = ch[np.arange(idx.shape[0]), best]

    def _enlarged_radii(self, ids: np.ndarray, z: np.ndarray, leaves: np.ndarray) -> np.ndarray:
        """Radii after enlarging every ancestor of each target to cover it (I3).

        ``radius[v] <- max(radius[v], ||z_y - r_v||)`` for every ancestor v of
        ``leaves[i]`` (including the leaf), where z_y = ``z[i]``; vectorised
        over the targets, one tree level per step. Returns a new array.
        """
        radius = self.radius.copy()
        row = np.arange(ids.shape[0])
        anc = leaves.copy()
        while anc.shape[0]:
            for lo in range(0, anc.shape[0], _BLOCK):
                a = anc[lo : lo + _BLOCK]
                np.maximum.at(radius, a, row_distances(z[row[lo : lo + _BLOCK]], self.rep[a]))
            keep = self.parent[anc] >= 0
            anc, row = self.parent[anc[keep]], row[keep]
        return radius

    def insert(self, points: Any) -> np.ndarray:
        """Insert new targets; return their ids (proofs/README.md section 3).

        Each point descends greedily from the root to the child with the
        nearest representative and is appended to the leaf it reaches. Counts
        and the order are recomputed (I1, I2) and every radius on its path is
        enlarged to cover it (I3). Representatives do not move, so I4 may
        fail until the next :meth:`refresh` or :meth:`rebuild`
        (:attr:`nested` becomes False). Leaves are not split: a leaf may
        exceed ``leaf_size`` until the next :meth:`rebuild`.

        Parameters
        ----------
        points : array_like (P, k)
            New target vectors (P >= 1; k must equal :attr:`dim`).

        Returns
        -------
        ids : (P,) int64
            The new ids, ``capacity .. capacity + P - 1`` (ids are never reused).
        """
        z = _copy_points(points, "points", self.dim)
        leaves = self._descend(z)
        cap = self.points.shape[0]
        ids = np.arange(cap, cap + z.shape[0], dtype=np.int64)
        radius = self._enlarged_radii(ids, z, leaves)
        storage = self.storage
        if storage is None:
            self.points = np.concatenate([self.points, z])
        else:  # a new file of cap + P rows, filled in blocks; then the old file goes
            grown = _allocate((cap + z.shape[0], self.dim), storage, "points")
            for lo in range(0, cap, _BLOCK):
                hi = min(cap, lo + _BLOCK)
                grown[lo:hi] = self.points[lo:hi]
            grown[cap:] = z
            old, self.points = self.points, grown
            _release(old)
            del old
        self.alive = np.concatenate([self.alive, np.ones(z.shape[0], dtype=bool)])
        self.leaf_of = np.concatenate([self.leaf_of, leaves])
        self.radius = radius
        self.nested = False
        self._reindex()
        return ids

    def delete(self, ids: Any) -> None:
        """Delete live targets (proofs/README.md section 3).

        Their rows of ``points`` are kept but marked dead; counts and the
        order are recomputed (I1, I2). Representatives and radii do not
        change, so I3 holds (a subset of a covered set is covered) and I4 is
        kept (it only constrains non-empty children, of which there are now
        fewer). Nodes may become empty (count 0).

        Parameters
        ----------
        ids : array_like of int
            Distinct ids of live targets. Deleting every live target is
            refused with ``ValueError``: a tree always holds at least one.
        """
        ids = self._check_ids(ids)
        if ids.shape[0] >= self.n_live:
            raise ValueError(
                f"ids: cannot delete all {self.n_live} live targets (a tree must keep at least one; "
                "build a new tree instead)"
            )
        self.alive[ids] = False
        self.leaf_of[ids] = -1
        self._reindex()

    def update(self, ids: Any, points: Any) -> None:
        """Move live targets to new vectors, re-certifying I3 cheaply (proofs/README.md section 3).

        Target y keeps its leaf; every radius on its path is enlarged to
        ``max(radius[v], ||z_y_new - r_v||)`` (vectorised over the moved ids,
        one level per step), so I1-I3 hold. Representatives do not move, so
        :attr:`nested` becomes False until :meth:`refresh` / :meth:`rebuild`.

        Parameters
        ----------
        ids : array_like of int (P,)
            Distinct ids of live targets.
        points : array_like (P, k)
            Their new vectors.
        """
        ids = self._check_ids(ids)
        z = _copy_points(points, "points", self.dim)
        if z.shape[0] != ids.shape[0]:
            raise ValueError(f"points: expected {ids.shape[0]} rows (one per id), got {z.shape[0]}")
        radius = self._enlarged_radii(ids, z, self.leaf_of[ids])
        pos = np.empty(self.points.shape[0], dtype=np.int64)
        pos[self.order] = np.arange(self.n_live)  # DFS position of each live id
        self.points[ids] = z
        self.points_dfs[pos[ids]] = z
        self.radius = radius
        self.nested = False

    def rebuild(self, depth: int) -> None:
        """Re-cluster every subtree rooted at ``depth`` from its current points.

        The partial rebuild of proofs/README.md section 3. The frontier is every non-empty
        node at ``depth`` plus every non-empty leaf above it; each frontier
        subtree is regrown by the same vectorised hierarchical k-means as
        :meth:`build` (all subtrees at once, drawing from the tree's
        generator). Internal nodes above ``depth`` keep their place; empty
        nodes are dropped and all nodes are renumbered breadth-first. Then
        every representative and nested radius is recomputed (as
        :meth:`refresh`), so I1-I4 hold. ``rebuild(0)`` is a full rebuild.

        Parameters
        ----------
        depth : int
            0 <= depth <= height (the largest node depth).
        """
        height = int(self.depth.max())
        depth = check_int(depth, "depth", low=0, high=height)
        live = self.count > 0
        frontier = np.flatnonzero(live & ((self.depth == depth) | (self.is_leaf & (self.depth < depth))))
        frontier = frontier[np.argsort(self.start[frontier], kind="stable")]
        top = np.flatnonzero(live & ~self.is_leaf & (self.depth < depth))
        T = top.shape[0]
        new_of_top = np.full(self.parent.shape[0], -1, dtype=np.int64)
        new_of_top[top] = np.arange(T)
        # Frontier ranges partition order in DFS order, so order is the work list.
        g_parent, g_depth, g_leaf, leaf_ids, leaf_nodes = _grow(
            self.points, self.order.copy(), self.count[frontier], self.depth[frontier],
            self.branching, self.leaf_size, self.kmeans_iters, self.kmeans_rng,
        )
        G = frontier.shape[0]
        fp = self.parent[frontier]
        root_parent = np.where(fp >= 0, new_of_top[np.maximum(fp, 0)], -1)
        parent = np.concatenate([
            np.where(self.parent[top] >= 0, new_of_top[np.maximum(self.parent[top], 0)], -1),
            np.where(g_parent >= 0, g_parent + T, np.concatenate([root_parent, np.zeros(g_parent.shape[0] - G, dtype=np.int64)])),
        ])
        depth_all = np.concatenate([self.depth[top], g_depth])
        is_leaf = np.concatenate([np.zeros(T, dtype=bool), g_leaf])
        self._install(parent, depth_all, is_leaf, leaf_ids, leaf_nodes + T)
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

        # ---- parameters (the checks of build; a loaded tree has not been through them)
        try:
            _check_branching_leaf(self.branching, self.leaf_size)
            check_int(self.kmeans_iters, "kmeans_iters", low=0)
            check_int(self.n_live, "n_live", low=1)
            check_int(self.dim, "dim", low=1)
        except ValueError as exc:
            fail(f"parameters: {exc}")
        if not isinstance(self.nested, bool) or not isinstance(self.kmeans_rng, np.random.Generator):
            fail(f"parameters: nested must be a bool and kmeans_rng a Generator, got {type(self.nested).__name__} "
                 f"and {type(self.kmeans_rng).__name__}")
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
            ("points_dfs", self.points_dfs, (self.n_live, k), "f"), ("rep_norm", self.rep_norm, (m,), "f"),
        ]:
            if arr.shape != shape or arr.dtype.kind != kind:
                fail(f"layout: {name} has shape {arr.shape} dtype {arr.dtype}, expected {shape} kind {kind!r}")
        if m == 0 or self.parent[0] != -1 or self.depth[0] != 0:
            fail("layout: node 0 must be the root (parent -1, depth 0)")
        if int(self.alive.sum()) != self.n_live:
            fail(f"layout: n_live = {self.n_live} but {int(self.alive.sum())} targets are alive")
        if not (np.isfinite(self.rep).all() and np.isfinite(self.radius).all() and (self.radius >= 0).all()):
            bad = int(np.flatnonzero(~(np.isfinite(self.radius) & (self.radius >= 0)) | ~np.isfinite(self.rep).all(1))[0])
            fail(f"layout: node {bad} has a non-finite representative or a negative/non-finite radius {float(self.radius[bad])}")
        for lo in range(0, cap, _BLOCK):  # the build's limits on the points (in blocks: may be memory-mapped)
            big = np.abs(self.points[lo : lo + _BLOCK])
            if not (big <= MAX_ABS_COORD).all():  # also NaN
                i = lo + int(np.flatnonzero(~(big <= MAX_ABS_COORD).all(axis=1))[0])
                fail(f"layout: point {i} has a non-finite coordinate or one beyond MAX_ABS_COORD = {MAX_ABS_COORD:g}")
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
                    fail(f"I3: target {ys[i]} is at distance {float(d[i])!r} from node {a[i]}'s representative, "
                         f"radius {float(self.radius[a[i]])!r} (excess {d[i] - self.radius[a[i]]:.3e}, tol {tol[a[i]]:.3e})")
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
                fail(f"I4: node {p[i]} has radius {float(self.radius[p[i]])!r} < ||r_c - r_v|| + radius[c] = {float(reach[i])!r} "
                     f"for child {ch[i]} (tol {tol[p[i]]:.3e})")
        # ---- caches (checked last, so a corrupted point or rep reports I3 / I4 first)
        for lo in range(0, self.n_live, _BLOCK):  # in blocks: the arrays may be memory-mapped files
            differ = (self.points_dfs[lo : lo + _BLOCK] != self.points[self.order[lo : lo + _BLOCK]]).any(axis=1)
            for i in np.flatnonzero(differ)[:1] + lo:
                fail(f"cache: points_dfs row {i} differs from points[order[{i}]] (target {self.order[i]})")
        for v in np.flatnonzero(self.rep_norm != np.linalg.norm(self.rep, axis=1))[:1]:
            fail(f"cache: rep_norm[{v}] = {float(self.rep_norm[v])!r} but ||rep[{v}]|| = {float(np.linalg.norm(self.rep[v]))!r}")
