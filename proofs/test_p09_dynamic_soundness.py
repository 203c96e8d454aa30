"""P9 (proofs/README.md section 6): dynamic soundness of the tree index.

Proof: ``proofs/p09_dynamic_soundness.md``. A Hypothesis
``RuleBasedStateMachine`` builds a tree on an adversarial target set
(``proofs.strategies_tree``) and interleaves ``insert`` / ``delete`` /
``update`` / ``refresh`` / ``rebuild`` and rejected (bad-input) calls. A shadow
model (a dict id -> z_y) records what the sequence implies. After EVERY step
the invariants below are checked, in this order (Hypothesis runs them
sorted by name, hence the numeric prefixes):

``inv1_structure``        ``Tree.check_invariants()`` (I1-I3, and I4 when the tree
                     says it is nested) and ``nested`` is exactly what the
                     operation sequence implies (True after build / refresh /
                     rebuild, False after insert / update, kept by delete).
``inv2_live_set``    the live ids and their vectors equal the shadow model.
``inv3_p1_node_bound`` P1 for every (node, descendant) pair and a random query.
``inv4_bracket_local`` P2 on the root cut and on every depth frontier, computed
                     by a small local helper (independent of reference.bounds),
                     and P3 (refinement) between consecutive frontiers when I4
                     holds.
``inv5_bounds_module`` reference.bounds / reference.sampling on the current tree:
                     the adaptive-cut bracket contains brute-force log Z (P2, P7),
                     rejection-sampler and cut-sampler ids are alive (P6 support),
                     top-k equals brute force (P8).

Tolerances (float64 rounding, proofs/README.md section 6):

- P1: ``1e-12 * ||q|| (||z_y|| + ||r_v||)`` plus the tree's own containment
  tolerance (``Tree.containment_tolerance``, ~1e-14 relative to rho_v). An
  inner product of length k <= 8 has rounding error <= k eps ||q|| ||z||
  ~ 2e-15 ||q|| ||z||; 1e-12 leaves a factor 500 and is still 1e-8 of a 1%
  change of any radius larger than 1e-6 ||z||.
- Brackets: ``1e-9 * (1 + max |term|)`` where the terms are the logits and
  ``log n_v + <q, r_v> +- eps_v``; logsumexp of such terms is exact to a few
  eps of their magnitude.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from scipy.special import logsumexp

from proofs.strategies_tree import point_sets, query_for, seeds, tree_params
from reference.tree import Tree

try:  # written by another engineer; everything below runs without it too
    from reference.bounds import Cut, adaptive_cut, log_partition_bracket
    from reference.sampling import cut_sample, rejection_sample, topk

    HAVE_BOUNDS = True
except ImportError:  # pragma: no cover - only while reference.bounds/sampling do not exist
    HAVE_BOUNDS = False

P1_RTOL = 1e-12
BRACKET_RTOL = 1e-9


# --------------------------------------------------------------------------
# Local helpers (brute force, independent of reference.bounds)
# --------------------------------------------------------------------------

def snapshot(tree: Tree) -> dict:
    """Copies of every public array and scalar of the tree."""
    names = ["points", "alive", "n_live", "dim", "rep", "radius", "count", "parent", "child_ptr",
             "child_idx", "depth", "is_leaf", "order", "start", "stop", "leaf_of", "nested"]
    return {n: np.array(getattr(tree, n), copy=True) for n in names}


def assert_same(before: dict, tree: Tree) -> None:
    after = snapshot(tree)
    for name, arr in before.items():
        assert arr.shape == after[name].shape and np.array_equal(arr, after[name]), (
            f"a rejected call changed tree.{name}")


def node_descendant_pairs(tree: Tree) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (v, y) with y in D(v), from the contiguous ranges of ``order``."""
    v = np.flatnonzero(tree.count > 0)
    n = tree.count[v]
    offs = np.cumsum(n) - n
    pos = np.arange(int(n.sum())) - np.repeat(offs - tree.start[v], n)
    return np.repeat(v, n), tree.order[pos]


def p1_excess(tree: Tree, q: np.ndarray) -> tuple[float, int, int]:
    """Largest ``|a_y - <q,r_v>| - eps_v - tol`` over all pairs (v, y in D(v)); > 0 violates P1."""
    v, y = node_descendant_pairs(tree)
    qn = np.linalg.norm(q)
    a = tree.points[y] @ q
    s = tree.rep[v] @ q
    tol = (P1_RTOL * qn * (np.linalg.norm(tree.points[y], axis=1) + np.linalg.norm(tree.rep[v], axis=1))
           + qn * tree.containment_tolerance()[v])
    excess = np.abs(a - s) - qn * tree.radius[v] - tol
    i = int(np.argmax(excess))
    return float(excess[i]), int(v[i]), int(y[i])


def frontier(tree: Tree, d: int) -> np.ndarray:
    """The non-empty nodes at depth d plus the non-empty leaves above it (a cut)."""
    return np.flatnonzero((tree.count > 0) & ((tree.depth == d) | (tree.is_leaf & (tree.depth < d))))


def local_bracket(tree: Tree, q: np.ndarray, nodes: np.ndarray) -> tuple[float, float, float, float, float]:
    """(lo, hi, log_z_hat, eps_C, scale) of a node cut, straight from proofs/README.md section 4."""
    s = tree.rep[nodes] @ q
    eps = np.linalg.norm(q) * tree.radius[nodes]
    log_n = np.log(tree.count[nodes])
    lo = logsumexp(log_n + s - eps)
    hi = logsumexp(log_n + s + eps)
    hat = logsumexp(log_n + s)
    scale = float(np.max(np.abs(log_n + s) + eps))
    return float(lo), float(hi), float(hat), float(eps.max()), scale


def brute(tree: Tree, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    live = np.flatnonzero(tree.alive)
    a = tree.points[live] @ q
    return live, a, float(logsumexp(a))


# --------------------------------------------------------------------------
# The state machine
# --------------------------------------------------------------------------

class DynamicTreeMachine(RuleBasedStateMachine):
    """Random interleavings of the dynamic operations against a shadow model."""

    def __init__(self) -> None:
        super().__init__()
        self.tree: Tree | None = None
        self.shadow: dict[int, np.ndarray] = {}
        self.expect_nested = True
        self.rng = np.random.default_rng(0)

    # ---- steps
    @initialize(points=point_sets(max_n=60), params=tree_params(), seed=seeds)
    def build(self, points: np.ndarray, params: dict, seed: int) -> None:
        self.tree = Tree.build(points, **params)
        z = points.astype(np.float64)
        self.shadow = {i: z[i] for i in range(z.shape[0])}
        self.expect_nested = True
        self.rng = np.random.default_rng(seed)

    @rule(data=st.data())
    def insert(self, data: st.DataObject) -> None:
        z = data.draw(point_sets(max_n=12, dim=self.tree.dim), label="inserted points")
        ids = self.tree.insert(z)
        assert ids.shape == (z.shape[0],)
        assert not set(ids.tolist()) & set(self.shadow), "insert reused an id"
        for i, row in zip(ids.tolist(), z.astype(np.float64)):
            self.shadow[i] = row
        self.expect_nested = False

    @precondition(lambda self: self.tree is not None and len(self.shadow) >= 2)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        live = sorted(self.shadow)
        ids = data.draw(st.lists(st.sampled_from(live), min_size=1, max_size=min(len(live) - 1, 15), unique=True),
                        label="deleted ids")
        self.tree.delete(np.array(ids))
        for i in ids:
            del self.shadow[i]

    @rule(data=st.data())
    def update(self, data: st.DataObject) -> None:
        live = sorted(self.shadow)
        ids = np.array(data.draw(st.lists(st.sampled_from(live), min_size=1, max_size=min(len(live), 12),
                                          unique=True), label="moved ids"))
        how = data.draw(st.sampled_from(["jitter", "jump", "other set"]), label="move")
        old = self.tree.points[ids]
        scale = max(1.0, float(np.abs(old).max()))
        if how == "jitter":  # small moves, the common case of an encoder step
            z = old + self.rng.normal(scale=1e-3 * scale, size=old.shape)
        elif how == "jump":  # far away: radii must grow a lot
            z = old + self.rng.normal(scale=10.0 * scale, size=old.shape)
        else:
            z = data.draw(point_sets(min_n=ids.shape[0], max_n=ids.shape[0], dim=self.tree.dim),
                          label="new vectors")
        self.tree.update(ids, z)
        for i, row in zip(ids.tolist(), np.asarray(z, dtype=np.float64)):
            self.shadow[i] = row
        self.expect_nested = False

    @rule()
    def refresh(self) -> None:
        self.tree.refresh()
        self.expect_nested = True

    @rule(data=st.data())
    def rebuild(self, data: st.DataObject) -> None:
        depth = data.draw(st.integers(0, int(self.tree.depth.max())), label="rebuild depth")
        self.tree.rebuild(depth)
        self.expect_nested = True

    @rule(data=st.data())
    def rejected_call(self, data: st.DataObject) -> None:
        """A bad call raises ValueError and leaves every array unchanged."""
        t = self.tree
        dead = np.flatnonzero(~t.alive)
        bad_calls = {
            "insert NaN": lambda: t.insert(np.full((2, t.dim), np.nan)),
            "insert wrong dim": lambda: t.insert(np.zeros((1, t.dim + 1))),
            "insert empty": lambda: t.insert(np.zeros((0, t.dim))),
            "delete unknown id": lambda: t.delete([t.points.shape[0]]),
            "delete repeated id": lambda: t.delete([int(t.order[0]), int(t.order[0])]),
            "delete everything": lambda: t.delete(t.order.copy()),
            "update shape mismatch": lambda: t.update(t.order[:1], np.zeros((2, t.dim))),
            "update inf": lambda: t.update(t.order[:1], np.full((1, t.dim), np.inf)),
            "rebuild too deep": lambda: t.rebuild(int(t.depth.max()) + 1),
        }
        if dead.shape[0]:
            bad_calls["delete deleted id"] = lambda: t.delete([int(dead[0])])
            bad_calls["update deleted id"] = lambda: t.update([int(dead[0])], np.zeros((1, t.dim)))
        name = data.draw(st.sampled_from(sorted(bad_calls)), label="bad call")
        before = snapshot(t)
        with pytest.raises(ValueError):
            bad_calls[name]()
        assert_same(before, t)

    # ---- invariants (after every step)
    @invariant()
    def inv1_structure(self) -> None:
        if self.tree is None:
            return
        self.tree.check_invariants()
        assert self.tree.nested == self.expect_nested, (
            f"tree.nested = {self.tree.nested}, but the operation sequence implies {self.expect_nested}")

    @invariant()
    def inv2_live_set(self) -> None:
        if self.tree is None:
            return
        t = self.tree
        live = np.flatnonzero(t.alive)
        assert live.tolist() == sorted(self.shadow), "live ids differ from the shadow model"
        assert t.n_live == len(self.shadow)
        # The tree's own view of the live set: what order lists and what the root counts.
        assert sorted(t.order.tolist()) == sorted(self.shadow), "order does not list the shadow's live ids"
        assert t.count[0] == len(self.shadow), f"root count {t.count[0]} != {len(self.shadow)} live targets"
        assert t.stop[0] - t.start[0] == len(self.shadow), "the root's range of order is not all live targets"
        want = np.array([self.shadow[i] for i in live.tolist()])
        assert np.array_equal(t.points[live], want), "a live target's vector differs from the shadow model"

    @invariant()
    def inv3_p1_node_bound(self) -> None:
        if self.tree is None:
            return
        q = query_for(self.tree.points[self.tree.alive], self.rng)
        excess, v, y = p1_excess(self.tree, q)
        assert excess <= 0, f"P1 violated: target {y} under node {v} exceeds eps_v by {excess:.3e}"

    @invariant()
    def inv4_bracket_local(self) -> None:
        if self.tree is None:
            return
        t = self.tree
        q = query_for(t.points[t.alive], self.rng)
        _, a, log_z = brute(t, q)
        prev = None
        for d in range(int(t.depth.max()) + 1):
            nodes = frontier(t, d)
            assert t.count[nodes].sum() == t.n_live, f"the depth-{d} frontier does not cover the live targets"
            lo, hi, hat, eps_c, scale = local_bracket(t, q, nodes)
            tol = BRACKET_RTOL * (1.0 + max(scale, float(np.abs(a).max())))
            assert lo <= log_z + tol and log_z <= hi + tol, f"P2: log Z = {log_z} not in [{lo}, {hi}] (depth {d})"
            assert hi - lo <= 2 * eps_c + tol, f"P2: hi - lo = {hi - lo} > 2 eps_C = {2 * eps_c} (depth {d})"
            assert abs(hat - log_z) <= eps_c + tol, f"P2: |log_z_hat - log Z| = {abs(hat - log_z)} > eps_C = {eps_c}"
            if t.nested and prev is not None:  # P3: refinement never lowers lo nor raises hi
                assert lo >= prev[0] - tol and hi <= prev[1] + tol, (
                    f"P3: refining depth {d - 1} -> {d} moved [{prev[0]}, {prev[1]}] to [{lo}, {hi}]")
            prev = (lo, hi)

    @invariant()
    def inv5_bounds_module(self) -> None:
        if self.tree is None or not HAVE_BOUNDS:
            return
        t = self.tree
        q = query_for(t.points[t.alive], self.rng)
        live, a, log_z = brute(t, q)
        tol_scale = BRACKET_RTOL * (1.0 + float(np.abs(a).max()) + np.linalg.norm(q) * float(t.radius.max()))
        cut = adaptive_cut(t, q, 0.5)
        lo, hi, _ = log_partition_bracket(t, q, cut)
        assert lo <= log_z + tol_scale and log_z <= hi + tol_scale, f"bounds: log Z = {log_z} not in [{lo}, {hi}]"
        assert hi - lo <= 0.5 + tol_scale or len(cut) == 0 or np.all(cut.is_target | t.is_leaf[np.maximum(cut.node, 0)]), (
            f"P7: adaptive cut returned hi - lo = {hi - lo} > tol 0.5 with an internal node left")
        lo_r, hi_r, _ = log_partition_bracket(t, q, Cut.root())
        assert lo_r <= log_z + tol_scale and log_z <= hi_r + tol_scale
        ids, _ = rejection_sample(t, q, 8, self.rng)
        assert t.alive[ids].all(), "rejection_sample returned a deleted target"
        ids, log_q = cut_sample(t, q, 8, self.rng, cut)
        assert t.alive[ids].all() and np.isfinite(log_q).all(), "cut_sample returned a deleted target or bad log_q"
        k = min(5, t.n_live)
        got_ids, got_a = topk(t, q, k)
        o = np.lexsort((live, -a))[:k]
        assert np.allclose(got_a, a[o], rtol=0, atol=tol_scale), f"P8: top-k logits {got_a} != brute force {a[o]}"
        # Ids must agree except among logits tied up to rounding with the k-th one.
        kth = a[o[-1]]
        clear = np.abs(a[o] - kth) > tol_scale
        assert np.array_equal(got_ids[clear], live[o][clear]), f"P8: top-k ids {got_ids} != brute force {live[o]}"


# The machine is cheap (~0.1 s per example), so it runs more examples and longer
# sequences than the profile's default (the `thorough` profile's count still wins).
DynamicTreeMachine.TestCase.settings = settings(
    max_examples=max(settings.default.max_examples, 60), stateful_step_count=30
)
TestP9DynamicSoundness = DynamicTreeMachine.TestCase


def test_bounds_modules_present() -> None:
    """The state machine also checks reference.bounds/sampling; say so if they are missing."""
    if not HAVE_BOUNDS:
        pytest.skip("reference.bounds / reference.sampling not importable: their checks in P9 were skipped")
