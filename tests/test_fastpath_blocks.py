"""Tests of the batched kernels of the fast path (reference/_fastpath.py) and the dense fallback.

``node_blocks`` scores (query, node) pairs block by block; ``range_weights``
turns a node's logits into the weights of an exact cut entry;
``ExactStore`` keeps them round by round; ``PoolSums`` sums the entry terms
of a refinement round; the dense fallback scores every target of a query the
tree does not prune. Each test names the bug it is there to catch: a block
skipped, a block mixing the queries of two nodes, a range end off by one, a
padding row or query counted as real, an empty round mis-indexed, a sum lost
to underflow, the fallback taken where the tree prunes or applied to the
wrong queries.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp, softmax

from proofs.strategies_bounds import brute_log_p, make_point_set, make_queries
from reference import _fastpath, sampling
from reference.bounds import validate_cut
from reference.data import make_isotropic, make_targets
from reference.sampling import rejection_envelope, rejection_sample, topk
from reference.stats import g_test
from reference.tree import Tree


@pytest.fixture(scope="module")
def tree() -> Tree:
    return Tree.build(make_point_set("clustered", 400, 5, 1), branching=3, leaf_size=6, seed=0)


def _pairs(tree: Tree, rng: np.random.Generator, B: int):
    """(q, v): nodes requested by 1 to 40 queries (several buckets), nested nodes, the root."""
    nodes = np.flatnonzero(tree.count > 0)
    v = np.concatenate([np.zeros(3, np.int64), rng.choice(nodes, 150), np.repeat(nodes[:4], 40),
                        np.repeat(nodes[-3:], 7)])
    return rng.integers(0, B, v.size), v


# --------------------------------------------------------------------------
# node_blocks: every pair once, its rows in order, padding only repeats
# --------------------------------------------------------------------------

def _block_case(tree, monkeypatch, chunk_rows: int, chunk_products: int, *, seed: int, n_queries: int):
    """Patch the block sizes; return queries and (query, node) pairs with each node's row count."""
    monkeypatch.setattr(_fastpath, "CHUNK_ROWS", chunk_rows)
    monkeypatch.setattr(_fastpath, "CHUNK_PRODUCTS", chunk_products)
    rng = np.random.default_rng(seed)
    Q = make_queries(tree, rng, n_queries, 20.0)
    q, v = _pairs(tree, rng, Q.shape[0])
    return Q, q, v, (tree.stop[v] - tree.start[v]).astype(np.int64)


@pytest.mark.parametrize("chunk_rows, chunk_products, node_product",
                         [(4096, 1 << 18, 1 << 17), (40, 200, 1 << 17), (3, 2, 1 << 17), (4096, 1 << 18, 300)])
def test_node_blocks_score_every_pair_once_with_its_own_rows(tree, monkeypatch, chunk_rows, chunk_products,
                                                             node_product):
    """Each pair appears in exactly one block (a skipped block or a pair scored twice fails the
    count); R[u, j, i] is <Q[q[pair]], i-th row of pair's node> for the real slots and rows
    (a block mixing two nodes' queries, or a row range off by one, fails the values); padding
    slots repeat the node's last real pair and padding columns its last row. Small chunks force
    one node per block and the large-node path (chunk_rows 3: every node); a small
    node_product splits the queries of a node into groups (a group boundary off by one loses
    or repeats a pair). 1e-12 relative to ||q|| ||z||: two evaluation orders of a 5-term
    inner product."""
    monkeypatch.setattr(_fastpath, "NODE_PRODUCT", node_product)
    Q, q, v, n = _block_case(tree, monkeypatch, chunk_rows, chunk_products, seed=7, n_queries=50)
    seen = np.zeros(v.size, np.int64)
    for pair, g, rows, R in _fastpath.node_blocks(tree.points_dfs, None, tree.start[v], n, Q, q, v):
        U, Gb, Lb = R.shape
        assert pair.shape == (U, Gb) and g.shape == rows.shape == (U,)
        for u in range(U):
            node = v[pair[u, 0]]
            assert (v[pair[u]] == node).all(), "a block row mixes the pairs of two nodes"
            assert rows[u] == n[pair[u, 0]] and 1 <= g[u] <= Gb
            if node_product < 1 << 17:
                assert g[u] * _fastpath.bucket_ceil(rows[u]) * Q.shape[1] <= max(node_product, Lb * Q.shape[1])
            np.add.at(seen, pair[u, :g[u]], 1)
            assert (pair[u, g[u]:] == pair[u, g[u] - 1]).all()
            z = tree.points_dfs[tree.start[node] + np.minimum(np.arange(Lb), rows[u] - 1)]
            want = Q[q[pair[u]]] @ z.T
            scale = 1.0 + np.linalg.norm(Q[q[pair[u]]], axis=1)[:, None] * np.linalg.norm(z, axis=1)[None, :]
            assert np.all(np.abs(R[u] - want) <= 1e-12 * scale)
    np.testing.assert_array_equal(seen, 1)


def test_node_blocks_through_an_index_and_an_empty_call(tree):
    """Rows through ``index`` (the children's representatives): the same products as the rows
    gathered by hand; no pairs, no blocks."""
    rng = np.random.default_rng(2)
    Q = make_queries(tree, rng, 6, 20.0)
    inner = np.flatnonzero(~tree.is_leaf)
    v = rng.choice(inner, 30)
    q = rng.integers(0, 6, v.size)
    deg = (tree.child_ptr[v + 1] - tree.child_ptr[v]).astype(np.int64)
    got = {}
    for pair, g, rows, R in _fastpath.node_blocks(tree.rep, tree.child_idx, tree.child_ptr[v], deg, Q, q, v):
        for u in range(R.shape[0]):
            for j in range(g[u]):
                got[int(pair[u, j])] = R[u, j, :rows[u]].copy()
    assert sorted(got) == list(range(v.size))
    for p, a in got.items():
        kids = tree.child_idx[tree.child_ptr[v[p]]:tree.child_ptr[v[p] + 1]]
        np.testing.assert_allclose(a, tree.rep[kids] @ Q[q[p]], rtol=1e-12, atol=1e-12)
    assert list(_fastpath.node_blocks(tree.rep, None, np.zeros(0, np.int64), np.zeros(0, np.int64), Q,
                                      np.zeros(0, np.int64), np.zeros(0, np.int64))) == []


@pytest.mark.parametrize("top", [10, 70_000, 5_000_000_000])
def test_group_order_is_a_stable_sort(top):
    """The radix sort on 16-bit digits equals the stable argsort (one, two and three digits)."""
    v = np.random.default_rng(top).integers(0, top, 5000)
    np.testing.assert_array_equal(_fastpath.group_order(v), np.argsort(v, kind="stable"))
    assert _fastpath.group_order(np.zeros(0, np.int64)).size == 0


# --------------------------------------------------------------------------
# range_weights and ExactStore: the exact entries' weights
# --------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [20.0, 30000.0])
def test_range_weights_are_the_softmax_and_logsumexp_of_each_node(tree, scale):
    """Per pair: lse = logsumexp of the node's logits, w / total = their softmax, in DFS order.
    At scale 30000 many eps_v exceed 300 and those pairs are shifted by their largest logit
    (the shift by the bound would underflow). 1e-12 relative (logsumexp: 1e-12 of its scale)."""
    rng = np.random.default_rng(3)
    Q = make_queries(tree, rng, 30, scale)
    q, v = _pairs(tree, rng, Q.shape[0])
    shift = np.einsum("ij,ij->i", tree.rep[v], Q[q]) + np.linalg.norm(Q[q], axis=1) * tree.radius[v]
    loose = np.linalg.norm(Q[q], axis=1) * tree.radius[v] > 300
    assert loose.mean() > 0.3 if scale > 1000 else not loose.any()
    lse, w, ptr, perm, total = _fastpath.range_weights(tree, Q, q, v, shift)
    np.testing.assert_array_equal(np.sort(perm), np.arange(v.size))
    for j, p in enumerate(perm):
        a = tree.points_dfs[tree.start[v[p]]:tree.stop[v[p]]] @ Q[q[p]]
        assert lse[j] == pytest.approx(logsumexp(a), rel=1e-12, abs=1e-12 * (1 + np.abs(a).max()))
        seg = w[ptr[j]:ptr[j + 1]]
        np.testing.assert_allclose(seg / total[j], softmax(a), rtol=1e-11, atol=1e-300)
        assert seg.max() <= 1.0 + 1e-9


def test_range_weights_refuse_logits_far_outside_the_bound(tree):
    """A shift 800 above the logits (as a radius far too small would give): every weight
    underflows, and the I3 error is raised instead of an entry of weight zero."""
    Q = make_queries(tree, np.random.default_rng(4), 2, 20.0)
    v = np.array([0, 1])
    q = np.array([0, 1])
    shift = np.einsum("ij,ij->i", tree.rep[v], Q[q]) + 800.0
    with pytest.raises(ValueError, match="invariant I3 violated"):
        _fastpath.range_weights(tree, Q, q, v, shift)


def test_exact_store_gathers_the_entries_asked_for_across_rounds(tree):
    """Rounds with entries, an empty round, and entries asked for in any order and repeated:
    each gets its own weights (an empty round mis-indexed shifts every later entry)."""
    rng = np.random.default_rng(5)
    Q = make_queries(tree, rng, 8, 20.0)
    store = _fastpath.ExactStore()
    want = []
    for size in (5, 0, 7, 3):
        v = rng.choice(np.flatnonzero(tree.count > 0), size)
        q = rng.integers(0, 8, size)
        shift = np.einsum("ij,ij->i", tree.rep[v], Q[q]) + np.linalg.norm(Q[q], axis=1) * tree.radius[v]
        _, perm = store.add(tree, Q, q, v, shift)
        for p in perm:
            a = tree.points_dfs[tree.start[v[p]]:tree.stop[v[p]]] @ Q[q[p]]
            want.append(softmax(a))
    assert store.count == 15 and store.ptr[-1] == sum(w.size for w in want)
    x = np.array([14, 0, 5, 5, 11, 4, 12])
    p, ptr = store.probabilities_of(x)
    for i, xi in enumerate(x):
        np.testing.assert_allclose(p[ptr[i]:ptr[i + 1]], want[xi], rtol=1e-11, atol=1e-300)
    np.testing.assert_allclose(store.probabilities(), np.concatenate(want), rtol=1e-11, atol=1e-300)


def test_exact_draws_resolve_entries_of_very_different_scales(tree):
    """Two exact entries drawn from in one call, one with weights near 1 and one near e^-600
    (its shift 600 above its bound): the draws inside the small one still follow its softmax
    (G-test, failure at p < 1e-6). One cumulative sum over unnormalised weights would absorb
    the small entry into the large one's total and always return its first target."""
    from types import SimpleNamespace

    Q = make_queries(tree, np.random.default_rng(9), 2, 20.0)
    leaves = np.flatnonzero(tree.is_leaf & (tree.count >= 4))[:2]
    q = np.array([0, 1])
    shift = np.einsum("ij,ij->i", tree.rep[leaves], Q[q]) + np.linalg.norm(Q[q], axis=1) * tree.radius[leaves]
    shift[1] += 600.0
    store = _fastpath.ExactStore()
    _, perm = store.add(tree, Q, q, leaves, shift)
    small = int(np.flatnonzero(perm == 1)[0])
    x = np.tile([1 - small, small], 20000)
    off = sampling._exact_draw(SimpleNamespace(exact=store), x, np.random.default_rng(0))
    a = tree.points_dfs[tree.start[leaves[1]]:tree.stop[leaves[1]]] @ Q[1]
    counts = np.bincount(off[x == small], minlength=a.size)
    assert g_test(counts, softmax(a)).p_value > 1e-6


# --------------------------------------------------------------------------
# PoolSums: one shared maximum, no term lost to underflow
# --------------------------------------------------------------------------

def test_pool_sums_equal_group_logsumexp_even_where_terms_underflow():
    """lo and hat terms 2000 below the hi maximum of their query underflow against the shared
    shift: those queries are summed again with their own maximum. Subsets (the entries frozen
    or parked) likewise; a query without entries gives -inf. 1e-12 relative."""
    rng = np.random.default_rng(6)
    B, m = 5, 400
    query = rng.integers(0, B - 1, m)             # query B - 1 has no entries
    base = rng.normal(size=m) * 3
    eps = np.where(query == 1, 1000.0, rng.random(m))   # query 1: every lo term ~2000 below its hi terms
    logs = {"lo": base - eps, "hi": base + eps, "hat": base}
    sums = _fastpath.PoolSums(logs, query, B)
    sel = rng.random(m) < 0.3
    for key, val in logs.items():
        for mask in (None, sel):
            q, x = (query, val) if mask is None else (query[mask], val[mask])
            want = _fastpath.group_logsumexp(x, q, B)
            got = sums.lse(key, mask)
            assert got[B - 1] == -np.inf
            np.testing.assert_allclose(got[:B - 1], want[:B - 1], rtol=1e-12)


# --------------------------------------------------------------------------
# Parking: the cost rule's unmarked entries of wide queries leave the pool
# --------------------------------------------------------------------------

@pytest.mark.parametrize("n_draws, tol", [(16, None), (2, 0.3), (1, 0.05)])
def test_parking_gives_the_cut_of_a_pool_that_keeps_every_entry(tree, monkeypatch, n_draws, tol):
    """With PARKING off, unmarked entries of queries wider than tol stay in the pool and are
    re-examined every round (the plain bookkeeping); with it on they are parked and return
    when a rule could mark them. Both must give the same cut, the same counters, and a
    bracket summed while refining equal to the bracket of the final entries. Small n_draws
    and tol make the bracket rule act on queries with parked entries."""
    Q = make_queries(tree, np.random.default_rng(8), 12, 40.0)
    t = max(1.0, float(np.log(tree.n_live / n_draws))) if tol is None else tol

    def envelope():
        return _fastpath.refine(tree, Q, tol=t, n_draws=n_draws, exact_leaves=True, full_count=10)

    parked = envelope()
    monkeypatch.setattr(_fastpath, "PARKING", False)
    kept = envelope()
    a, b = parked.cut_fields(), kept.cut_fields()
    assert sorted(zip(*a[:3])) == sorted(zip(*b[:3]))
    assert (parked.node_logits, parked.target_logits, parked.rounds) == \
        (kept.node_logits, kept.target_logits, kept.rounds)
    validate_cut(tree, _cut(parked), n_queries=Q.shape[0], full=True)
    raw = parked.raw
    base = raw["log_n"] + raw["s"]
    for got, terms in zip(parked.bracket, (base - raw["eps"], base + raw["eps"], base)):
        # 1e-9 relative: the same terms summed in another grouping
        np.testing.assert_allclose(got, _fastpath.group_logsumexp(terms, raw["query"], Q.shape[0]), rtol=1e-9)


def _cut(st):
    from reference.bounds import Cut
    return Cut(*st.cut_fields())


# --------------------------------------------------------------------------
# The dense fallback
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def flat():
    """Unclustered points in 32 dimensions (the bound prunes nothing three levels down), leaves of
    at most 8, a few duplicated points (exact ties)."""
    z = make_isotropic(8000, 32, seed=2)
    z[100:105] = z[7]
    return Tree.build(z, leaf_size=8, seed=0)


@pytest.fixture
def dense_calls(monkeypatch):
    """The fallback enabled at any N, and the number of queries each dense_blocks call scores."""
    monkeypatch.setattr(_fastpath, "DENSE_MIN", 1)
    calls: list[int] = []
    real = _fastpath.dense_blocks

    def recording(t, Q):
        calls.append(Q.shape[0])
        return real(t, Q)

    monkeypatch.setattr(sampling, "dense_blocks", recording)
    return calls


def test_dense_blocks_cover_every_query_and_target(flat, monkeypatch):
    """Blocks of DENSE_BLOCK_BYTES // (8 N) queries, the last one shorter, none skipped."""
    monkeypatch.setattr(_fastpath, "DENSE_BLOCK_BYTES", 8 * flat.n_live * 3)   # 3 queries per block
    Q = make_queries(flat, np.random.default_rng(0), 8, 10.0)
    got = list(_fastpath.dense_blocks(flat, Q))
    assert [(b0, b1) for b0, b1, _ in got] == [(0, 3), (3, 6), (6, 8)]
    A = np.vstack([a for _, _, a in got])
    np.testing.assert_allclose(A, Q @ flat.points_dfs.T, rtol=1e-12, atol=1e-12)


def test_rejection_sampler_falls_back_to_dense_only_where_nothing_is_pruned(flat, dense_calls):
    """Queries of norm 30 on unclustered points go dense (every target one exact entry, N
    target logits each, acceptance 1); queries of tiny norm, whose root bracket is already
    narrow, stay on the tree. In one batch: the dense ones are exactly the strong ones, the
    envelope lists every target for them, and the draws of both kinds fit the softmax (G-test,
    failure at p < 1e-6)."""
    Q = make_queries(flat, np.random.default_rng(1), 8, 30.0)
    Q[1::2] *= 1e-4
    st = sampling._envelope_cut(flat, Q, 4000, None)
    np.testing.assert_array_equal(st.dense, [0, 2, 4, 6])
    env = rejection_envelope(flat, Q, 4000)
    validate_cut(flat, env, n_queries=Q.shape[0], full=True)
    for b in (0, 2, 4, 6):
        part = env.of_query(b)
        assert (part.node < 0).all() and part.target.size == flat.n_live
    dense_calls.clear()
    ids, c = rejection_sample(flat, Q, 4000, np.random.default_rng(2))
    assert sum(dense_calls) == 4
    assert c["cut_entries"] == len(env) and c["target_logits"] >= 4 * flat.n_live
    for b in range(Q.shape[0]):
        p = np.exp(brute_log_p(flat, Q[b]))
        assert g_test(np.bincount(ids[b], minlength=p.size), p).p_value > 1e-6, f"query {b}"


def test_fallback_is_not_taken_where_the_tree_prunes(dense_calls):
    """On clustered data the bound excludes most targets within three levels: no query goes
    dense even with the size threshold lifted (an inverted mass test would send them all)."""
    z = make_targets(20000, 16, seed=4)
    t = Tree.build(z, seed=4)
    Q = 40.0 * z[np.random.default_rng(5).integers(0, z.shape[0], 16)]
    assert sampling._envelope_cut(t, Q, 16, None).dense.size == 0
    rejection_sample(t, Q, 16, np.random.default_rng(0))
    topk(t, Q, 10)
    assert dense_calls == []


def _topk_matches_brute_force(t: Tree, Q: np.ndarray, k: int) -> None:
    ids, logits = topk(t, Q, k)
    a = Q @ t.points.T
    for b in range(Q.shape[0]):
        want = np.lexsort((np.arange(a.shape[1]), -a[b]))[:k]
        # equal up to exact ties of the computed logits (two evaluation orders: 1e-12 relative)
        np.testing.assert_allclose(logits[b], a[b, want], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(logits[b], a[b, ids[b]], rtol=1e-12, atol=1e-12)
        assert (np.diff(logits[b]) <= 0).all()


def test_dense_topk_equals_brute_force_with_ties(flat, dense_calls):
    """Unclustered points: every query goes dense. Candidates within the rounding margin of the
    k-th computed logit, re-scored row by row and ordered by (-logit, id) as the tree's: the
    brute-force top-k, and of the duplicated points (exact ties) the smaller ids first."""
    Q = make_queries(flat, np.random.default_rng(3), 6, 30.0)
    Q[0] = 5.0 * flat.points[7]                  # its top-k holds the duplicates of point 7
    _topk_matches_brute_force(flat, Q, 12)
    assert sum(dense_calls) == Q.shape[0]
    ids, _, c = topk(flat, Q, 12, return_counters=True)
    assert ids[0, :6].tolist() == [7, 100, 101, 102, 103, 104]
    assert c["target_logits"] >= Q.shape[0] * flat.n_live


def test_topk_with_some_queries_dense_and_others_on_the_tree(dense_calls, monkeypatch):
    """A threshold between the queries' surviving masses splits the batch: the dense queries
    and the tree's are both the brute-force top-k (the fallback applied to the wrong queries,
    or their earlier candidates kept, would break some rows)."""
    z = make_targets(20000, 16, seed=6)
    t = Tree.build(z, seed=6)
    rng = np.random.default_rng(7)
    Q = z[rng.integers(0, z.shape[0], 12)] * np.geomspace(0.5, 40.0, 12)[:, None]
    for mass in (0.02, 0.05, 0.1, 0.2, 0.3, 0.5):
        monkeypatch.setattr(_fastpath, "DENSE_MASS", mass)
        dense_calls.clear()
        topk(t, Q, 5)
        if 0 < sum(dense_calls) < Q.shape[0]:
            break
    assert 0 < sum(dense_calls) < Q.shape[0], "no threshold splits this batch"
    _topk_matches_brute_force(t, Q, 5)


def test_dense_topk_after_shallow_leaves_lists_no_target_twice(dense_calls):
    """Five far points form a leaf just below the root, scored (and merged into the running
    top-k) before the level where the query goes dense; the dense pass scores every target
    again, so what was merged before must be dropped, or those five come back twice."""
    z = make_isotropic(8000, 32, seed=2)
    d = np.zeros(32)
    d[0] = 1.0
    z = np.vstack([z, 3.0 * np.sqrt(32) * d + 0.01 * make_isotropic(5, 32, seed=3)])
    t = Tree.build(z, leaf_size=8, seed=0)
    far = np.arange(8000, 8005)
    assert t.is_leaf[t.leaf_of[far[0]]] and t.depth[t.leaf_of[far[0]]] < _fastpath.DENSE_ROUND
    Q = np.vstack([2.0 * d + 0.3 * make_isotropic(1, 32, seed=4)[0], make_queries(t, np.random.default_rng(0), 1, 30.0)[0]])
    ids, logits = topk(t, Q, 8)
    assert sum(dense_calls) >= 1
    assert sorted(ids[0, :5].tolist()) == far.tolist()
    for b in range(Q.shape[0]):
        assert np.unique(ids[b]).size == ids.shape[1], f"query {b} lists a target twice"
    _topk_matches_brute_force(t, Q, 8)


@pytest.mark.parametrize("op", ["sample", "topk"])
def test_the_fallback_is_off_below_dense_min(op):
    """Below DENSE_MIN live targets the fallback never applies: small trees (the golden vectors,
    the plain-versus-fast tests) keep the tree path."""
    z = make_isotropic(8000, 32, seed=2)
    t = Tree.build(z, leaf_size=8, seed=0)
    assert t.n_live < _fastpath.DENSE_MIN
    Q = make_queries(t, np.random.default_rng(1), 4, 30.0)
    if op == "sample":
        assert sampling._envelope_cut(t, Q, 16, None).dense.size == 0
    else:
        calls = []
        real = sampling.dense_blocks
        try:
            sampling.dense_blocks = lambda tr, Qd: calls.append(Qd.shape[0]) or real(tr, Qd)
            topk(t, Q, 5)
        finally:
            sampling.dense_blocks = real
        assert calls == []


# --------------------------------------------------------------------------
# I3 violations are refused on the new paths
# --------------------------------------------------------------------------

def test_a_radius_too_small_is_refused(tree):
    """Shrinking one leaf's radius to 0 (its targets apart): top-k's block check and the
    sampler's proposals raise the documented I3 error rather than return wrong results."""
    t = Tree.build(make_point_set("clustered", 400, 5, 1), branching=3, leaf_size=6, seed=0)
    leaves = np.flatnonzero(t.is_leaf & (t.count >= 3))
    v = leaves[np.argmax(t.radius[leaves])]
    t.radius[v] = 0.0
    y = t.order[t.start[v]]
    Q = (t.points[y] - t.rep[v])[None, :] * 50.0     # points a target of v outside its radius
    with pytest.raises(ValueError, match="invariant I3 violated"):
        topk(t, np.vstack([Q, Q]), t.n_live)


@pytest.mark.parametrize("chunk_rows, chunk_products", [(4096, 1 << 18), (3, 2)])
def test_node_blocks_through_an_index_equal_the_contiguous_rows(tree, monkeypatch, chunk_rows, chunk_products):
    """Rows named through ``index`` (as the children's representatives are, via child_idx)
    give the same blocks as the same rows stored contiguously: ``points[order]`` is
    ``points_dfs``. Chunks of 3 rows send every node through the large-node path."""
    Q, q, v, n = _block_case(tree, monkeypatch, chunk_rows, chunk_products, seed=8, n_queries=30)
    direct = list(_fastpath.node_blocks(tree.points_dfs, None, tree.start[v], n, Q, q, v))
    indexed = list(_fastpath.node_blocks(tree.points, tree.order, tree.start[v], n, Q, q, v))
    assert len(direct) == len(indexed) > 0
    for a, b in zip(direct, indexed):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
