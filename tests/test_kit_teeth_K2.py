"""Teeth for the conformance kit's sampler statistics, sampler, top-k and encoder checks, by theme.

The mutation sample of the kit (seeds 2331372295 2648788835 2540233516, 40 mutants per module
and seed, tests/mutation/survivors.md) left these kinds of behaviour unpinned:

1. Argument checks of the public functions of ``reference.conformance.statistics`` and
   ``reference.conformance.sampler`` (and the ``check_*`` entry points of the sampler, top-k
   and encoder): each refusal is a ValueError whose message names the caller's argument and
   what was expected (and what came: all but power_against's message for weights of the right
   dimension, which states only what it expected); the smallest number of draws, n = 1, is
   accepted.
2. The statistics functions against their documented formulas, recomputed here from the
   docstrings on every branch and option: ``detectable_tv`` at several ``min_expected``;
   ``power_against`` with one merged group (df = 0), two (df = 1), more, Q = P, all of Q's mass
   on impossible targets (no floating-point warning), and a target exactly at
   ``IMPOSSIBLE_PROBABILITY`` (possible: the rule is P < 1e-30, as in ``check_sampler``);
   ``sample_size_for_tv`` at the ends of its search (its floor, ``max_n`` inclusive, the
   caller's ``min_expected`` passed through).
3. The reports: one case per scenario whatever an earlier scenario did, and every case, of every
   kind (passed, failed, backend error, skipped), with the documented fields (``relation`` is
   "<=" or ">=", the check's own).
4. Determinism: two runs of the sampler, top-k or encoder check hand the backend bit-identical
   arguments, call for call (the sampler's format probes included).
5. The sampler's description of a failing query: a merged group lists its first five ids and
   ", ..." exactly when it has more than five.
6. ``sampler_failure_probabilities`` honours ``scenarios`` (its keys, and the same draws per
   query and per-query level as ``check_sampler`` with those scenarios) and refuses what
   ``check_sampler`` refuses (a non-callable, alpha outside (0, 1)); no scenario at all is an
   empty result, as in ``check_sampler``, not a division by zero.

Everything is deterministic: fixed scenarios, backends that do not draw at random, no timing.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

import numpy as np
import pytest
from scipy import optimize, stats

from reference.conformance import (
    ENCODER_RTOL,
    IMPOSSIBLE_PROBABILITY,
    SamplerScenario,
    check_encoder,
    check_sampler,
    check_topk,
    detectable_tv,
    encoder_scenarios,
    power_against,
    sample_size_for_tv,
    sampler_failure_probabilities,
    sampler_scenarios,
    topk_scenarios,
)
from reference.softmax import softmax
from reference.stats import merge_small_bins


def _zeros_sampler(points: np.ndarray, queries: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A sampler of the right format that always draws target 0 (cheap, deterministic, wrong)."""
    return np.zeros((queries.shape[0], n), dtype=np.int64)


def _exact_distribution(points: np.ndarray, queries: np.ndarray) -> np.ndarray:
    return softmax(queries @ points.T)


# ------------------------------------------------------------------ 1. argument checks

_P3 = np.array([0.2, 0.3, 0.5])

_REFUSALS = [
    ("check_sampler, sample", lambda: check_sampler(42), r"^sample: expected a callable, got int$"),
    ("check_sampler, alpha 0", lambda: check_sampler(_zeros_sampler, alpha=0.0),
     r"^alpha: expected a finite number > 0, got 0\.0$"),
    ("check_sampler, alpha 1", lambda: check_sampler(_zeros_sampler, alpha=1.0),
     r"^alpha: expected a false-alarm rate in \(0, 1\), got 1\.0$"),
    ("check_topk, topk", lambda: check_topk("topk"), r"^topk: expected a callable, got str$"),
    ("check_encoder, encoder", lambda: check_encoder(None), r"^encoder: expected a callable, got NoneType$"),
    ("sampler_failure_probabilities, distribution", lambda: sampler_failure_probabilities(3),
     r"^distribution: expected a callable, got int$"),
    ("sampler_failure_probabilities, alpha 0", lambda: sampler_failure_probabilities(_exact_distribution, alpha=0),
     r"^alpha: expected a finite number > 0, got 0$"),
    ("sampler_failure_probabilities, alpha 1",
     lambda: sampler_failure_probabilities(_exact_distribution, alpha=1.0),
     r"^alpha: expected a false-alarm rate in \(0, 1\), got 1\.0$"),
    ("detectable_tv, n 0", lambda: detectable_tv(_P3, 0, 1e-3), r"^n: expected an integer >= 1, got 0$"),
    ("detectable_tv, probabilities 2-D", lambda: detectable_tv(np.ones((2, 3)) / 3, 10, 1e-3),
     r"^probabilities: expected a 1-D array, got array of shape \(2, 3\)"),
    ("detectable_tv, power <= alpha", lambda: detectable_tv(_P3, 100, 0.2, power=0.1),
     r"^power: expected a probability in \(alpha=0\.2, 1\), got 0\.1$"),
    ("power_against, n 0", lambda: power_against(_P3, _P3, 0, 1e-3), r"^n: expected an integer >= 1, got 0$"),
    ("power_against, alternative 2-D", lambda: power_against(_P3, _P3[None, :], 10, 1e-3),
     r"^alternative: expected a 1-D array, got array of shape \(1, 3\)"),
    ("power_against, alternative 0-d", lambda: power_against(_P3, 1.0, 10, 1e-3),
     r"^alternative: expected a 1-D array, got array of shape \(\)"),
    ("power_against, alternative all zero", lambda: power_against(_P3, np.zeros(3), 10, 1e-3),
     r"^alternative: expected 3 non-negative weights with a positive sum"),
    ("power_against, alternative negative", lambda: power_against(_P3, [0.5, 0.6, -0.1], 10, 1e-3),
     r"^alternative: expected 3 non-negative weights with a positive sum"),
    ("power_against, alternative too short", lambda: power_against(_P3, [0.5, 0.5], 10, 1e-3),
     r"^alternative: expected 3 non-negative weights with a positive sum"),
    ("sample_size_for_tv, probabilities NaN", lambda: sample_size_for_tv([0.5, math.nan], 0.1, 1e-3),
     r"^probabilities: "),
    ("sample_size_for_tv, probabilities text", lambda: sample_size_for_tv("0.5", 0.1, 1e-3), r"^probabilities: "),
    ("sample_size_for_tv, probabilities 3-D", lambda: sample_size_for_tv(np.full((1, 1, 2), 0.5), 0.1, 1e-3),
     r"^probabilities: expected shape \(B, bins\) or \(bins,\), got \(1, 1, 2\)$"),
    ("sample_size_for_tv, tv 1", lambda: sample_size_for_tv(_P3, 1.0, 1e-3),
     r"^tv: expected a TV distance in \(0, 1\), got 1\.0$"),
]


@pytest.mark.parametrize("call, message", [r[1:] for r in _REFUSALS], ids=[r[0] for r in _REFUSALS])
def test_every_refusal_names_the_callers_argument(call, message) -> None:
    """A ValueError naming the argument and what it expected; never another exception (no
    floating-point warning first), never a result."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an input refused late (after a 0/0) would warn first
        with pytest.raises(ValueError, match=message):
            call()


def test_the_smallest_number_of_draws_is_accepted() -> None:
    """n = 1 is a valid number of draws: one merged group, so no G-test (delta* = inf) and only
    impossible draws can fail (power 1 - (1 - Q0)^1 = Q0)."""
    assert detectable_tv(_P3, 1, 1e-3) == math.inf
    assert power_against([0.0, 0.5, 0.5], [0.25, 0.5, 0.25], 1, 1e-3) == 0.25


# ------------------------------------------------------------------ 2. documented formulas

def _groups(p: np.ndarray, n: int, min_expected: float) -> np.ndarray:
    """The merged groups the G-test sees: the repository's one grouping (reference.stats)."""
    return merge_small_bins(n * p, min_expected)


def _critical(alpha: float, J: int, n: int) -> float:
    """c = chi2.isf(alpha, J - 1) times Williams' factor 1 + (J + 1) / (6 n) (the docstrings)."""
    return stats.chi2.isf(alpha, J - 1) * (1.0 + (J + 1) / (6.0 * n))


def _documented_delta(p: np.ndarray, n: int, alpha: float, power: float, min_expected: float) -> float:
    """delta* = sqrt(lambda* / (4 n)) with ncx2.sf(c, J - 1, lambda*) = power, solved tightly."""
    J = int(_groups(p, n, min_expected).max()) + 1
    if J < 2:
        return math.inf
    c = _critical(alpha, J, n)
    lam = optimize.brentq(lambda x: stats.ncx2.sf(c, J - 1, x) - power, 0.0, 1e4, xtol=1e-13, rtol=1e-15)
    return math.sqrt(lam / (4.0 * n))


@pytest.mark.parametrize("min_expected, groups", [(5.0, 10), (10.0, 10), (20.0, 5), (50.0, 2), (200.0, 1)])
def test_detectable_tv_is_its_documented_formula_at_every_min_expected(min_expected: float, groups: int) -> None:
    """Uniform P on 10 targets, n = 100 (10 expected draws each): min_expected sets the groups
    (10, 10, 5, 2 and 1 of them), hence df and delta*. detectable_tv stops its root search at
    xtol = 1e-6 hi, with hi <= 1.64 lambda* in these cases, so delta* = sqrt(lambda* / (4 n)) is
    within 0.82e-6 relative of the tight root."""
    p = np.full(10, 0.1)
    assert int(_groups(p, 100, min_expected).max()) + 1 == groups
    want = _documented_delta(p, 100, 1e-4, 0.9, min_expected)
    got = detectable_tv(p, 100, 1e-4, power=0.9, min_expected=min_expected)
    if groups == 1:
        assert got == want == math.inf
    else:
        assert got == pytest.approx(want, rel=1e-6, abs=0)


def _documented_power(p: np.ndarray, q: np.ndarray, n: int, alpha: float, min_expected: float = 20.0) -> float:
    """power_against's docstring: 1 - (1 - Q0)^n (1 - ncx2.sf(c, J - 1, lambda)), Q0 the mass of Q
    on targets with P < IMPOSSIBLE_PROBABILITY, lambda = n sum_j (Q'_j - P_j)^2 / P_j over the
    merged groups (Q' the rest of Q renormalised); no G-test part when one group remains."""
    q = np.asarray(q, dtype=np.float64) / np.sum(q)
    impossible = p < IMPOSSIBLE_PROBABILITY
    q0 = float(q[impossible].sum())
    if q0 == 1.0:
        return 1.0
    rest = np.where(impossible, 0.0, q) / (1.0 - q0)
    labels = _groups(p, n, min_expected)
    J = int(labels.max()) + 1
    rejects = 0.0
    if J >= 2:
        pg = np.bincount(labels, weights=p, minlength=J)
        qg = np.bincount(labels, weights=rest, minlength=J)
        lam = n * float(np.sum((qg - pg) ** 2 / pg))
        rejects = float(stats.ncx2.sf(_critical(alpha, J, n), J - 1, lam))
    return 1.0 - (1.0 - q0) ** n * (1.0 - rejects)


_P_BOUNDARY = np.array([IMPOSSIBLE_PROBABILITY, 0.5, 0.5])  # sums to 1 in float64

_POWER_CASES = {
    # name: (P, Q, n, alpha, the number of merged groups J)
    "one group (df 0), impossible mass 1/4": ([0.5, 0.5, 0.0], [0.5, 0.25, 0.25], 10, 1e-3, 1),
    "two groups (df 1), Q far from P": ([0.5, 0.5], [0.9, 0.1], 1000, 1e-3, 2),
    "two groups (df 1), Q near P": ([0.5, 0.5], [0.52, 0.48], 1000, 1e-3, 2),
    "P exactly at the impossible threshold": (_P_BOUNDARY, [1e-3, 0.4995, 0.4995], 1000, 1e-3, 2),
    "merged groups, impossible mass 1e-3": (
        np.r_[softmax(np.linspace(-3.0, 3.0, 40)), 0.0], np.r_[np.linspace(1.0, 2.0, 40), 0.04], 2000, 1e-5, None),
    "Q = P": (softmax(np.linspace(-2.0, 2.0, 30)), softmax(np.linspace(-2.0, 2.0, 30)), 500, 1e-4, None),
}


@pytest.mark.parametrize("case", list(_POWER_CASES))
def test_power_against_is_its_documented_formula_on_every_branch(case: str) -> None:
    p, q, n, alpha, J = _POWER_CASES[case]
    p = np.asarray(p, dtype=np.float64)
    if J is not None:
        assert int(_groups(p, n, 20.0).max()) + 1 == J
    want = _documented_power(p, np.asarray(q), n, alpha)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = power_against(p, q, n, alpha)
    assert 0.0 <= got <= 1.0
    assert got == pytest.approx(want, rel=1e-12, abs=1e-300)


def test_power_against_treats_a_target_at_the_threshold_as_possible() -> None:
    """P = IMPOSSIBLE_PROBABILITY exactly is possible (the documented rule, here and in
    check_sampler, is P < 1e-30): mass 1e-3 on it over n = 1000 draws is a tiny shift of a
    G-test group, not a 63% chance of an error; one float below, it is that chance."""
    q = np.array([1e-3, 0.4995, 0.4995])
    assert power_against(_P_BOUNDARY, q, 1000, 1e-3) < 2e-3  # ~ alpha: lambda = 1e-3, df 1
    just_below = np.array([np.nextafter(IMPOSSIBLE_PROBABILITY, 0.0), 0.5, 0.5])
    got = power_against(just_below, q, 1000, 1e-3)
    assert got > 0.63  # 1 - (1 - 1e-3)^1000 = 0.6323 at least: an impossible draw fails on its own
    assert got == pytest.approx(_documented_power(just_below, q, 1000, 1e-3), rel=1e-12)


def test_power_against_with_all_mass_on_impossible_targets_is_one_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert power_against([0.0, 0.5, 0.5], [1.0, 0.0, 0.0], 100, 1e-3) == 1.0
        assert power_against([0.0, 0.0, 1.0], [2.0, 3.0, 0.0], 100, 1e-3) == 1.0


# P = (0.7, 0.1, 0.1, 0.1): at n = 64 the three small targets expect 6.4 draws each; with
# min_expected 20 they make 19.2 < 20, so everything merges into one group (delta* = inf).
_P4 = np.array([0.7, 0.1, 0.1, 0.1])


@pytest.mark.parametrize("min_expected", [5.0, 16.25, 20.0])
def test_sample_size_search_starts_at_its_floor_with_the_callers_min_expected(min_expected: float) -> None:
    """An easy target (tv 0.5) is met at the first n tried, max(ceil(4 min_expected), 64):
    64, 65 and 80 here; the target is judged with the caller's min_expected (at 64 and 65 the
    default 20 would leave one group and no test)."""
    floor = max(math.ceil(4 * min_expected), 64)
    assert detectable_tv(_P4, floor, 1e-2, min_expected=min_expected) <= 0.5
    n = sample_size_for_tv(_P4, 0.5, 1e-2, min_expected=min_expected)
    assert n == floor == {5.0: 64, 16.25: 65, 20.0: 80}[min_expected]


def test_sample_size_search_accepts_max_n_and_gives_up_beyond() -> None:
    """max_n is the largest n tried ("give up beyond this many draws"): max_n = 64 returns 64."""
    assert sample_size_for_tv(_P4, 0.5, 1e-2, min_expected=5.0, max_n=64) == 64
    with pytest.raises(ValueError, match=r"^tv: detecting a TV error of 0\.5 needs more than max_n=63 draws"):
        sample_size_for_tv(_P4, 0.5, 1e-2, min_expected=5.0, max_n=63)


def test_sample_size_is_enough_for_every_row_with_the_callers_options() -> None:
    """Rows needing different n: the answer meets the target on every row with the caller's
    alpha, power and min_expected (detectable_tv with those arguments)."""
    P = np.vstack([np.r_[_P4, np.zeros(46)], softmax(np.linspace(-4.0, 4.0, 50))])
    for kw in [dict(power=0.8, min_expected=5.0), dict(power=0.95, min_expected=30.0)]:
        n = sample_size_for_tv(P, 0.1, 1e-4, **kw)
        assert max(detectable_tv(p, n, 1e-4, **kw) for p in P) <= 0.1


# ------------------------------------------------------------------ 3. the reports' cases

class _MixedEncoder:
    """Malformed output in the first scenario, a crash in the second, NotImplementedError for the
    sampled loss, and the oracle's correct answer otherwise."""

    def __call__(self, params: dict[str, np.ndarray], config: dict[str, Any], X: np.ndarray, pos: np.ndarray,
                 Y: np.ndarray, neg: np.ndarray | None = None, log_q: np.ndarray | None = None) -> Any:
        from reference.encoder import DualEncoder, EncoderConfig

        if neg is not None:
            raise NotImplementedError("full softmax only")
        if config["activation"] == "tanh" and config["dtype"] == "float64":
            return {"loss": 1.0}  # no "grads": a structure the kit cannot read
        if config["activation"] == "gelu":
            raise RuntimeError("boom")
        enc = DualEncoder(EncoderConfig(**config))
        enc.set_params(params)
        return enc.full_softmax_loss(X, pos, Y)


def test_every_encoder_scenario_gets_a_case_with_the_documented_fields() -> None:
    """One case per scenario, in order, even after unusable results; relation '<=' and the
    dtype's tolerance on every case, skipped and backend errors included."""
    scenarios = encoder_scenarios()
    report = check_encoder(_MixedEncoder())
    assert [c.scenario for c in report.cases] == [sc.name for sc in scenarios]
    for sc, case in zip(scenarios, report.cases):
        assert case.relation == "<=", case
        assert case.threshold == ENCODER_RTOL[sc.config.dtype], case
        assert case.statistic == "largest relative error (loss, gradients)", case
        if sc.neg is not None:
            assert case.skipped and case.passed and math.isnan(case.value), case
            assert case.worst == "skipped: the backend raised NotImplementedError (full softmax only)"
        elif sc.name == "tanh-normalized":
            assert (case.kind, case.passed, case.skipped) == ("backend error", False, False), case
            assert math.isnan(case.value) and case.worst.startswith('expected (loss, grads) or {"loss"'), case
        elif sc.name == "square-gelu":
            assert (case.kind, case.passed, case.skipped) == ("backend error", False, False), case
            assert math.isnan(case.value) and "raised RuntimeError: boom" in case.worst, case
        else:
            assert case.passed and not case.skipped and case.value <= case.threshold, case


def test_every_sampler_and_topk_case_has_its_checks_relation() -> None:
    """The sampler's format case counts violations ("<= 0"), its scenarios compare p-values from
    below (">="), top-k counts wrong queries from above ("<="): failed and backend-error cases
    alike, one case per scenario."""
    def broken(*args: Any) -> Any:
        raise RuntimeError("boom")

    def first_k(points: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
        return np.tile(np.arange(k), (queries.shape[0], 1))

    sampler_names = ["format"] + [sc.name for sc in sampler_scenarios()]
    topk_names = [sc.name for sc in topk_scenarios()]
    for report, relations in [
        (check_sampler(_zeros_sampler), ["<="] + [">="] * 6),
        (check_sampler(broken), ["<="] + [">="] * 6),
        (check_topk(first_k), ["<="] * 7),
        (check_topk(broken), ["<="] * 7),
    ]:
        names = sampler_names if report.name == "sampler" else topk_names
        assert [c.scenario for c in report.cases] == names
        assert [c.relation for c in report.cases] == relations, report.format()
        assert all(not c.passed for c in report.cases[report.name == "sampler":]), report.format()


# ------------------------------------------------------------------ 4. determinism

class _Recorder:
    """Wraps a backend callable and keeps a copy of every argument of every call."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.calls = fn, []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(([_copy(a) for a in args], {k: _copy(v) for k, v in kwargs.items()}))
        return self.fn(*args, **kwargs)


def _copy(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.copy()
    if isinstance(x, dict):
        return {k: _copy(v) for k, v in x.items()}
    return x


def _identical(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_identical, a, b))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("check, backend", [
    (check_sampler, _zeros_sampler),
    (check_topk, lambda points, queries, k: np.tile(np.arange(k), (queries.shape[0], 1))),
    (check_encoder, _MixedEncoder()),
], ids=["sampler", "topk", "encoder"])
def test_two_runs_hand_the_backend_bit_identical_arguments(check, backend) -> None:
    """Every call, in order (the sampler's format probes included), gets the same bits twice."""
    first, second = _Recorder(backend), _Recorder(backend)
    report_1, report_2 = check(first), check(second)
    assert len(first.calls) == len(second.calls) >= 7
    for i, (a, b) in enumerate(zip(first.calls, second.calls)):
        assert _identical(a, b), f"call {i} differs"
    assert report_1.format() == report_2.format()


# ------------------------------------------------------------------ 5. the sampler's description

@pytest.mark.parametrize("N", [27, 34])
def test_a_merged_group_lists_five_ids_and_an_ellipsis_beyond_five(N: int) -> None:
    """Uniform softmax on N targets (a zero query), a sampler that always draws id 0: the failing
    query's excess and deficit groups are merged groups (of 5 and 7 targets for N = 27, 6 and 10
    for N = 34 at tv = 0.3); each lists its first five ids, then ', ...' iff it has more."""
    points = np.random.default_rng(7).standard_normal((N, 3))
    sc = SamplerScenario(f"uniform-{N}", points, np.zeros((1, 3)), "uniform")
    report = check_sampler(_zeros_sampler, scenarios=[sc], tv=0.3)
    case = report.cases[1]
    assert not case.passed
    groups = re.findall(r"(\d+) merged targets \(ids ([^;]*); P = ", case.worst)
    sizes = sorted(int(k) for k, _ in groups)
    assert sizes == {27: [5, 7], 34: [6, 10]}[N], case.worst
    for k, shown in groups:
        ids = shown.removesuffix(", ...").split(", ")
        assert len(ids) == min(int(k), 5), case.worst
        assert shown.endswith(", ...") == (int(k) > 5), case.worst
        assert [int(i) for i in ids] == sorted({int(i) for i in ids}), case.worst
    assert re.search(r"largest excess: \d+ merged targets \(ids 0, ", case.worst), case.worst


# ------------------------------------------------------------------ 6. sampler_failure_probabilities

def test_failure_probabilities_of_chosen_scenarios_use_check_samplers_n_and_level() -> None:
    """With scenarios=S: S's names as keys; each value is 1 - prod_b (1 - power_against(P_b, Q_b,
    n, alpha_q)) at the n per query check_sampler(scenarios=S) reports and alpha_q = alpha over
    S's queries (4 + 6 = 10 here, not the 32 of all scenarios)."""
    chosen = sampler_scenarios()[:2]
    alpha = 1e-4
    probs = sampler_failure_probabilities(_exact_distribution, alpha=alpha, tv=0.1, scenarios=chosen)
    assert list(probs) == [sc.name for sc in chosen]
    report = check_sampler(_zeros_sampler, alpha=alpha, tv=0.1, scenarios=chosen)
    assert "G-test per query at 1e-05 (Bonferroni: total false-alarm rate 0.0001 over 10 queries)" in report.description
    for sc, case in zip(chosen, report.cases[1:]):
        n = int(re.search(r"; n = (\d+) draws per query", case.note).group(1))
        P = _exact_distribution(sc.points, sc.queries)
        want = 1.0 - np.prod([1.0 - power_against(P[b], P[b], n, alpha / 10) for b in range(P.shape[0])])
        assert probs[sc.name] == pytest.approx(want, rel=1e-9)
        assert 0.5 * alpha * sc.queries.shape[0] / 10 < probs[sc.name] < alpha * sc.queries.shape[0] / 10


def test_failure_probabilities_of_no_scenario_are_empty() -> None:
    """As check_sampler with no scenario (only its format case): nothing to test, nothing to fail."""
    assert sampler_failure_probabilities(_exact_distribution, scenarios=[]) == {}
    assert [c.scenario for c in check_sampler(_zeros_sampler, scenarios=[]).cases] == ["format"]
