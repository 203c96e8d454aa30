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
