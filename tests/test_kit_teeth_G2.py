"""Teeth for the kit's runner, sampler, top-k and bracket checks (helper G2).

Each test names, in its docstring, the behaviour it pins; each was seen failing
with the break (or mutant of tests/mutation/survivors.md) it names applied by hand.
"""

from __future__ import annotations

import functools
import re
import threading
from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from reference.conformance._data import SCENARIO_SEED, logits
from reference.conformance.bracket import BracketScenario, bracket_scenarios, check_bracket
from reference.conformance.reference_backend import REFERENCE_BACKEND
from reference.conformance.runner import adapter_name, call_text, fitting_checks, mismatch
from reference.conformance.sampler import (
    SamplerScenario,
    check_sampler,
    sampler_failure_probabilities,
    sampler_scenarios,
)
from reference.conformance.statistics import detectable_tv, point_mass_tv
from reference.conformance.topk import TopkScenario, check_topk, topk_scenarios
from reference.softmax import softmax

# ---------------------------------------------------------------------------------------------
# Caller-given scenarios are validated before the backend is called (the defect: a bare IndexError)
# ---------------------------------------------------------------------------------------------

_GOOD_P = np.random.default_rng(0).standard_normal((6, 3))
_GOOD_Q = np.random.default_rng(1).standard_normal((2, 3))

#: (field, bad value, what the message says): the fields every scenario class shares.
_COMMON_BREAKS = [
    ("points", np.ones(6), "2-D"),
    ("points", np.ones((6, 3, 1)), "2-D"),
    ("points", np.ones((0, 3)), "non-empty"),
    ("points", np.ones((6, 0)), "non-empty"),
    ("points", np.where(np.eye(6, 3) > 0, np.nan, 1.0), "finite"),
    ("points", np.full((6, 3), "a"), "real numeric"),
    ("queries", np.ones(3), "2-D"),
    ("queries", np.ones((2, 4)), "shape"),
    ("queries", np.ones((0, 3)), "non-empty"),
    ("queries", np.array([[1.0, np.inf, 0.0]]), "finite"),
    ("name", "", "non-empty str"),
    ("name", 3, "non-empty str"),
    ("about", None, "str"),
]


def _fields(kind: type) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "bad", "points": _GOOD_P, "queries": _GOOD_Q, "about": "x"}
    if kind is TopkScenario:
        base["k"] = 2
    if kind is BracketScenario:
        base["tol"] = 0.5
    return base


def _entry_points() -> list[tuple[str, type, Any]]:
    """(label, scenario class, run(scenarios, calls)): every check that takes caller-given scenarios."""

    def topk(scs: list[Any], calls: list[Any]) -> Any:
        return check_topk(lambda p, q, k: calls.append(1) or REFERENCE_BACKEND.topk(p, q, k), scenarios=scs)

    def bracket(scs: list[Any], calls: list[Any]) -> Any:
        return check_bracket(lambda p, q, t: calls.append(1) or REFERENCE_BACKEND.bracket(p, q, t), scenarios=scs)

    def sampler(scs: list[Any], calls: list[Any]) -> Any:
        return check_sampler(lambda p, q, n, s: calls.append(1) or REFERENCE_BACKEND.sample(p, q, n, s),
                             scenarios=scs, tv=0.3)

    def failure(scs: list[Any], calls: list[Any]) -> Any:
        return sampler_failure_probabilities(lambda p, q: calls.append(1) or softmax(logits(p, q)),
                                             scenarios=scs, tv=0.3)

    return [("check_topk", TopkScenario, topk), ("check_bracket", BracketScenario, bracket),
            ("check_sampler", SamplerScenario, sampler),
            ("sampler_failure_probabilities", SamplerScenario, failure)]


def _breaks(kind: type) -> list[tuple[str, Any, str]]:
    out = list(_COMMON_BREAKS)
    if kind is TopkScenario:
        out += [("k", 0, ">= 1"), ("k", 7, "<= 6"), ("k", 2.0, "integer"), ("k", True, "integer")]
    if kind is BracketScenario:
        out += [("tol", 0.0, "> 0"), ("tol", -1.0, "> 0"), ("tol", np.nan, "> 0"), ("tol", np.inf, "> 0"),
                ("tol", "1", "number")]
    return out


_CASES = [pytest.param(run, kind, field, value, says, id=f"{label}-{field}-{j}")
          for label, kind, run in _entry_points() for j, (field, value, says) in enumerate(_breaks(kind))]


@pytest.mark.parametrize("run, kind, field, value, says", _CASES)
def test_malformed_scenario_is_refused_by_name_before_the_backend_runs(run, kind, field, value, says):
    """Every check taking caller-given scenarios (check_topk, check_bracket, check_sampler,
    sampler_failure_probabilities) refuses a malformed one, in every field of its class (points,
    queries: 2-D, non-empty, finite, real, one d; name, about; k in [1, N]; tol finite > 0), with a
    ValueError naming the scenario's index, its name and the field, before any backend call. The
    second scenario is the bad one: a message naming index 0, or a check calling the backend for the
    first, fails. Seen failing before the fix (IndexError / TypeError, or backend called)."""
    good = kind(**_fields(kind))
    fields = _fields(kind)
    fields[field] = value
    bad = kind(**fields)
    calls: list[Any] = []
    name = fields["name"]
    with pytest.raises(ValueError, match=re.escape(f"scenarios[1] ({name!r}).{field}: ")) as err:
        run([good, bad], calls)
    assert says in str(err.value)
    assert calls == []


@pytest.mark.parametrize("label, kind, run", _entry_points(), ids=lambda x: x if isinstance(x, str) else "")
def test_a_scenario_that_is_not_of_the_checks_class_is_refused_by_index(label, kind, run):
    """A scenario of another class (or a tuple) is refused with a ValueError naming ``scenarios[i]``
    and the expected class, before the backend runs."""
    other = TopkScenario if kind is not TopkScenario else SamplerScenario
    for wrong in [tuple(_fields(kind).values()), other(**_fields(other))]:
        calls: list[Any] = []
        with pytest.raises(ValueError, match=re.escape(f"scenarios[0]: expected a {kind.__name__}, got ")):
            run([wrong], calls)
        assert calls == []


def test_well_formed_scenarios_at_the_boundaries_are_accepted():
    """The other side of the boundary: k = 1 and k = N, N = 1, B = 1, nested lists and integer arrays
    for points and queries, a tiny positive tol are all accepted (and run against the reference backend,
    which passes them)."""
    pts = [[1, 0, 0], [0, 2, 0], [0, 0, 3]]
    qs = [[1.0, 1.0, 1.0]]
    for k in (1, 3):
        rep = check_topk(REFERENCE_BACKEND.topk, scenarios=[TopkScenario("ok", pts, qs, k, "")])
        assert [c.passed for c in rep.cases] == [True]
    rep = check_topk(REFERENCE_BACKEND.topk, scenarios=[TopkScenario("one", [[1.0, 2.0]], [[3.0, 4.0]], 1, "")])
    assert [c.passed for c in rep.cases] == [True]
    rep = check_bracket(REFERENCE_BACKEND.bracket, scenarios=[BracketScenario("ok", pts, qs, 1e-6, "")])
    assert [c.passed for c in rep.cases] == [True]
    probs = sampler_failure_probabilities(lambda p, q: softmax(logits(p, q)),
                                          scenarios=[SamplerScenario("ok", pts, qs, "")], tv=0.3)
    assert list(probs) == ["ok"] and probs["ok"] < 1e-3


# ---------------------------------------------------------------------------------------------
# Callables with no readable signature; adapter_name's fallbacks
# ---------------------------------------------------------------------------------------------


class _NoSignature:
    """A callable whose ``__signature__`` is not a Signature: inspect.signature raises TypeError."""

    __signature__ = "not a signature"

    def __call__(self, *args: Any) -> Any:
        return None


@pytest.mark.parametrize("fn", [int, _NoSignature()], ids=["int", "bad __signature__"])
def test_callables_without_a_signature_fit_every_check_but_dynamic(fn):
    """A callable whose signature cannot be read (``int``; an object whose ``__signature__`` makes
    inspect.signature raise) is given to every check but dynamic by fitting_checks, call_text shows it
    with no parameters, and mismatch does not refuse it for any check. Kills
    runner.x__parameter_names__mutmut_3 (AttributeError on None.parameters)."""
    assert fitting_checks(fn) == ["sampler", "encoder", "bracket", "topk", "nystrom"]
    assert call_text(fn) == f"{adapter_name(fn)}()"
    assert all(mismatch(fn, c) is None for c in ("sampler", "encoder", "bracket", "topk", "nystrom", "dynamic"))


class _Sampler:
    def __call__(self, points: Any, queries: Any, n: Any, seed: Any) -> Any:
        return REFERENCE_BACKEND.sample(points, queries, n, seed)


class _Moduleless:
    __module__ = None  # type: ignore[assignment]

    def __call__(self, points: Any, queries: Any, k: Any) -> Any:
        return None


def _named(obj: Any, name: str) -> Any:
    obj.__name__ = name
    return obj


def _ufunc_like() -> Any:
    """An object with ``__name__`` and ``__module__`` but no ``__qualname__`` (as NumPy 1.x's ufuncs)."""
    return _named(_Sampler(), "add")


@pytest.mark.parametrize("fn, expected", [
    (_named(_Sampler(), "my_sampler"), f"{__name__}.my_sampler"),  # __name__ but no __qualname__
    (_ufunc_like(), f"{__name__}.add"),
    (_Sampler(), f"{__name__}._Sampler"),  # neither: the type's name
    (functools.partial(REFERENCE_BACKEND.sample), "functools.partial"),
    (_named(_Moduleless(), "bare"), "bare"),  # no module: the name alone
    (_Moduleless(), "_Moduleless"),
    (check_topk, "reference.conformance.topk.check_topk"),  # __qualname__ first
    (_Sampler.__call__, f"{__name__}._Sampler.__call__"),
])
def test_adapter_name_falls_back_from_qualname_to_name_to_type(fn, expected):
    """adapter_name uses ``__qualname__``, else ``__name__``, else the type's name, prefixed by
    ``__module__`` when there is one; call_text shows the same name with the parameters. Kills
    runner.x_adapter_name__mutmut_19/_24/_25 (the ``__name__`` fallback skipped: '..._Sampler')."""
    assert adapter_name(fn) == expected
    params = call_text(fn)[len(expected):]
    assert call_text(fn).startswith(expected + "(") and params.endswith(")")


def test_call_text_of_a_named_instance_lists_its_parameters():
    """call_text of a callable instance named by ``__name__`` (no ``__qualname__``): its name and the
    parameters of its ``__call__``."""
    assert call_text(_named(_Sampler(), "my_sampler")) == f"{__name__}.my_sampler(points, queries, n, seed)"


# ---------------------------------------------------------------------------------------------
# Output whose conversion to NumPy raises: a finding, in every guarded call
# ---------------------------------------------------------------------------------------------


class _Tensor:
    """An output whose ``__array__`` raises (a tensor on a device, say)."""

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("tensor is on the device")


def _all_conversion_failures(report: Any, count: int) -> None:
    assert len(report.cases) == count
    for case in report.cases:
        assert not case.passed
        assert "converting the output of " in case.worst and "RuntimeError: tensor is on the device" in case.worst


def test_output_whose_conversion_raises_is_a_finding_in_every_check():
    """check_sampler (the format probes and every scenario), check_topk and check_bracket convert the
    backend's output inside the guarded call: an output whose ``__array__`` raises gives failed cases
    naming the conversion, never an exception from the check. Kills sampler.x__call_sample__mutmut_9
    (conversion outside the guard: check_sampler raises RuntimeError); dropping topk's or bracket's
    ``convert=`` fails too."""
    scs = sampler_scenarios()[:2]
    rep = check_sampler(lambda p, q, n, s: _Tensor(), scenarios=scs)
    _all_conversion_failures(rep, 1 + len(scs))
    assert rep.cases[0].worst.count("converting the output of ") == 3  # every format probe
    rep = check_topk(lambda p, q, k: _Tensor(), scenarios=topk_scenarios()[:2])
    _all_conversion_failures(rep, 2)
    rep = check_bracket(lambda p, q, t: (_Tensor(), np.zeros(q.shape[0])), scenarios=bracket_scenarios()[:2])
    _all_conversion_failures(rep, 2)


# ---------------------------------------------------------------------------------------------
# The time limit applies to scenario calls, not only to the format probes
# ---------------------------------------------------------------------------------------------


def test_time_limit_applies_to_every_scenario_call():
    """A backend call that does not return is reported as a time-limit finding in every scenario of
    check_sampler (whose format probes, n <= 6, return at once), check_topk and check_bracket. The
    blocked calls wait on an Event released when the checks are done (no timing is asserted). Kills
    sampler.x_check_sampler__mutmut_74 (the scenario calls with no limit: the check waits for ever,
    here until the Event's 30 s cap, and reports G-tests)."""
    release = threading.Event()

    def sample(p: Any, q: Any, n: int, s: int) -> Any:
        if n > 6:
            release.wait(30.0)
        return REFERENCE_BACKEND.sample(p, q, n, s)

    try:
        rep = check_sampler(sample, scenarios=sampler_scenarios()[:2], time_limit=0.2)
        assert rep.cases[0].passed  # the format probes
        reps = [rep.cases[1:]]
        reps.append(check_topk(lambda p, q, k: release.wait(30.0), scenarios=topk_scenarios()[:2],
                               time_limit=0.2).cases)
        reps.append(check_bracket(lambda p, q, t: release.wait(30.0), scenarios=bracket_scenarios()[:2],
                                  time_limit=0.2).cases)
    finally:
        release.set()
    for cases in reps:
        assert len(cases) == 2
        for case in cases:
            assert not case.passed and "did not return within the time limit of 0.2 s" in case.worst


# ---------------------------------------------------------------------------------------------
# Sampler messages name their argument
# ---------------------------------------------------------------------------------------------

_OK_SAMPLE = REFERENCE_BACKEND.sample


@pytest.mark.parametrize("call, name", [
    (lambda: check_sampler(3), "sample"),
    (lambda: check_sampler(_OK_SAMPLE, seed=-1), "seed"),
    (lambda: check_sampler(_OK_SAMPLE, seed=1.5), "seed"),
    (lambda: check_sampler(_OK_SAMPLE, seed=True), "seed"),
    (lambda: check_sampler(_OK_SAMPLE, alpha=0.0), "alpha"),
    (lambda: check_sampler(_OK_SAMPLE, alpha=1.0), "alpha"),
    (lambda: check_sampler(_OK_SAMPLE, time_limit=-1), "time_limit"),
    (lambda: check_sampler(_OK_SAMPLE, time_limit="soon"), "time_limit"),
    (lambda: check_sampler(_OK_SAMPLE, tv=0.0), "tv"),
    (lambda: check_sampler(_OK_SAMPLE, power=1.5), "power"),
    (lambda: sampler_failure_probabilities(3), "distribution"),
    (lambda: sampler_failure_probabilities(lambda p, q: np.ones((1, 1))), "distribution"),
    (lambda: sampler_failure_probabilities(lambda p, q: softmax(logits(p, q)), alpha=2.0), "alpha"),
    (lambda: sampler_failure_probabilities(lambda p, q: softmax(logits(p, q)), tv=-0.1), "tv"),
    (lambda: sampler_failure_probabilities(lambda p, q: softmax(logits(p, q)), power=0.0), "power"),
])
def test_sampler_refusals_start_with_the_arguments_name(call, name):
    """Every refusal of check_sampler and sampler_failure_probabilities is a ValueError whose message
    starts with the argument's name (both sides of seed's and alpha's ranges, wrong types). Kills
    sampler.x_check_sampler__mutmut_17 ('XXseedXX:')."""
    with pytest.raises(ValueError) as err:
        call()
    assert str(err.value).startswith(f"{name}: ")


# ---------------------------------------------------------------------------------------------
# The note's detectable TV is a function of power
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("power", [0.5, 0.9, 0.99])
def test_sampler_note_states_the_detectable_tv_at_the_given_power(power):
    """Each scenario's note gives max_b of detectable_tv(P_b, n, alpha_q, power) (point_mass_tv for a
    one-target row) at the ``power`` asked for, and that power: at 0.5 and 0.99 the figure differs from
    the one at the default 0.9. Kills sampler.x_check_sampler__mutmut_152 (power dropped: 0.363 vs 0.299)."""
    scs = sampler_scenarios()
    rep = check_sampler(REFERENCE_BACKEND.sample, tv=0.3, power=power, scenarios=scs)
    alpha_q = 1e-6 / sum(sc.queries.shape[0] for sc in scs)
    differs: list[bool] = []
    for sc, case in zip(scs, rep.cases[1:]):
        P = softmax(logits(sc.points, sc.queries))
        n = int(re.search(r"n = (\d+) draws", case.note).group(1))
        point = (P >= 1e-30).sum(axis=1) == 1
        det = max(point_mass_tv(n, power) if point[b] else detectable_tv(P[b], n, alpha_q, power=power)
                  for b in range(P.shape[0]))
        assert f"detects any TV error >= {det:.3f} " in case.note
        assert case.note.endswith(f"with probability >= {power:g} per query")
        if not point.any():
            at_default = max(detectable_tv(P[b], n, alpha_q) for b in range(P.shape[0]))
            differs.append(f"{at_default:.3f}" != f"{det:.3f}")
    assert differs and all(differs) == (power != 0.9) and any(differs) == (power != 0.9)


# ---------------------------------------------------------------------------------------------
# The format probes' data
# ---------------------------------------------------------------------------------------------


def test_format_probes_are_the_documented_draws():
    """The format case calls the sampler on three probes drawn, in order, from
    default_rng(SCENARIO_SEED + 1): points (7, 3), queries (3, 3), n = 5; points (7, 3), queries (1, 3),
    n = 1; points (1, 4), queries (2, 4), n = 6; each with the check's seed. Kills
    sampler.x__format_case_sampler__mutmut_3 (SCENARIO_SEED - 1)."""
    seen: list[tuple[np.ndarray, np.ndarray, int, int]] = []

    def sample(p: np.ndarray, q: np.ndarray, n: int, s: int) -> np.ndarray:
        seen.append((p, q, n, s))
        return np.zeros((q.shape[0], n), dtype=np.int64)

    rep = check_sampler(sample, seed=11, scenarios=[])
    assert [c.scenario for c in rep.cases] == ["format"] and rep.cases[0].passed
    rng = np.random.default_rng(SCENARIO_SEED + 1)
    want = [(rng.standard_normal((7, 3)), rng.standard_normal((3, 3)), 5),
            (rng.standard_normal((7, 3)), rng.standard_normal((1, 3)), 1),
            (rng.standard_normal((1, 4)), rng.standard_normal((2, 4)), 6)]
    assert len(seen) == 3
    for (p, q, n, s), (wp, wq, wn) in zip(seen, want):
        assert np.array_equal(p, wp) and np.array_equal(q, wq) and n == wn and s == 11


# ---------------------------------------------------------------------------------------------
# Object-dtype distributions in sampler_failure_probabilities
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("to_object", [
    lambda Q: [[Fraction(float(x)) for x in row] for row in Q],
    lambda Q: np.array([[Decimal(float(x)) for x in row] for row in Q], dtype=object),
], ids=["Fraction lists", "Decimal object array"])
def test_failure_probabilities_cast_an_object_distribution_to_float64(to_object):
    """A ``distribution`` returning exact numbers (nested lists of Fraction, an object array of
    Decimal) of the same values as a float64 one gives the same failure probabilities: the output is
    cast to float64. Kills sampler.x_sampler_failure_probabilities__mutmut_37 (dtype=None: a ValueError
    on the object array)."""
    scs = sampler_scenarios()[:3]
    tilted = lambda p, q: softmax(1.1 * logits(p, q))  # noqa: E731 - a wrong temperature: failures near 1
    want = sampler_failure_probabilities(tilted, scenarios=scs)
    got = sampler_failure_probabilities(lambda p, q: to_object(tilted(p, q)), scenarios=scs)
    assert got == want
    assert max(want.values()) > 0.5  # the values compared are not all ~0
