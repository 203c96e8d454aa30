"""Softmax, its log-partition function, an exact sampler and the two training losses.

Notation (proofs/README.md section 2): logits a_y, partition function Z = sum_y exp(a_y),
softmax P(y) = exp(a_y) / Z. Everything that touches Z is computed in log
space with :func:`scipy.special.logsumexp`, so nothing overflows for logits of
magnitude 1e4 and beyond.

Functions
---------
log_partition(logits)             log Z per row.
softmax(logits)                   P per row.
sample_softmax(logits, n, rng)    n exact i.i.d. draws from each row's softmax.
draw_in_place(A, n, rng)          the same draws from a float64 block of logits it
                                  overwrites (no copy), with log Z of each row.
inverse_cdf(cdf, t)               the inverse-CDF search behind every exact
                                  sampler of a logits matrix (vectorised bisection).
topk_ids(scores, k, exclude)      the exact top-k of each row, ties by smaller id (P8).
sampled_log_partition(a, log_q)   the P13 importance-sampling estimate of log Z.
full_softmax_loss(logits, pos)    -log P(pos) averaged over the batch, and its gradient.
sampled_softmax_loss(a_pos, a_neg, log_q)
                                  the sampled-softmax loss (with or without the
                                  logQ correction) and its gradient.

All gradients are with respect to the logits and are of the *batch mean* of
the loss, so they carry a factor 1/B. They are derived by hand in the
docstrings; ``proofs/test_p13_sampled_softmax.py`` checks them against central
finite differences.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from reference._validation import as_float_array, as_index_array, check_int, check_rng

__all__ = [
    "log_partition",
    "softmax",
    "sample_softmax",
    "draw_in_place",
    "inverse_cdf",
    "topk_ids",
    "sampled_log_partition",
    "full_softmax_loss",
    "sampled_softmax_loss",
]

# A log-probability cannot be positive; rounding in a caller's
# ``a - logsumexp(a)`` can make it a few ulp above 0, so a little slack is allowed.
_LOG_Q_SLACK = 1e-8


def _check_axis(axis: int, ndim: int) -> int:
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise ValueError(f"axis: expected an integer, got {type(axis).__name__} {axis!r}")
    if not -ndim <= int(axis) < ndim:
        raise ValueError(f"axis: expected an integer in [{-ndim}, {ndim - 1}] for a {ndim}-D array, got {axis}")
    return int(axis)


def log_partition(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Log-partition function log Z = log sum_y exp(a_y) along ``axis``.

    Parameters
    ----------
    logits : array_like, shape (..., N, ...)
        Finite logits a_y, float32 or float64 (integers are converted to float64).
    axis : int, default -1
        The axis that indexes targets y.

    Returns
    -------
    numpy.ndarray
        log Z with ``axis`` removed, in the dtype of ``logits``. Computed with
        :func:`scipy.special.logsumexp` (max-shifted), so it is finite for
        logits of any finite magnitude (e.g. 1e4, where exp would overflow).

    References
    ----------
    proofs/README.md section 2 (Z, log space).
    """
    a = as_float_array(logits, "logits")
    if a.ndim == 0:
        raise ValueError("logits: expected an array with at least 1 dimension, got a scalar")
    ax = _check_axis(axis, a.ndim)
    return np.asarray(logsumexp(a, axis=ax)).astype(a.dtype, copy=False)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax P(y) = exp(a_y - log Z) along ``axis``.

    Parameters
    ----------
    logits : array_like
        Finite logits a_y.
    axis : int, default -1
        The axis that indexes targets y.

    Returns
    -------
    numpy.ndarray
        Probabilities, same shape and dtype as ``logits``; each slice along
        ``axis`` sums to 1 (up to rounding). Entries whose logit is more than
        ~745 below the maximum underflow to exactly 0.

    References
    ----------
    proofs/README.md section 2 (P(y) = exp(a_y) / Z).
    """
    a = as_float_array(logits, "logits")
    if a.ndim == 0:
        raise ValueError("logits: expected an array with at least 1 dimension, got a scalar")
    ax = _check_axis(axis, a.ndim)
    return np.exp(a - logsumexp(a, axis=ax, keepdims=True))


def sample_softmax(logits: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` i.i.d. ids (with replacement) from the softmax of every row.

    Method: inverse CDF. For each row, w_y = exp(a_y - max_y a_y) (so
    1 <= sum w <= N and nothing overflows), the cumulative sums
    W_j = w_0 + ... + w_j are formed, a uniform u in [0, 1) is drawn and the id
    is the first j with W_j > u W_{N-1}. Then Pr(j) = w_j / sum w = P(j)
    exactly, up to float64 rounding of the cumulative sums (relative error
    about N * 1e-16). The search is a *vectorised binary search* over all
    (row, draw) pairs at once: ceil(log2 N) rounds of gather-and-compare, no
    loop over rows or draws. An id with w_j = 0 (logit more than ~745 below
    the row maximum) has W_j = W_{j-1} and can never be returned.

    Cost: O(B N) for the cumulative sums plus O(B n log N) for the search;
    memory O(B N) (one float64 copy of the logits).

    Parameters
    ----------
    logits : array_like, shape (B, N) or (N,)
        Finite logits; each row defines P(y) = exp(a_y) / Z.
    n : int
        Number of draws per row, n >= 1.
    rng : numpy.random.Generator
        Source of randomness (consumes exactly B * n uniforms).

    Returns
    -------
    numpy.ndarray of int64, shape (B, n) (or (n,) for 1-D ``logits``)
        ``ids[b, i]`` is the i-th draw for row b.

    References
    ----------
    proofs/README.md section 4 (samplers are checked against this exact sampler);
    L. Devroye, *Non-Uniform Random Variate Generation* (1986), section 2.2
    (inversion).
    """
    a = as_float_array(logits, "logits")
    if a.ndim not in (1, 2):
        raise ValueError(f"logits: expected a 2-D array (B, N) or a 1-D array (N,), got shape {a.shape}")
    n = check_int(n, "n", low=1)
    rng = check_rng(rng)
    single = a.ndim == 1
    ids, _ = draw_in_place(np.array(np.atleast_2d(a), dtype=np.float64), n, rng)  # a copy: the input is kept
    return ids[0] if single else ids


def draw_in_place(A: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The draws of :func:`sample_softmax` from a block of logits that is overwritten; also ``log Z`` per row.

    ``A`` (float64, shape (B, N), finite) becomes, in place, ``w = exp(a - max)``
    and then the cumulative sums ``W``, so a block of logits is not copied
    (the brute-force baseline and the tree's dense fallback draw this way
    from blocks of 256 MiB). The thresholds are ``t = u W_{N-1}`` with ``u``
    uniform in [0, 1) (``B n`` uniforms, row by row). ``rng.random()`` is a
    multiple of 2^-53, so ``u <= 1 - 2^-53``, and ``fl(u W) < W`` for every
    float64 ``W > 0`` (``W 2^-53`` is more than half the spacing of float64
    just below ``W``, or, when ``W`` is a power of two, exactly that spacing):
    the first ``j`` with ``W_j > t`` exists and has ``w_j > 0``, so an id of
    weight 0 (logit ~745 or more below the row's maximum) is never returned.
    No argument checks (internal callers only; :func:`sample_softmax` checks).

    Returns
    -------
    ids : numpy.ndarray of int64, shape (B, n)
    log_z : numpy.ndarray of float64, shape (B,)
        ``max + log W_{N-1}`` of each row.
    """
    m = A.max(axis=1, keepdims=True)
    A -= m
    np.exp(A, out=A)                     # max entry of every row is exactly 1
    np.cumsum(A, axis=1, out=A)          # non-decreasing, W_{N-1} >= 1
    total = A[:, -1:].copy()
    return inverse_cdf(A, rng.random((A.shape[0], n)) * total), m[:, 0] + np.log(total[:, 0])


def inverse_cdf(cdf: np.ndarray, t: np.ndarray) -> np.ndarray:
    """For every (row r, threshold i): the first column j with ``cdf[r, j] > t[r, i]``.

    The search of inverse-CDF sampling (L. Devroye, *Non-Uniform Random Variate
    Generation*, 1986, section 2.2): with ``cdf`` the cumulative weights
    W_j = w_0 + ... + w_j of a row and ``t = u W_{N-1}`` (u uniform in [0, 1)),
    the answer is j with probability w_j / W_{N-1}. A column with w_j = 0 has
    W_j = W_{j-1} and is never the answer while ``t < W_{N-1}``. Used by
    :func:`sample_softmax` and by the brute-force baseline
    :func:`reference.bench.brute_force_sample`.

    Method: a vectorised binary search over all (row, threshold) pairs at once,
    ceil(log2 N) rounds of gather-and-compare; no loop over rows or draws.
    Cost O(R n log N), memory O(R n).

    Parameters
    ----------
    cdf : ndarray, shape (R, N), N >= 1
        Non-decreasing along each row (not checked: that would cost a pass over
        the whole array, as much as the search); the last column must be
        finite.
    t : ndarray, shape (R, n)
        Finite thresholds, one row of them per row of ``cdf``.

    Returns
    -------
    ndarray of int64, shape (R, n)
        The first j with ``cdf[r, j] > t[r, i]``; N - 1 when there is none
        (``t`` at or above the row total, e.g. ``u W_{N-1}`` rounded up to it).
    """
    c = as_float_array(cdf, "cdf", ndim=2, finite=False)
    R, N = c.shape
    if N == 0:
        raise ValueError("cdf: expected at least one column, got shape (R, 0)")
    if not np.isfinite(c[:, -1]).all():
        raise ValueError("cdf: expected finite row totals (last column), got a non-finite one")
    t = as_float_array(t, "t", ndim=2, allow_empty=True)
    if t.shape[0] != R:
        raise ValueError(f"t: expected shape ({R}, n) to match cdf's rows, got {t.shape}")
    flat = c.reshape(-1)
    base = (np.arange(R, dtype=np.int64) * N)[:, None]
    lo = np.zeros(t.shape, dtype=np.int64)
    hi = np.full(t.shape, N - 1, dtype=np.int64)
    # Invariant: the answer lies in [lo, hi], or is past the end (then lo runs to N).
    for _ in range((N - 1).bit_length()):  # = ceil(log2 N) halvings of [0, N - 1]
        mid = (lo + hi) // 2
        right = flat[base + mid] <= t
        lo = np.where(right, mid + 1, lo)
        hi = np.where(right, hi, mid)
    return np.minimum(lo, N - 1)


def topk_ids(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """The k largest scores of each row, in decreasing order, exact ties by the smaller id (P8's rule).

    The rule is that of the tree's top-k (:func:`reference.sampling.topk`, P8,
    proofs/README.md): order the ids by (-score, id) and keep the first k. It
    holds at the k-th place too: of several ids tied at the k-th score, the
    smallest are kept. This is the one brute-force top-k of the repository:
    :func:`reference.bench.brute_force_topk` (blocks of queries, the
    benchmark's baseline), the conformance kit's top-k oracle and the miners
    ``brute_topk`` / ``stale_topk`` all select with it.

    Method, vectorised O(B N): the k-th largest score of each row
    (``np.partition``); every id scoring at least that; in the rows where more
    ids tie at the k-th score than fit, the smallest of the tied ids; then the
    k ids ordered by decreasing score, equal scores by increasing id.

    Parameters
    ----------
    scores : array_like, shape (B, N)
        Finite scores (logits).
    k : int
        1 <= k <= N (N - 1 when ``exclude`` is given).
    exclude : array_like of int, shape (B,), optional
        One id per row that may not be returned (e.g. the positive).

    Returns
    -------
    ndarray of int64, shape (B, k)
    """
    s = as_float_array(scores, "scores", ndim=2)
    B, N = s.shape
    avail = N if exclude is None else N - 1
    k = check_int(k, "k", low=1, high=avail)
    if exclude is not None:
        ex = as_index_array(exclude, "exclude", upper=N)
        if ex.shape != (B,):
            raise ValueError(f"exclude: expected shape ({B},), got {ex.shape}")
        s = s.copy()
        s[np.arange(B), ex] = -np.inf
    kth = np.partition(s, N - k, axis=1)[:, N - k : N - k + 1]  # the k-th largest score of each row
    take = s >= kth
    crowded = np.flatnonzero(np.count_nonzero(take, axis=1) > k)  # more ids tie at the k-th score than fit
    if crowded.size:
        sc, kc = s[crowded], kth[crowded]
        tie = sc == kc
        need = k - np.count_nonzero(sc > kc, axis=1)  # >= 1 ids equal to the k-th score are needed
        take[crowded] = (sc > kc) | (tie & (np.cumsum(tie, axis=1) <= need[:, None]))
    ids = np.nonzero(take)[1].reshape(B, k)  # row-major: each row's ids ascending
    order = np.argsort(-np.take_along_axis(s, ids, axis=1), axis=1, kind="stable")
    return np.take_along_axis(ids, order, axis=1).astype(np.int64)


def sampled_log_partition(a: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """Importance-sampling estimate of log Z from n draws: the P13 estimator.

    For draws s_1..s_n ~ Q i.i.d. with logits a_i = a_{s_i} and log-probabilities
    log_q_i = log Q(s_i),

        log Zhat = log( (1/n) sum_i exp(a_i - log_q_i) )
                 = logsumexp_i(a_i - log_q_i) - log n.

    (1/n) sum_i exp(a_i - log_q_i) is an unbiased estimate of Z; with Q = P
    every term equals Z, so log Zhat = log Z for every draw (P13).

    Parameters
    ----------
    a : array_like, shape (B, n) or (n,)
        Logits of the drawn ids.
    log_q : array_like, same shape as ``a``
        log Q of the drawn ids (finite, so Q > 0; at most ~0 since Q <= 1).

    Returns
    -------
    numpy.ndarray, shape (B,) (a 0-d array for 1-D input)
        log Zhat per row, in the dtype of ``a``.

    References
    ----------
    P13, proofs/README.md section 6; ``proofs/p13_sampled_softmax.md``.
    """
    a_, lq = _check_draws(a, log_q, "a")
    n = a_.shape[-1]
    return np.asarray(logsumexp(a_ - lq, axis=-1) - np.log(n)).astype(a_.dtype, copy=False)


def full_softmax_loss(logits: np.ndarray, pos: np.ndarray) -> tuple[float, np.ndarray]:
    """Full-softmax cross-entropy over all N targets, and its gradient.

    loss = (1/B) sum_i [ log Z_i - a_{i, pos_i} ],  log Z_i = logsumexp_y a_{i,y}.

    Gradient (by hand): d log Z_i / d a_{i,y} = P_i(y) and
    d a_{i,pos_i} / d a_{i,y} = [y = pos_i], hence

        dloss / d a_{i,y} = (P_i(y) - [y = pos_i]) / B,

    whose rows sum to 0 (up to rounding).

    Parameters
    ----------
    logits : array_like, shape (B, N)
        Finite logits a_{i,y} of query i against every target y.
    pos : array_like of int, shape (B,)
        The positive target of each query, 0 <= pos_i < N.

    Returns
    -------
    loss : float
        The batch-mean loss.
    dlogits : numpy.ndarray, shape (B, N)
        Gradient of ``loss`` with respect to ``logits`` (dtype of ``logits``).

    References
    ----------
    proofs/README.md section 1 (the loss -log P(y*|x)) and section 7 (the gold standard).
    """
    a = as_float_array(logits, "logits", ndim=2)
    B, N = a.shape
    pos_ = as_index_array(pos, "pos", upper=N)
    if pos_.shape != (B,):
        raise ValueError(f"pos: expected shape ({B},) to match logits {a.shape}, got {pos_.shape}")
    lse = logsumexp(a, axis=1, keepdims=True)  # (B, 1)
    rows = np.arange(B)
    loss = float(np.mean(lse[:, 0] - a[rows, pos_]))
    dlogits = np.exp(a - lse)
    dlogits[rows, pos_] -= 1.0
    dlogits /= B
    return loss, dlogits


def sampled_softmax_loss(
    a_pos: np.ndarray, a_neg: np.ndarray, log_q: np.ndarray | None = None
) -> tuple[float, np.ndarray, np.ndarray]:
    """Sampled-softmax loss from the positive's logit and n negatives' logits.

    Two forms (both averaged over the batch of B queries):

    ``log_q`` given (negatives drawn i.i.d. from Q by a sampling miner; P13):
        loss_i = log Zhat_i - a_pos_i,
        log Zhat_i = logsumexp_j(a_neg_ij - log_q_ij) - log n   (``sampled_log_partition``).
        The positive is *not* added to the estimate: it is an estimate of the
        full log Z, which already contains the positive. With log_q held
        constant, d loss_i / d a_neg_ij = w_ij with
        w_ij = softmax_j(a_neg_ij - log_q_ij) (self-normalised importance
        weights), and d loss_i / d a_pos_i = -1.

    ``log_q`` None (top-k / in-batch miners: a softmax over the candidate set):
        loss_i = logsumexp([a_pos_i, a_neg_i1, ..., a_neg_in]) - a_pos_i.
        With p_i = softmax over the n + 1 candidates,
        d loss_i / d a_pos_i = p_i0 - 1 and d loss_i / d a_neg_ij = p_ij.

    Every gradient is divided by B (gradient of the mean).

    Parameters
    ----------
    a_pos : array_like, shape (B,)
        Logit of each query's positive target.
    a_neg : array_like, shape (B, n), n >= 1
        Logits of the negatives.
    log_q : array_like, shape (B, n), optional
        log Q(s_ij) of each negative under the sampling distribution.

    Returns
    -------
    loss : float
        The batch-mean loss.
    d_pos : numpy.ndarray, shape (B,)
        d loss / d a_pos.
    d_neg : numpy.ndarray, shape (B, n)
        d loss / d a_neg (log_q held constant).

    Notes
    -----
    Dtypes: ``d_pos`` and ``d_neg`` have the dtype ``np.result_type(a_pos, a_neg)``
    (integers count as float64): float32 only when both are float32, whatever
    the dtype of ``log_q``. When one of ``a_pos`` and ``a_neg`` is float64, a
    float32 other is promoted exactly: the results are bitwise those of its
    float64 copy.

    References
    ----------
    P13, proofs/README.md section 6; Bengio & Senecal, "Adaptive importance sampling to
    accelerate training of a neural probabilistic language model" (2008)
    (the logQ correction).
    """
    ap = as_float_array(a_pos, "a_pos", ndim=1)
    an = as_float_array(a_neg, "a_neg", ndim=2)
    B = ap.shape[0]
    if an.shape[0] != B:
        raise ValueError(f"a_neg: expected shape ({B}, n) to match a_pos {ap.shape}, got {an.shape}")
    if log_q is not None:
        an, lq = _check_draws(an, log_q, "a_neg")
        n = an.shape[1]
        s = an - lq
        lse = logsumexp(s, axis=1, keepdims=True)  # (B, 1)
        loss = float(np.mean(lse[:, 0] - np.log(n) - ap))
        d_neg = np.exp(s - lse) / B
        d_pos = np.full(B, -1.0 / B, dtype=np.result_type(ap.dtype, an.dtype))
        return loss, d_pos, d_neg.astype(d_pos.dtype, copy=False)
    cand = np.concatenate([ap[:, None], an], axis=1)  # (B, n + 1), positive in column 0
    lse = logsumexp(cand, axis=1, keepdims=True)
    loss = float(np.mean(lse[:, 0] - ap))
    p = np.exp(cand - lse)
    d_pos = (p[:, 0] - 1.0) / B
    d_neg = p[:, 1:] / B
    return loss, d_pos, d_neg


def _check_draws(a: np.ndarray, log_q: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate logits of n draws and their log-probabilities (same shape, n >= 1)."""
    a_ = as_float_array(a, name)
    if a_.ndim not in (1, 2):
        raise ValueError(f"{name}: expected a 2-D array (B, n) or 1-D (n,), got shape {a_.shape}")
    lq = as_float_array(log_q, "log_q")
    if lq.shape != a_.shape:
        raise ValueError(f"log_q: expected the shape of {name} {a_.shape}, got {lq.shape}")
    top = float(lq.max())
    if top > _LOG_Q_SLACK:
        raise ValueError(f"log_q: expected log-probabilities <= 0, got a maximum of {top!r}")
    return a_, lq
