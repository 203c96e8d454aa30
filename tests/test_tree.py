"""Unit tests of the tree index (reference/tree.py, proofs/README.md section 3).

The dynamic-soundness state machine (P9) lives in
``proofs/test_p09_dynamic_soundness.py``; here: build on adversarial sets,
counts and order contiguity, rejected calls leave the tree unchanged
(every array compared before/after), memmap input, and that
``check_invariants`` really catches each kind of corruption.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given

from proofs.strategies_tree import make_point_set, point_sets, tree_params
from reference.tree import InvariantError, Tree

PUBLIC = ["points", "alive", "n_live", "dim", "rep", "radius", "count", "parent", "child_ptr", "child_idx",
          "depth", "is_leaf", "order", "start", "stop", "leaf_of", "nested"]


def snapshot(tree: Tree) -> dict:
    return {n: np.array(getattr(tree, n), copy=True) for n in PUBLIC}


def assert_unchanged(before: dict, tree: Tree) -> None:
    for name, arr in before.items():
        now = np.asarray(getattr(tree, name))
        assert arr.shape == now.shape and arr.dtype == now.dtype and np.array_equal(arr, now), (
            f"tree.{name} changed")


def leaf_members(tree: Tree) -> dict[int, list[int]]:
    live = np.flatnonzero(tree.alive)
    out: dict[int, list[int]] = {}
    for y in live.tolist():
        out.setdefault(int(tree.leaf_of[y]), []).append(y)
    return out


def assert_layout(tree: Tree) -> None:
    """Counts and order contiguity, checked the slow obvious way (independent of check_invariants)."""
    members = leaf_members(tree)
    m = tree.parent.shape[0]
    # children lists from parent
    kids: dict[int, list[int]] = {v: [] for v in range(m)}
    for c in range(1, m):
        kids[int(tree.parent[c])].append(c)
    for v in range(m):
        assert list(tree.child_idx[tree.child_ptr[v]:tree.child_ptr[v + 1]]) == kids[v]
        assert tree.is_leaf[v] == (len(kids[v]) == 0)
    # descendant sets by explicit recursion
    def desc(v: int) -> list[int]:
        if tree.is_leaf[v]:
            return sorted(members.get(v, []))
        return sorted(sum((desc(c) for c in kids[v]), []))
    for v in range(m):
        d = desc(v)
        assert tree.count[v] == len(d)
        assert sorted(tree.order[tree.start[v]:tree.stop[v]].tolist()) == d, f"D({v}) is not order[start:stop]"


# --------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------

@given(points=point_sets(max_n=150), params=tree_params())
def test_build_adversarial_sets(points: np.ndarray, params: dict) -> None:
    """Any adversarial set gives a valid tree (I1-I4), leaves within leaf_size, a float64 copy."""
    t = Tree.build(points, **params)
    t.check_invariants()
    assert t.nested
    n = points.shape[0]
    assert t.n_live == n and t.count[0] == n and t.dim == points.shape[1]
    assert t.points.dtype == np.float64 and np.array_equal(t.points, points.astype(np.float64))
    assert t.points is not points
    assert (t.count[t.is_leaf] <= params["leaf_size"]).all()
    assert (t.count[t.is_leaf] >= 1).all(), "build must not create empty leaves"
    # radii are exactly what I3 needs at the leaves: the farthest member
    for v in np.flatnonzero(t.is_leaf)[:20]:
        ids = t.order[t.start[v]:t.stop[v]]
        assert t.radius[v] == np.max(np.linalg.norm(t.points[ids] - t.rep[v], axis=1)) or np.isclose(
            t.radius[v], np.max(np.linalg.norm(t.points[ids] - t.rep[v], axis=1)), rtol=1e-12, atol=0)


@given(points=point_sets(max_n=60, max_dim=3), params=tree_params())
def test_counts_and_order_contiguity(points: np.ndarray, params: dict) -> None:
    t = Tree.build(points, **params)
    assert_layout(t)


def test_build_deterministic_for_a_seed() -> None:
    z = make_point_set("clustered", 500, 4, 3)
    a, b = Tree.build(z, seed=5), Tree.build(z, seed=5)
    for name in PUBLIC:
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("kind", ["all_equal", "duplicates"])
def test_duplicates_terminate_with_small_leaves(kind: str) -> None:
    """k-means cannot separate duplicates: nodes are split by index, leaves stay <= leaf_size."""
    z = make_point_set(kind, 1000, 3, 0)
    t = Tree.build(z, branching=2, leaf_size=3)
    t.check_invariants()
    assert (t.count[t.is_leaf] <= 3).all()
    assert t.depth.max() <= 12  # ceil(log2(1000 / 3)) + 2: balanced index splits
    if kind == "all_equal":
        assert np.all(t.radius <= 1e-12 * np.abs(z).max())


def test_huge_norms_give_local_radii() -> None:
    """A tight cluster at distance 1e4 from the origin: radii reflect the spread (~1e-2), not the norm."""
    rng = np.random.default_rng(0)
    z = 1e4 * np.ones(8) / np.sqrt(8) + rng.normal(scale=1e-2, size=(400, 8))
    t = Tree.build(z, leaf_size=8)
    t.check_invariants()
    assert t.radius[0] < 0.2, t.radius[0]


def test_single_target_and_dimension_one() -> None:
    t = Tree.build(np.array([[3.0]]))
    t.check_invariants()
    assert t.parent.shape == (1,) and t.is_leaf[0] and t.radius[0] == 0.0 and t.order.tolist() == [0]
    t = Tree.build(np.arange(100.0)[:, None], branching=3, leaf_size=2)
    t.check_invariants()
    assert_layout(t)


def test_memmap_input(tmp_path) -> None:
    z = make_point_set("clustered", 3000, 5, 1, np.float32)
    mm = np.memmap(tmp_path / "z.f32", dtype=np.float32, mode="w+", shape=z.shape)
    mm[:] = z
    mm.flush()
    ro = np.memmap(tmp_path / "z.f32", dtype=np.float32, mode="r", shape=z.shape)
    a, b = Tree.build(ro, seed=2), Tree.build(z, seed=2)
    a.check_invariants()
    assert type(a.points) is np.ndarray and a.points.dtype == np.float64  # the tree owns a copy
    for name in PUBLIC:
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize(
    "bad, kwargs, match",
    [
        (np.zeros((0, 3)), {}, "at least one point"),
        (np.zeros((3, 0)), {}, "at least one coordinate"),
        (np.zeros(5), {}, "2-D"),
        (np.zeros((2, 2, 2)), {}, "2-D"),
        (np.array([[0.0, np.nan]]), {}, "finite"),
        (np.array([[0.0, np.inf]]), {}, "finite"),
        (np.array([[1e200, 0.0]]), {}, "1e\\+150"),
        (np.array([["a", "b"]]), {}, "real numeric"),
        (np.array([[1 + 1j]]), {}, "real numeric"),
        (np.ones((4, 2)), {"branching": 1}, "branching"),
        (np.ones((4, 2)), {"branching": 2.5}, "branching"),
        (np.ones((4, 2)), {"branching": True}, "branching"),
        (np.ones((4, 2)), {"leaf_size": 0}, "leaf_size"),
        (np.ones((4, 2)), {"seed": -1}, "seed"),
        (np.ones((4, 2)), {"kmeans_iters": -1}, "kmeans_iters"),
    ],
)
def test_build_rejects_bad_input(bad, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        Tree.build(bad, **kwargs)


# --------------------------------------------------------------------------
# dynamic operations
# --------------------------------------------------------------------------

def small_tree(nested: bool = True) -> Tree:
    z = make_point_set("clustered", 200, 3, 11)
    t = Tree.build(z, branching=3, leaf_size=4, seed=1)
    if not nested:
        t.insert(make_point_set("uniform", 5, 3, 12))
    t.delete([0, 5, 7])
    return t


def test_insert_delete_update_basics() -> None:
    t = small_tree()
    ids = t.insert(np.array([[100.0, 0, 0], [0, 0, -100.0]]))
    assert ids.tolist() == [200, 201] and t.n_live == 199 and not t.nested
    t.check_invariants()
    assert_layout(t)
    assert np.array_equal(t.points[200], [100.0, 0, 0])
    t.delete(ids)
    assert t.n_live == 197 and (t.leaf_of[ids] == -1).all() and not t.alive[ids].any()
    t.check_invariants()
    assert_layout(t)
    old_radius = t.radius.copy()
    t.update([1, 2], np.array([[50.0, 50, 50], [-1, -1, -1]]))
    t.check_invariants()
    assert (t.radius >= old_radius).all(), "update may only enlarge radii"
    assert np.array_equal(t.points[[1, 2]], [[50.0, 50, 50], [-1, -1, -1]])


def test_insert_float32_and_int_points_are_copied_as_float64() -> None:
    t = small_tree()
    ids = t.insert(np.array([[1, 2, 3]], dtype=np.int32))
    ids2 = t.insert(np.array([[0.5, 0.25, 0.125]], dtype=np.float32))
    assert t.points.dtype == np.float64
    assert np.array_equal(t.points[ids[0]], [1.0, 2.0, 3.0]) and np.array_equal(t.points[ids2[0]], [0.5, 0.25, 0.125])
    t.check_invariants()


def test_delete_keeps_nested_and_refresh_restores_it() -> None:
    t = small_tree()
    assert t.nested
    t.delete([1, 2, 3])
    assert t.nested
    t.check_invariants()
    t.update([4], np.array([[9.0, 9.0, 9.0]]))
    assert not t.nested
    t.refresh()
    assert t.nested
    t.check_invariants()


def test_overflowing_leaf_is_split_by_rebuild() -> None:
    t = small_tree()
    t.insert(np.tile(t.points[10], (40, 1)) + 1e-3 * np.arange(40)[:, None])
    assert t.count[t.is_leaf].max() > t.leaf_size  # insert does not split
    t.check_invariants()
    t.rebuild(1)
    t.check_invariants()
    assert t.count[t.is_leaf].max() <= t.leaf_size and t.nested
    assert_layout(t)


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_rebuild_keeps_live_set_and_drops_empty_nodes(depth: int) -> None:
    t = small_tree()
    t.delete(np.flatnonzero(t.alive)[:120])
    live = np.flatnonzero(t.alive)
    pts = t.points.copy()
    d = min(depth, int(t.depth.max()))
    t.rebuild(d)
    t.check_invariants()
    assert np.array_equal(np.flatnonzero(t.alive), live) and np.array_equal(t.points, pts)
    assert (t.count > 0).all(), "rebuild drops empty nodes"
    assert_layout(t)


def test_delete_down_to_one_target_and_refuse_the_last() -> None:
    t = small_tree()
    live = np.flatnonzero(t.alive)
    t.delete(live[1:])
    t.check_invariants()
    assert t.n_live == 1 and t.order.tolist() == [live[0]]
    t.refresh()
    t.check_invariants()
    t.rebuild(0)
    t.check_invariants()
    assert t.parent.shape == (1,)
    before = snapshot(t)
    with pytest.raises(ValueError, match="at least one"):
        t.delete([live[0]])
    assert_unchanged(before, t)


BAD_CALLS = {
    "insert NaN": lambda t: t.insert(np.array([[0.0, np.nan, 0.0]])),
    "insert inf": lambda t: t.insert(np.array([[0.0, -np.inf, 0.0]])),
    "insert wrong dim": lambda t: t.insert(np.zeros((2, 4))),
    "insert 1-D": lambda t: t.insert(np.zeros(3)),
    "insert empty": lambda t: t.insert(np.zeros((0, 3))),
    "insert huge": lambda t: t.insert(np.full((1, 3), 1e160)),
    "insert strings": lambda t: t.insert(np.array([["a", "b", "c"]])),
    "delete unknown": lambda t: t.delete([10_000]),
    "delete negative": lambda t: t.delete([-1]),
    "delete deleted": lambda t: t.delete([0]),
    "delete deleted among live": lambda t: t.delete([1, 2, 5]),
    "delete repeated": lambda t: t.delete([1, 1]),
    "delete empty": lambda t: t.delete([]),
    "delete bool mask": lambda t: t.delete(np.ones(3, dtype=bool)),
    "delete float ids": lambda t: t.delete([1.5]),
    "delete 2-D ids": lambda t: t.delete([[1, 2]]),
    "delete all": lambda t: t.delete(np.flatnonzero(t.alive)),
    "update shape mismatch": lambda t: t.update([1, 2], np.zeros((3, 3))),
    "update wrong dim": lambda t: t.update([1], np.zeros((1, 2))),
    "update NaN": lambda t: t.update([1, 2], np.array([[0.0, 0, 0], [np.nan, 0, 0]])),
    "update deleted": lambda t: t.update([0], np.zeros((1, 3))),
    "update repeated": lambda t: t.update([1, 1], np.zeros((2, 3))),
    "update unknown": lambda t: t.update([999], np.zeros((1, 3))),
    "rebuild negative": lambda t: t.rebuild(-1),
    "rebuild too deep": lambda t: t.rebuild(int(t.depth.max()) + 1),
    "rebuild float": lambda t: t.rebuild(1.0),
}


@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_rejected_calls_leave_tree_unchanged(name: str, nested: bool) -> None:
    t = small_tree(nested)
    before = snapshot(t)
    with pytest.raises(ValueError):
        BAD_CALLS[name](t)
    assert_unchanged(before, t)
    t.check_invariants()


# --------------------------------------------------------------------------
# check_invariants catches corruption (names the node and the numbers)
# --------------------------------------------------------------------------

def corrupt_radius(t: Tree) -> int:
    v = int(np.flatnonzero(t.is_leaf & (t.count > 1))[0])
    t.radius[v] *= 0.99
    return v


def corrupt_internal_radius(t: Tree) -> int:
    v = int(np.flatnonzero(~t.is_leaf)[-1])
    t.radius[v] *= 0.99
    return v


def corrupt_count(t: Tree) -> int:
    v = int(np.flatnonzero(t.is_leaf & (t.count > 0))[0])
    t.count[v] += 1
    return v


def corrupt_stop(t: Tree) -> int:
    v = int(np.flatnonzero(t.count > 1)[-1])
    t.stop[v] -= 1
    return v


def corrupt_order(t: Tree) -> int:
    leaves = np.flatnonzero(t.is_leaf & (t.count > 0))
    a, b = t.start[leaves[0]], t.start[leaves[-1]]
    t.order[[a, b]] = t.order[[b, a]]
    return int(t.order[b])


def corrupt_leaf_of(t: Tree) -> int:
    y = int(np.flatnonzero(t.alive)[0])
    t.leaf_of[y] = 0  # the root is not a leaf
    return y


def corrupt_rep_shift(t: Tree) -> int:
    v = int(np.flatnonzero(t.is_leaf & (t.count > 1))[0])
    t.rep[v] += t.radius[v] * 0.5
    return v


@pytest.mark.parametrize("corrupt, invariant", [
    (corrupt_radius, "I3"), (corrupt_internal_radius, "I"), (corrupt_count, "I2"), (corrupt_stop, "I2"),
    (corrupt_order, "I2"), (corrupt_leaf_of, "I1"), (corrupt_rep_shift, "I3"),
])
def test_check_invariants_catches_corruption(corrupt, invariant: str) -> None:
    t = small_tree()
    t.check_invariants()
    what = corrupt(t)
    with pytest.raises(InvariantError, match=invariant) as info:
        t.check_invariants()
    assert str(what) in str(info.value), f"the message should name {what}: {info.value}"
    assert isinstance(info.value, AssertionError)


def test_i4_checked_only_when_nested() -> None:
    t = small_tree()
    v = int(np.flatnonzero(~t.is_leaf & (t.count > 0))[-1])
    c = t.child_idx[t.child_ptr[v]]
    # Move the child's representative away but keep its own I3 by enlarging its radius:
    # I3 still holds everywhere below, only nesting (I4) at v breaks.
    t.radius[c] += 10 * t.radius[v] + 1.0
    assert t.nested
    with pytest.raises(InvariantError, match="I4"):
        t.check_invariants()
    t.nested = False  # e.g. after an update: I4 is not promised
    t.check_invariants()


def test_tolerance_is_relative_to_radius() -> None:
    """The containment slack is far below a 1% change of any radius (so the tests above are meaningful)."""
    t = Tree.build(make_point_set("huge", 500, 8, 4), leaf_size=4)
    tol = t.containment_tolerance()
    assert (tol <= 1e-10 * t.radius).all()


def _i2_sibling_pair(t: Tree) -> tuple[int, int]:
    """Two internal siblings (v < w) below a non-root internal node."""
    for p in np.flatnonzero(~t.is_leaf)[1:]:
        ch = t.child_idx[t.child_ptr[p]:t.child_ptr[p + 1]]
        inner = ch[~t.is_leaf[ch] & (t.count[ch] > 1)]
        if inner.size >= 2:
            return int(inner[0]), int(inner[1])
    raise AssertionError("test tree has no two internal siblings")


def corrupt_nan_radius(t: Tree) -> tuple[int, str]:
    v = int(np.flatnonzero(t.is_leaf & (t.count > 1))[0])
    t.radius[v] = np.nan  # NaN compares False: only the finiteness check sees it
    return v, "layout: node"


def corrupt_inf_radius(t: Tree) -> tuple[int, str]:
    v = int(np.flatnonzero(~t.is_leaf)[2])
    t.radius[v] = np.inf
    return v, "layout: node"


def corrupt_negative_radius_of_empty_node(t: Tree) -> tuple[int, str]:
    v = int(np.flatnonzero(t.count == 0)[0])  # no target and no non-empty child to check it against
    t.radius[v] = -1.0
    return v, "negative"


def corrupt_nan_rep(t: Tree) -> tuple[int, str]:
    v = int(np.flatnonzero(t.is_leaf & (t.count > 1))[1])
    t.rep[v, 0] = np.nan
    return v, "layout: node"


def corrupt_child_ptr_end(t: Tree) -> tuple[int, str]:
    t.child_ptr[-1] += 1
    return t.parent.shape[0] - 1, "child_ptr must rise from 0"


def corrupt_child_ptr_order(t: Tree) -> tuple[int, str]:
    v = int(np.flatnonzero(~t.is_leaf)[1])
    t.child_ptr[v + 1] = t.child_ptr[v] - 1  # decreasing
    return t.parent.shape[0] - 1, "child_ptr must rise from 0"


def corrupt_deleted_target_in_leaf(t: Tree) -> tuple[int, str]:
    y = 5  # deleted by small_tree()
    assert not t.alive[y]
    t.leaf_of[y] = int(np.flatnonzero(t.is_leaf & (t.count > 0))[0])
    return y, "I1: deleted target 5 is still in leaf"


def corrupt_internal_count(t: Tree) -> tuple[int, str]:
    """Move one unit of count between two internal siblings: their parent's sum and every
    leaf count still agree, only the internal-node count check sees it."""
    v, w = _i2_sibling_pair(t)
    t.count[v] += 1
    t.count[w] -= 1
    return v, f"I2: node {v} has count {t.count[v]} but its children hold {t.count[v] - 1}"


@pytest.mark.parametrize("corrupt", [
    corrupt_nan_radius, corrupt_inf_radius, corrupt_negative_radius_of_empty_node, corrupt_nan_rep,
    corrupt_child_ptr_end, corrupt_child_ptr_order, corrupt_deleted_target_in_leaf, corrupt_internal_count,
])
def test_check_invariants_catches_corruption_no_other_check_sees(corrupt) -> None:
    """One corruption each, of a kind that every check but one lets through (NaN compares
    False, an empty node is checked against nothing, a dead row is in no range): the
    InvariantError must come from that check and name the node / target."""
    t = small_tree()
    t.check_invariants()
    what, message = corrupt(t)
    with pytest.raises(InvariantError, match=message) as info:
        t.check_invariants()
    assert str(what) in str(info.value), f"the message should name {what}: {info.value}"


# --------------------------------------------------------------------------
# insert follows the documented descent; the blocked k-means path
# --------------------------------------------------------------------------

def _nearest_child_descent(t: Tree, z: np.ndarray) -> tuple[int, bool]:
    """Leaf reached from the root by moving to the child with the nearest representative
    (first child on ties); also whether some step took the last child of its parent."""
    v, took_last = 0, False
    while not t.is_leaf[v]:
        ch = t.child_idx[t.child_ptr[v]:t.child_ptr[v + 1]]
        d = [float(np.sum((z - t.rep[c]) ** 2)) for c in ch]
        j = int(np.argmin(d))
        took_last |= j == len(ch) - 1
        v = int(ch[j])
    return v, took_last


def test_insert_goes_to_the_leaf_of_the_nearest_child_descent() -> None:
    """Tree.insert: "each point descends greedily from the root to the child with the
    nearest representative". Points near every node's representative (so that every
    child, the last ones included, wins somewhere) and random points."""
    z = make_point_set("clustered", 400, 3, 4)
    t = Tree.build(z, branching=4, leaf_size=6, seed=2)
    rng = np.random.default_rng(0)
    new = np.vstack([t.rep + 1e-3 * rng.normal(size=t.rep.shape), rng.uniform(z.min(0), z.max(0), (200, 3))])
    want = [_nearest_child_descent(t, p) for p in new]
    assert sum(last for _, last in want) > 50
    ids = t.insert(new)
    np.testing.assert_array_equal(t.leaf_of[ids], [leaf for leaf, _ in want])
    t.check_invariants()


def test_nearest_centers_blocked_path_equals_brute_force(monkeypatch) -> None:
    """Segments longer than the row block (2^15; here patched to 16) are scored block by
    block: the labels must still be the argmin of ||z - c_j|| within each segment."""
    import reference.tree as tree_module

    monkeypatch.setattr(tree_module, "_BLOCK", 16)
    rng = np.random.default_rng(1)
    points = rng.normal(size=(300, 3))
    lens = np.array([70, 5, 16, 17, 100, 1, 33])  # above, below and at the block size
    rows = rng.permutation(300)[: lens.sum()]
    starts = np.cumsum(lens) - lens
    centers = rng.normal(size=(lens.size, 4, 3))
    got = tree_module._nearest_centers(points, rows, starts, lens, centers)
    seg = np.repeat(np.arange(lens.size), lens)
    d = np.linalg.norm(points[rows][:, None, :] - centers[seg], axis=2)
    np.testing.assert_array_equal(got, np.argmin(d, axis=1))


def test_build_with_blocked_passes_equals_the_unblocked_build(monkeypatch) -> None:
    """Every pass over the targets works in blocks of _BLOCK rows (2^15) and a node with
    more targets than that goes through the blocked k-means path. Patching the block
    down to 37 rows sends every large node through it: the tree must be bitwise the
    same as the one built with whole nodes in one block."""
    import reference.tree as tree_module

    z = make_point_set("clustered", 3000, 5, 1)
    want = Tree.build(z, branching=4, leaf_size=8, seed=3)
    assert want.count.max() > 37
    monkeypatch.setattr(tree_module, "_BLOCK", 37)
    got = Tree.build(z, branching=4, leaf_size=8, seed=3)
    for name in PUBLIC:
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
    got.check_invariants()
