"""The trace records of reference.plain, field by field, against their documented definitions.

``python -m reference walkthrough`` prints the numbers of these records, so each
field is recomputed here from the statement that defines it (the numbered
statements of the module docstring of :mod:`reference.plain`), by brute force
over the targets and nodes, never through plain's own helpers:

- :class:`reference.plain.Step` (``adaptive_cut(..., trace=)``): the cut is
  replayed from the root, one expansion (4) per record; ``lo`` and ``hi`` are
  (2) over the replayed cut, ``log_slack`` is log S_v of (3) with
  S_v = n_v exp(<q, r_v>) 2 sinh(eps_v), ``node`` the entry of largest slack,
  ties to the smaller id (5); one record per expansion, and the trace stops
  exactly where (5) stops.
- :class:`reference.plain.Proposal` (``rejection_sample(..., trace=)``): ``node``
  an entry of the adaptive cut (or -1 and a single-target entry), ``target`` in
  D(v), ``logit`` a_y, ``bound`` <q, r_v> + eps_v, ``log_accept`` their
  difference, ``accepted`` the comparison of ``uniform`` with
  exp(min(0, log_accept)) (8); the accepted targets, in order, are the result;
  a clone of the Generator replays the records (one per proposal, in rounds,
  the target's offset in D(v) and the uniform bit for bit); the proposals
  follow U_v / U (G-test).
- :class:`reference.plain.Pop` (``topk(..., trace=)``): the best-first search (9)
  is replayed from the records: ``node`` is the frontier's largest ub (ties: the
  smaller id), ``ub`` is <q, r_v> + eps_v + ROUNDING (1 + ||q|| (||r_v|| + rho_v))
  (10), ``tau`` the k-th best logit among the targets of the leaves popped
  before, ``action`` "stop" iff ub < tau, else "leaf" or "expand".
- With and without ``trace=``, every function returns the same result and
  ``rejection_sample`` leaves its Generator in the same state (``adaptive_cut``
  and ``topk`` take none; ``cut_sample`` has no trace).

Trees: clustered, clustered after deletes (nodes with n_v = 0), exact ties
(a tree mirrored about an axis: equal slacks, equal ub and equal logits),
integer points (ties of logits), one target, and 1-D.

Tolerances (u = 2^-53, the unit roundoff). The reference inner products are
``math.fsum`` of the rounded products q_i x_i, within u sum_i |q_i x_i| (the
products) + u |result| (the final rounding) of the exact one; plain's float64
dot is within k u sum_i |q_i x_i|; so the two agree within
``(k + 2) u sum_i |q_i x_i|`` (``_dot_tol``). A log-sum-exp of a cut, with T the
largest |log n_v| + |<q, r_v>| + eps_v of its entries and |C| its size: each
term is formed with error <= 3 u T, the shift and exp add <= 2 u T + 2 u
relative, the sum of |C| positive terms <= |C| u relative, the log and the
shift back <= u + u T; so each computation is within u (6 T + |C| + 4) of the
exact value and two of them within ``16 u (T + |C| + 1)`` (``_lse_tol``), plus
the error of the inner products. The log slack has the same terms and one
log of 2 sinh (math.sinh and log1p/expm1, a few ulp each): within
``16 u (T + 1)``, plus the error of the inner products. All of these are about 1e-14 or less here, and the smallest
documented quantity a wrong field changes (the rounding margin ROUNDING = 1e-9
of the logit scale, a slack's eps_v) is far larger. The statistical test fails
at p < 1e-6 (its false-alarm rate).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from reference import plain
from reference.bounds import ROUNDING
from reference.data import make_targets
from reference.stats import g_test
from reference.tree import Tree

from proofs.strategies_tree import tree_with_empty_nodes

U = 2.0**-53  # unit roundoff of float64
ALPHA = 1e-6  # false-alarm rate of the G-test


# ---------------------------------------------------------------- trees and queries
def _clustered() -> Tree:
    return Tree.build(make_targets(300, 4, seed=3), branching=3, leaf_size=5, seed=3)


def _deleted() -> Tree:
    """Clustered, then every target of three leaves and a fifth of the rest deleted: nodes with n_v = 0."""
    return tree_with_empty_nodes(300, 4, leaf_size=5, emptied=3)


def _mirrored() -> Tree:
    """Points (1, +-(1 + d_i)): for q = (x, 0) the two halves have bit-identical slacks, ub and logits."""
    d = np.array([0.1, 0.3, 0.2, 0.05, 0.4, 0.15])
    up = np.stack([np.ones(d.size), 1.0 + d], axis=1)
    return Tree.build(np.concatenate([up, up * [1.0, -1.0]]), branching=2, leaf_size=2, seed=0)


def _integer() -> Tree:
    """Integer points in {-2..2}^3, many duplicates: integer queries give exact ties of logits."""
    points = np.random.default_rng(5).integers(-2, 3, size=(120, 3)).astype(np.float64)
    return Tree.build(points, branching=3, leaf_size=4, seed=5)


def _one() -> Tree:
    return Tree.build(np.array([[0.3, -1.2, 0.7]]), branching=2, leaf_size=1, seed=0)


def _one_dim() -> Tree:
    return Tree.build(np.random.default_rng(6).normal(size=(50, 1)), branching=2, leaf_size=3, seed=6)


def _query(tree: Tree, name: str, seed: int, scale: float) -> np.ndarray:
    """A query: (scale, 0) on the mirrored tree, integer on the integer tree (ties), else of logit scale ``scale``."""
    if name == "mirrored":
        return np.array([scale, 0.0])
    if name == "integer":
        return np.random.default_rng(seed).integers(-2, 3, size=tree.dim).astype(np.float64) + [1.0, 0.0, 0.0]
    q = np.random.default_rng(seed).normal(size=tree.dim)
    zmax = np.linalg.norm(tree.points[tree.alive], axis=1).max()
    return q * (scale / (np.linalg.norm(q) * zmax))


BUILDERS = {"clustered": _clustered, "deleted": _deleted, "mirrored": _mirrored, "integer": _integer,
            "one": _one, "one_dim": _one_dim}
CASES = [(name, seed, scale) for name in BUILDERS for seed, scale in ((11, 3.0), (12, 12.0))]


@pytest.fixture(scope="module")
def trees() -> dict[str, Tree]:
    return {name: build() for name, build in BUILDERS.items()}


# ---------------------------------------------------------------- definitions, recomputed
def _dot(q: np.ndarray, x: np.ndarray) -> float:
    """<q, x> as math.fsum of the rounded products: within u sum |q_i x_i| + u |<q, x>| of exact."""
    return math.fsum(float(a) * float(b) for a, b in zip(q, x))


def _dot_tol(q: np.ndarray, x: np.ndarray) -> float:
    """How far plain's float64 dot may be from :func:`_dot` (module docstring)."""
    return (q.size + 2) * U * math.fsum(abs(float(a) * float(b)) for a, b in zip(q, x))


def _norm(x: np.ndarray) -> float:
    return math.sqrt(math.fsum(float(a) ** 2 for a in x))


def _descendants(tree: Tree, v: int) -> list[int]:
    """D(v): the live targets of node v, the contiguous range of ``tree.order``."""
    return [int(y) for y in tree.order[tree.start[v]:tree.stop[v]]]


def _children(tree: Tree, v: int) -> tuple[list[int], list[int]]:
    """The entries that replace v (4): children with n_c > 0, or a leaf's targets."""
    if tree.is_leaf[v]:
        return [], _descendants(tree, v)
    return [int(c) for c in tree.child_idx[tree.child_ptr[v]:tree.child_ptr[v + 1]] if tree.count[c] > 0], []


def _terms(tree: Tree, q: np.ndarray, nodes: list[int], targets: list[int]) -> list[tuple[float, float, float, float]]:
    """(log n, s, eps, tolerance of s) per entry: nodes (n_v, <q, r_v>, ||q|| rho_v), then targets (1, a_y, 0)."""
    qn = _norm(q)
    out = [(math.log(int(tree.count[v])), _dot(q, tree.rep[v]), qn * float(tree.radius[v]), _dot_tol(q, tree.rep[v]))
           for v in nodes]
    return out + [(0.0, _dot(q, tree.points[y]), 0.0, _dot_tol(q, tree.points[y])) for y in targets]


def _lse(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(math.fsum(math.exp(x - m) for x in xs))


def _bracket(terms) -> tuple[float, float, float]:
    """lo, hi of (2) and the tolerance of the comparison with plain's (module docstring)."""
    lo = _lse([ln + s - e for ln, s, e, _ in terms])
    hi = _lse([ln + s + e for ln, s, e, _ in terms])
    big_t = max(abs(ln) + abs(s) + e for ln, s, e, _ in terms)
    return lo, hi, 16 * U * (big_t + len(terms) + 1) + max(t for *_, t in terms)


def _log_slack(ln: float, s: float, e: float) -> float:
    """log S_v of (3): S_v = n_v exp(s) (exp(e) - exp(-e)) = n_v exp(s) 2 sinh(e); -inf when e = 0."""
    assert e < 300.0  # 2 sinh(e) is finite here
    return ln + s + math.log(2.0 * math.sinh(e)) if e > 0 else -math.inf


def _cut_entries(cut) -> tuple[list[int], list[int]]:
    """The node entries and the single-target entries of a single-query Cut."""
    return cut.node[cut.node >= 0].tolist(), cut.target[cut.node < 0].tolist()


# ---------------------------------------------------------------- Step: the sequential cut (5)
def _check_steps(tree: Tree, q: np.ndarray, tol: float, steps: list, cut) -> None:
    nodes, targets = [tree.root], []
    for i, step in enumerate(steps):
        assert type(step) is plain.Step and type(step.node) is int, step
        for x in (step.log_slack, step.lo, step.hi):
            assert type(x) is float, step
        terms = _terms(tree, q, nodes, targets)
        lo, hi, btol = _bracket(terms)
        assert abs(step.lo - lo) <= btol and abs(step.hi - hi) <= btol, (i, step, lo, hi, btol)
        assert step.hi - step.lo > tol, (i, step)           # (5) did not stop before this expansion
        slack = {v: _log_slack(ln, s, e) for v, (ln, s, e, _) in zip(nodes, terms)}
        big_t = max(abs(ln) + abs(s) + e for ln, s, e, _ in terms[:len(nodes)])
        stol = 16 * U * (big_t + 1) + max(t for *_, t in terms[:len(nodes)])
        best = max(slack.values())
        assert best > -math.inf, (i, "an expansion although every eps_v = 0")
        assert step.node == min(v for v in nodes if slack[v] >= best - 2 * stol), (i, step, slack)  # ties: smaller id
        assert abs(step.log_slack - slack[step.node]) <= stol, (i, step, slack[step.node], stol)
        new_nodes, new_targets = _children(tree, step.node)                                # (4)
        nodes = [v for v in nodes if v != step.node] + new_nodes
        targets = targets + new_targets
    # the trace ends where (5) stops, and the replayed cut is the returned one
    terms = _terms(tree, q, nodes, targets)
    lo, hi, btol = _bracket(terms)
    assert hi - lo <= tol + 2 * btol or all(e == 0 for _, _, e, _ in terms), (len(steps), lo, hi)
    assert sorted(nodes) == sorted(_cut_entries(cut)[0]) and sorted(targets) == sorted(_cut_entries(cut)[1])


@pytest.mark.parametrize("name,seed,scale", CASES)
@pytest.mark.parametrize("tol", [1.0, 0.05, 1e-6])
def test_steps_are_the_sequential_cut_field_by_field(trees, name, seed, scale, tol):
    tree = trees[name]
    q = _query(tree, name, seed, scale)
    steps: list = []
    cut = plain.adaptive_cut(tree, q, tol, trace=steps)
    _check_steps(tree, q, tol, steps, cut)
    if name != "one":
        assert steps, "no expansion: the case tests nothing"
    # every adaptive cut is a prefix of refinement_order (the same rule without its stop)
    assert [s.node for s in steps] == plain.refinement_order(tree, q)[:len(steps)].tolist()
    # the trace does not change the result
    plain_cut = plain.adaptive_cut(tree, q, tol)
    assert_array_equal(plain_cut.node, cut.node)
    assert_array_equal(plain_cut.target, cut.target)


def test_mirrored_tree_has_exact_slack_ties_broken_to_the_smaller_id(trees):
    """Precondition of the tie clause: equal slacks occur, and the smaller id goes first."""
    tree = trees["mirrored"]
    steps: list = []
    plain.adaptive_cut(tree, np.array([1.0, 0.0]), 1e-9, trace=steps)
    pairs = [(a, b) for a, b in zip(steps, steps[1:]) if a.log_slack == b.log_slack]
    assert pairs, steps
    assert all(a.node < b.node for a, b in pairs), pairs


# ---------------------------------------------------------------- Proposal: the rejection sampler (8)
@pytest.mark.parametrize("name,seed,scale", CASES)
@pytest.mark.parametrize("tol", [1.0, 0.05])
def test_proposals_field_by_field(trees, name, seed, scale, tol):
    tree = trees[name]
    q = _query(tree, name, seed, scale)
    n = 40
    cut = plain.adaptive_cut(tree, q, tol)
    cut_nodes, cut_targets = map(set, _cut_entries(cut))
    qn = _norm(q)
    trace: list = []
    rng = np.random.default_rng(seed)
    ids = plain.rejection_sample(tree, q, n, rng, tol=tol, trace=trace)
    assert len(trace) >= n
    for i, p in enumerate(trace):
        assert type(p) is plain.Proposal, p
        assert type(p.node) is int and type(p.target) is int and type(p.accepted) is bool, p
        for x in (p.logit, p.bound, p.log_accept, p.uniform):
            assert type(x) is float, p
        if p.node == -1:                                       # a single-target entry of the cut
            assert p.target in cut_targets, (i, p)
            bound, btol = _dot(q, tree.points[p.target]), _dot_tol(q, tree.points[p.target])
        else:                                                  # a node entry of the cut, target in D(v) (7)
            assert p.node in cut_nodes and p.target in _descendants(tree, p.node), (i, p)
            bound = _dot(q, tree.rep[p.node]) + qn * float(tree.radius[p.node])
            btol = _dot_tol(q, tree.rep[p.node]) + 4 * U * abs(bound)
        logit, ltol = _dot(q, tree.points[p.target]), _dot_tol(q, tree.points[p.target])
        assert abs(p.logit - logit) <= ltol, (i, p, logit)
        assert abs(p.bound - bound) <= btol, (i, p, bound)
        assert abs(p.log_accept - (logit - bound)) <= ltol + btol + 2 * U * abs(logit - bound), (i, p)
        if p.node == -1:
            assert p.logit == p.bound and p.log_accept == 0.0, (i, p)   # a_y - a_y: accepted surely
        assert 0.0 <= p.uniform < 1.0, (i, p)
        threshold = math.exp(min(0.0, logit - bound))
        if abs(p.uniform - threshold) > 4 * (ltol + btol) + 4 * U:     # away from rounding of the threshold
            assert p.accepted == (p.uniform < threshold), (i, p, threshold)
    # the accepted proposals, in order, are the draws; the last round ends with n accepted
    assert_array_equal(ids, [p.target for p in trace if p.accepted])
    assert trace[-1].accepted
    # the trace changes neither the draws nor the use of the Generator
    rng2 = np.random.default_rng(seed)
    assert_array_equal(plain.rejection_sample(tree, q, n, rng2, tol=tol), ids)
    assert rng2.bit_generator.state == rng.bit_generator.state


@pytest.mark.parametrize("name,seed,scale", CASES)
def test_proposals_replay_the_generator_stream(trees, name, seed, scale):
    """One record per proposal, in the order of the Generator's stream: rounds of (8), (7), then the uniform.

    Each round proposes as many entries as draws are still missing, with one
    ``rng.choice(..., p=...)`` (NumPy's Generator.choice with ``p`` consumes one
    ``random()`` double per draw: seen with NumPy 1.25.2 and 2.4.6, the oldest
    and the newest this project tests), then per
    proposal j ~ uniform{0..n_v - 1} for a node entry (7) (none for a single
    target) and the uniform of (8). A clone of the Generator replays this:
    the target is ``order[start[v] + j]`` and the uniform is bit-identical.
    """
    tree = trees[name]
    q = _query(tree, name, seed, scale)
    n, tol = 30, 0.05
    trace: list = []
    plain.rejection_sample(tree, q, n, np.random.default_rng(seed), tol=tol, trace=trace)
    clone, i, missing = np.random.default_rng(seed), 0, n
    while missing:
        clone.random(missing)                       # the round's choice of entries
        for p in trace[i:i + missing]:
            if p.node >= 0:
                j = int(clone.integers(int(tree.count[p.node])))
                assert p.target == int(tree.order[tree.start[p.node] + j]), (i, p, j)
            assert p.uniform == float(clone.random()), (i, p)
        accepted = sum(p.accepted for p in trace[i:i + missing])
        assert len(trace[i:i + missing]) == missing, "the trace ended within a round"
        i, missing = i + missing, missing - accepted
    assert i == len(trace), "records after the last round"


@pytest.mark.parametrize("name", ["clustered", "deleted", "one_dim"])
def test_proposals_follow_the_envelope(trees, name):
    """Proposed entries are distributed as U_v / U of (8) and targets uniformly within the entry (7).

    Over all (entry, target) pairs the probability is (U_v / U) / n_v; one G-test
    of the proposals' (node, target) pairs against it, false alarms at rate 1e-6.
    """
    tree = trees[name]
    q = _query(tree, name, 13, 8.0)
    tol = 0.5
    cut = plain.adaptive_cut(tree, q, tol)
    nodes, targets = _cut_entries(cut)
    terms = _terms(tree, q, nodes, targets)
    log_u = [ln + s + e for ln, s, e, _ in terms]
    log_total = _lse(log_u)
    entries = [(v, _descendants(tree, v)) for v in nodes] + [(-1, [y]) for y in targets]
    cells, probs = {}, []
    for (entry, members), lu in zip(entries, log_u):
        for y in members:
            cells[(entry, y)] = len(probs)
            probs.append(math.exp(lu - log_total) / len(members))
    trace: list = []
    plain.rejection_sample(tree, q, 6000, np.random.default_rng(13), tol=tol, trace=trace)
    counts = np.bincount([cells[(p.node, p.target)] for p in trace], minlength=len(probs))
    result = g_test(counts, np.array(probs))
    assert result.p_value >= ALPHA, f"G = {result.statistic:.1f}, df = {result.df}, p = {result.p_value:.2e}"
    assert not all(p.accepted for p in trace), "no rejection: the envelope is not exercised"


# ---------------------------------------------------------------- Pop: best-first top-k (9)
def _ub(tree: Tree, q: np.ndarray, v: int) -> tuple[float, float]:
    """ub_v of (9) plus the margin of (10), and the tolerance of the comparison with plain's."""
    qn = _norm(q)
    s, e = _dot(q, tree.rep[v]), qn * float(tree.radius[v])
    margin = ROUNDING * (1.0 + qn * (_norm(tree.rep[v]) + float(tree.radius[v])))
    return s + e + margin, _dot_tol(q, tree.rep[v]) + 8 * U * (abs(s) + e + margin)


@pytest.mark.parametrize("name,seed,scale", CASES)
@pytest.mark.parametrize("kfrac", [0.0, 0.1, 1.0])
def test_pops_replay_the_best_first_search(trees, name, seed, scale, kfrac):
    tree = trees[name]
    q = _query(tree, name, seed, scale)
    k = max(1, int(kfrac * tree.n_live))
    pops: list = []
    ids, logits = plain.topk(tree, q, k, trace=pops)
    logit = {y: _dot(q, tree.points[y]) for y in np.flatnonzero(tree.alive).tolist()}
    ltol = max(_dot_tol(q, tree.points[y]) for y in logit)
    frontier, evaluated = {tree.root}, []
    for i, pop in enumerate(pops):
        assert type(pop) is plain.Pop and type(pop.node) is int and type(pop.ub) is float, pop
        assert type(pop.tau) is float and pop.action in ("stop", "leaf", "expand"), pop
        ub = {v: _ub(tree, q, v) for v in frontier}
        best = max(u for u, _ in ub.values())
        utol = max(t for _, t in ub.values())
        assert pop.node == min(v for v in frontier if ub[v][0] >= best - 2 * utol), (i, pop, ub)  # ties: smaller id
        assert abs(pop.ub - ub[pop.node][0]) <= ub[pop.node][1], (i, pop, ub[pop.node])
        ranked = sorted((logit[y] for y in evaluated), reverse=True)
        tau = ranked[k - 1] if len(ranked) >= k else -math.inf
        assert pop.tau == tau if tau == -math.inf else abs(pop.tau - tau) <= ltol, (i, pop, tau)
        if abs(pop.ub - tau) > ub[pop.node][1] + ltol:   # away from rounding of the comparison
            want = "stop" if ub[pop.node][0] < tau else "leaf" if tree.is_leaf[pop.node] else "expand"
            assert pop.action == want, (i, pop, tau)
        else:
            assert pop.action == ("stop" if pop.ub < pop.tau else "leaf" if tree.is_leaf[pop.node] else "expand")
        frontier.remove(pop.node)
        if pop.action == "stop":
            assert i == len(pops) - 1, "records after the stop"
            break
        if pop.action == "leaf":
            evaluated += _descendants(tree, pop.node)
        else:  # children with n_c > 0 and ub_c >= tau are pushed (9)
            frontier |= {c for c in _children(tree, pop.node)[0] if _ub(tree, q, c)[0] >= tau}
    else:
        assert not frontier, ("the search ended with nodes left", frontier)
    # the result is the top k of the evaluated targets, and the trace does not change it
    want = sorted(evaluated, key=lambda y: (-logit[y], y))[:k]
    assert_array_equal(ids, want)
    ids2, logits2 = plain.topk(tree, q, k)
    assert_array_equal(ids2, ids)
    assert_array_equal(logits2, logits)


def test_mirrored_tree_has_exact_ub_ties_broken_to_the_smaller_id(trees):
    """Precondition of the tie clause: equal ub occur, and the smaller id is popped first."""
    pops: list = []
    plain.topk(trees["mirrored"], np.array([1.0, 0.0]), 3, trace=pops)
    pairs = [(a, b) for a, b in zip(pops, pops[1:]) if a.ub == b.ub]
    assert pairs, pops
    assert all(a.node < b.node for a, b in pairs), pairs
