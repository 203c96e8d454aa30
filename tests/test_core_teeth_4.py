"""Teeth for the core modules' remaining open themes (tests/mutation/survivors.md), closed by theme.

The `not yet killed` entries these tests answer, each by the behaviour behind it rather than by its
one mutant:

- the tree a fixed seed builds (``Tree.build``'s k-means): its root partition after i Lloyd
  iterations is recomputed from its definition (the Voronoi cells of the means of the partition
  after i - 1 iterations) by a short independent loop, for i = 1..4. The seeding is not recomputed:
  Lloyd iterations draw no random numbers, so the build with ``kmeans_iters=i - 1`` and the same
  seed starts from the same centers, and its root partition *is* the partition after i - 1 steps
  (with no step at all, it must be the Voronoi partition of some b of the points).
  What is compared is a partition of ids; no float is compared bit for bit, and the test first
  checks that no point is within 1e-9 (relative) of two cells, so the last bits of the distances
  (NumPy version, BLAS) cannot change it. A golden digest of one tree would pin the same thing but
  would break on any harmless change of the arithmetic; this does not.
- the strict and non-strict boundaries of the documented rules, pinned at exact equality: the push
  rule of ``plain.topk`` (a child with ub_c == tau is kept), the fast top-k's pruning of nodes and
  children (``ub + margin >= tau``), each on a tree damaged so that a target of the exact top-k sits
  exactly on its leaf's bound; and the cost rule of ``reference._fastpath.refine`` (an entry is
  expanded when its gain over Zhat exceeds its cost strictly), at an exact float tie: at the
  pool's first test, for a query found by a search that reads the very values the rule compares
  (a settrace hook on refine); at both tests (the first, and the re-test after parked entries
  return, which arithmetic rarely puts at a tie), by setting refine's own log-cost entry to the
  exact value compared with it.
- the documented fallback of ``refine_to_width`` (a query whose recomputed bracket is still wider
  than its target is refined again to the end), reached by a real input, no monkeypatching: a
  target equal to the width the refinement's running sums reach, where the recomputed width is
  larger in its last bits.

Deterministic: fixed seeds, searches over fixed candidate lists; no probabilistic assertion.
"""

from __future__ import annotations

import functools
import itertools
import linecache
import sys

import numpy as np
import pytest
import scipy.special

from reference import _fastpath, plain, sampling
from reference.bounds import ROUNDING, adaptive_cut, log_partition_bracket
from reference.softmax import topk_ids
from reference.tree import Tree

# --------------------------------------------------------------------------- the build's k-means


def _root_partition(tree: Tree) -> list[tuple[int, ...]]:
    kids = tree.child_idx[tree.child_ptr[tree.root]:tree.child_ptr[tree.root + 1]]
    return sorted(tuple(sorted(tree.order[tree.start[c]:tree.stop[c]].tolist())) for c in kids)


def _voronoi(z: np.ndarray, centers: np.ndarray) -> list[tuple[int, ...]]:
    """The non-empty cells of the nearest-center partition of the rows of z."""
    d2 = ((z[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
    lab = d2.argmin(axis=1)
    return sorted(tuple(np.flatnonzero(lab == j).tolist()) for j in range(len(centers)) if (lab == j).any())


def _lloyd_step(z: np.ndarray, cells: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """One Lloyd step from its definition: the means of the cells, then each point's nearest mean."""
    centers = np.array([z[list(c)].mean(axis=0) for c in cells])
    d2 = ((z[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
    two = np.sort(d2, axis=1)[:, :2]
    assert (two[:, 1] - two[:, 0]).min() > 1e-9 * d2.max(), "precondition: no point on the border of two cells"
    return _voronoi(z, centers)


# Seven points on a line (a second coordinate only breaks exact distance ties). With three
# clusters, about one k-means++ seeding in ten (seeds 9 and 13 below) has a cell that shrinks, after
# a Lloyd step, to one point other than its center: the step that moves that center to its point
# is then seen in the next partition.
_LINE = np.c_[[-1.75, -1.25, 1.25, 1.75, -1.5, 4.0, -0.75], 0.01 * np.sqrt(np.arange(7.0))]


@pytest.mark.parametrize("seed", range(16))
def test_build_root_partition_is_lloyd_from_the_seeding(seed: int) -> None:
    """Tree.build's root split after i Lloyd iterations is one Lloyd step (means, then nearest mean,
    computed here) from its split after i - 1 iterations, with the same seed (the same k-means++
    seeding: Lloyd draws no random numbers), for i = 1..4; and its split with no Lloyd step is the
    Voronoi partition of three of the points (the seeding draws points). The subsample is every
    point (7 <= the Lloyd and seeding samples); no cell empties on this input (checked: 3 children
    every time)."""
    z = _LINE
    prev = _root_partition(Tree.build(z, branching=3, leaf_size=2, seed=seed, kmeans_iters=0))
    # With no Lloyd step, the cells are those of the seeding's centers, three of the points
    # (k-means++ draws points): some three points have exactly these Voronoi cells.
    assert any(_voronoi(z, z[list(c)]) == prev for c in itertools.combinations(range(len(z)), 3))
    for iters in range(1, 5):
        assert len(prev) == 3, "precondition: no empty cluster (an empty one keeps its center)"
        got = _root_partition(Tree.build(z, branching=3, leaf_size=2, seed=seed, kmeans_iters=iters))
        assert got == _lloyd_step(z, prev), f"seed {seed}, kmeans_iters {iters}"
        prev = got


# --------------------------------------------------------------------------- top-k at ub == tau


def _tie_tree() -> tuple[Tree, int]:
    """A tree whose leaf C holds target 0 (logit 1 for q = (1, 0)), damaged so that its bound with
    its margin, ``<q, r_C> + ||q|| rho_C + ROUNDING (1 + ||q|| (||r_C|| + rho_C))``, is exactly 1.0
    in float64 and target 0 sits exactly on it (``1 - <q, r_C> <= margin``: accepted by I3 with its
    margin, by plain and by the fast path). Target 1, of logit 1 too, is in the leaf A beside C's
    parent B; A (with target 3, logit 5) is evaluated first, so with k = 2 the k-th score tau is 1.0
    when B is expanded: C's bound equals tau when it is pushed (plain) and when it is kept (fast)."""
    z = np.array([[1.0, 8.0], [1.0, -8.0], [-3.0, 10.0], [5.0, -8.0], [-3.0, 10.5]])
    tree = Tree.build(z, branching=2, leaf_size=2, seed=0)
    leaf_of = {tuple(sorted(tree.order[tree.start[v]:tree.stop[v]].tolist())): v
               for v in np.flatnonzero(tree.is_leaf)}
    assert set(leaf_of) == {(0,), (1, 3), (2, 4)}, "precondition: the layout described above"
    C = int(leaf_of[(0,)])
    assert tree.parent[C] != tree.parent[leaf_of[(1, 3)]] and tree.radius[C] == 0.0

    def margin(x: float) -> float:  # (10) for q = (1, 0), r_C = (x, 8), rho_C = 0
        return ROUNDING * (1.0 + 1.0 * float(np.linalg.norm([x, 8.0]) + 0.0))

    x = 1.0 - margin(1.0)
    for _ in range(200):
        if x + margin(x) == 1.0 and 1.0 - x <= margin(x):
            break
        x = float(np.nextafter(x, 2.0 if x + margin(x) < 1.0 else 0.0))
    assert x + margin(x) == 1.0 and 1.0 - x <= margin(x) and x < 1.0
    tree.rep[C] = [x, 8.0]
    tree.rep_norm[C] = np.linalg.norm(tree.rep[C])
    return tree, C


def test_plain_topk_pushes_a_child_whose_bound_equals_tau() -> None:
    """(9) prunes a child when ub_c < tau, strictly: pushed with ub_c == tau, popped (not a stop:
    also strict), its tied target 0 beats target 1 by the smaller id. The brute-force top-2 is [3, 0]."""
    tree, C = _tie_tree()
    q = np.array([1.0, 0.0])
    want = topk_ids((tree.points @ q)[None, :], 2)[0]
    assert want.tolist() == [3, 0]
    trace: list = []
    ids, logits = plain.topk(tree, q, 2, trace=trace)
    assert ids.tolist() == want.tolist() and logits.tolist() == [5.0, 1.0]
    # C was pushed when B was expanded, with tau = 1.0 already set (target 1 taken from A).
    expand_b = [i for i, p in enumerate(trace) if p.node == tree.parent[C]]
    assert len(expand_b) == 1 and trace[expand_b[0]].tau == 1.0 and trace[expand_b[0]].action == "expand"
    assert (trace[-1].node, trace[-1].ub, trace[-1].tau, trace[-1].action) == (C, 1.0, 1.0, "leaf")


@pytest.mark.parametrize("block", [None, 1])
def test_fast_topk_keeps_a_node_whose_bound_with_margin_equals_tau(block) -> None:
    """The fast path keeps a child (``_child_bounds``) and a node (the level sweep) when
    ub + margin >= tau: here ub_C + margin_C == tau == a_0 exactly, after leaf A set tau to the
    logit of target 1. A strict rule would drop target 0 of the exact top-2 (ties by smaller id)."""
    tree, _ = _tie_tree()
    Q = np.array([[1.0, 0.0], [1.0, 0.0]])
    want = topk_ids(Q @ tree.points.T, 2)
    ids, logits = sampling.topk(tree, Q, 2, block=block)
    assert ids.tolist() == want.tolist() == [[3, 0], [3, 0]]
    assert logits.tolist() == [[5.0, 1.0], [5.0, 1.0]]


# --------------------------------------------------------------------------- refine_to_width's fallback


def _redo_input() -> tuple[Tree, np.ndarray, float]:
    """A tree, a query q and a tol for which refine_to_width's first refinement stops with its
    running width exactly at the target while the width recomputed from the final entries is larger
    (in its last bits): the "refined again to the end" path, reached without monkeypatching.

    Found by search: for a candidate q, iterate t <- the running width of refine(q, tol=t) to a
    fixed point w (refine then stops exactly at w, the same cut), keep q if the recomputed width is
    > w with some entry still open (eps > 0), and take a tol whose target tol - 8 W_bound(q) is w."""
    rng = np.random.default_rng(3)
    tree = Tree.build(rng.standard_normal((300, 4)), branching=4, leaf_size=6, seed=0)
    for _ in range(80):
        q = rng.standard_normal((1, 4)) * 2.0
        t = 0.5
        for _ in range(8):
            st = _fastpath.refine(tree, q, tol=np.array([t]))
            w = float(st.bracket[1][0] - st.bracket[0][0])
            if w == t:
                break
            t = w
        else:
            continue
        lo, hi, _ = st.terms.bracket(st.ptr)
        if not (hi[0] - lo[0] > w and (st.sorted("eps") > 0).any()):
            continue
        tol = w + 8.0 * float(_fastpath.bracket_rounding_bound(tree, np.linalg.norm(q, axis=1))[0])
        for _ in range(8):
            target = float(_fastpath.width_target(tree, q, tol)[0])
            if target == w:
                return tree, q[0], tol
            tol = float(np.nextafter(tol, np.inf if target < w else -np.inf))
    raise AssertionError("no candidate query reaches the fallback")


def test_refine_to_width_refines_again_to_the_end_when_the_recomputed_width_exceeds_the_target() -> None:
    """refine_to_width (via the public adaptive_cut): a query whose recomputed bracket is still
    wider than its target tol - 8 W_bound(q) is refined again to the end (every entry eps_v == 0);
    the other queries of the batch keep their first cut; the counters add both refinements (rounds
    included); the reported width is <= tol, for the redone query too (its cut exhausted: every
    eps_v == 0)."""
    tree, q_redo, tol = _redo_input()
    q_other = np.array([0.3, -0.2, 0.1, 0.4])
    Q = np.stack([q_other, q_redo])
    target = _fastpath.width_target(tree, Q, tol)
    first = _fastpath.refine(tree, Q, tol=target)
    lo, hi, _ = first.terms.bracket(first.ptr)
    assert not hi[0] - lo[0] > target[0] and hi[1] - lo[1] > target[1], "precondition: only query 1 is redone"
    again = _fastpath.refine(tree, Q[1:], tol=np.full(1, -np.inf))
    assert (again.sorted("eps") == 0).all()

    cut, counters = adaptive_cut(tree, Q, tol, return_counters=True)

    def entries(query, node, target_, which):
        return sorted((int(v), int(y)) for qq, v, y in zip(query, node, target_) if qq == which)

    fq, fv, fy, _ = first.cut_fields()
    aq, av, ay, _ = again.cut_fields()
    assert entries(cut.query, cut.node, cut.target, 0) == entries(fq, fv, fy, 0)
    assert entries(cut.query, cut.node, cut.target, 1) == entries(aq, av, ay, 0)
    assert entries(cut.query, cut.node, cut.target, 1) != entries(fq, fv, fy, 1)
    assert counters == dict(node_logits=first.node_logits + again.node_logits,
                            target_logits=first.target_logits + again.target_logits,
                            rounds=first.rounds + again.rounds)
    lo, hi, _ = log_partition_bracket(tree, Q, cut)
    assert (hi - lo <= tol).all()


# --------------------------------------------------------------------------- the cost rule at a tie

_RULE = 'marked = pool["gain"] - tot["hat"][query]'   # the cost rule (the comparison follows)


def _is_refine_body(code) -> bool:
    """refine's body, whatever wraps it (it is the function with these locals in _fastpath)."""
    names = set(code.co_varnames + code.co_cellvars)
    return code.co_filename.endswith("_fastpath.py") and {"pool", "tot", "log_cost"} <= names


@functools.lru_cache(maxsize=None)
def _rule_lines(code) -> list[int]:
    """The lines of the cost rule in refine: the first test of the pool, then its re-test after
    parked entries come back."""
    found, n = [], code.co_firstlineno
    while len(found) < 2 and n < code.co_firstlineno + 2000:
        if linecache.getline(code.co_filename, n).strip().startswith(_RULE):
            found.append(n)
        n += 1
    assert len(found) == 2, "refine's two cost-rule lines not found"
    return found


def _rule_gaps(fn, inject: tuple[int, int] | None = None) -> list[tuple]:
    """Run ``fn`` and record, each time refine reaches one of its cost-rule lines, the very values
    that line compares: (which line, round, pool queries, pool nodes, (gain - log Zhat) - log cost).

    With ``inject=(line, steps)``, the first time refine reaches that line with a non-empty pool, the
    log cost of the pool's entry nearest its cost is set to that entry's gain - log Zhat, computed
    by the line's own expression (an exact tie), moved by ``steps`` floats (+1: one float above)."""
    events: list = []
    pending = [inject]

    def local(frame, event, arg):
        if event == "line":
            lines = _rule_lines(frame.f_code)
            if frame.f_lineno in lines:
                f = frame.f_locals
                pool, log_cost = f["pool"], f["log_cost"]
                which = lines.index(frame.f_lineno)
                lhs = pool["gain"] - f["tot"]["hat"][f["query"]]
                if pending[0] is not None and pending[0][0] == which and lhs.size:
                    i = int(np.argmax(lhs - log_cost[pool["node"]]))
                    x = float(lhs[i])
                    for _ in range(abs(pending[0][1])):
                        x = float(np.nextafter(x, np.inf if pending[0][1] > 0 else -np.inf))
                    log_cost[pool["node"][i]] = x   # refine's own array: the rule reads it next
                    pending[0] = None
                events.append((which, f["rounds"], pool["query"].copy(), pool["node"].copy(),
                               lhs - log_cost[pool["node"]]))
        return local

    old = sys.gettrace()
    sys.settrace(lambda frame, event, arg: local if _is_refine_body(frame.f_code) else None)
    try:
        fn()
    finally:
        sys.settrace(old)
    assert pending[0] is None or inject is None, "the line to inject a tie at was not reached"
    return events


def _gap(events, line: int, rnd: int, node: int) -> float | None:
    for which, r, _, nodes, gap in events:
        if which == line and r == rnd and node in nodes:
            return float(gap[np.flatnonzero(nodes == node)[0]])
    return None


def _find_tie(tree: Tree, kw: dict, seed: int, n0: int) -> tuple[np.ndarray, int, int, int] | None:
    """A query q and a number of draws n for which refine(tree, q, n_draws=n, **kw) (no ``tol``: the
    cost rule's first test only) meets an entry whose two sides are exactly equal; or None.

    From a random q and n0 draws: the entry closest below its cost must also be the closest over
    every test of its round and the earlier ones (log n shifts every entry's gain alike, so it is
    the first of them to reach its cost as n grows, and the decisions up to its round stay the same
    until it does); n is raised to bring it within log(1 + 1/n) of its cost, and q moved along a
    random direction u (q + t u, t by bisection down to adjacent floats) to bring it exactly there."""
    line = 0
    rng = np.random.default_rng(seed)
    q0, u = rng.standard_normal(tree.dim) * 2.0, rng.standard_normal(tree.dim)
    # The tree's last coordinate is 1 for every target: q0's shifts every logit alike, so that
    # log Zhat is near 0.3 and gain - log Zhat is computed to the precision of log cost (with
    # both sides large, their difference would lie on a coarser grid than log cost: no exact tie).
    u[-1] = 0.0
    q0[-1] = 0.0
    q0[-1] = 0.3 - float(scipy.special.logsumexp(tree.points @ q0))

    def gaps(t: float, n: int) -> list:
        return _rule_gaps(lambda: _fastpath.refine(tree, (q0 + t * u)[None, :], n_draws=n, **kw))

    events = gaps(0.0, n0)
    tested = [(float(g), r, int(v)) for which, r, _, nodes, gs in events if which == line
              for v, g in zip(nodes, gs) if g < 0]
    if not tested:
        return None
    g0, rnd, v = max(tested)
    # No entry of that round or an earlier one may reach its cost first (later rounds may).
    if any(g > g0 for _, r, _, _, gs in events if r <= rnd for g in gs[gs < 0]):
        return None
    n = int(np.floor(n0 * np.exp(-g0)))
    g0 = _gap(gaps(0.0, n), line, rnd, v)
    if g0 is None or not g0 < 0:
        return None
    g1 = _gap(gaps(1e-6, n), line, rnd, v)
    if g1 is None or g1 == g0:
        return None
    lo, hi = 0.0, -g0 * 1e-6 / (g1 - g0) * 1.5    # the gap is < 0 at lo, not (or gone) at hi
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        g = _gap(gaps(mid, n), line, rnd, v)
        lo, hi = (mid, hi) if g is not None and g < 0 else (lo, mid)
    if _gap(gaps(hi, n), line, rnd, v) != 0.0:
        return None
    return q0 + hi * u, n, rnd, v


@pytest.fixture(scope="module")
def cost_tree() -> Tree:
    z = np.random.default_rng(0).standard_normal((400, 3))
    return Tree.build(np.c_[z, np.ones(400)], branching=4, leaf_size=8, seed=0)


def test_cost_rule_does_not_expand_an_entry_whose_gain_equals_its_cost(cost_tree) -> None:
    """refine's cost rule expands v when n (U_v - n_v exp(s_v)) / Zhat > cost_v, strictly (in logs:
    gain - log Zhat > log cost). At an exact float tie of the two sides, reached by a query found by
    search (no injection), v is not expanded: with the cost rule alone it is final, an entry of the
    returned cut."""
    kw = dict(exact_leaves=True, full_count=30)
    for seed in range(10):
        found = _find_tie(cost_tree, kw, seed, 64)
        if found is not None:
            break
    assert found is not None, "no exact tie found"
    q, n, _, v = found
    st = _fastpath.refine(cost_tree, q[None, :], n_draws=n, **kw)
    _, node, _, _ = st.cut_fields()
    assert v in node.tolist()


@pytest.mark.parametrize("line, kw", [(0, dict(n_draws=2, exact_leaves=True, full_count=30)),
                                      (1, dict(tol=0.3, n_draws=16, exact_leaves=True))],
                         ids=["first test", "re-test after parked entries return"])
def test_cost_rule_is_strict_at_an_injected_tie(cost_tree, line: int, kw: dict) -> None:
    """Both places the cost rule is applied (the pool's first test of a round, and its re-test after
    parked entries return) expand an entry only when its gain over Zhat exceeds its cost strictly.
    Arithmetic rarely puts the re-test at an exact tie (the entry nearest its cost in the re-test
    was nearer still in an earlier round), so the tie is injected: the log cost refine compares
    with is set, in refine's own array at that line, to exactly the gain - log Zhat it compares.
    The run must be the run whose cost is one float above (not expanded); on these queries it
    differs from the run whose cost is one float below (expanded): the decision reaches the cut."""
    rng = np.random.default_rng(7)
    for _ in range(8):
        q = rng.standard_normal(cost_tree.dim) * 2.0

        def run(steps: int):
            out = []
            _rule_gaps(lambda: out.append(_fastpath.refine(cost_tree, q[None, :], **kw)), (line, steps))
            st = out[0]
            return sorted(zip(*(a.tolist() for a in st.cut_fields()[:3]))), \
                (st.node_logits, st.target_logits, st.rounds)

        above, tie, below = run(1), run(0), run(-1)
        if above != below:
            break
    assert above != below, "precondition: the decision at the injected tie reaches the cut"
    assert tie == above
