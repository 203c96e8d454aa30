"""Teeth for the dynamic, encoder and Nystrom checks of the kit (helper G1).

1. An output of the backend the kit cannot convert is a failure of the step or probe that called
   it, never an exception out of ``check_dynamic``: an insert whose ids raise in ``__array__`` or
   are a ragged list fails that insert step (the message names the conversion); the same outputs
   from move, delete, rebuild (and a Nystrom update, a move of every row) are ignored, as the
   protocol says; from topk, bracket or sample they fail that probe. Looking a state's method up
   is backend code too: a lookup that raises fails the build step.
2. A caller's own script with several inserts, then moves and deletes of keys of each insert
   (keys count the rows in build/insert order), replays and passes on the reference's tree, the
   rebuilt baseline and a slot allocator that reuses freed ids first (so key != id).
3. ``dynamic_backends._reference()`` (the construction of ``REBUILD_BACKEND``, run once at
   import) builds ``from_static(REFERENCE_BACKEND)``.
4. An encoder scenario whose oracle gradients are all exactly zero (a one-target full softmax)
   gets a report, passing for the exact backend, failing for a non-zero gradient.
5. Every tolerance check of the encoder (loss and gradients, float64 and float32) and of the
   Nystrom check passes exactly at its tolerance and fails just above (the first float whose error
   is above it), with the exact message.
6. Every field of the encoder and Nystrom checks' error (and skipped) cases, and the whole label
   of the failing call, for every way the call can fail.

Deterministic (fixed seeds, tiny data); one sampler run (a build of 60 rows).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest

from reference.conformance import dynamic_backends
from reference.conformance.dynamic import DynamicStep, check_dynamic, dynamic_script
from reference.conformance.dynamic_backends import REBUILD_BACKEND, TREE_BACKEND, StaticState, TreeState
from reference.conformance.encoder import (
    ENCODER_RTOL, GRADIENT_FLOOR, EncoderScenario, _encoder_oracle, check_encoder, encoder_scenarios,
)
from reference.conformance.nystrom import (
    NYSTROM_RTOL, NystromScenario, _nystrom_oracle, check_nystrom, nystrom_scenarios,
)
from reference.conformance.reference_backend import REFERENCE_BACKEND
from reference.conformance.report import Case

HERE = "test_kit_teeth_G1.py"


class _Unconvertible:
    """An output whose conversion to an array raises (a tensor on a lost device, say)."""

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise RuntimeError("cannot convert")


CONVERT_AT = f"at {HERE}:{_Unconvertible.__array__.__code__.co_firstlineno + 1}"
RAGGED = [[1, 2], [3]]


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("boom")


BOOM_AT = f"at {HERE}:{_boom.__code__.co_firstlineno + 1}"


def _assert_case(case: Case, want: Case) -> None:
    """Every field equal (NaN equal to NaN)."""
    for field in dataclasses.fields(Case):
        got, exp = getattr(case, field.name), getattr(want, field.name)
        if isinstance(exp, float) and math.isnan(exp):
            assert isinstance(got, float) and math.isnan(got), (field.name, case)
        else:
            assert got == exp, (field.name, got, exp)


def _error(scenario: str, statistic: str, threshold: float, message: str) -> Case:
    return Case(scenario, statistic, math.nan, threshold, "<=", False, message, kind="backend error",
                headline=message)


# ------------------------------------------------------------ 1. unconvertible outputs of a dynamic backend

def _returning(method: str, out: Any) -> Any:
    """dynamic_build of a TreeState whose ``method`` does its work, then returns ``out``."""
    original = getattr(TreeState, method)

    def replaced(self: TreeState, *args: Any) -> Any:
        original(self, *args)
        return out

    state = type(f"Returns{method.title()}", (TreeState,), {method: replaced})
    return lambda points: state(points)


def _kinds_script() -> list[DynamicStep]:
    """build, Nystrom update, large move, insert, delete, rebuild of dynamic_script(n=60), no sampler."""
    base = dynamic_script(n=60)
    return [dataclasses.replace(base[s], sample=False) for s in (0, 1, 3, 4, 6, 8)]


def test_an_unconvertible_insert_fails_its_step_and_other_steps_ignore_their_returns() -> None:
    """Pins theme 1 for the updates: an insert whose output raises in ``__array__`` or is ragged fails
    step 3 with the whole message (the conversion named, inside the guarded call); every earlier
    step passed; the rest is listed as not replayed. The same outputs from move (the Nystrom update
    and the large move), delete and rebuild are ignored: every case passes. Killed: check_dynamic
    mutant 75 (convert=None: the RuntimeError/ValueError escaped check_dynamic)."""
    script = _kinds_script()
    where = f"step 3 ({script[3].about})"
    for out in (_Unconvertible(), RAGGED):
        report = check_dynamic(_returning("insert", out), script=script)
        assert [c.scenario for c in report.cases] == [
            f"step {s} {p}" for s in range(3) for p in ("topk", "bracket")] + ["step 3 insert", "steps 4-5"]
        assert all(c.passed and not c.skipped for c in report.cases[:6]), report.cases
        case = report.cases[6]
        prefix = f"first wrong at {where}: converting the output of insert(vectors (18, 8)) raised "
        if isinstance(out, _Unconvertible):
            _assert_case(case, _error("step 3 insert", "the update", 0.0,
                                      prefix + f"RuntimeError: cannot convert ({CONVERT_AT})"))
        else:
            assert case.worst.startswith(prefix + "ValueError: ") and case.headline == case.worst, case
            assert (case.passed, case.kind, case.statistic) == (False, "backend error", "the update"), case
        skipped = report.cases[7]
        assert skipped.skipped and skipped.passed
        assert skipped.worst == "not replayed: the backend went wrong at step 3"
    for method in ("move", "delete", "rebuild"):
        for out in (_Unconvertible(), RAGGED):
            report = check_dynamic(_returning(method, out), script=script)
            assert len(report.cases) == 12, (method, report)
            assert all(c.passed and not c.skipped for c in report.cases), (method, report)


@pytest.mark.parametrize("out", [_Unconvertible(), RAGGED], ids=["raises", "ragged"])
def test_an_unconvertible_query_answer_fails_its_probe(out: Any) -> None:
    """Pins theme 1 for the probes: topk, bracket and sample answers that cannot be converted fail
    that probe of step 0 (the report stops there), never raise out of check_dynamic."""
    build = dynamic_script(n=60)[0]
    quiet, sampled = [dataclasses.replace(build, sample=False)], [dataclasses.replace(build, sample=True)]
    cases = {probe: check_dynamic(_returning(probe, out), script=quiet).cases for probe in ("topk", "bracket")}
    if isinstance(out, _Unconvertible):  # one sampler run (the slowest probe)
        cases["sample"] = check_dynamic(_returning("sample", out), script=sampled).cases
    for probe, got in cases.items():
        failed = [c for c in got if not c.passed]
        assert failed and all(c.scenario.startswith(f"step 0 {probe}") for c in failed), (probe, got)
        assert all(c.headline.startswith("first wrong at step 0 (build: 60 clustered targets in R^8): ")
                   for c in failed), (probe, failed)
    if isinstance(out, _Unconvertible):
        assert "converting the output of topk(points (60, 9), queries (7, 9), k=10) raised RuntimeError: " \
               f"cannot convert ({CONVERT_AT})" == [c for c in cases["topk"] if not c.passed][0].worst
        assert f"raised RuntimeError: cannot convert ({CONVERT_AT})" in cases["sample"][-1].worst


class _LostDevice:
    """A descriptor standing for a state attribute whose lookup runs backend code that raises."""

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        raise RuntimeError("device lost")


LOOKUP_AT = f"at {HERE}:{_LostDevice.__get__.__code__.co_firstlineno + 1}"


@pytest.mark.parametrize("method", ["move", "insert", "delete", "rebuild", "topk", "bracket", "sample"])
def test_a_state_method_whose_lookup_raises_fails_the_build_step(method: str) -> None:
    """Pins theme 1 for the state's methods: looking one up is backend code (a property of a C++ or
    PyTorch wrapper), so a lookup that raises is the build step's failure, with the whole message,
    never an exception out of check_dynamic (before the fix: RuntimeError out of check_dynamic)."""
    state = type(f"Lost{method.title()}", (TreeState,), {method: _LostDevice()})
    script = _kinds_script()
    report = check_dynamic(state, script=script)
    assert [c.scenario for c in report.cases] == ["step 0 build", "steps 1-5"]
    message = (f"first wrong at step 0 ({script[0].about}): converting the output of dynamic_build(points (60, 8)) "
               f"raised RuntimeError: device lost ({LOOKUP_AT})")
    _assert_case(report.cases[0], _error("step 0 build", "the update", 0.0, message))


# ------------------------------------------------------------ 2. a caller's script with several inserts

class _SlotState:
    """A slot allocator: insert reuses the most recently freed id first, then appends (so key != id)."""

    def __init__(self, points: np.ndarray) -> None:
        self.rows = {y: np.array(v) for y, v in enumerate(points)}
        self.free: list[int] = []
        self.top = points.shape[0]

    def move(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        for y, v in zip(ids.tolist(), vectors):
            if y not in self.rows:
                raise KeyError(f"id {y} is not live")
            self.rows[y] = np.array(v)

    def insert(self, vectors: np.ndarray) -> np.ndarray:
        ids = []
        for v in vectors:
            if self.free:
                y = self.free.pop()
            else:
                y, self.top = self.top, self.top + 1
            self.rows[y] = np.array(v)
            ids.append(y)
        return np.array(ids, dtype=np.int64)

    def delete(self, ids: np.ndarray) -> None:
        for y in ids.tolist():
            del self.rows[y]
            self.free.append(y)

    def topk(self, queries: np.ndarray, k: int) -> np.ndarray:
        ids = np.array(sorted(self.rows), dtype=np.int64)
        logits = queries @ np.array([self.rows[int(y)] for y in ids]).T
        return ids[np.argsort(-logits, axis=1, kind="stable")[:, :k]]


def _several_inserts_script() -> list[DynamicStep]:
    """build 60; delete 3 built rows; insert A (keys 60-65); insert B (66-72, a far region); move the
    first and last key of A and of B; delete a key of each; insert C (73-76); move and delete keys of
    A, B and C. Probes: 3 random directions of norm 2.5 and 3 * the changed rows' unit vectors."""
    rng = np.random.default_rng(7)
    build = dataclasses.replace(dynamic_script(n=60)[0], sample=False)
    d = build.vectors.shape[1]
    current = {y: v for y, v in enumerate(build.vectors)}
    steps = [build]
    none = np.zeros(0, dtype=np.int64)

    def probes(changed: np.ndarray) -> np.ndarray:
        u = rng.standard_normal((3, d))
        return np.vstack([2.5 * u / np.linalg.norm(u, axis=1, keepdims=True),
                          3.0 * changed / np.linalg.norm(changed, axis=1, keepdims=True)])

    def step(op: str, keys: list[int], vectors: np.ndarray) -> None:
        keys_a = np.array(keys, dtype=np.int64)
        if op == "insert":
            first = max(current) + 1
            for i, v in enumerate(vectors):
                current[first + i] = v
        elif op == "move":
            for y, v in zip(keys, vectors):
                current[y] = v
        else:  # delete: the deleted rows' last vectors
            vectors = np.array([current.pop(y) for y in keys])
        steps.append(DynamicStep(op, f"{op} keys {keys}" if keys else f"{op} {len(vectors)} rows",
                                 keys_a if op != "insert" else none, vectors, 0, probes(vectors), 5, 1.0, False))

    def far(count: int, norm: float) -> np.ndarray:
        u = rng.standard_normal((count, d))
        return norm * u / np.linalg.norm(u, axis=1, keepdims=True)

    step("delete", [3, 10, 20], np.zeros((0, d)))
    step("insert", [], build.vectors[rng.choice(60, 6)] + 0.2 * rng.standard_normal((6, d)))
    step("insert", [], far(1, 3.5) + 0.3 * rng.standard_normal((7, d)))
    step("move", [60, 65, 66, 72], far(4, 4.0))
    step("delete", [61, 67], np.zeros((0, d)))
    step("insert", [], build.vectors[rng.choice(60, 4)] + 0.2 * rng.standard_normal((4, d)))
    step("move", [62, 68, 73, 76], far(4, 4.0))
    step("delete", [63, 69, 74], np.zeros((0, d)))
    return steps


@pytest.mark.parametrize("backend", ["tree", "rebuild", "slots"])
def test_a_script_with_several_inserts_then_moves_and_deletes_of_each_replays(backend: str) -> None:
    """Pins theme 2: keys count rows in build and insert order across SEVERAL inserts (the default
    script's second insert is its last step). Every case of every step passes, none skipped, on the
    tree, the rebuilt baseline and a slot allocator reusing freed ids. Killed: check_dynamic mutant
    236 (next_key -= P: the second insert filed under the first's keys; KeyError 66)."""
    builds = {"tree": TREE_BACKEND.dynamic_build, "rebuild": REBUILD_BACKEND.dynamic_build, "slots": _SlotState}
    build = builds[backend]
    script = _several_inserts_script()
    report = check_dynamic(build, script=script)
    probes = ("topk",) if backend == "slots" else ("topk", "bracket")
    assert [c.scenario for c in report.cases] == [f"step {s} {p}" for s in range(len(script)) for p in probes]
    assert all(c.passed and not c.skipped for c in report.cases), [c for c in report.cases if not c.passed]


def test_the_slot_allocator_really_reuses_ids() -> None:
    """The slots backend of the test above maps keys to other ids (else it would add nothing)."""
    state = _SlotState(np.zeros((4, 2)))
    state.delete(np.array([1, 2]))
    assert state.insert(np.ones((3, 2))).tolist() == [2, 1, 4]


# ------------------------------------------------------------ 3. REBUILD_BACKEND's construction

def test_reference_builds_the_reference_backend_rebuilt_from_scratch() -> None:
    """Pins theme 3: ``_reference()`` (run once at import, which a test using REBUILD_BACKEND cannot
    see) returns from_static(REFERENCE_BACKEND): its repr, dtype, and a state over the reference's
    own static backend offering its three protocols. Killed: dynamic_backends._reference mutant 1
    (from_static(None) raised ValueError)."""
    built = dynamic_backends._reference()
    assert repr(built) == "from_static(ReferenceBackend())" == repr(REBUILD_BACKEND)
    assert built.dtype == "float64"
    points = np.arange(12.0).reshape(4, 3)
    state = built.dynamic_build(points)
    assert isinstance(state, StaticState) and state.backend is REFERENCE_BACKEND
    assert np.array_equal(state.vectors, points)
    assert all(callable(getattr(state, name)) for name in ("topk", "sample", "bracket"))
    assert state.topk(np.array([[0.0, 0.0, 1.0]]), 2).tolist() == [[3, 2]]


# ------------------------------------------------------------ 4./5. encoder: zero gradients, the tolerance

def _one_target(sc: EncoderScenario) -> EncoderScenario:
    """The scenario cut to ONE target, every positive 0: loss 0, every gradient exactly 0."""
    return dataclasses.replace(sc, Y=sc.Y[:1], pos=np.zeros_like(sc.pos))


FULL = [sc for sc in encoder_scenarios() if sc.neg is None]  # 3 float64, 1 float32


def _returns(loss: float, grads: dict[str, np.ndarray]) -> Any:
    return lambda *args, **kwargs: (loss, {k: v.copy() for k, v in grads.items()})


def test_an_encoder_scenario_with_all_gradients_zero_gets_a_report() -> None:
    """Pins theme 4: with scale 0 every gradient tensor is judged against the 1e-300 floor: the exact
    backend passes with value 0 (no ZeroDivisionError), a backend with one gradient entry 1e-12
    fails naming that tensor. Killed: _compare_encoder mutant 54 (no 1e-300: ZeroDivisionError)."""
    assert len(FULL) == 4 and {sc.config.dtype for sc in FULL} == {"float64", "float32"}
    for sc in map(_one_target, FULL):
        ref_loss, ref_grads = _encoder_oracle(sc)
        assert ref_loss == 0.0 and all(not g.any() for g in ref_grads.values()), sc.name
        case, = check_encoder(REFERENCE_BACKEND.encoder, scenarios=[sc]).cases
        assert (case.passed, case.value, case.worst) == (True, 0.0, "loss 0.0 vs oracle 0.0"), case
        name = sorted(ref_grads)[0]
        grads = dict(ref_grads, **{name: ref_grads[name].copy()})
        grads[name].flat[0] = 1e-12
        case, = check_encoder(_returns(0.0, grads), scenarios=[sc]).cases
        assert not case.passed and case.value == pytest.approx(1e-12 / 1e-300, rel=1e-15), case
        assert case.worst.startswith(f"grads[{name!r}] at index ") and case.worst.endswith(f"; wrong: {name}"), case


def _at_ratio(ref: float, denom: float, tol: float) -> float:
    """A float x with |x - ref| / denom == tol exactly (searched by single float steps), or NaN."""
    x = ref + tol * denom
    for _ in range(200):
        q = abs(x - ref) / denom
        if q == tol:
            return x
        x = float(np.nextafter(x, math.inf if q < tol else -math.inf))
    return math.nan


def _above(x: float, denom: float, tol: float) -> float:
    """The first float after x (>= 0) whose error x / denom is above tol (the next one or the one after:
    near the tolerance two floats can give the same quotient)."""
    while x / denom <= tol:
        x = float(np.nextafter(x, math.inf))
    return x


def test_encoder_loss_error_exactly_at_the_tolerance_passes_and_one_float_above_fails() -> None:
    """Pins theme 5 for the loss (float64 and float32 tolerances): oracle loss 0, so the error is the
    loss itself: at the tolerance the case passes and lists nothing as wrong; one float above it
    fails, "; wrong: loss", with the exact headline. Killed: _compare_encoder mutant 74 (>=)."""
    for sc in map(_one_target, FULL):
        tol = ENCODER_RTOL[sc.config.dtype]
        _, ref_grads = _encoder_oracle(sc)
        case, = check_encoder(_returns(tol, ref_grads), scenarios=[sc]).cases
        _assert_case(case, Case(sc.name, "largest relative error (loss, gradients)", tol, tol, "<=", True,
                                f"loss {tol!r} vs oracle 0.0", sc.about,
                                headline=f"relative error {tol:.3g} > {tol:g}: loss {tol!r} vs oracle 0.0"))
        above = float(np.nextafter(tol, math.inf))
        case, = check_encoder(_returns(above, ref_grads), scenarios=[sc]).cases
        worst = f"loss {above!r} vs oracle 0.0; wrong: loss"
        _assert_case(case, Case(sc.name, "largest relative error (loss, gradients)", above, tol, "<=", False,
                                worst, sc.about, headline=f"relative error {above:.3g} > {tol:g}: {worst}"))


def test_encoder_gradient_error_exactly_at_the_tolerance_passes_and_just_above_fails() -> None:
    """Pins theme 5 for the gradients, on every full-softmax scenario (float64 and float32): one entry
    of one tensor off by exactly tol * its denominator (max(largest |oracle| in the tensor,
    GRADIENT_FLOOR * largest of all)) passes with nothing wrong; the next float with a larger error
    fails, "; wrong:" naming that tensor; the message names the entry. Killed: _compare_encoder mutant 74 (>=)."""
    for sc in FULL:
        # Feature 0 of every query and target zeroed: the first weight row of each tower has an exactly
        # zero gradient, so the backend's entry there IS the error (fine float steps).
        X, Y = sc.X.copy(), sc.Y.copy()
        X[:, 0], Y[:, 0] = 0, 0
        sc = dataclasses.replace(sc, X=X, Y=Y)
        tol = ENCODER_RTOL[sc.config.dtype]
        ref_loss, ref_grads = _encoder_oracle(sc)
        scale = max(float(np.abs(g).max()) for g in ref_grads.values())
        # An error of exactly tol is a float for most denominators (it depends on their mantissa): the
        # first tower whose denominator has one.
        for name in ("query.W0", "target.W0"):
            ref = ref_grads[name]
            assert not ref[0].any() and ref.any(), (sc.name, name)
            denom = max(float(np.abs(ref).max()), GRADIENT_FLOOR * scale)
            x = _at_ratio(0.0, denom, tol)
            if not math.isnan(x):
                break
        assert not math.isnan(x), sc.name
        idx = (0, ref.shape[1] - 1)
        for value, passed in ((x, True), (_above(x, denom, tol), False)):
            grads = dict(ref_grads, **{name: ref.copy()})
            grads[name][idx] = value
            case, = check_encoder(_returns(ref_loss, grads), scenarios=[sc]).cases
            error = value / denom
            assert (error == tol) is passed
            worst = (f"grads[{name!r}] at index {idx}: backend {value:.6g}, "
                     f"oracle {ref[idx]:.6g} (largest |oracle| in the tensor {float(np.abs(ref).max()):.3g})")
            worst += "" if passed else f"; wrong: {name}"
            _assert_case(case, Case(sc.name, "largest relative error (loss, gradients)", error, tol, "<=", passed,
                                    worst, sc.about, headline=f"relative error {error:.3g} > {tol:g}: {worst}"))


# ------------------------------------------------------------ 5. Nystrom: the tolerance

def test_nystrom_error_exactly_at_the_tolerance_passes_and_just_above_fails() -> None:
    """Pins theme 5 for check_nystrom on every scenario: G_L's column 0 zeroed (the oracle's Ghat
    column 0 is then exactly 0); a backend returning the oracle with one entry of column 0 set to D,
    D / max|Ghat| == NYSTROM_RTOL exactly, passes (at a landmark, the P10 note in the message); the
    next float with a larger error (at a non-landmark) fails with the exact headline. Killed:
    check_nystrom mutant 126 (<)."""
    statistic = "max |Ghat - oracle| / max |oracle|"
    for sc in nystrom_scenarios():
        G_L = sc.G_L.copy()
        G_L[:, 0] = 0.0
        sc = dataclasses.replace(sc, G_L=G_L)
        want = _nystrom_oracle(sc)
        assert not want[:, 0].any(), sc.name
        top = float(np.abs(want).max())
        D = _at_ratio(0.0, top, NYSTROM_RTOL)
        assert not math.isnan(D), sc.name
        landmark = int(sc.landmarks[0])
        other = next(y for y in range(want.shape[0]) if y not in sc.landmarks)
        for y, value, passed in ((landmark, D, True), (other, _above(D, top, NYSTROM_RTOL), False)):
            got = want.copy()
            got[y, 0] = value
            case, = check_nystrom(lambda *args: got, scenarios=[sc]).cases
            ratio = value / top
            assert (ratio == NYSTROM_RTOL) is passed
            note = " (a landmark: P10 says Ghat = G_L there)" if passed else ""
            where = f"target {y}{note}, column 0: backend {value:.10g}, oracle {want[y, 0]:.10g}"
            _assert_case(case, Case(sc.name, statistic, ratio, NYSTROM_RTOL, "<=", passed, where, sc.about,
                                    headline=f"Ghat off by {ratio:.3g} relative (> {NYSTROM_RTOL:g}) at {where}"))


# ------------------------------------------------------------ 6. the encoder's and Nystrom's error cases

def _label(sc: EncoderScenario) -> str:
    """The failing call's label, written out from the protocol's argument names."""
    shape = lambda a: str(tuple(a.shape))  # noqa: E731
    label = (f"encoder(params={{...}}, config={{...}}, X {shape(sc.X)}, pos {shape(sc.pos)}, Y {shape(sc.Y)}")
    if sc.neg is not None:
        label += f", neg {shape(sc.neg)}, " + ("log_q=None" if sc.log_q is None else f"log_q {shape(sc.log_q)}")
    return label + ")"


def _oracle_with(change: str) -> Any:
    """An encoder returning the oracle's answer spoiled in one way."""
    def encoder(params: dict, config: dict, X: np.ndarray, pos: np.ndarray, Y: np.ndarray, neg: Any = None,
                log_q: Any = None) -> Any:
        loss, grads = REFERENCE_BACKEND.encoder(params, config, X, pos, Y, neg, log_q)
        first = sorted(grads)[0]
        if change == "not a pair":
            return 3
        if change == "grads a list":
            return loss, list(grads.values())
        if change == "nan loss":
            return math.nan, grads
        if change == "names":
            return loss, {"bogus" if k == first else k: v for k, v in grads.items()}
        if change == "shape":
            return loss, dict(grads, **{first: np.zeros(grads[first].shape + (1,))})
        if change == "inf entry":
            bad = grads[first].copy()
            bad.flat[0] = math.inf
            return loss, dict(grads, **{first: bad})
        if change == "unconvertible":
            return loss, dict(grads, **{first: _Unconvertible()})
        raise AssertionError(change)

    return encoder


def _encoder_message(change: str, sc: EncoderScenario) -> str:
    first = sorted(_encoder_oracle(sc)[1])[0]
    return {
        "raises": f"{_label(sc)} raised RuntimeError: boom ({BOOM_AT})",
        "unconvertible": f"converting the output of {_label(sc)} raised RuntimeError: cannot convert "
                         f"({CONVERT_AT})",
        "not a pair": 'expected (loss, grads) or {"loss": ..., "grads": ...}, got int',
        "grads a list": "grads: expected a dict name -> array, got list",
        "nan loss": "loss: expected a finite value, got nan",
        "names": f"grads: missing [{first!r}], unexpected ['bogus'] (names as in reference.encoder.param_shapes)",
        "shape": f"grads[{first!r}]: expected shape {_encoder_oracle(sc)[1][first].shape}, "
                 f"got {_encoder_oracle(sc)[1][first].shape + (1,)}",
        "inf entry": f"grads[{first!r}]: 1 non-finite entries",
    }[change]


@pytest.mark.parametrize("change", ["raises", "unconvertible", "not a pair", "grads a list", "nan loss", "names",
                                    "shape", "inf entry"])
def test_every_encoder_error_case_has_every_field_and_the_whole_label(change: str) -> None:
    """Pins theme 6 for check_encoder: on every scenario (full, sampled with and without log_q, float32)
    the error case's every field (statistic, NaN value, the dtype's tolerance, '<=', failed, kind
    "backend error", headline = worst = the message, no note); a failing call's whole label, pos
    and the keyword arguments named as in the protocol. Killed: check_encoder mutant 42 (XXposXX)."""
    encoder = _boom if change == "raises" else _oracle_with(change)
    scenarios = encoder_scenarios()
    report = check_encoder(encoder, scenarios=scenarios)
    assert len(report.cases) == len(scenarios)
    for sc, case in zip(scenarios, report.cases):
        tol = ENCODER_RTOL[sc.config.dtype]
        message = _encoder_message(change, sc)
        _assert_case(case, _error(sc.name, "largest relative error (loss, gradients)", tol, message))


def test_a_declined_sampled_encoder_scenario_is_a_skipped_case_with_every_field() -> None:
    """Pins the skipped case's fields: NotImplementedError on the sampled loss (only there)."""
    def encoder(params: dict, config: dict, X: np.ndarray, pos: np.ndarray, Y: np.ndarray, neg: Any = None,
                log_q: Any = None) -> Any:
        if neg is not None:
            raise NotImplementedError("full softmax only")
        return REFERENCE_BACKEND.encoder(params, config, X, pos, Y)

    for sc, case in zip(encoder_scenarios(), check_encoder(encoder).cases):
        tol = ENCODER_RTOL[sc.config.dtype]
        if sc.neg is None:
            assert case.passed and not case.skipped and case.value <= tol, case
            continue
        _assert_case(case, Case(sc.name, "largest relative error (loss, gradients)", math.nan, tol, "<=", True,
                                "skipped: the backend raised NotImplementedError (full softmax only)",
                                skipped=True))


def _nystrom_label(sc: NystromScenario) -> str:
    return f"nystrom(G0 {sc.G0.shape}, landmarks {sc.landmarks.shape}, G_L {sc.G_L.shape}, kernel={{...}})"


@pytest.mark.parametrize("change", ["raises", "unconvertible", "ragged", "shape", "non-finite"])
def test_every_nystrom_error_case_has_every_field_and_the_whole_label(change: str) -> None:
    """Pins theme 6 for check_nystrom on every scenario: a raising call, an unconvertible or ragged
    output, a wrong shape and non-finite entries give an error case whose every field is the
    check's own (statistic, NaN, NYSTROM_RTOL, '<=', failed, "backend error", headline = worst =
    the message with the call's whole label). Killed: check_nystrom mutant 62 (statistic None)."""
    scenarios = nystrom_scenarios()
    wants = {sc.name: _nystrom_oracle(sc) for sc in scenarios}

    def nystrom(G0: np.ndarray, landmarks: np.ndarray, G_L: np.ndarray, kernel: dict) -> Any:
        want = next(w for name, w in wants.items() if w.shape == (G0.shape[0], G_L.shape[1]))
        if change == "raises":
            return _boom()
        if change == "unconvertible":
            return _Unconvertible()
        if change == "ragged":
            return RAGGED
        if change == "shape":
            return want[:, :-1]
        bad = want.copy()
        bad[1, 0], bad[2, 1] = math.nan, -math.inf
        return bad

    report = check_nystrom(nystrom, scenarios=scenarios)
    assert len(report.cases) == len(scenarios)
    for sc, case in zip(scenarios, report.cases):
        shape = wants[sc.name].shape
        message = {
            "raises": f"{_nystrom_label(sc)} raised RuntimeError: boom ({BOOM_AT})",
            "unconvertible": f"converting the output of {_nystrom_label(sc)} raised RuntimeError: cannot convert "
                             f"({CONVERT_AT})",
            "shape": f"expected Ghat of shape {shape}, got {(shape[0], shape[1] - 1)}",
            "non-finite": "Ghat: 2 non-finite entries",
        }.get(change)
        if message is None:  # ragged: NumPy's own words vary by version
            prefix = f"converting the output of {_nystrom_label(sc)} raised ValueError: "
            assert case.worst.startswith(prefix), case
            message = case.worst
        _assert_case(case, _error(sc.name, "max |Ghat - oracle| / max |oracle|", NYSTROM_RTOL, message))
