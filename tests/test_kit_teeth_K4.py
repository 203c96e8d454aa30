"""Teeth for the kit's bracket, Nystrom and dynamic checks, closed by theme.

The pooled mutation sample of the conformance kit (seeds 2331372295, 2648788835, 2540233516)
left survivors in reference/conformance/bracket.py, nystrom.py, dynamic.py and
dynamic_backends.py whose behaviour no test pinned (tests/mutation/survivors.md, their
`not yet killed` entries). Each test below pins a whole kind of behaviour, not one mutant:

- a finding names the call with the protocol's argument names (every scenario of check_bracket
  and check_nystrom, and dynamic_build), and every case a backend fails early (an exception, a
  wrong shape, non-finite values) carries its scenario's name and the check's threshold;
- the backend's output is read as float64 inside the guarded call, so Python number objects
  (Decimal, Fraction) are graded as numbers, never crash the kit;
- every bad argument of the public functions of these modules raises a ValueError naming it,
  before any backend call (check_dynamic's alpha and seed were checked only at a sampler step: a
  defect found here, fixed);
- from_static accepts each static protocol on its own and offers only the ones given;
- StaticState holds float64 vectors and bool flags whatever dtype it is given;
- the ids the dynamic check hands a backend are int64 for every update, the empty ones too;
- every refusal of the ids an insert returns names the offending id; an id never issued is an
  invalid id even at the smallest table (a one-row build); an empty insert is taken whatever
  empty sequence the backend returns (the kit used to crash on it: a defect found here, fixed in
  ``_Replay.issue``);
- a failing update leaves two cases with documented fields (its error case, then the skipped
  "not replayed" case), and none after a failing last step;
- the fixed bracket scenarios are the data their descriptions state.

Deterministic (fixed data, no sampler step is run), no probabilistic or timed assertion.
"""

from __future__ import annotations

import dataclasses
import math
from decimal import Decimal
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest

from reference.conformance import (
    REBUILD_BACKEND,
    check_bracket,
    check_dynamic,
    check_nystrom,
    dynamic_script,
    from_static,
)
from reference.conformance.bracket import BRACKET_RTOL, bracket_scenarios
from reference.conformance.dynamic import DynamicStep
from reference.conformance.dynamic_backends import StaticState, TreeState
from reference.conformance.nystrom import NYSTROM_RTOL, nystrom_scenarios
from reference.conformance.reference_backend import REFERENCE_BACKEND

HERE = "test_kit_teeth_K4.py"
NONE = np.zeros(0, dtype=np.int64)


def _boom(*args, **kwargs):
    raise RuntimeError("boom")


def _step(op: str, keys=NONE, vectors=None, *, d: int = 3, seed: int = 0) -> DynamicStep:
    """A script step with two fixed probe queries and no sampler check (fast, deterministic)."""
    queries = np.random.default_rng(seed).standard_normal((2, d))
    vectors = np.zeros((0, d)) if vectors is None else vectors
    return DynamicStep(op, f"{op} step", np.asarray(keys, dtype=np.int64), vectors, 1, queries, 2, 1.0, False)


def _quiet_script(n: int = 60, d: int = 2) -> list[DynamicStep]:
    """The default script's shape, small and without sampler steps."""
    return [dataclasses.replace(st, sample=False) for st in dynamic_script(n, d)]


# ------------------------------------------- findings name the call; early failures keep their scenario

def _labels_bracket():
    return [f"bracket(points {sc.points.shape}, queries {sc.queries.shape}, tol={sc.tol!r})"
            for sc in bracket_scenarios()]


def _labels_nystrom():
    return [f"nystrom(G0 {sc.G0.shape}, landmarks {sc.landmarks.shape}, G_L {sc.G_L.shape}, kernel={{...}})"
            for sc in nystrom_scenarios()]


def test_every_finding_of_a_raising_backend_names_the_call_with_the_protocol_arguments():
    for report, labels, names, rtol in (
        (check_bracket(_boom), _labels_bracket(), [sc.name for sc in bracket_scenarios()], BRACKET_RTOL),
        (check_nystrom(_boom), _labels_nystrom(), [sc.name for sc in nystrom_scenarios()], NYSTROM_RTOL),
    ):
        assert [c.scenario for c in report.cases] == names
        for case, label in zip(report.cases, labels):
            assert case.worst.startswith(f"{label} raised RuntimeError: boom (at {HERE}:"), case.worst
            assert case.headline == case.worst and case.kind == "backend error"
            assert math.isnan(case.value) and (case.threshold, case.relation, case.passed) == (rtol, "<=", False)
            assert case.format().startswith(f"  FAIL  {case.scenario}: {label} raised")
    script = _quiet_script()
    report = check_dynamic(_boom, script=script)
    want = (f"first wrong at step 0 ({script[0].about}): dynamic_build(points (60, 2)) raised RuntimeError: boom "
            f"(at {HERE}:")
    assert report.cases[0].worst.startswith(want), report.cases[0].worst
    for method in ("move", "insert", "delete", "rebuild"):
        state = type("Raises", (TreeState,), {method: _boom})
        s = next(i for i, st in enumerate(script) if st.op == method or (method, st.op) == ("move", "nystrom"))
        step = script[s]
        label = {"move": f"move(ids {step.keys.shape}, vectors {step.vectors.shape})",
                 "insert": f"insert(vectors {step.vectors.shape})", "delete": f"delete(ids {step.keys.shape})",
                 "rebuild": f"rebuild(depth={step.depth})"}[method]
        worst = check_dynamic(state, script=script).cases[-2].worst
        assert worst.startswith(f"first wrong at step {s} ({step.about}): {label} raised RuntimeError: boom"), worst


@pytest.mark.parametrize("bad, says", [
    (lambda shape: np.zeros(shape[:-1] + (shape[-1] + 1,)), "expected Ghat of shape"),
    (lambda shape: np.full(shape, np.nan), "non-finite entries"),
])
def test_every_early_nystrom_failure_keeps_its_scenario_name(bad, says):
    report = check_nystrom(lambda G0, L, G_L, kernel: bad((G0.shape[0], G_L.shape[1])))
    assert [c.scenario for c in report.cases] == [sc.name for sc in nystrom_scenarios()]
    assert all(says in c.worst and c.kind == "backend error" and not c.passed for c in report.cases)


@pytest.mark.parametrize("bad, says", [
    (lambda B: (np.zeros(B + 1), np.zeros(B + 1)), "expected lo and hi of shape"),
    (lambda B: (np.full(B, -np.inf), np.zeros(B)), "non-finite values"),
    (lambda B: np.zeros(B), "expected (lo, hi), got ndarray"),
])
def test_every_early_bracket_failure_keeps_its_scenario_name(bad, says):
    report = check_bracket(lambda points, queries, tol: bad(queries.shape[0]))
    assert [c.scenario for c in report.cases] == [sc.name for sc in bracket_scenarios()]
    assert all(says in c.worst and c.kind == "backend error" and not c.passed for c in report.cases)


# ------------------------------------------------------ outputs are read as float64 in the guarded call

@pytest.mark.parametrize("side", ["lo", "hi"])
def test_a_bracket_returned_as_python_numbers_is_graded_as_float64(side):
    def as_numbers(points, queries, tol):
        lo, hi = REFERENCE_BACKEND.bracket(points, queries, tol)
        if side == "lo":
            return [Decimal(float(x)) for x in lo], hi
        return lo, [Fraction(float(x)) for x in hi]

    report = check_bracket(as_numbers)
    assert report.passed, report.format()


def test_a_nystrom_map_returned_as_python_numbers_is_graded_as_float64():
    def as_numbers(G0, landmarks, G_L, kernel):
        Ghat = np.asarray(REFERENCE_BACKEND.nystrom(G0, landmarks, G_L, kernel))
        return [[Decimal(float(x)) for x in row] for row in Ghat]

    report = check_nystrom(as_numbers)
    assert report.passed, report.format()


# ------------------------------------------------------------------- bad arguments are named

@pytest.mark.parametrize("call, message", [
    (lambda: dynamic_script(d=1), "d: expected an integer >= 2, got 1"),
    (lambda: dynamic_script(d=8.0), "d: expected an integer, got"),
    (lambda: dynamic_script(n=59), "n: expected an integer >= 60, got 59"),
    (lambda: check_nystrom(3), "nystrom: expected a callable, got int"),
    (lambda: check_nystrom(_boom, time_limit=-1), "time_limit: expected a finite number of seconds >= 0"),
    (lambda: check_bracket(3), "bracket: expected a callable, got int"),
    (lambda: check_bracket(_boom, dtype="float16"), "dtype: expected one of float64, float32, got 'float16'"),
    (lambda: check_bracket(_boom, time_limit="soon"), "time_limit: expected a number of seconds"),
    (lambda: check_dynamic("TreeState"), "dynamic_build: expected a callable, got str"),
    (lambda: check_dynamic(TreeState, dtype="half"), "dtype: expected one of float64, float32, got 'half'"),
    # alpha and seed are checked before any step (once: alpha >= 1 ran and failed a correct backend,
    # alpha "x" raised a format error, a script without sampler steps took any value)
    (lambda: check_dynamic(TreeState, alpha=2.0), "alpha: expected a false-alarm rate in (0, 1), got 2.0"),
    (lambda: check_dynamic(TreeState, alpha=1), "alpha: expected a false-alarm rate in (0, 1), got 1.0"),
    (lambda: check_dynamic(TreeState, alpha="x"), "alpha: expected a positive number, got"),
    (lambda: check_dynamic(TreeState, alpha=True), "alpha: expected a positive number, got"),
    (lambda: check_dynamic(TreeState, alpha=0.0, script=_quiet_script()), "alpha: expected a finite number > 0"),
    (lambda: check_dynamic(TreeState, seed=-1, script=_quiet_script()), "seed: expected an integer >= 0, got -1"),
    (lambda: check_dynamic(TreeState, seed=1.5, script=_quiet_script()), "seed: expected an integer, got"),
    (lambda: from_static({}), "backend: expected an object providing topk, sample or bracket, got {}"),
    (lambda: from_static(SimpleNamespace(topk=3, dtype="float32")),
     "backend: expected an object providing topk, sample or bracket, got namespace(topk=3"),
])
def test_every_bad_argument_is_named_in_its_message(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value).startswith(message), str(info.value)


# -------------------------------------------------------------------------------- from_static

@pytest.mark.parametrize("protocol", ["topk", "sample", "bracket"])
@pytest.mark.parametrize("style", ["mapping", "object"])
def test_from_static_accepts_each_static_protocol_on_its_own(protocol, style):
    fn = getattr(REFERENCE_BACKEND, protocol)
    backend = {protocol: fn} if style == "mapping" else SimpleNamespace(**{protocol: fn})
    dynamic = from_static(backend)
    assert dynamic.dtype == "float64"
    points = np.random.default_rng(3).standard_normal((30, 3))
    state = dynamic.dynamic_build(points)
    assert [name for name in ("topk", "sample", "bracket") if getattr(state, name) is not None] == [protocol]
    queries = np.random.default_rng(4).standard_normal((2, 3))
    out = {"topk": lambda: state.topk(queries, 3), "sample": lambda: state.sample(queries, 5, 0),
           "bracket": lambda: np.stack(state.bracket(queries, 0.5))}[protocol]()
    assert out.shape == {"topk": (2, 3), "sample": (2, 5), "bracket": (2, 2)}[protocol]


# ------------------------------------------------------------------------- StaticState dtypes

@pytest.mark.parametrize("dtype", [np.int64, np.float32])
def test_static_state_holds_float64_vectors_and_bool_flags(dtype):
    seen = []

    def topk(points, queries, k):
        seen.append(points.copy())
        return np.zeros((queries.shape[0], k), dtype=np.int64)

    state = StaticState({"topk": topk}, np.arange(12).reshape(4, 3).astype(dtype))
    assert state.vectors.dtype == np.float64 and state.alive.dtype == np.bool_
    moved = np.array([[0.5, 0.25, 0.1]])  # 0.1 is not a float32 number
    state.move(np.array([1]), moved)
    assert state.insert(np.array([[0.3, 0.7, 1.1]])).tolist() == [4]
    assert state.alive.dtype == np.bool_
    state.delete(np.array([2]))
    assert state.alive.dtype == np.bool_ and state.alive.tolist() == [True, True, False, True, True]
    state.topk(np.ones((1, 3)), 1)
    assert seen[-1].dtype == np.float64
    assert seen[-1].tolist() == [[0.0, 1.0, 2.0], [0.5, 0.25, 0.1], [9.0, 10.0, 11.0], [0.3, 0.7, 1.1]]


# --------------------------------------------------------------------- ids handed to a backend

class _RecordingState(StaticState):
    """The reference backend rebuilt at every query, recording the ids every update receives."""

    log: list[tuple[str, np.dtype, tuple[int, ...]]] = []

    def move(self, ids, vectors):
        self.log.append(("move", ids.dtype, ids.shape))
        super().move(ids, vectors)

    def delete(self, ids):
        self.log.append(("delete", ids.dtype, ids.shape))
        super().delete(ids)


def test_empty_and_non_empty_updates_hand_the_backend_int64_ids():
    # (The reference Tree refuses an empty update, so TREE_BACKEND is not run on this script.)
    rng = np.random.default_rng(5)
    build = rng.standard_normal((40, 3))
    script = [_step("build", vectors=build), _step("move"), _step("nystrom"), _step("delete"),
              _step("move", [3, 7], rng.standard_normal((2, 3))), _step("delete", [7])]
    report = check_dynamic(REBUILD_BACKEND.dynamic_build, script=script)
    assert report.passed and len(report.cases) == 2 * len(script), report.format()
    _RecordingState.log = []
    report = check_dynamic(lambda points: _RecordingState(REFERENCE_BACKEND, points), script=script)
    assert report.passed, report.format()
    assert _RecordingState.log == [("move", np.int64, (0,)), ("move", np.int64, (0,)), ("delete", np.int64, (0,)),
                                   ("move", np.int64, (2,)), ("delete", np.int64, (1,))]


# ------------------------------------------------------------------- ids the backend hands back

@pytest.mark.parametrize("returned, message", [
    ([0, 10**6], "insert returned id 1000000: ids must be in [0, 1104] (dense: the kit holds a row per id)"),
    ([1105, 0], "insert returned id 1105: ids must be in [0, 1104] (dense: the kit holds a row per id)"),
    ([-3, 10**6], "insert returned id -3: ids must be in [0, 1104] (dense: the kit holds a row per id)"),
    ([0, -1], "insert returned id -1: ids must be in [0, 1104] (dense: the kit holds a row per id)"),
    ([0, 1104], "insert returned id 0, which is live already"),
    ([5, 5], "insert returned a repeated id ([5, 5]...)"),
    ([5.0, 6.0], "insert returned float64 ids of shape (2,), expected 2 integer ids"),
])
def test_every_refusal_of_inserted_ids_names_the_offending_id(returned, message):
    # limit = 16 * (3 built + 2 inserted) + 1024 = 1104
    class Returns(TreeState):
        def insert(self, vectors):
            super().insert(vectors)
            return np.array(returned)

    script = [_step("build", vectors=np.eye(3)), _step("insert", vectors=np.ones((2, 3)))]
    report = check_dynamic(Returns, script=script)
    assert report.cases[-1].worst == f"first wrong at step 1 (insert step): {message}"


@pytest.mark.parametrize("empty", [lambda: np.zeros(0, dtype=np.int64), list, lambda: np.zeros(0, dtype=np.uint8)])
def test_an_empty_insert_is_taken_whatever_empty_sequence_the_backend_returns(empty):
    # Once a crash of the kit (the range check took min() of no ids) and a refusal of [] (float64 to NumPy).
    class Returns(StaticState):
        def insert(self, vectors):
            ids = super().insert(vectors)
            return empty() if ids.size == 0 else ids

    rng = np.random.default_rng(6)
    script = [_step("build", vectors=rng.standard_normal((20, 3))), _step("insert", vectors=np.zeros((0, 3))),
              _step("insert", vectors=rng.standard_normal((2, 3)), seed=1), _step("delete", [20])]
    report = check_dynamic(lambda points: Returns(REFERENCE_BACKEND, points), script=script)
    assert report.passed and len(report.cases) == 2 * len(script), report.format()
    assert [c.note.split(" live")[0] for c in report.cases] == ["20"] * 4 + ["22"] * 2 + ["21"] * 2


def test_an_id_never_issued_is_an_invalid_id_even_after_a_one_row_build():
    class AnswersOne:
        def __init__(self, points):
            pass

        move = insert = delete = _boom

        def topk(self, queries, k):
            return np.ones((queries.shape[0], k), dtype=np.int64)

    report = check_dynamic(AnswersOne, script=[_step("build", vectors=np.ones((1, 3)))])
    (case,) = report.cases
    assert case.kind == "invalid id" and "id 1 (outside [0, 1))" in case.worst, case


# --------------------------------------------------------------- the cases a failing update leaves

def test_a_failing_update_leaves_its_error_case_and_one_skipped_case_with_documented_fields():
    class ReadOnly(TreeState):
        def move(self, ids, vectors):
            raise RuntimeError("index is read-only")

    script = _quiet_script()
    report = check_dynamic(ReadOnly, script=script)
    *probes, failed, skipped = report.cases
    assert [c.scenario for c in probes] == ["step 0 topk", "step 0 bracket"] and all(c.passed for c in probes)
    assert (failed.scenario, failed.statistic, failed.threshold, failed.relation, failed.passed, failed.skipped,
            failed.kind) == ("step 1 nystrom", "the update", 0.0, "<=", False, False, "backend error")
    assert math.isnan(failed.value) and failed.headline == failed.worst
    assert failed.worst.startswith(f"first wrong at step 1 ({script[1].about}): move(ids (60,), vectors (60, 2)) "
                                   "raised RuntimeError: index is read-only")
    assert skipped == type(skipped)(f"steps 2-{len(script) - 1}", "", 0.0, 0.0, "<=", True,
                                    "not replayed: the backend went wrong at step 1", skipped=True)
    assert skipped.format() == f"  SKIP  steps 2-{len(script) - 1}: not replayed: the backend went wrong at step 1"
    # a failing last step leaves no skipped case
    report = check_dynamic(ReadOnly, script=script[:2])
    assert [c.scenario for c in report.cases] == ["step 0 topk", "step 0 bracket", "step 1 nystrom"]


# --------------------------------------------------------- the bracket scenarios are what they say

def test_the_bracket_scenarios_are_the_data_their_descriptions_state():
    sc = {s.name: s for s in bracket_scenarios()}
    assert list(sc) == ["loose", "medium", "tight", "duplicates", "huge-logits", "single-target", "one-sided",
                        "two-points", "cross", "extreme-point"]
    for name, tol in (("loose", 2.0), ("medium", 0.3), ("tight", 1e-3)):
        assert sc[name].points.shape == (400, 6) and sc[name].tol == tol
    assert np.unique(sc["duplicates"].points, axis=0).shape == (40, 5) and sc["duplicates"].points.shape[0] > 40
    assert sc["single-target"].points.shape[0] == 1
    e1 = np.eye(3)[0]
    two = sc["two-points"]
    assert two.points.tolist() == [(-e1).tolist(), e1.tolist()] and two.tol == 300.0
    assert two.queries.tolist() == [(100 * e1).tolist(), (-100 * e1).tolist(), (60 * e1).tolist(),
                                    (-60 * e1).tolist()]
    cross = sc["cross"]
    axes = np.vstack([np.eye(4), -np.eye(4)])
    assert cross.points.tolist() == axes.tolist() and cross.queries.tolist() == (1000 * axes).tolist()
    assert cross.tol == 3000.0
    one = sc["one-sided"]
    clusters = one.points.reshape(10, 40, 5)
    offsets = clusters[:, 1:] - clusters[:, :1]  # 39 points displaced from each centre
    assert np.abs(offsets - 0.5 * np.eye(5)[0]).max() < 1e-3 and one.tol == 10.0
    assert np.abs(one.queries - 8.0 * np.eye(5)[0]).max() < 0.1
    ext = sc["extreme-point"]
    assert ext.points.shape == (200, 4) and np.allclose(np.linalg.norm(ext.queries, axis=1), 1000.0, rtol=1e-12)
