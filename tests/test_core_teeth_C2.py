"""Teeth for open themes of softmax, sampling, _fastpath and plain (tests/mutation/survivors.md).

The mutation run of commit 7841a26 (seeds 2331372295 2648788835 2540233516) left survivors in
these modules that are real gaps. Each test below pins a whole kind of behaviour, not one mutant:

- error messages name the argument and say what came: every non-integer ``axis`` type refused by
  every function that takes ``axis``; every kind of bad ``log_q`` named ``log_q`` by both
  functions that take it; every public function of ``reference.plain`` naming the type of a
  non-Tree argument.
- float32 input is computed in float64: ``sample_softmax`` of float32 logits draws the ids of
  their float64 cast (a float32 cumulative sum moves some draws).
- every option at its boundary: ``inverse_cdf`` with zero thresholds per row, ``plain.cut_sample``
  and ``plain.rejection_sample`` with n = 1, ``dense_blocks``' block rule at n_live = 1 (and
  above), ``tree_height``'s documented fallback for a tree object without depths,
  ``plain.refinement_order``'s int64 dtype when no node is expanded.
- the documented rounding margins: the children's bounds of the fast top-k (``_child_bounds``)
  are those of ``_node_bounds`` for the same (query, node), and the dense fallback keeps exactly
  the targets within ``ROUNDING (1 + ||q|| S)`` of the k-th logit.
- a draw from a segment of the one cumulative sum stays in its own segment even at the largest
  uniform ``rng.random()`` returns, 1 - 2^-53 (where ``base + u (end - base)`` rounds to ``end``).
- the documented rules at the last bit: ``reference._fastpath.refine`` expands a query whose
  bracket exceeds ``tol`` by one or two ulps (its allowance rounds to the whole slack, so only the
  forced mark of the largest slack makes it progress; without it the cut came back empty).
- what a constructor does to the caller's arrays: ``bounds.Cut`` keeps read-only int64 copies and
  leaves the arrays given writable and unchanged (it used to make int64 arguments read-only).

Deterministic: fixed seeds and stub generators; no probabilistic assertion, no timing.
"""

from __future__ import annotations

import re
import types

import numpy as np
import pytest

from reference import _fastpath, bounds, plain, sampling, softmax
from reference.tree import Tree

NON_INTEGERS = [True, np.True_, False, 1.0, np.float64(0.0), "1", None, [0]]


@pytest.mark.parametrize("fn", [softmax.log_partition, softmax.softmax])
@pytest.mark.parametrize("axis", NON_INTEGERS, ids=repr)
def test_every_non_integer_axis_is_refused_by_name(fn, axis):
    a = np.arange(6.0).reshape(2, 3)
    with pytest.raises(ValueError, match=r"^axis: expected an integer, got " + re.escape(type(axis).__name__)):
        fn(a, axis=axis)


@pytest.mark.parametrize("fn", [softmax.log_partition, softmax.softmax])
def test_integer_axes_of_every_kind_are_accepted(fn):
    a = np.arange(6.0).reshape(2, 3)
    for axis in (0, 1, -1, np.int64(1), np.int32(0)):
        np.testing.assert_array_equal(fn(a, axis=axis), fn(a, axis=int(axis)))


BAD_LOG_Q = {
    "nan": lambda s: np.full(s, np.nan),
    "inf": lambda s: np.full(s, np.inf),
    "strings": lambda s: np.full(s, "x"),
    "complex": lambda s: np.zeros(s, complex),
    "shape": lambda s: np.zeros(s[:-1] + (s[-1] + 1,)),
}


@pytest.mark.parametrize("kind", BAD_LOG_Q)
def test_every_bad_log_q_is_named_log_q(kind):
    a = np.zeros((2, 3))
    lq = BAD_LOG_Q[kind](a.shape)
    with pytest.raises(ValueError, match=r"^log_q: "):
        softmax.sampled_log_partition(a, lq)
    with pytest.raises(ValueError, match=r"^log_q: "):
        softmax.sampled_softmax_loss(np.zeros(2), a, lq)


def test_float32_logits_draw_the_ids_of_their_float64_cast():
    a = (np.random.default_rng(1).normal(size=(4, 3000)) * 3).astype(np.float32)
    got = softmax.sample_softmax(a, 5000, np.random.default_rng(7))
    want = softmax.sample_softmax(a.astype(np.float64), 5000, np.random.default_rng(7))
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    got1 = softmax.sample_softmax(a[0], 5000, np.random.default_rng(7))
    np.testing.assert_array_equal(got1, softmax.sample_softmax(a[0].astype(np.float64), 5000,
                                                               np.random.default_rng(7)))


def test_inverse_cdf_with_zero_thresholds_per_row():
    cdf = np.cumsum(np.ones((3, 4)), axis=1)
    out = softmax.inverse_cdf(cdf, np.zeros((3, 0)))
    assert out.shape == (3, 0) and out.dtype == np.int64


class _Extreme:
    """A stand-in generator whose ``random`` returns one fixed value (the draw code calls only that)."""

    def __init__(self, u: float) -> None:
        self.u = u

    def random(self, size):
        return np.full(size, self.u)


@pytest.mark.parametrize("u", [0.0, 0.5, 1.0 - 2.0**-53], ids=["u=0", "u=1/2", "u=1-2^-53"])
def test_segment_draws_stay_in_their_segment_at_the_extreme_uniforms(u):
    # 2000 segments of 3 entries, each a probability vector (as cut_sample builds them), so the
    # cumulative sum reaches ~2000 where a segment's width (~1) is ~2^-11 of it: at u = 1 - 2^-53,
    # base + u (end - base) rounds to end.
    rng = np.random.default_rng(0)
    S, m = 2000, 3
    p = rng.uniform(0.1, 1.0, size=(S, m))
    p /= p.sum(axis=1, keepdims=True)
    ptr = np.arange(S + 1, dtype=np.int64) * m
    cdf = sampling._SegmentCDF(None, None, ptr, prob=p.ravel())
    qb = np.arange(S, dtype=np.int64)
    e = cdf.draw(qb, _Extreme(u))
    assert np.all((ptr[qb] <= e) & (e < ptr[qb + 1]))
    if u == 0.0:   # the first entry of positive weight: the segment's first
        np.testing.assert_array_equal(e, ptr[qb])


def _tree(n=400, k=5, seed=0, **kw):
    X = np.random.default_rng(seed).normal(size=(n, k))
    return Tree.build(X, leaf_size=8, branching=4, **kw)


def test_child_bounds_are_the_node_bounds_of_each_child():
    tree = _tree()
    rng = np.random.default_rng(3)
    Q = rng.normal(size=(5, tree.points.shape[1])) * 2.0
    qnorm = np.linalg.norm(Q, axis=1)
    inner = np.flatnonzero(~tree.is_leaf & (tree.count > 0))[:12]
    q = np.repeat(np.arange(Q.shape[0]), inner.size)
    v = np.tile(inner, Q.shape[0])
    counters = {"node_logits": 0}
    cq, cc, ub, margin = sampling._child_bounds(tree, Q, qnorm, tree.rep_norm, q, v, counters)
    # every child with n_c > 0 of every (query, node) pair, once
    want = sorted((int(b), int(c)) for b, u in zip(q, v)
                  for c in tree.child_idx[tree.child_ptr[u]:tree.child_ptr[u + 1]] if tree.count[c] > 0)
    assert sorted(zip(cq.tolist(), cc.tolist())) == want
    ub0, margin0 = sampling._node_bounds(tree, Q, qnorm, tree.rep_norm, cq, cc)
    np.testing.assert_array_equal(margin, margin0)       # one formula, the same operations
    # ub from a batched product vs row by row: the last bits only, far inside the margin
    assert np.all(np.abs(ub - ub0) <= margin0 * 1e-3)


def test_dense_candidates_are_the_targets_within_the_documented_margin():
    # Targets on one axis, query 8 e_1 (a power of two): every logit 8 c_y is exact, so the test
    # controls each target's distance below the k-th logit to the last bit.
    top = 1000.0
    m_lo = _fastpath.ROUNDING * (1.0 + 8.0 * top)        # the margin for ||q|| = 8 and S = ||z_max|| = top
    inside = [top - 0.5 * m_lo / 8.0, top - 0.9 * m_lo / 8.0]              # t - m/2, t - 0.9 m: kept
    outside = [top - 10 * m_lo / 8.0, top - 40 * m_lo / 8.0, 500.0, 0.0, -200.0]
    c = np.array([top] + inside + outside)
    tree = Tree.build(np.column_stack([c, np.zeros_like(c)]), leaf_size=2)
    S = _fastpath.tree_scale(tree)                        # the documented S (>= ||z_y||), in [top, 2.5 top]
    m = _fastpath.ROUNDING * (1.0 + 8.0 * S)
    assert top <= S <= 2.5 * top
    want = np.flatnonzero(8.0 * c >= 8.0 * top - m)       # the definition, from the exact logits
    np.testing.assert_array_equal(want, [0, 1, 2])        # the design: inside kept, outside not
    Q = np.array([[8.0, 0.0]])
    counters = {"target_logits": 0}
    tq, ty, a = sampling._dense_candidates(tree, Q, np.array([0]), 1, np.linalg.norm(Q, axis=1), counters)
    assert sorted(ty.tolist()) == [0, 1, 2]
    np.testing.assert_array_equal(tq, 0)
    np.testing.assert_array_equal(a, 8.0 * c[ty])
    assert counters["target_logits"] == c.size + 3        # N logits, then the 3 candidates re-scored


@pytest.mark.parametrize("n_live", [1, 3, 10])
def test_dense_blocks_follow_the_documented_block_rule(monkeypatch, n_live):
    X = np.random.default_rng(2).normal(size=(n_live, 3))
    tree = Tree.build(X, leaf_size=4)
    assert tree.n_live == n_live
    monkeypatch.setattr(_fastpath, "DENSE_BLOCK_BYTES", 64)
    Q = np.random.default_rng(4).normal(size=(20, 3))
    per = max(1, 64 // (8 * n_live))                      # 8, 2, 1 rows
    blocks = list(_fastpath.dense_blocks(tree, Q))
    assert [(b0, b1) for b0, b1, _ in blocks] == [(b, min(b + per, 20)) for b in range(0, 20, per)]
    for b0, b1, A in blocks:
        np.testing.assert_array_equal(A, Q[b0:b1] @ tree.points_dfs.T)


def test_tree_height_with_and_without_depths():
    tree = _tree()
    assert _fastpath.tree_height(tree) == int(tree.depth.max()) >= 1
    assert _fastpath.tree_height(types.SimpleNamespace(radius=np.zeros(7))) == 7
    assert _fastpath.tree_height(types.SimpleNamespace(depth=np.zeros(0, np.int64), radius=np.zeros(5))) == 5


PLAIN_CALLS = {
    "expand": lambda t: plain.expand(t, 0),
    "adaptive_cut": lambda t: plain.adaptive_cut(t, np.zeros(2)),
    "refinement_order": lambda t: plain.refinement_order(t, np.zeros(2)),
    "bracket": lambda t: plain.bracket(t, np.zeros(2)),
    "cut_sample": lambda t: plain.cut_sample(t, np.zeros(2), 1, np.random.default_rng(0)),
    "rejection_sample": lambda t: plain.rejection_sample(t, np.zeros(2), 1, np.random.default_rng(0)),
    "topk": lambda t: plain.topk(t, np.zeros(2), 1),
}


@pytest.mark.parametrize("name", PLAIN_CALLS)
@pytest.mark.parametrize("bad", ["a tree", 3.5, None, [[0.0, 1.0]], np.zeros((3, 2))], ids=lambda b: type(b).__name__)
def test_plain_refuses_a_non_tree_naming_its_type(name, bad):
    with pytest.raises(ValueError, match=r"^tree: expected a reference\.tree\.Tree with at least one live "
                                         r"target, got " + re.escape(type(bad).__name__) + "$"):
        PLAIN_CALLS[name](bad)


@pytest.mark.parametrize("points", [np.ones((1, 3)), np.ones((5, 3))], ids=["one target", "equal targets"])
def test_refinement_order_is_int64_when_nothing_is_expanded(points):
    tree = Tree.build(points, leaf_size=2)
    order = plain.refinement_order(tree, np.ones(3))
    assert order.shape == (0,) and order.dtype == np.int64


@pytest.mark.parametrize("sampler", [plain.cut_sample, plain.rejection_sample])
def test_plain_samplers_at_their_smallest_n(sampler):
    tree = _tree(n=60, k=2)
    q = np.array([0.5, -1.0])
    out = sampler(tree, q, 1, np.random.default_rng(5))
    ids = out[0] if sampler is plain.cut_sample else out   # cut_sample also returns log Phat_C(ids)
    assert ids.shape == (1,) and ids.dtype == np.int64 and 0 <= ids[0] < 60 and tree.alive[ids[0]]
    if sampler is plain.cut_sample:
        assert out[1].shape == (1,) and out[1][0] <= 0.0
    for n in (0, -1):
        with pytest.raises(ValueError, match=r"^n: expected an integer >= 1, got "):
            sampler(tree, q, n, np.random.default_rng(5))


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_cut_leaves_the_callers_arrays_as_they_were(dtype):
    # A Cut keeps read-only int64 copies: the caller's arrays stay writable and unchanged, and a
    # later write to them does not reach the (validated) cut.
    q, v, y = (np.array(a, dtype=dtype) for a in ([0, 0, 1], [0, -1, 2], [-1, 3, -1]))
    before = [a.copy() for a in (q, v, y)]
    cut = bounds.Cut(q, v, y, 2)
    for a, b in zip((q, v, y), before):
        assert a.flags.writeable and a.dtype == dtype
        np.testing.assert_array_equal(a, b)
    for name, b in zip(("query", "node", "target"), before):
        got = getattr(cut, name)
        assert got.dtype == np.int64 and not got.flags.writeable
        np.testing.assert_array_equal(got, b)
    q[:] = 1
    np.testing.assert_array_equal(cut.query, [0, 0, 1])


def test_refine_refines_every_query_wider_than_tol_at_the_last_bit():
    # The bracket rule marks the entries whose slack from there on exceeds the allowance, and always
    # the largest: a query whose width exceeds tol by one or two ulps has an allowance A / S that
    # rounds to 1, so only that forced mark makes it progress. For tol a few ulps either side of the
    # root's width (as refine computes it), refine must expand the root exactly when the width
    # exceeds tol, and always return a non-empty cut with a finite bracket.
    rng = np.random.default_rng(0)
    tree = Tree.build(rng.normal(size=(300, 4)), leaf_size=8, branching=4)
    for _ in range(16):
        Q = rng.normal(size=(1, 4)) * rng.uniform(0.1, 2)
        lo, hi, _ = _fastpath.refine(tree, Q, tol=1e9).bracket          # the root cut alone
        w = float(hi[0] - lo[0])
        for j in range(-3, 4):
            tol = w + j * np.spacing(w)
            st = _fastpath.refine(tree, Q, tol=tol)
            l, h, _ = st.bracket
            assert st.size >= 1 and np.isfinite(l[0]) and np.isfinite(h[0])
            assert (st.rounds >= 1) == (j < 0)
