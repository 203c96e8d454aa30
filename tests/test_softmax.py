"""Unit tests for reference/softmax.py (the P13 statements are in proofs/test_p13_sampled_softmax.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.testing import assert_allclose, assert_array_equal

from reference.softmax import (
    draw_in_place,
    full_softmax_loss,
    inverse_cdf,
    log_partition,
    sample_softmax,
    sampled_log_partition,
    sampled_softmax_loss,
    softmax,
)
from reference.stats import g_test

# Goodness-of-fit tests fail at p < 1e-6 (proofs/README.md section 6): with the handful of
# fixed-seed G-tests below the false-alarm rate of this module is < 1e-5.
P_FAIL = 1e-6

moderate = st.floats(-30.0, 30.0, allow_nan=False)
logit_matrix = arrays(np.float64, shape=st.tuples(st.integers(1, 5), st.integers(1, 40)), elements=moderate)


# ---------------------------------------------------------------------------
# log_partition / softmax


def test_log_partition_is_finite_and_exact_at_1e4() -> None:
    """exp(1e4) overflows float64; logsumexp must not (proofs/README.md section 2)."""
    a = np.array([[1e4, 1e4, -1e4], [-1e4, -1e4, -1e4], [1e4, 0.0, -3.0]])
    got = log_partition(a)
    # Exact values: 1e4 + log 2, -1e4 + log 3, 1e4 + log(1 + e^-1e4 + ...) = 1e4 in float64.
    want = np.array([1e4 + np.log(2.0), -1e4 + np.log(3.0), 1e4])
    assert np.all(np.isfinite(got))
    assert_allclose(got, want, rtol=1e-15)  # a few ulp: one log1p after the max shift
    p = softmax(a)
    assert np.all(np.isfinite(p))
    assert_allclose(p[0], [0.5, 0.5, 0.0], atol=1e-15)
    assert log_partition(a.astype(np.float32)).dtype == np.float32
    assert np.all(np.isfinite(log_partition(a.astype(np.float32))))


@given(a=logit_matrix)
def test_log_partition_matches_the_definition(a: np.ndarray) -> None:
    """For |a| <= 30, log(sum(exp(a))) is safe in float64: agreement to 1e-12 relative
    (both are a handful of correctly rounded operations on values <= e^30)."""
    assert_allclose(log_partition(a), np.log(np.exp(a).sum(axis=1)), rtol=1e-12, atol=1e-12)
    assert_allclose(log_partition(a.T, axis=0), log_partition(a), rtol=0, atol=0)
    p = softmax(a)
    assert np.all(p >= 0)
    assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-13)  # N <= 40 terms, rounding ~ N ulp


# ---------------------------------------------------------------------------
# full_softmax_loss


@given(a=logit_matrix, data=st.data())
def test_full_softmax_gradient_rows_sum_to_zero(a: np.ndarray, data: st.DataObject) -> None:
    """d loss / d a_i = (P_i - e_pos) / B sums to (sum P_i - 1) / B = 0 up to ~N ulp."""
    B, N = a.shape
    pos = np.array(data.draw(st.lists(st.integers(0, N - 1), min_size=B, max_size=B)))
    loss, d = full_softmax_loss(a, pos)
    assert d.shape == (B, N)
    assert_allclose(d.sum(axis=1), 0.0, atol=1e-14)
    want = np.mean(log_partition(a) - a[np.arange(B), pos])
    assert loss == pytest.approx(want, rel=1e-12, abs=1e-12)
    assert loss >= -1e-12  # -log P(pos) >= 0


def test_full_softmax_loss_is_finite_at_1e4() -> None:
    a = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]])
    loss, d = full_softmax_loss(a, np.array([1, 1]))
    # Row 0: -log P(1) = 2e4 exactly; row 1: log 2. Mean of the two.
    assert loss == pytest.approx((2e4 + np.log(2.0)) / 2, rel=1e-15)
    assert np.all(np.isfinite(d))
    assert_allclose(d, [[0.5, -0.5, 0.0], [0.0, -0.25, 0.25]], atol=1e-15)


# ---------------------------------------------------------------------------
# sampled_log_partition / sampled_softmax_loss


@given(a_pos=st.floats(-30, 30), a_neg=arrays(np.float64, st.integers(1, 10), elements=moderate))
def test_sampled_loss_without_log_q_is_softmax_over_candidates(a_pos: float, a_neg: np.ndarray) -> None:
    """log_q=None: the full-softmax loss over {positive} + negatives (positive in column 0)."""
    loss, d_pos, d_neg = sampled_softmax_loss(np.array([a_pos]), a_neg[None, :])
    cand = np.concatenate([[a_pos], a_neg])[None, :]
    loss_f, d_f = full_softmax_loss(cand, np.array([0]))
    assert loss == pytest.approx(loss_f, rel=1e-13, abs=1e-13)
    assert_allclose(np.concatenate([d_pos, d_neg[0]]), d_f[0], rtol=0, atol=1e-15)


def test_sampled_log_partition_shapes_and_dtypes() -> None:
    a = np.array([1.0, 2.0, 3.0])
    lq = np.log(np.array([0.2, 0.3, 0.5]))
    out = sampled_log_partition(a, lq)
    assert out.shape == ()
    assert float(out) == pytest.approx(np.log(np.mean(np.exp(a - lq))), rel=1e-14)
    out2 = sampled_log_partition(np.tile(a, (4, 1)), np.tile(lq, (4, 1)))
    assert out2.shape == (4,)
    assert_allclose(out2, float(out), rtol=1e-15)
    # float32 logits stay float32 and agree with float64 to float32 precision (~6e-8 relative).
    loss32, dp32, dn32 = sampled_softmax_loss(np.zeros(1, np.float32), a[None].astype(np.float32), lq[None])
    loss64, dp64, dn64 = sampled_softmax_loss(np.zeros(1), a[None], lq[None])
    assert dn32.dtype == np.float32
    assert loss32 == pytest.approx(loss64, rel=1e-6)
    assert_allclose(dn32, dn64, rtol=1e-6)


# ---------------------------------------------------------------------------
# sample_softmax: exactness by the repository's G-test (reference.stats.g_test:
# groups of >= 20 expected draws, Williams' correction)


def _logit_rows() -> np.ndarray:
    rng = np.random.default_rng(12345)
    N = 60
    flat = np.zeros(N)
    spread = 3.0 * rng.standard_normal(N)
    peaked = spread.copy()
    peaked[7] += 8.0  # one target with most of the mass
    huge = 1e4 + spread  # magnitude 1e4: exp would overflow
    gaps = spread.copy()
    gaps[::3] = -1e4  # zero-probability targets interleaved
    return np.stack([flat, spread, peaked, huge, gaps])


def test_sample_softmax_matches_softmax_g_test() -> None:
    """Counts of 40000 draws per row agree with softmax(row) (G-test, fail at p < 1e-6)."""
    logits = _logit_rows()
    n = 40000
    ids = sample_softmax(logits, n, np.random.default_rng(0))
    assert ids.shape == (logits.shape[0], n) and ids.dtype == np.int64
    probs = softmax(logits)
    for row in range(logits.shape[0]):
        counts = np.bincount(ids[row], minlength=logits.shape[1])
        p = g_test(counts, probs[row]).p_value
        assert p >= P_FAIL, f"row {row}: G-test p = {p:.3g} < {P_FAIL}"
    # Zero-probability targets (logit 1e4 below the maximum) are never drawn.
    assert not np.isin(ids[4], np.arange(0, logits.shape[1], 3)).any()


def test_g_test_has_power() -> None:
    """Control for the test above: draws from a distribution 0.2 off in logits are rejected."""
    logits = _logit_rows()[1]
    wrong = logits + 0.2 * np.random.default_rng(1).standard_normal(logits.size)
    ids = sample_softmax(wrong, 40000, np.random.default_rng(2))
    assert g_test(np.bincount(ids, minlength=logits.size), softmax(logits)).p_value < P_FAIL


def test_sample_softmax_deterministic_shapes_and_edge_cases() -> None:
    logits = _logit_rows()
    a = sample_softmax(logits, 50, np.random.default_rng(3))
    b = sample_softmax(logits, 50, np.random.default_rng(3))
    assert_array_equal(a, b)
    assert not np.array_equal(a, sample_softmax(logits, 50, np.random.default_rng(4)))
    one = sample_softmax(logits[1], 7, np.random.default_rng(3))  # 1-D row -> (n,)
    assert one.shape == (7,) and one.dtype == np.int64
    assert_array_equal(sample_softmax(np.zeros((3, 1)), 5, np.random.default_rng(0)), np.zeros((3, 5)))
    # A single dominant target (others e^-2e4 below) is the only one drawn.
    dom = np.array([[-1e4, 1e4, -1e4, -1e4]])
    assert_array_equal(sample_softmax(dom, 1000, np.random.default_rng(0)), 1)


class _TopOfTheCDF:
    """A generator stub whose every uniform is the largest ``rng.random()`` can return, 1 - 2^-53."""

    def random(self, shape):
        return np.full(shape, 1.0 - 2.0**-53)


@given(w=st.floats(1.0, 1e300))
def test_the_largest_uniform_times_a_total_stays_below_it(w: float) -> None:
    """The float fact draw_in_place relies on: fl((1 - 2^-53) W) < W for every float64 W >= 1."""
    assert (1.0 - 2.0**-53) * w < w


@given(N=st.integers(1, 40), zeros=st.integers(1, 5), data=st.data())
def test_draw_in_place_never_returns_a_weight_zero_id_at_the_top_of_the_cdf(N: int, zeros: int,
                                                                            data: st.DataObject) -> None:
    """Every uniform at its largest value: the threshold is just below the row total, and the id
    drawn is the last of positive weight, never one of the trailing ids of weight 0 (logits 1e4
    below the maximum); ``log Z`` is the row's logsumexp, and the block is overwritten."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    a = np.concatenate([rng.normal(size=(3, N)) * 5.0, np.full((3, zeros), -1e4)], axis=1)
    A = a.copy()
    ids, log_z = draw_in_place(A, 4, _TopOfTheCDF())
    assert (ids < N).all() and (np.exp(a[np.arange(3)[:, None], ids] - a.max(axis=1, keepdims=True)) > 0).all()
    assert_allclose(log_z, log_partition(a), rtol=1e-13)
    assert not np.array_equal(A, a)


# ---------------------------------------------------------------------------
# inverse_cdf: the search of every inverse-CDF sampler


@given(N=st.integers(1, 70), data=st.data())
def test_inverse_cdf_is_a_row_wise_searchsorted(N: int, data: st.DataObject) -> None:
    """Definition: the first j with cdf[r, j] > t (searchsorted, side='right'), N - 1 if none;
    zero weights (flat steps of the CDF) included, thresholds up to 10% past the total."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    w = rng.random((3, N)) * (rng.random((3, N)) < 0.6)
    cdf = np.cumsum(w, axis=1)
    t = rng.random((3, 25)) * 1.1 * cdf[:, -1:]
    t[:, 0] = cdf[:, -1]  # exactly the total: no j has cdf > t
    want = np.stack([np.minimum(np.searchsorted(c, tt, side="right"), N - 1) for c, tt in zip(cdf, t)])
    assert_array_equal(inverse_cdf(cdf, t), want)


# ---------------------------------------------------------------------------
# bad inputs

rng0 = np.random.default_rng(0)
ok2 = np.zeros((2, 3))
bad_cases = [
    (lambda: log_partition(np.array([1.0, np.nan])), "finite"),
    (lambda: log_partition(np.array([1.0, np.inf])), "finite"),
    (lambda: log_partition(np.zeros((2, 0))), "non-empty"),
    (lambda: log_partition(np.float64(3.0)), "at least 1 dimension"),
    (lambda: log_partition(ok2, axis=2), "axis"),
    (lambda: softmax(np.array(["a", "b"])), "real numeric"),
    (lambda: sample_softmax(ok2, 0, rng0), "n: expected an integer >= 1"),
    (lambda: sample_softmax(ok2, 2.5, rng0), "n: expected an integer"),
    (lambda: sample_softmax(ok2, 3, 0), "rng"),
    (lambda: sample_softmax(ok2, 3, np.random.RandomState(0)), "rng"),
    (lambda: sample_softmax(np.zeros((2, 2, 2)), 3, rng0), "2-D"),
    (lambda: sample_softmax(np.array([[0.0, np.nan]]), 3, rng0), "finite"),
    (lambda: inverse_cdf(np.zeros((2, 0)), np.zeros((2, 1))), "cdf"),
    (lambda: inverse_cdf(np.array([[0.0, np.inf]]), np.zeros((1, 1))), "finite row totals"),
    (lambda: inverse_cdf(ok2, np.zeros((3, 1))), "t: expected shape"),
    (lambda: inverse_cdf(ok2, np.full((2, 1), np.nan)), "finite"),
    (lambda: sampled_log_partition(ok2, np.zeros((2, 4))), "log_q: expected the shape"),
    (lambda: sampled_log_partition(ok2, np.full((2, 3), 0.5)), "log-probabilities <= 0"),
    (lambda: sampled_log_partition(ok2, np.full((2, 3), -np.inf)), "finite"),
    (lambda: full_softmax_loss(ok2, np.array([0, 3])), "ids < 3"),
    (lambda: full_softmax_loss(ok2, np.array([0, -1])), "ids >= 0"),
    (lambda: full_softmax_loss(ok2, np.array([0])), "pos: expected shape"),
    (lambda: full_softmax_loss(ok2, np.array([0.5, 1.0])), "integer ids"),
    (lambda: full_softmax_loss(np.zeros(3), np.array([0])), "2-D"),
    (lambda: sampled_softmax_loss(np.zeros(3), ok2), "a_neg: expected shape"),
    (lambda: sampled_softmax_loss(np.zeros(2), np.zeros((2, 0))), "non-empty"),
    (lambda: sampled_softmax_loss(np.zeros(2), ok2, np.zeros((2, 2))), "log_q"),
    (lambda: sampled_softmax_loss(np.array([0.0, np.nan]), ok2), "finite"),
]


@pytest.mark.parametrize("call, match", bad_cases, ids=[str(i) for i in range(len(bad_cases))])
def test_bad_inputs_raise_value_error(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
