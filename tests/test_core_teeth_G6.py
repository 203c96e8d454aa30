"""Teeth for gaps of the core mutation sample (helper J5's `not yet killed` verdicts), by theme.

Each test says in its docstring what it pins; each was seen failing with the named mutant applied
by hand (diffs in /work/mut/verdicts_J5.md, tests/mutation/survivors.md) and passing once reverted.
The MAX_ABS_COORD bound of NystromMap.project (project__mutmut_11) is already pinned, on both sides
and by name, by tests/test_core_teeth_G5.py::test_max_abs_coord_limit_at_every_embedding_entry_point
(seen failing with that mutant), so it is not repeated here.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from reference._fastpath import ROUNDING
from reference.sampling import rejection_sample
from reference.softmax import full_softmax_loss, sampled_log_partition, sampled_softmax_loss, topk_ids
from reference.tree import Tree


def _id_entry_points(N: int):
    """(argument name, call(ids)) for every id argument of softmax.py, scores of N columns."""
    s = np.arange(2.0 * N).reshape(2, N)
    return [
        ("exclude", lambda ids: topk_ids(s, 1, exclude=ids)),
        ("pos", lambda ids: full_softmax_loss(s, ids)),
    ]


@pytest.mark.parametrize("N", [2, 4])
def test_id_arguments_range_at_both_ends(N):
    """Every id argument of softmax.py (topk_ids' exclude, full_softmax_loss's pos) refuses an id
    N with the whole message `<name>: expected ids < N, got N`, accepts N - 1 (and 0), and refuses
    -1 with `<name>: expected ids >= 0, got -1`. Kills topk_ids__mutmut_34 (upper=None: id N
    reaches the indexing and raises IndexError instead)."""
    for name, call in _id_entry_points(N):
        with pytest.raises(ValueError, match=rf"^{name}: expected ids < {N}, got {N}$"):
            call([0, N])
        with pytest.raises(ValueError, match=rf"^{name}: expected ids >= 0, got -1$"):
            call([-1, 0])
        call([N - 1, 0])  # both ends of the valid range accepted
    # exclude actually excludes the largest id of row 0 at the upper end N - 1
    s = np.arange(8.0).reshape(2, 4)
    np.testing.assert_array_equal(topk_ids(s, 1, exclude=[3, 0]), [[2], [3]])


def _msg(text: str) -> str:
    return "^" + re.escape(text) + "$"


def test_sampled_loss_and_partition_messages_whole():
    """Every ValueError of sampled_softmax_loss and sampled_log_partition (including those of
    their shared _check_draws) matched whole, naming the argument: a_neg for the loss, a for the
    partition. Kills sampled_softmax_loss__mutmut_34 (the name passed to _check_draws becomes
    'XXa_negXX', which reaches the log_q shape message)."""
    z = np.zeros
    cases = [
        (lambda: sampled_softmax_loss(z(2), z((2, 3)), z((2, 4))),
         "log_q: expected the shape of a_neg (2, 3), got (2, 4)"),
        (lambda: sampled_softmax_loss(z(2), z((2, 3)), np.full((2, 3), 0.5)),
         "log_q: expected log-probabilities <= 0, got a maximum of 0.5"),
        (lambda: sampled_softmax_loss(z(2), z((3, 3))),
         "a_neg: expected shape (2, n) to match a_pos (2,), got (3, 3)"),
        (lambda: sampled_log_partition(z((2, 3)), z((2, 4))),
         "log_q: expected the shape of a (2, 3), got (2, 4)"),
        (lambda: sampled_log_partition(z(3), z(4)),
         "log_q: expected the shape of a (3,), got (4,)"),
        (lambda: sampled_log_partition(z((1, 2, 3)), z((1, 2, 3))),
         "a: expected a 2-D array (B, n) or 1-D (n,), got shape (1, 2, 3)"),
        (lambda: sampled_log_partition(z(3), np.full(3, 0.5)),
         "log_q: expected log-probabilities <= 0, got a maximum of 0.5"),
    ]
    for call, text in cases:
        with pytest.raises(ValueError, match=_msg(text)):
            call()


def test_rejection_sample_round_sizing_golden():
    """The round sizing of rejection_sample (m = ceil(need / rate * 1.2) + 2 proposals per query
    and round, capped at 2**22 // B + 4 n, with the rate guess exp(log_z_hat - hi) refined after
    each round; code comments in reference/sampling.py._rejection_block) is not stated as a formula
    in a docstring or proofs/README.md, so this pins a GOLDEN taken from the current code: a case
    where the rate guess is low (a round's m exceeds 4 n), the seeded draws and the
    proposals / rounds / accepted counters, for n = 5 and n = 1. Kills
    _rejection_block__mutmut_164 (cap 4 n: other draws, 133 proposals in 6 rounds for n = 5)."""
    rng = np.random.default_rng(3)
    t = Tree.build(rng.standard_normal((2000, 8)))
    Q = rng.standard_normal((4, 8)) * 2
    got = {}
    for n in (5, 1):
        ids, c = rejection_sample(t, Q, n, np.random.default_rng(7))
        got[n] = (ids.tolist(), c["proposals"], c["rounds"], c["accepted"])
    assert got == GOLDEN, got


# (ids, proposals, rounds, accepted) by n, from the current code (NumPy 2.4.6, Python 3.11.7;
# J5 saw the same n = 5 ids and counters on NumPy 1.25.2).
GOLDEN: dict = {
    5: ([[313, 695, 1002, 590, 389], [544, 1013, 1013, 1013, 1013], [678, 506, 115, 115, 115],
         [1013, 1013, 1175, 1175, 1175]], 125, 5, 28),
    1: ([[389], [544], [115], [1175]], 162, 8, 9),
}


def _i3_edge_tree(a_y: float) -> Tree:
    """One live target 7 = [a_y, 0, 0] under a root edited (public attributes) to rep 0, radius 0,
    so that for q = [1, 0, 0] the I3 excess is exactly a_y - ROUNDING * (1 + 0)."""
    P = np.random.default_rng(0).standard_normal((200, 3))
    P[7] = [a_y, 0.0, 0.0]
    t = Tree.build(P)
    t.delete(np.setdiff1d(np.arange(200), [7]))
    t.rep[0] = 0.0
    t.radius[0] = 0.0
    t.rep_norm[0] = 0.0
    return t


@pytest.mark.parametrize("tol", [None, 1.0])
def test_rejection_sample_i3_slack_boundary(tol):
    """rejection_sample's I3 check at its rounding slack: excess exactly 0 (a_y = ROUNDING with
    scale 0) is accepted and draws the only target; the next float above (excess > 0) is refused
    by the `tree: invariant I3 violated (rejection_sample)` ValueError naming the node. Kills
    _rejection_block__mutmut_253 (excess >= 0 refuses the boundary)."""
    ids, _ = rejection_sample(_i3_edge_tree(ROUNDING), [[1.0, 0.0, 0.0]], 3, np.random.default_rng(1), tol)
    np.testing.assert_array_equal(ids, [[7, 7, 7]])
    above = float(np.nextafter(ROUNDING, np.inf))
    with pytest.raises(ValueError, match=r"^tree: invariant I3 violated \(rejection_sample\): target 7 .* > 0 for node 0,"):
        rejection_sample(_i3_edge_tree(above), [[1.0, 0.0, 0.0]], 3, np.random.default_rng(1), tol)
