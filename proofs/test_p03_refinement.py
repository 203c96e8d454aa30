"""P3 (proofs/README.md section 6): under I4, refining a node of a cut never lowers lo nor raises hi.

Proof: ``proofs/p03_refinement.md``. I4 holds right after ``Tree.build``,
``Tree.refresh`` and ``Tree.rebuild`` (``tree.nested``); the tests use exactly
those trees.

Tolerance: FP_RTOL = 1e-9 (proofs/README.md section 6) of ``fp_scale`` (the largest term
magnitude); float64 logsumexp and inner products are exact to a few 1e-16 of it.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from proofs.strategies_bounds import (
    FP_RTOL,
    brute_log_z,
    fp_scale,
    make_queries,
    random_cut,
    seeds,
    trees_with_queries,
)
from reference.bounds import Cut, log_partition_bracket
from reference.plain import expand, refinement_order


def _refine_entry(tree, cut: Cut, e: int) -> Cut:
    """Replace node entry ``e`` of a single-query cut by its non-empty children (targets for a leaf)."""
    children, leaf_targets = expand(tree, int(cut.node[e]))
    nodes = [int(x) for i, x in enumerate(cut.node) if x >= 0 and i != e]
    targets = [int(x) for x in cut.target if x >= 0]
    return Cut.from_entries(nodes + children, targets + leaf_targets)


def _aligned_to_widest_child(tree, rng, n):
    """Queries along r_c - r_v for the child c of largest reach ||r_c - r_v|| + rho_c of a random node v."""
    internal = np.flatnonzero(~tree.is_leaf & (tree.count > 0))
    if internal.size == 0:
        return make_queries(tree, rng, n, 60.0)
    Q = []
    for v in rng.choice(internal, size=n):
        ch = tree.child_idx[tree.child_ptr[v]:tree.child_ptr[v + 1]]
        ch = ch[tree.count[ch] > 0]
        d = tree.rep[ch] - tree.rep[v]
        reach = np.linalg.norm(d, axis=1) + tree.radius[ch]
        dv = d[np.argmax(reach)]
        Q.append(dv / np.linalg.norm(dv) if np.linalg.norm(dv) > 0 else rng.normal(size=tree.dim))
    zmax = np.linalg.norm(tree.points[tree.alive], axis=1).max()
    return np.array(Q) * (60.0 / max(zmax, 1e-12))


def _check_refinement(tree, Q, rng, n_expand):
    assert tree.nested, "P3 is stated under I4; this tree does not guarantee it"
    for q in Q:
        cut = random_cut(tree, rng, n_expand)
        lo, hi, _ = log_partition_bracket(tree, q, cut)
        tol = FP_RTOL * fp_scale(tree, q)
        for e in np.flatnonzero(cut.node >= 0):
            if tree.count[cut.node[e]] == 0:
                continue
            lo2, hi2, _ = log_partition_bracket(tree, q, _refine_entry(tree, cut, int(e)))
            assert lo2 >= lo - tol, f"refining node {cut.node[e]} lowered lo: {lo} -> {lo2}"
            assert hi2 <= hi + tol, f"refining node {cut.node[e]} raised hi: {hi} -> {hi2}"


def _check_local(tree, Q):
    """s_c + eps_c <= s_v + eps_v and s_c - eps_c >= s_v - eps_v for all non-empty (v, c), (leaf, target)."""
    c = np.flatnonzero((tree.parent >= 0) & (tree.count > 0))
    v = tree.parent[c]
    leaves = np.flatnonzero(tree.is_leaf & (tree.count > 0))
    lv = np.repeat(leaves, tree.count[leaves])
    ly = np.concatenate([tree.order[tree.start[x]:tree.stop[x]] for x in leaves])
    for q in Q:
        qn = np.linalg.norm(q)
        tol = FP_RTOL * fp_scale(tree, q)
        sv, sc = tree.rep[v] @ q, tree.rep[c] @ q
        ev, ec = qn * tree.radius[v], qn * tree.radius[c]
        assert (sc + ec <= sv + ev + tol).all(), f"I4/P3: child upper bound above parent's: {(sc + ec - sv - ev).max()}"
        assert (sc - ec >= sv - ev - tol).all(), f"I4/P3: child lower bound below parent's: {(sv - ev - sc + ec).max()}"
        a, sl, el = tree.points[ly] @ q, tree.rep[lv] @ q, qn * tree.radius[lv]
        assert (a <= sl + el + tol).all() and (a >= sl - el - tol).all(), "leaf -> target refinement"


@given(trees_with_queries(n_queries=2), st.integers(0, 25))
def test_p3_after_build(data, n_expand):
    """Right after ``Tree.build`` (I4): every one-step refinement of a random cut tightens the bracket."""
    tree, Q, seed = data
    rng = np.random.default_rng(seed)
    _check_refinement(tree, np.vstack([Q, _aligned_to_widest_child(tree, rng, 2)]), rng, n_expand)


@given(trees_with_queries(n_queries=2))
def test_p3_refined_to_the_end(data):
    """The consequence: along the adaptive cut's expansions until no entry has eps_v > 0
    (``reference.plain.refinement_order``), lo never falls and hi never rises, down to lo = hi = log Z."""
    tree, Q, _ = data
    assert tree.nested, "P3 is stated under I4; this tree does not guarantee it"
    for q in Q:
        tol = FP_RTOL * fp_scale(tree, q)
        nodes, targets = [tree.root], []
        lo, hi, _ = log_partition_bracket(tree, q, Cut.root())
        for v in refinement_order(tree, q):
            children, leaf_targets = expand(tree, int(v))
            nodes.remove(int(v))
            nodes += children
            targets += leaf_targets
            lo2, hi2, _ = log_partition_bracket(tree, q, Cut.from_entries(nodes, targets))
            assert lo2 >= lo - tol, f"expanding node {v} lowered lo: {lo} -> {lo2}"
            assert hi2 <= hi + tol, f"expanding node {v} raised hi: {hi} -> {hi2}"
            lo, hi = lo2, hi2
        log_z = brute_log_z(tree, q)
        assert abs(hi - lo) <= tol and abs(lo - log_z) <= tol, f"refined to the end: [{lo}, {hi}], log Z = {log_z}"


@given(trees_with_queries(n_queries=2), seeds)
def test_p3_local_inequalities_aligned(data, seed):
    """The per-child inequalities of the proof, with queries that make I4 tight (equality case)."""
    tree, Q, _ = data
    rng = np.random.default_rng(seed)
    _check_local(tree, np.vstack([Q, _aligned_to_widest_child(tree, rng, 4)]))


@given(trees_with_queries(n_queries=1, kinds=("uniform", "clustered", "collinear", "huge", "grid")),
       seeds, st.sampled_from(["refresh", "rebuild"]))
def test_p3_after_update_then_refresh_or_rebuild(data, seed, how):
    """Targets moved by ``update`` (I4 lost), then ``refresh`` / ``rebuild(depth)`` restores I4 and P3."""
    tree, _, _ = data
    rng = np.random.default_rng(seed)
    live = np.flatnonzero(tree.alive)
    ids = rng.choice(live, size=max(1, live.size // 2), replace=False)
    z = tree.points[ids]
    tree.update(ids, z + rng.normal(scale=0.5 * max(float(np.abs(z).max()), 1.0), size=z.shape))
    if how == "refresh":
        tree.refresh()
    else:
        tree.rebuild(int(rng.integers(0, int(tree.depth.max()) + 1)))
    Q = np.vstack([make_queries(tree, rng, 1, 60.0), _aligned_to_widest_child(tree, rng, 2)])
    _check_local(tree, Q)
    _check_refinement(tree, Q, rng, 10)
