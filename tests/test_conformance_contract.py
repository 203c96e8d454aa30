"""The conformance kit's contracts pinned by theme, not by mutant.

A fresh mutation sample of the kit (seed 523439579) left survivors in five
themes; each test below pins the whole theme, so that a change anywhere in it
fails, not only the change that was sampled:

1. every option of ``python -m reference conformance``: name, default, type,
   choices, metavar and the opening of its help, read from the parser itself
   and from ``--help``; options with choices or types refuse other values;
   option errors name the option;
2. the report's text: the first line's verdict, the most-serious ordering over
   every pair of failure kinds, ties in run order, counts, the RESULT line;
3. every scenario list's descriptions agree with the scenario's data (names,
   sizes, k, kernels, activations, dtypes, logQ);
4. the reference backends hand every protocol argument through (a bracket's
   width follows ``tol``) and have a repr that rebuilds them;
5. guarded calls: every check validates and honours its time limit, hands its
   dtype through the runner, and its messages' arithmetic is right.
"""

from __future__ import annotations

import argparse
import inspect
import re
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from reference import cli, conformance
from reference.conformance import command, runner
from reference.conformance.report import SEVERITY, Case, CheckReport, ConformanceReport

# --- 1. the command line --------------------------------------------------------------------

#: option -> (dest, default, type, choices, metavar, the opening words of its help)
OPTIONS = {
    "--checks": ("checks", None, None, None, None, "comma-separated subset of"),
    "--as": ("role", None, None, sorted(runner.CHECKS), None, "treat BACKEND itself as the single callable"),
    "--dtype": ("dtype", None, None, ("float64", "float32"), None, "precision of the backend's logits"),
    "--time-limit": ("time_limit", 600.0, float, None, "SECONDS", "time limit of each backend call"),
    "--targets": ("targets", None, None, None, "Z.npy", "run the top-k and sampler checks on your own targets"),
    "--queries": ("queries", None, None, None, "Q.npy", "... and queries (B, d), .npy files"),
    "--k": ("k", 10, int, None, None, "k of the top-k check on your data (default 10)"),
    "--seed": ("seed", 0, int, None, None, "base seed handed to the sampler (default 0)"),
    "--alpha": ("alpha", 1e-6, float, None, None, "false-alarm rate of the run (default 1e-06)"),
    "--tv": ("tv", 0.05, float, None, None, "TV error the sampler test must detect"),
    "--power": ("power", 0.9, float, None, None, "detection probability at that TV (default 0.9)"),
    "--golden": ("golden", None, None, ("check", "regenerate"), None,
                 "instead of a backend: compare the reference with its golden vectors"),
    "--golden-dir": ("golden_dir", None, None, None, None, "directory of the golden vectors"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conformance")
    command.add_arguments(parser)
    return parser


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.option_strings[0]: a for a in parser._actions if a.option_strings and a.dest != "help"}


def test_every_option_is_the_documented_one():
    """The parser's options, all of them, against the table: an option added, removed or changed fails."""
    from reference.conformance.statistics import DEFAULT_ALPHA, DEFAULT_POWER, DEFAULT_TV

    assert (DEFAULT_ALPHA, DEFAULT_TV, DEFAULT_POWER) == (1e-6, 0.05, 0.9)
    actions = _options(_parser())
    assert sorted(actions) == sorted(OPTIONS)
    for opt, (dest, default, typ, choices, metavar, opening) in OPTIONS.items():
        a = actions[opt]
        got = (a.dest, a.default, a.type, None if a.choices is None else list(a.choices), a.metavar)
        assert got == (dest, default, typ, None if choices is None else list(choices), metavar), opt
        help_text = " ".join(a.help.split())
        assert help_text.startswith(opening), (opt, help_text)
        # the opening pins the start; this guards the end only against mutmut's XX-wrapping
        assert "XX" not in help_text, opt
    (positional,) = [a for a in _parser()._actions if not a.option_strings]
    assert (positional.dest, positional.nargs, positional.metavar) == ("backend", "?", "BACKEND")
    assert " ".join(positional.help.split()).startswith("'module:object' providing some of sample / encoder")


def test_help_shows_every_option_with_its_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["conformance", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for opt, (_, _, _, choices, metavar, opening) in OPTIONS.items():
        shown = metavar or ("{" + ",".join(choices) + "}" if choices else opt.lstrip("-").replace("-", "_").upper())
        assert f"{opt} {shown} {opening}" in text, opt


def test_every_option_parses_its_documented_values_and_refuses_others():
    parser = _parser()
    for opt, (dest, _, typ, choices, _, _) in OPTIONS.items():
        values = list(choices) if choices else (["7"] if typ in (int, float) else ["x.npy"])
        for v in values:
            assert getattr(parser.parse_args(["B", opt, v]), dest) == (typ(v) if typ else v), opt
        if choices or typ:
            with pytest.raises(SystemExit) as exit_info:
                parser.parse_args(["B", opt, "not-a-" + ("choice" if choices else "number")])
            assert exit_info.value.code == 2, opt


@pytest.mark.parametrize("argv, name", [
    (["--alpha", "0"], "--alpha"), (["--alpha", "1"], "--alpha"), (["--tv", "-1"], "--tv"),
    (["--time-limit", "-1"], "--time-limit"), (["--targets", "Z.npy"], "--targets, --queries"),
    (["--k", "0"], "--k"), (["--k", "99"], "--k"),
])
def test_option_errors_name_the_option(tmp_path, argv, name):
    Z, Q = tmp_path / "Z.npy", tmp_path / "Q.npy"
    np.save(Z, np.random.default_rng(0).standard_normal((20, 3)))
    np.save(Q, np.random.default_rng(1).standard_normal((4, 3)))
    if "--k" in argv:
        argv = [*argv, "--targets", str(Z), "--queries", str(Q)]
    args = _parser().parse_args(["reference.conformance:REFERENCE_BACKEND", *argv])
    with pytest.raises(ValueError, match="^" + re.escape(name)):
        command.run(args)


# --- 2. the report's text -------------------------------------------------------------------


def _failing(name: str, kind: str, scenario: str = "s") -> CheckReport:
    case = Case(scenario, "stat", 2.0, 1.0, "<=", False, f"{kind} here", kind=kind, headline=f"{kind} in {name}")
    return CheckReport(name, f"rule of {name}", [case])


def _passing(name: str) -> CheckReport:
    return CheckReport(name, f"rule of {name}", [Case("s", "stat", 0.5, 1.0, "<=", True, "")])


def test_severity_orders_the_kinds_as_documented():
    assert list(SEVERITY) == ["backend error", "missing neighbour", "wrong result", "invalid id", "unsorted",
                              "near-tie swap", "tie rule"]
    assert list(SEVERITY.values()) == sorted(SEVERITY.values(), reverse=True)
    assert len(set(SEVERITY.values())) == len(SEVERITY)


@pytest.mark.parametrize("first_is_worse", [True, False])
def test_the_first_line_names_the_more_serious_of_every_pair(first_is_worse):
    kinds = list(SEVERITY) + ["an unknown kind"]  # unknown kinds rank below every known one
    for i, worse in enumerate(kinds):
        for milder in kinds[i + 1:]:
            a, b = _failing("zeta", worse), _failing("alpha", milder)
            checks = [a, b] if first_is_worse else [b, a]
            summary = ConformanceReport("B", checks).summary()
            assert summary == f"FAIL: zeta, scenario s: {worse} in zeta [2 failing scenarios in 2 of 2 checks]"
            single = CheckReport("one", "r", [*b.cases, *a.cases])
            assert single.most_serious() == (SEVERITY.get(worse, 0), f"one, scenario s: {worse} in zeta")


def test_equally_serious_failures_lead_in_run_order():
    for kind in [*SEVERITY, "an unknown kind"]:
        for names in (["alpha", "zeta", "mid"], ["zeta", "alpha", "mid"]):  # the first, not the largest text
            report = ConformanceReport("B", [_failing(n, kind) for n in names])
            assert report.summary().startswith(f"FAIL: {names[0]}, scenario s: {kind} in {names[0]} ["), kind


def test_the_report_text_contract():
    both = ConformanceReport("my:B", [_passing("topk"), _passing("bracket")], alpha=0.001, dtype="float32")
    text = both.format().splitlines()
    assert text[0] == "PASS: all 2 checks passed (topk, bracket)"
    assert text[2] == "Conformance of my:B against the reference (proofs/README.md section 9)"
    assert text[3] == "Declared precision of the backend's logits: float32."
    assert "False-alarm rate" not in both.format()  # no sampler ran
    assert text[5:7] == ["PASS  topk: rule of topk", "  PASS  s: stat = 0.5 (pass if <= 1)"]
    assert text[-1] == "RESULT: PASS: all 2 checks passed (topk, bracket)"

    skipped = CheckReport("nystrom", "r", skipped="the backend has no nystrom")
    failed = CheckReport("encoder", "r", error="`f(x)` does not fit")
    mixed = ConformanceReport("B", [_passing("sampler"), failed, _failing("topk", "tie rule", "ties"), skipped],
                              alpha=1e-6)
    lines = mixed.format().splitlines()
    assert lines[0] == "FAIL: encoder: `f(x)` does not fit [2 failing scenarios in 2 of 3 checks]"
    assert "False-alarm rate of this run: 1e-06 (the sampler G-tests); every other check is deterministic." in lines
    assert "FAIL  encoder: `f(x)` does not fit" in lines
    assert "  FAIL  ties: stat = 2 (pass if <= 1)" in lines and "        WRONG: tie rule here" in lines
    assert "SKIP  nystrom: the backend has no nystrom" in lines
    assert lines[-1] == "RESULT: FAIL: 2 of 3 checks failed (encoder, topk)"

    one = ConformanceReport("B", [_failing("topk", "unsorted")])
    assert one.summary() == "FAIL: topk, scenario s: unsorted in topk [1 failing scenario in 1 of 1 checks]"
    none = ConformanceReport("B", [skipped], protocols=("topk", "nystrom"))
    assert none.summary() == "FAIL: B provides none of topk, nystrom"
    assert none.format().splitlines()[-1] == "RESULT: FAIL: the backend provides none of topk, nystrom"
    assert not none.passed and not mixed.passed and both.passed


# --- 3. scenario descriptions agree with their data ------------------------------------------


def _number(text: str, pattern: str) -> float:
    m = re.search(pattern, text)
    assert m, (pattern, text)
    return float(m.group(1))


def test_every_scenario_list_has_distinct_lowercase_names():
    lists = {
        "topk": conformance.topk_scenarios(), "bracket": conformance.bracket_scenarios(),
        "nystrom": conformance.nystrom_scenarios(), "encoder": conformance.encoder_scenarios(),
        "sampler": conformance.sampler_scenarios(),
    }
    for name, scenarios in lists.items():
        names = [sc.name for sc in scenarios]
        assert len(set(names)) == len(names), name
        assert all(re.fullmatch(r"[a-z][a-z0-9]*(-[a-zA-Z0-9]+)*", n) for n in names), names


def test_nystrom_scenarios_are_what_they_say():
    scenarios = conformance.nystrom_scenarios()
    assert [sc.name for sc in scenarios] == ["linear", "linear-const", "rbf", "polynomial"]
    for sc in scenarios:
        about, kernel = sc.about, sc.kernel
        assert about.startswith(f"{kernel['name'] if kernel['name'] != 'rbf' else 'RBF'} kernel"), about
        assert _number(about, r"m = (\d+)") == sc.landmarks.size == sc.G_L.shape[0]
        if "d = " in about:
            assert _number(about, r"d = (\d+)") == sc.G0.shape[1]
        if kernel["name"] == "linear":
            assert kernel["const"] == (_number(about, r"c = ([\d.]+)") if "constant feature" in about else 0.0)
        elif kernel["name"] == "rbf":
            assert kernel["gamma"] == _number(about, r"gamma ([\d.]+)")
        else:
            assert (kernel["degree"], kernel["c"]) == (_number(about, r"degree (\d+)"), _number(about, r" c ([\d.]+)"))


def test_encoder_scenarios_are_what_they_say():
    for sc in conformance.encoder_scenarios():
        about, cfg = sc.about, sc.config
        assert cfg.activation in about or (cfg.activation == "identity" and "affine" in about), about
        assert ("sampled softmax" in about) == (sc.neg is not None), about
        assert ("full softmax" in about) == (sc.neg is None), about
        if sc.neg is not None:  # "with (the) logQ" / "without logQ", spelled as the proofs spell it
            assert ("without logQ" in about) == (sc.log_q is None), about
            assert ("with the logQ correction (P13)" in about or "with logQ" in about) == (sc.log_q is not None)
        assert ("float32" in about) == (cfg.dtype == "float32"), about
        if "beta" in about:
            assert _number(about, r"beta ([\d.]+)") == cfg.beta
        if "normalis" in about:  # stated where it matters
            assert cfg.normalize == ("no normalisation" not in about), about


def test_topk_scenarios_are_what_they_say():
    by_name = {sc.name: sc for sc in conformance.topk_scenarios()}
    for sc in by_name.values():
        N = sc.points.shape[0]
        m = re.match(r"(\d+) (clustered )?(targets|rows)", sc.about)
        if m:
            copies = _number(sc.about, r"each (\d+) times") if "each" in sc.about else 1
            assert int(m.group(1)) * copies == N, sc.about
        if "k = " in sc.about:
            assert _number(sc.about, r"k = (?:N = )?(\d+)") == sc.k
        if "norm" in sc.about:
            assert np.allclose(np.linalg.norm(sc.queries, axis=1), _number(sc.about, r"queries of norm ([\d.]+)"))
    assert by_name["k-equals-N"].k == by_name["k-equals-N"].points.shape[0]
    huge = by_name["huge-logits"]
    assert huge.points[:, 0].tolist() == [100.0] * huge.points.shape[0]
    assert huge.queries[:, 0].tolist() == [100.0, -100.0]
    assert "first coordinate 100" in huge.about and "+-100" in huge.about
    near = by_name["near-duplicates"]
    rel = _number(near.about, r"copies ([\d.e-]+) \|z\| apart")
    dist = np.linalg.norm(near.points[:, None, :] - near.points[None, :, :], axis=2)
    close = dist[(dist > 0) & (dist < 1e-6)] / np.linalg.norm(near.points, axis=1).mean()
    assert close.size == 40 * 3 * 2  # each row has exactly its 2 copies nearby
    assert 0.5 * rel < np.median(close) < 2 * rel  # two copies each ~rel |z| from the row: ~sqrt(2) rel apart


# --- 4. the reference backends ----------------------------------------------------------------


def test_the_reference_backend_provides_every_protocol_and_rebuilds_from_its_repr():
    from reference.conformance.reference_backend import REFERENCE_BACKEND, ReferenceBackend

    assert all(runner.fits(getattr(REFERENCE_BACKEND, attr), check) is not False
               for check, (attr, _) in runner.CHECKS.items() if check != "dynamic")
    assert repr(REFERENCE_BACKEND) == "ReferenceBackend()"
    assert isinstance(eval(repr(REFERENCE_BACKEND), {"ReferenceBackend": ReferenceBackend}), ReferenceBackend)


def _widths(bracket, points, queries):
    return [np.max(hi - lo) for lo, hi in (bracket(points, queries, tol) for tol in (0.01, 50.0))]


def test_the_reference_brackets_honour_tol():
    """A bracket that ignores tol (refines to a fixed default) passes every containment check; the width
    is where it shows: a coarse tol must give a coarser bracket than a fine one, and each within tol."""
    from reference.conformance.dynamic_backends import TreeState
    from reference.conformance.reference_backend import REFERENCE_BACKEND

    rng = np.random.default_rng(5)
    points, queries = rng.standard_normal((400, 4)), 3 * rng.standard_normal((5, 4))
    fine, coarse = _widths(REFERENCE_BACKEND.bracket, points, queries)
    assert fine <= 0.01 < coarse <= 50.0
    state = TreeState(points)
    fine, coarse = _widths(lambda _, queries, tol: state.bracket(queries, tol), points, queries)
    assert fine <= 0.01 < coarse <= 50.0


# --- 5. guarded calls, the runner's hand-over and the messages' arithmetic ---------------------

_CHECK_FUNCTIONS = {name: fn for name, (_, fn) in runner.CHECKS.items()}


@pytest.mark.parametrize("name", list(_CHECK_FUNCTIONS))
def test_every_check_validates_its_time_limit(name):
    with pytest.raises(ValueError, match="^time_limit"):
        _CHECK_FUNCTIONS[name](lambda *a, **k: None, time_limit=-1.0)


@pytest.mark.parametrize("name", ["sampler", "encoder", "bracket", "topk", "nystrom", "dynamic"])
def test_every_check_stops_waiting_for_a_hanging_backend(name):
    release = threading.Event()
    safety = threading.Timer(20.0, release.set)  # a check that ignores its limit is released and fails here
    safety.daemon = True
    safety.start()

    def hang(*args, **kwargs):
        release.wait()
        raise RuntimeError("released")

    try:
        report = _CHECK_FUNCTIONS[name](hang, time_limit=0.05)
    finally:
        release.set()
        safety.cancel()
    text = report.format()
    assert "did not return within the time limit of 0.05 s" in text, text[:500]
    assert not report.passed


@pytest.mark.parametrize("name", list(_CHECK_FUNCTIONS))
def test_run_conformance_hands_dtype_to_every_check_that_takes_it(name, monkeypatch):
    seen = {}

    def fake(fn, **kwargs):
        seen.update(kwargs)
        return CheckReport(name, "r")

    attr, real = runner.CHECKS[name]
    monkeypatch.setitem(runner.CHECKS, name, (attr, fake))
    runner.run_conformance({attr: lambda *a: None}, [name], dtype="float32")
    takes = "dtype" in inspect.signature(real).parameters
    assert (seen.get("dtype") == "float32") == takes and ("dtype" in seen) == takes, (name, seen)


def test_the_bracket_message_does_its_arithmetic():
    rng = np.random.default_rng(0)

    def loose(points, queries, tol):
        lo, hi = conformance.REFERENCE_BACKEND.bracket(points, queries, tol)
        return lo - 0.7 * rng.random(lo.shape), hi - 1.3

    for case in conformance.check_bracket(loose).failures:
        m = re.search(r"lo = (\S+), log Z = (\S+), hi = (\S+) \(hi - lo = (\S+);", case.worst)
        lo, _, hi, width = map(float, m.groups())
        assert width == pytest.approx(hi - lo, rel=2e-3), case.worst


def test_a_callable_object_is_named_by_its_class_and_a_function_by_its_qualname():
    class Adapter:
        def __call__(self, points, queries, k):
            return None

    def fn(points, queries, k):
        return None

    assert runner.adapter_name(fn) == f"{__name__}.{fn.__qualname__}"
    assert fn.__qualname__ != fn.__name__  # a local function: the qualname says where it lives
    assert runner.adapter_name(Adapter()) == f"{__name__}.Adapter"
    assert runner.adapter_name(SimpleNamespace.__init__).endswith("SimpleNamespace.__init__")


def test_the_dynamic_description_counts_the_sampler_steps():
    from reference.conformance.dynamic import dynamic_script

    script = dynamic_script()
    n = sum(bool(st.sample) for st in script)
    import dataclasses

    state = conformance.check_dynamic(lambda points: None, script=[dataclasses.replace(script[0], sample=False)])
    assert state.description.startswith("1 step of updates") and "(at 0 steps) the sampler" in state.description
    assert n > 1
    full = conformance.check_dynamic(lambda points: None)
    assert f"(at {n} steps) the sampler" in full.description
