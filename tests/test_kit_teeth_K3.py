"""Teeth for the conformance kit's driver: the runner, the command line and the user's data.

Each test pins a whole kind of behaviour that a mutation run of reference/conformance/
(runner, command, _data, reference_backend) showed no test pinned:

1. ``load_user_data`` on every input ``load_dataset`` accepts: a path or an array, one query or
   several; every file it refuses is named (its row count is read with np.load, whose own errors
   must not leak); a FIFO is refused by name without being opened (np.load would block on it).
2. Which checks a CLI run reports: ``--as``, a bare callable recognised by its signature and
   ``--checks``, alone and together (the checks asked are the checks required).
3. Every CLI option reaches ``run_conformance`` unchanged: the CLI's report equals the report of
   ``run_conformance`` called directly with the same non-default values and the BACKEND spec as
   its name.
4. ``add_arguments`` gives every option its default on any parser (a parser whose
   ``argument_default`` is ``SUPPRESS`` included).
5. The report has one entry per selected check, in ``CHECKS`` order, whatever happened to an
   earlier one (outside the given scenarios, not provided, not fitting its protocol); a check that
   did not run is ``CheckReport(name, "", skipped=... / error=...)`` with no cases.
6. Every ``ValueError`` of ``run_conformance`` names its argument, from the message's start.
7. The run's false-alarm rate is split over the random checks that run (sampler and dynamic,
   chosen by ``scenarios``), and ``scenarios["dynamic"]`` is the dynamic check's script.
8. How messages name a callable: a function, a bound method, an instance with ``__call__``, and
   a function without a module.

Deterministic (fixed seeds, tiny data); the sampler runs only on 2 queries of 12 targets.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reference import cli, conformance
from reference.conformance import command, runner
from reference.conformance.dynamic_backends import TREE_BACKEND
from reference.conformance.report import CheckReport
from reference.conformance.statistics import DEFAULT_ALPHA, DEFAULT_POWER, DEFAULT_TV

REPO = Path(__file__).resolve().parents[1]
REF = conformance.REFERENCE_BACKEND
SPEC = "reference.conformance:REFERENCE_BACKEND"
BARE_TOPK = "reference.conformance:REFERENCE_BACKEND.topk"  # a bound method: a bare callable of topk


def _tiny_topk() -> conformance.TopkScenario:
    rng = np.random.default_rng(3)
    return conformance.TopkScenario("tiny", rng.standard_normal((15, 3)), rng.standard_normal((2, 3)), 4, "tiny")


def _tiny_bracket() -> conformance.BracketScenario:
    rng = np.random.default_rng(4)
    return conformance.BracketScenario("tiny", rng.standard_normal((15, 3)), rng.standard_normal((2, 3)), 0.5, "tiny")


@pytest.fixture
def user_files(tmp_path):
    """Targets (12, 3) and queries (2, 3) and (1, 3) as .npy files."""
    rng = np.random.default_rng(1)
    Z, Q = rng.standard_normal((12, 3)), rng.standard_normal((2, 3))
    paths = {"Z": tmp_path / "z.npy", "Q": tmp_path / "q.npy", "Q1": tmp_path / "q1.npy"}
    np.save(paths["Z"], Z)
    np.save(paths["Q"], Q)
    np.save(paths["Q1"], Q[:1])
    return Z, Q, paths


# --- 1. load_user_data on every input load_dataset accepts ------------------------------------


def test_load_user_data_takes_paths_and_arrays_of_one_query_or_several(user_files):
    Z, Q, paths = user_files
    for queries, want in ((paths["Q"], Q), (paths["Q1"], Q[:1]), (str(paths["Q1"]), Q[:1]), (Q, Q), (Q[:1], Q[:1]),
                          (Q.astype(np.float32), Q.astype(np.float32).astype(np.float64))):
        for targets in (paths["Z"], Z):
            Zr, Qr = command.load_user_data(targets, queries)
            assert Zr.dtype == Qr.dtype == np.float64
            assert np.array_equal(Zr, Z) and np.array_equal(Qr, want)
    # a queries array of the wrong width is named as such (a path adds the file), never as "positives"
    wide = r"^queries: expected 3 columns \(the targets' dimension\), got shape \(2, 4\)$"
    with pytest.raises(ValueError, match=wide):
        command.load_user_data(Z, np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"^queries \(.*q\.npy\): expected 2 columns"):
        command.load_user_data(Z[:, :2], paths["Q"])
    with pytest.raises(ValueError, match=r"^queries: expected a non-empty 2-D array"):
        command.load_user_data(Z, np.array(1.0))


def test_every_unreadable_queries_file_is_named(user_files, tmp_path):
    """Files np.load cannot count the rows of: load_dataset refuses them naming the queries file."""
    _, _, paths = user_files
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 3)})
    full = paths["Q"].read_bytes()
    files = {"pickle.npy": pickle.dumps([1, 2]), "forged.npy": header.getvalue() + bytes(16), "empty.npy": b"",
             "truncated.npy": full[:-8]}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    np.save(tmp_path / "object.npy", np.array([1, None], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "archive.npz", a=np.zeros((2, 3)))
    np.save(tmp_path / "zero_d.npy", np.array(1.0))
    np.save(tmp_path / "one_d.npy", np.ones(3))
    for name in (*files, "object.npy", "archive.npz", "zero_d.npy", "one_d.npy", "missing.npy"):
        path = tmp_path / name
        with pytest.raises(ValueError, match=rf"^queries \({re.escape(str(path))}\): expected a"):
            command.load_user_data(paths["Z"], path)


@pytest.mark.parametrize("special", ["fifo", "/dev/zero symlink"])
def test_a_fifo_or_a_device_of_queries_is_refused_without_reading(user_files, tmp_path, special):
    """Before: np.load opened the --queries FIFO to count its rows and blocked until a writer came."""
    if special == "fifo" and not hasattr(os, "mkfifo"):
        pytest.skip("named pipes are POSIX")
    _, _, paths = user_files
    path = tmp_path / "special.npy"
    if special == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    # a subprocess, so that a reader blocked on the FIFO fails this test instead of hanging the suite
    proc = subprocess.run([sys.executable, "-m", "reference", "conformance", SPEC, "--checks", "topk",
                           "--targets", str(paths["Z"]), "--queries", str(path)],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=120)
    kind = "FIFO (named pipe)" if special == "fifo" else "character device"
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr[-2000:]
    assert proc.stderr == f"error: queries ({path}): expected a readable .npy file (a regular file), got a {kind}\n"


# --- 2. which checks a CLI run reports --------------------------------------------------------


def _cli(capsys, *argv: str) -> tuple[int, list[str]]:
    status = cli.main(["conformance", *argv])
    return status, capsys.readouterr().out.splitlines()


_MISSING_BRACKET = "FAIL  bracket: requested, but the backend has no callable `bracket`"


@pytest.mark.parametrize("argv, status, first, lines", [
    ((BARE_TOPK,), 0, "PASS: all 1 checks passed (topk)", ["PASS  topk: "]),
    ((BARE_TOPK, "--as", "topk"), 0, "PASS: all 1 checks passed (topk)", ["PASS  topk: "]),
    ((BARE_TOPK, "--checks", "topk"), 0, "PASS: all 1 checks passed (topk)", ["PASS  topk: "]),
    # --as: BACKEND itself is the bracket callable, and this object is not callable
    ((SPEC, "--as", "bracket"), 1, f"FAIL: {_MISSING_BRACKET[6:]} [1 failing scenario in 1 of 1 checks]",
     [_MISSING_BRACKET]),
])
def test_a_bare_callable_or_as_runs_exactly_its_one_check(capsys, user_files, argv, status, first, lines):
    _, _, paths = user_files
    data = ("--targets", str(paths["Z"]), "--queries", str(paths["Q"]), "--k", "3")  # the user's data: topk, sampler
    got, out = _cli(capsys, *argv, *(data if argv[0] == BARE_TOPK else ()))
    assert got == status and out[0] == first, out
    checks = [line for line in out if line.startswith(("PASS ", "FAIL ", "SKIP "))]  # no SKIP line for the others
    assert len(checks) == len(lines) and all(c.startswith(w) for c, w in zip(checks, lines)), checks


@pytest.mark.parametrize("argv", [(BARE_TOPK, "--checks", "sampler"),
                                  (BARE_TOPK, "--as", "topk", "--checks", "sampler"),
                                  (BARE_TOPK, "--checks", "topk,sampler")])
def test_checks_asked_with_a_bare_callable_or_as_are_required(capsys, argv):
    status, out = _cli(capsys, *argv)
    assert status == 1
    assert "FAIL  sampler: requested, but the backend has no callable `sample`" in out
    assert not any(line.startswith("SKIP") for line in out)
    assert out[-1].startswith("RESULT: FAIL: 1 of ")


# --- 3. every CLI option reaches run_conformance unchanged ------------------------------------


def test_the_cli_report_is_run_conformance_with_the_options_given(capsys, user_files):
    _, _, paths = user_files
    options = dict(alpha=0.02, tv=0.3, power=0.6, seed=7)
    argv = [SPEC, "--targets", str(paths["Z"]), "--queries", str(paths["Q"]), "--k", "3", "--dtype", "float32",
            "--time-limit", "100"] + [a for k, v in options.items() for a in (f"--{k}", str(v))]
    assert options != dict(alpha=DEFAULT_ALPHA, tv=DEFAULT_TV, power=DEFAULT_POWER, seed=0)
    status, out = _cli(capsys, *argv)
    Z, Q = command.load_user_data(paths["Z"], paths["Q"])
    scenarios = command.user_scenarios(Z, Q, 3, "z.npy, q.npy")
    direct = runner.run_conformance(REF, None, name=SPEC, dtype="float32", time_limit=100, scenarios=scenarios,
                                    **options)
    assert out == direct.format().splitlines()
    assert status == 0 and f"Conformance of {SPEC} against the reference (proofs/README.md section 9)" in out
    assert "False-alarm rate of this run: 0.02 (the sampler G-tests); every other check is deterministic." in out


# --- 4. add_arguments' defaults on any parser -------------------------------------------------


def test_every_option_has_its_default_on_any_parser():
    expected = dict(backend="m:o", checks=None, role=None, dtype=None, time_limit=conformance.DEFAULT_TIME_LIMIT,
                    targets=None, queries=None, k=10, seed=0, alpha=DEFAULT_ALPHA, tv=DEFAULT_TV, power=DEFAULT_POWER,
                    golden=None, golden_dir=None)
    for parser in (argparse.ArgumentParser(), argparse.ArgumentParser(argument_default=argparse.SUPPRESS),
                   argparse.ArgumentParser(argument_default="x")):
        command.add_arguments(parser)
        assert vars(parser.parse_args(["m:o"])) == expected


# --- 5. one entry per selected check, whatever happened to an earlier one ----------------------


def _wrong_bracket(points, k):  # fits no protocol: a mismatch for "bracket"
    return points


def test_every_selected_check_has_its_entry_in_checks_order():
    tiny = _tiny_topk()
    # bracket: asked but not in the given scenarios; topk after it still runs
    report = runner.run_conformance(REF, ["topk", "bracket"], scenarios={"topk": [tiny]})
    assert [c.name for c in report.checks] == ["topk", "bracket"]
    assert report.checks[1] == CheckReport("bracket", "", skipped="not run on the given data")
    assert report.checks[0].verdict == "PASS" and report.checks[0].cases
    report = runner.run_conformance(REF, ["bracket", "topk"], scenarios={"topk": [tiny]})
    assert report.checks[0] == CheckReport("bracket", "", skipped="not run on the given data")
    assert report.checks[1].name == "topk" and report.checks[1].verdict == "PASS" and report.checks[1].cases
    # bracket's callable does not fit its protocol; topk after it still runs
    backend = {"bracket": _wrong_bracket, "topk": REF.topk}
    report = runner.run_conformance(backend, ["bracket", "topk"],
                                    scenarios={"bracket": [_tiny_bracket()], "topk": [tiny]})
    assert [c.name for c in report.checks] == ["bracket", "topk"]
    assert report.checks[0] == CheckReport("bracket", "", error=runner.mismatch(_wrong_bracket, "bracket"))
    assert report.checks[0].error.startswith("`")  # the message itself is pinned in test_conformance.py
    assert report.checks[1].verdict == "PASS" and report.checks[1].cases and not report.passed
    # not provided (optional), before and after a check that runs
    report = runner.run_conformance({"topk": REF.topk}, scenarios={"sampler": [], "topk": [tiny], "nystrom": []})
    assert [c.name for c in report.checks] == ["sampler", "topk", "nystrom"]
    for i, name in ((0, "sampler"), (2, "nystrom")):
        assert report.checks[i] == CheckReport(name, "", skipped="not provided by the backend")
    assert report.checks[1].verdict == "PASS" and report.passed
    # requested but missing
    report = runner.run_conformance({"topk": REF.topk}, ["sampler", "topk"], scenarios={"sampler": [], "topk": [tiny]})
    assert report.checks[0] == CheckReport("sampler", "", error="requested, but the backend has no callable `sample`")
    assert report.checks[1].verdict == "PASS"


# --- 6. run_conformance's messages ------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(scenarios={"nope": []}), r"^scenarios: expected one of 'sampler', 'encoder', 'bracket', 'topk', 'nystrom', "
                                   r"'dynamic', got 'nope'$"),
    (dict(scenarios={3: []}), r"^scenarios: expected one of .*, got 3$"),
    (dict(checks=["topk", "nope"]), r"^checks: expected one of .*, got 'nope'$"),
    (dict(dtype="float16"), r"^dtype: expected one of float64, float32, got 'float16'$"),
    (dict(time_limit=-1), r"^time_limit: expected a finite number of seconds >= 0 \(0 for no limit\), got -1$"),
    # the run's alpha as given (before: 1.5 ran as 0.75 per random check, -0.01 was reported as -0.005, "x" a TypeError)
    (dict(alpha=1.5), r"^alpha: expected a false-alarm rate in \(0, 1\), got 1.5$"),
    (dict(alpha=1.0), r"^alpha: expected a false-alarm rate in \(0, 1\), got 1.0$"),
    (dict(alpha=-0.01), r"^alpha: expected a finite number > 0, got -0.01$"),
    (dict(alpha=0.0), r"^alpha: expected a finite number > 0, got 0.0$"),
    (dict(alpha=float("nan")), r"^alpha: expected a finite number > 0, got nan$"),
    (dict(alpha="x"), r"^alpha: expected a positive number, got "),
])
def test_every_message_of_run_conformance_names_its_argument(kwargs, message):
    both = {"sample": REF.sample, "dynamic_build": TREE_BACKEND.dynamic_build}  # alpha is split between them
    for backend in (REF, both, {"topk": REF.topk}):
        with pytest.raises(ValueError, match=message):
            runner.run_conformance(backend, **kwargs)


# --- 7. the false-alarm rate split over the random checks that run -----------------------------


def test_the_run_alpha_is_split_over_the_random_checks_chosen_by_scenarios():
    backend = {"sample": REF.sample, "dynamic_build": TREE_BACKEND.dynamic_build, "topk": REF.topk}
    script = conformance.dynamic_script()[:1]  # the build step alone: topk, bracket and the sampler once
    cases = [  # (checks, scenarios, the alpha each random check that runs gets)
        (None, {"sampler": [], "dynamic": script}, {"sampler": 0.005, "dynamic": 0.005}),
        (None, {"sampler": [], "topk": [_tiny_topk()]}, {"sampler": 0.01}),
        (None, {"dynamic": script}, {"dynamic": 0.01}),
        (["sampler", "dynamic"], {"sampler": []}, {"sampler": 0.01}),
        (["dynamic", "sampler"], {"sampler": [], "dynamic": script}, {"sampler": 0.005, "dynamic": 0.005}),
    ]
    for checks, scenarios, share in cases:
        report = runner.run_conformance(backend, checks, alpha=0.01, scenarios=scenarios)
        assert report.alpha == 0.01
        ran = {c.name: c for c in report.ran}
        assert set(ran) == set(scenarios), (checks, scenarios)
        for name, a in share.items():
            assert ran[name].passed
            text = (f"G-test per query at {a:g} (Bonferroni: total false-alarm rate {a:g} over 0 queries)"
                    if name == "sampler" else f"; false-alarm rate {a:g}")
            assert ran[name].description.endswith(text), ran[name].description
        if "dynamic" in ran:  # the script given is the script replayed
            assert {c.scenario.split()[0] for c in ran["dynamic"].cases} == {"step"}
            assert {c.scenario.split()[1] for c in ran["dynamic"].cases} == {"0"}


# --- 8. how messages name a callable ----------------------------------------------------------


class _Callable:
    def __call__(self, points, queries, k):
        return np.zeros((queries.shape[0], k), dtype=np.int64)


def test_messages_name_every_kind_of_callable():
    def topk(points, queries, k):
        return np.zeros((queries.shape[0], k), dtype=np.int64)

    here = __name__
    local = "test_messages_name_every_kind_of_callable.<locals>.topk"
    assert runner.call_text(topk) == f"{here}.{local}(points, queries, k)"
    assert runner.call_text(REF.topk) == ("reference.conformance.reference_backend.ReferenceBackend.topk"
                                          "(points, queries, k)")
    assert runner.call_text(_Callable()) == f"{here}._Callable(points, queries, k)"
    for module in (None, ""):
        topk.__module__ = module
        assert runner.call_text(topk) == f"{local}(points, queries, k)"
        assert runner.mismatch(topk, "sampler").startswith(f"`{local}(points, queries, k)` does not fit the protocol")
    namespace: dict = {}
    exec("def f(points, queries, k):\n    return None\n", namespace)  # no __name__ in its globals: no module
    assert namespace["f"].__module__ is None and runner.call_text(namespace["f"]) == "f(points, queries, k)"
