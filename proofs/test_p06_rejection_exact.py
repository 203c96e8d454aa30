"""P6 (proofs/README.md section 6): rejection_sample draws exactly from P; acceptance = exp(log Z - hi) >= exp(-(hi - lo)).

Proof: ``proofs/p06_rejection_exact.md``.

Statistical tests: fixed seeds; goodness of fit by the G-test of
reference.stats (groups of >= 20 expected draws), acceptance rates by a
two-sided exact binomial test; both fail at p < 1e-6, the false-alarm rate of
each test. Deterministic inequalities: 1e-9 of the term magnitude (proofs/README.md
section 6).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from scipy.stats import binomtest

from proofs.strategies_bounds import (
    FP_RTOL,
    brute_log_p,
    brute_log_z,
    fp_scale,
    make_point_set,
    make_queries,
    trees_with_queries,
)
from reference.bounds import adaptive_cut, log_partition_bracket
from reference.data import make_targets
from reference.sampling import rejection_envelope, rejection_sample
from reference.stats import g_test
from reference.tree import Tree

ALPHA = 1e-6
N_DRAWS = 20000

CASES = [  # kind, n, dim, logit scale, seed
    ("clustered", 200, 3, 8.0, 0),
    ("uniform", 150, 2, 5.0, 1),
    ("duplicates", 120, 4, 6.0, 2),
    ("collinear", 100, 1, 10.0, 3),
    ("huge", 150, 3, 5.0, 4),
    ("grid", 150, 3, 4.0, 5),
]


def _tree_and_queries(kind, n, dim, scale, seed, n_queries=2):
    rng = np.random.default_rng(seed)
    tree = Tree.build(make_point_set(kind, n, dim, seed), branching=3, leaf_size=4, seed=seed)
    return tree, make_queries(tree, rng, n_queries, scale, aligned=bool(seed % 2)), rng


def _assert_fits_softmax(tree, Q, ids, label):
    p = np.exp(brute_log_p(tree, Q))
    for b in range(Q.shape[0]):
        counts = np.bincount(ids[b], minlength=tree.points.shape[0])
        pv = g_test(counts, p[b]).p_value
        assert pv >= ALPHA, f"{label}: draws of query {b} do not follow the softmax (G-test p = {pv:.2e})"


@pytest.mark.parametrize("tol", [None, 0.5])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_p6_goodness_of_fit(case, tol):
    """20000 draws per query follow the exact softmax (G-test, fail at p < 1e-6)."""
    tree, Q, rng = _tree_and_queries(*case)
    ids, counters = rejection_sample(tree, Q, N_DRAWS, rng, tol=tol)
    assert ids.shape == (Q.shape[0], N_DRAWS) and tree.alive[ids].all()
    assert counters["accepted"] >= Q.shape[0] * N_DRAWS and counters["proposals"] >= counters["accepted"]
    _assert_fits_softmax(tree, Q, ids, f"{case[0]}, tol={tol}")


@pytest.mark.parametrize("op", ["delete", "update"])
def test_p6_after_dynamic_operations(op):
    """Exact after deletes (empty nodes in the tree) and after updates with no refresh (I3 only, no I4)."""
    tree, _, rng = _tree_and_queries("clustered", 200, 3, 8.0, 7)
    live = np.flatnonzero(tree.alive)
    ids = rng.choice(live, size=80, replace=False)
    if op == "delete":
        tree.delete(ids)
    else:
        tree.update(ids, tree.points[ids] + rng.normal(scale=1.0, size=(80, 3)))
        assert not tree.nested
    Q = make_queries(tree, rng, 2, 8.0)
    for tol in (None, 0.5):
        draws, _ = rejection_sample(tree, Q, N_DRAWS, rng, tol=tol)
        _assert_fits_softmax(tree, Q, draws, f"after {op}, tol={tol}")


@pytest.mark.parametrize("tol", [0.2, 1.0, 3.0, None])
@pytest.mark.parametrize("case", CASES[:4], ids=[c[0] for c in CASES[:4]])
def test_p6_acceptance_rate(case, tol):
    """accepted / proposals ~ exp(log Z - hi) (binomial test), and exp(log Z - hi) >= exp(-(hi - lo))."""
    tree, Q, rng = _tree_and_queries(*case, n_queries=1)
    q = Q[0]
    n = 4000
    if tol is None:  # the default cut of rejection_sample (cost-balanced for n draws)
        cut = rejection_envelope(tree, Q, n, None)
    else:
        cut = adaptive_cut(tree, Q, tol)
    lo, hi, _ = log_partition_bracket(tree, Q, cut)
    lo, hi = lo[0], hi[0]
    log_z = brute_log_z(tree, q)
    rate = np.exp(log_z - hi)
    tol_fp = FP_RTOL * fp_scale(tree, q)
    assert log_z - hi >= lo - hi - tol_fp          # rate >= exp(-(hi - lo))
    if tol is not None:
        assert hi - lo <= tol + tol_fp                 # P7, so rate >= exp(-tol)
    _, counters = rejection_sample(tree, q, n, rng, tol=tol)
    assert counters["cut_entries"] == len(cut)     # the same (deterministic) cut was used
    pv = binomtest(counters["accepted"], counters["proposals"], min(rate, 1.0)).pvalue
    assert pv >= ALPHA, (f"acceptance {counters['accepted']}/{counters['proposals']} vs exp(log Z - hi) = "
                         f"{rate:.4f}: binomial p = {pv:.2e}")


@given(trees_with_queries(n_queries=2))
def test_p6_never_raises_on_valid_trees_and_returns_live_ids(data):
    """On adversarial valid trees (aligned queries, scales up to 1e4) no acceptance probability exceeds 1."""
    tree, Q, seed = data
    rng = np.random.default_rng(seed)
    for tol in (None, 1.0):
        ids, c = rejection_sample(tree, Q, 30, rng, tol=tol)
        assert ids.shape == (2, 30) and tree.alive[ids].all()
        assert c["proposals"] >= c["accepted"] >= 60


# In the cases above the default envelope (tol=None) barely tests the acceptance step of node
# entries: on 100-200 targets every node of <= 48 targets is evaluated in full, so 0-2% of
# proposals come from node entries (clustered, uniform, grid); where more do, their eps_v is
# ~1e-3 or less (duplicates, huge) or one node entry carries all the mass (collinear), so that
# a wrong factor exp(-c eps_v) changes only the acceptance rate. A wrong acceptance probability
# (exp(a_y - <q,r_v> - 1.5 eps_v), say) passes all of them. With many targets and few draws
# per query the cost-balanced envelope stays coarse and most proposals, from many node entries
# of different radii, go through the acceptance step. Identical queries have identical
# envelopes, so their pooled draws are B n i.i.d. draws from one softmax.
REJECTION_CASES = [  # N, dim, logit scale, draws per query n, identical queries B, seed
    (5000, 4, 20.0, 32, 625, 0),     # node entries and exact entries mixed (75% of proposals rejectable)
    (20000, 4, 10.0, 4, 5000, 0),    # node entries only: every proposal goes through the acceptance step
]


def _node_entry_proposals(tree, Q, n, counters):
    """Proposals drawn from node entries, i.e. that went through the accept/reject step.

    ``target_logits`` counts every target of every exact entry (scored once,
    while the envelope is built) plus one logit per proposal from a node entry
    (proofs/README.md section 4.5); ``rejection_envelope`` lists the exact
    entries as their single targets, and its cut has no other single targets
    (expanded leaves become exact entries).
    """
    exact_targets = int((rejection_envelope(tree, Q, n, None).target >= 0).sum())
    return counters["target_logits"] - exact_targets


@pytest.mark.parametrize("case", REJECTION_CASES, ids=["mixed", "node_entries_only"])
def test_p6_default_envelope_exact_where_most_proposals_are_rejectable(case):
    """tol=None, many targets, few draws per query, many identical queries: >= 50% of proposals come
    from node entries, and the pooled draws follow the softmax (G-test), at the acceptance rate
    exp(log Z - hi) (binomial test); each test fails at p < 1e-6 (false-alarm rate 1e-6 each)."""
    N, dim, scale, n, B, seed = case
    tree = Tree.build(make_targets(N, dim, seed=seed), seed=seed)
    rng = np.random.default_rng(seed)
    q = make_queries(tree, rng, 1, scale)[0]
    Q = np.tile(q, (B, 1))
    ids, counters = rejection_sample(tree, Q, n, rng)
    assert ids.shape == (B, n) and tree.alive[ids].all()
    share = _node_entry_proposals(tree, Q, n, counters) / counters["proposals"]
    assert share >= 0.5, f"only {share:.1%} of proposals went through the acceptance step"
    envelope = rejection_envelope(tree, q, n, None)
    assert (envelope.node >= 0).sum() >= 20          # many node entries, of different radii
    p = np.exp(brute_log_p(tree, q))
    pv = g_test(np.bincount(ids.ravel(), minlength=tree.points.shape[0]), p).p_value
    assert pv >= ALPHA, f"{B} x {n} pooled draws do not follow the softmax (G-test p = {pv:.2e})"
    _, hi, _ = log_partition_bracket(tree, q, envelope)
    rate = np.exp(brute_log_z(tree, q) - hi)
    pv = binomtest(counters["accepted"], counters["proposals"], min(rate, 1.0)).pvalue
    assert pv >= ALPHA, (f"acceptance {counters['accepted']}/{counters['proposals']} vs exp(log Z - hi) = "
                         f"{rate:.4f}: binomial p = {pv:.2e}")
