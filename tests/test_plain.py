"""Tests of reference.plain, the single-query definitions of the tree algorithms.

Two kinds of check:

- plain against brute force (its own proofs-as-tests): the bracket contains
  log Z and is within tol (P2, P7), and is (2) itself, recomputed term by
  term over the cut; the cut is the one of the sequential
  largest-slack rule (5), recomputed from scratch at every step; top-k equals
  the brute-force order, exact ties included (P8); both samplers fit their
  exact distributions (P4's Phat_C for ``cut_sample``, the softmax P for
  ``rejection_sample``, P6) by the project's G-test, the rejection sampler in
  cases where most proposals go through the acceptance step (its trace) and
  at the acceptance rate Z / U of its envelope.
- plain against the fast batched path (``reference.bounds``,
  ``reference.sampling``), for exactly what proofs/README.md section 4.8
  says is equal: top-k ids where the logits are exact (integer points) or
  further apart than rounding (checked as a precondition), with logits to
  rounding; brackets on the same cut within the rounding bound W (plain's
  is not widened, the fast one is); the same cut where the two refinement
  rules agree (a tol so large that both stop at the root, and the end of
  the refinement, where every eps_v = 0) and, in between, both brackets
  valid and within tol; the samplers in distribution (each plain sampler
  against the exact distribution that the fast one is tested against in
  ``proofs/test_p04_cut_distribution.py`` and
  ``proofs/test_p06_rejection_exact.py``: Phat_C of the cut, and P).

Trees: clustered targets, the same after deletes (nodes with n_v = 0),
integer points (exact ties of logits) and duplicated float points.

Tolerances. Deterministic float64 comparisons use 1e-9 relative to
``max(1, |log Z|)`` (proofs/README.md section 6); logits of the two paths agree to 1e-12 of
``||q|| max ||z||`` (their inner products are summed in different orders);
on integer points every logit is an exact integer and compared exactly.
Statistical tests use fixed seeds and fail at p < 1e-6 (the false-alarm rate
of each G-test).
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import logsumexp
from scipy.stats import binomtest

from reference import _fastpath, plain
from reference.bounds import Cut, adaptive_cut, cut_distribution, cut_eps, log_partition_bracket, validate_cut
from reference.data import make_targets
from reference.sampling import topk as fast_topk
from reference.stats import g_test
from reference.tree import Tree

from proofs.strategies_tree import tree_with_empty_nodes

ALPHA = 1e-6      # false-alarm rate of each G-test
N_DRAWS = 20000   # draws per G-test
RTOL = 1e-9       # deterministic float64 statements (proofs/README.md section 6)


# ---------------------------------------------------------------- trees and brute force
def _clustered() -> Tree:
    return Tree.build(make_targets(400, 4, seed=0), branching=3, leaf_size=6, seed=0)


def _deleted() -> Tree:
    """Clustered, then every target of four leaves and a fifth of the rest deleted: empty nodes."""
    return tree_with_empty_nodes(500, 1, leaf_size=6, emptied=4)


def _integer() -> Tree:
    """Integer points in {-2..2}^3: many duplicates, and exact ties of logits for integer queries."""
    points = np.random.default_rng(2).integers(-2, 3, size=(300, 3)).astype(np.float64)
    return Tree.build(points, branching=3, leaf_size=5, seed=2)


def _duplicates() -> Tree:
    """240 float points, each a copy of one of 40 clustered ones (odd dimension 5)."""
    base = make_targets(40, 5, seed=3)
    return Tree.build(base[np.random.default_rng(3).integers(40, size=240)], branching=3, leaf_size=4, seed=3)


BUILDERS = {"clustered": _clustered, "deleted": _deleted, "integer": _integer, "duplicates": _duplicates}


@pytest.fixture(scope="module")
def trees() -> dict[str, Tree]:
    return {name: build() for name, build in BUILDERS.items()}


def _query(tree: Tree, seed: int, scale: float) -> np.ndarray:
    """A random query with ``||q|| max_y ||z_y|| = scale`` (the logit scale)."""
    q = np.random.default_rng(seed).normal(size=tree.dim)
    zmax = np.linalg.norm(tree.points[tree.alive], axis=1).max()
    return q * (scale / (np.linalg.norm(q) * zmax))


def _brute(tree: Tree, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Live ids and their logits ``<q, z_y>``; identical points get bit-identical logits."""
    ids = np.flatnonzero(tree.alive)
    rows, inverse = np.unique(tree.points[ids], axis=0, return_inverse=True)
    return ids, (rows @ q)[inverse.ravel()]


def _log_z(tree: Tree, q: np.ndarray) -> float:
    return float(logsumexp(_brute(tree, q)[1]))


def _entries(cut: Cut) -> set[tuple[int, int]]:
    return set(zip(cut.node.tolist(), cut.target.tolist()))


# ---------------------------------------------------------------- bracket and adaptive cut
@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("scale", [0.0, 1.0, 10.0, 100.0, 1e4])
def test_bracket_contains_log_z_and_is_within_tol(trees, name, scale):
    """P2, P7: lo <= log Z <= hi (to 1e-9: plain's bracket is not widened) and hi - lo <= tol literally
    (or the cut is exact); the cut is a partition; the bracket is within the rounding bound W of the
    fast path's certified bracket on the same cut: both computed (2) are within W of the exact one, and
    the fast one is widened by W, so lo - f_lo and f_hi - hi lie in [-W, 3 W] (plus one ulp)."""
    tree = trees[name]
    for seed in range(2):
        q = _query(tree, seed, scale)
        log_z = _log_z(tree, q)
        fp = RTOL * max(1.0, abs(log_z))
        for tol in (1.0, 0.1, 1e-3):
            lo, hi = plain.bracket(tree, q, tol)
            cut = plain.adaptive_cut(tree, q, tol)
            assert lo - fp <= log_z <= hi + fp, f"{name}: log Z = {log_z} outside [{lo}, {hi}] (tol {tol})"
            assert hi - lo <= tol or cut_eps(tree, q, cut) == 0, f"{name}: hi - lo = {hi - lo} > tol = {tol}"
            validate_cut(tree, cut, full=True)                       # a partition of the live targets
            assert (tree.count[cut.node[cut.node >= 0]] > 0).all()  # empty nodes are skipped
            f_lo, f_hi, _ = log_partition_bracket(tree, q, cut)      # the same cut, the fast formula
            w = float(_fastpath.bracket_rounding(tree, np.linalg.norm(q), len(cut), max(abs(f_lo), abs(f_hi))))
            ulp = np.spacing(max(abs(f_lo), abs(f_hi)))
            for gap in (lo - f_lo, f_hi - hi):
                assert -w <= gap <= 3 * w + ulp, f"{name}: plain and fast brackets differ by {gap} (W = {w})"


def _replay(tree: Tree, q: np.ndarray, order: list[int]) -> list[Cut]:
    """Follow ``order`` from the root with plain.expand, checking (5) at every step from scratch.

    Every step recomputes every entry's terms, lo, hi and slack (3) here, by
    the definitions, and asserts that the node expanded has the largest
    slack (to 1e-9 of the term magnitude: the two computations round
    differently) and, on ties, the smallest node id among the tied; returns
    the cuts along the way (the root cut first). (Its tie rule, the
    smaller node id among equal computed slacks, is not checked here: the
    two computations round differently.)
    """
    qn = float(np.linalg.norm(q))
    nodes, targets, cuts = [tree.root], [], [Cut.root()]
    for v in order:
        s = tree.rep[nodes] @ q
        log_n = np.log(tree.count[nodes])
        eps = qn * tree.radius[nodes]
        slack = np.full(eps.size, -np.inf)
        pos = eps > 0
        slack[pos] = log_n[pos] + s[pos] + eps[pos] + np.log(-np.expm1(-2.0 * eps[pos]))
        mag = 1.0 + qn * float(np.max(tree.rep_norm + tree.radius)) + np.log(tree.n_live)
        i = nodes.index(int(v))
        assert slack[i] >= slack.max() - RTOL * mag, f"node {v}: slack {slack[i]} < largest {slack.max()}"
        children, leaf_targets = plain.expand(tree, int(v))
        nodes.remove(int(v))
        nodes += children
        targets += leaf_targets
        cuts.append(Cut.from_entries(nodes, targets))
    return cuts


@pytest.mark.parametrize("name", ["clustered", "deleted"])
def test_adaptive_cut_is_the_sequential_largest_slack_cut(trees, name):
    """(5): plain.adaptive_cut expands, one at a time, an entry of largest slack (recomputed from
    scratch at every step, ``_replay``), records lo and hi of (2) for each cut before an expansion
    (> tol: it did not stop too early) and returns the first cut with hi - lo <= tol.

    At logit scales 1e3 and 1e4 the sum behind hi falls by far more than
    float64's 16 digits as the cut refines: recomputing every sum at every
    step (plain keeps no running sums) keeps the stop decision exact.
    """
    tree = trees[name]
    for seed, scale in [(0, 3.0), (1, 10.0), (2, 40.0), (3, 1e3), (4, 1e4)]:  # hi falls by up to ~e^1e4
        q = _query(tree, seed, scale)
        for tol in (1.0, 0.3, 0.05):
            steps: list[plain.Step] = []
            got = plain.adaptive_cut(tree, q, tol, trace=steps)
            cuts = _replay(tree, q, [s.node for s in steps])
            assert _entries(got) == _entries(cuts[-1]), f"{name}, scale {scale}, tol {tol}: cut is not the trace's"
            mag = _bracket_by_definition(tree, q, cuts[0])[2]
            for step, cut in zip(steps, cuts):
                want_lo, want_hi, _ = _bracket_by_definition(tree, q, cut)
                assert abs(step.lo - want_lo) <= RTOL * mag and abs(step.hi - want_hi) <= RTOL * mag
                assert step.hi - step.lo > tol, f"{name}, scale {scale}, tol {tol}: expanded a narrow cut"
            lo, hi = plain.bracket(tree, q, tol)
            assert hi - lo <= tol or plain.refinement_order(tree, q).size == len(steps)


@pytest.mark.parametrize("name", ["clustered", "deleted"])
def test_refinement_order_is_the_sequential_rule_to_the_end(trees, name):
    """(5) without its stop: largest-slack expansions (``_replay``), in order, up to a cut that is exact (P7).

    Followed with :func:`plain.expand`, the order passes through every
    adaptive cut (a prefix of it, whatever tol), its brackets never widen
    (P3: these trees are nested) and its last cut has lo = hi = log Z.
    """
    tree = trees[name]
    for seed, scale in [(0, 3.0), (1, 40.0), (2, 1e3)]:
        q = _query(tree, seed, scale)
        order = plain.refinement_order(tree, q)
        cuts = _replay(tree, q, order.tolist())
        log_z = _log_z(tree, q)
        fp = RTOL * max(1.0, abs(log_z))
        prefixes = [_entries(c) for c in cuts]
        for tol in (1.0, 0.1, 1e-3):
            assert _entries(plain.adaptive_cut(tree, q, tol)) in prefixes, f"{name}, tol {tol}: not on the order"
        brackets = np.array([log_partition_bracket(tree, q, c)[:2] for c in cuts])
        assert (np.diff(brackets[:, 0]) >= -fp).all() and (np.diff(brackets[:, 1]) <= fp).all()
        validate_cut(tree, cuts[-1], full=True)
        assert cut_eps(tree, q, cuts[-1]) == 0
        assert_allclose(brackets[-1], [log_z, log_z], rtol=0, atol=fp)


def test_expand_is_statement_4(trees):
    """(4): children with n_c > 0 of an internal node, live targets of a leaf; their D partition D(v)."""
    tree = trees["deleted"]
    for v in range(tree.count.size):
        nodes, targets = plain.expand(tree, v)
        below = sorted(targets + [int(y) for c in nodes for y in tree.order[tree.start[c]:tree.stop[c]]])
        assert below == sorted(tree.order[tree.start[v]:tree.stop[v]].tolist())
        assert (tree.count[nodes] > 0).all() and (not nodes if tree.is_leaf[v] else not targets)
    for bad in (-1, tree.count.size, 1.0, True):
        with pytest.raises(ValueError, match="v: expected"):
            plain.expand(tree, bad)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_adaptive_cut_matches_fast_where_the_rules_agree(trees, name):
    """Same cut as reference.bounds.adaptive_cut at both ends (the root, and the exhausted cut where every
    eps_v = 0); in between both brackets are valid and within tol, and the cuts may differ: the fast rule
    expands in bulk rounds and aims at tol - 8 W (proofs/README.md section 4.8)."""
    tree = trees[name]
    for seed in range(3):
        q = _query(tree, seed, 3.0)
        log_z = _log_z(tree, q)
        fp = RTOL * max(1.0, abs(log_z))
        r_lo, r_hi, _ = log_partition_bracket(tree, q, Cut.root())
        wide = (r_hi - r_lo) + 1.0  # the root is narrow enough: both stop there
        assert _entries(plain.adaptive_cut(tree, q, wide)) == _entries(adaptive_cut(tree, q, wide)) == {(0, -1)}
        # the end of the refinement: plain's refinement_order to the end, and the fast cut at a tol
        # below its rounding widening (8 W > 1e-12: it refines to the end); the exhausted cut is unique
        end = _replay(tree, q, plain.refinement_order(tree, q).tolist())[-1]
        assert _entries(end) == _entries(adaptive_cut(tree, q, 1e-12))
        for tol in (1.0, 0.1):
            f_lo, f_hi, _ = log_partition_bracket(tree, q, adaptive_cut(tree, q, tol))
            lo, hi = plain.bracket(tree, q, tol)
            for a, b in ((lo, hi), (f_lo, f_hi)):
                assert a - fp <= log_z <= b + fp and b - a <= tol + fp


def test_bracket_at_twenty_thousand_targets():
    """Usable at N = 2e4 (a cut of thousands of entries; see --durations) and still certified."""
    tree = Tree.build(make_targets(20000, 8, seed=4), seed=4)
    for scale, tol in [(10.0, 0.05), (100.0, 0.01), (1e4, 0.1)]:
        q = _query(tree, 4, scale)
        log_z = _log_z(tree, q)
        fp = RTOL * max(1.0, abs(log_z))
        lo, hi = plain.bracket(tree, q, tol)
        assert lo - fp <= log_z <= hi + fp and hi - lo <= tol + fp


def _bracket_by_definition(tree: Tree, q: np.ndarray, cut: Cut) -> tuple[float, float, float]:
    """(2) over ``cut``, entry by entry: (lo, hi, term magnitude), without plain or the fast path.

    Terms log n_v + <q, r_v> -/+ ||q|| rho_v (n = 1, r = z_y, rho = 0 for a
    single target), entries with n_v = 0 skipped; the magnitude is
    1 + ||q|| (max ||z|| + max ||r_v|| + rho_root) + log N, as in P2's test.
    """
    qn = float(np.linalg.norm(q))
    lo, hi = [], []
    for v, y in zip(cut.node.tolist(), cut.target.tolist()):
        n, r, rho = (int(tree.count[v]), tree.rep[v], float(tree.radius[v])) if v >= 0 else (1, tree.points[y], 0.0)
        if n:
            lo.append(np.log(n) + float(r @ q) - qn * rho)
            hi.append(np.log(n) + float(r @ q) + qn * rho)
    zmax = np.linalg.norm(tree.points[tree.alive], axis=1).max()
    rmax = np.linalg.norm(tree.rep[tree.count > 0], axis=1).max()
    scale = 1.0 + qn * (zmax + rmax + float(tree.radius[0])) + np.log(tree.n_live)
    return float(logsumexp(lo)), float(logsumexp(hi)), float(scale)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_bracket_is_statement_2_on_its_cut(trees, name):
    """(2) itself, not only a valid bracket: plain.bracket is logsumexp_v(log n_v + <q, r_v> -/+ eps_v)
    over the entries of plain.adaptive_cut, computed here term by term (1e-9 of the term magnitude).

    The checks above compare plain with the fast formula and test validity:
    a looser valid bracket (log_z_hat -/+ eps_C, or a widening shared by both
    paths) passes them.
    """
    tree = trees[name]
    for seed, scale in [(0, 1.0), (1, 10.0), (2, 100.0), (3, 1e4)]:
        q = _query(tree, seed, scale)
        for tol in (3.0, 1.0, 0.1):
            want_lo, want_hi, mag = _bracket_by_definition(tree, q, plain.adaptive_cut(tree, q, tol))
            lo, hi = plain.bracket(tree, q, tol)
            assert abs(lo - want_lo) <= RTOL * mag and abs(hi - want_hi) <= RTOL * mag, (
                f"{name}, scale {scale}, tol {tol}: bracket [{lo!r}, {hi!r}], (2) gives [{want_lo!r}, {want_hi!r}]")


# ---------------------------------------------------------------- top-k
@pytest.mark.parametrize("name", list(BUILDERS))
def test_topk_equals_brute_force_with_ties(trees, name):
    """P8: exactly the brute-force top-k in the order np.lexsort((ids, -logits)), ties by smaller id."""
    tree = trees[name]
    rng = np.random.default_rng(5)
    for seed in range(4):
        if name == "integer":  # integer queries: every logit an exact integer, ties everywhere
            q = rng.integers(-2, 3, size=tree.dim).astype(np.float64)
        else:
            q = _query(tree, seed, 10.0)
        ids, a = _brute(tree, q)
        o = np.lexsort((ids, -a))
        for k in (1, 7, 40, tree.n_live):
            got_ids, got_a = plain.topk(tree, q, k)
            assert_array_equal(got_ids, ids[o[:k]], err_msg=f"{name}, k = {k}")
            if name == "integer":
                assert_array_equal(got_a, a[o[:k]])
            else:
                assert_allclose(got_a, a[o[:k]], rtol=0, atol=1e-12 * 10.0)
    if name == "integer":  # the case that the tie rule decides
        ids, a = _brute(tree, np.array([1.0, 0.0, 0.0]))
        assert (a == a.max()).sum() > 40
        assert_array_equal(plain.topk(tree, np.array([1.0, 0.0, 0.0]), 40)[0], ids[a == a.max()][:40])


def test_topk_ties_of_duplicates_at_any_magnitude():
    """P8 on 100 small trees of copies of 2-5 points, coordinates from 1e-3 to 1e3, k anywhere.

    Duplicates split by index over several leaves make nodes whose radius is
    zero or a few ulps: their bound ub_v is tight, and only the rounding
    margin of (10) keeps a tied copy with a smaller id from being pruned.
    """
    for seed in range(100):
        rng = np.random.default_rng(seed)
        m, dim = int(rng.integers(2, 6)), int(rng.integers(1, 6))
        base = rng.normal(size=(m, dim)) * 10 ** rng.uniform(-3, 3)
        tree = Tree.build(base[rng.integers(m, size=int(rng.integers(30, 120)))],
                          branching=int(rng.integers(2, 4)), leaf_size=int(rng.integers(1, 4)), seed=seed)
        for _ in range(5):
            q = rng.normal(size=dim) * 10 ** rng.uniform(-2, 2)
            k = int(rng.integers(1, tree.n_live + 1))
            ids, a = _brute(tree, q)
            assert_array_equal(plain.topk(tree, q, k)[0], ids[np.lexsort((ids, -a))][:k], err_msg=f"seed {seed}")


@pytest.mark.parametrize("name", list(BUILDERS))
def test_topk_equals_fast_where_logits_are_exact_or_well_separated(trees, name):
    """The same ids as reference.sampling.topk, and the same logits to rounding (exactly on integer points).

    What is equal, exactly: both return the exact top-k of the logits *as each computes them*
    (P8 in floating point); the two sum inner products in different orders, so their ids can
    differ only where two distinct targets' logits lie within rounding (~1e-16 of the logit
    scale) of each other (proofs/test_p08_topk_exact.py, near-ties). Here that cannot happen,
    and the test checks it first: on integer points with integer queries every logit is an
    exact integer; elsewhere distinct points have logits at least 1e-9 of the scale apart, and
    equal points (duplicates) get bit-identical logits on both paths, ordered by id.
    """
    tree = trees[name]
    for seed, scale in [(0, 1.0), (1, 30.0), (2, 1e4)]:
        q = np.round(_query(tree, seed, scale)) if name == "integer" else _query(tree, seed, scale)
        live, a = _brute(tree, q)
        if name != "integer":
            rows, first = np.unique(tree.points[live], axis=0, return_index=True)
            distinct = np.sort(a[first])
            assert np.diff(distinct).min() > 1e-9 * scale, "precondition: no near-ties between distinct points"
        for k in (1, 10, 50):
            ids, a_k = plain.topk(tree, q, k)
            f_ids, f_a = fast_topk(tree, q, k)
            assert_array_equal(ids, f_ids, err_msg=f"{name}, scale {scale}, k = {k}")
            assert_allclose(a_k, f_a, rtol=0, atol=0.0 if name == "integer" else 1e-12 * scale)


def test_topk_refuses_a_tree_violating_i3():
    """Section 4.6: an evaluated logit above its leaf's ub_v beyond the rounding margin raises ValueError."""
    tree = Tree.build(make_targets(200, 3, seed=8), branching=3, leaf_size=5, seed=8)
    q = _query(tree, 8, 20.0)
    plain.topk(tree, q, 5)                   # valid: no error
    tree.radius[tree.is_leaf] *= 0.5         # every leaf too small for its farthest target
    with pytest.raises(ValueError, match="I3"):
        plain.topk(tree, q, tree.n_live)     # k = N: every leaf is evaluated


def test_plain_imports_nothing_private():
    """plain.py stands alone: no fast-path internals; only numpy, scipy, the standard library, the
    public reference.tree and reference.bounds, and the shared argument checks of reference._validation;
    and no name with a leading underscore from any of them."""
    import ast
    import inspect
    allowed = {"__future__", "heapq", "math", "typing", "numpy", "scipy.special", "reference._validation",
               "reference.bounds", "reference.tree"}
    tree_ = ast.parse(inspect.getsource(plain))
    for node in ast.walk(tree_):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mutmut."):
            continue  # the mutation runner's copy of plain.py imports mutmut's own harness
        if isinstance(node, ast.ImportFrom):
            assert node.module in allowed, f"plain imports from {node.module}"
            assert not any(a.name.startswith("_") for a in node.names if node.module != "__future__"), node.module
        elif isinstance(node, ast.Import):
            assert all(a.name in allowed for a in node.names), [a.name for a in node.names]


# ---------------------------------------------------------------- samplers
def _assert_fits(tree: Tree, ids: np.ndarray, log_p: np.ndarray, label: str) -> None:
    assert ids.shape == (N_DRAWS,) and ids.dtype == np.int64 and tree.alive[ids].all(), label
    result = g_test(np.bincount(ids, minlength=tree.points.shape[0]), np.exp(log_p))
    assert result.p_value >= ALPHA, f"{label}: G = {result.statistic:.1f}, df = {result.df}, p = {result.p_value:.2e}"


@pytest.mark.parametrize("name", ["clustered", "deleted", "duplicates"])
def test_cut_sample_fits_cut_distribution(trees, name):
    """P4's Phat_C (reference.bounds.cut_distribution of the same cut): G-test, false alarms at rate 1e-6.

    Also log_q is log Phat_C of each draw (deterministic, 1e-9).
    """
    tree = trees[name]
    rng = np.random.default_rng(6)
    for tol, scale in [(1.0, 8.0), (0.2, 3.0)]:
        q = _query(tree, 6, scale)
        log_p = cut_distribution(tree, q, plain.adaptive_cut(tree, q, tol))
        ids, log_q = plain.cut_sample(tree, q, N_DRAWS, rng, tol=tol)
        assert_allclose(log_q, log_p[ids], rtol=0, atol=RTOL * max(1.0, abs(_log_z(tree, q))))
        _assert_fits(tree, ids, log_p, f"cut_sample on {name}, tol {tol}")


@pytest.mark.parametrize("name", ["clustered", "deleted", "duplicates"])
def test_rejection_sample_fits_softmax(trees, name):
    """P6: exact draws from P(y) = exp(a_y) / Z: G-test, false alarms at rate 1e-6 per (tree, tol)."""
    tree = trees[name]
    rng = np.random.default_rng(7)
    for tol, scale in [(1.0, 8.0), (3.0, 5.0)]:
        q = _query(tree, 7, scale)
        ids, a = _brute(tree, q)
        log_p = np.full(tree.points.shape[0], -np.inf)
        log_p[ids] = a - logsumexp(a)
        _assert_fits(tree, plain.rejection_sample(tree, q, N_DRAWS, rng, tol=tol), log_p,
                     f"rejection_sample on {name}, tol {tol}")


@pytest.mark.parametrize("name, tol, scale", [("clustered", 1.0, 8.0), ("deleted", 3.0, 5.0)])
def test_rejection_sample_goes_through_rejection_at_the_rate_z_over_u(trees, name, tol, scale):
    """P6 on the plain path, where it has teeth: most proposals come from node entries with eps_v > 0
    (read from the sampler's trace), so a wrong acceptance probability (1.5 eps_v, say)
    changes the distribution (G-test) and the rate; accepted / proposals matches Z / U = exp(log Z - hi),
    hi of (2) over the cut of plain.adaptive_cut (two-sided exact binomial test). Each test fails at
    p < 1e-6 (false-alarm rate 1e-6 each); fixed seeds. The trace itself is checked: the accepted
    proposals are the returned ids, in order, and each records a_y, its bound and u < exp(log_accept).

    (Draws stop at exactly n acceptances, so the number of proposals is a stopping time; with
    > 2e4 proposals the O(1/n) bias of accepted / proposals is far below the test's resolution.)
    """
    tree = trees[name]
    q = _query(tree, 17, scale)
    trace: list[plain.Proposal] = []
    ids = plain.rejection_sample(tree, q, N_DRAWS, np.random.default_rng(17), tol=tol, trace=trace)
    assert [p.target for p in trace if p.accepted] == ids.tolist()
    for p in trace[:200]:
        assert p.logit == float(q @ tree.points[p.target]) and p.log_accept == p.logit - p.bound
        assert p.accepted == (p.uniform < np.exp(min(p.log_accept, 0.0)))
    share = np.mean([p.node >= 0 and p.log_accept < 0 for p in trace])
    assert share >= 0.5, f"{name}: only {share:.1%} of proposals went through the acceptance step"
    live, a = _brute(tree, q)
    log_p = np.full(tree.points.shape[0], -np.inf)
    log_p[live] = a - logsumexp(a)
    _assert_fits(tree, ids, log_p, f"rejection_sample on {name}, tol {tol}")
    _, hi, _ = _bracket_by_definition(tree, q, plain.adaptive_cut(tree, q, tol))
    rate = float(np.exp(_log_z(tree, q) - hi))
    assert rate >= np.exp(-tol) * (1 - 1e-9)
    pv = binomtest(N_DRAWS, len(trace), rate).pvalue
    assert pv >= ALPHA, f"{name}: acceptance {N_DRAWS}/{len(trace)} vs Z / U = {rate:.4f}: p = {pv:.2e}"


def test_rejection_sample_refuses_a_tree_violating_i3():
    """A radius too small for its targets makes an acceptance probability exceed 1: ValueError, not bias."""
    tree = Tree.build(make_targets(200, 3, seed=8), branching=3, leaf_size=5, seed=8)
    tree.radius[:] *= 0.5
    q = _query(tree, 8, 20.0)
    with pytest.raises(ValueError, match="I3"):
        plain.rejection_sample(tree, q, 2000, np.random.default_rng(8), tol=1e3)


def test_samplers_are_deterministic_for_a_seed(trees):
    tree, q = trees["deleted"], _query(trees["deleted"], 9, 5.0)
    for sample in (lambda r: plain.cut_sample(tree, q, 50, r)[0], lambda r: plain.rejection_sample(tree, q, 50, r)):
        assert_array_equal(sample(np.random.default_rng(9)), sample(np.random.default_rng(9)))


# ---------------------------------------------------------------- validation
def test_invalid_inputs_raise_value_error(trees):
    tree = trees["clustered"]
    q, rng = _query(tree, 0, 1.0), np.random.default_rng(0)
    calls = {
        "adaptive_cut": lambda t, qq: plain.adaptive_cut(t, qq, 1.0),
        "bracket": lambda t, qq: plain.bracket(t, qq, 1.0),
        "cut_sample": lambda t, qq: plain.cut_sample(t, qq, 3, rng),
        "rejection_sample": lambda t, qq: plain.rejection_sample(t, qq, 3, rng),
        "topk": lambda t, qq: plain.topk(t, qq, 3),
    }
    bad_queries = [(np.zeros(3), r"q: expected shape \(4,\), got \(3,\)"), (np.zeros((2, 4)), "q: expected a 1-D"),
                   (np.array([0.0, np.nan, 0.0, 0.0]), "q: expected finite"),
                   (np.array([np.inf, 0.0, 0.0, 0.0]), "q: expected finite"),
                   (np.array(["a", "b", "c", "d"]), "q: expected a real numeric")]
    for name, call in calls.items():
        for bad, match in bad_queries:
            with pytest.raises(ValueError, match=match):
                call(tree, bad)
        for bad_tree in (object(), Tree()):
            with pytest.raises(ValueError, match="tree: expected a reference.tree.Tree with at least one"):
                call(bad_tree, q)
    for tol in (0.0, -1.0, np.nan, np.inf, "1", True):
        for call in (plain.adaptive_cut, plain.bracket):
            with pytest.raises(ValueError, match="tol: expected"):
                call(tree, q, tol)
        with pytest.raises(ValueError, match="tol: expected"):
            plain.cut_sample(tree, q, 3, rng, tol=tol)
        with pytest.raises(ValueError, match="tol: expected"):
            plain.rejection_sample(tree, q, 3, rng, tol=tol)
    for n in (0, -2, 3.0, True, "3"):
        for sampler in (plain.cut_sample, plain.rejection_sample):
            with pytest.raises(ValueError, match="n: expected an integer"):
                sampler(tree, q, n, rng)
    for bad_rng in (None, 0, np.random.RandomState(0)):
        for sampler in (plain.cut_sample, plain.rejection_sample):
            with pytest.raises(ValueError, match="rng: expected a numpy.random.Generator"):
                sampler(tree, q, 3, bad_rng)
    for k, match in [(0, "k: expected an integer >= 1"), (tree.n_live + 1, f"k: expected an integer <= {tree.n_live}"),
                     (1.5, "k: expected an integer, got"), (False, "k: expected an integer, got")]:
        with pytest.raises(ValueError, match=match):
            plain.topk(tree, q, k)
