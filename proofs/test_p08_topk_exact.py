"""P8 (proofs/README.md section 6): topk returns exactly the brute-force top-k (ties by smaller id).

Proof: ``proofs/p08_topk_exact.md``.

Brute force here sorts the live targets by (-a_y, y). Its logits use the same
row-wise inner product as the tree code (``brute_logits``), so duplicated
targets tie bit-for-bit in both; a second test uses integer data, where every
evaluation order gives the same exact result, against a BLAS matrix product.
Ids must match exactly; logits to 1e-9 of the term magnitude (proofs/README.md section 6).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proofs.strategies_bounds import FP_RTOL, brute_logits, fp_scale, make_queries, seeds, trees_with_queries
from reference.plain import topk as plain_topk
from reference.sampling import topk
from reference.softmax import topk_ids
from reference.tree import Tree


def _brute_topk(tree, Q, k):
    ids, a = brute_logits(tree, Q)
    out_ids, out_a = [], []
    for row in np.atleast_2d(a):
        o = np.lexsort((ids, -row))[:k]
        out_ids.append(ids[o])
        out_a.append(row[o])
    return np.array(out_ids), np.array(out_a)


def _check_p8(tree, Q, k):
    got_ids, got_a = topk(tree, Q, k)
    want_ids, want_a = _brute_topk(tree, Q, k)
    assert got_ids.shape == got_a.shape == (Q.shape[0], k)
    np.testing.assert_array_equal(got_ids, want_ids)
    tol = FP_RTOL * fp_scale(tree, Q)[:, None]
    assert (np.abs(got_a - want_a) <= tol).all()


@given(trees_with_queries(n_queries=3), st.data())
def test_p8_topk_equals_brute_force(data, draw):
    """Every k in [1, N_live]; adversarial sets (duplicates and grid give exact ties)."""
    tree, Q, _ = data
    k = draw.draw(st.integers(1, tree.n_live), label="k")
    _check_p8(tree, Q, k)


@given(st.integers(1, 4), st.integers(20, 150), st.integers(1, 12), seeds)
def test_p8_exact_ties_integer_data(dim, n, k, seed):
    """Integer points in {-2..2}^d and integer queries: logits are exact integers, many ties.

    Compared with a BLAS matrix product (any summation order is exact here).
    """
    rng = np.random.default_rng(seed)
    z = rng.integers(-2, 3, size=(n, dim)).astype(np.float64)
    tree = Tree.build(z, branching=int(rng.integers(2, 5)), leaf_size=int(rng.integers(1, 6)), seed=seed)
    Q = rng.integers(-5, 6, size=(4, dim)).astype(np.float64)
    k = min(k, n)
    A = Q @ z.T
    for b in range(4):
        o = np.lexsort((np.arange(n), -A[b]))[:k]
        ids, a = topk(tree, Q[b], k)
        np.testing.assert_array_equal(ids, o)
        np.testing.assert_array_equal(a, A[b, o])


@given(trees_with_queries(n_queries=2, kinds=("uniform", "clustered", "duplicates", "grid", "huge")),
       st.data())
def test_p8_after_deletes_and_updates(data, draw):
    """Still exact with empty nodes (deletes) and without I4 (updates, no refresh)."""
    tree, Q, seed = data
    rng = np.random.default_rng(seed)
    live = np.flatnonzero(tree.alive)
    if live.size > 3:
        tree.delete(rng.choice(live, size=live.size // 3, replace=False))
        live = np.flatnonzero(tree.alive)
        ids = rng.choice(live, size=max(1, live.size // 3), replace=False)
        tree.update(ids, tree.points[ids] + rng.normal(scale=0.3, size=(ids.size, tree.dim)))
    Q = np.vstack([Q, make_queries(tree, rng, 2, 30.0, aligned=True)])
    _check_p8(tree, Q, draw.draw(st.integers(1, tree.n_live), label="k"))


@given(trees_with_queries(n_queries=3, scales=(1.0, 60.0)), st.data())
def test_p8_batch_equals_single(data, draw):
    """A batch call and per-query calls return the same ids and logits."""
    tree, Q, _ = data
    k = draw.draw(st.integers(1, tree.n_live), label="k")
    ids, a = topk(tree, Q, k)
    for b in range(Q.shape[0]):
        ib, ab = topk(tree, Q[b], k)
        np.testing.assert_array_equal(ib, ids[b])
        np.testing.assert_array_equal(ab, a[b])


def _exact_logits(z: np.ndarray, q: np.ndarray) -> tuple[list[Fraction], list[Fraction]]:
    """Exact a_y = <q, z_y> of the float64 inputs (rationals), and delta_y = gamma_k sum_i |q_i z_iy|,
    the classical bound on the error of any float64 summation order (Higham)."""
    u = Fraction(1, 2**53)
    gamma = len(q) * u / (1 - len(q) * u)
    exact, delta = [], []
    for row in z:
        terms = [Fraction(float(qi)) * Fraction(float(zi)) for qi, zi in zip(q, row)]
        exact.append(sum(terms, Fraction(0)))
        delta.append(gamma * sum((abs(t) for t in terms), Fraction(0)))
    return exact, delta


@pytest.mark.parametrize("dyadic", [False, True])
def test_p8_near_ties_from_permuted_coordinates(dyadic):
    """P8 in floating point (proofs/README.md section 6.8), on targets that are coordinate permutations
    of each other and q = 0.1 * ones: their exact logits tie, their computed logits differ in the last
    bits with the summation order, so plain, fast and brute force may each pick different ids. Only
    what is guaranteed is asserted, for each of the three:

    - exact for its own computed logits: the top-k is the prefix of its own full order (k = N_live),
      which is sorted by (larger logit, smaller id) exactly (plain and fast; brute force is that sort);
    - against exact arithmetic: returned logits within delta_y of the exact a_y, and the returned set
      is the exact top-k up to ties within 2 delta: min over S of a_y >= max outside S of a_y - 2 delta;
    - with dyadic data (q = 0.125 * ones, coordinates multiples of 1/8 below 2^10: every product and
      partial sum is exact), all three return the same ids, those of the exact order.
    """
    rng = np.random.default_rng(22)
    dim = 8
    base = rng.integers(-40, 41, size=(6, dim)) / 8.0 if dyadic else rng.normal(size=(6, dim))
    z = np.array([rng.permutation(b) for b in base for _ in range(30)])
    q = np.full(dim, 0.125 if dyadic else 0.1)
    tree = Tree.build(z, branching=3, leaf_size=4, seed=0)
    exact, delta = _exact_logits(z, q)
    two_delta = 2 * max(delta)
    n = z.shape[0]
    full = {"plain": plain_topk(tree, q, n), "fast": topk(tree, q, n)}
    for name, (ids, a) in full.items():  # its own full order: (-logit, id), exactly
        np.testing.assert_array_equal(np.lexsort((ids, -a)), np.arange(n), err_msg=name)
    brute = z @ q
    for k in (5, 10, 30, 31, 60):
        got = {"plain": plain_topk(tree, q, k), "fast": topk(tree, q, k),
               "brute force": (topk_ids(brute[None, :], k)[0], brute[topk_ids(brute[None, :], k)[0]])}
        for name, (ids, a) in got.items():
            if name in full:
                np.testing.assert_array_equal(ids, full[name][0][:k], err_msg=f"{name}, k = {k}: not a prefix")
                np.testing.assert_array_equal(a, full[name][1][:k], err_msg=f"{name}, k = {k}")
            for y, ay in zip(ids.tolist(), a.tolist()):
                assert abs(Fraction(ay) - exact[y]) <= delta[y], (name, k, y)
            inside = min(exact[y] for y in ids.tolist())
            outside = max((exact[y] for y in set(range(n)) - set(ids.tolist())), default=None)
            assert outside is None or inside >= outside - two_delta, (name, k, float(outside - inside))
        if dyadic:
            want = sorted(range(n), key=lambda y: (-exact[y], y))[:k]
            for name, (ids, _) in got.items():
                assert ids.tolist() == want, (name, k)
