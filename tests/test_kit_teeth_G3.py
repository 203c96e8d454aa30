"""Teeth for the caller-given scenarios of check_nystrom, check_encoder and check_dynamic (helper G3).

The defect: these checks took caller scenarios (and a caller's script) with a plain ``list(...)``,
so a malformed one failed deep inside the oracle or the replay with a bare AttributeError /
IndexError / TypeError (e.g. check_nystrom with a 1-D G0 and a string kernel), or reached the
backend. Now every field of every scenario class is validated first (as check_topk, check_bracket
and check_sampler do, tests/test_kit_teeth_G2.py), with a ValueError naming the scenario
(``scenarios[i] ('name')`` / ``script[s] ('op')``) and the field.

Each test names, in its docstring, what it pins; each was seen failing with the break it names
applied by hand.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest

from reference.conformance.dynamic import DynamicStep, check_dynamic
from reference.conformance.dynamic_backends import TREE_BACKEND
from reference.conformance.encoder import EncoderScenario, check_encoder
from reference.conformance.nystrom import NYSTROM_MAX_COND, NystromScenario, check_nystrom
from reference.conformance.reference_backend import REFERENCE_BACKEND
from reference.encoder import EncoderConfig, param_shapes

_RNG = np.random.default_rng(7)

# ------------------------------------------------------------------------------------------- nystrom

_G0 = _RNG.standard_normal((8, 3))
_L = np.array([0, 2, 5], dtype=np.int64)
_GL = _RNG.standard_normal((3, 2))
_G0_DUP = _G0.copy()
_G0_DUP[2] = _G0[0]  # landmarks 0 and 2 equal: K_LL singular


def _nystrom_fields() -> dict[str, Any]:
    return {"name": "bad", "G0": _G0, "landmarks": _L, "G_L": _GL, "kernel": {"name": "rbf", "gamma": 0.5},
            "about": "x"}


#: (field set, bad value, field the message names, what the message says).
_NYSTROM_BREAKS = [
    ("name", "", "name", "non-empty str"),
    ("name", 3, "name", "non-empty str"),
    ("about", None, "about", "str"),
    ("G0", np.ones(8), "G0", "2-D"),
    ("G0", np.ones((0, 3)), "G0", "non-empty"),
    ("G0", np.where(np.eye(8, 3) > 0, np.nan, 1.0), "G0", "finite"),
    ("G0", np.full((8, 3), "a"), "G0", "real numeric"),
    ("G0", np.full((8, 3), 1e151), "G0", "MAX_ABS_COORD"),
    ("G0", _G0_DUP, "landmarks", f"<= {NYSTROM_MAX_COND:g}"),
    ("landmarks", np.array([0, 2, 8]), "landmarks", "ids < 8"),
    ("landmarks", np.array([-1, 2, 5]), "landmarks", "ids >= 0"),
    ("landmarks", np.array([0, 2, 2]), "landmarks", "distinct"),
    ("landmarks", np.zeros(0, dtype=np.int64), "landmarks", "at least one id"),
    ("landmarks", np.array([[0, 2, 5]]), "landmarks", "1-D"),
    ("landmarks", np.array([0.5, 2.0, 5.0]), "landmarks", "integer ids"),
    ("landmarks", np.array([True, False, True]), "landmarks", "integer array"),
    ("G_L", np.ones((2, 2)), "G_L", "shape"),
    ("G_L", np.ones(3), "G_L", "2-D"),
    ("G_L", np.ones((3, 0)), "G_L", "non-empty"),
    ("G_L", np.array([[1.0, np.inf]] * 3), "G_L", "finite"),
    ("G_L", np.full((3, 2), -1e151), "G_L", "MAX_ABS_COORD"),
    ("kernel", "rbf", "kernel", "dict"),
    ("kernel", {"name": "cosine"}, "kernel['name']", "one of"),
    ("kernel", {"gamma": 0.5}, "kernel['name']", "one of"),
    ("kernel", {"name": "rbf"}, "kernel", "['gamma']"),
    ("kernel", {"name": "rbf", "gamma": 0.5, "c": 1.0}, "kernel", "['gamma']"),
    ("kernel", {"name": "rbf", "gamma": 0.0}, "kernel['gamma']", "> 0"),
    ("kernel", {"name": "rbf", "gamma": math.inf}, "kernel['gamma']", "> 0"),
    ("kernel", {"name": "rbf", "gamma": "1"}, "kernel['gamma']", "number"),
    ("kernel", {"name": "linear", "const": -1e-9}, "kernel['const']", ">= 0"),
    ("kernel", {"name": "linear", "const": math.nan}, "kernel['const']", ">= 0"),
    ("kernel", {"name": "polynomial", "degree": 0, "c": 1.0}, "kernel['degree']", ">= 1"),
    ("kernel", {"name": "polynomial", "degree": 2.0, "c": 1.0}, "kernel['degree']", "integer"),
    ("kernel", {"name": "polynomial", "degree": 2, "c": -1.0}, "kernel['c']", ">= 0"),
]


def _run_nystrom(scs: list[Any], calls: list[Any]) -> Any:
    return check_nystrom(lambda *a: calls.append(1) or REFERENCE_BACKEND.nystrom(*a), scenarios=scs)


# ------------------------------------------------------------------------------------------- encoder

_CONFIG = EncoderConfig(query_dim=3, target_dim=2, hidden=(2,), out_dim=2, activation="tanh", normalize=True,
                        beta=2.0)
_PARAMS = {k: 0.5 * _RNG.standard_normal(s) for k, s in param_shapes(_CONFIG).items()}


def _encoder_fields() -> dict[str, Any]:
    return {"name": "bad", "config": _CONFIG, "params": dict(_PARAMS), "X": _RNG.standard_normal((2, 3)),
            "pos": np.array([0, 1]), "Y": _RNG.standard_normal((3, 2)), "neg": np.array([[1, 2], [0, 0]]),
            "log_q": np.log(np.full((2, 2), 0.25)), "about": "x"}


def _params_with(name: str, value: Any) -> dict[str, Any]:
    out = dict(_PARAMS)
    out[name] = value
    return out


_ENCODER_BREAKS = [
    ("name", "", "name", "non-empty str"),
    ("name", None, "name", "non-empty str"),
    ("about", 1, "about", "str"),
    ("config", {"query_dim": 3, "target_dim": 2}, "config", "EncoderConfig"),
    ("params", list(_PARAMS.values()), "params", "dict"),
    ("params", {k: v for k, v in _PARAMS.items() if k != "target.b1"}, "params", "missing ['target.b1']"),
    ("params", _params_with("query.W2", np.ones((2, 2))), "params", "unexpected ['query.W2']"),
    ("params", _params_with("query.W0", np.ones((2, 3))), "params['query.W0']", "shape"),
    ("params", _params_with("target.b0", np.ones((1, 2))), "params['target.b0']", "1-D"),
    ("params", _params_with("target.W1", np.full((2, 2), np.nan)), "params['target.W1']", "finite"),
    ("params", _params_with("query.b1", np.array(["a", "b"])), "params['query.b1']", "real numeric"),
    ("X", np.ones((2, 4)), "X", "shape"),
    ("X", np.ones(3), "X", "2-D"),
    ("X", np.ones((0, 3)), "X", "non-empty"),
    ("X", np.array([[0.0, np.nan, 1.0]] * 2), "X", "finite"),
    ("Y", np.ones((3, 3)), "Y", "shape"),
    ("Y", np.ones((0, 2)), "Y", "non-empty"),
    ("Y", np.array([[np.inf, 0.0]] * 3), "Y", "finite"),
    ("pos", np.array([0, 3]), "pos", "ids < 3"),
    ("pos", np.array([-1, 0]), "pos", "ids >= 0"),
    ("pos", np.array([0]), "pos", "one id per query"),
    ("pos", np.array([0, 1, 2]), "pos", "one id per query"),
    ("pos", np.array([[0, 1]]), "pos", "1-D"),
    ("pos", np.array([0.5, 1.0]), "pos", "integer ids"),
    ("neg", np.array([1, 2]), "neg", "2-D"),
    ("neg", np.array([[1, 2]]), "neg", "one row per query"),
    ("neg", np.array([[1, 3], [0, 0]]), "neg", "ids < 3"),
    ("neg", np.zeros((2, 0), dtype=np.int64), "neg", "at least one id"),
    ("neg", None, "log_q", "None when neg is None"),  # log_q with the full softmax: it would be ignored
    ("log_q", np.zeros((2, 3)), "log_q", "shape"),
    ("log_q", np.array([[-1.0, 1e-12], [-1.0, -1.0]]), "log_q", "<= 0"),
    ("log_q", np.array([[-1.0, -np.inf], [-1.0, -1.0]]), "log_q", "finite"),
]


def _run_encoder(scs: list[Any], calls: list[Any]) -> Any:
    return check_encoder(lambda *a, **kw: calls.append(1) or REFERENCE_BACKEND.encoder(*a, **kw), scenarios=scs)


# ------------------------------------------------------------------------------------------- dynamic

_D = 2
_BUILD = DynamicStep("build", "build", np.zeros(0, dtype=np.int64), _RNG.standard_normal((6, _D)), 0,
                     _RNG.standard_normal((2, _D)), 2, 1.0, False)


def _move_fields() -> dict[str, Any]:
    return {"op": "move", "about": "x", "keys": np.array([0, 1]), "vectors": _RNG.standard_normal((2, _D)),
            "depth": 0, "queries": _RNG.standard_normal((2, _D)), "k": 2, "tol": 1.0, "sample": False}


_DYNAMIC_BREAKS = [
    ("op", "grow", "op", "one of"),
    ("op", 3, "op", "non-empty str"),
    ("op", "", "op", "non-empty str"),
    ("op", "build", "op", "step 0 only"),
    ("about", None, "about", "str"),
    ("keys", np.array([0, 6]), "keys", "6, which is not live"),
    ("keys", np.array([0, 0]), "keys", "distinct"),
    ("keys", np.array([-1, 0]), "keys", "ids >= 0"),
    ("keys", np.array([[0, 1]]), "keys", "1-D"),
    ("keys", np.array([0.5, 1.0]), "keys", "integer ids"),
    ("keys", np.array([True, False]), "keys", "integer array"),
    ("vectors", np.ones((3, _D)), "vectors", "shape"),
    ("vectors", np.ones((2, _D + 1)), "vectors", "shape"),
    ("vectors", np.ones(2), "vectors", "2-D"),
    ("vectors", np.array([[np.nan, 0.0], [0.0, 0.0]]), "vectors", "finite"),
    ("depth", -1, "depth", ">= 0"),
    ("depth", 1.0, "depth", "integer"),
    ("depth", True, "depth", "integer"),
    ("queries", np.ones((2, _D + 1)), "queries", "shape"),
    ("queries", np.ones((0, _D)), "queries", "non-empty"),
    ("queries", np.array([[np.inf, 0.0]]), "queries", "finite"),
    ("k", 0, "k", ">= 1"),
    ("k", 2.0, "k", "integer"),
    ("tol", 0.0, "tol", "> 0"),
    ("tol", math.nan, "tol", "> 0"),
    ("tol", "1", "tol", "number"),
    ("sample", 1, "sample", "bool"),
    ("sample", None, "sample", "bool"),
]


def _dynamic_op_breaks() -> list[tuple[dict[str, Any], str, str]]:
    """(the second step's fields, the field the message names, what it says): what each op admits."""
    out = []
    for op in ("insert", "rebuild", "build"):
        out.append(({**_move_fields(), "op": op, "keys": np.array([0])}, "keys" if op != "build" else "op",
                    "no keys" if op != "build" else "step 0 only"))
    out.append(({**_move_fields(), "op": "rebuild", "keys": np.zeros(0, dtype=np.int64),
                 "vectors": np.ones((1, _D))}, "vectors", "shape"))
    out.append(({**_move_fields(), "op": "nystrom", "keys": np.array([0, 1, 2])}, "vectors", "shape"))
    out.append(({**_move_fields(), "op": "delete", "keys": np.arange(6)}, "keys", "at least one live row"))
    out.append(({**_move_fields(), "op": "delete", "vectors": np.ones((2, _D + 1))}, "vectors", "shape"))
    out.append(({**_move_fields(), "op": "insert", "keys": np.zeros(0, dtype=np.int64),
                 "vectors": np.ones(2)}, "vectors", "2-D"))
    return out


def _run_dynamic(script: list[Any], calls: list[Any]) -> Any:
    return check_dynamic(lambda points: calls.append(1) or TREE_BACKEND.dynamic_build(points), script=script)


# ------------------------------------------------------------------------------------------- the tests

def _cases() -> list[Any]:
    out = []
    for label, kind, fields, breaks, run in [
        ("check_nystrom", NystromScenario, _nystrom_fields, _NYSTROM_BREAKS, _run_nystrom),
        ("check_encoder", EncoderScenario, _encoder_fields, _ENCODER_BREAKS, _run_encoder),
    ]:
        for j, (field, value, named, says) in enumerate(breaks):
            bad = {**fields(), field: value}
            out.append(pytest.param(lambda f=fields, c=kind: c(**f()), lambda b=bad, c=kind: c(**b), run,
                                    f"scenarios[1] ({bad['name']!r}).{named}", says, id=f"{label}-{field}-{j}"))
    for j, (field, value, named, says) in enumerate(_DYNAMIC_BREAKS):
        bad = {**_move_fields(), field: value}
        out.append(pytest.param(lambda: _BUILD, lambda b=bad: DynamicStep(**b), _run_dynamic,
                                f"script[1] ({bad['op']!r}).{named}", says, id=f"check_dynamic-{field}-{j}"))
    for j, (bad, named, says) in enumerate(_dynamic_op_breaks()):
        out.append(pytest.param(lambda: _BUILD, lambda b=bad: DynamicStep(**b), _run_dynamic,
                                f"script[1] ({bad['op']!r}).{named}", says, id=f"check_dynamic-{bad['op']}-{j}"))
    return out


@pytest.mark.parametrize("good, bad, run, prefix, says", _cases())
def test_malformed_caller_scenario_is_refused_by_name_before_the_backend_runs(good, bad, run, prefix, says):
    """Pins, for check_nystrom, check_encoder and check_dynamic, the validation of every field of
    every caller-given scenario (NystromScenario: name, about, G0 2-D non-empty finite real within
    MAX_ABS_COORD, landmarks distinct 1-D integer ids in [0, N), G_L (m, d_out), kernel a protocol
    dict with exactly its parameters in range, cond(K_LL) <= NYSTROM_MAX_COND; EncoderScenario:
    config, params' names/shapes/values, X, Y, pos, neg, log_q <= 0 and only with neg; DynamicStep:
    op, about, keys live and distinct, vectors per op, depth, queries, k, tol, sample, and at least
    one live row left), each with a ValueError naming the scenario's index, its name (a step's op)
    and the field, raised before any backend call. The bad scenario is the second: a message naming
    index 0, or a check calling the backend on the first, fails. Seen failing before the fix
    (AttributeError / IndexError / TypeError, or the backend called), with one field check dropped
    (the G_L shape, the log_q sign, the live keys), and with the index in the label off by one."""
    calls: list[Any] = []
    with pytest.raises(ValueError, match=re.escape(prefix)) as err:
        run([good(), bad()], calls)
    assert str(err.value).startswith(prefix), str(err.value)
    assert says in str(err.value), str(err.value)
    assert calls == []


def test_the_defects_example_a_1d_G0_and_a_string_kernel_is_a_named_refusal():
    """Pins the reported case: check_nystrom with a 1-D G0 and a string kernel (an AttributeError
    before) is refused as ``scenarios[0] ('bad').G0: expected a 2-D array``."""
    sc = NystromScenario("bad", np.ones(8), _L, _GL, "rbf", "")
    with pytest.raises(ValueError, match=re.escape("scenarios[0] ('bad').G0: expected a 2-D array")):
        check_nystrom(REFERENCE_BACKEND.nystrom, scenarios=[sc])


@pytest.mark.parametrize("run, kind, seq", [(_run_nystrom, NystromScenario, "scenarios"),
                                            (_run_encoder, EncoderScenario, "scenarios"),
                                            (_run_dynamic, DynamicStep, "script")], ids=["nystrom", "encoder",
                                                                                         "dynamic"])
def test_a_scenario_of_another_class_is_refused_by_index(run, kind, seq):
    """A tuple or another class's scenario in place of the check's class is refused with a
    ValueError naming ``scenarios[i]`` (``script[s]``) and the expected class, before the backend runs."""
    good = {NystromScenario: lambda: NystromScenario(**_nystrom_fields()),
            EncoderScenario: lambda: EncoderScenario(**_encoder_fields()), DynamicStep: lambda: _BUILD}[kind]
    other = NystromScenario(**_nystrom_fields()) if kind is not NystromScenario else _BUILD
    for wrong in [tuple(vars(good()).values()), other]:
        calls: list[Any] = []
        with pytest.raises(ValueError, match=re.escape(f"{seq}[1]: expected a {kind.__name__}, got ")):
            run([good(), wrong], calls)
        assert calls == []


def test_a_script_must_start_with_a_well_formed_build_step():
    """Step 0 is validated too: a script not starting with a build (or empty) is refused as before
    ("script: expected a list of DynamicStep starting with a build step"), a build with 1-D or
    zero-row vectors names ``script[0] ('build').vectors``; no backend call."""
    calls: list[Any] = []
    for script in ([], [DynamicStep(**_move_fields())]):
        with pytest.raises(ValueError, match="script: expected a list of DynamicStep starting with a build step"):
            _run_dynamic(script, calls)
    for vectors, says in [(np.ones(6), "2-D"), (np.ones((0, _D)), "non-empty")]:
        build = DynamicStep("build", "b", np.zeros(0, dtype=np.int64), vectors, 0, np.ones((1, _D)), 1, 1.0, False)
        with pytest.raises(ValueError, match=re.escape("script[0] ('build').vectors: ") + ".*" + says):
            _run_dynamic([build], calls)
    assert calls == []


def _two_point_rbf(cond: float) -> NystromScenario:
    """Two landmarks at 0 and 1 on a line, rbf gamma chosen so that cond(K_LL) = (1 + e) / (1 - e) = cond."""
    e = (cond - 1.0) / (cond + 1.0)
    G0 = np.array([[0.0], [1.0], [0.5]])
    return NystromScenario("cond", G0, np.array([0, 1]), np.array([[1.0], [2.0]]),
                           {"name": "rbf", "gamma": -math.log(e)}, "")


def test_well_formed_scenarios_at_the_boundaries_are_accepted():
    """The other side of every boundary is accepted and runs (the reference backends pass it):
    Nystrom with m = N landmarks given as integral floats in any order, integer G0, const = 0, c = 0,
    degree 1, and cond(K_LL) just below NYSTROM_MAX_COND (just above: refused); an encoder scenario
    with the full softmax (neg and log_q None), log_q = 0 exactly, pos = N - 1 as integral floats,
    integer X, float64 inputs to a float32 config; a script with an empty move, an empty insert, a
    rebuild of depth 0, k above the live count, keys as integral floats, a numpy bool sample and a
    delete leaving exactly one live row."""
    ok = [
        NystromScenario("m=N", np.arange(6).reshape(3, 2), np.array([2.0, 0.0, 1.0]), np.ones((3, 1)),
                        {"name": "rbf", "gamma": 1.0}, ""),
        NystromScenario("linear0", _G0, np.array([1, 4]), _GL[:2], {"name": "linear", "const": 0}, ""),
        NystromScenario("poly", _G0, np.array([1, 4]), _GL[:2], {"name": "polynomial", "degree": 1, "c": 0.0}, ""),
        _two_point_rbf(0.99 * NYSTROM_MAX_COND),
    ]
    assert all(c.passed for c in check_nystrom(REFERENCE_BACKEND.nystrom, scenarios=ok).cases)
    with pytest.raises(ValueError, match=re.escape("scenarios[0] ('cond').landmarks: ") + ".*condition number"):
        check_nystrom(REFERENCE_BACKEND.nystrom, scenarios=[_two_point_rbf(1.01 * NYSTROM_MAX_COND)])

    f = _encoder_fields()
    config32 = EncoderConfig(query_dim=3, target_dim=2, hidden=(2,), out_dim=2, dtype="float32")
    ok_enc = [
        EncoderScenario(**{**f, "name": "full", "neg": None, "log_q": None}),
        EncoderScenario(**{**f, "name": "logq0", "log_q": np.zeros((2, 2)), "pos": np.array([2.0, 2.0]),
                           "X": np.arange(6).reshape(2, 3)}),
        EncoderScenario(**{**f, "name": "f32", "config": config32}),
    ]
    cases = check_encoder(REFERENCE_BACKEND.encoder, scenarios=ok_enc).cases
    assert [c.scenario for c in cases] == ["full", "logq0", "f32"] and all(c.passed for c in cases)

    none = np.zeros(0, dtype=np.int64)
    q = np.random.default_rng(3).standard_normal((2, _D))

    def step(op: str, keys: Any = none, vectors: Any = np.zeros((0, _D)), k: int = 2) -> DynamicStep:
        return DynamicStep(op, op, keys, vectors, 0, q, k, 1e-3, np.bool_(False))

    script = [
        step("build", vectors=np.random.default_rng(4).standard_normal((4, _D))),
        step("move"), step("insert"), step("rebuild", k=50),
        step("move", np.array([1.0, 3.0]), np.ones((2, _D))),
        step("delete", np.array([0, 1, 2])),
    ]
    report = check_dynamic(TREE_BACKEND.dynamic_build, script=script)
    assert len(report.cases) >= len(script) and all(c.passed for c in report.cases)
