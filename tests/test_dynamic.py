"""Tests for reference/dynamic.py: the DynamicIndex (proofs/README.md section 5).

Tolerances: 1e-9 relative for deterministic float64 identities (proofs/README.md section 6.14), scaled
by the magnitude of the quantities compared.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from scipy.special import logsumexp

from reference.dynamic import DynamicIndex
from reference.miners import Sizes, memory_accounting, memory_arrays
from reference.nystrom import NystromMap, linear, rbf, select_landmarks
from reference.tree import Tree

TOL = 1e-9


def _unit(X: np.ndarray) -> np.ndarray:
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def _drift(G0: np.ndarray, rng: np.random.Generator, size: float) -> np.ndarray:
    """A smooth non-linear change of the embeddings, as a training step makes."""
    d = G0.shape[1]
    A = np.eye(d) + size * rng.normal(size=(d, d)) / np.sqrt(d)
    return _unit(np.tanh(G0 @ A.T + size * rng.normal(size=d)))


@pytest.fixture
def setup():
    rng = np.random.default_rng(0)
    G0 = _unit(rng.normal(size=(600, 6)))
    L = select_landmarks(G0, 12, method="kmeans++", rng=rng)
    return rng, G0, L


def _assert_points_are_phi(index: DynamicIndex) -> None:
    """The tree's points are phi of the cache under the current map (recomputed from scratch)."""
    ids = index.ids
    want = index.nmap.features(index.cache[ids])
    np.testing.assert_allclose(index.tree.points[ids], want, rtol=0, atol=TOL * max(1.0, np.abs(want).max()))


# -- construction and the per-step map ------------------------------------------


def test_construction_builds_the_tree_over_phi(setup):
    rng, G0, L = setup
    index = DynamicIndex(G0, L, kernel=linear(1.0), beta=3.0)
    index.tree.check_invariants()
    assert index.tree.dim == index.m == 12 and index.n_live == 600
    _assert_points_are_phi(index)
    # W_0 = K^{-1/2} g_0(L): ghat_0 is the Nystrom approximation of the cache (= cache: spanning)
    np.testing.assert_allclose(index.approximate(), G0, rtol=0, atol=TOL)


def test_step_and_queries_give_the_approximate_logits(setup):
    rng, G0, L = setup
    index = DynamicIndex(G0, L, kernel=rbf(1.0), beta=4.0)
    Gt = _drift(G0, rng, 0.3)
    index.step(Gt[L])
    nmap = NystromMap(rbf(1.0)).fit(G0, L)
    ghat = nmap.features(G0) @ nmap.project(Gt[L])  # independent path
    np.testing.assert_allclose(index.approximate(), ghat, rtol=0, atol=TOL)
    F = rng.normal(size=(5, 6))
    psi = index.queries(F)
    np.testing.assert_allclose(psi, 4.0 * F @ index.W.T, rtol=TOL)
    np.testing.assert_allclose(index.logits(F), 4.0 * F @ ghat.T, rtol=0, atol=TOL * 4 * np.abs(F).sum(1).max())
    assert index.steps_since_refresh == 1
    assert index.queries(F[0]).shape == (12,)


def test_step_does_not_touch_the_tree(setup):
    rng, G0, L = setup
    index = DynamicIndex(G0, L, kernel="linear")
    snap = {k: getattr(index.tree, k).copy() for k in ("points", "rep", "radius", "count", "order")}
    for _ in range(5):
        index.step(_drift(G0, rng, 0.5)[L])
    for k, v in snap.items():
        np.testing.assert_array_equal(getattr(index.tree, k), v)


def test_bounds_samplers_and_topk_are_for_the_approximate_softmax(setup):
    rng, G0, L = setup
    index = DynamicIndex(G0, L, kernel=linear(1.0), beta=5.0, leaf_size=16)
    index.step(_drift(G0, rng, 0.4)[L])
    F = _unit(rng.normal(size=(7, 6)))
    a = index.logits(F)
    logz = logsumexp(a, axis=1)
    lo, hi, _ = index.bracket(F, tol=0.3)
    assert np.all(lo <= logz + TOL * 10) and np.all(logz <= hi + TOL * 10) and np.all(hi - lo <= 0.3 + TOL)
    ids, vals = index.topk(F, 5)
    order = np.lexsort((np.broadcast_to(np.arange(a.shape[1]), a.shape), -a), axis=1)[:, :5]
    np.testing.assert_array_equal(ids, order)
    np.testing.assert_allclose(vals, np.take_along_axis(a, order, 1), rtol=0, atol=TOL * 10)
    ids, log_q = index.cut_sample(F, 20, rng, tol=0.3)
    assert ids.shape == (7, 20) and np.all(log_q <= 0) and np.all(ids < 600)
    ids, counters = index.rejection_sample(F, 10, rng, tol=0.3)
    assert ids.shape == (7, 10) and counters["proposals"] >= 70


# -- refresh: repair, not rebuild ----------------------------------------------


@pytest.fixture
def spy(monkeypatch):
    """Count Tree.update / Tree.rebuild calls and forbid Tree.build after construction."""
    calls = {"update": 0, "rebuild": [], "insert": 0}
    orig_update, orig_rebuild, orig_insert = Tree.update, Tree.rebuild, Tree.insert

    def update(self, ids, points):
        calls["update"] += 1
        return orig_update(self, ids, points)

    def rebuild(self, depth):
        calls["rebuild"].append(depth)
        return orig_rebuild(self, depth)

    def insert(self, points):
        calls["insert"] += 1
        return orig_insert(self, points)

    def no_build(*a, **k):
        raise AssertionError("Tree.build called: the index must be repaired, not rebuilt")

    monkeypatch.setattr(Tree, "update", update)
    monkeypatch.setattr(Tree, "rebuild", rebuild)
    monkeypatch.setattr(Tree, "insert", insert)

    def arm():
        monkeypatch.setattr(Tree, "build", classmethod(lambda cls, *a, **k: no_build()))

    calls["arm"] = arm
    return calls


def test_full_refresh_repairs_the_tree_in_place(setup, spy):
    rng, G0, L = setup
    index = DynamicIndex(G0, L, kernel=linear(1.0), beta=2.0, rebuild_depth=1)
    spy["arm"]()
    tree = index.tree
    Gt = _drift(G0, rng, 0.3)
    index.step(Gt[L])
    rec = index.refresh(Gt)
    assert index.tree is tree and spy["update"] == 1 and spy["rebuild"] == [1]
    tree.check_invariants()
    assert tree.nested  # rebuild restores I4
    _assert_points_are_phi(index)
    np.testing.assert_array_equal(index.cache, Gt)
    # right after the refresh ghat is the Nystrom approximation of the new cache: here the cache
    np.testing.assert_allclose(index.approximate(), Gt, rtol=0, atol=TOL)
    assert rec["refreshed"] == 600 and rec["carried"] == 0 and index.steps_since_refresh == 0
    assert index.n_refreshes == 1 and rec["rank"] == 7 and rec["max_move"] > 0


def test_partial_refresh_carries_the_current_approximation(setup, spy):
    rng, G0, L = setup
    index = DynamicIndex(G0, L, kernel=rbf(1.0), beta=2.0)
    spy["arm"]()
    Gt = _drift(G0, rng, 0.3)
    index.step(Gt[L])
    ghat_before = index.approximate()
    ids = np.arange(0, 600, 3)
    rec = index.refresh(Gt[ids], ids, depth=2)
    assert spy["rebuild"] == [2] and rec["refreshed"] == 200 and rec["carried"] == 400
    index.tree.check_invariants()
    _assert_points_are_phi(index)
    rest = np.setdiff1d(np.arange(600), ids)
    np.testing.assert_allclose(index.cache[ids], Gt[ids], rtol=0, atol=0)
    np.testing.assert_allclose(index.cache[rest], ghat_before[rest], rtol=0, atol=TOL)
    # the new anchor is the landmarks' current encodings (P10: ghat_t(l) = G_t(l))
    np.testing.assert_allclose(index.nmap.anchor, Gt[L], rtol=0, atol=1e-8)


def test_refresh_of_a_single_leaf_tree_caps_the_rebuild_depth():
    rng = np.random.default_rng(5)
    G0 = _unit(rng.normal(size=(10, 3)))
    index = DynamicIndex(G0, [0, 3, 7], leaf_size=32)  # the whole tree is one leaf: height 0
    rec = index.refresh(_drift(G0, rng, 0.2))
    assert rec["depth"] == 0
    index.tree.check_invariants()


def test_refresh_with_new_landmarks(setup):
    rng, G0, L = setup
    index = DynamicIndex(G0, L, kernel=linear(1.0))
    Gt = _drift(G0, rng, 0.2)
    L2 = select_landmarks(Gt, 12, method="rls", rng=rng)
    index.refresh(Gt, landmarks=L2)
    np.testing.assert_array_equal(index.landmarks, L2)
    index.tree.check_invariants()
    _assert_points_are_phi(index)
    np.testing.assert_allclose(index.approximate(), Gt, rtol=0, atol=TOL)


def test_add_inserts_without_rebuild(setup, spy):
    rng, G0, L = setup
    index = DynamicIndex(G0, L, kernel=linear(1.0), beta=2.0)
    spy["arm"]()
    Gt = _drift(G0, rng, 0.3)
    index.step(Gt[L])
    new_cur = _drift(_unit(rng.normal(size=(20, 6))), rng, 0.1)
    ids = index.add(new_cur)  # current encodings g_t: phi by least squares on W_t
    assert spy["rebuild"] == [] and spy["update"] == 0 and spy["insert"] == 1
    np.testing.assert_array_equal(ids, np.arange(600, 620))
    index.tree.check_invariants()
    np.testing.assert_allclose(index.approximate(ids), new_cur, rtol=0, atol=1e-8)  # W_t^T spans R^6
    new_old = _unit(rng.normal(size=(3, 6)))
    ids2 = index.add(new_old, current=False)  # anchor-time embeddings: phi from the kernel
    np.testing.assert_allclose(index.tree.points[ids2], index.nmap.features(new_old), rtol=0, atol=TOL)
    assert index.n_live == 623 and index.cache.shape == (623, 6)
    # after a refresh the added targets are part of the cache like any other
    index.refresh(np.vstack([Gt, new_cur, new_old]))
    index.tree.check_invariants()
    _assert_points_are_phi(index)


def test_remove(setup):
    rng, G0, L = setup
    index = DynamicIndex(G0, L)
    victims = np.setdiff1d(np.arange(0, 600, 7), L)
    index.remove(victims)
    assert index.n_live == 600 - victims.size
    index.tree.check_invariants()
    assert not np.isin(index.topk(rng.normal(size=(3, 6)), 50)[0], victims).any()
    with pytest.raises(ValueError, match="landmark"):
        index.remove(L[:1])
    with pytest.raises(ValueError, match="deleted"):
        index.approximate(victims[:1])
    index.refresh(index.approximate())  # rows for the live ids only
    index.tree.check_invariants()


# -- bad input ------------------------------------------------------------------


def test_bad_input_is_rejected_and_leaves_the_index_unchanged(setup):
    rng, G0, L = setup
    index = DynamicIndex(G0, L, kernel=linear(1.0))
    index.step(_drift(G0, rng, 0.2)[L])
    before = (index.W.copy(), index.cache.copy(), index.tree.points.copy(), index.steps_since_refresh)
    cases = [
        (lambda: index.step(G0[L][:, :5]), r"G_L: expected shape \(12, 6\)"),
        (lambda: index.step(G0[:11]), r"G_L: expected shape \(12, 6\)"),
        (lambda: index.step(np.full((12, 6), np.nan)), "G_L: expected finite"),
        (lambda: index.queries(np.ones((3, 5))), "F: expected query encodings"),
        (lambda: index.refresh(G0[:599]), r"G: expected shape \(600, 6\)"),
        (lambda: index.refresh(G0[:2], [5, 5]), "distinct"),
        (lambda: index.refresh(G0[:2], [5, 600]), "ids < 600"),
        (lambda: index.refresh(G0, landmarks=L[:5]), "expected 12 ids"),
        (lambda: index.refresh(G0, landmarks=np.r_[L[:11], L[0]]), "distinct"),
        (lambda: index.refresh(G0, depth=-1), "depth"),
        (lambda: index.add(np.ones((2, 5))), r"G: expected shape \(n, 6\)"),
        (lambda: index.add(np.ones((2, 6)), current="yes"), "current"),
        (lambda: index.approximate([700]), "ids < 600"),
        (lambda: index.topk(np.ones(6), 601), "k"),
    ]
    for call, msg in cases:
        with pytest.raises(ValueError, match=msg):
            call()
    np.testing.assert_array_equal(index.W, before[0])
    np.testing.assert_array_equal(index.cache, before[1])
    np.testing.assert_array_equal(index.tree.points, before[2])
    assert index.steps_since_refresh == before[3]
    for kwargs, msg in (({"beta": 0.0}, "beta"), ({"rebuild_depth": -1}, "rebuild_depth"),
                        ({"kernel": "cosine"}, "kernel")):
        with pytest.raises(ValueError, match=msg):
            DynamicIndex(G0, L, **kwargs)
    with pytest.raises(ValueError, match="landmarks: expected ids < 600"):
        DynamicIndex(G0, [0, 600])
    with pytest.raises(ValueError, match="at most N=600"):
        DynamicIndex(G0, np.arange(601))


def test_singular_landmarks_are_handled_by_the_cutoff(setup):
    rng, G0, L = setup
    G = G0.copy()
    G[L[1]] = G[L[0]]  # two landmarks with the same cached embedding
    index = DynamicIndex(G, L, kernel=rbf(1.0))
    assert index.nmap.rank == 11 and np.isfinite(index.tree.points).all()
    index.tree.check_invariants()


def held_arrays(obj) -> list[np.ndarray]:
    """Every distinct ndarray reachable from ``obj`` through attributes, dicts, lists and tuples.

    An independent count of what an object keeps: it walks the object graph
    and knows nothing of the accounting's inventory. A view is replaced by
    the array that owns its memory, so shared memory is counted once.
    """
    seen: dict[int, np.ndarray] = {}
    visited: set[int] = set()

    def walk(x) -> None:
        if id(x) in visited:
            return
        visited.add(id(x))
        if isinstance(x, np.ndarray):
            while isinstance(x.base, np.ndarray):
                x = x.base
            assert x.base is None, f"array over a foreign buffer {type(x.base)}"
            seen[id(x)] = x
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        elif hasattr(x, "__dict__") and not isinstance(x, type):
            for v in vars(x).values():
                walk(v)

    walk(obj)
    return list(seen.values())


def held_bytes(obj) -> int:
    """Sum of ``.nbytes`` of :func:`held_arrays`."""
    return sum(a.nbytes for a in held_arrays(obj))


def test_memory_accelerator_part_is_independent_of_n(setup):
    """K_LL^{-1/2} and W_t: (m^2 + m d) float64, whatever N; the host part grows with N."""
    rng, G0, L = setup
    small = DynamicIndex(G0[:300], np.arange(12)).memory()
    big = DynamicIndex(G0, np.arange(12)).memory()
    assert small["accelerator_bytes"] == big["accelerator_bytes"] == 8 * (12 * 12 + 12 * 6)
    assert big["host_bytes"] > small["host_bytes"]


def test_memory_is_every_byte_the_index_keeps(setup):
    """memory() host + accelerator = the .nbytes of every array the index object holds (an
    independent walk of the object graph), through add, remove and refresh: capacity grows
    with add and is kept by remove (the live arrays order and points_dfs shrink); a
    refresh's rebuild changes the node count."""
    rng, G0, L = setup
    index = DynamicIndex(G0, L, kernel=rbf(1.0), leaf_size=16)

    def check():
        mem = index.memory()
        assert mem["host_bytes"] + mem["accelerator_bytes"] == held_bytes(index)
        assert mem["accelerator_bytes"] == index.nmap.inv_sqrt.nbytes + index.W.nbytes

    check()
    index.add(_unit(rng.normal(size=(25, 6))))
    assert index.tree.points.shape[0] == index.cache.shape[0] == 625
    check()
    index.remove(np.setdiff1d(np.arange(0, 625, 3), L))
    assert index.tree.order.shape[0] < index.tree.points.shape[0]
    check()
    nodes = index.tree.radius.size
    index.refresh(index.approximate(), depth=0)
    assert index.tree.radius.size != nodes  # the rebuild dropped the emptied nodes
    check()


def test_memory_agrees_with_the_miners_accounting(setup):
    """One inventory: tree_nystrom's host bytes in miners.memory_accounting equal
    DynamicIndex.memory()'s at the same sizes (N, d, m, M), and so do the kept
    accelerator arrays (K_LL^{-1/2}, W_t)."""
    rng, G0, L = setup
    index = DynamicIndex(G0, L, leaf_size=16)
    s = Sizes(n_targets=600, out_dim=6, query_dim=5, target_dim=4, batch_size=8, negatives=3, n_params=100,
              cache_size=10, landmarks=12, leaf_size=16, tree_nodes=index.tree.radius.size)
    mem = index.memory()
    assert memory_accounting("tree_nystrom", s)["host_bytes"] == mem["host_bytes"]
    kept = [a for a in memory_arrays("tree_nystrom", s, "materialised")
            if a.where == "accelerator" and a.when == "kept" and not a.name.startswith("model")]
    assert sum(a.nbytes for a in kept) == mem["accelerator_bytes"]


def test_max_move_is_the_largest_displacement_of_phi(setup):
    """last_refresh["max_move"] = max over live y of ||phi_new(y) - phi_old(y)||, from the
    tree's points before and after (full refresh, then a partial one after a remove)."""
    rng, G0, L = setup
    index = DynamicIndex(G0, L, kernel=rbf(1.0), beta=2.0)
    Gt = _drift(G0, rng, 0.3)
    for step in range(2):
        live = index.ids
        old = index.tree.points[live].copy()
        index.step(Gt[index.landmarks])
        if step == 0:
            rec = index.refresh(Gt)
        else:
            ids = live[::4]
            rec = index.refresh(Gt[ids], ids)
        move = np.linalg.norm(index.tree.points[live] - old, axis=1)
        assert move.max() > 0 and np.count_nonzero(move == move.max()) == 1
        np.testing.assert_allclose(rec["max_move"], move.max(), rtol=1e-12)
        assert index.last_refresh is rec
        index.remove(np.setdiff1d(live[1::5], index.landmarks))
        Gt = _drift(Gt, rng, 0.3)


def test_approximate_and_logits_keep_repeated_ids_in_order(setup):
    """ids may repeat and come in any order: row j is target ids[j] (checked against the
    map recomputed from the cache, an independent path)."""
    rng, G0, L = setup
    index = DynamicIndex(G0, L, kernel=rbf(1.0), beta=3.0)
    Gt = _drift(G0, rng, 0.3)
    index.step(Gt[L])
    ids = np.array([5, 2, 5, 599, 2, 2])
    ghat = index.nmap.features(index.cache[ids]) @ index.nmap.project(Gt[L])
    got = index.approximate(ids)
    assert got.shape == (6, 6)
    np.testing.assert_allclose(got, ghat, rtol=0, atol=TOL)
    np.testing.assert_array_equal(got[0], got[2])
    F = rng.normal(size=(3, 6))
    np.testing.assert_allclose(index.logits(F, ids), 3.0 * F @ ghat.T, rtol=0, atol=TOL * 3 * np.abs(F).sum(1).max())
    np.testing.assert_allclose(index.logits(F[0], ids), 3.0 * F[0] @ ghat.T, rtol=0, atol=TOL * 3 * np.abs(F).sum())
    assert index.approximate([]).shape == (0, 6) and index.logits(F, []).shape == (3, 0)


def test_refresh_rejects_deleted_or_repeated_landmarks_and_changes_nothing(setup):
    rng, G0, L = setup
    index = DynamicIndex(G0, L, kernel=rbf(1.0))
    dead = int(np.setdiff1d(np.arange(600), L)[0])
    index.remove([dead])
    snap = (index.cache.copy(), index.tree.points.copy(), index.W.copy(), index.landmarks.copy(),
            index.nmap.inv_sqrt.copy(), index.n_refreshes, dict(index.last_refresh))
    G = index.approximate()
    for bad, msg in ((np.r_[L[:11], dead], f"landmarks: expected live target ids, got deleted id {dead}"),
                     (np.r_[L[:11], L[3]], "landmarks: expected distinct ids")):
        with pytest.raises(ValueError, match=msg):
            index.refresh(G, landmarks=bad)
    for a, b in zip(snap[:5], (index.cache, index.tree.points, index.W, index.landmarks, index.nmap.inv_sqrt)):
        np.testing.assert_array_equal(a, b)
    assert (index.n_refreshes, index.last_refresh) == snap[5:]


def test_construction_copies_the_callers_cache(setup):
    rng, G0, L = setup
    G = G0.copy()
    index = DynamicIndex(G, L, kernel=rbf(1.0))
    phi = index.tree.points.copy()
    G[...] = 0.0
    np.testing.assert_array_equal(index.cache, G0)
    np.testing.assert_array_equal(index.nmap.anchor, G0[L])
    np.testing.assert_array_equal(index.tree.points, phi)


# -- stateful: invariants after every operation ------------------------------------


class DynamicIndexMachine(RuleBasedStateMachine):
    """Any sequence of step / refresh (all or subset) / add / remove keeps the tree's
    invariants, keeps tree.points == phi(cache), and the bracket holds for the
    approximate softmax."""

    @initialize(seed=st.integers(0, 2**16), kernel=st.sampled_from(["linear", "rbf"]))
    def start(self, seed, kernel):
        self.rng = np.random.default_rng(seed)
        self.G = _unit(self.rng.normal(size=(150, 4)))  # current true encodings
        L = select_landmarks(self.G, 8, method="kmeans++", rng=self.rng)
        self.index = DynamicIndex(self.G, L, kernel=kernel, beta=3.0, leaf_size=8, branching=3)
        self.ids = np.arange(150)
        self.tree = self.index.tree

    @rule(size=st.sampled_from([0.05, 0.3]))
    def train_step(self, size):
        self.G = _drift(self.G, self.rng, size)
        self.index.step(self.G[self.index.landmarks])

    @rule(depth=st.integers(0, 2))
    def refresh_all(self, depth):
        depth = min(depth, int(self.index.tree.depth.max()))
        self.index.step(self.G[self.index.landmarks])
        self.index.refresh(self.G[self.index.ids], depth=depth)
        np.testing.assert_array_equal(self.index.cache[self.index.ids], self.G[self.index.ids])

    @rule(frac=st.sampled_from([0.1, 0.5]))
    def refresh_some(self, frac):
        live = self.index.ids
        ids = self.rng.choice(live, size=max(1, int(frac * live.size)), replace=False)
        self.index.step(self.G[self.index.landmarks])
        self.index.refresh(self.G[ids], ids, depth=0)

    @rule(n=st.integers(1, 5))
    def add(self, n):
        new = _unit(self.rng.normal(size=(n, 4)))
        ids = self.index.add(new)
        self.G = np.vstack([self.G, new])
        assert ids[0] == self.G.shape[0] - n

    @precondition(lambda self: self.index.n_live > 20)
    @rule(n=st.integers(1, 5))
    def remove(self, n):
        cand = np.setdiff1d(self.index.ids, self.index.landmarks)
        self.index.remove(self.rng.choice(cand, size=min(n, cand.size), replace=False))

    @invariant()
    def tree_is_sound_and_certifies_the_approximate_softmax(self):
        if not hasattr(self, "index"):
            return
        assert self.index.tree is self.tree
        self.index.tree.check_invariants()
        F = _unit(self.rng.normal(size=(3, 4)))
        logz = logsumexp(self.index.logits(F), axis=1)
        lo, hi, _ = self.index.bracket(F, tol=0.5)
        assert np.all(lo <= logz + 1e-9) and np.all(logz <= hi + 1e-9)


DynamicIndexMachine.TestCase.settings = settings(
    max_examples=max(10, settings.default.max_examples // 2), stateful_step_count=8, deadline=None
)
test_dynamic_index_state_machine = DynamicIndexMachine.TestCase


@given(st.integers(0, 2**16))
def test_refresh_restores_points_equal_phi(seed):
    rng = np.random.default_rng(seed)
    G0 = _unit(rng.normal(size=(120, 5)))
    index = DynamicIndex(G0, np.arange(10), kernel=rbf(0.7), leaf_size=8)
    Gt = _drift(G0, rng, 0.3)
    index.step(Gt[index.landmarks])
    index.refresh(Gt, depth=1)
    index.tree.check_invariants()
    _assert_points_are_phi(index)
