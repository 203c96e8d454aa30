"""The repository's statistics: the G-test of every sampler check, and the comparison's paired-seed intervals.

The goodness-of-fit test is a G-test with conservative binning.

Every statement "these draws follow P" in the repository (the conformance
kit's sampler check, the tests of ``sample_softmax``, of the miners, of the
plain samplers, the proofs P4, P6 and P12) is this one test:
:func:`g_test` of the observed counts against the exact probabilities.

G = 2 sum_j O_j log(O_j / E_j) over groups j of bins, divided by Williams'
correction q = 1 + (J + 1) / (6 n), is approximately chi-square with J - 1
degrees of freedom under H0 (the counts are a multinomial draw from P).
Bins are merged until every group expects at least :data:`MIN_EXPECTED` = 20
draws (:func:`merge_small_bins`); the grouping depends on n P only, never on
the observed counts, so the test stays valid.

Why 20 and not the textbook 5. Tests here fail at p < 1e-6, far in the tail
of the chi-square approximation. Simulating 10^6 exact count vectors for each
of three queries of the conformance kit (moderate, peaked, duplicates), the
rates of p < 1e-3, 1e-4, 1e-5 were within 0.8x-1.3x of nominal with groups
of >= 20 expected draws and Williams' correction; with the textbook minimum
of 5 they reached 2.1x at 1e-5, growing further into the tail.
``tests/test_conformance.py`` repeats this measurement (marked slow).

A draw of a bin whose probability is exactly 0 is impossible under H0 and
rejects outright (statistic ``inf``, p-value 0), whatever group it falls in.

References
----------
Sokal, Rohlf, *Biometry* (3rd ed., 1995), section 17.2 (G-test, Williams'
correction); Cochran, "Some methods for strengthening the common chi-square
tests", Biometrics 10 (1954) (expected-count rule).

Paired-seed intervals
---------------------
The comparison of miners (``python -m reference compare``, proofs/README.md
section 8) states every gap and every ratio of gaps with a confidence
interval over seeds, paired by seed (every miner of a seed shares the
dataset, the initialisation and the batches). Those intervals live here too:

- :func:`paired_t_interval`: the Student-t interval for the mean of n paired
  differences d_s, mean(d) +- t_{(1+c)/2, n-1} sd(d) / sqrt(n);
- :func:`fieller_interval`: Fieller's interval for a ratio of two paired
  means, mean(x) / mean(y): the set of r for which the paired t-test of
  x - r y does not reject mean(x - r y) = 0 at level 1 - c. It is bounded
  exactly when the t-interval of mean(y) excludes 0;
- :func:`verdict_at_most`: "supported" / "contradicted" / "undecided" for a
  statement "quantity <= bound" from such an interval.

Both assume the per-seed values are i.i.d. normal (per-seed pairs bivariate
normal for Fieller); with 3 to 5 seeds that is an assumption, not a check.

Fieller, "Some problems in interval estimation", J. R. Stat. Soc. B 16 (1954);
Student, "The probable error of a mean", Biometrika 6 (1908).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from reference._validation import as_float_array, check_positive

__all__ = [
    "MIN_EXPECTED", "GTestResult", "merge_small_bins", "williams_factor", "g_test",
    "CONFIDENCE", "Interval", "t_quantile", "paired_t_interval", "fieller_interval", "verdict_at_most",
]

#: Bins are merged until every group expects at least this many draws (the textbook
#: rule is 5; 20 keeps the G-test's far tail close to chi-square, see the module docstring).
MIN_EXPECTED = 20.0


def merge_small_bins(expected: Any, min_expected: float = MIN_EXPECTED) -> np.ndarray:
    """Group bins so that every group has expected count >= ``min_expected``.

    Bins with expected count >= ``min_expected`` stay on their own. The others
    are sorted by expected count (ascending) and merged greedily into
    consecutive groups that each reach ``min_expected``; a last group that
    falls short is merged into the previous small group, or, if there is
    none, into the smallest large bin. The grouping depends only on the
    expected counts, never on the observed ones, so the test stays valid.
    If the total is below ``min_expected`` everything ends in one group.

    Parameters
    ----------
    expected : array_like, shape (J,)
        Expected counts n P(y) (non-negative, finite).
    min_expected : float, default 20.0
        Minimum expected count per group (the textbook rule of thumb is 5;
        the default is stricter for the far tail, see the module docstring).

    Returns
    -------
    numpy.ndarray of int64, shape (J,)
        Group label of every bin, in ``0 .. G-1``.
    """
    e = as_float_array(expected, "expected", ndim=1)
    if (e < 0).any():
        raise ValueError(f"expected: expected non-negative counts, got minimum {e.min()!r}")
    m = check_positive(min_expected, "min_expected")
    order = np.argsort(e, kind="stable")
    es = e[order]
    n_small = int(np.searchsorted(es, m, side="left"))  # es[:n_small] < m
    labels = np.empty(e.size, dtype=np.int64)
    cum = np.cumsum(es[:n_small])
    group, start, base, last_sum = 0, 0, 0.0, m
    while start < n_small:  # a loop over groups, not over bins
        end = min(int(np.searchsorted(cum, base + m, side="left")), n_small - 1)
        labels[start : end + 1] = group
        last_sum = cum[end] - base
        base, start, group = cum[end], end + 1, group + 1
    # large bins: one group each, after the small ones
    labels[n_small:] = group + np.arange(e.size - n_small)
    if n_small and last_sum < m:  # the last small group is short
        if group >= 2:
            labels[labels == group - 1] = group - 2
        elif e.size > n_small:
            labels[labels == group - 1] = group  # join the smallest large bin
    out = np.empty_like(labels)
    out[order] = labels
    return np.unique(out, return_inverse=True)[1].astype(np.int64).reshape(e.shape)


def williams_factor(groups: int, n: int) -> float:
    """Williams' correction q = 1 + (J + 1) / (6 n) for J groups and n draws (G / q ~ chi-square(J - 1))."""
    return 1.0 + (groups + 1) / (6.0 * n)


@dataclass(frozen=True)
class GTestResult:
    """Result of :func:`g_test`.

    Attributes
    ----------
    statistic : float
        The G statistic with Williams' correction, G / (1 + (J + 1) / (6 n));
        ``inf`` when a bin of probability 0 was observed.
    df : int
        Degrees of freedom J - 1 (J merged groups); 0 means no test was possible.
    p_value : float
        Upper tail of chi-square(df) at ``statistic`` (1.0 when df == 0 and
        nothing impossible was observed; 0.0 when something was).
    labels : ndarray (bins,)
        Group of every original bin (see :func:`merge_small_bins`).
    observed, expected : ndarray (J,)
        Observed and expected counts per group.
    """

    statistic: float
    df: int
    p_value: float
    labels: np.ndarray
    observed: np.ndarray
    expected: np.ndarray


def g_test(observed: Any, probabilities: Any, *, min_expected: float = MIN_EXPECTED) -> GTestResult:
    """Likelihood-ratio (G) goodness-of-fit test of counts against probabilities.

    G = 2 sum_j O_j log(O_j / E_j) over the merged groups j (E_j = n P(group j)),
    divided by Williams' correction q = 1 + (J + 1) / (6 n), is approximately
    chi-square with J - 1 degrees of freedom under H0: the counts are a
    multinomial draw from ``probabilities``. Merging (expected >= 20 per group)
    and the correction keep the approximation conservative in the tail (module
    docstring). A count in a bin of probability exactly 0 gives G = inf, p = 0.

    Parameters
    ----------
    observed : array_like of int, shape (bins,)
        Counts per bin (their sum is n), e.g. ``np.bincount(ids, minlength=bins)``.
    probabilities : array_like, shape (bins,)
        Probabilities under H0 (non-negative, summing to 1 within 1e-6).
    min_expected : float, default 20.0
        Minimum expected count per merged group.

    Returns
    -------
    GTestResult

    References
    ----------
    Sokal, Rohlf, *Biometry* (3rd ed., 1995), section 17.2 (G-test, Williams'
    correction); Cochran, "Some methods for strengthening the common
    chi-square tests", Biometrics 10 (1954) (expected-count rule).
    """
    o = np.asarray(observed)
    if o.ndim != 1 or o.dtype.kind not in "iu" or (o.size and o.min() < 0):
        raise ValueError(f"observed: expected a 1-D array of non-negative integer counts, got {o.dtype} {o.shape}")
    p = as_float_array(probabilities, "probabilities", shape=(o.size,))
    if (p < 0).any() or abs(p.sum() - 1.0) > 1e-6:
        raise ValueError(f"probabilities: expected non-negative values summing to 1, got sum {p.sum()!r}")
    n = int(o.sum())
    if n == 0:
        raise ValueError("observed: expected at least one count, got all zeros")
    expected = n * p
    labels = merge_small_bins(expected, min_expected)
    J = int(labels.max()) + 1
    og = np.bincount(labels, weights=o, minlength=J)
    eg = np.bincount(labels, weights=expected, minlength=J)
    pos = og > 0
    if ((o > 0) & (p == 0)).any() or (pos & (eg <= 0)).any():
        G = math.inf  # an impossible draw under H0
    else:
        G = 2.0 * float(np.sum(og[pos] * np.log(og[pos] / eg[pos])))
        G = max(G, 0.0) / williams_factor(J, n)  # rounding can make a perfect fit a few ulp negative
    df = J - 1
    if math.isinf(G):
        p_value = 0.0
    else:
        p_value = float(stats.chi2.sf(G, df)) if df > 0 else 1.0
    return GTestResult(statistic=G, df=df, p_value=p_value, labels=labels, observed=og, expected=eg)


# --------------------------------------------------------------------------- paired-seed intervals

#: Confidence of every interval the comparison reports (two-sided).
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate and its two-sided confidence interval.

    Attributes
    ----------
    estimate : float or None
        The point estimate (None: undefined, e.g. a ratio over a zero mean).
    lo, hi : float or None
        The interval's ends; None when the interval is unbounded on that
        side or cannot be formed (fewer than two values).
    n : int
        Number of (paired) values.
    confidence : float
        Confidence level c of the interval.
    method : str
        ``"t"`` (:func:`paired_t_interval`) or ``"fieller"`` (:func:`fieller_interval`).
    note : str
        Why an end is missing ("" when both are there).
    """

    estimate: float | None
    lo: float | None
    hi: float | None
    n: int
    confidence: float
    method: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (None for a missing end; never NaN or inf)."""
        return {"estimate": self.estimate, "lo": self.lo, "hi": self.hi, "n": self.n,
                "confidence": self.confidence, "method": self.method, "note": self.note}


def _confidence(confidence: Any) -> float:
    c = check_positive(confidence, "confidence")
    if not c < 1.0:
        raise ValueError(f"confidence: expected a number in (0, 1), got {confidence!r}")
    return c


def t_quantile(confidence: float, df: int) -> float:
    """The two-sided Student-t critical value t_{(1+c)/2, df} (``scipy.stats.t.ppf``)."""
    c = _confidence(confidence)
    if isinstance(df, bool) or not isinstance(df, (int, np.integer)) or df < 1:
        raise ValueError(f"df: expected an integer >= 1, got {df!r}")
    return float(stats.t.ppf(0.5 + c / 2.0, int(df)))


def _paired(values: Any, name: str) -> np.ndarray:
    return as_float_array(values, name, ndim=1, allow_empty=False)


def paired_t_interval(differences: Any, confidence: float = CONFIDENCE) -> Interval:
    """Student-t confidence interval for the mean of paired differences.

    mean(d) +- t_{(1+c)/2, n-1} sd(d) / sqrt(n), with sd the sample standard
    deviation (ddof = 1): the interval of the one-sample t-test of d against 0.

    Parameters
    ----------
    differences : array_like, shape (n,)
        One difference per seed (finite).
    confidence : float, default 0.95
        Confidence level c in (0, 1).

    Returns
    -------
    Interval
        ``method="t"``; with n = 1, ``lo = hi = None`` (no spread to estimate).
    """
    d = _paired(differences, "differences")
    c = _confidence(confidence)
    n, mean = d.size, float(d.mean())
    if n < 2:
        return Interval(mean, None, None, n, c, "t", "one value: no interval")
    half = t_quantile(c, n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, c, "t")


def fieller_interval(x: Any, y: Any, confidence: float = CONFIDENCE) -> Interval:
    """Fieller's confidence interval for mean(x) / mean(y) from paired values.

    With a = mean(x), b = mean(y) and the sample (co)variances of the means
    v_xx, v_yy, v_xy (ddof = 1, divided by n), the interval is the set of r
    with (a - r b)^2 <= t^2 (v_xx - 2 r v_xy + r^2 v_yy), t = t_{(1+c)/2, n-1}:
    the r at which the paired t-test of x - r y does not reject a zero mean.
    It is the interval between the roots of A r^2 - 2 B r + C with
    A = b^2 - t^2 v_yy, B = a b - t^2 v_xy, C = a^2 - t^2 v_xx when A > 0,
    i.e. when the t-interval of mean(y) excludes 0; otherwise the set is
    unbounded (the whole line, or two rays) and both ends are None.

    Parameters
    ----------
    x, y : array_like, shape (n,)
        Numerator and denominator values, paired (same seed at the same index).
    confidence : float, default 0.95
        Confidence level c in (0, 1).

    Returns
    -------
    Interval
        ``method="fieller"``, ``estimate = a / b`` (None if b == 0).

    References
    ----------
    Fieller, "Some problems in interval estimation", J. R. Stat. Soc. B 16
    (1954) 175-185.
    """
    xs, ys = _paired(x, "x"), _paired(y, "y")
    if xs.shape != ys.shape:
        raise ValueError(f"x, y: expected paired values of one shape, got {xs.shape} and {ys.shape}")
    c = _confidence(confidence)
    n, a, b = xs.size, float(xs.mean()), float(ys.mean())
    estimate = a / b if b != 0.0 else None
    if n < 2:
        return Interval(estimate, None, None, n, c, "fieller", "one value: no interval")
    cov = np.cov(np.stack([xs, ys]), ddof=1) / n
    v_xx, v_yy, v_xy = float(cov[0, 0]), float(cov[1, 1]), float(cov[0, 1])
    t2 = t_quantile(c, n - 1) ** 2
    A, B, C = b * b - t2 * v_yy, a * b - t2 * v_xy, a * a - t2 * v_xx
    if not A > 0.0:
        return Interval(estimate, None, None, n, c, "fieller",
                        "unbounded: mean(y) is not distinguishable from 0 at this confidence")
    root = math.sqrt(max(B * B - A * C, 0.0))  # >= 0 up to rounding: r = a / b satisfies the inequality
    q = B + math.copysign(root, B)  # the roots q / A and C / q, without cancellation
    ends = sorted([q / A, C / q if q != 0.0 else 0.0])
    return Interval(estimate, ends[0], ends[1], n, c, "fieller")


def verdict_at_most(interval: Interval, bound: float) -> str:
    """The verdict on "the quantity is at most ``bound``" from its confidence interval.

    ``"supported"`` when the interval lies entirely at or below ``bound``
    (hi <= bound), ``"contradicted"`` when it lies entirely above it
    (lo > bound), ``"undecided"`` otherwise, including a missing end on the
    side that decides (an unbounded or unformed interval).
    """
    if not isinstance(interval, Interval):
        raise ValueError(f"interval: expected an Interval, got {type(interval).__name__}")
    bound = float(bound)
    if not math.isfinite(bound):
        raise ValueError(f"bound: expected a finite number, got {bound!r}")
    if interval.hi is not None and interval.hi <= bound:
        return "supported"
    if interval.lo is not None and interval.lo > bound:
        return "contradicted"
    return "undecided"
