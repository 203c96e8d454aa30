"""Teeth for four gaps of the last fresh mutation sample (tests/mutation/survivors.md).

Themes: a large batch (the tree's descent of more rows at one level than one memory block of
``_BLOCK // width`` rows, twice over); the invariant check of the root's first child (node 1's
range inside its parent's); the ``rounds`` counter when the rejection sampler's dense fallback
fires (its documented definition, summed over query blocks); and the length of the landmark list
that ``DynamicIndex.check_invariants`` quotes (the first 20 ids).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from reference import sampling
from reference._validation import InvariantError
from reference.dynamic import DynamicIndex
from reference.tree import _BLOCK, Tree


# ------------------------------------------------------------------ large batch: descent

def _nearest_child_path(tree: Tree, z: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """The documented rule, row by row: from the root, step to the child whose representative is
    nearest to z (squared Euclidean distance), until a leaf. Returns (node, children's distances)."""
    out = []
    v = 0
    while not tree.is_leaf[v]:
        ch = tree.child_idx[tree.child_ptr[v]:tree.child_ptr[v + 1]]
        d2 = ((tree.rep[ch] - z) ** 2).sum(axis=1)
        out.append((v, d2))
        v = int(ch[np.argmin(d2)])
    return out


def test_descent_of_many_rows_on_a_wide_tree_follows_the_nearest_child_rule() -> None:
    """3000 rows descend a tree of branching 64 (memory blocks of _BLOCK // 64 = 512 rows at the root):
    every row reaches the leaf of the per-row nearest-child descent, at each level a child whose
    squared distance is the siblings' minimum within 1e-12 relative (float rounding of the two sums)."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((5000, 6))
    tree = Tree.build(X, branching=64, leaf_size=8, seed=0)
    root_width = int(tree.child_ptr[1] - tree.child_ptr[0])
    P = 3000
    assert P > 2 * (_BLOCK // root_width) - 1   # more rows than two memory blocks at the root level
    Z = rng.standard_normal((P, 6))
    got = tree._descend(Z)
    assert got.shape == (P,) and tree.is_leaf[got].all()
    for i in range(P):
        v = int(got[i])
        path = [v]                               # the leaf's ancestry, root first
        while v != 0:
            v = int(tree.parent[v])
            path.append(v)
        path.reverse()
        rule = _nearest_child_path(tree, Z[i])
        assert len(path) == len(rule) + 1, i
        for (node, d2), taken in zip(rule, path[1:]):
            assert tree.parent[taken] == node
            ch = tree.child_idx[tree.child_ptr[node]:tree.child_ptr[node + 1]]
            assert d2[int(np.flatnonzero(ch == taken)[0])] <= d2.min() * (1 + 1e-12), (i, node)


# ------------------------------------------------------------------ invariant check: node 1

def test_check_invariants_sees_node_1_outside_its_parents_range() -> None:
    """Node 1 emptied by delete (count 0), then its empty range moved past the root's end: every other
    clause still holds (stop - start = count = 0), only "child range inside parent range" sees it,
    and the message names node 1 and its parent 0."""
    rng = np.random.default_rng(0)
    tree = Tree.build(rng.standard_normal((200, 3)), branching=4, leaf_size=8, seed=0)
    tree.delete(tree.order[tree.start[1]:tree.stop[1]])
    tree.check_invariants()
    assert tree.count[1] == 0
    bad = int(tree.n_live) + 5
    tree.start[1] = tree.stop[1] = bad
    msg = f"I2: node 1's range [{bad}, {bad}) is outside its parent 0's range"
    with pytest.raises(InvariantError, match=re.escape(msg)):
        tree.check_invariants()


# ------------------------------------------------------------------ counters: dense fallback

def test_rounds_counter_when_every_query_takes_the_dense_fallback() -> None:
    """All queries leave for the dense fallback after the envelope's refinement rounds. Documented:
    ``rounds`` = refinement plus proposal rounds, summed over query blocks; the fallback is one
    round (it fills every slot, so no proposal round follows). With blocks of 2 queries, 4 queries
    give twice (refinement rounds of the block + 1)."""
    rng = np.random.default_rng(0)
    tree = Tree.build(rng.standard_normal((10000, 32)), leaf_size=8, seed=0)
    Q = rng.standard_normal((4, 32))
    Q *= 1.7 / np.linalg.norm(Q, axis=1, keepdims=True)
    y, counters = sampling.rejection_sample(tree, Q, 5, np.random.default_rng(2), block=2)
    assert y.shape == (4, 5)
    assert counters["target_logits"] >= 4 * 10000 and counters["proposals"] == counters["accepted"] == 20
    expected = 0
    for lo in (0, 2):
        st = sampling._envelope_cut(tree, Q[lo:lo + 2], 5, None)
        assert st.dense.size == 2                # the precondition: both queries of the block go dense
        assert st.rounds >= 1
        expected += st.rounds + 1
    assert counters["rounds"] == expected


# ------------------------------------------------------------------ message: landmark list

def test_bad_landmarks_message_lists_exactly_the_first_20_ids() -> None:
    """An index with 30 landmarks, one of them made an id beyond the capacity: the message quotes the
    first 20 landmark ids, no more."""
    rng = np.random.default_rng(3)
    G = rng.standard_normal((120, 40))
    L = np.arange(0, 120, 4)                     # 30 landmarks
    idx = DynamicIndex(G, L, leaf_size=8)
    idx.check_invariants()
    idx.nmap.landmarks[-1] = 120                 # >= capacity
    with pytest.raises(InvariantError) as err:
        idx.check_invariants()
    msg = str(err.value)
    assert "landmarks: expected live target ids < 120" in msg
    quoted = msg[msg.index("got ") + 4:]
    assert quoted == str(idx.nmap.landmarks.tolist()[:20])
