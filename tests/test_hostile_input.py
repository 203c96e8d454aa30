"""Hostile and extreme input over the public API (Hypothesis).

The contract (STYLE, preamble): every public entry point either works
correctly or raises a clear ``ValueError``; nothing else escapes (no
``TypeError``, ``IndexError``, ``FloatingPointError``, and no
``RuntimeWarning``, which pytest turns into an error here); it never returns
NaN; it never modifies the caller's arrays; and a rejected call leaves every
object it was handed (tree, map, index, model, optimiser, generator) bitwise
unchanged.

Inputs are drawn from :func:`hostile_arrays`: values up to 1e4 in magnitude
(logits up to 1e4, zero and huge query norms), NaN and +-inf sprinkled in,
empty and single-row shapes, duplicate rows, dtypes float64 / float32 / int64 /
bool (accepted) and object / complex / str (rejected), and layouts contiguous,
strided (non-contiguous), Fortran-ordered and read-only. Each test states what
"works correctly" means for its function (an oracle: brute force in float64);
an input is *valid* when it is finite, real, non-empty and of the right shape.

Tolerances: 1e-9 relative in float64 (proofs/README.md section 6.14: deterministic identities), 1e-4
relative for float32 inputs (float32 eps is 1.2e-7; log-sum-exp and a few
products lose a few hundred ulp at most at |a| = 1e4).
"""

from __future__ import annotations

import copy
import io
from typing import Any

import numpy as np
import pytest
from hypothesis import currently_in_test_context, given, note, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

from reference import softmax as sm
from reference.tree import Tree
from tests.test_persist import assert_same_state

ACCEPTED_DTYPES = ("float64", "float32", "int64", "bool")
REJECTED_DTYPES = ("object", "complex128", "str")
LAYOUTS = ("contiguous", "strided", "fortran", "readonly")


# --------------------------------------------------------------------------- strategies


class Hostile:
    """A drawn input: the array handed to the API and what it means."""

    def __init__(self, array: np.ndarray, values: np.ndarray, dtype: str, layout: str) -> None:
        self.array = array  # what the API receives
        self.values = values  # the same numbers as float64, C-contiguous (the oracle's input)
        self.dtype = dtype
        self.layout = layout

    @property
    def valid_values(self) -> bool:
        """Finite, real, non-empty (shape is checked by each test)."""
        return self.dtype in ACCEPTED_DTYPES and self.values.size > 0 and bool(np.isfinite(self.values).all())

    def __repr__(self) -> str:
        return f"Hostile({self.dtype}, {self.layout}, shape={self.values.shape}, values={self.values!r})"


def _with_layout(a: np.ndarray, layout: str) -> np.ndarray:
    if layout == "strided" and a.ndim >= 1:
        wide = np.repeat(a, 2, axis=-1) if a.shape[-1] else a
        return wide[..., ::2] if a.shape[-1] else wide
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "readonly":
        a = a.copy()
        a.flags.writeable = False
    return a


@st.composite
def hostile_arrays(
    draw,
    shape: Any,
    *,
    scale: float = 1e4,
    specials: bool = True,
    dtypes: tuple[str, ...] = ACCEPTED_DTYPES + REJECTED_DTYPES,
    pool_rows: bool = True,
) -> Hostile:
    """An array of ``shape`` (a tuple or a strategy of tuples) with hostile values, dtype and layout.

    Values: mostly uniform in [-scale, scale] (and exact zeros), rows possibly
    drawn from a small pool (duplicates), optionally NaN / +-inf.
    """
    shp = draw(shape) if isinstance(shape, st.SearchStrategy) else shape
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="value seed"))
    magnitude = draw(st.sampled_from([scale, 0.0, 1e-3, 1.0, scale]), label="magnitude")
    values = rng.uniform(-magnitude, magnitude, size=shp)
    if len(shp) >= 2 and shp[0] > 1 and pool_rows and draw(st.booleans(), label="duplicate rows"):
        values = values[rng.integers(0, max(1, shp[0] // 3), shp[0])]
    if values.size and draw(st.booleans(), label="zeros"):
        values[rng.random(shp) < 0.3] = 0.0
    if specials and values.size and draw(st.integers(0, 3), label="specials") == 0:
        values.flat[int(rng.integers(values.size))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    dtype = draw(st.sampled_from(dtypes), label="dtype")
    if dtype == "int64" or dtype == "bool":
        if not np.isfinite(values).all():
            dtype = "float64"
        else:
            values = np.round(values) if dtype == "int64" else (values > 0).astype(np.float64)
    if dtype == "float32":
        values = values.astype(np.float32).astype(np.float64)
    arr = {
        "float64": lambda v: v.copy(),
        "float32": lambda v: v.astype(np.float32),
        "int64": lambda v: v.astype(np.int64),
        "bool": lambda v: v > 0,
        "object": lambda v: v.astype(object),
        "complex128": lambda v: v.astype(np.complex128),
        "str": lambda v: v.astype(str),
    }[dtype](values)
    if dtype in ACCEPTED_DTYPES:
        values = arr.astype(np.float64)  # exactly what a float64 cast of the input gives (-0.0 -> 0 for ints)
    layout = draw(st.sampled_from(LAYOUTS), label="layout")
    return Hostile(_with_layout(arr, layout), values, dtype, layout)


@st.composite
def hostile_ids(draw, n: int, size: Any = st.integers(0, 6)) -> tuple[Any, bool]:
    """(ids, valid): int ids in [0, n), or out-of-range / negative / non-integral / bool / object / 2-D ones."""
    m = draw(size) if isinstance(size, st.SearchStrategy) else size
    kind = draw(st.sampled_from(["ok", "ok", "ok", "float_integral", "out_of_range", "negative",
                                 "non_integral", "bool", "object", "two_d", "list"]))
    ids = np.asarray(draw(st.lists(st.integers(0, max(n - 1, 0)), min_size=m, max_size=m)), dtype=np.int64)
    valid = m > 0 and n > 0
    if kind == "float_integral":
        return ids.astype(np.float64), valid
    if kind == "out_of_range":
        return np.append(ids, n), False
    if kind == "negative":
        return np.append(ids, -1), False
    if kind == "non_integral":
        return np.append(ids.astype(np.float64), 0.5), False
    if kind == "bool":
        return np.ones(max(m, 1), dtype=bool), False
    if kind == "object":
        return np.append(ids, 0).astype(object), False
    if kind == "two_d":
        return np.append(ids, 0).reshape(1, -1), False
    if kind == "list":
        return [int(i) for i in ids], valid
    return ids, valid


# --------------------------------------------------------------------------- the harness


def call(fn, *args, objects: tuple = (), **kwargs) -> tuple[bool, Any]:
    """Call ``fn``; return (True, result) or (False, the ValueError).

    Asserts: only ``ValueError`` escapes, with a non-empty message; the array
    arguments are not modified (bitwise, writeable flag included); on a
    rejection every object in ``objects`` is bitwise unchanged (all its
    attributes, generators' states included).
    """
    arrays = [a for a in list(args) + list(kwargs.values()) if isinstance(a, np.ndarray)]
    before = [(a.copy(), a.flags.writeable) for a in arrays]
    snapshot = [copy.deepcopy(o) for o in objects]
    try:
        result = fn(*args, **kwargs)
        ok = True
    except ValueError as exc:
        assert str(exc).strip(), f"{fn.__name__} raised a ValueError without a message"
        if currently_in_test_context():
            note(f"rejected: {exc}")
        result, ok = exc, False
    for a, (b, w) in zip(arrays, before):
        assert a.dtype == b.dtype and a.shape == b.shape and a.flags.writeable == w
        if a.dtype.kind == "O":
            assert list(a.ravel()) == list(b.ravel()) or all(x is y or x == y or (x != x and y != y)
                                                             for x, y in zip(a.ravel(), b.ravel()))
        else:
            assert a.tobytes() == b.tobytes(), f"{fn.__name__} modified its input array"
    if not ok:
        for o, s in zip(objects, snapshot):
            assert_same_state(o, s, f"{type(o).__name__} after a rejected {fn.__name__}")
    return ok, result


def _rel_close(got: np.ndarray, want: np.ndarray, rtol: float, scale: np.ndarray | float = 1.0) -> None:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert np.isfinite(got).all(), f"non-finite result {got}"
    err = np.abs(got - want)
    bound = rtol * (np.abs(want) + scale)
    assert (err <= bound).all(), f"max error {err.max()} > bound {bound[np.argmax(err - bound)] if np.ndim(bound) else bound}"


def _rtol(h: Hostile) -> float:
    return 1e-4 if h.dtype == "float32" else 1e-9


def _shapes(rows=(0, 6), cols=(0, 8)) -> st.SearchStrategy:
    return st.tuples(st.integers(*rows), st.integers(*cols))


def _rng(draw_seed: int) -> np.random.Generator:
    return np.random.default_rng(draw_seed)


# --------------------------------------------------------------------------- softmax

# The softmax functions cost microseconds per example: run more of them than the profile's default.
_MANY = settings(max_examples=max(200, settings.default.max_examples))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_logits_of_magnitude_1e4(dtype) -> None:
    """proofs/README.md section 2: nothing overflows for logits up to 1e4 (exp(1e4) is inf in float64)."""
    a = np.array([[1e4, -1e4, 0.0, 1e4 - 1.0], [-1e4, -1e4, -1e4, -1e4 + 3.0]], dtype=dtype)
    a64 = a.astype(np.float64)
    want = np.array([1e4 + np.log1p(np.exp(-1.0)), -1e4 + 3.0 + np.log1p(3 * np.exp(-3.0))])
    rtol = _rtol(Hostile(a, a64, np.dtype(dtype).name, "contiguous"))
    _rel_close(sm.log_partition(a), want, rtol)
    p = sm.softmax(a)
    _rel_close(p[0], [1 / (1 + np.exp(-1.0)), 0, 0, np.exp(-1.0) / (1 + np.exp(-1.0))], rtol)
    ids = sm.sample_softmax(a, 50, np.random.default_rng(0))
    assert set(np.unique(ids[0])) <= {0, 3} and set(np.unique(ids[1])) <= {0, 1, 2, 3}
    loss, d = sm.full_softmax_loss(a, np.array([1, 3]))
    _rel_close(loss, np.mean([want[0] + 1e4, want[1] - (-1e4 + 3.0)]), rtol, 1e4)
    assert np.isfinite(d).all()
    loss, d_pos, d_neg = sm.sampled_softmax_loss(a[:, 0], a[:, 1:], np.full((2, 3), -np.log(3.0)))
    assert np.isfinite(loss) and np.isfinite(d_pos).all() and np.isfinite(d_neg).all()
    loss, _, _ = sm.sampled_softmax_loss(a[:, 0], a[:, 1:], None)
    assert np.isfinite(loss)
    est = sm.sampled_log_partition(a, np.full(a.shape, -np.log(4.0)))
    _rel_close(est, want, rtol, 1e4)  # the P13 estimate with Q uniform over all 4 targets is exactly log Z


@_MANY
@given(h=hostile_arrays(_shapes()))
def test_log_partition_and_softmax(h: Hostile) -> None:
    ok, logz = call(sm.log_partition, h.array)
    if not h.valid_values:
        assert not ok, f"accepted invalid logits {h}"
        return
    assert ok, f"rejected valid logits: {logz}"
    want = logsumexp(h.values, axis=-1)
    # error ~ eps * max|a| (the max-shift), so the scale is the largest |a| of the row
    _rel_close(logz, want, _rtol(h), np.abs(h.values).max(axis=-1))
    ok, p = call(sm.softmax, h.array)
    assert ok
    assert np.isfinite(p).all() and (p >= 0).all()
    _rel_close(p.sum(axis=-1), np.ones(h.values.shape[0]), 1e-5 if h.dtype == "float32" else 1e-12)


@_MANY
@given(h=hostile_arrays(_shapes(rows=(0, 4), cols=(0, 30))), n=st.integers(-1, 5), seed=st.integers(0, 2**32 - 1))
def test_sample_softmax(h: Hostile, n: int, seed: int) -> None:
    rng = _rng(seed)
    ok, ids = call(sm.sample_softmax, h.array, n, rng, objects=(rng,))
    if not h.valid_values or h.values.ndim != 2 or n < 1:
        assert not ok, f"accepted invalid input {h}, n={n}"
        return
    assert ok, ids
    B, N = h.values.shape
    assert ids.shape == (B, n) and ids.dtype == np.int64
    assert ((ids >= 0) & (ids < N)).all()
    log_p = h.values - logsumexp(h.values, axis=1, keepdims=True)
    assert (np.take_along_axis(log_p, ids, axis=1) > -800).all()  # only targets with P(y) > 0 are drawn


@_MANY
@given(h=hostile_arrays(_shapes(rows=(0, 5), cols=(0, 12))), data=st.data())
def test_full_softmax_loss(h: Hostile, data) -> None:
    B = h.values.shape[0] if h.values.ndim == 2 else 0
    N = h.values.shape[1] if h.values.ndim == 2 else 0
    pos, pos_ok = data.draw(hostile_ids(N, size=st.sampled_from([B, B, B + 1])), label="pos")
    ok, out = call(sm.full_softmax_loss, h.array, pos)
    valid = h.valid_values and pos_ok and np.asarray(pos).size == B
    if not valid:
        assert not ok, f"accepted invalid input {h}, pos={pos!r}"
        return
    assert ok, out
    loss, d = out
    p = np.asarray(pos, dtype=np.int64)
    lz = logsumexp(h.values, axis=1)
    want = np.mean(lz - h.values[np.arange(B), p])
    _rel_close(loss, want, _rtol(h), np.abs(h.values).max())
    assert np.isfinite(d).all() and d.shape == (B, N)
    _rel_close(d.sum(axis=1), np.zeros(B), 1e-5 if h.dtype == "float32" else 1e-12)  # softmax - onehot sums to 0


@_MANY
@given(a_pos=hostile_arrays(st.tuples(st.integers(0, 4)), dtypes=("float64", "float32", "int64", "object")),
       a_neg=hostile_arrays(_shapes(rows=(0, 4), cols=(0, 6)), dtypes=("float64", "float32", "int64", "complex128")),
       with_q=st.booleans(), positive_q=st.booleans())
def test_sampled_softmax_loss(a_pos: Hostile, a_neg: Hostile, with_q: bool, positive_q: bool) -> None:
    B = a_pos.values.shape[0]
    shape = a_neg.values.shape
    log_q = None
    if with_q:
        log_q = -np.abs(a_neg.values) * 1e-3 - np.log(max(shape[1], 1) if len(shape) == 2 else 1)
        if positive_q and log_q.size:
            log_q = log_q.copy()
            log_q.flat[0] = 0.5  # a log-probability > 0
    ok, out = call(sm.sampled_softmax_loss, a_pos.array, a_neg.array, log_q)
    valid = (a_pos.valid_values and a_neg.valid_values and len(shape) == 2 and shape[0] == B
             and not (with_q and positive_q))
    if not valid:
        assert not ok, f"accepted invalid input {a_pos} {a_neg} log_q={log_q}"
        return
    assert ok, out
    loss, d_pos, d_neg = out
    if log_q is None:
        want = np.mean(logsumexp(np.column_stack([a_pos.values, a_neg.values]), axis=1) - a_pos.values)
    else:
        want = np.mean(logsumexp(a_neg.values - log_q, axis=1) - np.log(shape[1]) - a_pos.values)
    scale = max(np.abs(a_pos.values).max(), np.abs(a_neg.values).max(), 1.0)
    _rel_close(loss, want, max(_rtol(a_pos), _rtol(a_neg)), scale)
    assert np.isfinite(d_pos).all() and np.isfinite(d_neg).all()


# --------------------------------------------------------------------------- tree


@given(h=hostile_arrays(st.tuples(st.integers(0, 40), st.integers(0, 4)), scale=1e6),
       branching=st.integers(2, 5), leaf_size=st.integers(1, 8))
def test_tree_build(h: Hostile, branching: int, leaf_size: int) -> None:
    ok, tree = call(Tree.build, h.array, branching=branching, leaf_size=leaf_size, seed=0)
    if not h.valid_values or h.values.ndim != 2:
        assert not ok, f"accepted invalid points {h}"
        return
    assert ok, tree
    tree.check_invariants()
    assert tree.n_live == h.values.shape[0]
    assert tree.points.tobytes() == h.values.tobytes()  # its own float64 copy, exactly the input values


@pytest.mark.parametrize("huge", [1e151, 1e300, np.finfo(np.float64).max])
def test_tree_rejects_coordinates_beyond_its_certified_range(huge: float) -> None:
    """Squared distances must stay finite: coordinates above 1e150 are refused, not overflowed."""
    pts = np.zeros((5, 2))
    pts[2, 1] = huge
    ok, err = call(Tree.build, pts)
    assert not ok and "1e+150" in str(err), err


def _small_tree(seed: int = 0, n: int = 60, k: int = 3, duplicates: bool = True) -> Tree:
    rng = np.random.default_rng(seed)
    pts = rng.standard_normal((n, k))
    if duplicates:
        pts[n // 2:] = pts[0]
    return Tree.build(pts, branching=3, leaf_size=4, seed=seed)


@given(op=st.sampled_from(["insert", "delete", "update", "rebuild"]), data=st.data())
def test_tree_mutations(op: str, data) -> None:
    tree = _small_tree()
    cap = tree.points.shape[0]
    if op == "insert":
        h = data.draw(hostile_arrays(st.tuples(st.integers(0, 5), st.sampled_from([3, 3, 2]))))
        ok, out = call(tree.insert, h.array, objects=(tree,))
        valid = h.valid_values and h.values.shape[1] == 3
    elif op == "delete":
        ids, ids_ok = data.draw(hostile_ids(cap + 2))
        ok, out = call(tree.delete, ids, objects=(tree,))
        valid = ids_ok and np.asarray(ids).max() < cap and np.unique(np.asarray(ids)).size == np.asarray(ids).size
    elif op == "update":
        ids, ids_ok = data.draw(hostile_ids(cap, size=st.integers(0, 4)))
        m = np.asarray(ids).size
        h = data.draw(hostile_arrays(st.tuples(st.sampled_from([m, m, m + 1]), st.just(3))))
        ok, out = call(tree.update, ids, h.array, objects=(tree,))
        valid = (ids_ok and h.valid_values and h.values.shape[0] == m
                 and np.unique(np.asarray(ids)).size == m)
    else:
        depth = data.draw(st.sampled_from([0, 1, 2, 50, -1, 1.5, "1", None, True]))
        ok, out = call(tree.rebuild, depth, objects=(tree,))
        valid = type(depth) is int and depth >= 0
    if not valid:
        assert not ok, f"{op} accepted invalid input"
        return
    if ok:
        tree.check_invariants()
    else:
        # valid-looking input may still be refused for a documented reason (e.g. deleting every target)
        assert op in ("delete", "rebuild"), out


def test_deleting_every_target_is_refused_and_changes_nothing() -> None:
    tree = _small_tree()
    tree.delete(np.arange(0, 60, 2))
    ok, err = call(tree.delete, np.arange(1, 60, 2), objects=(tree,))
    assert not ok and "at least one" in str(err)
    ok, err = call(tree.delete, np.array([1, 1]), objects=(tree,))  # repeated ids
    assert not ok
    ok, err = call(tree.delete, np.array([0]), objects=(tree,))  # already deleted
    assert not ok
    tree.check_invariants()


def test_tree_single_target_and_all_duplicates() -> None:
    from reference import bounds, sampling

    for pts in (np.array([[1.0, -2.0]]), np.ones((50, 2)) * 3.0):
        tree = Tree.build(pts, leaf_size=4)
        tree.check_invariants()
        q = np.array([[0.0, 0.0], [1e4, -1e4]])
        lo, hi, hat = bounds.log_partition_bracket(tree, q, bounds.adaptive_cut(tree, q, 1e-6))
        logz = logsumexp(q @ pts.T, axis=1)
        assert (lo <= logz + 1e-9 * np.abs(logz)).all() and (logz <= hi + 1e-9 * np.abs(logz)).all()
        ids, _ = sampling.topk(tree, q, 1)
        assert (ids[:, 0] == 0).all()  # all logits tie: the smallest id wins
        ids, _ = sampling.rejection_sample(tree, q, 5, np.random.default_rng(0))
        assert ((ids >= 0) & (ids < pts.shape[0])).all()


# --------------------------------------------------------------------------- bounds and samplers


@given(q=hostile_arrays(st.sampled_from([(3,), (2, 3), (1, 3), (0, 3), (2, 2), (2, 3, 1)]), scale=1e4),
       which=st.sampled_from(["bracket", "topk", "cut_sample", "rejection_sample"]),
       seed=st.integers(0, 2**32 - 1))
def test_queries_on_a_tree(q: Hostile, which: str, seed: int) -> None:
    """Zero and huge query norms (up to ~1.7e4: logits up to ~1e5), duplicates in the tree."""
    from reference import bounds, sampling

    tree = _small_tree()
    rng = _rng(seed)
    k = 4
    if which == "bracket":
        def fn(queries):
            return bounds.log_partition_bracket(tree, queries, bounds.adaptive_cut(tree, queries, 0.1))
    elif which == "topk":
        def fn(queries):
            return sampling.topk(tree, queries, k)
    elif which == "cut_sample":
        def fn(queries):
            return sampling.cut_sample(tree, queries, 4, rng)
    else:
        def fn(queries):
            return sampling.rejection_sample(tree, queries, 4, rng, tol=1.0)
    ok, out = call(fn, q.array, objects=(tree, rng))
    if ok:
        assert_same_state(tree, _small_tree(), "tree after a query")  # queries never change the tree
    shape = q.values.shape
    valid = q.valid_values and shape[-1] == 3 and len(shape) in (1, 2)
    if not valid:
        assert not ok, f"{which} accepted invalid queries {q}"
        return
    assert ok, out
    Q = q.values.reshape(-1, 3)
    a = Q @ tree.points.T
    if which == "bracket":
        lo, hi, hat = (np.atleast_1d(x) for x in out)
        logz = logsumexp(a, axis=1)
        slack = 1e-9 * (np.abs(logz) + 1) + _rtol(q) * np.abs(a).max(axis=1)
        assert (lo <= logz + slack).all() and (logz <= hi + slack).all(), (lo, logz, hi)
    elif which == "topk":
        ids, vals = out
        ids = ids.reshape(-1, k)
        order = np.lexsort((np.broadcast_to(np.arange(a.shape[1]), a.shape), -a), axis=1)[:, :k]
        # the k best logits agree (ids may differ only among exact ties)
        _rel_close(np.take_along_axis(a, ids, 1), np.take_along_axis(a, order, 1), 1e-12, np.abs(a).max() + 1)
    else:
        ids = out[0]
        assert ((ids >= 0) & (ids < tree.points.shape[0])).all()
        if which == "cut_sample":
            assert np.isfinite(out[1]).all() and (out[1] <= 1e-9).all()


@given(n=st.sampled_from([0, -1, 2.0, "3", None, True]), k=st.sampled_from([0, -1, 61, 1000, 2.5, None]))
def test_bad_counts_are_rejected(n: Any, k: Any) -> None:
    from reference import sampling

    tree = _small_tree()
    rng = np.random.default_rng(0)
    q = np.ones((2, 3))
    for fn, args in ((sampling.cut_sample, (tree, q, n, rng)), (sampling.rejection_sample, (tree, q, n, rng)),
                     (sampling.topk, (tree, q, k)), (sm.sample_softmax, (q, n, rng))):
        ok, err = call(fn, *args, objects=(tree, rng))
        assert not ok, f"{fn.__name__} accepted n={n!r} / k={k!r}"
    ok, _ = call(sampling.cut_sample, tree, q, 2, "not a generator", objects=(tree,))
    assert not ok


# --------------------------------------------------------------------------- Nystrom and the dynamic index


@given(G=hostile_arrays(st.tuples(st.integers(0, 12), st.sampled_from([3, 3, 2])), scale=1e2), data=st.data())
def test_nystrom_map(G: Hostile, data) -> None:
    from reference.nystrom import NystromMap

    rng = np.random.default_rng(1)
    G0 = rng.standard_normal((20, 3))
    nmap = NystromMap("rbf", ridge=1e-8).fit(G0, np.arange(6))
    kernel_name = data.draw(st.sampled_from(["linear", "rbf", "polynomial"]))
    refit = NystromMap(kernel_name).fit(G0, np.arange(6))
    which = data.draw(st.sampled_from(["fit", "features", "project"]))
    if which == "fit":
        L, L_ok = data.draw(hostile_ids(max(G.values.shape[0], 1), size=st.integers(0, 5)))
        ok, out = call(refit.fit, G.array, L, objects=(refit,))
        Lv = np.asarray(L)
        valid = (G.valid_values and L_ok and G.values.ndim == 2 and Lv.max() < G.values.shape[0]
                 and np.unique(Lv).size == Lv.size)
        if valid and not ok:
            # a kernel matrix that is zero (all landmarks at 0 under the linear kernel) is a documented refusal
            assert "zero" in str(out) or "overflow" in str(out), out
        if ok:
            assert np.isfinite(refit.inv_sqrt).all()
    elif which == "features":
        ok, out = call(nmap.features, G.array, objects=(nmap,))
        valid = G.dtype in ACCEPTED_DTYPES and np.isfinite(G.values).all() and G.values.shape[1] == 3
        if ok:
            assert out.shape == (G.values.shape[0], 6) and np.isfinite(out).all()
            want = np.exp(-((G.values[:, None, :] - G0[None, :6, :]) ** 2).sum(-1)) @ nmap.inv_sqrt
            _rel_close(out, want, 1e-6 if G.dtype == "float32" else 1e-9, 1.0)
    else:
        ok, out = call(nmap.project, G.array, objects=(nmap,))
        valid = G.valid_values and G.values.ndim == 2 and G.values.shape[0] == 6  # G_L: (m, d_out), any d_out
        if ok:
            _rel_close(out, nmap.inv_sqrt @ G.values, 1e-9, np.abs(G.values).max() * 1e3 + 1)
    if not valid:
        assert not ok, f"NystromMap.{which} accepted invalid input {G}"
    elif which != "fit":
        assert ok, out


def _index():
    from reference.dynamic import DynamicIndex

    rng = np.random.default_rng(2)
    G = rng.standard_normal((80, 4))
    G[40:50] = G[0]  # duplicates
    return DynamicIndex(G, np.arange(0, 80, 8), beta=2.0, leaf_size=4), G


@given(op=st.sampled_from(["step", "queries", "refresh", "add", "remove", "logits"]), data=st.data())
def test_dynamic_index(op: str, data) -> None:
    index, G = _index()
    m, d = index.m, index.dim
    if op == "step":
        h = data.draw(hostile_arrays(st.sampled_from([(m, d), (m, d), (m - 1, d), (m, d + 1)]), scale=1e3))
        ok, out = call(index.step, h.array, objects=(index,))
        valid = h.valid_values and h.values.shape == (m, d)
    elif op in ("queries", "logits"):
        h = data.draw(hostile_arrays(st.sampled_from([(d,), (3, d), (0, d), (3, d + 1)]), scale=1e4))
        fn = index.queries if op == "queries" else index.logits
        ok, out = call(fn, h.array, objects=(index,))
        valid = h.valid_values and h.values.shape[-1] == d
        if ok:
            assert np.isfinite(out).all()
        if ok and op == "logits":
            want = index.beta * h.values @ index.approximate().T
            _rel_close(out, want, 1e-9, np.abs(want).max() + 1)
    elif op == "refresh":
        ids, ids_ok = data.draw(hostile_ids(80, size=st.integers(0, 5)))
        n = np.asarray(ids).size
        h = data.draw(hostile_arrays(st.sampled_from([(n, d), (n, d), (n + 1, d)]), scale=1e2))
        ok, out = call(index.refresh, h.array, ids=ids, objects=(index,))
        valid = ids_ok and h.valid_values and h.values.shape == (n, d) and np.unique(np.asarray(ids)).size == n
        if valid and not ok:
            assert "zero" in str(out) or "overflow" in str(out), out  # degenerate K_LL: documented refusal
    elif op == "add":
        h = data.draw(hostile_arrays(st.sampled_from([(2, d), (1, d), (0, d), (2, d - 1)]), scale=1e2))
        ok, out = call(index.add, h.array, objects=(index,))
        valid = h.valid_values and h.values.shape[1] == d
    else:
        ids, ids_ok = data.draw(hostile_ids(80, size=st.integers(0, 3)))
        ok, out = call(index.remove, ids, objects=(index,))
        ids_a = np.asarray(ids)
        valid = ids_ok and np.unique(ids_a).size == ids_a.size and not np.isin(ids_a, index.landmarks).any()
    if not valid:
        assert not ok, f"DynamicIndex.{op} accepted invalid input"
        return
    if op not in ("refresh",):
        assert ok, out
    if ok:
        index.tree.check_invariants()


# --------------------------------------------------------------------------- encoder and optimiser


def _model():
    from reference.encoder import DualEncoder, EncoderConfig
    from reference.optim import Adam

    model = DualEncoder(EncoderConfig(query_dim=3, target_dim=2, hidden=(4,), out_dim=3, beta=5.0), seed=0)
    return model, Adam(model.params, lr=1e-2)


@given(op=st.sampled_from(["encode_queries", "encode_targets", "full_softmax_loss", "sampled_softmax_loss",
                           "adam_step", "set_params"]), data=st.data())
def test_encoder_and_adam(op: str, data) -> None:
    model, opt = _model()
    Y = np.random.default_rng(3).standard_normal((10, 2))
    objects = (model, opt)
    if op in ("encode_queries", "encode_targets"):
        cols = 3 if op == "encode_queries" else 2
        h = data.draw(hostile_arrays(st.sampled_from([(4, cols), (1, cols), (0, cols), (4, cols + 1)]), scale=1e4))
        ok, out = call(getattr(model, op), h.array, objects=objects)
        valid = h.valid_values and h.values.shape[1] == cols
        if ok:
            assert np.isfinite(out).all()
            norms = np.linalg.norm(out, axis=1)  # normalised rows; a zero row stays zero (documented)
            assert (np.minimum(np.abs(norms - 1), norms) <= 1e-12).all(), norms
    elif op == "full_softmax_loss":
        h = data.draw(hostile_arrays(st.sampled_from([(4, 3), (4, 3), (0, 3), (4, 2)]), scale=1e4))
        pos, pos_ok = data.draw(hostile_ids(10, size=st.sampled_from([4, 4, 3])))
        ok, out = call(model.full_softmax_loss, h.array, pos, Y, objects=objects)
        valid = h.valid_values and h.values.shape == (4, 3) and pos_ok and np.asarray(pos).size == 4
        if ok:
            assert np.isfinite(out[0]) and all(np.isfinite(g).all() for g in out[1].values())
    elif op == "sampled_softmax_loss":
        pos = np.array([0, 1, 2])
        neg, neg_ok = data.draw(hostile_ids(10, size=st.just(6)))
        neg = np.asarray(neg)
        neg = neg.reshape(3, -1) if neg.ndim == 1 and neg.size % 3 == 0 and neg.size else neg
        h = data.draw(hostile_arrays(st.just(neg.shape if neg.ndim == 2 else (3, 2)), scale=10.0,
                                     dtypes=("float64", "object")))
        log_q = -np.abs(h.array) if h.dtype == "float64" else h.array
        ok, out = call(model.sampled_softmax_loss, np.ones((3, 3)), pos, Y, neg, log_q, objects=objects)
        valid = neg_ok and neg.ndim == 2 and neg.shape[0] == 3 and h.valid_values
        if ok:
            assert np.isfinite(out[0])
    elif op == "adam_step":
        name = data.draw(st.sampled_from(sorted(model.params)))
        h = data.draw(hostile_arrays(st.sampled_from([model.params[name].shape, (1, 1)]), scale=1e4,
                                     pool_rows=False))
        grads = {k: np.zeros_like(v) for k, v in model.params.items()}
        grads[name] = h.array
        ok, out = call(opt.step, grads, objects=objects)
        valid = h.dtype in ACCEPTED_DTYPES and np.isfinite(h.values).all() and h.values.shape == model.params[name].shape
        if ok:
            assert all(np.isfinite(p).all() for p in model.params.values())
    else:
        name = data.draw(st.sampled_from(sorted(model.params)))
        h = data.draw(hostile_arrays(st.just(model.params[name].shape), scale=10.0, pool_rows=False))
        params = model.get_params()
        params[name] = h.array
        ok, out = call(model.set_params, params, objects=objects)
        valid = h.dtype in ACCEPTED_DTYPES and np.isfinite(h.values).all()
    if not valid:
        assert not ok, f"{op} accepted invalid input"
    else:
        assert ok, out


def test_zero_output_rows_give_finite_gradients() -> None:
    """Regression: an output row u = 0 used to be normalised by the smallest normal float, so the
    backward pass overflowed to inf (found by test_encoder_and_adam in the thorough profile)."""
    model, _ = _model()  # biases start at 0, so x = 0 gives the output u = 0
    Y = np.random.default_rng(3).standard_normal((10, 2))
    loss, grads = model.full_softmax_loss(np.zeros((4, 3)), np.zeros(4, dtype=np.int64), Y)
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values())


# --------------------------------------------------------------------------- metrics


@given(F=hostile_arrays(st.sampled_from([(5, 3), (0, 3), (5, 2)]), scale=1e4),
       data=st.data())
def test_recall_at_k(F: Hostile, data) -> None:
    from reference import metrics

    G = np.random.default_rng(4).standard_normal((8, 3))
    G[4:] = G[0]  # ties: broken by the smaller id
    pos, pos_ok = data.draw(hostile_ids(8, size=st.sampled_from([5, 5, 4])))
    ok, out = call(metrics.recall_at_k, F.array, G, pos, ks=(1, 3))
    valid = F.valid_values and F.values.shape == (5, 3) and pos_ok and np.asarray(pos).size == 5
    if not valid:
        assert not ok, "recall_at_k accepted invalid input"
        return
    assert ok, out
    if F.dtype == "float32":
        return  # float32 input may be scored in float32, where exact ties differ from float64's
    a = F.values @ G.T
    p = np.asarray(pos, dtype=np.int64)
    mine = a[np.arange(5), p]
    rank = ((a > mine[:, None]) | ((a == mine[:, None]) & (np.arange(8) < p[:, None]))).sum(axis=1)
    for k in (1, 3):
        assert out[k] == pytest.approx(np.mean(rank < k), abs=1e-12)


@pytest.mark.parametrize("value", ["1", "0.5", b"1", True, np.bool_(True), None, [1.0], "nan"])
def test_scalar_options_refuse_strings_booleans_and_containers(value: Any) -> None:
    """A temperature, tolerance or ridge given as ``"1"`` or ``True`` is a caller's bug, not a number."""
    from reference._validation import check_nonnegative, check_positive

    with pytest.raises(ValueError, match="tau: expected a positive number, got"):
        check_positive(value, "tau")
    with pytest.raises(ValueError, match="ridge: expected a non-negative number, got"):
        check_nonnegative(value, "ridge")
    from reference.bounds import adaptive_cut

    tree = Tree.build(np.eye(3), leaf_size=1)
    with pytest.raises(ValueError, match="expected a"):
        adaptive_cut(tree, np.ones(3), tol=value)


# --------------------------------------------------------------------------- magnitude limits (MAX_ABS_COORD, MAX_LOGIT)


def _query_entry_points():
    """Every public function that takes queries on a tree: ``name -> fn(tree, queries)``."""
    from reference import bounds, plain, sampling

    rng = np.random.default_rng(0)

    def one(fn):  # plain.*: one query at a time
        return lambda t, Q: [fn(t, q) for q in np.atleast_2d(Q)]

    return {
        "log_partition_bracket": lambda t, Q: bounds.log_partition_bracket(t, Q, bounds.Cut.root(Q.shape[0])),
        "adaptive_cut": lambda t, Q: bounds.adaptive_cut(t, Q, 0.5),
        "cut_eps": lambda t, Q: bounds.cut_eps(t, Q, bounds.Cut.root(Q.shape[0])),
        "cut_distribution": lambda t, Q: bounds.cut_distribution(t, Q, bounds.Cut.root(Q.shape[0])),
        "log_prob_bound": lambda t, Q: bounds.log_prob_bound(t, Q, bounds.Cut.root(Q.shape[0])),
        "tv_bound": lambda t, Q: bounds.tv_bound(t, Q, bounds.Cut.root(Q.shape[0])),
        "kl_bound": lambda t, Q: bounds.kl_bound(t, Q, bounds.Cut.root(Q.shape[0])),
        "grad_bias_bound": lambda t, Q: bounds.grad_bias_bound(t, Q, bounds.Cut.root(Q.shape[0])),
        "cut_sample": lambda t, Q: sampling.cut_sample(t, Q, 3, rng),
        "rejection_sample": lambda t, Q: sampling.rejection_sample(t, Q, 3, rng),
        "rejection_envelope": lambda t, Q: sampling.rejection_envelope(t, Q, 3),
        "topk": lambda t, Q: sampling.topk(t, Q, 2),
        "plain.adaptive_cut": one(lambda t, q: plain.adaptive_cut(t, q, 0.5)),
        "plain.bracket": one(lambda t, q: plain.bracket(t, q, 0.5)),
        "plain.refinement_order": one(plain.refinement_order),
        "plain.cut_sample": one(lambda t, q: plain.cut_sample(t, q, 3, rng)),
        "plain.rejection_sample": one(lambda t, q: plain.rejection_sample(t, q, 3, rng)),
        "plain.topk": one(lambda t, q: plain.topk(t, q, 2)),
    }


@pytest.mark.parametrize("name", list(_query_entry_points()))
@pytest.mark.parametrize("case", ["norm_1e200", "coord_above_limit", "logit_scale_above_limit"])
def test_queries_whose_logits_could_overflow_are_refused(name: str, case: str) -> None:
    """The issue's finding: queries of norm ~1e200 gave a NaN bracket and wrong top-k ids, silently.
    Now every entry point refuses them with a ValueError naming the argument and the limit
    (reference._validation: |q_i| <= MAX_ABS_COORD = 1e150 and ||q|| max_v(||r_v|| + rho_v) <= MAX_LOGIT = 1e150)."""
    fn = _query_entry_points()[name]
    scale = 1e100 if case == "logit_scale_above_limit" else 1.0
    tree = Tree.build(scale * np.random.default_rng(0).standard_normal((30, 3)), leaf_size=4)
    Q = np.ones((2, 3))
    if case == "norm_1e200":
        Q[1] *= 1e200
    elif case == "coord_above_limit":
        Q[1, 2] = 2e150
    else:
        Q[1] *= 1e60  # ||q|| ~ 1.7e60 times node scale ~1e100
    snapshot = copy.deepcopy(tree)
    with pytest.raises(ValueError) as err:
        fn(tree, Q)
    msg = str(err.value)
    assert msg.startswith(("q:", "queries:")), msg
    if case == "logit_scale_above_limit":
        assert "MAX_LOGIT = 1e+150" in msg and ("query 1" in msg or name.startswith("plain.")), msg
    else:
        assert "MAX_ABS_COORD = 1e+150" in msg, msg
    assert_same_state(tree, snapshot, f"tree after a refused {name}")


def test_queries_at_the_logit_limit_are_answered_correctly() -> None:
    """||q|| max ||z|| just below MAX_LOGIT = 1e150: finite, certified, exact top-k (no overflow anywhere)."""
    from reference import bounds, plain, sampling

    rng = np.random.default_rng(1)
    pts = rng.standard_normal((40, 3))
    tree = Tree.build(pts, leaf_size=4)
    scale = 0.5e150 / (np.linalg.norm(pts, axis=1).max() + 2 * float(tree.radius[0]))
    Q = rng.standard_normal((3, 3))
    Q *= scale / np.linalg.norm(Q, axis=1, keepdims=True)
    a = Q @ pts.T
    cut = bounds.adaptive_cut(tree, Q, 1.0)
    lo, hi, hat = bounds.log_partition_bracket(tree, Q, cut)
    assert np.isfinite(lo).all() and np.isfinite(hi).all() and np.isfinite(hat).all()
    assert (lo <= a.max(axis=1) + np.log(40)).all() and (hi >= a.max(axis=1)).all()
    ids, vals = sampling.topk(tree, Q, 3)
    np.testing.assert_array_equal(ids, np.argsort(-a, axis=1, kind="stable")[:, :3])
    assert np.isfinite(vals).all()
    assert (plain.topk(tree, Q[0], 3)[0] == ids[0]).all()
    draws, _ = sampling.rejection_sample(tree, Q, 5, np.random.default_rng(2))
    assert (draws == np.argmax(a, axis=1)[:, None]).all()  # the softmax is a point mass at this scale


@pytest.mark.parametrize("op", ["insert", "update"])
def test_tree_mutations_refuse_coordinates_beyond_the_limit(op: str) -> None:
    tree = _small_tree()
    pts = np.ones((2, 3))
    pts[1, 0] = 1e151
    fn = (lambda: tree.insert(pts)) if op == "insert" else (lambda: tree.update(np.array([0, 1]), pts))
    ok, err = call(fn, objects=(tree,))
    assert not ok and str(err).startswith("points:") and "MAX_ABS_COORD = 1e+150" in str(err), err


def test_grad_bias_bound_refuses_an_H_that_would_overflow() -> None:
    from reference import bounds

    tree = _small_tree()
    ok, err = call(bounds.grad_bias_bound, tree, np.ones(3), bounds.Cut.root(), 1e308, objects=(tree,))
    assert not ok and "H: expected a number <= 1e+300" in str(err), err
    assert np.isfinite(bounds.grad_bias_bound(tree, np.ones(3), bounds.Cut.root(), 1e300))


@pytest.mark.parametrize("tol", [710.0, 1e3, 1e300])
def test_huge_tol_does_not_overflow(tol: float) -> None:
    """Regression: log(expm1(tol)) overflowed (a RuntimeWarning, an error here) for tol > 709."""
    from reference import bounds, plain, sampling

    tree = _small_tree()
    Q = np.ones((2, 3))
    assert len(bounds.adaptive_cut(tree, Q, tol)) == 2  # the root cuts
    sampling.cut_sample(tree, Q, 3, np.random.default_rng(0), tol=tol)
    sampling.rejection_sample(tree, Q, 3, np.random.default_rng(0), tol=tol)
    lo, hi = plain.bracket(tree, Q[0], tol)
    assert lo <= hi


def test_dynamic_index_and_nystrom_refuse_values_beyond_the_limits() -> None:
    """Embeddings, queries and Nystrom coordinates beyond MAX_ABS_COORD / MAX_LOGIT: a ValueError naming the argument."""
    from reference.dynamic import DynamicIndex
    from reference.nystrom import NystromMap, select_landmarks

    index, G = _index()
    m, d = index.m, index.dim
    huge = np.ones((2, d))
    huge[1, 0] = 1e151
    cases = {
        "F": [lambda: index.queries(huge), lambda: index.logits(huge), lambda: index.bracket(huge),
              lambda: index.topk(huge, 2), lambda: index.cut_sample(huge, 2, np.random.default_rng(0)),
              lambda: index.rejection_sample(huge, 2, np.random.default_rng(0)),
              lambda: index.topk(np.full((1, d), 1e149), 2)],          # psi = beta W f beyond the limits
        "G_L": [lambda: index.step(np.vstack([huge, np.ones((m - 2, d))]))],
        "G": [lambda: index.add(huge), lambda: index.refresh(np.vstack([huge, np.ones((m - 2, d))]),
                                                              ids=np.arange(m))],
    }
    for name, fns in cases.items():
        for fn in fns:
            ok, err = call(fn, objects=(index,))
            assert not ok and str(err).startswith(f"{name}:"), err
            assert "MAX_ABS_COORD = 1e+150" in str(err) or "MAX_LOGIT = 1e+150" in str(err), err
    ok, err = call(lambda: DynamicIndex(np.vstack([G, huge]), np.arange(8)))
    assert not ok and str(err).startswith("cache:") and "MAX_ABS_COORD" in str(err), err
    nmap = NystromMap("linear").fit(G, np.arange(6))
    for name, fn in {"G0": lambda: NystromMap().fit(np.vstack([G, huge]), np.arange(6)),
                     "anchor": lambda: NystromMap().fit_anchor(huge),
                     "G": lambda: nmap.features(huge),
                     "G_L": lambda: nmap.project(np.vstack([huge, np.ones((4, d))])),
                     "phi": lambda: nmap.approximate(np.full((1, 6), 1e151), np.ones((6, 2))),
                     "W": lambda: nmap.approximate(np.ones((1, 6)), np.full((6, 2), 1e151))}.items():
        ok, err = call(fn, objects=(nmap,))
        assert not ok and str(err).startswith(f"{name}:") and "MAX_ABS_COORD = 1e+150" in str(err), err
    ok, err = call(select_landmarks, np.vstack([G, huge]), 3, rng=np.random.default_rng(0))
    assert not ok and str(err).startswith("G0:"), err


# --------------------------------------------------------------------------- hostile paths on the command line
#
# Every input path is checked before any work and every bad one ends in exit status 2 and one line
# ``error: --option ...`` on stderr, never a traceback, a hang or a MemoryError. The FIFO and the
# /dev/zero symlink run in a subprocess with a timeout: a regression would block (a FIFO with no
# writer) or read forever (/dev/zero), and must fail the test rather than hang it.

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from reference import cli  # noqa: E402

_REPO = Path(__file__).resolve().parents[1]
_COMPARE = ["compare", "--preset", "quick", "--seeds", "0", "--steps", "2", "--eval-every", "2",
            "--checkpoint-every", "0"]  # no --quiet: a progress line would show that training started


@pytest.fixture
def own_data(tmp_path):
    rng = np.random.default_rng(0)
    paths = {k: tmp_path / f"{k}.npy" for k in ("X", "Y", "pos", "Y5", "pos5", "Xhuge")}
    np.save(paths["X"], rng.normal(size=(60, 4)))
    np.save(paths["Y"], rng.normal(size=(200, 4)))
    np.save(paths["pos"], rng.integers(0, 200, size=60))
    np.save(paths["Y5"], rng.normal(size=(5, 4)))
    np.save(paths["pos5"], rng.integers(0, 5, size=60))
    np.save(paths["Xhuge"], np.where(np.arange(240).reshape(60, 4) == 7, -1e308, 1.0))
    return paths


def _own(paths, queries="X", targets="Y", positives="pos") -> list[str]:
    return ["--queries", str(paths[queries]), "--targets", str(paths[targets]), "--positives", str(paths[positives])]


def _refused(argv: list[str], capsys, start: str) -> str:
    """Run in process; assert exit 2, one line on stderr starting with ``start``, nothing trained."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    out, err = capsys.readouterr()
    assert exc.value.code == 2, err
    assert err.startswith(start) and err.count("\n") == 1, err
    assert "[compare]" not in err and out == "", (out, err)  # refused before any training
    return err


@pytest.mark.parametrize("special", ["fifo", "/dev/zero symlink"])
def test_a_fifo_or_a_device_as_data_is_refused_without_reading(own_data, tmp_path, special) -> None:
    path = tmp_path / "special.npy"
    if special == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    proc = subprocess.run([sys.executable, "-m", "reference", *_COMPARE, "--queries", str(path), "--targets",
                           str(own_data["Y"]), "--positives", str(own_data["pos"]), "--out", str(tmp_path / "o.json")],
                          cwd=_REPO, env={**os.environ, "PYTHONPATH": str(_REPO)}, capture_output=True, text=True,
                          timeout=120)
    kind = "FIFO (named pipe)" if special == "fifo" else "character device"
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr == f"error: --queries ({path}): expected a readable .npy file (a regular file), got a {kind}\n"


def test_a_forged_npy_header_is_refused_before_allocating(own_data, tmp_path, capsys) -> None:
    """A 144-byte file whose header claims shape (1e12, 16): a MemoryError traceback before."""
    path = tmp_path / "forged.npy"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 16)})
    path.write_bytes(header.getvalue() + bytes(16))
    err = _refused([*_COMPARE, "--queries", str(path), *_own(own_data)[2:], "--out", str(tmp_path / "o.json")],
                   capsys, f"error: --queries ({path}): expected a readable .npy file whose data matches its header")
    assert "shape (1000000000000, 16) of float64 (128000000000000 bytes) followed by 16 bytes" in err


def test_features_beyond_the_coordinate_limit_are_refused(own_data, tmp_path, capsys) -> None:
    """Features of -1e308 trained with an overflow warning and exit 0 before; MAX_ABS_COORD is 1e150."""
    err = _refused([*_COMPARE, *_own(own_data, queries="Xhuge"), "--out", str(tmp_path / "o.json")], capsys,
                   f"error: --queries ({own_data['Xhuge']}): expected |entries| <= MAX_ABS_COORD = 1e+150")
    assert "got 1e+308" in err


@pytest.mark.parametrize("extra, start", [
    (["--cache-size", "5"], "error: --negatives: expected an integer <= N - 1 = 4 for brute_topk, stale_topk (the n "
                            "best of the targets other than the positive), got 8 (the value of --preset quick; set "
                            "--negatives to override it; N = 5 rows of --targets)"),
    (["--negatives", "3"], "error: --cache-size: expected an integer <= 5, got 128 (the value of --preset quick"),
    (["--negatives", "3", "--cache-size", "5", "--landmarks", "6"], "error: --landmarks: expected an integer <= 5, "
                                                                   "got 6 (N = 5 rows of --targets)\n"),
    (["--miners", "in_batch", "--negatives", "40", "--cache-size", "5"],
     "error: --negatives: expected an integer <= batch_size - 1 = 31 for in_batch"),
])
def test_the_budget_is_checked_against_n_before_any_training(own_data, tmp_path, capsys, extra, start) -> None:
    """N = 5 targets with the quick preset's 8 negatives: three miners trained before 'k: expected an integer
    <= 4' (naming neither --negatives nor N)."""
    _refused([*_COMPARE, *_own(own_data, targets="Y5", positives="pos5"), *extra, "--out",
              str(tmp_path / "o.json")], capsys, start)


@pytest.mark.parametrize("case", ["directory", "under a file", "runs dir is a file"])
def test_compare_out_is_checked_before_any_training(tmp_path, capsys, case) -> None:
    (tmp_path / "f").write_text("x")
    out = {"directory": tmp_path, "under a file": tmp_path / "f" / "c.json", "runs dir is a file": tmp_path / "c.json"}
    if case == "runs dir is a file":
        (tmp_path / "c_runs").write_text("x")
    start = {"directory": f"error: --out: expected a path for a regular file (it is replaced), got '{tmp_path}', a "
                          "directory",
             "under a file": f"error: --out: expected a path whose parent is a directory, got "
                             f"'{tmp_path / 'f'}/c.json'",
             "runs dir is a file": "error: --out (its directory of runs and checkpoints): expected a directory"}[case]
    _refused([*_COMPARE, "--out", str(out[case])], capsys, start)


@pytest.mark.parametrize("argv, start", [
    (["demo", "--out", "{f}/d.json"], "error: --out: expected a path whose parent is a directory"),
    (["demo", "--checkpoint", "{d}"], "error: --checkpoint: expected a path for a regular file (it is replaced)"),
    (["bench", "--quick", "--json", "{f}/b.json"], "error: --json: expected a path whose parent is a directory"),
    (["bench", "--quick", "--memmap", "{f}"], "error: --memmap: expected a directory (or a path where one can be "
                                              "created), got '{f}' (it is a file)"),
    (["bench", "--quick", "--memmap", "{f}/mm"], "error: --memmap: expected a directory"),
])
def test_output_paths_of_demo_and_bench_are_checked_before_any_work(tmp_path, capsys, argv, start) -> None:
    f, d = tmp_path / "file", tmp_path / "dir"
    f.write_text("x")
    d.mkdir()
    fill = {"{f}": str(f), "{d}": str(d)}
    for k, v in fill.items():
        argv = [a.replace(k, v) for a in argv]
        start = start.replace(k, v)
    _refused([*argv, "--quiet"], capsys, start)
    assert f.read_text() == "x" and list(d.iterdir()) == []  # nothing written


def test_figures_output_directory_is_checked_before_any_figure(tmp_path, capsys) -> None:
    """``figures --out`` under a file: exit 2, one line naming --out, no figure computed or written."""
    f = tmp_path / "file"
    f.write_text("x")
    _refused(["figures", "--out", str(f / "figs"), "--only", "bracket_refinement"], capsys,
             f"error: --out: expected a directory (or a path where one can be created), got '{f}/figs'")
    assert f.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_golden_regenerate_directory_is_checked_before_any_vector(tmp_path, capsys) -> None:
    """``conformance --golden regenerate --golden-dir`` under a file: exit 2, one line naming the option."""
    f = tmp_path / "file"
    f.write_text("x")
    _refused(["conformance", "--golden", "regenerate", "--golden-dir", str(f / "g")], capsys,
             f"error: --golden-dir: expected a directory (or a path where one can be created), got '{f}/g'")
    assert f.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]
