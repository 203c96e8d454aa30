"""Teeth for gaps of the core mutation sample (helper J4's `not yet killed` verdicts), by theme.

Each test says in its docstring what it pins; each was seen failing with the named mutant applied
by hand (diffs in tests/mutation/survivors.md) and passing once reverted.
"""

from __future__ import annotations

import numpy as np
import pytest

from reference._validation import MAX_ABS_COORD
from reference.dynamic import DynamicIndex
from reference.nystrom import NystromMap, linear, make_kernel, polynomial, rbf, ridge_leverage_scores, select_landmarks
from reference.sampling import topk
from reference.softmax import sampled_log_partition, sampled_softmax_loss
from reference.tree import Tree

ABOVE = float(np.nextafter(MAX_ABS_COORD, np.inf))


def _entry_error(name: str) -> str:
    return f"{name}: expected |entries| <= MAX_ABS_COORD"


def _index() -> tuple[DynamicIndex, np.ndarray]:
    G = np.random.default_rng(0).standard_normal((40, 4))
    return DynamicIndex(G, np.arange(6)), G


def _snapshot(index: DynamicIndex) -> dict[str, object]:
    """Every array and counter of the index (tree arrays included), copied."""
    snap: dict[str, object] = {}
    for name, val in vars(index.tree).items():
        if isinstance(val, np.ndarray):
            snap["tree." + name] = np.array(val, copy=True)
    for name in ("cache", "W", "W0"):
        snap[name] = np.array(getattr(index, name), copy=True)
    for name in ("anchor", "landmarks", "eigenvalues", "inv_sqrt"):
        snap["nmap." + name] = np.array(getattr(index.nmap, name), copy=True)
    snap["nmap"] = index.nmap
    snap["counters"] = (index.steps_since_refresh, index.n_refreshes, dict(index.last_refresh))
    return snap


def _assert_same(before: dict[str, object], after: dict[str, object]) -> None:
    assert before.keys() == after.keys()
    for key in before:
        if isinstance(before[key], np.ndarray):
            np.testing.assert_array_equal(after[key], before[key], err_msg=key)
        elif key == "nmap":
            assert after[key] is before[key], key
        else:
            assert after[key] == before[key], key


def _dyn_entry_points(G: np.ndarray):
    """(argument name, call(value)) for every DynamicIndex entry point that takes embeddings."""
    def fresh():
        return DynamicIndex(G, np.arange(6))

    return [
        ("cache", lambda v: DynamicIndex(np.vstack([G, np.full((1, 4), v)]), np.arange(6))),
        ("G_L", lambda v: fresh().step(np.vstack([G[:5], np.full((1, 4), v)]))),
        ("G", lambda v: fresh().refresh(np.vstack([G[:2], np.full((1, 4), v)]), np.arange(3))),
        ("G", lambda v: fresh().add(np.full((1, 4), v))),
        ("G", lambda v: fresh().add(np.full((1, 4), v), current=False)),
    ]


def _nystrom_entry_points(G: np.ndarray):
    """(argument name, call(value)) for every Nystrom entry point that takes embeddings."""
    def big(rows):
        A = np.array(G[:rows], copy=True)
        A[-1, 0] = 0.0
        return A

    def with_value(A, v):
        A = np.array(A, copy=True)
        A[-1, -1] = v
        return A

    nmap = NystromMap("linear").fit(G, np.arange(6))
    phi = nmap.features(G[:3])
    return [
        ("G0", lambda v: ridge_leverage_scores(with_value(G, v), rng=np.random.default_rng(0))),
        ("G0", lambda v: ridge_leverage_scores(with_value(G, v), "rbf", rng=np.random.default_rng(0))),
        ("G0", lambda v: select_landmarks(with_value(G, v), 3, method="kmeans++", rng=np.random.default_rng(0))),
        ("G0", lambda v: select_landmarks(with_value(G, v), 3, rng=np.random.default_rng(0))),
        ("G0", lambda v: NystromMap("linear").fit(with_value(G, v), np.arange(6))),
        ("anchor", lambda v: NystromMap("linear").fit_anchor(with_value(big(6), v))),
        ("G", lambda v: nmap.features(with_value(G[:3], v))),
        ("G_L", lambda v: nmap.project(with_value(G[:6], v))),
        ("phi", lambda v: nmap.approximate(with_value(phi, v), nmap.project(G[:6]))),
        ("W", lambda v: nmap.approximate(phi, with_value(nmap.project(G[:6]), v))),
    ]


@pytest.mark.parametrize("which", ["dynamic", "nystrom"])
def test_max_abs_coord_limit_at_every_embedding_entry_point(which):
    """Every entry point of dynamic and nystrom that takes embeddings refuses an entry just above
    MAX_ABS_COORD by the caller's argument name, and does not refuse an entry exactly at the limit
    on that ground (a later check, e.g. of the Nystrom coordinates, may still refuse it, but not by
    the entry-limit message). Kills DynamicIndex._check_embeddings__mutmut_6 (add/refresh named
    a later check or 'anchor') and ridge_leverage_scores__mutmut_8 (G0 above the limit accepted)."""
    G = np.random.default_rng(0).standard_normal((40, 4))
    calls = _dyn_entry_points(G) if which == "dynamic" else _nystrom_entry_points(G)
    for name, call in calls:
        with pytest.raises(ValueError) as err:
            call(ABOVE)
        assert str(err.value).startswith(_entry_error(name)), (name, str(err.value))
        for v in (MAX_ABS_COORD, -MAX_ABS_COORD):
            try:
                call(v)
            except ValueError as e:  # a later check may refuse; never the entry limit itself
                assert not str(e).startswith(_entry_error(name)), (name, str(e))


def test_refresh_nystrom_coordinate_limit_names_G():
    """refresh with entries within MAX_ABS_COORD whose Nystrom coordinates exceed it is refused
    by a message naming G (kills refresh__mutmut_73, 'g'), and leaves the index unchanged."""
    index, _ = _index()
    before = _snapshot(index)
    G = np.sign(np.random.default_rng(1).standard_normal((40, 4))) * 9e149
    with pytest.raises(ValueError, match=r"^G: expected Nystrom coordinates phi"):
        index.refresh(G)
    _assert_same(before, _snapshot(index))
    index.check_invariants()


def test_refused_refresh_leaves_the_index_exactly_as_before():
    """For every argument of refresh, a refused value raises a ValueError naming it and leaves every
    array (tree, cache, map, W, W0) and counter exactly as before. Kills refresh__mutmut_42
    (depth=-1 checked only by Tree.rebuild, after tree.update moved the points)."""
    index, G = _index()
    index.step(G[:6] * 1.1)
    bad = [
        ("depth", dict(G=G[:3] * 1.5, ids=np.arange(3), depth=-1)),
        ("depth", dict(G=G[:3] * 1.5, ids=np.arange(3), depth=1.5)),
        ("ids", dict(G=G[:3] * 1.5, ids=[0, 0, 1])),
        ("ids", dict(G=G[:3] * 1.5, ids=[0, 1, 99])),
        ("G", dict(G=G[:2] * 1.5, ids=np.arange(3))),
        ("G", dict(G=np.full((3, 4), ABOVE), ids=np.arange(3))),
        ("landmarks", dict(G=G[:3] * 1.5, ids=np.arange(3), landmarks=np.arange(5))),
        ("landmarks", dict(G=G[:3] * 1.5, ids=np.arange(3), landmarks=[0, 1, 2, 3, 4, 4])),
    ]
    for name, kwargs in bad:
        before = _snapshot(index)
        with pytest.raises(ValueError) as err:
            index.refresh(**kwargs)
        assert str(err.value).startswith(name + ":"), (name, str(err.value))
        _assert_same(before, _snapshot(index))
    index.check_invariants()


def test_dynamic_counters_after_several_steps_and_refreshes():
    """steps_since_refresh counts every step (3 steps -> 3), a refresh resets it to 0 and adds one
    to n_refreshes, and counting resumes. Kills step__mutmut_12 (steps_since_refresh = 1)."""
    index, G = _index()
    assert (index.steps_since_refresh, index.n_refreshes) == (0, 0)
    for t in range(1, 4):
        index.step(G[:6] * (1 + 0.1 * t))
        assert index.steps_since_refresh == t
    index.refresh(G * 1.2)
    assert (index.steps_since_refresh, index.n_refreshes) == (0, 1)
    index.step(G[:6])
    index.step(G[:6])
    assert (index.steps_since_refresh, index.n_refreshes) == (2, 1)
    index.refresh(G[:3], np.arange(3))
    assert (index.steps_since_refresh, index.n_refreshes) == (0, 2)


@pytest.mark.parametrize(
    "kernel",
    [linear(0.0), linear(1.0), linear(0.7), linear(3.0), rbf(0.3), rbf(2.0),
     polynomial(1, 0.0), polynomial(2, 1.0), polynomial(3, 0.5), "linear", "rbf", "polynomial"],
)
def test_kernel_diag_is_the_kernel_matrix_diagonal(kernel):
    """kern.diag(A) equals the diagonal of kern(A, A) for every kernel and parameter (including
    const != 0, 2 for linear). Kills LinearKernel.diag__mutmut_10 (|a|^2 + 2 const)."""
    kern = make_kernel(kernel)
    A = np.random.default_rng(2).standard_normal((5, 3))
    np.testing.assert_allclose(kern.diag(A), np.diag(kern(A, A)), rtol=1e-13, atol=0)


def test_zero_kernel_mass_gives_zero_leverage_scores():
    """All-zero embeddings with the linear kernel (const 0) and the default ridge: no kernel mass,
    ridge_leverage_scores returns zeros (documented case), and select_landmarks(method='rls') still
    returns m distinct ids. Kills ridge_leverage_scores__mutmut_89 (lam <= 0 -> lam < 0: a
    Cholesky failure)."""
    Z = np.zeros((5, 2))
    np.testing.assert_array_equal(ridge_leverage_scores(Z, rng=np.random.default_rng(0)), np.zeros(5))
    np.testing.assert_array_equal(ridge_leverage_scores(Z, linear(0.0), rng=np.random.default_rng(0)), np.zeros(5))
    ids = select_landmarks(Z, 3, method="rls", rng=np.random.default_rng(0))
    assert ids.shape == (3,) and np.unique(ids).size == 3


def test_reconstruction_tolerance_is_its_documented_formula_on_both_branches():
    """reconstruction_tolerance() equals sqrt(m - r) max(cutoff, 16 m eps) + 16 m^1.5 eps sqrt(cond)
    bit for bit, with m > rank, for a cutoff below 16 m eps (the floor) and above it (the cutoff).
    Kills reconstruction_tolerance__mutmut_24 (17 m eps)."""
    G = np.random.default_rng(1).standard_normal((30, 3))
    eps = float(np.finfo(np.float64).eps)
    for cutoff in (1e-15, 1e-14, 1e-10):  # 16 m eps = 2.1e-14 for m = 6
        nmap = NystromMap("linear", cutoff=cutoff).fit(G, np.arange(6))
        m, r = nmap.m, int(nmap.rank)
        assert r == 3 < m
        cond = float(nmap.eigenvalues[0] / nmap.eigenvalues[r - 1])
        want = float(np.sqrt(m - r)) * max(cutoff, 16 * m * eps) + 16 * m**1.5 * eps * float(np.sqrt(cond))
        assert nmap.reconstruction_tolerance() == want


def test_check_invariants_accepts_an_eigenvalue_exactly_at_the_cutoff():
    """A map fit makes with an eigenvalue exactly cutoff * s[0] (dropped), or a zero eigenvalue with
    cutoff 0 (dropped), passes check_invariants. Kills check_invariants__mutmut_166 (s >= ...)."""
    a = NystromMap("linear", cutoff=0.25).fit([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.arange(2))
    np.testing.assert_array_equal(a.eigenvalues, [4.0, 1.0])
    assert a.rank == 1
    a.check_invariants()
    b = NystromMap("linear", cutoff=0.0).fit([[2.0, 0.0], [0.0, 0.0], [1.0, 1.0]], np.arange(2))
    np.testing.assert_array_equal(b.eigenvalues, [4.0, 0.0])
    assert b.rank == 1
    b.check_invariants()


@pytest.mark.parametrize("entry", ["sampled_log_partition", "sampled_softmax_loss"])
def test_log_q_slack_boundary_at_every_entry_point(entry):
    """log_q with maximum exactly 1e-8 (the documented slack) is accepted; the next float above is
    refused by a message naming log_q. Kills _check_draws__mutmut_21 (top >= slack)."""
    a = np.array([[0.5, 0.25]])

    def call(lq):
        lq = np.array([[lq, -1.0]])
        if entry == "sampled_log_partition":
            return sampled_log_partition(a, lq)
        return sampled_softmax_loss(np.array([1.0]), a, lq)

    call(1e-8)
    with pytest.raises(ValueError, match=r"^log_q: expected log-probabilities <= 0"):
        call(float(np.nextafter(1e-8, 1.0)))


def test_i3_error_in_a_padded_block_names_the_moved_target():
    """topk (two queries, so leaves of different sizes share a padded block) on a tree whose target
    y was moved outside its node's ball (radius left stale) either returns (y's leaf never
    evaluated) or raises the I3 error naming y with a finite positive excess, never a padding entry.
    Seeds 1-3, every 4th target, k in (5, 20). Kills _leaf_violation__mutmut_17 (padding excess
    +inf: another target with excess inf, or an IndexError)."""
    Q = np.array([[1.0, -1.0, 1.0], [0.5, 0.2, -0.1]])
    raised = 0
    for seed in (1, 2, 3):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(30, 60))
        P = rng.standard_normal((n, 3))
        for y in range(0, n, 4):
            for k in (5, 20):
                tree = Tree.build(P, branching=3, leaf_size=6)
                pos = int(np.flatnonzero(tree.order == y)[0])
                tree.points[y] = [40.0, -40.0, 40.0]
                tree.points_dfs[pos] = [40.0, -40.0, 40.0]
                try:
                    topk(tree, Q, k)
                except ValueError as err:
                    msg = str(err)
                    raised += 1
                    assert f"invariant I3 violated (topk): target {y} has" in msg, (seed, y, k, msg)
                    assert "= inf" not in msg, msg
    assert raised >= 20  # the corruption is seen in most cases


def test_tree_check_invariants_names_a_bad_cache_row_past_the_first_block():
    """check_invariants names the right points_dfs row (and its target) for a differing row past
    the first block of 32768 rows. Kills Tree.check_invariants__mutmut_429 (row - lo)."""
    tree = Tree.build(np.random.default_rng(0).standard_normal((33000, 2)), seed=0)
    tree.points_dfs[32773] += 1e-3
    target = int(tree.order[32773])
    with pytest.raises(Exception, match=rf"cache: points_dfs row 32773 differs from points\[order\[32773\]\] \(target {target}\)"):
        tree.check_invariants()


@pytest.mark.parametrize("kernel", [linear(), rbf(0.7), polynomial(2, 1.0)], ids=["linear", "rbf", "poly"])
def test_kmeanspp_with_copies_follows_its_documented_draws(kernel):
    """k-means++ on rows with copies, m above the number of distinct rows, against a replay of the
    documented draws from a clone of the generator: the first uniform, then D^2 with a copy of a
    chosen row at distance 0 exactly, then, once every unchosen row equals a chosen one, uniform
    among the unchosen. Before the copies were set to 0 exactly, the kernel's einsum diagonal and
    its matmul column left rounding residues (4.4e-16 for the linear kernel) on 36 of 126 copies
    here, so the last draws followed rounding noise, not the uniform rule (16-19 of 40 seeds)."""
    for seed in range(40):
        r = np.random.default_rng(100)
        D = r.standard_normal((5, 3))
        G = D[r.integers(0, 5, 24)]
        G[:5] = D
        m = 9
        got = select_landmarks(G, m, method="kmeans++", rng=np.random.default_rng(seed), kernel=kernel)
        rng = np.random.default_rng(seed)
        N = G.shape[0]
        ids = [int(rng.integers(N))]
        for _ in range(1, m):
            chosen = np.zeros(N, bool)
            chosen[ids] = True
            d2 = np.array([0.0 if any((G[i] == G[c]).all() for c in ids) else
                           min(float(kernel(G[i:i + 1], G[i:i + 1])[0, 0] + kernel(G[c:c + 1], G[c:c + 1])[0, 0]
                                     - 2.0 * kernel(G[i:i + 1], G[c:c + 1])[0, 0]) for c in ids)
                           for i in range(N)])
            w = np.where(chosen, 0.0, np.maximum(d2, 0.0))
            if not w.sum() > 0:
                w = (~chosen).astype(float)
            ids.append(int(rng.choice(N, p=w / w.sum())))
        # the D^2 phase draws among the 5 distinct rows; the uniform phase must match the replay exactly
        assert sorted({tuple(G[i]) for i in got[:5]}) == sorted({tuple(G[i]) for i in ids[:5]})
        np.testing.assert_array_equal(got[5:], ids[5:])
