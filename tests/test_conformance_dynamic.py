"""The dynamic protocol of the conformance kit (reference/conformance/dynamic.py).

Correct dynamic backends pass (the reference tree repaired in place, a static
backend rebuilt at every step, a cluster index written from the spec); each
wrong one of ``tests/wrong_backends.py`` (``DYNAMIC_BUGS``) fails first at the
step of the script that exposes its bug, and the report's first line names that
step and what it did. Only the sampler steps are random (false-alarm rate
``alpha`` = 1e-6 for the check, Bonferroni over those steps); the seeds are fixed.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from reference import cli
from reference.conformance import (
    REBUILD_BACKEND,
    TREE_BACKEND,
    check_dynamic,
    dynamic_script,
    from_static,
    run_conformance,
)
from reference.conformance.dynamic_backends import StaticState, TreeState
from tests import wrong_backends as wb

SCRIPT = dynamic_script()


def _steps(report):
    """The step numbers of the report's failing cases."""
    return {int(c.scenario.split()[1]) for c in report.failures}


@pytest.mark.parametrize("backend", [TREE_BACKEND, REBUILD_BACKEND, wb.CORRECT_DYNAMIC],
                         ids=["reference-tree", "rebuild-every-step", "spec-index"])
def test_correct_dynamic_backends_pass_every_step(backend):
    report = check_dynamic(backend.dynamic_build)
    assert report.passed, report.format()
    ran = {c.scenario for c in report.cases}
    for s in range(len(SCRIPT)):
        assert f"step {s} bracket" in ran
        if backend is not wb.CORRECT_DYNAMIC:  # the spec index has no sampler
            assert (f"step {s} sample" in ran) == SCRIPT[s].sample
    assert not any(c.skipped for c in report.cases)


def test_the_script_is_fixed_and_shaped_like_training():
    again = dynamic_script()
    assert [s.op for s in SCRIPT] == [s.op for s in again]
    assert all(np.array_equal(a.vectors, b.vectors) and np.array_equal(a.queries, b.queries)
               for a, b in zip(SCRIPT, again))
    ops = [s.op for s in SCRIPT]
    assert ops[0] == "build" and {"nystrom", "move", "insert", "delete", "rebuild"} <= set(ops)
    assert ops.count("nystrom") >= 3 and sum(s.sample for s in SCRIPT) >= 3
    live = SCRIPT[0].vectors.shape[0]
    for step in SCRIPT[1:]:  # a Nystrom update moves every live row by a small linear map
        if step.op == "nystrom":
            assert step.keys.size == live
        live += step.vectors.shape[0] if step.op == "insert" else -step.keys.size if step.op == "delete" else 0


@pytest.mark.parametrize("bug", list(wb.DYNAMIC_BUGS))
def test_a_wrong_dynamic_backend_fails_first_at_the_step_that_exposes_it(bug):
    backend, step, op, probes, phrase = wb.DYNAMIC_BUGS[bug]
    report = run_conformance(backend, name=bug)
    assert report.verdicts == {"sampler": "SKIP", "encoder": "SKIP", "bracket": "SKIP", "topk": "SKIP",
                               "nystrom": "SKIP", "dynamic": "FAIL"}
    dynamic = report.checks[-1]
    assert _steps(dynamic) == {step}
    assert {c.scenario.split()[2] for c in dynamic.failures} == probes
    assert SCRIPT[step].op == op
    passed = [c for c in dynamic.cases if not c.skipped and c.passed]
    assert {int(c.scenario.split()[1]) for c in passed} >= set(range(step))  # every earlier step ran and passed
    first = report.format().splitlines()[0]
    assert first.startswith(f"FAIL: dynamic, scenario step {step} ")
    assert f"first wrong at step {step} ({SCRIPT[step].about})" in first
    assert phrase in report.format()
    assert f"not replayed: the backend went wrong at step {step}" in report.format()


def test_a_sampler_that_draws_deleted_ids_fails_at_the_delete_step():
    class KeepsDeleted(StaticState):
        def delete(self, ids):
            pass

    backend = SimpleNamespace(dynamic_build=lambda points: KeepsDeleted({"sample": wb.numpy_sample}, points))
    report = check_dynamic(backend.dynamic_build)
    delete = next(s for s, st in enumerate(SCRIPT) if st.op == "delete")
    assert _steps(report) == {delete}
    assert [c.scenario for c in report.failures] == [f"step {delete} sample"]
    line = report.most_serious()[1]
    assert "drew target" in line and f"(deleted at step {delete}); " in line


def test_updates_the_backend_cannot_take_are_failures_naming_the_step():
    class ReusesLive(TreeState):
        def insert(self, vectors):
            super().insert(vectors)
            return np.arange(vectors.shape[0])  # ids that are live already

    insert = next(s for s, st in enumerate(SCRIPT) if st.op == "insert")
    report = check_dynamic(ReusesLive)
    assert _steps(report) == {insert}
    assert "insert returned id 0, which is live already" in report.most_serious()[1]

    class RaisesOnMove(TreeState):
        def move(self, ids, vectors):
            raise RuntimeError("index is read-only")

    report = check_dynamic(RaisesOnMove)
    assert _steps(report) == {1}
    assert "move(ids (300,), vectors (300, 8)) raised RuntimeError: index is read-only" in report.most_serious()[1]

    class WritesIntoIds(TreeState):
        def delete(self, ids):
            super().delete(ids)
            ids[:] = 0

    report = check_dynamic(WritesIntoIds)
    assert "modified its input ids" in report.most_serious()[1]

    class NoUpdates:
        def __init__(self, points):
            pass

        def topk(self, queries, k):
            return np.zeros((queries.shape[0], k), dtype=np.int64)

    report = check_dynamic(NoUpdates)
    assert _steps(report) == {0} and "lacks move, insert, delete" in report.most_serious()[1]


def test_from_static_needs_a_static_protocol_and_keeps_the_dtype():
    with pytest.raises(ValueError, match="backend: expected an object providing topk, sample or bracket"):
        from_static({"encoder": lambda *a: None})
    assert from_static({"topk": wb.numpy_topk, "dtype": "float32"}).dtype == "float32"
    state = from_static({"topk": wb.numpy_topk}).dynamic_build(np.eye(3))
    assert state.sample is None and state.bracket is None


def test_validation_of_check_dynamic():
    with pytest.raises(ValueError, match="dynamic_build: expected a callable"):
        check_dynamic(3)
    with pytest.raises(ValueError, match="script: expected a list of DynamicStep starting with a build step"):
        check_dynamic(TreeState, script=SCRIPT[1:])
    with pytest.raises(ValueError, match="n: expected"):
        dynamic_script(n=10)


def test_cli_runs_the_dynamic_check(capsys):
    assert cli.main(["conformance", "reference.conformance:TREE_BACKEND"]) == 0
    assert capsys.readouterr().out.startswith("PASS: all 1 checks passed (dynamic)")
    assert cli.main(["conformance", "tests.wrong_backends:WRONG_DYNAMIC_LANDMARKS", "--checks", "dynamic"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL: dynamic, scenario step 1 topk: first wrong at step 1 (Nystrom update 1")
    assert cli.main(["conformance", "tests.wrong_backends:WRONG_TOPK_TIE_RULE", "--checks", "dynamic"]) == 1
    assert "FAIL  dynamic: requested, but the backend has no callable `dynamic_build`" in capsys.readouterr().out


def test_a_bare_dynamic_build_is_recognised_by_its_parameter_name(capsys):
    assert cli.main(["conformance", "tests.wrong_backends:dynamic_build_spec"]) == 0
    captured = capsys.readouterr()
    assert "checking it as dynamic" in captured.err
    assert captured.out.startswith("PASS: all 1 checks passed (dynamic)")


def test_the_declared_precision_reaches_the_dynamic_check():
    """A float32 top-k, sampler and bracket rebuilt every step, declared float32, pass with the float32 tolerance."""
    backend = from_static(wb.GALLERY_TOPK_FLOAT32_DECLARED)
    report = run_conformance(backend, ["dynamic"])
    assert report.passed, report.format()
    assert "float32 declared" in report.checks[0].description
    tolerance = next(c.note for c in report.checks[0].cases if c.scenario == "step 0 topk")
    assert "(float32 declared)" in tolerance


def test_a_state_that_writes_into_its_queries_is_flagged():
    class WritesIntoQueries(TreeState):
        def topk(self, queries, k):
            assert queries.flags["C_CONTIGUOUS"] and queries.shape[1] == 8
            out = super().topk(queries, k)
            queries[0, 0] = 7.0
            return out

    report = check_dynamic(WritesIntoQueries)
    assert _steps(report) == {0}
    assert "modified its input queries" in report.most_serious()[1]


def test_the_sampler_and_the_dynamic_check_share_the_run_false_alarm_rate():
    both = SimpleNamespace(sample=wb.numpy_sample, dynamic_build=TreeState)
    report = run_conformance(both, alpha=1e-6)
    assert report.passed, report.format()
    sampler, dynamic = (next(c for c in report.checks if c.name == n) for n in ("sampler", "dynamic"))
    assert "total false-alarm rate 5e-07" in sampler.description
    assert dynamic.description.endswith("false-alarm rate 5e-07")
    alone = run_conformance(SimpleNamespace(dynamic_build=TreeState), alpha=1e-6)
    assert alone.checks[-1].description.endswith("false-alarm rate 1e-06")
