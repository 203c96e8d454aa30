"""P8 (proofs/README.md section 6): topk returns exactly the brute-force top-k (ties by smaller id).

Proof: ``proofs/p08_topk_exact.md``.

Brute force here sorts the live targets by (-a_y, y). Its logits use the same
row-wise inner product as the tree code (``brute_logits``), so duplicated
targets tie bit-for-bit in both; a second test uses integer data, where every
evaluation order gives the same exact result, against a BLAS matrix product.
Ids must match exactly; logits to 1e-9 of the term magnitude (proofs/README.md section 6).
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from proofs.strategies_bounds import FP_RTOL, brute_logits, fp_scale, make_queries, seeds, trees_with_queries
from reference.sampling import topk
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
