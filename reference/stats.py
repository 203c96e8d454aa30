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
  statement "quantity <= bound" from such an interval;
- :func:`verdict_about`: the verdict on a statement "the ratio is *about*
  r0" (the paper's "reduces error by half": r0 = 0.5), from the ratio's
  Fieller interval and its denominator's t-interval, by a band
  [r0 / f, r0 f] stated in advance (f = :data:`ABOUT_FACTOR` = 1.5, so
  [1/3, 3/4] around one half);
- :func:`simulate_verdicts`: that rule's operating characteristics, the
  probability of each verdict when the true ratio is r (e.g. 0.5 and 1.0),
  by simulating S-seed experiments at a given seed-to-seed spread.

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
    "CONFIDENCE", "Interval", "t_quantile", "paired_t_interval", "fieller_interval", "fieller_ends",
    "verdict_at_most", "ABOUT_FACTOR", "VERDICTS", "about_band", "verdict_about", "simulate_verdicts",
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
    lo, hi = fieller_ends(np.array([a]), np.array([b]), np.array([cov[0, 0]]), np.array([cov[1, 1]]),
                          np.array([cov[0, 1]]), t_quantile(c, n - 1) ** 2)
    if np.isnan(lo[0]):
        return Interval(estimate, None, None, n, c, "fieller",
                        "unbounded: mean(y) is not distinguishable from 0 at this confidence")
    return Interval(estimate, float(lo[0]), float(hi[0]), n, c, "fieller")


def fieller_ends(a: np.ndarray, b: np.ndarray, v_xx: np.ndarray, v_yy: np.ndarray, v_xy: np.ndarray,
                 t2: float) -> tuple[np.ndarray, np.ndarray]:
    """The ends of Fieller's interval (:func:`fieller_interval`), elementwise over arrays of means and (co)variances.

    The roots of A r^2 - 2 B r + C with A = b^2 - t2 v_yy, B = a b - t2 v_xy,
    C = a^2 - t2 v_xx, taken as q / A and C / q with q = B + sign(B) sqrt(B^2 - A C)
    (no cancellation); NaN at both ends where A <= 0 (the set is unbounded).
    The one implementation of the ends: :func:`fieller_interval` and
    :func:`simulate_verdicts` call it. No argument checks (internal).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    A, B, C = b * b - t2 * v_yy, a * b - t2 * v_xy, a * a - t2 * v_xx
    bounded = A > 0.0
    root = np.sqrt(np.maximum(B * B - A * C, 0.0))  # >= 0 up to rounding: r = a / b satisfies the inequality
    q = B + np.copysign(root, B)
    with np.errstate(divide="ignore", invalid="ignore"):
        r1 = np.where(bounded, q / np.where(bounded, A, 1.0), np.nan)
        r2 = np.where(q != 0.0, C / np.where(q != 0.0, q, 1.0), 0.0)
    r2 = np.where(bounded, r2, np.nan)
    return np.fmin(r1, r2), np.fmax(r1, r2)


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


# --------------------------------------------------------------------------- "about r0": the verdict on a ratio claim

#: The band of "about r0": [r0 / ABOUT_FACTOR, r0 * ABOUT_FACTOR], symmetric on the log scale
#: ([1/3, 3/4] for "about half"). Fixed before any comparison was judged by it.
ABOUT_FACTOR = 1.5
#: The verdicts of :func:`verdict_about`, in the order of :func:`simulate_verdicts`' codes.
VERDICTS = ("supported", "contradicted", "exceeded", "undecided")


def about_band(target: float, factor: float = ABOUT_FACTOR) -> tuple[float, float]:
    """The band [target / factor, target * factor] of "about ``target``" (target > 0, factor > 1)."""
    r0 = check_positive(target, "target")
    f = check_positive(factor, "factor")
    if not f > 1.0:
        raise ValueError(f"factor: expected a number > 1, got {factor!r}")
    return r0 / f, r0 * f


def _about_codes(den_lo: np.ndarray, r_lo: np.ndarray, r_hi: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    """Indices into :data:`VERDICTS`, elementwise: the rule of :func:`verdict_about` (NaN ends: unbounded)."""
    lo_b, hi_b = band
    den_ok = den_lo > 0.0  # False for NaN (no interval)
    code = np.full(np.shape(den_lo), 3, dtype=np.int64)
    code[den_ok & (r_lo >= lo_b) & (r_hi <= hi_b)] = 0
    code[den_ok & (r_lo > hi_b)] = 1
    code[den_ok & (r_hi < lo_b)] = 2
    return code


def verdict_about(ratio: Interval, denominator: Interval, target: float,
                  factor: float = ABOUT_FACTOR) -> tuple[str, str]:
    """The verdict on "numerator / denominator is about ``target``", and the reason in words.

    With the band [lo_b, hi_b] = [target / factor, target * factor]
    (:func:`about_band`; [1/3, 3/4] for "about half" at the default factor 1.5):

    - ``"undecided"`` when the denominator's t-interval does not lie above 0
      (nothing to reduce, or fewer than two values): the ratio is then
      unbounded or meaningless;
    - ``"supported"`` when the ratio's Fieller interval lies inside the band,
      lo_b <= lo and hi <= hi_b;
    - ``"contradicted"`` when it lies entirely above the band (lo > hi_b:
      less reduction than claimed);
    - ``"exceeded"`` when it lies entirely below the band (hi < lo_b: more
      reduction than claimed; not "about" the target, but on its better side);
    - ``"undecided"`` otherwise (the interval straddles an end of the band).

    Each of the three decisive verdicts is reached with probability at most
    about (1 - c) / 2 when it is false (c the intervals' confidence): for
    "supported", a true ratio outside the band has its interval's far end
    on the wrong side with probability <= (1 - c) / 2 (two one-sided tests
    at the ends of the band). The probabilities under given true ratios and
    spreads are what :func:`simulate_verdicts` reports.

    Parameters
    ----------
    ratio : Interval
        Fieller's interval of mean(numerator) / mean(denominator).
    denominator : Interval
        The t-interval of the denominator's mean.
    target : float
        r0 > 0 (0.5 for "about half").
    factor : float, default ABOUT_FACTOR
        f > 1.

    Returns
    -------
    verdict : str
        One of :data:`VERDICTS`.
    reason : str
    """
    for name, v in (("ratio", ratio), ("denominator", denominator)):
        if not isinstance(v, Interval):
            raise ValueError(f"{name}: expected an Interval, got {type(v).__name__}")
    band = about_band(target, factor)
    if denominator.lo is None:
        return "undecided", "fewer than two seeds: no interval"
    if not denominator.lo > 0.0:
        where = "lies below 0" if denominator.hi is not None and denominator.hi < 0.0 else "includes 0"
        return "undecided", f"nothing to reduce: the denominator's {denominator.confidence:.0%} interval {where}"
    nan = float("nan")
    lo = nan if ratio.lo is None else ratio.lo
    hi = nan if ratio.hi is None else ratio.hi
    code = int(_about_codes(np.array([denominator.lo]), np.array([lo]), np.array([hi]), band)[0])
    verdict = VERDICTS[code]
    where = {"supported": "inside", "contradicted": "above", "exceeded": "below",
             "undecided": "not on one side of"}[verdict]
    if ratio.lo is None or ratio.hi is None:
        return "undecided", "the ratio's interval is unbounded"
    return verdict, f"ratio interval [{lo:.2f}, {hi:.2f}] {where} the band [{band[0]:.3g}, {band[1]:.3g}]"


def simulate_verdicts(x: Any, y: Any, ratios: Any = (0.5, 1.0), *, target: float = 0.5,
                      factor: float = ABOUT_FACTOR, confidence: float = CONFIDENCE, reps: int = 20000,
                      rng: np.random.Generator) -> dict[str, Any]:
    """Operating characteristics of :func:`verdict_about` at the observed seed-to-seed spread, by simulation.

    For each true ratio r in ``ratios``, ``reps`` experiments of S = len(x)
    paired seeds are drawn from the bivariate normal with mean
    (r mean(y), mean(y)) and the sample covariance (ddof = 1) of the
    observed pairs (x_s, y_s): the observed denominator and the observed
    spread and correlation, with the numerator's mean set to r times the
    denominator's. Each experiment is judged by exactly the rule of
    :func:`verdict_about` (the denominator's t-interval, Fieller's interval
    of the ratio by :func:`fieller_ends`, the band). Returns the fraction
    of each verdict: a Monte Carlo estimate with standard error at most
    0.5 / sqrt(reps) (0.0035 at 20000).

    Parameters
    ----------
    x, y : array_like, shape (S,)
        Observed per-seed numerators and denominators (S >= 2).
    ratios : sequence of float
        True ratios to simulate.
    target, factor, confidence
        The rule's parameters.
    reps : int, default 20000
    rng : numpy.random.Generator
        The only source of randomness.

    Returns
    -------
    dict
        ``seeds`` (S), ``reps``, ``mean_y``, ``cov`` (2 x 2, as a nested
        list) and ``by_ratio``: a list of ``{"ratio", "p": {verdict:
        fraction}}`` in the order of ``ratios``.
    """
    xs, ys = _paired(x, "x"), _paired(y, "y")
    if xs.shape != ys.shape or xs.size < 2:
        raise ValueError(f"x, y: expected paired values of one shape, at least 2, got {xs.shape} and {ys.shape}")
    if isinstance(reps, bool) or not isinstance(reps, (int, np.integer)) or reps < 1:
        raise ValueError(f"reps: expected an integer >= 1, got {reps!r}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    c = _confidence(confidence)
    band = about_band(target, factor)
    rs = [float(r) for r in np.atleast_1d(np.asarray(ratios, dtype=np.float64))]
    S, my = xs.size, float(ys.mean())
    cov = np.cov(np.stack([xs, ys]), ddof=1)
    t = t_quantile(c, S - 1)
    # a symmetric square root of the (positive semi-definite) covariance: draws = mean + z L^T
    w, v = np.linalg.eigh(cov)
    root = v * np.sqrt(np.maximum(w, 0.0))
    out = []
    for r in rs:
        z = rng.standard_normal((reps, S, 2)) @ root.T + np.array([r * my, my])
        X, Y = z[..., 0], z[..., 1]
        a, b = X.mean(axis=1), Y.mean(axis=1)
        dx, dy = X - a[:, None], Y - b[:, None]
        v_xx, v_yy = (dx * dx).sum(axis=1) / (S - 1) / S, (dy * dy).sum(axis=1) / (S - 1) / S
        v_xy = (dx * dy).sum(axis=1) / (S - 1) / S
        den_lo = b - t * np.sqrt(v_yy)
        lo, hi = fieller_ends(a, b, v_xx, v_yy, v_xy, t * t)
        codes = _about_codes(den_lo, lo, hi, band)
        counts = np.bincount(codes, minlength=len(VERDICTS))
        out.append({"ratio": r, "p": {k: float(counts[i]) / reps for i, k in enumerate(VERDICTS)}})
    return {"seeds": S, "reps": int(reps), "mean_y": my, "cov": cov.tolist(), "by_ratio": out}
