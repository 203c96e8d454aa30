"""Tests of recall@k and the mean full-softmax loss."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import logsumexp

from reference.encoder import DualEncoder, EncoderConfig
from reference.metrics import evaluate, mean_softmax_loss, ranks, recall_at_k


@st.composite
def embeddings(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Small integer-valued embeddings, so that exact score ties are frequent."""
    B, N, d = draw(st.integers(1, 12)), draw(st.integers(1, 30)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    F = rng.integers(-2, 3, (B, d)).astype(np.float64)
    G = rng.integers(-2, 3, (N, d)).astype(np.float64)
    return F, G, rng.integers(0, N, B)


def _brute_force_topk(F: np.ndarray, G: np.ndarray, k: int) -> np.ndarray:
    """Top-k ids per query by a stable sort on -score (ties: smaller id first)."""
    S = F @ G.T
    return np.argsort(-S, axis=1, kind="stable")[:, :k]


@given(embeddings(), st.integers(1, 40), st.sampled_from([None, 1, 3]))
def test_recall_matches_brute_force_with_ties(emb, k: int, block_size) -> None:
    """recall@k == fraction of queries whose positive is in the stable-sorted top k (exact)."""
    F, G, pos = emb
    top = _brute_force_topk(F, G, k)
    want = float(np.mean([p in row for p, row in zip(pos, top)]))
    got = recall_at_k(F, G, pos, ks=(k,), block_size=block_size)
    assert got == {k: want}


@given(embeddings())
def test_ranks_are_positions_in_the_stable_order(emb) -> None:
    F, G, pos = emb
    order = np.argsort(-(F @ G.T), axis=1, kind="stable")
    want = np.array([int(np.flatnonzero(order[i] == pos[i])[0]) for i in range(len(pos))])
    np.testing.assert_array_equal(ranks(F, G, pos), want)
    np.testing.assert_array_equal(ranks(F, G, pos, block_size=1), want)


def test_recall_is_monotone_and_one_at_n() -> None:
    rng = np.random.default_rng(0)
    F, G = rng.standard_normal((50, 4)), rng.standard_normal((40, 4))
    pos = rng.integers(0, 40, 50)
    r = recall_at_k(F, G, pos, ks=(1, 5, 10, 40, 100))
    assert list(r) == [1, 5, 10, 40, 100]
    values = list(r.values())
    assert values == sorted(values)
    assert r[40] == r[100] == 1.0
    assert r[1] < 1.0


def test_perfect_embeddings_give_recall_one() -> None:
    G = np.eye(6)
    assert recall_at_k(G[[3, 1, 5]], G, [3, 1, 5], ks=(1,)) == {1: 1.0}


def _model_and_data(beta: float = 4.0):
    rng = np.random.default_rng(5)
    m = DualEncoder(EncoderConfig(3, 3, hidden=(5,), out_dim=4, beta=beta), seed=1)
    return m, rng.standard_normal((37, 3)), rng.standard_normal((23, 3)), rng.integers(0, 23, 37)


@pytest.mark.parametrize("block_size", [None, 1, 5, 100])
def test_mean_softmax_loss_equals_the_model_loss(block_size) -> None:
    """Same quantity as DualEncoder.full_softmax_loss (deterministic identity: 1e-12 relative,
    the two differ only in summation order)."""
    m, X, Y, pos = _model_and_data()
    want, _ = m.full_softmax_loss(X, pos, Y)
    got = mean_softmax_loss(m.encode_queries(X), m.encode_targets(Y), pos, beta=m.beta, block_size=block_size)
    assert got == pytest.approx(want, rel=1e-12)


def test_mean_softmax_loss_direct_formula_and_large_logits() -> None:
    rng = np.random.default_rng(0)
    F, G = rng.standard_normal((4, 3)), rng.standard_normal((9, 3))
    pos = np.array([0, 8, 2, 2])
    a = 2.5 * F @ G.T
    want = np.mean(logsumexp(a, axis=1) - a[np.arange(4), pos])
    assert mean_softmax_loss(F, G, pos, beta=2.5) == pytest.approx(want, rel=1e-12)
    big = mean_softmax_loss(F, G, pos, beta=1e4)  # logits ~1e4: must not overflow
    assert np.isfinite(big) and big >= 0


def test_evaluate_does_not_charge_the_target_counter() -> None:
    m, X, Y, pos = _model_and_data()
    out = evaluate(m, X, pos, Y, ks=(1, 10))
    assert set(out) == {"recall@1", "recall@10", "loss"}
    assert m.target_rows_encoded == 0
    F, G = m.encode_queries(X), m.encode_targets(Y, count=False)
    assert out["recall@10"] == recall_at_k(F, G, pos, (10,))[10]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda F, G, p: recall_at_k(F, G[:, :2], p), "G"),
        (lambda F, G, p: recall_at_k(F, G, p[:-1]), "pos"),
        (lambda F, G, p: recall_at_k(F, G, p + 100), "pos"),
        (lambda F, G, p: recall_at_k(F, G, p, ks=(0,)), "ks"),
        (lambda F, G, p: recall_at_k(F, G, p, ks=()), "ks"),
        (lambda F, G, p: recall_at_k(F, G, p, ks=(1.5,)), "ks"),
        (lambda F, G, p: recall_at_k(np.full_like(F, np.nan), G, p), "F"),
        (lambda F, G, p: recall_at_k(F[:0], G, p[:0]), "F"),
        (lambda F, G, p: recall_at_k(F, G, p, block_size=0), "block_size"),
        (lambda F, G, p: mean_softmax_loss(F, G, p, beta=0.0), "beta"),
        (lambda F, G, p: mean_softmax_loss(F, np.inf * G, p, beta=1.0), "G"),
    ],
)
def test_bad_inputs_raise(call, match: str) -> None:
    rng = np.random.default_rng(0)
    F, G, p = rng.standard_normal((4, 3)), rng.standard_normal((6, 3)), np.array([0, 1, 2, 5])
    with pytest.raises(ValueError, match=match):
        call(F, G, p)
