"""Teeth for three gaps of tests/mutation/survivors.md (helper M3), each pinned by theme:

- k-means++ seeding picks every center among its own segment's points, on both sides of the
  segment, whatever the rounding of the cumulative weights (``tree._kmeans_labels``);
- ``conformance._data.distinct_rows`` gives a 1-D inverse on every NumPy the project declares,
  including NumPy 2.0.0, whose ``np.unique(axis=0, return_inverse=True)`` returns it as (n, 1);
- an I3 violation of any size beyond the rounding margin raises in top-k (seeding beam and sweep)
  and in the rejection sampler, and one inside the margin does not; top-k's dense fallback, which
  uses no bound, checks none and returns the brute-force answer.

Deterministic (fixed seeds, stand-in generators), no probabilistic assertion, no timing.
"""

from __future__ import annotations


import numpy as np
import pytest

import reference.tree as tree_module
from reference import sampling
from reference._fastpath import ROUNDING
from reference.conformance import _data
from reference.tree import Tree

# ------------------------------------------------------------- k-means++: a center from its own segment


class _Draws:
    """A ``Generator`` stand-in for ``_kmeans_labels``: its first ``random`` call (the shuffle keys)
    gives zeros (identity order), its second (the first center) ``first``, every later one (the
    k-means++ draws) ``draw``."""

    def __init__(self, first: float, draw: float) -> None:
        self.calls, self.first, self.draw = 0, first, draw

    def random(self, size: int) -> np.ndarray:
        self.calls += 1
        return np.full(size, 0.0 if self.calls == 1 else self.first if self.calls == 2 else self.draw)


@pytest.mark.parametrize("draw", [0.0, float(np.nextafter(1.0, 0.0))])
def test_kmeans_seeding_picks_a_center_of_its_own_segment_at_both_rounding_edges(monkeypatch, draw) -> None:
    """Pins the clip of the k-means++ pick to its segment, below and above.

    Two segments of three points, b = 2, first center the last point of each segment. The draw u =
    (cs[s] - w[s]) + r of segment g lands, in exact arithmetic, inside [cs[s] - w[s], cs[s_end]);
    in float64 the base cs[s] - w[s] of segment 1 rounds below cs[s - 1] (checked here: with r = 0
    the unclipped pick falls in segment 0), and with r = 1 - 2^-53 the pick of segment 0 rounds past
    its end (also checked). Either way the second center must be a point of the segment's own node:
    the clip to [s_start, s_start + s_len - 1] is the guard, and this test fails without either side.
    """
    points = np.random.default_rng(0).standard_normal((6, 2))
    lens = np.array([3, 3], dtype=np.int64)
    starts = np.cumsum(lens) - lens
    work = np.arange(6, dtype=np.int64)
    group = np.repeat(np.arange(2, dtype=np.int64), lens)
    # The k-means++ weights of the one draw, as _kmeans_labels computes them, and where the
    # unclipped search lands: outside its segment, else this test would have no teeth.
    d2 = ((points - np.repeat(points[starts + lens - 1], lens, axis=0)) ** 2).sum(axis=1)
    w = d2 / np.add.reduceat(d2, starts)[group]
    cs = np.cumsum(w)
    raw = np.searchsorted(cs, cs[starts] - w[starts] + draw, side="right")
    assert np.any((raw < starts) | (raw > starts + lens - 1))
    seen = []
    real = tree_module._nearest_centers

    def spy(p, rows, s, ln, centers):
        seen.append(centers.copy())
        return real(p, rows, s, ln, centers)

    monkeypatch.setattr(tree_module, "_nearest_centers", spy)
    labels = tree_module._kmeans_labels(points, work, group, starts, lens, 2, 0, _Draws(0.99, draw))
    (centers,) = seen  # iters = 0: the seeding centers are the final ones
    for g in range(2):
        own = points[starts[g]:starts[g] + lens[g]]
        for j in range(2):
            assert (own == centers[g, j]).all(axis=1).any(), (g, j)
    assert labels.shape == (6,) and labels.min() >= 0 and labels.max() <= 1


# ------------------------------------------------------------- distinct_rows: a 1-D inverse on every NumPy


@pytest.mark.parametrize("numpy_2_0_0_shape", [False, True])
def test_distinct_rows_inverse_is_one_dimensional_on_every_declared_numpy(monkeypatch, numpy_2_0_0_shape) -> None:
    """Pins distinct_rows' inverse as shape (n,) whatever shape ``np.unique`` gives it: NumPy 2.0.0
    (inside the declared numpy>=1.25.2) returns ``return_inverse`` of ``axis=0`` as (n, 1), other
    versions as (n,). Fed that shape through a stand-in ``np.unique``, the inverse must stay 1-D and
    ``logits`` must stay (B, N), with exactly equal logits for the duplicate rows."""
    real = np.unique

    def unique_2_0_0(ar, *args, **kwargs):
        out = real(ar, *args, **kwargs)
        if kwargs.get("axis") == 0 and kwargs.get("return_inverse"):
            out = (*out[:-1], out[-1].reshape(-1, 1))
        return out

    if numpy_2_0_0_shape:
        monkeypatch.setattr(_data.np, "unique", unique_2_0_0)
    P = np.array([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]])
    uniq, inv = _data.distinct_rows(P)
    if numpy_2_0_0_shape:
        assert np.unique(P, axis=0, return_inverse=True)[1].shape == (3, 1)
    assert inv.shape == (3,) and inv.tolist() == [1, 1, 0]
    np.testing.assert_array_equal(uniq[inv], P)
    Q = np.array([[1.0, -1.0], [0.5, 2.0]])
    a = _data.logits(P, Q)
    assert a.shape == (2, 3)
    np.testing.assert_array_equal(a, Q @ P.T)


# ------------------------------------------------------------- top-k: I3 of any size beyond the margin raises


def _i3_tree() -> tuple[Tree, np.ndarray, int]:
    """300 targets in 3-D (141 leaves); the query points along the longest target y, its top-1."""
    P = np.random.default_rng(5).standard_normal((300, 3))
    t = Tree.build(P, branching=3, leaf_size=4, seed=0)
    y = int(np.argmax(np.linalg.norm(P, axis=1)))
    return t, 5.0 * P[y] / np.linalg.norm(P[y]), y


def _beam_leaves(monkeypatch, t: Tree, q: np.ndarray) -> set[int]:
    """The leaves top-k's seeding beam scores for ``q`` (spied on ``_leaf_logits``, whether or not
    top-k then raises)."""
    seen = []
    real = sampling._leaf_logits

    def spy(tree, Q, qq, v, *args):
        seen.append(v.copy())
        return real(tree, Q, qq, v, *args)

    monkeypatch.setattr(sampling, "_leaf_logits", spy)
    try:
        sampling.topk(t, q, 1)
    except ValueError:
        pass
    monkeypatch.undo()
    (v,) = seen
    return {int(x) for x in v}


def _lower(t: Tree, q: np.ndarray, leaf: int, over: float) -> tuple[int, float]:
    """Move ``leaf``'s representative against ``q`` (cache ``rep_norm`` kept consistent) so that its
    best target y has a_y - ub_leaf = ``over``, ub_leaf = <q, r_v> + ||q|| rho_v; returns y and the
    leaf's rounding margin ROUNDING (1 + ||q|| (||r_v|| + rho_v)) after the move."""
    pos = np.arange(t.start[leaf], t.stop[leaf])
    a = t.points_dfs[pos] @ q
    j = int(np.argmax(a))
    qn = float(np.linalg.norm(q))
    ub = float(t.rep[leaf] @ q) + qn * t.radius[leaf]
    t.rep[leaf] -= (ub - a[j] + over) / qn * (q / qn)
    t.rep_norm[leaf] = np.linalg.norm(t.rep[leaf])
    got = a[j] - (float(t.rep[leaf] @ q) + qn * t.radius[leaf])
    assert abs(got - over) <= 1e-12 * (1.0 + abs(over))
    return int(t.order[pos[j]]), ROUNDING * (1.0 + qn * (t.rep_norm[leaf] + t.radius[leaf]))


@pytest.fixture(scope="module")
def dense_case() -> tuple[Tree, np.ndarray]:
    """9000 targets in 4-D (at least 2^13: the dense fallback is on) and a query of norm ~0.02 that
    prunes nothing, so top-k finishes it densely (checked by the test: N + a few target logits)."""
    rng = np.random.default_rng(0)
    t = Tree.build(rng.standard_normal((9000, 4)), seed=0, branching=2)
    return t, rng.standard_normal(4) * 0.01


def _case(monkeypatch, phase: str, dense_case) -> tuple[Tree, np.ndarray, int, int]:
    """(tree, query, leaf to corrupt, k) for a phase of top-k: ``beam`` (the top-1's leaf, k = 1),
    ``sweep`` (a leaf the beam does not score, k = n_live) and ``dense`` (a leaf the beam does not
    score, on a query the dense fallback finishes, k = 1)."""
    if phase == "dense":
        t0, q = dense_case
        t = Tree.build(t0.points, seed=0, branching=2)
        _, _, c = sampling.topk(t, q, 1, return_counters=True)
        assert t.n_live <= c["target_logits"] < t.n_live + 100   # the dense fallback scored every target
        beam = _beam_leaves(monkeypatch, t, q)
        leaf = int(next(v for v in np.flatnonzero(t.is_leaf & (t.count > 0)) if v not in beam))
        return t, q, leaf, 1
    t, q, top = _i3_tree()
    return (t, q, int(t.leaf_of[top]), 1) if phase == "beam" else (t, q, int(t.leaf_of[0]), t.n_live)


@pytest.mark.parametrize("over", [1e-3, 0.5, 2.0])
@pytest.mark.parametrize("phase", ["beam", "sweep"])
def test_topk_raises_on_an_i3_excess_of_any_size_beyond_the_margin(monkeypatch, dense_case, phase: str,
                                                                   over: float) -> None:
    """Pins top-k's I3 threshold, the rounding margin and nothing more, on its two bounded paths.

    ``beam``: the leaf of the query's top-1 target, which the seeding beam scores (checked), gets a
    representative that leaves that target ``over`` nats above the leaf's bound; with k = 1 its
    logit seeds tau above the leaf's bound + margin, so the sweep prunes that leaf: only the beam can
    see the violation, and a threshold looser than the margin (e.g. 1 nat) returns a wrong top-1
    silently. ``sweep``: a leaf the beam does not score gets the same corruption, k = n_live (nothing
    pruned): the sweep's own check must report it. Each names the target and its leaf."""
    t, q, leaf, k = _case(monkeypatch, phase, dense_case)
    y, margin = _lower(t, q, leaf, over)
    assert over > 2.0 * margin
    assert (leaf in _beam_leaves(monkeypatch, t, q)) == (phase == "beam")
    with pytest.raises(ValueError, match=rf"^tree: invariant I3 violated \(topk\): target {y} has "
                                         rf"a_y - <q, r_v> - eps_v = \S+ > 0 for node {leaf}, "):
        sampling.topk(t, q, k)


@pytest.mark.parametrize("over", [1e-3, 0.5, 2.0])
def test_topk_dense_fallback_uses_no_bound(monkeypatch, dense_case, over: float) -> None:
    """The dense fallback scores every target and prunes with no bound, so it checks no I3 and its
    answer does not rest on one (topk's Raises: only the targets of the leaves it scores are
    checked): with a leaf the beam does not score corrupted by ``over`` nats, a query finished
    densely returns the brute-force top-1, with no error. A fallback that pruned with the corrupted
    bound, or raised, fails here."""
    t, q, leaf, k = _case(monkeypatch, "dense", dense_case)
    _lower(t, q, leaf, over)
    assert leaf not in _beam_leaves(monkeypatch, t, q)
    ids, a = sampling.topk(t, q, k)
    brute = t.points @ q
    np.testing.assert_array_equal(ids, np.lexsort((np.arange(t.n_live), -brute))[:k])


@pytest.mark.parametrize("phase", ["beam", "sweep", "dense"])
def test_topk_accepts_an_i3_excess_inside_the_margin(monkeypatch, dense_case, phase: str) -> None:
    """The other side of the threshold: a target above its leaf's bound by half the rounding margin
    is rounding, not a violation; top-k returns the brute-force result, on each path."""
    t, q, leaf, k = _case(monkeypatch, phase, dense_case)
    _, margin = _lower(t, q, leaf, 0.0)
    _lower(t, q, leaf, 0.5 * margin)
    assert (leaf in _beam_leaves(monkeypatch, t, q)) == (phase == "beam")
    ids, a = sampling.topk(t, q, k)
    brute = t.points @ q
    np.testing.assert_array_equal(ids, np.lexsort((np.arange(t.n_live), -brute))[:k])


def _root_only(qnorm: float, over: float | None) -> tuple[Tree, np.ndarray, float, float]:
    """The 300-target tree and a query of norm ``qnorm`` (0.01 or less), whose envelope is the root
    alone (checked): every proposal of rejection_sample is a root proposal. The root's
    representative is moved against q so that the target of least logit is above the root's bound
    by ``over`` nats, or (``over=None``) by a quarter of the root's rounding margin: every target is
    then above the bound. Returns the tree, the query, the least and the largest excess."""
    t, _, _ = _i3_tree()
    q = qnorm * np.array([0.6, -0.8, 0.0])
    a = t.points_dfs @ q
    ub = float(t.rep[0] @ q) + qnorm * t.radius[0]
    if over is None:
        over = 0.25 * ROUNDING * (1.0 + qnorm * (t.rep_norm[0] + t.radius[0]))
    t.rep[0] -= (ub - a.min() + over) / qnorm * (q / qnorm)
    t.rep_norm[0] = np.linalg.norm(t.rep[0])
    cut = sampling.rejection_envelope(t, q, 20)
    assert cut.node.tolist() == [0] and cut.target.tolist() == [-1]
    ub = float(t.rep[0] @ q) + qnorm * t.radius[0]
    return t, q, float(a.min() - ub), float(a.max() - ub)


@pytest.mark.parametrize("over", [1e-3, 0.5, 2.0])
def test_rejection_sample_raises_on_an_i3_excess_of_any_size_beyond_the_margin(over: float) -> None:
    """Pins the sampler's I3 threshold, the rounding margin and nothing more: with a root-only
    envelope and every target above the root's bound by ``over`` to ``over`` + 0.06 nats (below 1
    nat for the two smaller ones), the first proposal has an acceptance probability above 1, and
    rejection_sample must raise, naming the root."""
    t, q, least, worst = _root_only(0.01, over)
    assert least > 0.0 and worst <= over + 0.06
    with pytest.raises(ValueError, match=r"^tree: invariant I3 violated \(rejection_sample\): target \d+ has "
                                         r"a_y - <q, r_v> - eps_v = \S+ > 0 for node 0, "):
        sampling.rejection_sample(t, q, 20, np.random.default_rng(0))


def test_rejection_sample_accepts_an_i3_excess_inside_the_margin() -> None:
    """The other side: with a query of norm 1e-11, every target is above the root's bound by a
    quarter of its rounding margin (1e-9 (1 + ||q|| (||r|| + rho))) to less than the margin: that is
    rounding, and rejection_sample returns 20 live ids (a threshold tighter than the margin raises
    at the first proposal)."""
    t, q, least, worst = _root_only(1e-11, None)
    assert 0.0 < least <= worst < ROUNDING
    ids, counters = sampling.rejection_sample(t, q, 20, np.random.default_rng(0))
    assert ids.shape == (20,) and ids.min() >= 0 and ids.max() < t.n_live and counters["proposals"] >= 20
