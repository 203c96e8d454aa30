"""P13 (proofs/README.md section 6): sampled softmax with the logQ correction.

Proof: ``proofs/p13_sampled_softmax.md``. Notation: logits a_y = <q, z_y>,
P = softmax(a), draws s_1..s_n ~ Q i.i.d., self-normalised weights
w_i = d log Zhat / d a_{s_i}, gradient estimate T = sum_i w_i z_{s_i} of
grad_q log Z = E_P[z].

(a) Q = P: log Zhat = log Z for every draw (deterministic, 1e-9 relative).
(b) Q = P: w_i = 1/n and E[T] = E_P[z] (statistical, false alarm <= 1e-6 per example).
(c) Q != P, |log Q - log P| <= 2 eps: ||E[T] - E_P[z]|| <= 2 B_n(Q) H <= 2 TV(Q, P) H
    (statistical, false alarm <= 1e-6 per example).
(d) the hand-derived gradients of both losses match central finite differences.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.testing import assert_allclose

from reference.softmax import (
    full_softmax_loss,
    log_partition,
    sample_softmax,
    sampled_log_partition,
    sampled_softmax_loss,
)

# False-alarm rate per Hypothesis example of the statistical checks (b), (c).
# With the `ci` profile (25 derandomised examples) the suite-level rate is
# <= 2.5e-5; with `thorough` (1000) it is <= 1e-3.
ALPHA = 1e-6
# Deterministic identities in float64 (proofs/README.md section 6).
RTOL = 1e-9

seeds = st.integers(0, 2**32 - 1)


def _log_softmax(a: np.ndarray) -> np.ndarray:
    return a - log_partition(a)[..., None]


def _problem(seed: int, N: int, k: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Target vectors z (N, k) and logits a = <q, z_y> with ||q|| = scale."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((N, k))
    q = rng.standard_normal(k)
    q *= scale / np.linalg.norm(q)
    return z, z @ q


def _weighted_gradient(a: np.ndarray, z: np.ndarray, log_q: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """T_m = sum_i w_mi z_{s_mi} for M replications, w from ``sampled_softmax_loss``.

    Returns T (M, k) and the weights w (M, n). The loss is a batch mean over
    the M replications, so w = M * d_neg.
    """
    M = ids.shape[0]
    _, _, d_neg = sampled_softmax_loss(np.zeros(M), a[ids], log_q[ids])
    w = d_neg * M
    return np.einsum("mi,mik->mk", w, z[ids]), w


# ---------------------------------------------------------------------------
# (a) Q = P: the estimator is log Z for every draw.

logit_rows = arrays(
    np.float64,
    shape=st.tuples(st.integers(1, 4), st.integers(1, 50)),
    elements=st.floats(-1e4, 1e4, allow_nan=False),
)


@given(a=logit_rows, n=st.integers(1, 20), seed=seeds)
def test_a_estimator_equals_log_z_for_every_draw(a: np.ndarray, n: int, seed: int) -> None:
    """P13 (2): exp(a_s - log P(s)) = Z for every s, so log Zhat = log Z.

    Tolerance: a - (a - log Z) is exact up to a few ulp of the largest
    magnitude involved, so 1e-9 relative to max(1, |log Z|, max|a|)
    (logits up to 1e4 in magnitude).
    """
    rng = np.random.default_rng(seed)
    B, N = a.shape
    log_z = log_partition(a)
    log_p = _log_softmax(a)
    rows = np.arange(B)[:, None]
    scale = max(1.0, float(np.abs(a).max()), float(np.abs(log_z).max()))
    # Draws from P, and arbitrary draws (uniform ids, including ids whose P
    # underflows to 0): the identity holds for every draw, not only likely ones.
    for ids in (sample_softmax(a, n, rng), rng.integers(0, N, size=(B, n))):
        est = sampled_log_partition(a[rows, ids], log_p[rows, ids])
        assert est.shape == (B,)
        assert_allclose(est, log_z, rtol=0, atol=RTOL * scale)
        # The sampled-softmax loss with log_q = log P is then the full-softmax loss.
        pos = rng.integers(0, N, size=B)
        loss_s, d_pos, _ = sampled_softmax_loss(a[np.arange(B), pos], a[rows, ids], log_p[rows, ids])
        loss_f, _ = full_softmax_loss(a, pos)
        assert abs(loss_s - loss_f) <= RTOL * scale
        assert_allclose(d_pos, -1.0 / B, rtol=0, atol=0)


# ---------------------------------------------------------------------------
# (b) Q = P: the gradient estimate is unbiased.


def _bernstein_halfwidth(sigma2: np.ndarray, b: np.ndarray, M: int, delta: float) -> np.ndarray:
    """t with P(|mean_M - mu| >= t) <= delta for i.i.d. X, Var X = sigma2, |X - mu| <= b.

    Bernstein: P(|mean - mu| >= t) <= 2 exp(-M t^2 / (2 sigma2 + 2 b t / 3)).
    Solving M t^2 = L (2 sigma2 + 2 b t / 3), L = log(2 / delta), for t > 0.
    A finite-sample bound (no normal approximation in the 1e-6 tail).
    """
    L = np.log(2.0 / delta)
    c = 2.0 * b * L / 3.0
    return (c + np.sqrt(c**2 + 8.0 * M * sigma2 * L)) / (2.0 * M)


@given(
    N=st.integers(2, 30),
    k=st.integers(1, 3),
    n=st.integers(1, 16),
    scale=st.floats(0.1, 5.0),
    seed=seeds,
)
def test_b_gradient_unbiased_when_q_is_p(N: int, k: int, n: int, scale: float, seed: int) -> None:
    """P13 (3): with Q = P, w_i = 1/n and E[(1/n) sum_i z_{s_i}] = E_P[z].

    M replications of n draws; per coordinate, a Bernstein half-width at
    ALPHA / k (Bonferroni over the k coordinates) with the exact variance
    Var_P(z_k) / n of one replication and range b = max z_k - min z_k.
    """
    M = 4000
    z, a = _problem(seed, N, k, scale)
    rng = np.random.default_rng(seed + 1)
    log_p = _log_softmax(a)
    P = np.exp(log_p)
    ids = sample_softmax(np.broadcast_to(a, (M, N)), n, rng)
    T, w = _weighted_gradient(a, z, log_p, ids)
    # exp(a_s - log P(s)) = Z for every s, so the weights are exactly uniform
    # up to rounding (1e-12: a few ulp of exp of values within 1e-13 of each other).
    assert_allclose(w, 1.0 / n, rtol=1e-12, atol=0)
    mean_p = P @ z
    var_p = P @ (z - mean_p) ** 2
    halfwidth = _bernstein_halfwidth(var_p / n, np.ptp(z, axis=0), M, ALPHA / k)
    err = np.abs(T.mean(axis=0) - mean_p)
    assert np.all(err <= halfwidth), f"|mean T - E_P z| = {err} exceeds {halfwidth}"


# ---------------------------------------------------------------------------
# (c) Q != P: the bias of the self-normalised gradient obeys P5.


@given(
    N=st.integers(2, 30),
    k=st.integers(1, 3),
    n=st.integers(1, 16),
    eps=st.floats(0.01, 0.5),
    scale=st.floats(0.1, 5.0),
    seed=seeds,
)
def test_c_bias_with_perturbed_proposal_obeys_p5(N: int, k: int, n: int, eps: float, scale: float, seed: int) -> None:
    """P13 (7): ||E[T] - E_P[z]|| <= 2 B_n(Q) H <= 2 TV(Q, P) H.

    Q = softmax(log P + delta), delta = +-eps split at the median of <z_y, u>
    for a random direction u, so |log Q - log P| <= 2 eps (like Phat_C, P4)
    and E_Q[z] is pushed away from E_P[z] along u: the uncorrected average
    would be biased by up to 2 TV H, while the corrected one's bias is
    O(1/n). H = max_y ||z_y - c|| with c the centre of z's bounding box.

    Slack for the Monte-Carlo mean of M replications: each coordinate of T
    lies in [min z_k, max z_k] (T is a convex combination of the z_y), so by
    Hoeffding |mean - E| <= range_k sqrt(log(2k / ALPHA) / (2M)) for all k at
    once with probability >= 1 - ALPHA; the Euclidean slack is the norm of
    those half-widths.
    """
    M = 20000
    z, a = _problem(seed, N, k, scale)
    rng = np.random.default_rng(seed + 2)
    log_p = _log_softmax(a)
    P = np.exp(log_p)
    u = rng.standard_normal(k)
    proj = z @ u
    delta = eps * np.sign(proj - np.median(proj))
    log_q = _log_softmax(log_p + delta)
    Q = np.exp(log_q)
    assert np.max(np.abs(log_q - log_p)) <= 2 * eps + 1e-12  # the P4-type premise

    rho = P / Q
    tv = 0.5 * np.sum(np.abs(P - Q))
    b_n = np.sum(np.where(rho > 1, P * (rho - 1) / (rho + n - 1), 0.0))
    c = 0.5 * (z.max(axis=0) + z.min(axis=0))
    H = float(np.max(np.linalg.norm(z - c, axis=1)))
    slack = float(np.linalg.norm(np.ptp(z, axis=0) * np.sqrt(np.log(2 * k / ALPHA) / (2 * M))))

    ids = sample_softmax(np.broadcast_to(log_q, (M, N)), n, rng)
    T, _ = _weighted_gradient(a, z, log_q, ids)
    mean_p = P @ z
    bias = float(np.linalg.norm(T.mean(axis=0) - mean_p))
    # Deterministic checks in floating point: P, Q, rho each carry a few ulp of
    # relative error and the sums have N <= 30 terms of size <= 1, so 1e-13
    # absolute covers the rounding (B_n = TV exactly when n = 1).
    assert b_n <= tv + 1e-13  # (6)
    assert bias <= 2 * b_n * H + slack, f"bias {bias} > 2 B_n H + slack = {2 * b_n * H} + {slack}"
    assert bias <= 2 * tv * H + slack, f"bias {bias} > 2 TV H + slack = {2 * tv * H} + {slack}"
    # Control: the draws really come from Q (the uncorrected average estimates
    # E_Q[z], whose distance to E_P[z] obeys P5 exactly).
    mean_q = Q @ z
    uncorrected = z[ids].mean(axis=1).mean(axis=0)
    assert np.linalg.norm(uncorrected - mean_q) <= slack
    assert np.linalg.norm((Q - P) @ z) <= 2 * tv * H + 1e-13 * (1 + H)  # P5 itself, same rounding budget


# ---------------------------------------------------------------------------
# (d) hand-derived gradients vs central finite differences.

# Central differences with step h: truncation error <= h^2 / 6 * max|f'''|
# (|f'''| <= 1 for these losses) plus rounding ~ 1e-16 * |f| / h; with
# h = 1e-5 and |f| <= 50 that is ~ 5e-10, so 1e-8 leaves a 20x margin.
FD_STEP = 1e-5
FD_ATOL = 1e-8


def _central_differences(f, x: np.ndarray) -> np.ndarray:
    g = np.empty_like(x)
    for idx in np.ndindex(x.shape):  # test code: a handful of entries
        xp, xm = x.copy(), x.copy()
        xp[idx] += FD_STEP
        xm[idx] -= FD_STEP
        g[idx] = (f(xp) - f(xm)) / (2 * FD_STEP)
    return g


small_logits = st.floats(-10.0, 10.0, allow_nan=False)


@given(
    logits=arrays(np.float64, shape=st.tuples(st.integers(1, 3), st.integers(1, 6)), elements=small_logits),
    data=st.data(),
)
def test_d_full_softmax_gradient_matches_finite_differences(logits: np.ndarray, data: st.DataObject) -> None:
    B, N = logits.shape
    pos = np.array(data.draw(st.lists(st.integers(0, N - 1), min_size=B, max_size=B)))
    _, d = full_softmax_loss(logits, pos)
    fd = _central_differences(lambda x: full_softmax_loss(x, pos)[0], logits)
    assert_allclose(d, fd, rtol=0, atol=FD_ATOL)


@given(
    a_neg=arrays(np.float64, shape=st.tuples(st.integers(1, 3), st.integers(1, 5)), elements=small_logits),
    with_log_q=st.booleans(),
    seed=seeds,
)
def test_d_sampled_softmax_gradient_matches_finite_differences(a_neg: np.ndarray, with_log_q: bool, seed: int) -> None:
    """Both forms; log_q is held constant (it is an input, not differentiated)."""
    rng = np.random.default_rng(seed)
    B, n = a_neg.shape
    a_pos = rng.uniform(-10, 10, size=B)
    log_q = np.log(rng.dirichlet(np.ones(n + 3), size=B)[:, :n]) if with_log_q else None
    _, d_pos, d_neg = sampled_softmax_loss(a_pos, a_neg, log_q)
    fd_pos = _central_differences(lambda x: sampled_softmax_loss(x, a_neg, log_q)[0], a_pos)
    fd_neg = _central_differences(lambda x: sampled_softmax_loss(a_pos, x, log_q)[0], a_neg)
    assert_allclose(d_pos, fd_pos, rtol=0, atol=FD_ATOL)
    assert_allclose(d_neg, fd_neg, rtol=0, atol=FD_ATOL)
