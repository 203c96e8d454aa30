"""Teeth for the gaps a fresh mutation sample found (seed 2354422307, tests/mutation/survivors.md).

Each test pins a family of behaviour, not one mutant: documented defaults equal to their explicit
values; ``check_invariants`` passing on every object the constructor can make; error messages that
name the caller's argument; arguments documented as "passed to" another function reaching it; the
reprs in both states; the I3 margin (10) of the plain reference at its boundary; and the rejection
sampler when every query leaves for the dense fallback before any cut entry is final.
"""

from __future__ import annotations

import numpy as np
import pytest

import reference.nystrom as nystrom_mod
from reference import plain, sampling
from reference.bounds import ROUNDING
from reference.dynamic import DynamicIndex
from reference.encoder import DualEncoder, EncoderConfig
from reference.nystrom import NystromMap, ridge_leverage_scores, select_landmarks
from reference.tree import Tree

TREE_FIELDS = ("rep", "radius", "count", "order", "start", "stop", "parent", "child_ptr", "child_idx", "is_leaf")


def _same_tree(a: Tree, b: Tree) -> bool:
    return all(getattr(a, f).shape == getattr(b, f).shape and np.array_equal(getattr(a, f), getattr(b, f))
               for f in TREE_FIELDS)


# --------------------------------------------------------------------------- documented defaults

def test_dynamic_index_defaults_are_the_documented_values() -> None:
    """``DynamicIndex(cache, landmarks)`` is the index built with every documented default spelled out."""
    rng = np.random.default_rng(11)
    G = rng.standard_normal((33, 6))   # 33 targets: one more than the default leaf size
    L = np.arange(0, 33, 3)
    a = DynamicIndex(G, L)
    b = DynamicIndex(G, L, kernel="linear", cutoff=1e-10, ridge=0.0, beta=1.0, branching=8, leaf_size=32,
                     rebuild_depth=1, seed=0)
    assert _same_tree(a.tree, b.tree)
    assert (a.beta, a.rebuild_depth) == (b.beta, b.rebuild_depth) == (1.0, 1)
    assert np.array_equal(a.W0, b.W0) and np.array_equal(a.W, b.W)
    assert repr(a.nmap) == repr(b.nmap)
    # The comparison has teeth on this data: another leaf size, seed or branching builds another tree.
    for other in (dict(leaf_size=33), dict(seed=1), dict(branching=7)):
        assert not _same_tree(a.tree, DynamicIndex(G, L, **other).tree), other


# --------------------------------------------------------------------------- invariants at the edges

@pytest.mark.parametrize("kwargs", [dict(rebuild_depth=0), dict(branching=2, leaf_size=1), dict(beta=1e-300),
                                    dict(kernel="rbf", ridge=1e-3), dict(rebuild_depth=50)])
def test_check_invariants_passes_on_every_index_the_constructor_accepts(kwargs) -> None:
    """Each argument at the edge of its documented range gives an index whose check_invariants passes,
    also after a step and a refresh."""
    rng = np.random.default_rng(12)
    G = rng.standard_normal((120, 4))
    L = np.arange(0, 120, 12)
    index = DynamicIndex(G, L, **kwargs)
    index.check_invariants()
    index.step(G[L] * 1.01)
    index.check_invariants()
    index.refresh(G * 1.01)
    index.check_invariants()


# --------------------------------------------------------------------------- messages name the argument

def test_pilot_out_of_range_is_a_value_error_naming_pilot() -> None:
    """``pilot`` outside [1, N], in ridge_leverage_scores and through select_landmarks."""
    G = np.random.default_rng(13).standard_normal((20, 3))
    for pilot in (0, -1, 21):
        for fn in (lambda: ridge_leverage_scores(G, "rbf", pilot=pilot, rng=np.random.default_rng(0)),
                   lambda: select_landmarks(G, 4, method="rls", rng=np.random.default_rng(0), kernel="rbf", pilot=pilot)):
            with pytest.raises(ValueError, match=r"^pilot: expected an integer") as err:
                fn()
            assert str(pilot) in str(err.value)


def test_encoder_log_q_of_the_wrong_shape_names_log_q_and_the_shape_of_neg() -> None:
    """The encoder's error states its own argument and shape (B, n), not a name of an inner function."""
    model = DualEncoder(EncoderConfig(query_dim=3, target_dim=2, hidden=(4,), out_dim=3), seed=0)
    rng = np.random.default_rng(14)
    X, Y = rng.standard_normal((2, 3)), rng.standard_normal((9, 2))
    pos, neg = np.array([0, 1]), np.array([[2, 3, 4], [5, 6, 7]])
    for bad in (np.full((2, 4), -1.0), np.full((3, 3), -1.0), np.full(6, -1.0), -1.0):
        with pytest.raises(ValueError, match=r"^log_q: expected (shape \(2, 3\)|a 2-D array)") as err:
            model.sampled_softmax_loss(X, pos, Y, neg, log_q=bad)
        assert "a_neg" not in str(err.value)
    assert model.target_rows_encoded == 0   # nothing counted for a refused call


# --------------------------------------------------------------------------- "passed to" arguments arrive

def test_select_landmarks_passes_ridge_and_pilot_to_ridge_leverage_scores(monkeypatch) -> None:
    """select_landmarks(method="rls") documents ridge and pilot as passed to ridge_leverage_scores."""
    seen = []
    real = nystrom_mod.ridge_leverage_scores

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(nystrom_mod, "ridge_leverage_scores", spy)
    G = np.random.default_rng(15).standard_normal((50, 4))
    select_landmarks(G, 5, method="rls", rng=np.random.default_rng(0), kernel="rbf", ridge=0.25, pilot=17)
    select_landmarks(G, 5, method="rls", rng=np.random.default_rng(0), kernel="rbf")
    assert [(k["ridge"], k["pilot"]) for k in seen] == [(0.25, 17), (None, 50)]   # default pilot min(N, max(64, 2m))
    # and the ridge changes the scores, so passing it matters
    assert not np.array_equal(real(G, "rbf", ridge=0.25, rng=np.random.default_rng(0)),
                              real(G, "rbf", rng=np.random.default_rng(0)))


# --------------------------------------------------------------------------- reprs in both states

def test_reprs_say_the_state() -> None:
    nm = NystromMap("linear")
    assert repr(nm) == "NystromMap(kernel=LinearKernel(const=0.0), cutoff=1e-10, ridge=0.0; unfitted)"
    G = np.random.default_rng(16).standard_normal((30, 3))
    nm.fit(G, np.arange(5))
    assert repr(nm) == f"NystromMap(kernel=LinearKernel(const=0.0), cutoff=1e-10, ridge=0.0; m=5, rank={nm.rank})"
    assert repr(DynamicIndex(G, np.arange(5))).startswith("DynamicIndex(N=30, d=3, m=5, rank=3,")


# --------------------------------------------------------------------------- the margin (10) at its boundary

def _damaged_two_point_tree(x: float) -> Tree:
    """One leaf holding +x and -x (rep 0 exactly), with radius set to 0: I3 fails by exactly x."""
    tree = Tree.build(np.array([[x], [-x]]))
    assert tree.is_leaf[tree.root] and tree.rep[tree.root, 0] == 0.0 and tree.rep_norm[tree.root] == 0.0
    tree.radius[:] = 0.0
    return tree


def test_plain_i3_check_raises_only_beyond_the_rounding_margin() -> None:
    """(10): a logit above its node's bound <q, r_v> + eps_v by at most ROUNDING (1 + ||q|| (||r_v|| + rho_v))
    is rounding, accepted; beyond it, I3 is violated. With q = 1, r_v = 0, rho_v = 0 the margin is ROUNDING,
    and target 0 (logit x) exceeds the bound 0 by x."""
    q = np.array([1.0])
    at = _damaged_two_point_tree(ROUNDING)
    draws = plain.rejection_sample(at, q, 40, np.random.default_rng(0))
    assert set(draws.tolist()) == {0, 1}                     # target 0 was proposed, and accepted
    ids, _ = plain.topk(at, q, 1)
    assert ids.tolist() == [0]
    beyond = _damaged_two_point_tree(np.nextafter(ROUNDING, 1.0))
    with pytest.raises(ValueError, match="invariant I3 violated"):
        plain.rejection_sample(beyond, q, 40, np.random.default_rng(0))
    with pytest.raises(ValueError, match="invariant I3 violated"):
        plain.topk(beyond, q, 1)


# --------------------------------------------------------------------------- every query dense

def test_rejection_sample_when_every_query_leaves_for_the_dense_fallback() -> None:
    """A deep tree (branching 2) of more than DENSE_MIN targets: every query leaves for the dense fallback
    at its round, before any entry of its envelope is final; the sampler still draws (it raised KeyError)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((9000, 4))
    tree = Tree.build(X, seed=0, branching=2)
    Q = rng.standard_normal((3, 4)) * 3
    for tol in (None, 1e-6):
        y, counters = sampling.rejection_sample(tree, Q, 5, np.random.default_rng(1), tol=tol)
        assert y.shape == (3, 5) and y.dtype == np.int64 and ((0 <= y) & (y < 9000)).all()
        assert counters["target_logits"] == 3 * 9000 and counters["accepted"] == 15   # all dense: exact
    y1, _ = sampling.rejection_sample(tree, Q[:1], 5, np.random.default_rng(1))
    assert y1.shape == (1, 5)


def test_nystrom_coordinates_beyond_the_limit_name_the_callers_argument() -> None:
    """Embeddings within MAX_ABS_COORD whose Nystrom coordinates phi are not (a degree-2 polynomial kernel:
    entries 1e90 give k(l, y) ~ 1e180): the ValueError names the caller's argument, anchored (``G:``, ``cache:``)."""
    rng = np.random.default_rng(17)
    G = rng.standard_normal((40, 3))
    L = np.arange(0, 40, 4)
    index = DynamicIndex(G, L, kernel="polynomial")
    big = np.full((1, 3), 1e90)
    with pytest.raises(ValueError, match=r"^G: expected Nystrom coordinates .*MAX_ABS_COORD = 1e\+150"):
        index.add(big, current=False)
    with pytest.raises(ValueError, match=r"^cache: expected Nystrom coordinates .*MAX_ABS_COORD = 1e\+150"):
        DynamicIndex(np.vstack([G, big]), L, kernel="polynomial")
    index.check_invariants()   # the refused add left the index as it was
    assert index.n_live == 40


def test_topk_does_not_stop_at_a_bound_equal_to_the_kth_score() -> None:
    """(9) stops when ub_v < tau, strictly: a node whose bound (with its margin (10)) equals the k-th score
    exactly may hold a target tied with it and of smaller id, which the tie rule prefers.

    Two leaves each hold one target of logit 1 (q = 1); target 0's leaf is damaged so that its bound
    <q, r_v> + ||q|| rho_v + ROUNDING (1 + ||q|| (||r_v|| + rho_v)) is exactly 1.0, the k-th score once
    target 1 is taken. The plain reference must still open it and return target 0; the fast path must
    return the same (this case does not put its own rule, ub + margin >= tau, at equality)."""
    tree = Tree.build(np.array([[1.0], [1.0]]), branching=2, leaf_size=1)
    leaf0 = int(np.flatnonzero(tree.is_leaf & (tree.order[tree.start] == 0))[0])
    assert tree.stop[leaf0] - tree.start[leaf0] == 1

    def bound(x: float) -> float:   # the formula of (9) and (10) for q = 1, r_v = x, rho_v = 0
        return x + 1.0 * 0.0 + ROUNDING * (1.0 + 1.0 * (abs(x) + 0.0))

    x = (1.0 - ROUNDING) / (1.0 + ROUNDING)
    for _ in range(100):
        if bound(x) == 1.0:
            break
        x = float(np.nextafter(x, 2.0 if bound(x) < 1.0 else 0.0))
    assert bound(x) == 1.0
    tree.rep[leaf0, 0] = x
    tree.rep_norm[leaf0] = abs(x)
    q = np.array([1.0])
    trace: list = []
    ids, logits = plain.topk(tree, q, 1, trace=trace)
    assert ids.tolist() == [0] and logits.tolist() == [1.0]
    assert (trace[-1].node, trace[-1].ub, trace[-1].tau, trace[-1].action) == (leaf0, 1.0, 1.0, "leaf")
    ids, _ = sampling.topk(tree, q[None, :], 1)
    assert ids.tolist() == [[0]]
