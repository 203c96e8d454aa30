"""Documented details that no broader test pins, each found by mutation testing.

Every test here kills at least one mutant that the rest of the suite let
through (``tests/mutation/survivors.md`` lists the survivors and their
verdicts). They check what a user reads or relies on and that a wrong
implementation could change silently:

- a ``ValueError`` names the argument first (``"<name>: expected ..."``), so
  a message that names another argument, or says nothing, is a defect;
- the corruption messages of ``Tree.check_invariants`` say what broke;
- stored fields have the documented type and keys;
- rarely taken branches (a batch of more than one query block, a cut whose
  refinement must be redone, a stop exactly at the target width) give the
  results their common path gives.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from proofs.strategies_tree import make_point_set
from reference import _fastpath, plain
from reference import sampling as sampling_module
from reference._validation import MAX_LOGIT
from reference.bounds import Cut, adaptive_cut, log_partition_bracket
from reference.dynamic import DynamicIndex
from reference.encoder import DualEncoder, EncoderConfig
from reference.nystrom import NystromMap, linear, polynomial, select_landmarks
from reference.softmax import sample_softmax
from reference.tree import InvariantError, Tree

# --------------------------------------------------------------------------
# error messages name the argument first
# --------------------------------------------------------------------------


def _index() -> tuple[DynamicIndex, np.ndarray]:
    G = np.random.default_rng(3).standard_normal((60, 4))
    return DynamicIndex(G, np.arange(0, 60, 6), beta=2.0, leaf_size=4), G


def test_sample_softmax_names_logits() -> None:
    with pytest.raises(ValueError, match=r"^logits: "):
        sample_softmax(np.array([0.0, np.nan, 1.0]), 2, np.random.default_rng(0))


def test_polynomial_names_c() -> None:
    with pytest.raises(ValueError, match=r"^c: "):
        polynomial(2, c=-1.0)


def test_dynamic_index_names_rebuild_depth() -> None:
    G = np.random.default_rng(0).standard_normal((20, 3))
    with pytest.raises(ValueError, match=r"^rebuild_depth: "):
        DynamicIndex(G, np.arange(5), rebuild_depth=-1)


def test_dynamic_index_refuses_overflowing_queries_naming_f_and_the_map() -> None:
    """A query whose logit bound ||psi|| max_v(||r_v|| + rho_v) exceeds MAX_LOGIT, though every
    entry of psi = beta W f is finite and below MAX_ABS_COORD: the message names F, the limit
    and what psi is."""
    index, _ = _index()
    scale = _fastpath.tree_scale(index.tree)
    W_row = np.linalg.norm(index.W, axis=0).max()
    F = np.zeros((1, index.W.shape[1]))
    F[0, np.argmax(np.linalg.norm(index.W, axis=0))] = 4.0 * MAX_LOGIT / (index.beta * W_row * scale)
    psi = index.queries(F)
    assert np.abs(psi).max() <= 1e150 < np.linalg.norm(psi) * scale  # only the logit check can refuse it
    with pytest.raises(ValueError, match=r"^F: expected \|\|q\|\| \* .*q = psi = beta W_t f, tree over phi"):
        index.topk(F, 2)


def test_loss_names_pos_beyond_the_targets() -> None:
    model = DualEncoder(EncoderConfig(query_dim=3, target_dim=2, hidden=(4,), out_dim=3), seed=0)
    X, Y = np.ones((2, 3)), np.ones((5, 2))
    with pytest.raises(ValueError, match=r"^pos: "):
        model.full_softmax_loss(X, np.array([0, 5]), Y)
    with pytest.raises(ValueError, match=r"^pos: "):
        model.sampled_softmax_loss(X, np.array([5, 0]), Y, np.zeros((2, 1), np.int64))


def test_sampled_loss_reads_only_the_rows_it_uses() -> None:
    """``Y_all``: "only the rows used are read": a NaN in another row is no error, and the
    loss and gradients equal those computed from the rows used alone."""
    model = DualEncoder(EncoderConfig(query_dim=3, target_dim=2, hidden=(4,), out_dim=3), seed=0)
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(2, 3)), rng.normal(size=(6, 2))
    pos, neg = np.array([0, 1]), np.array([[2, 3], [3, 0]])
    Y_nan = Y.copy()
    Y_nan[5] = np.nan
    want = model.sampled_softmax_loss(X, pos, Y, neg)
    got = model.sampled_softmax_loss(X, pos, Y_nan, neg)
    assert got[0] == want[0] and all(np.array_equal(got[1][k], want[1][k]) for k in want[1])
    with pytest.raises(ValueError, match=r"Y_all"):  # a NaN in a row used is refused
        model.sampled_softmax_loss(X, pos, Y_nan, np.array([[2, 5], [3, 0]]))


# --------------------------------------------------------------------------
# check_invariants says what broke
# --------------------------------------------------------------------------


def _tree() -> Tree:
    return Tree.build(make_point_set("clustered", 200, 3, 11), branching=3, leaf_size=4, seed=1)


def test_check_invariants_child_idx_listing_a_node_twice() -> None:
    t = _tree()
    t.child_idx[-1] = t.child_idx[-2]
    with pytest.raises(InvariantError, match=r"^structure: child_idx must list every non-root node exactly once$"):
        t.check_invariants()


def test_check_invariants_nodes_not_breadth_first() -> None:
    """Swap the children lists of two leaves' parents' positions: every node is listed once,
    under its parent, but not in breadth-first order."""
    t = _tree()
    v = int(np.flatnonzero(np.diff(t.child_ptr) >= 2)[0])
    a, b = t.child_ptr[v], t.child_ptr[v] + 1
    t.child_idx[[a, b]] = t.child_idx[[b, a]]
    with pytest.raises(InvariantError,
                       match=r"^structure: nodes must be stored breadth-first \(child_idx == arange\(1, M\)\)$"):
        t.check_invariants()


@pytest.mark.parametrize("row", [0, 1, -1])
def test_check_invariants_points_dfs_every_row(row: int) -> None:
    """The cache points_dfs is compared with points[order] on every row, the first included."""
    t = _tree()
    row = row % t.n_live
    t.points_dfs[row] = t.points_dfs[row] + 1.0
    with pytest.raises(InvariantError, match=rf"^cache: points_dfs row {row} differs"):
        t.check_invariants()


# --------------------------------------------------------------------------
# stored fields: types and keys
# --------------------------------------------------------------------------


def test_cut_stores_n_queries_as_a_python_int() -> None:
    """``Cut.n_queries`` is an ``int`` whatever integer type was given (so a Cut's fields
    serialise to JSON like any other count)."""
    cut = Cut(np.array([0]), np.array([0]), np.array([-1]), np.int64(1))
    assert type(cut.n_queries) is int
    json.dumps(cut.n_queries)


def test_fit_anchor_record_keys() -> None:
    G = np.random.default_rng(0).standard_normal((30, 4))
    nmap = NystromMap(linear(1.0), cutoff=1e-8, ridge=0.5).fit(G, np.arange(6))
    assert set(nmap.record) == {"m", "rank", "dropped", "cutoff", "ridge", "eig_max", "eig_min_kept", "condition"}
    assert nmap.record["cutoff"] == 1e-8 and nmap.record["ridge"] == 0.5 and nmap.record["m"] == 6


def test_dynamic_index_passes_cutoff_and_ridge_to_its_map() -> None:
    """A cutoff above the smallest eigenvalues of K_LL drops them: the map's rank says so."""
    G = np.random.default_rng(0).standard_normal((40, 3))
    G = np.hstack([G, G[:, :1]])  # rank-3 embeddings in 4 dimensions
    index = DynamicIndex(G, np.arange(8), cutoff=1e-3, ridge=0.0)
    assert index.nmap.cutoff == 1e-3 and index.nmap.ridge == 0.0
    assert index.nmap.rank == 3
    default = DynamicIndex(G, np.arange(8), ridge=0.25)
    assert default.nmap.ridge == 0.25


# --------------------------------------------------------------------------
# k-means++ never draws a chosen landmark again
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_kmeanspp_landmarks_are_distinct_when_rounding_leaves_a_residue(seed: int) -> None:
    """Identical embeddings whose kernel distance to themselves rounds to a tiny positive
    number (kappa(a,a) by einsum, kappa(a,b) by a matrix product): already chosen landmarks
    must still get weight zero, so the ids are distinct."""
    rng = np.random.default_rng(seed)
    v = 3.7 * rng.normal(size=33)
    G0 = np.vstack([np.tile(v, (12, 1)), rng.normal(size=(4, 33))])
    k = linear(1.0)
    residue = k.diag(G0[:1])[0] * 2 - 2 * k(G0[:1], G0[:1])[0, 0]
    ids = select_landmarks(G0, 16, method="kmeans++", rng=np.random.default_rng(seed))
    assert np.unique(ids).size == 16, f"duplicated landmark (self-distance residue {residue:g})"


# --------------------------------------------------------------------------
# rare branches give the common branch's results
# --------------------------------------------------------------------------


def test_rejection_sample_beyond_one_query_block_is_block_after_block() -> None:
    """More queries than one block (``_QUERY_BLOCK``): the batch is sampled block after block,
    each block its own queries only, so one call equals one call per block on the same
    generator: the same ids, and counters that are the sums of the blocks' counters."""
    z = make_point_set("clustered", 300, 3, 2)
    tree = Tree.build(z, branching=3, leaf_size=8, seed=0)
    B, n = sampling_module._QUERY_BLOCK + 44, 3
    Q = np.random.default_rng(1).normal(size=(B, 3))
    ids, c = sampling_module.rejection_sample(tree, Q, n, np.random.default_rng(0))
    rng = np.random.default_rng(0)
    parts = [sampling_module.rejection_sample(tree, Q[b0:b0 + sampling_module._QUERY_BLOCK], n, rng)
             for b0 in range(0, B, sampling_module._QUERY_BLOCK)]
    np.testing.assert_array_equal(ids, np.vstack([p[0] for p in parts]))
    assert c == {key: sum(p[1][key] for p in parts) for key in c}
    assert c["accepted"] >= B * n and c["cut_entries"] >= B


@pytest.mark.parametrize("block", [1, 7, 40])
def test_block_argument_splits_queries_and_changes_nothing_else(block: int) -> None:
    """``block=`` (the memory bound at large N): the samples are those of one call per slice
    of ``block`` queries on one generator, the counters their sums, and top-k is the same
    for every block; a block below 1 or not an integer is refused by name."""
    z = make_point_set("clustered", 300, 3, 2)
    tree = Tree.build(z, branching=3, leaf_size=8, seed=0)
    B, n = 45, 3
    Q = np.random.default_rng(1).normal(size=(B, 3))
    ids, c = sampling_module.rejection_sample(tree, Q, n, np.random.default_rng(0), block=block)
    rng = np.random.default_rng(0)
    parts = [sampling_module.rejection_sample(tree, Q[b0:b0 + block], n, rng) for b0 in range(0, B, block)]
    np.testing.assert_array_equal(ids, np.vstack([p[0] for p in parts]))
    assert c == {key: sum(p[1][key] for p in parts) for key in c}
    t_ids, t_log, t_c = sampling_module.topk(tree, Q, 5, return_counters=True, block=block)
    w_ids, w_log, w_c = sampling_module.topk(tree, Q, 5, return_counters=True)
    np.testing.assert_array_equal(t_ids, w_ids)
    np.testing.assert_array_equal(t_log, w_log)
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match="^block"):
            sampling_module.rejection_sample(tree, Q, n, np.random.default_rng(0), block=bad)
        with pytest.raises(ValueError, match="^block"):
            sampling_module.topk(tree, Q, 5, block=bad)


@pytest.mark.parametrize("sampler", ["fast", "plain"])
@pytest.mark.parametrize("factor, raises", [(0.1, False), (10.0, True)])
def test_rejection_sample_i3_margin_is_rounding_at_the_logit_scale(sampler, factor, raises) -> None:
    """The per-proposal I3 check tolerates ``a_y - <q, r_v> - eps_v`` up to the rounding margin
    ``ROUNDING (1 + ||q|| (||r_v|| + rho_v))`` and no more. Targets of norm ~1000 and a unit
    query make the margin ~1e-6 (a margin ``ROUNDING (1 + ||q|| / (||r_v|| + rho_v))``, ~1e-9,
    is a different check): the root's radius is shrunk so that the target farthest along ``q``
    exceeds its bound by ``factor`` times the margin, and a ``tol`` far above the root's
    bracket keeps the root as the only (node) entry of the envelope."""
    rng = np.random.default_rng(0)
    z = np.array([1000.0, 0.0, 0.0]) + rng.normal(size=(8, 3))
    tree = Tree.build(z, branching=2, leaf_size=2, seed=0)
    q = rng.normal(size=3)
    q /= np.linalg.norm(q)
    reach = float(np.max((z - tree.rep[0]) @ q))        # max_y <q, z_y - r_root>, ||q|| = 1
    margin = _fastpath.ROUNDING * (1.0 + (tree.rep_norm[0] + reach))
    tree.radius[0] = reach - factor * margin              # the farthest target: excess = factor * margin
    if sampler == "fast":
        cut = sampling_module.rejection_envelope(tree, q, 200, tol=1e6)
        assert cut.node.tolist() == [0]
        run = lambda: sampling_module.rejection_sample(tree, q, 200, np.random.default_rng(1), tol=1e6)  # noqa: E731
    else:
        run = lambda: plain.rejection_sample(tree, q, 200, np.random.default_rng(1), tol=1e6)  # noqa: E731
    if raises:
        with pytest.raises(ValueError, match="invariant I3 violated"):
            run()
    else:
        ids = run()[0] if sampler == "fast" else run()
        assert int(np.argmax(z @ q)) in ids.tolist()      # the target beyond the bound was drawn


def test_plain_cut_stops_exactly_at_the_target_width() -> None:
    """(5) stops when hi - lo <= tol, equality included: with tol set to the root
    bracket's own width, the cut is the root; one float below it, the root is expanded."""
    tree = _tree()
    q = np.random.default_rng(0).normal(size=3)
    lo, hi = plain.bracket(tree, q, 1e300)  # the root's bracket (2): any cut is narrower than 1e300
    assert len(plain.adaptive_cut(tree, q, 1e300)) == 1
    width = hi - lo
    assert plain.adaptive_cut(tree, q, width).node.tolist() == [tree.root]
    assert len(plain.adaptive_cut(tree, q, np.nextafter(width, 0.0))) > 1


def test_tol_at_the_rounding_margin_refines_to_the_end() -> None:
    """``tol`` exactly ``8 W_bound(q)`` leaves a target of 0, which :func:`width_target` turns
    into "refine to the end" (as for any target <= 0). A query so small that every bracket
    rounds to width 0 tells the two apart: the fast cut must be the exhausted one, the cut
    at the end of plain.refinement_order. (plain aims at tol itself: its cut is the root here.)"""
    tree = _tree()
    q = np.full(3, 1e-30)
    W = float(_fastpath.bracket_rounding_bound(tree, np.linalg.norm(q[None, :], axis=1))[0])
    tol = 8.0 * W
    assert float(_fastpath.width_target(tree, q[None, :], tol)[0]) == -np.inf
    nodes, targets = [tree.root], []
    for v in plain.refinement_order(tree, q):
        children, leaf_targets = plain.expand(tree, int(v))
        nodes.remove(int(v))
        nodes += children
        targets += leaf_targets
    fast = adaptive_cut(tree, q[None, :], tol)
    assert sorted(fast.target[fast.target >= 0].tolist()) == sorted(targets)
    assert sorted(fast.node[fast.node >= 0].tolist()) == sorted(nodes)
    assert len(plain.adaptive_cut(tree, q, tol)) == 1


def test_refine_to_width_redo_branch_gives_the_exhausted_cut(monkeypatch) -> None:
    """refine_to_width refines again to the end any query whose recomputed bracket is still
    wider than its target. Forcing that branch (the first refinement stops at the root):
    the cut must be the exhausted one, with its size and counters."""
    tree = _tree()
    Q = np.random.default_rng(0).normal(size=(3, 3))
    real = _fastpath.refine
    calls = []

    def lazy_first(tree_, Q_, tol=None, **kw):
        calls.append(tol)
        return real(tree_, Q_, tol=np.full(Q_.shape[0], np.inf) if len(calls) == 1 else tol, **kw)

    want = real(tree, Q, tol=np.full(3, -np.inf))
    monkeypatch.setattr(_fastpath, "refine", lazy_first)
    got = _fastpath.refine_to_width(tree, Q, 1e-3)
    assert len(calls) == 2
    assert got.size == want.size == got.order.size
    for f in ("query", "node", "target"):
        assert sorted(zip(got.query.tolist(), getattr(got, f).tolist())) == \
            sorted(zip(want.query.tolist(), getattr(want, f).tolist()))
    assert got.target_logits == want.target_logits and got.node_logits == want.node_logits + 3
    lo, hi, _ = log_partition_bracket(tree, Q, Cut(*got.cut_fields()))
    lo_w, hi_w, _ = log_partition_bracket(tree, Q, Cut(*want.cut_fields()))
    np.testing.assert_array_equal(lo, lo_w)
    np.testing.assert_array_equal(hi, hi_w)


def test_project_overflow_with_mixed_signs_is_a_value_error() -> None:
    """K_LL^{-1/2} G_L overflowing, with products of both signs in one sum: the documented
    ValueError naming G_L, not a floating-point warning (an error under the test suite's
    warning filter). (With this machine's BLAS, under NumPy 1.25.2 and 2.4.6, the sums of
    overflowing products come out +-inf, not NaN: only the "overflow" flag is raised here.
    project ignores every flag, so a BLAS that produces NaN is covered as well.)"""
    G = np.random.default_rng(0).normal(size=(8, 3)) * 1e-160  # K_LL ~ 1e-320: K^{-1/2} ~ 1e160
    nmap = NystromMap(linear(0.0), ridge=0.0).fit(G, np.arange(3))
    assert np.abs(nmap.inv_sqrt).max() > np.finfo(np.float64).max / 1e150  # products overflow
    G_L = np.array([[1e150, -1e150], [1e150, -1e150], [-1e150, 1e150]])
    with pytest.raises(ValueError, match=r"^G_L: expected W = K_LL\^\{-1/2\} G_L"):
        nmap.project(G_L)
