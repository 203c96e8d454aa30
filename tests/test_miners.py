"""Tests of reference/miners.py: every miner's negatives against a brute-force definition.

Deterministic identities are checked exactly or to 1e-9 (float64 rounding of
a few dozen operations, proofs/README.md section 6). Distributional checks are G-tests
(reference.stats.g_test: groups of >= 20 expected draws) with fixed seeds,
failing at p < 1e-6: the false-alarm rate of each is 1e-6.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import logsumexp

from reference import bounds
from reference.data import make_dataset
from reference.encoder import DualEncoder, EncoderConfig
from reference.miners import (
    MINERS,
    MinerConfig,
    Negatives,
    Sizes,
    make_miner,
    memory_accounting,
    memory_arrays,
)
from reference.softmax import topk_ids
from reference.stats import g_test

P_FAIL = 1e-6  # G-test rejection level (false-alarm rate per test)
TOL = 1e-9  # float64 identities


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def data():
    return make_dataset(120, dim=8, queries_per_target=2, depth=2, branching=4, seed=3)


def make_model(data, seed=0):
    cfg = EncoderConfig(query_dim=data.train_x.shape[1], target_dim=data.targets.shape[1], hidden=(16,),
                        out_dim=8, beta=4.0)
    return DualEncoder(cfg, seed=seed)


def perturb(model, seed, scale=0.3):
    """Move every parameter (as a training step would)."""
    rng = np.random.default_rng(seed)
    for p in model.params.values():
        p += scale * rng.standard_normal(p.shape)


def batch(data, B=12, seed=0):
    idx = np.random.default_rng(seed).integers(0, data.train_x.shape[0], size=B)
    return data.train_x[idx], data.train_pos[idx]


CFG = MinerConfig(negatives=5, refresh_every=3, cache_size=40, landmarks=12, leaf_size=4, cut_tol=2.0)


def brute_topk(scores, k, exclude):
    """Definition: sort ids by (-score, id), drop the excluded id, keep k."""
    out = []
    for b, row in enumerate(np.asarray(scores)):
        order = sorted((y for y in range(row.size) if y != exclude[b]), key=lambda y: (-row[y], y))
        out.append(order[:k])
    return np.array(out, dtype=np.int64)


def brute_cut_log_prob(tree, q, cut):
    """Definition of the cut distribution, entry by entry (proofs/README.md section 4):

    Phat_C(y) = exp(<q, r_v(y)>) / sum_{v in C} n_v exp(<q, r_v>), r_v(y) the entry holding y.
    Returns (B, capacity) log-probabilities (-inf for dead ids).
    """
    B = q.shape[0]
    out = np.full((B, tree.points.shape[0]), -np.inf)
    for b in range(B):
        members, reps, counts = [], [], []
        for e in np.flatnonzero(cut.query == b):
            v, y = cut.node[e], cut.target[e]
            if v >= 0:
                ys = tree.order[tree.start[v]:tree.stop[v]]
                if ys.size == 0:
                    continue
                members.append(ys)
                reps.append(tree.rep[v])
            else:
                members.append(np.array([y]))
                reps.append(tree.points[y])
            counts.append(members[-1].size)
        s = np.array([q[b] @ r for r in reps])
        log_z = logsumexp(np.log(counts) + s)
        for ys, se in zip(members, s):
            out[b, ys] = se - log_z
    return out


# --------------------------------------------------------------------------- top-k


@given(
    st.integers(1, 4).flatmap(lambda B: st.integers(2, 25).flatmap(lambda N: st.tuples(
        st.lists(st.lists(st.integers(-3, 3), min_size=N, max_size=N), min_size=B, max_size=B),
        st.integers(1, N - 1),
        st.lists(st.integers(0, N - 1), min_size=B, max_size=B),
    )))
)
def test_topk_ids_matches_the_sort_definition_with_ties(args):
    """Integer scores in [-3, 3] force many ties: order by score, then by smaller id (P8's rule, proofs/README.md section 6.8)."""
    scores, k, exclude = args
    scores = np.array(scores, dtype=float)
    assert np.array_equal(topk_ids(scores, k, exclude=exclude), brute_topk(scores, k, exclude))
    assert np.array_equal(topk_ids(scores, k), brute_topk(scores, k, [-1] * len(scores)))


def test_topk_ids_validates():
    with pytest.raises(ValueError, match="k"):
        topk_ids(np.zeros((2, 5)), 5, exclude=[0, 1])  # only 4 ids left
    with pytest.raises(ValueError, match="exclude"):
        topk_ids(np.zeros((2, 5)), 2, exclude=[0])
    with pytest.raises(ValueError, match="finite"):
        topk_ids(np.array([[0.0, np.nan, 1.0]]), 1)


# --------------------------------------------------------------------------- the simple miners


def test_full_returns_every_target(data):
    neg = make_miner("full", CFG).mine(make_model(data), data.targets, *batch(data), 0, np.random.default_rng(0))
    assert neg == Negatives(ids=None, log_q=None, logits=0)


def test_uniform_log_q_and_distribution(data):
    model, N = make_model(data), data.n_targets
    x, pos = batch(data, B=2)
    miner = make_miner("uniform", MinerConfig(negatives=30000))
    neg = miner.mine(model, data.targets, x, pos, 0, np.random.default_rng(1))
    assert neg.ids.shape == (2, 30000) and neg.ids.min() >= 0 and neg.ids.max() < N
    np.testing.assert_allclose(neg.log_q, -np.log(N), rtol=TOL)
    assert g_test(np.bincount(neg.ids.ravel(), minlength=N), np.full(N, 1 / N)).p_value > P_FAIL


def test_in_batch_is_the_other_positives_with_their_frequency(data):
    model = make_model(data)
    x, pos = batch(data, B=9)
    neg = make_miner("in_batch", CFG, data).mine(model, data.targets, x, pos, 0, np.random.default_rng(0))
    n_train = data.train_pos.size
    for i in range(9):
        for j in range(CFG.negatives):
            y = pos[(i + j + 1) % 9]
            assert neg.ids[i, j] == y
            assert neg.log_q[i, j] == pytest.approx(np.log(np.sum(data.train_pos == y) / n_train), rel=TOL)


def test_in_batch_rejects_small_batches_and_unseen_positives(data):
    miner = make_miner("in_batch", CFG, data)
    model = make_model(data)
    x, pos = batch(data, B=CFG.negatives)  # B - 1 < n
    with pytest.raises(ValueError, match="B - 1"):
        miner.mine(model, data.targets, x, pos, 0, np.random.default_rng(0))
    unseen = np.setdiff1d(np.arange(data.n_targets), data.train_pos)
    if unseen.size:
        x, pos = batch(data, B=9)
        pos = pos.copy()
        pos[3] = unseen[0]
        with pytest.raises(ValueError, match="unseen"):
            miner.mine(model, data.targets, x, pos, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="data"):
        make_miner("in_batch", CFG)


def test_brute_topk_is_the_exact_top_k_of_the_current_model(data):
    model = make_model(data)
    miner = make_miner("brute_topk", CFG)
    for step in range(2):
        x, pos = batch(data, seed=step)
        a = model.beta * model.encode_queries(x) @ model.encode_targets(data.targets, count=False).T
        rows = model.target_rows_encoded
        neg = miner.mine(model, data.targets, x, pos, step, np.random.default_rng(0))
        assert np.array_equal(neg.ids, brute_topk(a, CFG.negatives, pos))
        assert neg.log_q is None and neg.logits == a.size
        assert model.target_rows_encoded - rows == data.n_targets  # all N re-encoded every step
        perturb(model, step)


def test_stale_topk_scores_against_the_cache_of_the_last_refresh(data):
    model = make_model(data)
    miner = make_miner("stale_topk", CFG)  # R = 3
    rng = np.random.default_rng(0)
    G_refresh = None
    for step in range(7):
        x, pos = batch(data, seed=step)
        rows = model.target_rows_encoded
        if step % CFG.refresh_every == 0:
            G_refresh = model.encode_targets(data.targets, count=False)
        a = model.beta * model.encode_queries(x) @ G_refresh.T  # current queries, stale targets
        neg = miner.mine(model, data.targets, x, pos, step, rng)
        assert np.array_equal(neg.ids, brute_topk(a, CFG.negatives, pos))
        assert neg.log_q is None
        assert model.target_rows_encoded - rows == (data.n_targets if step % CFG.refresh_every == 0 else 0)
        perturb(model, 10 + step)


@pytest.mark.parametrize("name", ["exact_softmax", "stale_softmax"])
def test_softmax_miners_sample_the_softmax_of_their_logits_with_its_log_q(data, name):
    """exact_softmax: the softmax of the current logits over all N (all N re-encoded every step);
    stale_softmax: of the current queries against the table of the last refresh (R = 3). log Q is
    that softmax's log-probability (to 1e-9), and 20000 draws pass the G-test (false alarm 1e-6)."""
    model = make_model(data)
    cfg = MinerConfig(negatives=20000, refresh_every=3)
    miner = make_miner(name, cfg)
    rng = np.random.default_rng(0)
    for step in range(5):
        x, pos = batch(data, B=2, seed=step)
        if name == "exact_softmax" or step % cfg.refresh_every == 0:
            G = model.encode_targets(data.targets, count=False)
        rows = model.target_rows_encoded
        neg = miner.mine(model, data.targets, x, pos, step, rng)
        fresh = name == "exact_softmax" or step % cfg.refresh_every == 0
        assert model.target_rows_encoded - rows == (data.n_targets if fresh else 0)
        a = model.beta * model.encode_queries(x) @ G.T
        log_p = a - logsumexp(a, axis=1, keepdims=True)
        np.testing.assert_allclose(neg.log_q, np.take_along_axis(log_p, neg.ids, 1), rtol=TOL, atol=TOL)
        assert neg.logits == a.size
        for b in range(2):
            assert g_test(np.bincount(neg.ids[b], minlength=data.n_targets), np.exp(log_p[b])).p_value > P_FAIL
        perturb(model, 40 + step)


def test_exact_softmax_corrected_loss_is_the_full_softmax_loss(data):
    """With Q = P every importance weight is Z: the corrected sampled loss equals the full softmax
    loss (to 1e-12 relative: the same logsumexp formed two ways), for any draws."""
    model = make_model(data)
    perturb(model, 7)
    miner = make_miner("exact_softmax", CFG)
    for seed in range(3):
        x, pos = batch(data, seed=seed)
        neg = miner.mine(model, data.targets, x, pos, 0, np.random.default_rng(seed))
        sampled, _ = model.sampled_softmax_loss(x, pos, data.targets, neg.ids, neg.log_q)
        full, _ = model.full_softmax_loss(x, pos, data.targets)
        assert sampled == pytest.approx(full, rel=1e-12)


# --------------------------------------------------------------------------- negative cache


def test_negative_cache_log_q_and_fifo(data):
    model = make_model(data)
    miner = make_miner("neg_cache", CFG)  # C = 40
    rng = np.random.default_rng(0)
    B = 12
    for step in range(5):
        x, pos = batch(data, B=B, seed=step)
        before = miner.state_dict()
        neg = miner.mine(model, data.targets, x, pos, step, rng)
        after = miner.state_dict()
        if step == 0:  # initial fill: C distinct ids (the first B slots then take the positives)
            assert before == {}
            assert np.unique(after["ids"][B:]).size == CFG.cache_size - B
            emb0, head0 = None, 0
        else:
            ids0, emb0, head0 = before["ids"], before["emb"], int(before["head"])
            # log Q(y) = log sum over the slots holding y of softmax(beta <f, e_c>)
            s = model.beta * model.encode_queries(x) @ emb0.T
            log_p = s - logsumexp(s, axis=1, keepdims=True)
            for b in range(B):
                for j in range(CFG.negatives):
                    want = logsumexp(log_p[b, ids0 == neg.ids[b, j]])
                    assert neg.log_q[b, j] == pytest.approx(want, rel=TOL, abs=TOL)
            assert set(neg.ids.ravel()) <= set(ids0)
        # FIFO: the B slots from the old head now hold the batch positives, freshly encoded.
        where = (head0 + np.arange(B)) % CFG.cache_size
        assert np.array_equal(after["ids"][where], pos)
        np.testing.assert_allclose(after["emb"][where], model.encode_targets(data.targets[pos], count=False),
                                   rtol=TOL, atol=TOL)
        assert int(after["head"]) == (head0 + B) % CFG.cache_size
        if emb0 is not None:
            untouched = np.setdiff1d(np.arange(CFG.cache_size), where)
            assert np.array_equal(after["emb"][untouched], emb0[untouched])
        perturb(model, 20 + step)


def test_negative_cache_draws_follow_the_softmax_over_slots(data):
    """Gumbel-max draws vs Q(y) = sum of slot probabilities (G-test, false alarm 1e-6)."""
    model = make_model(data)
    cfg = MinerConfig(negatives=40000, cache_size=30)
    miner = make_miner("neg_cache", cfg)
    x, pos = batch(data, B=2)
    miner.mine(model, data.targets, x, pos, 0, np.random.default_rng(0))  # fill
    state = miner.state_dict()
    neg = miner.mine(model, data.targets, x, pos, 1, np.random.default_rng(1))
    s = model.beta * model.encode_queries(x) @ state["emb"].T
    log_p = s - logsumexp(s, axis=1, keepdims=True)
    for b in range(2):
        probs = np.zeros(data.n_targets)
        np.add.at(probs, state["ids"], np.exp(log_p[b]))
        counts = np.bincount(neg.ids[b], minlength=data.n_targets)
        assert g_test(counts, probs).p_value > P_FAIL
        np.testing.assert_allclose(neg.log_q[b], np.log(probs[neg.ids[b]]), rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- tree miners


def test_tree_stale_samples_the_cut_distribution_of_the_stale_tree(data):
    model = make_model(data)
    miner = make_miner("tree_stale", CFG)
    rng = np.random.default_rng(0)
    for step in range(5):
        x, pos = batch(data, seed=step)
        if step % CFG.refresh_every == 0:
            G_refresh = model.encode_targets(data.targets, count=False)
        rows = model.target_rows_encoded
        neg = miner.mine(model, data.targets, x, pos, step, rng)
        assert model.target_rows_encoded - rows == (data.n_targets if step % CFG.refresh_every == 0 else 0)
        np.testing.assert_array_equal(miner.tree.points, G_refresh)  # the tree is over the stale cache
        q = model.beta * model.encode_queries(x)
        cut = bounds.adaptive_cut(miner.tree, q, CFG.cut_tol)
        want = brute_cut_log_prob(miner.tree, q, cut)
        np.testing.assert_allclose(neg.log_q, np.take_along_axis(want, neg.ids, 1), rtol=TOL, atol=TOL)
        assert neg.logits >= len(cut)
        perturb(model, 30 + step)


def test_tree_stale_draws_follow_log_q(data):
    model = make_model(data)
    miner = make_miner("tree_stale", MinerConfig(negatives=30000, leaf_size=4, cut_tol=2.0))
    x, pos = batch(data, B=2)
    neg = miner.mine(model, data.targets, x, pos, 0, np.random.default_rng(5))
    q = model.beta * model.encode_queries(x)
    want = brute_cut_log_prob(miner.tree, q, bounds.adaptive_cut(miner.tree, q, 2.0))
    for b in range(2):
        assert g_test(np.bincount(neg.ids[b], minlength=data.n_targets), np.exp(want[b])).p_value > P_FAIL


def test_tree_nystrom_uses_fresh_landmarks_and_samples_its_cut_distribution(data):
    model = make_model(data)
    miner = make_miner("tree_nystrom", CFG)  # m = 12, R = 3
    rng = np.random.default_rng(0)
    for step in range(5):
        x, pos = batch(data, seed=step)
        rows = model.target_rows_encoded
        neg = miner.mine(model, data.targets, x, pos, step, rng)
        ix, L = miner.index, miner.landmarks
        assert np.unique(L).size == CFG.landmarks
        if step % CFG.refresh_every == 0:  # full re-encode, no separate landmark pass
            assert model.target_rows_encoded - rows == data.n_targets
            np.testing.assert_allclose(miner.cache, model.encode_targets(data.targets, count=False), rtol=TOL)
        else:  # only the m landmarks
            assert model.target_rows_encoded - rows == CFG.landmarks
        # W_t = K_LL^{-1/2} G_t(L) from the landmarks' *current* encodings
        G_L = model.encode_targets(data.targets[L], count=False)
        np.testing.assert_allclose(ix.W, ix.nmap.project(G_L), rtol=TOL, atol=TOL)
        psi = model.beta * model.encode_queries(x) @ ix.W.T
        cut = bounds.adaptive_cut(ix.tree, psi, CFG.cut_tol)
        want = brute_cut_log_prob(ix.tree, psi, cut)
        np.testing.assert_allclose(neg.log_q, np.take_along_axis(want, neg.ids, 1), rtol=TOL, atol=TOL)
        perturb(model, 40 + step, scale=0.1)


# --------------------------------------------------------------------------- state


@pytest.mark.parametrize("name", list(MINERS))
def test_state_dict_restores_the_miner_exactly(data, name):
    """A fresh miner loaded with state_dict() and the same rng state draws the same negatives."""
    model = make_model(data)
    a = make_miner(name, CFG, data)
    rng = np.random.default_rng(7)
    for step in range(4):
        a.mine(model, data.targets, *batch(data, seed=step), step, rng)
        perturb(model, 50 + step, scale=0.1)
    state = a.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    b = make_miner(name, CFG, data)
    b.load_state_dict(copy.deepcopy(state))
    rng_b = copy.deepcopy(rng)
    for step in (4, 5):  # step 5 is not a refresh step (R = 3): the restored derived state is used
        na = a.mine(model, data.targets, *batch(data, seed=step), step, rng)
        nb = b.mine(model, data.targets, *batch(data, seed=step), step, rng_b)
        for f in ("ids", "log_q"):
            va, vb = getattr(na, f), getattr(nb, f)
            assert (va is None and vb is None) or np.array_equal(va, vb)
        assert na.logits == nb.logits
        perturb(model, 60 + step, scale=0.1)


@pytest.mark.parametrize("name", ["stale_topk", "neg_cache", "tree_stale", "tree_nystrom"])
def test_bad_state_is_rejected_and_leaves_the_miner_unchanged(data, name):
    model = make_model(data)
    miner = make_miner(name, CFG, data)
    miner.mine(model, data.targets, *batch(data), 0, np.random.default_rng(0))
    good = miner.state_dict()
    bad = dict(good)
    key = next(iter(bad))
    bad[key] = np.full(bad[key].shape + (2,), 0.5)  # wrong number of dimensions
    with pytest.raises(ValueError, match="state"):
        miner.load_state_dict(bad)
    with pytest.raises(ValueError, match="state"):
        miner.load_state_dict({**good, "unexpected": np.zeros(1)})
    after = miner.state_dict()
    assert good.keys() == after.keys() and all(np.array_equal(good[k], after[k]) for k in good)


# --------------------------------------------------------------------------- memory accounting

SIZES = Sizes(n_targets=10_000, out_dim=32, query_dim=16, target_dim=16, batch_size=64, negatives=32,
              n_params=8000, cache_size=512, landmarks=64, hidden=(64, 16), block_rows=1000)


def test_memory_accounting_formulas():
    """The module docstring's formulas, written out by hand (float64 encoder: 8 bytes a number)."""
    N, d, dy, dx, H, B, n, P, C, m, Bs = 10_000, 32, 16, 16, 80, 64, 32, 8000, 512, 64, 1000
    rx, ry = dx + H + d, dy + H + d
    common = 4 * P + B * rx  # model, query batch
    loss = B * (n + 1) * (ry + 1)
    acc = {name: memory_accounting(name, SIZES) for name in MINERS}
    mat = {k: v["materialised"] for k, v in acc.items()}
    st = {k: v["streamed"] for k, v in acc.items()}
    # a forward-only pass holds two consecutive layers a row: max(16 + 64, 64 + 16, 16 + 32) = 80 < ry = 112
    rf = max(dy + 64, 64 + 16, 16 + d)
    assert SIZES.forward_row() == rf == 80
    # brute force: forward-only pass(N) scored + running top-n (scores and int64 ids, 8 bytes each)
    assert mat["brute_topk"]["step_bytes"] == 8 * (common + loss + N * rf + B * N + 2 * B * n)
    assert st["brute_topk"]["step_bytes"] == 8 * (common + loss + Bs * rf + B * Bs + 2 * B * n)
    # the oracle: the same pass, folded into n draws (best score, id, logit) and a logsumexp
    assert mat["exact_softmax"]["step_bytes"] == 8 * (common + loss + N * rf + B * N + 3 * B * n + 2 * B)
    assert st["exact_softmax"]["step_bytes"] == 8 * (common + loss + Bs * rf + B * Bs + 3 * B * n + 2 * B)
    # the full softmax's pass is differentiated through: every layer of every row
    assert mat["full"]["step_bytes"] == 8 * (common + N * ry + B * N + 2 * B)
    assert st["full"]["step_bytes"] == 8 * (common + Bs * ry + B * Bs + 2 * B)
    for name in ("full", "uniform", "in_batch", "brute_topk", "exact_softmax"):  # no refresh
        for rule in (mat, st):
            assert rule[name]["peak_bytes"] == rule[name]["step_bytes"]
    for name in ("uniform", "in_batch", "tree_stale"):
        assert mat[name]["step_bytes"] == st[name]["step_bytes"] == 8 * (common + loss)
    # the stale index as practitioners run it: the N x d table resident, scored every step
    assert mat["stale_topk"]["step_bytes"] == 8 * (common + loss + N * d + B * N + 2 * B * n)
    assert st["stale_topk"]["step_bytes"] == 8 * (common + loss + N * d + B * Bs + 2 * B * n)
    assert mat["stale_softmax"]["step_bytes"] == 8 * (common + loss + N * d + B * N + 3 * B * n + 2 * B)
    assert st["stale_softmax"]["step_bytes"] == 8 * (common + loss + N * d + B * Bs + 3 * B * n + 2 * B)
    for name in ("stale_topk", "stale_softmax", "tree_stale", "tree_nystrom"):  # every refresh charged alike
        assert mat[name]["refresh_bytes"] == 8 * N * rf and st[name]["refresh_bytes"] == 8 * Bs * rf
    # the method: forward-only pass(m) + psi (B x m) + K_LL^{-1/2} + W_t
    assert mat["tree_nystrom"]["step_bytes"] == 8 * (common + loss + m * rf + B * m + m * m + m * d)
    # neg_cache: slots C (d + 1), positives pass(B), B C (3 + n) materialised or 4 B C streamed; the fill pass(C)
    assert mat["neg_cache"]["step_bytes"] == 8 * (common + loss + C * (d + 1) + B * rf + B * C * (3 + n))
    assert st["neg_cache"]["step_bytes"] == 8 * (common + loss + C * (d + 1) + B * rf + 4 * B * C)
    assert mat["neg_cache"]["refresh_bytes"] == 8 * C * rf
    # host: every kept array
    M = SIZES.estimated_tree_nodes()
    assert M == int(np.ceil(-(-N // 16) * 8 / 7))

    def tree(k):
        return 8 * (2 * N * k + M * (k + 2)) + 8 * (2 * N + 7 * M) + (N + M)

    host = {k: v["host_bytes"] for k, v in acc.items()}
    assert host["full"] == host["uniform"] == host["brute_topk"] == host["neg_cache"] == host["exact_softmax"] == 0
    assert host["stale_topk"] == host["stale_softmax"] == 0  # their table is on the accelerator
    assert host["in_batch"] == 8 * N
    assert host["tree_stale"] == 8 * N * d + tree(d)
    assert host["tree_nystrom"] == 8 * N * d + tree(m) + 8 * (2 * m + 2 * m * d)
    assert acc["brute_topk"]["block_rows"] == Bs


def test_memory_scales_with_n_as_the_rule_says():
    """Materialised: per step only the miners that score every target every step grow with N, and
    the refresh step of the cached miners grows too; streamed (N >= B_s): only the stale indexes'
    resident N x d table depends on N."""
    big = Sizes(**{**SIZES.__dict__, "n_targets": 1_000_000})
    small, large = ({name: memory_accounting(name, s) for name in MINERS} for s in (SIZES, big))
    for name in MINERS:
        table = name in ("stale_topk", "stale_softmax")
        grows_step = table or name in ("full", "brute_topk", "exact_softmax")
        grows_peak = grows_step or name in ("tree_stale", "tree_nystrom")
        assert (large[name]["materialised"]["step_bytes"] > small[name]["materialised"]["step_bytes"]) == grows_step
        assert (large[name]["materialised"]["peak_bytes"] > small[name]["materialised"]["peak_bytes"]) == grows_peak
        assert (large[name]["streamed"]["peak_bytes"] > small[name]["streamed"]["peak_bytes"]) == table
        assert (large[name]["host_bytes"] > small[name]["host_bytes"]) == (small[name]["host_bytes"] > 0)
    with pytest.raises(ValueError, match="miner"):
        memory_accounting("nope", SIZES)
    with pytest.raises(ValueError, match="block_rows"):
        Sizes(**{**SIZES.__dict__, "block_rows": 0})


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_memory_counts_every_array_each_miner_keeps(data, dtype):
    """For every miner, after steps that include a refresh: the accounting's host bytes plus its
    kept accelerator bytes (besides the model) equal the .nbytes of every array the miner object
    holds, found by an independent walk of its object graph (tests/test_dynamic.py held_bytes),
    at the real sizes (N, d, the tree's node count, the encoder's item size)."""
    from tests.test_dynamic import held_bytes

    cfg = EncoderConfig(query_dim=data.train_x.shape[1], target_dim=data.targets.shape[1], hidden=(16,),
                        out_dim=8, beta=4.0, dtype=dtype)
    model = DualEncoder(cfg, seed=0)
    for name in MINERS:
        miner = make_miner(name, CFG, data)
        rng = np.random.default_rng(0)
        for t in range(CFG.refresh_every + 1):  # step 0 builds, step R refreshes
            x, pos = batch(data, seed=t)
            miner.mine(model, data.targets, x, pos, t, rng)
        tree = getattr(miner, "tree", None) or getattr(getattr(miner, "index", None), "tree", None)
        s = Sizes(n_targets=data.n_targets, out_dim=8, query_dim=cfg.query_dim, target_dim=cfg.target_dim,
                  batch_size=12, negatives=CFG.negatives, n_params=model.n_params, cache_size=CFG.cache_size,
                  landmarks=CFG.landmarks, hidden=(16,), leaf_size=CFG.leaf_size,
                  tree_nodes=0 if tree is None else tree.radius.size, itemsize=model.dtype.itemsize)
        kept_on_accelerator = sum(a.nbytes for a in memory_arrays(name, s, "materialised")
                                  if a.where == "accelerator" and a.when == "kept" and not a.name.startswith("model"))
        assert memory_accounting(name, s)["host_bytes"] + kept_on_accelerator == held_bytes(miner), name


# --------------------------------------------------------------------------- validation


def test_validation(data):
    model = make_model(data)
    with pytest.raises(ValueError, match="miner"):
        make_miner("oracle", CFG)
    with pytest.raises(ValueError, match="negatives"):
        MinerConfig(negatives=0)
    with pytest.raises(ValueError, match="cut_tol"):
        MinerConfig(cut_tol=-1.0)
    x, pos = batch(data)
    for name in MINERS:
        miner = make_miner(name, CFG, data)
        with pytest.raises(ValueError, match="x"):
            miner.mine(model, data.targets, x[:, :-1], pos, 0, np.random.default_rng(0))
        with pytest.raises(ValueError, match="pos"):
            miner.mine(model, data.targets, x, pos[:-1], 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng"):
        make_miner("uniform", CFG).mine(model, data.targets, x, pos, 0, 0)
    with pytest.raises(ValueError, match="cache_size"):
        make_miner("neg_cache", MinerConfig(cache_size=data.n_targets + 1)).mine(
            model, data.targets, x, pos, 0, np.random.default_rng(0))


def test_tree_nystrom_builds_its_tree_once_and_repairs_it_at_every_refresh(data, monkeypatch):
    """One DynamicIndex for the run: Tree.build only at step 0, refresh = update + rebuild (invariants hold)."""
    from reference.tree import Tree

    calls = []
    build = Tree.build.__func__

    def counting_build(cls, *args, **kwargs):
        calls.append(1)
        return build(cls, *args, **kwargs)

    monkeypatch.setattr(Tree, "build", classmethod(counting_build))
    model = make_model(data)
    miner = make_miner("tree_nystrom", CFG)  # R = 3: refreshes at steps 3, 6, 9
    rng = np.random.default_rng(1)
    first = None
    for step in range(11):
        miner.mine(model, data.targets, *batch(data, seed=step), step, rng)
        first = miner.index if first is None else first
        assert miner.index is first and len(calls) == 1  # same object, never rebuilt from scratch
        assert miner.index.n_refreshes == step // CFG.refresh_every
        if step % CFG.refresh_every == 0:
            miner.index.tree.check_invariants()
            # the repaired tree is over the new coordinates phi of the fresh cache
            np.testing.assert_allclose(miner.index.tree.points, miner.index.nmap.features(miner.cache),
                                       rtol=TOL, atol=TOL)
        perturb(model, 70 + step, scale=0.1)
    assert miner.index.n_refreshes == 3
