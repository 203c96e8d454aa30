"""Tests of the paired-seed intervals of reference/stats.py (the G-test is tested with the samplers).

Each interval is checked against SciPy, which computes the same thing by
another route: the Student-t critical values against ``scipy.stats.t.ppf``
and a printed table; the paired t-interval against
``scipy.stats.ttest_1samp(...).confidence_interval``; Fieller's interval
through its definition, the set of ratios r at which the paired t-test of
x - r y does not reject (so at each end the test's p-value is exactly
1 - confidence). Tolerances: 1e-12 relative where the same float64 formula
is evaluated in another order; 1e-9 for p-values at the ends, which pass
through the t distribution's CDF.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from reference import stats

# Two-sided 95% critical values of Student's t (any printed table, e.g. Fisher and Yates, Table III).
TABLE_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262, 29: 2.045}


@pytest.mark.parametrize("df, value", sorted(TABLE_T975.items()))
def test_t_quantile_matches_scipy_and_the_printed_table(df, value):
    q = stats.t_quantile(0.95, df)
    assert q == sps.t.ppf(0.975, df)
    assert q == pytest.approx(value, abs=5e-4)  # the table's 3 decimals


def test_t_quantile_at_other_levels():
    assert stats.t_quantile(0.90, 4) == pytest.approx(2.132, abs=5e-4)
    assert stats.t_quantile(0.99, 4) == pytest.approx(4.604, abs=5e-4)


@pytest.mark.parametrize("seed, n", [(0, 2), (1, 3), (2, 5), (3, 10)])
def test_paired_t_interval_equals_scipys_one_sample_interval(seed, n):
    d = np.random.default_rng(seed).normal(0.1, 0.05, n)
    iv = stats.paired_t_interval(d)
    ref = sps.ttest_1samp(d, 0.0).confidence_interval(0.95)
    assert (iv.lo, iv.hi) == pytest.approx((ref.low, ref.high), rel=1e-12)
    assert iv.estimate == pytest.approx(d.mean(), rel=1e-12) and iv.n == n and iv.method == "t"


def test_paired_t_interval_known_value():
    """d = (1, 2, 3): mean 2, sd 1, half-width t_{0.975,2} / sqrt(3) = 4.302653 / 1.732051 = 2.484138."""
    iv = stats.paired_t_interval([1.0, 2.0, 3.0])
    assert (iv.lo, iv.hi) == pytest.approx((2.0 - 2.484138, 2.0 + 2.484138), abs=1e-6)


def test_paired_t_interval_of_one_value_has_no_ends():
    iv = stats.paired_t_interval([0.3])
    assert iv.estimate == 0.3 and iv.lo is None and iv.hi is None and "one value" in iv.note


@pytest.mark.parametrize("seed", range(6))
def test_fieller_ends_are_where_the_paired_t_test_stops_rejecting(seed):
    """At each end r the paired t-test of x - r y has p = 0.05; inside p > 0.05, just outside p < 0.05."""
    rng = np.random.default_rng(seed)
    n = 3 + seed
    y = rng.normal(0.2, 0.03, n)
    x = 0.4 * y + rng.normal(0.0, 0.02, n)
    iv = stats.fieller_interval(x, y)
    assert iv.method == "fieller" and iv.lo < iv.estimate < iv.hi
    assert iv.estimate == pytest.approx(x.mean() / y.mean(), rel=1e-12)
    # 1e-8 relative: SciPy's t quantile and t tail invert each other to about 1e-9 relative in
    # SciPy 1.10 (the oldest version allowed) and to about 1e-15 in later versions; a wrong
    # quantile (0.95 instead of 0.975) would give p = 0.1 here.
    for r in (iv.lo, iv.hi):
        assert sps.ttest_1samp(x - r * y, 0.0).pvalue == pytest.approx(0.05, rel=1e-8)
    width = iv.hi - iv.lo
    assert sps.ttest_1samp(x - iv.estimate * y, 0.0).pvalue > 0.05
    for r in (iv.lo - 0.01 * width, iv.hi + 0.01 * width):
        assert sps.ttest_1samp(x - r * y, 0.0).pvalue < 0.05


def test_fieller_is_unbounded_exactly_when_the_denominator_interval_contains_zero():
    y_clear, y_vague = [0.10, 0.12, 0.11, 0.13], [0.10, -0.08, 0.02, 0.01]
    x = [0.05, 0.06, 0.04, 0.07]
    assert stats.paired_t_interval(y_clear).lo > 0 and stats.fieller_interval(x, y_clear).hi is not None
    vague = stats.fieller_interval(x, y_vague)
    ty = stats.paired_t_interval(y_vague)
    assert ty.lo < 0 < ty.hi
    assert vague.lo is None and vague.hi is None and vague.note.startswith("unbounded")


def test_fieller_degenerate_inputs():
    """No spread: the interval is the point a / b; a zero denominator mean gives no estimate."""
    iv = stats.fieller_interval([1.0, 1.0, 1.0], [2.0, 2.0, 2.0])
    assert (iv.estimate, iv.lo, iv.hi) == (0.5, 0.5, 0.5)
    assert stats.fieller_interval([0.0, 0.0], [2.0, 2.0]).hi == 0.0
    zero = stats.fieller_interval([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    assert zero.estimate is None and zero.lo is None
    assert stats.fieller_interval([0.1], [0.2]).to_dict() == {
        "estimate": 0.5, "lo": None, "hi": None, "n": 1, "confidence": 0.95, "method": "fieller",
        "note": "one value: no interval"}


def test_verdict_at_most():
    iv = lambda lo, hi: stats.Interval(0.0, lo, hi, 5, 0.95, "t")  # noqa: E731
    assert stats.verdict_at_most(iv(0.1, 0.5), 0.5) == "supported"  # at the bound counts as at most
    assert stats.verdict_at_most(iv(0.51, 0.9), 0.5) == "contradicted"
    assert stats.verdict_at_most(iv(0.5, 0.9), 0.5) == "undecided"
    assert stats.verdict_at_most(iv(None, None), 0.5) == "undecided"


def test_interval_helpers_validate():
    with pytest.raises(ValueError, match="confidence"):
        stats.paired_t_interval([1.0, 2.0], confidence=1.0)
    with pytest.raises(ValueError, match="differences"):
        stats.paired_t_interval([1.0, math.nan])
    with pytest.raises(ValueError, match="x, y: expected paired values of one shape"):
        stats.fieller_interval([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="df"):
        stats.t_quantile(0.95, 0)
    with pytest.raises(ValueError, match="bound"):
        stats.verdict_at_most(stats.paired_t_interval([1.0, 2.0]), math.inf)
    with pytest.raises(ValueError, match="interval"):
        stats.verdict_at_most((0.0, 1.0), 0.5)


# --------------------------------------------------------------------------- "about half"


@pytest.mark.parametrize("num, den, verdict, reason", [
    ([0.05, 0.06, 0.04, 0.055, 0.05], [0.10, 0.12, 0.09, 0.11, 0.10], "supported", "inside the band [0.333, 0.75]"),
    ([0.09, 0.11, 0.10, 0.12, 0.08], [0.10, 0.12, 0.11, 0.13, 0.09], "contradicted", "above the band"),
    ([0.01, 0.012, 0.011, 0.013, 0.009], [0.10, 0.12, 0.11, 0.13, 0.09], "exceeded", "below the band"),
    ([0.02, 0.07, 0.03, 0.09, 0.06], [0.10, 0.12, 0.11, 0.13, 0.09], "undecided", "not on one side of"),
    ([0.01, 0.00, 0.01, 0.02, 0.00], [0.01, -0.01, 0.00, 0.02, -0.02], "undecided", "includes 0"),
    ([0.01, 0.00, 0.01, 0.02, 0.00], [-0.10, -0.12, -0.11, -0.13, -0.09], "undecided", "lies below 0"),
    ([0.05], [0.10], "undecided", "fewer than two seeds"),
])
def test_verdict_about_half_known_answers(num, den, verdict, reason):
    got = stats.verdict_about(stats.fieller_interval(num, den), stats.paired_t_interval(den), 0.5)
    assert got[0] == verdict and reason in got[1]


def test_verdict_about_reads_the_band_ends():
    """The band is [r0 / 1.5, r0 * 1.5]; an interval touching an end from inside is supported."""
    assert stats.about_band(0.5) == (0.5 / 1.5, 0.75)
    den = stats.Interval(1.0, 0.5, 1.5, 5, 0.95, "t")

    def iv(lo, hi):
        return stats.Interval(0.5, lo, hi, 5, 0.95, "fieller")

    assert stats.verdict_about(iv(0.5 / 1.5, 0.75), den, 0.5)[0] == "supported"
    assert stats.verdict_about(iv(0.3, 0.6), den, 0.5)[0] == "undecided"
    assert stats.verdict_about(iv(0.76, 0.9), den, 0.5)[0] == "contradicted"
    assert stats.verdict_about(iv(0.1, 0.3), den, 0.5)[0] == "exceeded"
    with pytest.raises(ValueError, match="factor"):
        stats.about_band(0.5, 1.0)
    with pytest.raises(ValueError, match="denominator"):
        stats.verdict_about(iv(0.4, 0.6), (0.5, 1.5), 0.5)


SPREAD = ([0.040, 0.055, 0.047, 0.062, 0.051], [0.090, 0.118, 0.101, 0.109, 0.094])
#: Three seeds, 8% spread: P(SUPPORTED | 0.5) is about 0.6, where the rule is most sensitive to a wrong quantile.
SPREAD3 = ([0.054, 0.046, 0.050], [0.092, 0.100, 0.108])


def test_simulated_operating_characteristics_match_a_direct_simulation():
    """simulate_verdicts (vectorised) against a loop over experiments through the scalar path
    (fieller_interval, paired_t_interval, verdict_about) with its own generator: the two fractions
    of SUPPORTED differ by less than 5 standard errors of their difference (false alarm ~6e-7)."""
    x, y = (np.asarray(v) for v in SPREAD3)
    fast = stats.simulate_verdicts(x, y, (0.5, 0.75, 1.0), reps=20000, rng=np.random.default_rng(1))
    assert 0.4 < fast["by_ratio"][0]["p"]["supported"] < 0.8  # the sensitive regime (measured 0.60)
    rng = np.random.default_rng(2)
    cov = np.cov(np.stack([x, y]), ddof=1)
    reps = 3000
    for entry in fast["by_ratio"]:
        r = entry["ratio"]
        hits = 0
        for _ in range(reps):
            z = rng.multivariate_normal([r * y.mean(), y.mean()], cov, size=x.size)
            v = stats.verdict_about(stats.fieller_interval(z[:, 0], z[:, 1]), stats.paired_t_interval(z[:, 1]), 0.5)
            hits += v[0] == "supported"
        p_fast, p_slow = entry["p"]["supported"], hits / reps
        pbar = (p_fast * 20000 + hits) / (20000 + reps)
        se = math.sqrt(max(pbar * (1 - pbar), 1e-4) * (1 / 20000 + 1 / reps))
        assert abs(p_fast - p_slow) < 5 * se, (r, p_fast, p_slow)
        assert sum(entry["p"].values()) == pytest.approx(1.0, abs=1e-12)


def test_supported_is_rare_when_the_true_ratio_is_at_the_band_end_or_beyond():
    """The rule's size: at a true ratio on the band's end (0.75) SUPPORTED needs the interval's upper end
    below the true ratio, which Fieller's 95% interval allows with probability about 2.5%; at 1.0 less.
    Bounds: 0.025 + 5 Monte Carlo standard errors (0.0055 at 20000 draws); at 0.5 the rule has power."""
    oc = stats.simulate_verdicts(*SPREAD, (0.5, 0.75, 1.0), reps=20000, rng=np.random.default_rng(3))
    p = {e["ratio"]: e["p"] for e in oc["by_ratio"]}
    assert p[0.75]["supported"] < 0.025 + 0.0055
    assert p[1.0]["supported"] < p[0.75]["supported"] + 0.0055 and p[1.0]["contradicted"] > 0.5
    assert p[0.5]["supported"] > 0.5
    assert oc["seeds"] == 5 and oc["reps"] == 20000


def test_simulate_verdicts_validates():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="x, y"):
        stats.simulate_verdicts([1.0], [2.0], rng=rng)
    with pytest.raises(ValueError, match="reps"):
        stats.simulate_verdicts([1.0, 2.0], [2.0, 3.0], reps=0, rng=rng)
    with pytest.raises(ValueError, match="rng"):
        stats.simulate_verdicts([1.0, 2.0], [2.0, 3.0], rng=0)
