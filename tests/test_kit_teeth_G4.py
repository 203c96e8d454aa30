"""Teeth for the conformance kit (helper G4): gaps recorded `not yet killed` in
tests/mutation/survivors.md, closed by theme.

1. every field of the backend-error cases of check_bracket and check_topk (check_encoder and
   check_nystrom are pinned by tests/test_kit_teeth_G1.py, check_sampler by test_kit_teeth_M1.py);
2. the sampler headline's count of rejected queries at the boundary p == alpha_q (the per-query
   rule is p >= alpha_q passes, so the count is of p < alpha_q), on both sides;
3. power_against's min_expected option against an independent computation, and its refusal of
   invalid values;
4. sample_size_for_tv's default max_n = 2000000, pinned by behaviour (the give-up message), not by
   the signature (mutmut's trampoline shows the original signature).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import stats

from reference.conformance import check_bracket, check_sampler, check_topk
from reference.conformance.bracket import BRACKET_RTOL, bracket_scenarios
from reference.conformance.sampler import SamplerScenario
from reference.conformance.statistics import power_against, sample_size_for_tv
from reference.conformance.topk import topk_scenarios
from reference.conformance._data import logits
from reference.softmax import softmax
from reference.stats import g_test


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("boom G4")


def _assert_error_case(case: Any, scenario: str, statistic: str, threshold: float, what: str) -> None:
    """Every field of a backend-error case (the message only by a distinctive part of it)."""
    assert case.scenario == scenario
    assert case.statistic == statistic
    assert isinstance(case.value, float) and math.isnan(case.value)
    assert case.threshold == threshold
    assert case.relation == "<="
    assert case.passed is False
    assert what in case.worst, (what, case.worst)
    assert case.headline == case.worst
    assert case.note == ""
    assert case.skipped is False
    assert case.kind == "backend error"


# ---------------------------------------------------------------- 1. backend-error cases


def _bracket(change: str) -> Any:
    def bracket(points: np.ndarray, queries: np.ndarray, tol: float) -> Any:
        B = queries.shape[0]
        if change == "raises":
            return _boom()
        if change == "shape":
            return np.zeros(B + 1), np.zeros(B + 1)
        return np.full(B, np.nan), np.zeros(B)  # non-finite
    return bracket


@pytest.mark.parametrize("change, what", [("raises", "boom G4"), ("shape", "expected lo and hi of shape"),
                                          ("non-finite", "non-finite values")])
def test_every_bracket_error_case_has_every_field(change: str, what: str) -> None:
    """Pins theme 1 for check_bracket on every default scenario: a raising call, a wrong shape and
    non-finite bounds give an error case with the check's statistic string, NaN, BRACKET_RTOL, '<=',
    failed, kind "backend error", headline = worst = the message, no note, not skipped.
    Kills bracket.x_check_bracket__mutmut_97 (statistic None)."""
    scenarios = bracket_scenarios()
    report = check_bracket(_bracket(change))
    assert len(report.cases) == len(scenarios)
    for sc, case in zip(scenarios, report.cases):
        _assert_error_case(case, sc.name, "largest violation / max(1, |log Z|)", BRACKET_RTOL, what)


def _topk(change: str) -> Any:
    def topk(points: np.ndarray, queries: np.ndarray, k: int) -> Any:
        B = queries.shape[0]
        if change == "raises":
            return _boom()
        if change == "float ids":
            return np.zeros((B, k))
        return np.zeros((B, k + 1), dtype=np.int64)  # shape
    return topk


@pytest.mark.parametrize("change, what", [("raises", "boom G4"),
                                          ("float ids", "expected integer ids, got dtype float64"),
                                          ("shape", "expected shape")])
def test_every_topk_error_case_has_every_field(change: str, what: str) -> None:
    """Pins theme 1 for check_topk on every default scenario: a raising call, float ids and a wrong
    shape give an error case with the statistic "number of queries with a wrong answer", NaN,
    threshold 0.0, '<=', failed, kind "backend error", headline = worst = the message, no note."""
    scenarios = topk_scenarios()
    report = check_topk(_topk(change))
    assert len(report.cases) == len(scenarios)
    for sc, case in zip(scenarios, report.cases):
        _assert_error_case(case, sc.name, "number of queries with a wrong answer", 0.0, what)
        if change == "shape":
            B = sc.queries.shape[0]
            assert case.worst == f"expected shape {(B, sc.k)}, got {(B, sc.k + 1)}"


# ---------------------------------------------------------------- 2. the sampler headline at p == alpha_q

_POINTS = np.array([[1.0, 0.0], [0.0, 1.0]])
_N = 925  # sample_size_for_tv(P, 0.05, alpha_q) for P = [0.549834, 0.450166] at the alpha_q below
_ONE = np.array([[0.3, 0.1]])
_P0 = g_test(np.array([482, 443]), softmax(logits(_POINTS, _ONE))[0]).p_value  # as check_sampler computes it


def _sample(points: np.ndarray, queries: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Query 0 gets 482 draws of target 0 and 443 of target 1 (p-value _P0); any other query
    only target 0 (p ~ 1e-242); the format case's small inputs get target 0 only."""
    ids = np.zeros((queries.shape[0], n), dtype=np.int64)
    if queries.shape == (2, 2) or queries.shape == (1, 2):
        assert n == _N, n
        ids[0, 482:] = 1
    return ids


@pytest.mark.parametrize("side, count", [("below", 1), ("equal", 1), ("above", 2)])
def test_the_sampler_headline_counts_the_queries_with_p_below_alpha_q(side: str, count: int) -> None:
    """Pins theme 2: the per-query rule is p >= alpha_q passes, and the headline's "N of B queries
    rejected" counts p < alpha_q. Two queries [0.3, 0.1] on points e1, e2 (P = [0.5498, 0.4502],
    n = 925): query 0's draws give p = _P0 exactly, query 1's are all target 0 (rejected anyway).
    alpha = 2 alpha_q with alpha_q one float below _P0, equal to it, one float above: 1, 1 and 2 of
    2 rejected. A one-query scenario at the same alpha_q passes below and at the boundary, fails
    above (the case's own rule). Kills sampler.x_check_sampler__mutmut_222 (<= in the count)."""
    assert _P0 == pytest.approx(0.07936915836707084, rel=1e-12)
    alpha_q = {"below": np.nextafter(_P0, 0.0), "equal": _P0, "above": np.nextafter(_P0, 1.0)}[side]
    two = SamplerScenario("two", _POINTS, np.array([[0.3, 0.1], [0.3, 0.1]]), "two queries")
    report = check_sampler(_sample, alpha=2.0 * alpha_q, scenarios=[two])
    assert report.cases[0].passed, report.cases[0]  # the format case
    case = report.cases[1]
    assert case.threshold == alpha_q and case.passed is False
    assert case.headline.startswith(f"the draws do not follow the softmax: {count} of 2 queries rejected by the G-test")
    one = SamplerScenario("one", _POINTS, _ONE, "one query")
    case = check_sampler(_sample, alpha=alpha_q, scenarios=[one]).cases[1]
    assert case.threshold == alpha_q and case.value == _P0
    assert case.passed is (side != "above")


# ---------------------------------------------------------------- 3. power_against's min_expected


def _power_by_hand(groups: list[list[int]], p: np.ndarray, q: np.ndarray, n: int, alpha: float) -> float:
    """The documented formula on given groups: ncx2.sf(c, J - 1, lambda), c = chi2.isf(alpha, J - 1)
    (1 + (J + 1) / (6 n)), lambda = n sum_j (Q_j - P_j)^2 / P_j."""
    J = len(groups)
    pg = np.array([p[g].sum() for g in groups])
    qg = np.array([q[g].sum() for g in groups])
    lam = n * float(np.sum((qg - pg) ** 2 / pg))
    c = stats.chi2.isf(alpha, J - 1) * (1.0 + (J + 1) / (6.0 * n))
    return float(stats.ncx2.sf(c, J - 1, lam))


def test_power_against_uses_its_min_expected_and_refuses_invalid_ones() -> None:
    """Pins theme 4: with P uniform on 10 bins and n = 100 (expected 10 per bin), min_expected = 5
    keeps the 10 bins, the default 20 merges them in pairs, 25 in groups 3, 3, 4; each result equals
    the documented formula on those groups, and the three differ. min_expected 0, -1, NaN, inf and
    a string raise a ValueError naming min_expected. Kills statistics.x_power_against__mutmut_76
    (min_expected not passed on)."""
    p = np.full(10, 0.1)
    q = np.r_[0.2, np.full(9, 0.8 / 9)]
    n, alpha = 100, 1e-3
    singles = [[j] for j in range(10)]
    pairs = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    threes = [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    got = {m: power_against(p, q, n, alpha, min_expected=m) for m in (5.0, 20.0, 25.0)}
    assert got[5.0] == pytest.approx(_power_by_hand(singles, p, q, n, alpha), rel=1e-12)
    assert got[20.0] == pytest.approx(_power_by_hand(pairs, p, q, n, alpha), rel=1e-12)
    assert got[20.0] == power_against(p, q, n, alpha)
    assert got[25.0] == pytest.approx(_power_by_hand(threes, p, q, n, alpha), rel=1e-12)
    assert got[5.0] == pytest.approx(0.14651466662761137, rel=1e-9)
    assert len({round(v, 6) for v in got.values()}) == 3
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match=f"^min_expected: expected a finite number > 0, got {bad!r}$"):
            power_against(p, q, n, alpha, min_expected=bad)
    with pytest.raises(ValueError, match="^min_expected: expected a positive number, got str '5'$"):
        power_against(p, q, n, alpha, min_expected="5")


# ---------------------------------------------------------------- 4. sample_size_for_tv's default max_n


def test_sample_size_for_tv_gives_up_above_the_default_max_n_of_two_million() -> None:
    """Pins theme 5 by behaviour: a TV of 0.001 at alpha 0.01 on [0.5, 0.5] needs more than two
    million draws; the default call raises naming max_n=2000000 (the same message as max_n=2000000
    given explicitly), and a larger max_n returns an n above two million. Kills
    statistics.x_sample_size_for_tv__mutmut_1 (default 2000001), also under mutmut."""
    with pytest.raises(ValueError) as default:
        sample_size_for_tv([0.5, 0.5], 0.001, 0.01)
    assert "max_n=2000000 " in str(default.value), str(default.value)
    with pytest.raises(ValueError) as explicit:
        sample_size_for_tv([0.5, 0.5], 0.001, 0.01, max_n=2_000_000)
    assert str(explicit.value) == str(default.value)
    assert sample_size_for_tv([0.5, 0.5], 0.001, 0.01, max_n=10_000_000) > 2_000_000
