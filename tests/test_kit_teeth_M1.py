"""Teeth for the kit's statistics, top-k classification, runner and sampler, closed by theme (helper M1).

Survivors of the conformance kit's mutation sample (tests/mutation/survivors.md, `not yet killed`)
and defects found with them. Each test pins a whole kind of behaviour:

- detectable_tv equals an independent bisection of its documented definition, over levels and
  powers whose root lambda is below 1 (alpha close to power) and above 1;
- classify_topk's answer does not depend on how its queries are split into blocks (d < B, d > B,
  N = 1, a last short block), and every refusal names the caller's argument (a defect: non-finite
  input was refused as topk_ids' ``scores``, a wrong ``got`` shape was not refused at all);
- fitting_checks over the signature shapes of a bare dynamic_build and its neighbours;
- every field of the Case a sampler scenario yields when the backend fails;
- a distribution with one live target (a point mass) is checkable: its draws are judged by the
  impossible-draw rule, so the sample size is finite (a defect: sample_size_for_tv raised);
- every ValueError of statistics.py names the argument, the expected range and the value received.

Deterministic: fixed data, the only sampler runs use a fixed seed and are exact or always wrong.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from reference.conformance import check_sampler, classify_topk
from reference.conformance import topk as topk_module
from reference.conformance.reference_backend import REFERENCE_BACKEND
from reference.conformance.runner import fitting_checks
from reference.conformance.sampler import SamplerScenario, sampler_scenarios
from reference.conformance.statistics import detectable_tv, point_mass_tv, power_against, sample_size_for_tv
from reference.softmax import topk_ids


# ---------------------------------------------------------------- detectable_tv


def _root_lambda(c: float, df: int, power: float) -> float:
    """lambda* with ncx2.sf(c, df, lambda*) = power, by plain bisection (200 halvings)."""
    lo, hi = 0.0, 1.0
    while stats.ncx2.sf(c, df, hi) < power:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if stats.ncx2.sf(c, df, mid) < power:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# (probabilities, n, J merged groups by hand)
_DISTRIBUTIONS = [
    (np.full(10, 0.1), 1000, 10),  # 100 expected per bin: no merging
    # expected 500, 300, 190, 5, 5: the two small bins (10 together, short of 20) join the
    # smallest large bin, leaving 3 groups
    (np.array([0.5, 0.3, 0.19, 0.005, 0.005]), 1000, 3),
]
_LEVELS = [(0.5, 0.51), (0.3, 0.35), (0.1, 0.2), (0.01, 0.9), (1e-6, 0.9), (1e-6, 0.999)]


def test_detectable_tv_is_the_root_of_its_definition_for_lambda_below_and_above_1():
    """detectable_tv = sqrt(lambda* / 4n) with ncx2.sf(c, J - 1, lambda*) = power and
    c = chi2.isf(alpha, J - 1) (1 + (J + 1) / 6n), lambda* found here by bisection: 4 n delta^2
    within brentq's xtol (1e-6 hi, hi < 2 max(1, c, lambda*) the end of its bracket) of lambda*,
    over levels where lambda* < 1 (alpha close to power: a bracket starting at 1 has no sign
    change) and > 1. Kills statistics.x_detectable_tv__mutmut_94 (bracket [1, hi]: raises)."""
    below = above = 0
    for p, n, J in _DISTRIBUTIONS:
        for alpha, power in _LEVELS:
            c = stats.chi2.isf(alpha, J - 1) * (1.0 + (J + 1) / (6.0 * n))
            lam = _root_lambda(c, J - 1, power)
            below += lam < 1
            above += lam > 1
            got = detectable_tv(p, n, alpha, power=power)
            assert abs(4.0 * n * got**2 - lam) <= 2e-6 * max(1.0, c, lam), (J, alpha, power)
    assert below >= 4 and above >= 4


# ---------------------------------------------------------------- classify_topk


def _topk_case(N: int, d: int, B: int, k: int, seed: int):
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((N, d))
    queries = rng.standard_normal((B, d))
    got = topk_ids(queries @ points.T, k).astype(np.int64)
    # spoil some rows in different ways, so verdicts and details differ from row to row
    if B > 1 and N > k:
        got[1, -1] = topk_ids(queries[1:2] @ points.T, k + 1)[0, k]  # a missing neighbour
    if B > 2:
        got[2, 0] = N  # an invalid id
    if B > 4 and k > 1:
        got[4, [0, 1]] = got[4, [1, 0]]  # unsorted
    return points, queries, got


@pytest.mark.parametrize("N, d, B, k", [(10, 2, 7, 3), (10, 9, 7, 3), (6, 3, 11, 1), (1, 2, 5, 1), (1, 8, 3, 1)])
def test_classify_topk_does_not_depend_on_its_blocks(monkeypatch, N, d, B, k):
    """classify_topk returns one result per query, the same row for row (kind, recall and detail
    naming the global query index) whatever the block of rows: one block, blocks of 1, 2 and 3
    rows (a last short block), for d < B and d > B and N = 1. Kills
    topk.x_classify_topk__mutmut_47 (blocks over range(d): queries dropped when d < B)."""
    points, queries, got = _topk_case(N, d, B, k, seed=N * 100 + d)
    whole = classify_topk(points, queries, got, k)
    assert len(whole) == B
    assert whole[2][0] == "invalid id" if B > 2 else True
    for b, (kind, _, detail) in enumerate(whole):
        if kind is not None:
            assert detail.startswith(f"query {b}")
    for rows in (1, 2, 3):
        monkeypatch.setattr(topk_module, "_BLOCK_ENTRIES", rows * N)
        assert classify_topk(points, queries, got, k) == whole, rows


def test_classify_topk_refusals_name_the_callers_argument():
    """Every refusal of classify_topk is a ValueError naming its argument as the public signature
    calls it (points, queries, got, k, dtype), with what came; non-finite points or queries, and
    finite ones whose logits overflow, are refused before any block is classified (they used to be
    refused by topk_ids as ``scores`` with a count per block; a ``got`` of the wrong shape was not
    refused at all). The first overflowing query is named by its global index."""
    rng = np.random.default_rng(7)
    P, Q = rng.standard_normal((5, 3)), rng.standard_normal((4, 3))
    ok = topk_ids(Q @ P.T, 2)

    def refuses(name, *args, **kwargs):
        with pytest.raises(ValueError) as info:
            classify_topk(*args, **kwargs)
        assert str(info.value).startswith(f"{name}:"), str(info.value)
        return str(info.value)

    bad_P = P.copy()
    bad_P[3, 1] = np.nan
    bad_Q = Q.copy()
    bad_Q[2, 0] = np.inf
    refuses("points", bad_P, Q, ok, 2)
    refuses("queries", P, bad_Q, ok, 2)
    refuses("points", P[:, 0], Q, ok, 2)
    assert "got (4, 2)" in refuses("queries", P, Q[:, :2], ok, 2)
    assert "got (3, 2)" in refuses("got", P, Q, ok[:3], 2)
    assert "got (4, 1)" in refuses("got", P, Q, ok[:, :1], 2)
    assert "float64" in refuses("got", P, Q, ok.astype(float), 2)
    refuses("k", P, Q, ok, 6)
    refuses("k", P, Q, ok, 0)
    refuses("dtype", P, Q, ok, 2, "float16")
    huge_P = np.array([[1e200, 0.0], [0.0, 1.0]])
    huge_Q = np.array([[0.0, 1.0], [1e200, 0.0], [1e200, 0.0]])
    message = refuses("points, queries", huge_P, huge_Q, np.array([[1], [0], [0]]), 1)
    assert "at query 1, target 0" in message


# ---------------------------------------------------------------- fitting_checks


def _bare(points):
    return points


def _leaf(points, leaf_size=8):
    return points


def _seeded(points, *, seed=0):
    return points


def _kwargs(points, **options):
    return points


def _other_name(x):
    return x


def _star(*args):
    return args


def _points_star(points, *args):
    return points


def _topk_like(points, queries, k):
    return points


def _topk_defaults(points, queries=None, k=5):
    return points


def _sampler_like(points, queries, n, seed):
    return points


@pytest.mark.parametrize("fn, expected", [
    (_bare, ["dynamic"]),
    (_leaf, ["dynamic"]),  # more parameters, the rest defaulted: still a bare dynamic_build
    (_seeded, ["dynamic"]),
    (_kwargs, ["dynamic"]),
    (_other_name, []),  # one parameter not called points: too common to claim
    (_star, ["sampler", "bracket", "topk", "nystrom"]),  # binds anything positional, names nothing
    (_points_star, ["dynamic"]),  # binds every positional protocol; only dynamic's names match
    (_topk_like, ["topk"]),
    (_topk_defaults, ["bracket", "topk", "dynamic"]),  # two protocols' names match: all stay
    (_sampler_like, ["sampler"]),
    (max, ["sampler", "encoder", "bracket", "topk", "nystrom"]),  # no signature: not recognised as dynamic
])
def test_fitting_checks_over_signature_shapes(fn, expected):
    """fitting_checks over the shapes of the theme: a bare dynamic_build whose first parameter is
    ``points`` is recognised whatever follows (defaulted, keyword-only, **kwargs, *args), a lone
    parameter of another name is not, and the name rule picks one protocol only when exactly one
    protocol's names match. Kills runner.x_fitting_checks__mutmut_14 ([:2] == ('points',))."""
    assert fitting_checks(fn) == expected


# ---------------------------------------------------------------- check_sampler error cases


def _raises(points, queries, n, seed):
    raise RuntimeError("boom")


def _wrong_shape(points, queries, n, seed):
    return np.zeros((queries.shape[0], n + 1), dtype=np.int64)


@pytest.mark.parametrize("sample, what", [(_raises, "raised RuntimeError: boom"),
                                          (_wrong_shape, "output: expected shape")])
def test_check_sampler_backend_error_case_fields(sample, what):
    """Every scenario case of check_sampler for a backend that raises or returns the wrong shape
    has every field documented: the scenario's name, its statistic string, NaN, the per-query
    level alpha / 32 (32 queries over the default scenarios), '>=', failed, the error as worst and
    headline, no note, not skipped, kind 'backend error'. Kills
    sampler.x_check_sampler__mutmut_99 (statistic None)."""
    scenarios = sampler_scenarios()
    assert sum(sc.queries.shape[0] for sc in scenarios) == 32
    report = check_sampler(sample, alpha=1e-6)
    assert len(report.cases) == 1 + len(scenarios)
    for sc, case in zip(scenarios, report.cases[1:]):
        assert case.scenario == sc.name
        assert case.statistic == f"smallest G-test p-value over {sc.queries.shape[0]} queries"
        assert math.isnan(case.value)
        assert case.threshold == 1e-6 / 32
        assert case.relation == ">="
        assert case.passed is False
        assert what in case.worst
        assert case.headline == case.worst
        assert case.note == ""
        assert case.skipped is False
        assert case.kind == "backend error"


# ---------------------------------------------------------------- one live target


def test_one_live_target_is_a_point_mass_with_a_finite_sample_size():
    """A distribution with one target of probability >= 1e-30 (every other draw fails on its
    own): a TV error delta puts delta on impossible targets, caught with probability
    1 - (1 - delta)^n, so point_mass_tv is 1 - (1 - power)^(1/n) and sample_size_for_tv needs
    n >= log(1 - power) / log(1 - tv) (at least its starting 80 draws) instead of raising; a row
    with more live targets keeps its own requirement; power_against agrees at that delta.
    (A defect: sample_size_for_tv raised for a point mass.)"""
    point = np.array([0.0, 1.0, 1e-40, 0.0])
    assert point_mass_tv(100, 0.9) == pytest.approx(1.0 - 0.1 ** (1 / 100), rel=1e-12)
    assert detectable_tv(point, 100, 1e-6) == math.inf  # the G-test alone has no degree of freedom
    assert sample_size_for_tv([[1.0]], 0.05, 1e-6) == 80
    assert sample_size_for_tv(point, 0.05, 1e-6) == 80
    n = sample_size_for_tv(point, 0.01, 1e-6, power=0.999)
    assert n == math.ceil(math.log(0.001) / math.log(0.99)) == 688
    assert point_mass_tv(n, 0.999) <= 0.01 < point_mass_tv(n - 1, 0.999)
    spread = np.full(10, 0.1)
    assert sample_size_for_tv(np.vstack([np.r_[point, np.zeros(6)], spread]), 0.05, 1e-6) == \
        sample_size_for_tv(spread, 0.05, 1e-6)
    delta = point_mass_tv(n, 0.999)
    assert power_against(point, point + np.array([delta, -delta, 0.0, 0.0]), n, 1e-6) == pytest.approx(0.999, rel=1e-12)
    for bad, name in [(lambda: point_mass_tv(0, 0.9), "n"), (lambda: point_mass_tv(10, 1.0), "power")]:
        with pytest.raises(ValueError, match=f"^{name}: "):
            bad()


def test_check_sampler_with_one_live_target():
    """check_sampler runs a scenario of one target (N = 1) and one of one live target among
    several (logit 1e4 against 0): the exact sampler passes both, with a finite detectable TV in
    the note; a sampler drawing an impossible target fails as an impossible draw."""
    scenarios = [
        SamplerScenario("one", np.array([[1.0, 2.0]]), np.array([[0.5, 0.5], [3.0, -1.0]]), "N = 1"),
        SamplerScenario("one-live", np.array([[100.0], [0.0], [-5.0]]), np.array([[100.0], [100.0]]),
                        "one live target"),
    ]
    report = check_sampler(REFERENCE_BACKEND.sample, scenarios=scenarios, seed=3)
    assert [c.passed for c in report.cases] == [True, True, True]
    for case in report.cases[1:]:
        assert f"n = 80 draws per query; the test detects any TV error >= {point_mass_tv(80, 0.9):.3f}" in case.note

    def leaky(points, queries, n, seed):
        ids = np.zeros((queries.shape[0], n), dtype=np.int64)
        ids[:, -1] = points.shape[0] - 1
        return ids

    report = check_sampler(leaky, scenarios=scenarios[1:], seed=3)
    assert report.cases[1].passed is False and "an impossible draw" in report.cases[1].headline


# ---------------------------------------------------------------- statistics' refusals


@pytest.mark.parametrize("call, name, expected, received", [
    (lambda: detectable_tv([0.5, 0.5], 100, 2.0), "alpha", "(0, 1)", "2.0"),
    (lambda: detectable_tv([0.5, 0.5], 100, 0.0), "alpha", "(0, 1)", "0.0"),
    (lambda: detectable_tv([0.5, 0.5], 100, 0.95, power=0.9), "power", "(alpha=0.95, 1)", "0.9"),
    (lambda: detectable_tv([0.5, 0.5], 100, 0.01, power=1.0), "power", "(alpha=0.01, 1)", "1.0"),
    (lambda: detectable_tv([0.5, 0.5], 0, 0.01), "n", ">= 1", "0"),
    (lambda: detectable_tv([1.5, -0.5], 100, 0.01), "probabilities", "non-negative", "-0.5"),
    (lambda: detectable_tv([0.5, 0.5], 100, 0.01, min_expected=0.0), "min_expected", "> 0", "0.0"),
    (lambda: power_against([0.5, 0.5], [1.0, -1.0], 100, 0.01), "alternative", "non-negative", "-1.0"),
    (lambda: power_against([0.5, 0.5], [0.0, 0.0], 100, 0.01), "alternative", "positive sum", "0.0"),
    (lambda: power_against([0.5, 0.5], [1.0, 1.0, 1.0], 100, 0.01), "alternative", "expected 2 non-negative", "got 3"),
    (lambda: power_against([0.5, 0.5], [1.0, 1.0], 100, 2.0), "alpha", "(0, 1)", "2.0"),
    (lambda: power_against([1.5, -0.5], [1.0, 1.0], 100, 0.01), "probabilities", "non-negative", "-0.5"),
    (lambda: power_against([0.5, 0.5], [1.0, 1.0], 0, 0.01), "n", ">= 1", "0"),
    (lambda: sample_size_for_tv([0.5, 0.5], 0.0, 0.01), "tv", "(0, 1)", "0.0"),
    (lambda: sample_size_for_tv([0.5, 0.5], 1.0, 0.01), "tv", "(0, 1)", "1.0"),
    (lambda: sample_size_for_tv([0.5, 0.5], 0.05, 1.5), "alpha", "(0, 1)", "1.5"),
    (lambda: sample_size_for_tv([0.5, 0.5], 0.05, 0.01, max_n=0), "max_n", ">= 1", "0"),
    (lambda: sample_size_for_tv([0.5, 0.5], 0.05, 0.01, max_n=63), "tv", "max_n=63", "first n tried is 80"),
    (lambda: sample_size_for_tv([0.5, 0.5], 0.05, 0.5, power=0.4, max_n=10), "power", "(alpha=0.5, 1)", "0.4"),
    (lambda: sample_size_for_tv([0.5, 0.5], 0.001, 0.01, max_n=100), "tv", "max_n=100", "detects only"),
    (lambda: sample_size_for_tv(np.ones((2, 2, 2)), 0.05, 0.01), "probabilities", "(B, bins)", "(2, 2, 2)"),
])
def test_statistics_refusals_name_argument_range_and_value(call, name, expected, received):
    """Every ValueError of statistics.py starts with the argument's name and states the expected
    range and the value received (power_against's `alternative` said neither what came nor, for a
    bad alpha, anything: it returned NaN; negative probabilities were refused as `expected`)."""
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert message.startswith(f"{name}:"), message
    assert expected in message and received in message, message
