"""Teeth for the gaps of the second fresh mutation sample (seed 4076342106), closed by theme.

Each test pins a family of behaviour the default suite left open (tests/mutation/survivors.md,
the `not yet killed` entries of that sample): every public function that takes a cut checks its
number of queries; each side of a range clause has its own message; documented formulas (the W0
tolerance of ``DynamicIndex.check_invariants``, the center of ``bracket_rounding_bound``) compared
with their formula; non-finite kernel values are a ValueError and nothing else (the suite turns
RuntimeWarnings into errors); the degenerate zero kernel matrix; the pruning rule (9) of
``plain.topk`` seen through its public trace and on logits far below zero; I3 reported by top-k's
seeding beam; what a disk-backed tree writes; the entry order of the dense fallback's cut; the
dtypes of a bare ``Tree()``. Deterministic (fixed seeds), no probabilistic assertion.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from reference import bounds, plain, sampling
from reference.bounds import Cut
from reference.dynamic import DynamicIndex
from reference.nystrom import NystromMap, polynomial
from reference.tree import InvariantError, Tree


@pytest.fixture(scope="module")
def tree() -> Tree:
    return Tree.build(np.random.default_rng(41).standard_normal((60, 3)), branching=3, leaf_size=4)


# ------------------------------------------------------------- cuts: number of queries, ranges

def _two_query_cut() -> Cut:
    return Cut(np.array([0, 1]), np.array([0, 0]), np.array([-1, -1]), 2)


@pytest.mark.parametrize("call", [
    lambda t, Q, c: bounds.cut_distribution(t, Q, c),
    lambda t, Q, c: bounds.log_partition_bracket(t, Q, c),
    lambda t, Q, c: bounds.cut_eps(t, Q, c),
    lambda t, Q, c: bounds.tv_bound(t, Q, c),
    lambda t, Q, c: bounds.grad_bias_bound(t, Q, c),
    lambda t, Q, c: sampling.cut_sample(t, Q, 2, np.random.default_rng(0), cut=c),
], ids=["cut_distribution", "log_partition_bracket", "cut_eps", "tv_bound", "grad_bias_bound", "cut_sample"])
def test_every_function_taking_a_cut_checks_its_number_of_queries(tree: Tree, call) -> None:
    """A cut built for 2 queries, used with 3: the documented ValueError naming `cut`, not a result."""
    Q = np.random.default_rng(42).standard_normal((3, 3))
    with pytest.raises(ValueError, match=r"^cut: expected a cut for 3 queries, got one for 2$"):
        call(tree, Q, _two_query_cut())


@pytest.mark.parametrize("query", [[0, 5], [-1, 0], [-1, 5]], ids=["too large", "negative", "both"])
def test_each_side_of_the_query_range_has_the_range_message(query) -> None:
    """Out of [0, n_queries) on either side (or both): the range clause's own message."""
    with pytest.raises(ValueError, match=r"^Cut\.query: expected values in \[0, 3\), got range "):
        Cut(np.array(query), np.array([0, 0]), np.array([-1, -1]), 3)


# ------------------------------------------------------------- documented tolerance of W0

def test_dynamic_index_w0_tolerance_is_its_formula() -> None:
    """W0 off from S A by half the documented 2 m eps (|S| |A|) passes, by twice it fails, at the
    entries where |S| |A| is largest and smallest (a tolerance of another form fails one of the four)."""
    G = np.random.default_rng(43).standard_normal((40, 5)) * np.array([1e-3, 1.0, 10.0, 1e2, 1e3])
    ix = DynamicIndex(G, np.arange(0, 40, 6), leaf_size=4)
    S, A = ix.nmap.inv_sqrt, ix.nmap.anchor
    m = S.shape[0]
    P = np.abs(S) @ np.abs(A)
    tol = 2 * m * np.finfo(np.float64).eps * P
    exact = S @ A
    assert P.max() > 10 and P.min() < 0.1   # both sides of 1: a product and a quotient differ
    W0 = ix.W0.copy()
    for ij in (np.unravel_index(np.argmax(P), P.shape), np.unravel_index(np.argmin(P), P.shape)):
        for factor, ok in ((0.5, True), (2.0, False)):
            ix.W0 = exact.copy()
            ix.W0[ij] = exact[ij] + factor * tol[ij]
            assert (abs(ix.W0[ij] - exact[ij]) > tol[ij]) == (not ok)   # the perturbation is representable
            if ok:
                ix.check_invariants()
            else:
                with pytest.raises(InvariantError, match=r"^DynamicIndex: W0: expected K_LL\^\{-1/2\} g_0\(L\)"):
                    ix.check_invariants()
    ix.W0 = W0
    ix.check_invariants()


# ------------------------------------------------------------- non-finite and degenerate kernels

@pytest.mark.parametrize("degree", [2, 3])
def test_features_that_overflow_are_a_value_error_and_nothing_else(degree: int) -> None:
    """Kernel values or features beyond float64 (inputs within MAX_ABS_COORD): the ValueError naming G,
    with no RuntimeWarning on the way (the suite's filterwarnings turns one into a failure)."""
    nm = NystromMap(kernel=polynomial(degree=degree)).fit(np.random.default_rng(44).standard_normal((10, 3)) * 1e10, np.arange(4))
    G = np.full((2, 3), 1e150)
    G[1] *= -1.0
    with pytest.raises(ValueError, match=r"^G: "):
        nm.features(G)


def test_reconstruction_error_of_a_zero_kernel_matrix_is_inf() -> None:
    """||K||_F = 0 (an anchor of zeros, no ridge): the documented ratio is undefined, reported as inf."""
    nm = NystromMap(kernel="linear").fit(np.random.default_rng(45).standard_normal((10, 3)), np.arange(3))
    nm.anchor = np.zeros_like(nm.anchor)
    assert nm.reconstruction_error() == math.inf


# ------------------------------------------------------------- plain top-k: rule (9)

@pytest.mark.parametrize("shift", [0.0, 1000.0], ids=["centred", "logits near -1000"])
def test_plain_topk_pushes_only_the_children_rule_9_keeps(shift: float) -> None:
    """Rule (9) through the public trace: a child enters the heap when its parent expands only if fewer
    than k targets are known or ub_c >= tau (tau does not change while a node expands, so it is the
    parent's recorded tau); a popped node stops the search iff ub < tau. Results against brute force,
    also for logits far below zero (where a threshold of the wrong field prunes too much)."""
    for seed in range(12):
        rng = np.random.default_rng(seed)
        X = rng.standard_normal((200, 3))
        X[:, 0] += shift
        t = Tree.build(X, branching=3, leaf_size=4)
        q = rng.standard_normal(3)
        if shift:
            q[0] = -1.0
        a = X @ q
        for k in (1, 3, 7):
            trace: list[plain.Pop] = []
            ids, _ = plain.topk(t, q, k, trace=trace)
            np.testing.assert_array_equal(ids, np.lexsort((np.arange(200), -a))[:k])
            assert trace[0].node == t.root
            popped = {}
            for p in trace:
                assert (p.action == "stop") == (p.ub < p.tau)
                if p.node != t.root:
                    parent = popped[int(t.parent[p.node])]        # popped before, and expanded
                    assert parent.action == "expand" and t.count[p.node] > 0
                    assert p.ub >= parent.tau                     # pushed: ub_c >= tau (or tau = -inf)
                popped[p.node] = p
            assert [p.action for p in trace[:-1]].count("stop") == 0


# ------------------------------------------------------------- what a disk-backed tree writes

def test_a_disk_backed_tree_names_its_files_after_its_arrays(tmp_path) -> None:
    """With ``storage``, the two N x k arrays are ``tree-points-<hex>.npy`` and ``tree-points_dfs-<hex>.npy``,
    after the build and after every operation that rewrites the DFS copy (delete, insert, rebuild)."""
    import re

    rng = np.random.default_rng(46)
    t = Tree.build(rng.standard_normal((80, 3)), branching=3, leaf_size=4, storage=tmp_path)

    def kinds() -> list[str]:
        names = sorted(p.name for p in tmp_path.iterdir())
        assert all(re.fullmatch(r"tree-(points|points_dfs)-[0-9a-f]{32}\.npy", n) for n in names), names
        return sorted(n.split("-")[1] for n in names)

    assert kinds() == ["points", "points_dfs"]
    for op in (lambda: t.delete(np.arange(5)), lambda: t.insert(rng.standard_normal((4, 3))), lambda: t.rebuild(1)):
        op()
        t.check_invariants()
        assert kinds() == ["points", "points_dfs"]


# ------------------------------------------------------------- the dense fallback's cut

def test_a_dense_querys_cut_lists_every_live_target_in_tree_order() -> None:
    """A query that leaves for the dense fallback gets one entry per live target, in the order of
    ``tree.order``, also when other queries' entries come first before the sort by query (a stable sort
    keeps the order; an unstable one reorders the entries, and so the draws of a seed)."""
    rng = np.random.default_rng(0)
    t = Tree.build(rng.standard_normal((9000, 4)), seed=0, branching=2)
    Q = rng.standard_normal((4, 4)) * np.array([[3.0], [0.01], [3.0], [0.01]])   # dense, root-only, ...
    cut = sampling.rejection_envelope(t, Q, 5)
    dense = [b for b in range(4) if cut.ptr[b + 1] - cut.ptr[b] == t.n_live and (cut.node[cut.ptr[b]:cut.ptr[b + 1]] < 0).all()]
    assert dense == [0, 2]   # the fallback is exercised, for queries listed after the others' entries
    for b in dense:
        np.testing.assert_array_equal(cut.target[cut.ptr[b]:cut.ptr[b + 1]], t.order)


# ------------------------------------------------------------- top-k: I3 checked on every path

@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("y", [0, 3, 9, 11])
def test_topk_reports_i3_even_when_the_violation_would_prune_its_own_leaf(y: int, k: int) -> None:
    """A target moved far out of its leaf (radius left stale), for targets whose leaf the seeding beam of
    top-k scores on this 12-target tree: the violation must be reported there; unchecked, the logit
    would seed a threshold above every bound and top-k would return without looking at the leaf again.
    (A violating target in a leaf that neither phase scores, e.g. y = 5 here, is not seen by top-k: its
    stale bound prunes it; tree.check_invariants() sees it.)"""
    rng = np.random.default_rng(47)
    t = Tree.build(rng.standard_normal((12, 3)), branching=3, leaf_size=4)
    far = np.array([40.0, -40.0, 40.0])
    leaf = int(t.leaf_of[y])
    t.points[y] = far
    t.points_dfs[int(np.flatnonzero(t.order == y)[0])] = far
    with pytest.raises(ValueError, match=rf"^tree: invariant I3 violated \(topk\): target {y} has .* for node {leaf}, "):
        sampling.topk(t, far / 40.0, k)


# ------------------------------------------------------------- the bracket's rounding bound, as documented

def test_bracket_rounding_bound_is_bracket_rounding_at_its_documented_center() -> None:
    """``bracket_rounding_bound`` is ``bracket_rounding`` with n = N + M terms and |center| bounded by
    ||q|| S + 2 log(N + M + 1) + 1 (its docstring; the code adds a relative 1e-10 to ||q|| S): pinned
    between that center and the same center times (1 + 1e-9), for several trees and query norms."""
    from reference import _fastpath

    rng = np.random.default_rng(48)
    for n, br in ((30, 2), (200, 4), (500, 8)):
        t = Tree.build(rng.standard_normal((n, 3)) * 5.0, branching=br, leaf_size=4)
        t.delete(np.arange(3))
        N, M = int(t.n_live), int(t.radius.shape[0])
        qnorm = np.array([0.0, 1.0, 30.0, 1e4])
        center = qnorm * _fastpath.tree_scale(t) + 2.0 * np.log(N + M + 1.0) + 1.0
        got = _fastpath.bracket_rounding_bound(t, qnorm)
        assert (_fastpath.bracket_rounding(t, qnorm, N + M, center) <= got).all()
        assert (got <= _fastpath.bracket_rounding(t, qnorm, N + M, center * (1.0 + 1e-9))).all()


# ------------------------------------------------------------- dtypes of public attributes

def test_a_bare_tree_has_the_array_dtypes_and_dimensions_of_a_built_one() -> None:
    """``Tree()`` (the empty placeholder that build and load fill) documents the same attributes as a
    built tree: every array attribute of it has the built tree's dtype and number of dimensions."""
    bare = Tree()
    built = Tree.build(np.random.default_rng(49).standard_normal((20, 3)), branching=3, leaf_size=4)
    arrays = {name: a for name, a in vars(bare).items() if isinstance(a, np.ndarray)}
    assert {"is_leaf", "order", "parent", "radius", "rep", "points_dfs", "leaf_of"} <= set(arrays)
    for name, a in arrays.items():
        b = getattr(built, name)
        assert (a.dtype, a.ndim) == (b.dtype, b.ndim), name
