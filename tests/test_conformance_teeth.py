"""The conformance kit's own tests, with teeth: what each module of reference/conformance/ must say and do.

The kit's other tests (tests/test_conformance*.py) check verdicts and the phrases
that carry them. These pin the rest, by theme, so that a changed constant, a
flipped comparison, a dropped argument or a changed word in any module of the
kit fails a test:

1. Every report, word for word and number for number: the full text the kit
   prints for the reference backend, the dynamic reference backends, the
   independent NumPy port and every backend of tests/wrong_backends.py (each
   planted bug, each gallery entry) is compared with the text stored in
   tests/conformance_reports/. Words must be identical; a number must agree
   to 2e-3 relative (the last printed digit) or 1e-12 absolute, so that the
   last digit of a figure measured at rounding level may differ between NumPy
   and BLAS builds but no constant of the kit can change unseen. After an
   intended change of the kit's output, rewrite the stored texts with
   ``python tests/test_conformance_teeth.py --regenerate`` and read the diff.
2. The scenarios' data, fingerprinted (shape, sum, sum of squares, a
   position-weighted sum), so that a constant of a scenario that a correct
   backend passes either way still cannot change unseen.
3. Module by module, what the reports do not show: guarded calls (_calls), the
   command line (command), the report's ranking (report), the runner's folding.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import os
import re
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from reference import conformance
from reference.conformance import _calls, command, runner
from reference.conformance.report import SEVERITY, Case, CheckReport, ConformanceReport

HERE = Path(__file__).resolve().parent
REPORTS = HERE / "conformance_reports"

# --- 1. every report, word for word -----------------------------------------------------------

_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def _backends() -> dict[str, object]:
    """Every backend whose report is stored: name -> backend."""
    from tests import wrong_backends as wb

    named = {n: getattr(wb, n) for n in dir(wb) if n.startswith(("WRONG_", "GALLERY_", "CORRECT_"))}
    # its error is float32 rounding (4e-7 to 5e-7), its worst gradient an argmax of that noise: the
    # words of its report depend on the BLAS; tests/test_conformance.py checks its verdict and scenario
    del named["WRONG_ENCODER_FLOAT32"]
    named["REFERENCE_BACKEND"] = conformance.REFERENCE_BACKEND
    named["TREE_BACKEND"] = conformance.TREE_BACKEND
    named["REBUILD_BACKEND"] = conformance.REBUILD_BACKEND
    return dict(sorted(named.items()))


def _report_text(name: str, backend: object) -> str:
    return conformance.run_conformance(backend, name=name).format() + "\n"


def _portable(text: str) -> str:
    """The report less what depends on the NumPy/BLAS build rather than on the kit.

    - NumPy's own error messages (raised in its ``.pyx`` code) change wording between versions;
    - the ``worst:`` detail of a passing case whose measured error is at rounding level
      (0 < error < 1e-5: float64 Nystrom maps, float32 gradients) names an argmax of rounding
      noise, which moves between builds, and that error itself is shown as ``<rounding level>``.
    """
    text = re.sub(r"(raised \w+: ).*?( \(at )[\w.]+\.pyx:\d+\)", r"\1<NumPy's message>\2<NumPy>)", text)
    lines, noise = [], False
    for line in text.splitlines():
        if noise and line.lstrip().startswith("worst:"):
            line = line[: line.index("worst:") + 6] + " <rounding-level detail>"
        m = re.match(r"\s+PASS\s.* = (\S+) \(pass if", line)
        noise = bool(m) and 0 < abs(float(m.group(1))) < 1e-5
        if noise:
            line = line[: m.start(1)] + "<rounding level>" + line[m.end(1):]
        lines.append(line)
    return "\n".join(lines)


def _agree(got: str, want: str) -> str | None:
    """None when the texts agree (words exactly, numbers to 2e-3 relative or 1e-12 absolute), else why not.

    Integers of the text are ids and counts: two agree when equal or, for large draw counts, within
    2e-3 relative (one draw of 2568 may move between builds; an id below 500 may not)."""
    got, want = _portable(got), _portable(want)
    g_words, w_words = _NUMBER.split(got), _NUMBER.split(want)
    if g_words != w_words:
        for i, (a, b) in enumerate(zip(g_words, w_words)):
            if a != b:
                return f"words differ: got {a!r}, stored {b!r} (after {''.join(g_words[max(0, i - 3):i])!r})"
        return f"{len(g_words)} word runs, stored {len(w_words)}"
    for a, b in zip(_NUMBER.findall(got), _NUMBER.findall(want)):
        if a == b:
            continue
        x, y = float(a), float(b)
        if not (abs(x - y) <= 1e-12 or abs(x - y) <= 2e-3 * max(abs(x), abs(y))):
            return f"number differs: got {a}, stored {b}"
    return None


@pytest.mark.parametrize("name", list(_backends()))
def test_the_report_of_every_backend_is_the_stored_one(name):
    """Break tried: SEVERITY['tie rule'] 10 -> 11 passes this (not printed); a description's word, a
    threshold, `:.3g` -> `:.4g` in the bracket message, and `hi - lo` -> `hi + lo` each fail it."""
    stored = (REPORTS / f"{name}.txt").read_text()
    got = _report_text(name, _backends()[name])
    why = _agree(got, stored)
    assert why is None, f"{name}: {why}\n--- got:\n{got}"


def test_the_comparison_of_report_texts_has_teeth():
    """The comparison itself: a word, an integer or a float beyond the last digit differs; rounding does not."""
    base = "query 5: lo = 9.11395443339, hi = 9.147 (pass if <= 1e-09); ids 48, 54"
    assert _agree(base, base) is None
    assert _agree(base.replace("9.147", "9.14701"), base) is None
    assert _agree(base.replace("1e-09", "1.0000001e-09"), base) is None
    for changed in (base.replace("lo", "LO"), base.replace("48", "49"), base.replace("9.147", "9.2"),
                    base.replace("1e-09", "2e-09"), base.replace("1e-09", "-1e-09"), base + "x", base[:-1]):
        assert _agree(changed, base) is not None, changed


# --- 2. the scenarios' data, fingerprinted ----------------------------------------------------


def _fingerprint(x: object) -> object:
    """A float summary of an array (shape, sum, sum of squares, weighted sum), recursively of containers."""
    if isinstance(x, np.ndarray):
        a = np.asarray(x, dtype=np.float64).ravel()
        w = np.arange(1, a.size + 1, dtype=np.float64) / max(a.size, 1)
        return ("array", tuple(x.shape), str(x.dtype), float(a.sum()), float((a * a).sum()), float((w * a).sum()))
    if isinstance(x, dict):
        return {str(k): _fingerprint(v) for k, v in sorted(x.items())}
    if isinstance(x, (list, tuple)):
        return [_fingerprint(v) for v in x]
    if hasattr(x, "__dataclass_fields__"):
        return {f: _fingerprint(getattr(x, f)) for f in x.__dataclass_fields__}
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    return x


def _scenario_lists() -> dict[str, object]:
    return {
        "topk": conformance.topk_scenarios(),
        "sampler": conformance.sampler_scenarios(),
        "bracket": conformance.bracket_scenarios(),
        "encoder": conformance.encoder_scenarios(),
        "nystrom": conformance.nystrom_scenarios(),
        "dynamic": conformance.dynamic_script(),
    }


def _close(got: object, want: object, path: str = "") -> str | None:
    if isinstance(want, float) and isinstance(got, (int, float)):
        if got == want or abs(got - want) <= 1e-9 * max(1.0, abs(want)):
            return None
        return f"{path}: {got!r} != {want!r}"
    if isinstance(want, list) and isinstance(got, (list, tuple)):
        if len(got) != len(want):
            return f"{path}: length {len(got)} != {len(want)}"
        for i, (a, b) in enumerate(zip(got, want)):
            why = _close(a, b, f"{path}[{i}]")
            if why:
                return why
        return None
    if isinstance(want, dict) and isinstance(got, dict):
        if sorted(got) != sorted(want):
            return f"{path}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            why = _close(got[k], want[k], f"{path}.{k}")
            if why:
                return why
        return None
    return None if got == want else f"{path}: {got!r} != {want!r}"


def _jsonable(x: object) -> object:
    if isinstance(x, tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, list):
        return [_jsonable(v) for v in x]
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    return x


@pytest.mark.parametrize("which", ["topk", "sampler", "bracket", "encoder", "nystrom", "dynamic"])
def test_the_scenario_data_are_the_stored_ones(which):
    """Every array and number of every scenario, to 1e-9 relative (the data are seeded).

    Break tried: `0.01 * rng.standard_normal` -> `0.01 / rng.standard_normal` in the one-sided
    bracket scenario, and the polynomial kernel's c 1.0 -> 2.0: each fails here."""
    import json

    stored = json.loads((REPORTS / "scenarios.json").read_text())[which]
    got = _jsonable(_fingerprint(_scenario_lists()[which]))
    why = _close(json.loads(json.dumps(got)), stored, which)
    assert why is None, why


def _regenerate() -> None:
    import json

    REPORTS.mkdir(exist_ok=True)
    for name, backend in _backends().items():
        (REPORTS / f"{name}.txt").write_text(_report_text(name, backend))
    data = {k: _jsonable(_fingerprint(v)) for k, v in _scenario_lists().items()}
    (REPORTS / "scenarios.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(_backends())} reports and scenarios.json to {REPORTS}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--regenerate"]:
        _regenerate()
    else:
        print(f"usage: python {sys.argv[0]} --regenerate   (rewrite the stored reports in {REPORTS})")


# --- 3a. _calls: the guarded call, every message and option ------------------------------------


def test_check_time_limit_accepts_seconds_and_names_the_argument():
    """Break tried: `t >= 0` -> `t > 0` fails the 0 case; dropping `math.isfinite` fails the inf case."""
    assert _calls.check_time_limit(None) is None
    assert _calls.check_time_limit(0) is None and _calls.check_time_limit("0") is None
    assert _calls.check_time_limit("2.5") == 2.5 and _calls.check_time_limit(1e-3) == 1e-3
    assert _calls.DEFAULT_TIME_LIMIT == 600.0
    with pytest.raises(ValueError, match=r"^time_limit: expected a number of seconds \(0 for no limit\), got 'abc'$"):
        _calls.check_time_limit("abc")
    with pytest.raises(ValueError, match=r"^--t: expected a number of seconds \(0 for no limit\), got \[1\]$"):
        _calls.check_time_limit([1], "--t")
    for bad in (-1e-9, math.inf, math.nan, "-inf"):
        with pytest.raises(ValueError, match=r"^time_limit: expected a finite number of seconds >= 0 "
                                             r"\(0 for no limit\), got "):
            _calls.check_time_limit(bad)


def test_describe_shows_arrays_by_shape_dicts_by_braces_and_scalars_by_repr():
    assert _calls.describe("points", np.zeros((3, 2))) == "points (3, 2)"
    assert _calls.describe("params", {"a": 1}) == "params={...}"
    assert _calls.describe("k", 10) == "k=10" and _calls.describe("s", "x") == "s='x'"


def test_a_returned_value_comes_back_converted_and_untouched_inputs_pass():
    seen = {}

    def fn(a, b, *, c):
        seen["thread"] = threading.current_thread().name
        return a.sum() + b["x"].sum() + c

    a, b = np.array([1.0, np.nan]), {"x": np.array([1 + 1j, np.nan])}  # NaN kept is not a change
    value, finding = _calls.call_backend(fn, "topk", [("a", a), ("b", b)], [("c", 2)], convert=lambda v: ("c", v))
    assert finding is None and value[0] == "c" and np.isnan(value[1])
    assert seen["thread"] == "conformance topk"  # a thread dump names the check a hanging call belongs to
    value, finding = _calls.call_backend(lambda: [1], "sample", [], time_limit=None)
    assert (value, finding) == ([1], None)


@pytest.mark.parametrize("change, names", [
    (lambda a, b, d: a.__setitem__(0, 9.0), "input a"),
    (lambda a, b, d: (a.__setitem__(0, 9.0), b.__setitem__(0, 9)), "inputs a, b"),
    (lambda a, b, d: d.__setitem__("new", np.zeros(1)), "input d"),
    (lambda a, b, d: d["x"].__setitem__(0, 5.0), "input d"),
    (lambda a, b, d: d.pop("x"), "input d"),
])
def test_every_changed_input_is_named_with_the_right_plural(change, names):
    a, b, d = np.array([1.0, 2.0]), np.array([1, 2]), {"x": np.array([1.0])}

    def fn(a, b, d):
        change(a, b, d)
        return 0

    value, finding = _calls.call_backend(fn, "nystrom", [("a", a), ("b", b)], [("d", d)])
    assert value is None
    assert finding == (f"nystrom(a (2,), b (2,), d={{...}}) modified its {names} "
                       "(no protocol allows it: a caller's arrays would change under it)")
    assert a[0] == 1.0 and b[0] == 1 and list(d) == ["x"] and d["x"][0] == 1.0  # the caller's arrays are intact


def test_same_compares_type_shape_dtype_and_values():
    x = np.array([1.0, np.nan])
    assert _calls._same(x, x.copy()) and not _calls._same(x, [1.0, np.nan])
    assert not _calls._same(x, x.reshape(2, 1)) and not _calls._same(x, x.astype(np.float32))
    assert not _calls._same(np.array([1, 2]), np.array([1, 3]))
    assert not _calls._same({"a": x}, [x]) and not _calls._same({"a": x}, {"b": x})
    assert _calls._same(3, 4)  # not an array: nothing to compare


def test_an_exception_names_the_call_the_stage_and_the_place():
    def boom(points, k):
        raise RuntimeError("x" * 400)

    _, finding = _calls.call_backend(boom, "topk", [("points", np.zeros((2, 2)))], [("k", 1)])
    line = inspect.getsourcelines(boom)[1] + 1
    assert finding == f"topk(points (2, 2), k=1) raised RuntimeError: {'x' * 300} (at test_conformance_teeth.py:{line})"

    class Bad:
        def __array__(self, *a, **k):
            raise SystemExit(0)

    _, finding = _calls.call_backend(lambda: Bad(), "sample", [], convert=np.asarray)
    assert finding.startswith("converting the output of sample() raised SystemExit: 0 (at test_conformance_teeth.py:")
    _, finding = _calls.call_backend(lambda x: 0, "sample", [("a", 1), ("b", 2)])  # wrong arity: in the kit's frame
    assert finding.endswith("<lambda>() takes 1 positional argument but 2 were given "
                            "(raised when the kit called it: do its parameters fit the protocol?)")


def test_declining_is_allowed_only_where_asked():
    def declines():
        raise NotImplementedError("not for dicts")

    with pytest.raises(_calls.Declined, match="^not for dicts$"):
        _calls.call_backend(declines, "encoder", [], may_decline=True)
    _, finding = _calls.call_backend(declines, "encoder", [])
    assert finding.startswith("encoder() raised NotImplementedError: not for dicts (at test_conformance_teeth.py:")


def test_a_hanging_call_and_a_hanging_conversion_are_told_apart():
    release = threading.Event()

    def hang():
        release.wait(30)
        return 1

    class Slow:
        def __array__(self, *a, **k):
            release.wait(30)
            return np.zeros(1)

    try:
        _, finding = _calls.call_backend(hang, "topk", [], time_limit=0.05)
        assert finding == ("topk() did not return within the time limit of 0.05 s (the call was still running; "
                           "it is left running in a background thread; set the limit with --time-limit)")
        _, finding = _calls.call_backend(lambda: Slow(), "topk", [], convert=np.asarray, time_limit=0.05)
        assert finding.startswith("topk() did not return within the time limit of 0.05 s "
                                  "(converting its output was still running;")
    finally:
        release.set()


# --- 3b. command: the command line, every option's effect -------------------------------------

HELP = {  # option -> its whole help text (whitespace normalised)
    "--checks": "comma-separated subset of sampler,encoder,bracket,topk,nystrom,dynamic (default: every one the "
                "backend provides)",
    "--as": "treat BACKEND itself as the single callable of this check (a bare function whose signature fits "
            "exactly one protocol is recognised without it)",
    "--dtype": "precision of the backend's logits (default: its `dtype` attribute, else float64); top-k and bracket "
               "accept the rounding of that precision (proofs/README.md, 'The rounding bound of a declared "
               "precision')",
    "--time-limit": "time limit of each backend call; exceeding it is a FAIL (default 600; 0: none)",
    "--targets": "run the top-k and sampler checks on your own targets (N, d) ...",
    "--queries": "... and queries (B, d), .npy files",
    "--k": "k of the top-k check on your data (default 10)",
    "--seed": "base seed handed to the sampler (default 0)",
    "--alpha": "false-alarm rate of the run (default 1e-06)",
    "--tv": "TV error the sampler test must detect; sets the sample size ~ 1/tv^2 (default 0.05)",
    "--power": "detection probability at that TV (default 0.9)",
    "--golden": "instead of a backend: compare the reference with its golden vectors (reference/golden/*.npz), "
                "or regenerate them",
    "--golden-dir": "directory of the golden vectors (default: the package's reference/golden)",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conformance")
    command.add_arguments(parser)
    return parser


def test_every_help_text_is_the_documented_one_in_full():
    actions = {a.option_strings[0]: a for a in _parser()._actions if a.option_strings and a.dest != "help"}
    assert sorted(actions) == sorted(HELP)
    for opt, text in HELP.items():
        assert " ".join(actions[opt].help.split()) == text, opt
    (positional,) = [a for a in _parser()._actions if not a.option_strings]
    assert " ".join(positional.help.split()) == (
        "'module:object' providing some of sample / encoder / bracket / topk / nystrom / dynamic_build "
        "(e.g. reference.conformance:REFERENCE_BACKEND or reference.contrib.torch_backend:BACKEND), "
        "or a bare function of one protocol")
    assert actions["--as"].choices == sorted(runner.CHECKS)


@pytest.fixture
def user_files(tmp_path):
    rng = np.random.default_rng(5)
    Z, Q = tmp_path / "Z.npy", tmp_path / "Q.npy"
    np.save(Z, rng.standard_normal((40, 3)))
    np.save(Q, rng.standard_normal((20, 3)))
    return str(Z), str(Q)


def test_user_scenarios_are_named_and_sized_as_documented(user_files):
    Z, Q = command.load_user_data(*user_files)
    assert Z.dtype == Q.dtype == np.float64 and Z.shape == (40, 3) and Q.shape == (20, 3)
    assert command.USER_SAMPLER_QUERIES == 16
    s = command.user_scenarios(Z, Q, 7, "Z.npy, Q.npy")
    assert sorted(s) == ["sampler", "topk"]
    (t,), (p,) = s["topk"], s["sampler"]
    assert (t.name, t.k, t.about) == ("your-data", 7, "Z.npy, Q.npy: 40 targets, 20 queries, k = 7")
    assert t.points is Z and t.queries is Q
    assert (p.name, p.about) == ("your-data", "Z.npy, Q.npy: 40 targets, the first 16 queries")
    assert np.array_equal(p.queries, Q[:16]) and p.points is Z
    assert command.user_scenarios(Z, Q, 40, "a")["topk"][0].k == 40  # k = N allowed
    few = command.user_scenarios(Z, Q[:3], 1, "a")["sampler"][0]
    assert few.queries.shape == (3, 3) and few.about == "a: 40 targets, the first 3 queries"
    for bad in (0, 41):
        with pytest.raises(ValueError, match=r"^--k: "):
            command.user_scenarios(Z, Q, bad, "a")


def _run(capsys, argv):
    args = _parser().parse_args(argv)
    code = command.run(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_user_data_runs_exactly_the_chosen_checks(capsys, user_files):
    Z, Q = user_files
    code, out, _ = _run(capsys, ["reference.conformance:REFERENCE_BACKEND", "--targets", Z, "--queries", Q,
                                 "--k", "5", "--checks", "topk"])
    assert code == 0
    assert out.splitlines()[0] == "PASS: all 1 checks passed (topk)"
    assert "        Z.npy, Q.npy: 40 targets, 20 queries, k = 5; tolerance" in out
    for other in ("sampler", "encoder", "bracket", "nystrom", "dynamic"):
        assert f"SKIP  {other}" not in out or "not run on the given data" in out
    with pytest.raises(ValueError, match=r"^--checks: on --targets/--queries data only topk and sampler run, "
                                         r"got \['bracket'\]$"):
        _run(capsys, ["reference.conformance:REFERENCE_BACKEND", "--targets", Z, "--queries", Q,
                      "--checks", "topk,bracket"])


def test_the_time_limit_option_reaches_every_call(capsys):
    code, out, _ = _run(capsys, ["tests.test_conformance_teeth:HANGING_TOPK", "--time-limit", "0.05"])
    assert code == 1
    assert out.splitlines()[0].startswith("FAIL: topk, scenario integer-ties: topk(points (300, 3), queries (5, 3), "
                                          "k=15) did not return within the time limit of 0.05 s")


def test_a_callable_object_that_provides_protocols_is_not_taken_for_a_bare_function(capsys):
    code, out, err = _run(capsys, ["tests.test_conformance_teeth:CALLABLE_WITH_TOPK", "--checks", "topk"])
    assert code == 0 and err == "" and out.splitlines()[0] == "PASS: all 1 checks passed (topk)"


def test_bare_callables_get_a_note_or_a_fail_naming_the_signatures(capsys):
    code, out, err = _run(capsys, ["tests.wrong_backends:numpy_topk"])
    assert code == 0 and out.splitlines()[0] == "PASS: all 1 checks passed (topk)"
    assert err == ("note: tests.wrong_backends:numpy_topk is a bare callable whose signature fits "
                   f"{runner.protocol_signature('topk')}: checking it as topk (use --as to choose)\n")
    code, out, _ = _run(capsys, ["tests.test_conformance_teeth:_regenerate"])
    expected = "; ".join(runner.protocol_signature(c) for c in runner.CHECKS)
    assert code == 1 and out == (f"FAIL: tests.test_conformance_teeth:_regenerate (`{runner.call_text(_regenerate)}`) is a callable whose "
                                 f"signature fits no protocol; expected one of: {expected}; or an object providing "
                                 "them\n")
    code, out, _ = _run(capsys, ["tests.test_conformance_teeth:fits_all", "--as", "topk"])
    assert code == 0 and out.splitlines()[0] == "PASS: all 1 checks passed (topk)"
    code, out, _ = _run(capsys, ["tests.test_conformance_teeth:fits_all"])
    several = [c for c in runner.CHECKS if c in runner.fitting_checks(fits_all)]
    assert len(several) > 1
    assert code == 1 and out == (f"FAIL: tests.test_conformance_teeth:fits_all (`{runner.call_text(fits_all)}`) fits "
                                 f"several protocols ({', '.join(runner.protocol_signature(c) for c in several)}): "
                                 "choose one with --as\n")


def test_a_bad_dtype_attribute_is_a_fail_line_and_a_bad_backend_an_error(capsys):
    code, out, _ = _run(capsys, ["tests.test_conformance_teeth:BAD_DTYPE"])
    assert code == 1 and out.startswith("FAIL: tests.test_conformance_teeth:BAD_DTYPE: ")
    assert out.endswith(" (or override it with --dtype)\n")
    code, out, _ = _run(capsys, ["tests.test_conformance_teeth:BAD_DTYPE", "--dtype", "float64"])
    assert code == 0
    code, out, err = _run(capsys, ["tests.test_conformance_teeth:NO_SUCH"])
    assert code == 1 and out == "" and err.startswith("error: BACKEND: ")
    with pytest.raises(ValueError, match=r"^BACKEND: expected 'module:object' \(or --golden check\|regenerate\)$"):
        _run(capsys, [])


def _sleepy_topk(points, queries, k):
    time.sleep(0.2)
    return np.zeros((queries.shape[0], k), dtype=np.int64)


def fits_all(points, queries, *args, **kwargs):
    from tests.wrong_backends import numpy_topk

    return numpy_topk(points, queries, args[0] if args else kwargs["k"])


class _CallableWithTopk:
    def __call__(self, x):
        return x

    @staticmethod
    def topk(points, queries, k):
        from tests.wrong_backends import numpy_topk

        return numpy_topk(points, queries, k)


HANGING_TOPK = SimpleNamespace(topk=_sleepy_topk)
CALLABLE_WITH_TOPK = _CallableWithTopk()
BAD_DTYPE = SimpleNamespace(topk=_CallableWithTopk.topk, dtype="float16")


# --- 3c. report: ranking of failures, plurals, what a passing check says -----------------------


def test_most_serious_of_a_passing_check_is_zero_and_unknown_kinds_rank_zero():
    ok = CheckReport("topk", "r", [Case("s", "stat", 0.0, 1.0, "<=", True, "")])
    assert ok.most_serious() == (0, "")
    odd = CheckReport("topk", "r", [Case("s", "stat", 2.0, 1.0, "<=", False, "w", kind="odd kind")])
    assert odd.most_serious() == (0, "topk, scenario s: w")
    assert SEVERITY["tie rule"] > 0 and min(SEVERITY.values()) > 0
    err = CheckReport("encoder", "r", error="boom")
    assert err.most_serious() == (SEVERITY["backend error"], "encoder: boom")


def test_the_summary_counts_scenarios_and_errors_with_plurals():
    def failing(name, n):
        return CheckReport(name, "r", [Case(f"s{i}", "stat", 2.0, 1.0, "<=", False, "w", kind="unsorted")
                                       for i in range(n)])

    assert ConformanceReport("B", [failing("topk", 1)]).summary().endswith(
        " [1 failing scenario in 1 of 1 checks]")
    assert ConformanceReport("B", [failing("topk", 2)]).summary().endswith(
        " [2 failing scenarios in 1 of 1 checks]")
    err = CheckReport("encoder", "r", error="boom")
    assert ConformanceReport("B", [err, failing("topk", 1)]).summary() == (
        "FAIL: encoder: boom [2 failing scenarios in 2 of 2 checks]")


# --- 3d. runner: what is folded, skipped or failed ----------------------------------------------


def test_checks_not_run_on_the_given_data_are_one_skip_line_each_in_order():
    from reference.conformance.topk import TopkScenario

    Z = np.random.default_rng(0).standard_normal((30, 3))
    sc = {"topk": [TopkScenario("mine", Z, Z[:2], 3, "my data")]}
    report = conformance.run_conformance(conformance.REFERENCE_BACKEND, scenarios=sc, name="R")
    assert report.verdicts == {"topk": "PASS"}
    report = conformance.run_conformance(conformance.REFERENCE_BACKEND, ["topk", "bracket"], scenarios=sc, name="R")
    assert report.verdicts == {"topk": "PASS", "bracket": "SKIP"}
    assert report.checks[1].skipped == "not run on the given data" and report.checks[1].description == ""


# --- 3e. topk: every class of the classifier, its message and its window ----------------------

#: logits of the query (1,): 3, 1, 2, 2, 0, 5 (ids 2 and 3 tie exactly); the top-3 is [5, 0, 2]
_SIX = np.array([[3.0], [1.0], [2.0], [2.0], [0.0], [5.0]])
_TIE_TAIL = "an exact tie at the k-th place must go to the smaller id"


@pytest.mark.parametrize("got, kind, recall, detail", [
    ([5, 0, 2], None, 1.0, ""),
    ([5, 0, 2, 3, 1, 4], None, 1.0, ""),
    ([5, 0, 3], "tie rule", 2 / 3,
     f"query 0: id 3 returned at rank 2 but id 2, with exactly the same logit 2, was not: {_TIE_TAIL}; "
     "ranks 0..2: returned [5, 0, 3], expected [5, 0, 2]"),
    ([5, 0, 3, 2], "tie rule", 1.0,
     "query 0: id 3 at rank 2 before id 2 at rank 3, both with logit 2 exactly: an exact tie must go to the smaller "
     "id; ranks 0..3: returned [5, 0, 3, 2], expected [5, 0, 2, 3]"),
    ([5, 0, 1], "missing neighbour", 2 / 3,
     "query 0: recall@3 0.667: id 2 (logit 2, true rank 2) not returned, yet id 1 (logit 1, true rank 4) was: "
     "gap 0.5 |q|.|z| > tolerance 1.33e-15; ranks 0..2: returned [5, 0, 1], expected [5, 0, 2]"),
    ([0, 5, 2], "unsorted", 1.0,
     "query 0: rank 0 holds id 0 (logit 3) above rank 1 id 5 (logit 5), whose logit is larger by 0.4 |q|.|z| > "
     "tolerance 1.42e-15; 1 rank(s) out of order; ranks 0..2: returned [0, 5, 2], expected [5, 0, 2]"),
    ([0, 1, 2, 3, 4, 5], "unsorted", 1.0,
     "query 0: rank 1 holds id 1 (logit 1) above rank 2 id 2 (logit 2), whose logit is larger by 0.5 |q|.|z| > "
     "tolerance 1.33e-15; 3 rank(s) out of order; ranks 0..4: returned [0, 1, 2, 3, 4], expected [5, 0, 2, 3, 1]"),
    ([5, 0, -1], "invalid id", 2 / 3,
     "query 0, rank 2: id -1 (padding: fewer than k results); 1 invalid ids in the row; recall@3 of the valid ids "
     "0.667; ranks 0..2: returned [5, 0, -1], expected [5, 0, 2]"),
    ([5, 6, -2], "invalid id", 1 / 3,
     "query 0, rank 1: id 6 (outside [0, 6)); 2 invalid ids in the row; recall@3 of the valid ids 0.333; "
     "ranks 0..2: returned [5, 6, -2], expected [5, 0, 2]"),
    ([5, 5, 0], "invalid id", 2 / 3,
     "query 0: id 5 returned 2 times (ranks [0, 1]); ranks 0..2: returned [5, 5, 0], expected [5, 0, 2]"),
])
def test_every_class_of_the_topk_classifier_says_exactly_what_is_wrong(got, kind, recall, detail):
    """Hand-checked: e.g. the missing-neighbour tolerance is c (S_1 + S_2) / max(S_1, S_2) = 8.88e-16 * 3 / 2.

    Break tried: `g[j] == -1` -> `g[j] == 1` loses the padding wording; `ranks[1]` -> `ranks[0]` moves the window."""
    ((k_, r_, d_),) = conformance.classify_topk(_SIX, np.ones((1, 1)), np.array([got]), len(got))
    assert (k_, d_) == (kind, detail)
    assert r_ == pytest.approx(recall, abs=1e-15)


@pytest.mark.parametrize("swap, window", [
    (4, "ranks 1..7: returned [1, 2, 3, 5, 4, 6, 7], expected [1, 2, 3, 4, 5, 6, 7]"),
    (9, "ranks 6..11: returned [6, 7, 8, 10, 9, 11], expected [6, 7, 8, 9, 10, 11]"),
])
def test_the_window_shows_three_ranks_on_each_side_of_the_first_wrong_one(swap, window):
    Z = (12.0 - np.arange(12))[:, None]  # ids 0..11 in decreasing logit
    g = np.arange(12)
    g[[swap, swap + 1]] = g[[swap + 1, swap]]
    ((_, _, detail),) = conformance.classify_topk(Z, np.ones((1, 1)), g[None], 12)
    assert detail.endswith("; 1 rank(s) out of order; " + window)


def test_a_repeated_id_is_shown_at_its_second_place():
    Z = (12.0 - np.arange(12))[:, None]
    g = np.arange(12)
    g[8] = 4
    ((kind, _, detail),) = conformance.classify_topk(Z, np.ones((1, 1)), g[None], 12)
    assert kind == "invalid id"
    assert detail == ("query 0: id 4 returned 2 times (ranks [4, 8]); ranks 5..11: returned [5, 6, 7, 4, 9, 10, 11], "
                      "expected [5, 6, 7, 8, 9, 10, 11]")


def test_near_tie_swaps_and_unsorted_output_part_at_near_tie():
    assert conformance.NEAR_TIE == 1e-2
    for delta, kind, dtype, tol in [(0.0095, "near-tie swap", "float64", "1.77e-15"),
                                    (0.0105, "unsorted", "float64", "1.77e-15"),
                                    (0.0095, "near-tie swap", "float32", "7.12e-07")]:
        Z = np.array([[1.0], [1.0 + delta]])
        ((k_, _, detail),) = conformance.classify_topk(Z, np.ones((1, 1)), np.array([[0, 1]]), 2, dtype)
        assert k_ == kind and f"|q|.|z| > tolerance {tol};" in detail, (delta, dtype, detail)
    # within the float32 tolerance the swap is admissible
    Z = np.array([[1.0], [1.0 + 1e-7]])
    assert conformance.classify_topk(Z, np.ones((1, 1)), np.array([[0, 1]]), 2, "float32")[0][0] is None
    assert conformance.classify_topk(Z, np.ones((1, 1)), np.array([[0, 1]]), 2, "float64")[0][0] == "near-tie swap"


def _returns(rows):
    return lambda points, queries, k: np.asarray(rows)


def test_a_scenario_counts_its_classes_by_severity_and_leads_with_the_worst():
    rows = [[5, 0, 3], [5, 0, 1], [5, 0, -1], [5, 0, 2]]  # tie rule, missing, invalid, right
    sc = [conformance.TopkScenario("mixed", _SIX, np.ones((4, 1)), 3, "six integers")]
    report = conformance.check_topk(_returns(rows), scenarios=sc)
    (case,) = report.cases
    assert (case.kind, case.value, case.passed) == ("missing neighbour", 3.0, False)
    assert case.worst.splitlines()[1:] == [
        "        classes: missing neighbour 1, invalid id 1, tie rule 1",
        "        recall@3 of the queries missing neighbours: query 1 0.667; over the scenario 0.750"]
    assert case.headline == ("missing neighbours in 1 of 4 queries, recall@3 0.750 over the scenario (first: query 1: "
                             "recall@3 0.667: id 2 (logit 2, true rank 2) not returned, yet id 1 (logit 1, true rank "
                             "4) was: gap 0.5 |q|.|z| > tolerance 1.33e-15)")
    assert report.description == ("exact top-k in decreasing logit, exact ties by smaller id (P8); logits within the "
                                  "declared float64 rounding bound may be ordered either way")
    for rows, head in [([[5, 0, 3], [5, 0, -1]], "invalid ids in 1 of 2 queries (first: query 1, rank 2: id -1"),
                       ([[5, 0, 3], [0, 5, 2]], "output not sorted by logit in 1 of 2 queries (first: query 1: rank 0"),
                       ([[5, 0, 3]] * 2, "exact ties not broken by the smaller id in 2 of 2 queries (first: query 0:")]:
        sc = [conformance.TopkScenario("s", _SIX, np.ones((len(rows), 1)), 3, "a")]
        assert conformance.check_topk(_returns(rows), scenarios=sc).cases[0].headline.startswith(head), head


def test_more_than_ten_queries_missing_neighbours_are_elided_with_their_count():
    Z = np.arange(1.0, 21.0)[:, None]
    sc = [conformance.TopkScenario("many", Z, np.ones((12, 1)), 2, "m")]
    (case,) = conformance.check_topk(_returns(np.tile([0, 1], (12, 1))), scenarios=sc).cases
    shown = ", ".join(f"query {b} 0.000" for b in range(10))
    assert case.worst.splitlines()[-1] == (f"        recall@2 of the queries missing neighbours: {shown}, ... "
                                           "(12 queries); over the scenario 0.000")
    sc = [conformance.TopkScenario("eleven", Z, np.ones((11, 1)), 2, "m")]
    (case,) = conformance.check_topk(_returns(np.tile([0, 1], (11, 1))), scenarios=sc).cases
    assert case.worst.splitlines()[-1].endswith(f"{shown}, ... (11 queries); over the scenario 0.000")
    sc = [conformance.TopkScenario("ten", Z, np.ones((10, 1)), 2, "m")]
    (case,) = conformance.check_topk(_returns(np.tile([0, 1], (10, 1))), scenarios=sc).cases
    assert case.worst.splitlines()[-1].endswith(f"{shown}; over the scenario 0.000")


def test_wrong_dtype_and_shape_are_failing_cases_that_say_so():
    Z = np.arange(1.0, 21.0)[:, None]
    sc = [conformance.TopkScenario("s", Z, np.ones((2, 1)), 3, "a")]
    for rows, msg in [(np.zeros((2, 3)), "expected integer ids, got dtype float64"),
                      (np.zeros((3, 2), dtype=np.int32), "expected shape (2, 3), got (3, 2)"),
                      (np.zeros((2, 3), dtype=np.uint8) + 19, None)]:
        (case,) = conformance.check_topk(_returns(rows), scenarios=sc).cases
        if msg is None:
            assert case.kind != "backend error" and not case.passed  # unsigned ids are ids
        else:
            assert (case.kind, case.worst, case.passed) == ("backend error", msg, False)


# --- 3f. sampler: seeds, sizes, id validation, the description of a query ---------------------


def _recording_sampler(log):
    def sample(points, queries, n, seed):
        log.append((points.shape[0], queries.shape[0], n, seed))
        return np.random.default_rng(seed).integers(0, points.shape[0], (queries.shape[0], n))
    return sample


def test_the_sampler_hands_each_scenario_its_own_seed_and_the_format_probes_the_base_seed():
    log = []
    sc = [conformance.SamplerScenario("one", np.zeros((3, 2)), np.zeros((2, 2)), "three equal targets"),
          conformance.SamplerScenario("two", np.zeros((4, 2)), np.zeros((1, 2)), "four equal targets")]
    report = conformance.check_sampler(_recording_sampler(log), seed=7, scenarios=sc, alpha=0.03, tv=0.2, power=0.5)
    assert [entry[3] for entry in log] == [7, 7, 7, 8, 9]
    assert [entry[:2] for entry in log] == [(7, 3), (7, 1), (1, 2), (3, 2), (4, 1)]
    assert log[2][2] == 6 and log[3][2] == log[4][2] > 1  # the N = 1 probe draws 6
    assert report.description == ("ids ~ softmax(<q, z>) i.i.d.; G-test per query at 0.01 (Bonferroni: total "
                                  "false-alarm rate 0.03 over 3 queries)")
    assert [c.threshold for c in report.cases] == [0.0, 0.01, 0.01]
    assert report.cases[1].note.startswith(f"three equal targets; n = {log[3][2]} draws per query; the test detects "
                                            "any TV error >= ")
    assert report.cases[1].note.endswith(" (on its merged bins) with probability >= 0.5 per query")
    smaller_tv = []
    conformance.check_sampler(_recording_sampler(smaller_tv), scenarios=sc, alpha=0.03, tv=0.1, power=0.5)
    assert smaller_tv[3][2] > log[3][2]  # tv sets n


@pytest.mark.parametrize("ids, msg", [
    (np.array([[0, 1, 7]] * 2), "output: expected ids in [0, 3), got 2 out of range (e.g. query 0, draw 2: id 7)"),
    (np.array([[0, 1, 2], [0, -1, 3]]), "output: expected ids in [0, 3), got 2 out of range (e.g. query 1, draw 1: id -1)"),
    (np.array([[0, 1, 2], [3, 0, 0]]), "output: expected ids in [0, 3), got 1 out of range (e.g. query 1, draw 0: id 3)"),
    (np.array([[0, 1, 2]] * 2, dtype=np.float64), "output: expected integer ids, got dtype float64"),
    (np.array([[0, 1]] * 2), "output: expected shape (2, 3), got (2, 2)"),
])
def test_sampler_ids_are_validated_with_the_place_of_the_first_bad_one(ids, msg):
    from reference.conformance.sampler import _as_ids

    assert _as_ids(ids, (2, 3), 3, "output") == (None, msg)


def test_the_ids_that_pass_validation_come_back_as_int64():
    from reference.conformance.sampler import _as_ids

    got, err = _as_ids(np.array([[0, 2, 1]], dtype=np.uint8), (1, 3), 3, "x")
    assert err is None and got.dtype == np.int64 and got.tolist() == [[0, 2, 1]]
    got, err = _as_ids(np.zeros((0, 3), dtype=np.int32), (0, 3), 3, "x")
    assert err is None and got.shape == (0, 3)


def test_a_format_violation_is_labelled_once_and_they_are_joined_by_semicolons():
    def sample(points, queries, n, seed):
        return np.zeros((queries.shape[0], n), dtype=np.int64) + (points.shape[0] == 1) * 5

    report = conformance.check_sampler(sample, scenarios=[])  # no scenario: once a ZeroDivisionError
    assert report.description.endswith("(Bonferroni: total false-alarm rate 1e-06 over 0 queries)")
    case = report.cases[0]
    assert (case.value, case.passed, case.kind) == (1.0, False, "backend error")
    assert case.worst == ("N=1 (every draw must be id 0): expected ids in [0, 1), got 12 out of range "
                          "(e.g. query 0, draw 0: id 5)")
    assert case.headline == case.worst

    def raises(points, queries, n, seed):
        raise RuntimeError("no")

    case = conformance.check_sampler(raises, scenarios=[]).cases[0]
    assert case.value == 3.0 and case.worst.count("; ") == 2
    assert case.worst.startswith("B=3, N=7, n=5: sample(points (7, 3), queries (3, 3), n=5, seed=0) raised RuntimeError")


def test_an_impossible_draw_fails_on_its_own():
    from reference.conformance.statistics import IMPOSSIBLE_PROBABILITY

    assert IMPOSSIBLE_PROBABILITY == 1e-30
    pts = np.array([[0.0], [1.0], [1.0]])
    qs = np.array([[80.0]])  # P(id 0) = e^-80 / (1 + 2 e^-80) ~ 9e-36

    def sample(points, queries, n, seed):
        out = np.ones((queries.shape[0], n), dtype=np.int64)
        if points.shape == pts.shape:
            out[0, 3] = 0
        return out

    sc = [conformance.SamplerScenario("cliff", pts, qs, "two targets")]
    case = conformance.check_sampler(sample, scenarios=sc).cases[1]
    assert (case.passed, case.value) == (False, 0.0)
    assert case.worst == ("query 0 drew target 0 whose probability is 9.02e-36 (logit 0, log Z 80.6931); "
                          "1 such draws in total")
    assert case.headline == "an impossible draw: " + case.worst
    qs = np.array([[60.0]])  # P(id 0) ~ 4.4e-27: possible, if unlikely
    sc = [conformance.SamplerScenario("cliff", pts, qs, "two targets")]
    assert "drew target" not in conformance.check_sampler(sample, scenarios=sc).cases[1].worst


# --- 3g. runner and the reference backends: what reaches each check ---------------------------


def test_the_runner_hands_each_check_its_options_and_splits_alpha_between_the_random_ones(monkeypatch):
    got = {}

    def recorder(name):
        def check(fn, **kwargs):
            got[name] = kwargs
            return CheckReport(name, "r", [Case("s", "stat", 0.0, 1.0, "<=", True, "")])
        return check

    for name, (attr, _) in list(runner.CHECKS.items()):
        monkeypatch.setitem(runner.CHECKS, name, (attr, recorder(name)))
    backend = {"sample": _recording_sampler([]), "topk": fits_all, "bracket": lambda points, queries, tol: 0,
               "dynamic_build": lambda points: 0}
    report = runner.run_conformance(backend, alpha=0.02, tv=0.3, power=0.7, seed=4, dtype="float32", time_limit=9)
    assert report.verdicts == {"sampler": "PASS", "encoder": "SKIP", "bracket": "PASS", "topk": "PASS",
                               "nystrom": "SKIP", "dynamic": "PASS"}
    assert got["sampler"] == {"time_limit": 9.0, "alpha": 0.01, "tv": 0.3, "power": 0.7, "seed": 4}
    assert got["dynamic"] == {"time_limit": 9.0, "alpha": 0.01, "tv": 0.3, "power": 0.7, "seed": 4, "dtype": "float32"}
    assert got["topk"] == got["bracket"] == {"time_limit": 9.0, "dtype": "float32"}
    assert (report.alpha, report.dtype) == (0.02, "float32")
    assert report.checks[1].skipped == "not provided by the backend"
    got.clear()
    runner.run_conformance({"sample": _recording_sampler([])}, alpha=0.02, time_limit=0)
    assert got["sampler"]["alpha"] == 0.02 and got["sampler"]["time_limit"] is None
    report = runner.run_conformance({"sample": _recording_sampler([])}, ["sampler", "topk"])
    assert report.checks[1].error == "requested, but the backend has no callable `topk`"
    assert report.backend.startswith("{'sample': <function")


def test_the_reference_backends_name_themselves():
    assert repr(conformance.REFERENCE_BACKEND) == "ReferenceBackend()"
    assert repr(conformance.TREE_BACKEND) == "TreeBackend()"
    assert repr(conformance.REBUILD_BACKEND) == "from_static(ReferenceBackend())"


# --- 3h. dynamic: the replay's bookkeeping, messages and seeds --------------------------------


def test_every_option_of_check_dynamic_reaches_each_static_check_it_runs(monkeypatch):
    """check_dynamic's options reach the static checks of every step: the sampler steps get tv and
    power as given, the false-alarm rate shared among them, seed + 1000 s; top-k and bracket the
    declared dtype; all of them the time limit."""
    from reference.conformance import dynamic as dyn

    calls = {"sampler": [], "topk": [], "bracket": []}

    def recorder(name):
        def check(backend, **kwargs):
            calls[name].append(kwargs)
            return CheckReport(name, "r", [Case("s", "stat", 0.0, 1.0, "<=", True, "")])
        return check

    for name, attr in (("sampler", "check_sampler"), ("topk", "check_topk"), ("bracket", "check_bracket")):
        monkeypatch.setattr(dyn, attr, recorder(name))
    script = dyn.dynamic_script()
    sample_steps = [s for s, step in enumerate(script) if step.sample]
    dyn.check_dynamic(conformance.REBUILD_BACKEND.dynamic_build, alpha=0.012, tv=0.31, power=0.66, seed=5,
                      dtype="float32", time_limit=7.5)
    assert len(calls["sampler"]) == len(sample_steps) >= 2
    for s, kw in zip(sample_steps, calls["sampler"]):
        assert (kw["tv"], kw["power"], kw["seed"], kw["time_limit"]) == (0.31, 0.66, 5 + 1000 * s, 7.5)
        assert kw["alpha"] == pytest.approx(0.012 / len(sample_steps), rel=1e-15)
    assert calls["topk"] and calls["bracket"]
    for kw in calls["topk"] + calls["bracket"]:
        assert (kw["dtype"], kw["time_limit"]) == ("float32", 7.5)


def test_the_replay_refuses_unusable_ids_with_a_message_for_each_reason():
    from reference.conformance.dynamic import _ID_SLACK, _ID_SPARSITY, _Replay

    assert (_ID_SPARSITY, _ID_SLACK) == (16, 1024)
    view = _Replay(2)
    view.vector = {0: np.zeros(2), 1: np.ones(2)}
    view.rows = 2
    limit = 16 * (2 + 3) + 1024
    assert view.issue(np.array([2.0, 3.0, 4.0]), 3) == (None, "insert returned float64 ids of shape (3,), expected "
                                                                "3 integer ids")
    assert view.issue(np.array([2, 3]), 3) == (None, "insert returned int64 ids of shape (2,), expected 3 integer ids")
    assert view.issue(np.array([2, -1, 4]), 3) == (None, f"insert returned id -1: ids must be in [0, {limit}] "
                                                         "(dense: the kit holds a row per id)")
    assert view.issue(np.array([2, limit + 1, 4]), 3)[1].startswith(f"insert returned id {limit + 1}: ids must be")
    assert view.issue(np.array([2, 3, 3]), 3) == (None, "insert returned a repeated id ([2, 3, 3]...)")
    assert view.issue(np.array([2, 1, 3]), 3) == (None, "insert returned id 1, which is live already")
    assert view.rows == 2  # refused ids are not counted
    ids, err = view.issue(np.array([2, limit, 4], dtype=np.uint16), 3)
    assert err is None and ids.dtype == np.int64 and ids.tolist() == [2, limit, 4] and view.rows == 5


def test_the_replay_lists_live_ids_as_integers_even_when_none_is_live():
    from reference.conformance.dynamic import _Replay

    view = _Replay(3)
    ids, Z = view.live()
    assert ids.dtype == np.int64 and ids.shape == (0,) and Z.shape == (0, 3)
    view.vector = {5: np.full(3, 2.0), 1: np.ones(3)}
    view.dead = {3: 4}
    ids, Z = view.live()
    assert ids.tolist() == [1, 5] and Z.tolist() == [[1.0] * 3, [2.0] * 3]
    Zl, full, aug = view.arrays(np.array([[1.0, 0.0, 0.0]]))
    T = 1000.0 + 2.0 * 2.0
    assert full.shape == (6, 4) and aug.tolist() == [[1.0, 0.0, 0.0, 1.0]]
    assert full[:, 3].tolist() == [-T, 0.0, -T, -T, -T, 0.0] and full[5, :3].tolist() == [2.0] * 3


def test_a_deleted_id_in_a_failure_is_named_with_its_step():
    from reference.conformance.dynamic import _dead_note, _Replay

    view = _Replay(2)
    view.dead = {4: 6, 9: 6, 12: 3, 20: 1}
    case = Case("s", "stat", 1.0, 0.0, "<=", False, "target 12 and id 20 and id 7", headline="id 9 then id 4")
    assert _dead_note(view, case) == ("a deleted id came back: id 4 (deleted at step 6), id 9 (deleted at step 6), "
                                      "id 12 (deleted at step 3); ")
    assert _dead_note(view, Case("s", "stat", 1.0, 0.0, "<=", False, "id 7", headline="")) == ""


def _recording_state(seeds):
    def build(points):
        inner = conformance.TREE_BACKEND.dynamic_build(points)

        def sample(queries, n, seed):
            seeds.append(seed)
            return inner.sample(queries, n, seed)

        return SimpleNamespace(move=inner.move, insert=inner.insert, delete=inner.delete, topk=inner.topk,
                               bracket=inner.bracket, sample=sample)
    return build


def test_the_dynamic_check_describes_its_script_and_seeds_each_sampler_step():
    script = conformance.dynamic_script()
    seeds = []
    report = conformance.check_dynamic(_recording_state(seeds), script=script, seed=5, alpha=0.004, dtype="float32")
    assert report.passed
    sampled = [s for s, st in enumerate(script) if st.sample]
    assert sampled == [0, 3, 6, 8]
    assert sorted(set(seeds) - {5 + 1000 * s for s in sampled}) == sorted(5 + 1000 * s + 1 for s in sampled)
    assert report.description == ("11 steps of updates shaped like training; after each, top-k, bracket and (at 4 "
                                  "steps) the sampler against brute force on the current points, float32 declared; "
                                  "false-alarm rate 0.004")
    sampler_cases = [c for c in report.cases if c.scenario.startswith("step 3 sample")]
    assert [c.scenario for c in sampler_cases] == ["step 3 sample format", "step 3 sample"]
    B = script[3].queries.shape[0]
    assert B > 1 and sampler_cases[1].threshold == pytest.approx(0.004 / 4 / B)  # alpha / 4 steps / its queries
    one = conformance.check_dynamic(_recording_state([]), script=script[:1])
    assert one.description.startswith("1 step of updates shaped like training; after each, top-k, bracket and (at 1 "
                                      "step) the sampler")
    none = conformance.check_dynamic(_recording_state([]), script=[dataclasses.replace(script[0], sample=False)])
    assert "(at 0 steps) the sampler" in none.description and none.passed


def test_a_failing_update_stops_the_replay_and_says_which_steps_were_not_replayed():
    script = conformance.dynamic_script()

    def build(points):
        state = _recording_state([])(points)
        state.delete = lambda ids: (_ for _ in ()).throw(RuntimeError("no deletes"))
        return state

    report = conformance.check_dynamic(build, script=script)
    assert [c.scenario for c in report.cases][-2:] == ["step 6 delete", "steps 7-10"]
    failed, skipped = report.cases[-2:]
    assert failed.worst.startswith(f"first wrong at step 6 ({script[6].about}): delete(ids (")
    assert (skipped.skipped, skipped.worst) == (True, "not replayed: the backend went wrong at step 6")
    one_more = conformance.check_dynamic(build, script=script[:8])
    assert [c.scenario for c in one_more.cases][-2:] == ["step 6 delete", "steps 7-7"]
    last = conformance.check_dynamic(build, script=script[:7])
    assert [c.scenario for c in last.cases][-1] == "step 6 delete"  # nothing after the last step


def test_a_state_without_rebuild_is_told_and_one_lacking_updates_is_refused():
    script = conformance.dynamic_script()

    def build(points):
        state = _recording_state([])(points)
        return SimpleNamespace(**{k: v for k, v in vars(state).items() if k != "move"})

    report = conformance.check_dynamic(build, script=script)
    assert report.cases[0].worst == ("first wrong at step 0 (" + script[0].about + "): the state dynamic_build "
                                     "returned (SimpleNamespace) lacks move")
    bare = conformance.check_dynamic(lambda points: {"move": len, "insert": 1}, script=script)
    assert bare.cases[0].worst.endswith("the state dynamic_build returned (dict) lacks insert, delete")
    only = conformance.check_dynamic(lambda points: {"move": len, "insert": len, "delete": len}, script=script)
    assert only.cases[0].worst.endswith("lacks every one of topk, bracket, sample")
    report = conformance.check_dynamic(_recording_state([]), script=script)
    assert any(c.scenario.startswith("step 8 ") for c in report.cases)
    step8 = [c for c in report.cases if c.scenario == "step 8 topk"]
    assert step8 and step8[0].passed


# --- 3i. encoder: every malformed output is named, the tolerances and the floor ---------------


def _encoder_returning(change):
    ref = conformance.REFERENCE_BACKEND.encoder

    def encoder(params, config, X, pos, Y, neg=None, log_q=None):
        return change(*ref(params, config, X, pos, Y, neg=neg, log_q=log_q))
    return encoder


def _first_case(encoder, which=0):
    sc = [conformance.encoder_scenarios()[which]]
    (case,) = conformance.check_encoder(encoder, scenarios=sc).cases
    return case


@pytest.mark.parametrize("change, msg", [
    (lambda loss, g: 3, 'expected (loss, grads) or {"loss": ..., "grads": ...}, got int'),
    (lambda loss, g: (loss, g, 1), 'expected (loss, grads) or {"loss": ..., "grads": ...}, got tuple'),
    (lambda loss, g: {"loss": loss}, 'expected (loss, grads) or {"loss": ..., "grads": ...}, got dict'),
    (lambda loss, g: (loss, list(g.values())), "grads: expected a dict name -> array, got list"),
    (lambda loss, g: (math.inf, g), "loss: expected a finite value, got inf"),
    (lambda loss, g: (loss, {**g, "extra": np.zeros(1)}), "grads: missing [], unexpected ['extra'] (names as in "
                                                          "reference.encoder.param_shapes)"),
    (lambda loss, g: (loss, {k: v for k, v in g.items() if k != "query.b0"}),
     "grads: missing ['query.b0'], unexpected [] (names as in reference.encoder.param_shapes)"),
    (lambda loss, g: (loss, {**g, "query.b0": g["query.b0"][None]}), None),
    (lambda loss, g: (loss, {**g, "query.b0": g["query.b0"] * np.nan}), None),
])
def test_a_malformed_encoder_output_is_a_backend_error_that_says_what_is_wrong(change, msg):
    case = _first_case(_encoder_returning(change))
    assert (case.passed, case.kind) == (False, "backend error")
    if msg is not None:
        assert case.worst == msg
    elif "nan" in repr(change.__code__.co_consts) or case.worst.endswith("non-finite entries"):
        assert re.fullmatch(r"grads\['query\.b0'\]: \d+ non-finite entries", case.worst), case.worst
    else:
        assert re.fullmatch(r"grads\['query\.b0'\]: expected shape \(\d+,\), got \(1, \d+\)", case.worst), case.worst


def test_the_dict_form_is_accepted_and_errors_are_relative_to_the_largest_entry():
    case = _first_case(_encoder_returning(lambda loss, g: {"loss": loss, "grads": g}))
    assert case.passed and case.value == 0.0
    assert conformance.ENCODER_RTOL == {"float64": 1e-9, "float32": 1e-4}

    def nudge(loss, g):
        g = dict(g)
        g["query.W0"] = g["query.W0"] + 1e-6 * np.abs(g["query.W0"]).max()
        return loss, g

    case = _first_case(_encoder_returning(nudge))
    assert not case.passed and case.value == pytest.approx(1e-6, rel=1e-6)
    assert case.worst.startswith("grads['query.W0'] at index (0, 0): backend ") and case.worst.endswith(
        "; wrong: query.W0")
    assert case.headline == f"relative error {case.value:.3g} > 1e-09: {case.worst}"
    sc = conformance.encoder_scenarios()[0]
    ref_loss, _ = conformance.REFERENCE_BACKEND.encoder(sc.params, dataclasses.asdict(sc.config), sc.X, sc.pos, sc.Y)
    case = _first_case(_encoder_returning(lambda loss, g: (loss * (1 + 2e-9), g)))
    assert not case.passed and case.worst == f"loss {ref_loss * (1 + 2e-9)!r} vs oracle {ref_loss!r}; wrong: loss"


def test_errors_are_relative_to_max_1_loss_and_to_the_gradient_floor():
    """A tensor of zeros is judged against GRADIENT_FLOOR times the largest gradient entry of all tensors."""
    from reference.conformance.encoder import _compare_encoder

    assert conformance.GRADIENT_FLOOR == 1e-2
    sc = conformance.encoder_scenarios()[0]  # float64
    ref = {"a": np.array([1.0, -4.0]), "b": np.zeros(3)}
    got = {"a": ref["a"].copy(), "b": np.array([0.0, 4e-5, 0.0])}
    value, where = _compare_encoder(sc, (2.0, got), 2.0, ref)
    assert value == pytest.approx(4e-5 / (1e-2 * 4.0), rel=1e-12)
    assert where == ("grads['b'] at index (1,): backend 4e-05, oracle 0 (largest |oracle| in the tensor 0); wrong: b")
    got = {"a": np.array([1.0, -4.0 + 4e-12]), "b": np.zeros(3)}
    value, where = _compare_encoder(sc, (0.5 + 1e-8, got), 0.5, ref)  # loss: relative to max(1, |loss|)
    assert value == pytest.approx(1e-8, rel=1e-6) and where == f"loss {0.5 + 1e-8!r} vs oracle 0.5; wrong: loss"
    value, where = _compare_encoder(sc, (4.0 + 4e-8, got), 4.0, ref)
    assert value == pytest.approx(1e-8, rel=1e-6) and where.endswith("; wrong: loss")
    value, where = _compare_encoder(sc, (4.0, got), 4.0, ref)
    assert value == pytest.approx(1e-12, rel=1e-3) and "wrong" not in where and where.startswith("grads['a'] at index (1,)")
    value, where = _compare_encoder(sc, "a structural error", 4.0, ref)
    assert value != value and where == "a structural error"


def test_declining_a_sampled_scenario_is_a_skip_and_a_full_one_a_failure():
    def full_only(params, config, X, pos, Y, neg=None, log_q=None):
        if neg is not None:
            raise NotImplementedError("full softmax only")
        return conformance.REFERENCE_BACKEND.encoder(params, config, X, pos, Y)

    case = _first_case(full_only, 3)  # relu-sampled-logq
    assert (case.skipped, case.passed, case.value != case.value) == (True, True, True)
    assert case.worst == "skipped: the backend raised NotImplementedError (full softmax only)"

    def never(params, config, X, pos, Y, neg=None, log_q=None):
        raise NotImplementedError("nothing")

    case = _first_case(never, 0)
    assert not case.passed and case.worst.startswith("encoder(params={...}, config={...}, X (")


# --- 3j. bracket: each violation, its boundary, the declared allowance, malformed output -------

_TWO = [conformance.BracketScenario("one", np.array([[1.0], [1.0]]), np.array([[2.0], [-3.0]]), 1.0, "two points")]
_LOG_Z = np.array([2.0 + math.log(2.0), -3.0 + math.log(2.0)])  # exact to an ulp: two equal logits


def _bracket_case(lo, hi, dtype="float64"):
    (case,) = conformance.check_bracket(lambda points, queries, tol: (lo, hi), scenarios=_TWO, dtype=dtype).cases
    return case


def test_each_bracket_violation_is_named_relative_to_max_1_log_z():
    assert conformance.BRACKET_RTOL == 1e-9
    case = _bracket_case(_LOG_Z + [3e-9, 0.0], _LOG_Z + 1.0)
    assert not case.passed and case.value == pytest.approx((3e-9 - 1.78e-15) / _LOG_Z[0], rel=1e-3)
    assert case.worst == ("query 0: lo = 2.69314718356, log Z = 2.69314718056, hi = 3.69314718056 (hi - lo = 1; "
                          "float64 rounding allowance 1.78e-15): lower bound above log Z")
    assert case.headline == "lower bound above log Z (query 0: lo = 2.69315, log Z = 2.69315, hi = 3.69315)"
    case = _bracket_case(_LOG_Z - 1.0, _LOG_Z - [3e-9, 0.0])
    assert not case.passed and case.worst.endswith("(hi - lo = 1; float64 rounding allowance 1.78e-15): upper bound "
                                                   "below log Z")
    case = _bracket_case(_LOG_Z - 0.6, _LOG_Z + 0.5)
    assert not case.passed and case.value == pytest.approx(0.1 / 2.30685281944, rel=1e-9)  # |log Z| > 1: relative
    assert case.worst == ("query 1: lo = -2.90685281944, log Z = -2.30685281944, hi = -1.80685281944 (hi - lo = 1.1; "
                          "float64 rounding allowance 2.66e-15): wider than tol = 1")
    case = _bracket_case(_LOG_Z - [0.0, 0.5], _LOG_Z + [0.0, 0.5 + 0.5e-9])  # 0.5e-9 wider: within 1e-9 of 1
    assert case.passed and case.worst.endswith("float64 rounding allowance 2.66e-15)")
    small = [conformance.BracketScenario("s", np.array([[0.5], [0.5]]), np.array([[0.1]]), 1.0, "log Z < 1")]
    lz = 0.05 + math.log(2.0)
    (case,) = conformance.check_bracket(lambda p, q, t: ([lz + 2e-9], [lz + 0.5]), scenarios=small).cases
    assert not case.passed and case.value == pytest.approx(2e-9, rel=1e-3)  # divided by 1, not by |log Z| = 0.74


def test_the_declared_precision_widens_containment_but_never_the_tol():
    case = _bracket_case(_LOG_Z + [3e-9, 0.0], _LOG_Z + 1.0, "float32")
    assert case.passed and case.worst.endswith("(hi - lo = 1; float32 rounding allowance 1.07e-06)")
    case = _bracket_case(_LOG_Z + [2e-6, 0.0], _LOG_Z + 1.0, "float32")
    assert not case.passed and case.worst.endswith("float32 rounding allowance 7.15e-07): lower bound above log Z")
    case = _bracket_case(_LOG_Z - 0.6, _LOG_Z + 0.5, "float32")
    assert not case.passed and case.worst.endswith("): wider than tol = 1")


@pytest.mark.parametrize("out, msg", [
    ((1.0, 2.0, 3.0), "expected (lo, hi), got tuple of length 3"),
    ([1.0], "expected (lo, hi), got list of length 1"),
    (np.zeros((2, 2)), "expected (lo, hi), got ndarray"),
    ((np.zeros(1), np.zeros(2)), "expected lo and hi of shape (2,), got (1,) and (2,)"),
    ((np.zeros(2), np.zeros((2, 1))), "expected lo and hi of shape (2,), got (2,) and (2, 1)"),
    ((np.array([np.nan, 0.0]), np.array([np.inf, -np.inf])), "lo/hi: 3 non-finite values"),
])
def test_a_malformed_bracket_is_a_backend_error(out, msg):
    (case,) = conformance.check_bracket(lambda points, queries, tol: out, scenarios=_TWO).cases
    assert (case.passed, case.kind, case.worst) == (False, "backend error", msg)
    assert case.threshold == 1e-9


def test_the_bracket_description_names_the_tolerance_and_the_declared_precision():
    report = conformance.check_bracket(lambda p, q, t: (_LOG_Z, _LOG_Z), scenarios=_TWO, dtype="float32")
    assert report.description == ("lo <= log Z <= hi and hi - lo <= tol for every query (P2, P7), to 1e-09 relative; "
                                  "containment up to the float32 rounding bound of the logits")
    assert report.cases[0].note == "two points" and report.cases[0].statistic == "largest violation / max(1, |log Z|)"


# --- 3k. statistics, precision, _data: arguments named, defaults, the helpers' promises ---------


@pytest.mark.parametrize("call, name", [
    (lambda s: s.detectable_tv([0.5, 0.5], 0, 1e-3), "n"),
    (lambda s: s.detectable_tv([0.5, 0.5], 10, 0.0), "alpha"),
    (lambda s: s.detectable_tv([0.5, 0.5], 10, 1e-3, power=-1.0), "power"),
    (lambda s: s.detectable_tv([0.5, 0.5], 10, 1e-3, power=1.0), "power"),
    (lambda s: s.detectable_tv([[0.5, 0.5]], 10, 1e-3), "probabilities"),
    (lambda s: s.power_against([0.5, 0.5], [0.5, 0.5], 0, 1e-3), "n"),
    (lambda s: s.power_against([0.5, 0.5], [0.5, 0.5], 10, -1.0), "alpha"),
    (lambda s: s.power_against([0.5, 0.5], [[0.5, 0.5]], 10, 1e-3), "alternative"),
    (lambda s: s.power_against([[0.5, 0.5]], [0.5, 0.5], 10, 1e-3), "probabilities"),
    (lambda s: s.sample_size_for_tv([0.5, 0.5], 0.0, 1e-3), "tv"),
    (lambda s: s.sample_size_for_tv([0.5, 0.5], 1.0, 1e-3), "tv"),
    (lambda s: s.sample_size_for_tv(np.ones((1, 1, 2)), 0.1, 1e-3), "probabilities"),
])
def test_the_statistics_name_the_argument_they_refuse(call, name):
    from reference.conformance import statistics

    with pytest.raises(ValueError, match="^" + re.escape(name) + r"\b"):
        call(statistics)


def test_the_statistics_defaults_are_the_documented_ones():
    from reference.conformance import statistics

    assert (statistics.DEFAULT_ALPHA, statistics.DEFAULT_TV, statistics.DEFAULT_POWER) == (1e-6, 0.05, 0.9)
    p = np.full(10, 0.1)
    for fn, args in [(statistics.detectable_tv, (p, 2000, 1e-4)), (statistics.sample_size_for_tv, (p, 0.1, 1e-4))]:
        params = inspect.signature(fn).parameters
        assert params["power"].default == 0.9 and params["min_expected"].default == 20.0
        assert fn(*args) == fn(*args, power=0.9, min_expected=20.0)
        assert fn(*args) != fn(*args, power=0.5)
    assert inspect.signature(statistics.sample_size_for_tv).parameters["max_n"].default == 2_000_000
    n = statistics.sample_size_for_tv(p, 0.1, 1e-4)
    assert statistics.detectable_tv(p, n, 1e-4) <= 0.1 < statistics.detectable_tv(p, n - max(1, n // 20), 1e-4)
    assert statistics.detectable_tv([1.0, 0.0], 100, 1e-3) == math.inf  # one group: nothing to test
    assert statistics.power_against(p, p, n, 1e-4) < 1e-4
    assert statistics.power_against(p, np.r_[0.2, np.full(9, 0.8 / 9)], n, 1e-4) > 0.9


def test_declared_dtype_reads_an_attribute_or_a_key_and_names_a_bad_one():
    from reference.conformance.precision import check_dtype, declared_dtype

    assert declared_dtype(SimpleNamespace()) == declared_dtype({}) == "float64"
    assert declared_dtype(SimpleNamespace(dtype=np.float32)) == declared_dtype({"dtype": "float32"}) == "float32"
    assert declared_dtype({"dtype": None}) == "float64"
    with pytest.raises(ValueError, match=r"^backend dtype: expected one of float64, float32, got 'float16'$"):
        declared_dtype({"dtype": "float16"})
    with pytest.raises(ValueError, match=r"^dtype: expected one of float64, float32, got None$"):
        check_dtype(None)
    with pytest.raises(ValueError, match=r"^x: expected one of float64, float32, got 'no such type'$"):
        check_dtype("no such type", "x")
    assert check_dtype(np.dtype("f8")) == "float64"


def test_the_scenario_helpers_do_what_they_say():
    from reference.conformance import _data

    rng = np.random.default_rng(0)
    Z = _data.clustered(rng, 50, 3, 4, 0.0)
    assert Z.shape == (50, 3) and 1 <= np.unique(Z, axis=0).shape[0] <= 4  # spread 0: the centres only
    Q = _data.directions(rng, 4, 3, [1.0, 2.0, 3.0, 4.0])
    assert np.allclose(np.linalg.norm(Q, axis=1), [1, 2, 3, 4], rtol=1e-14)
    u = np.arange(10.0)[:, None] * np.ones((1, 2))
    D = _data.with_duplicates(rng, u, 3)
    rows, counts = np.unique(D, axis=0, return_counts=True)
    assert rows.shape[0] == 10 and counts.min() >= 1 and counts.max() == 3 and (counts[:3] == 3).all()
    base = np.array([[3.0, 4.0], [0.0, 1.0]])
    N = _data.near_duplicates(np.random.default_rng(1), base, 4, 1e-3)
    assert N.shape == (8, 2)
    for row in base:
        near = N[np.linalg.norm(N - row, axis=1) < 0.1]
        assert near.shape[0] == 4
        dev = np.abs(near - row).max() / np.linalg.norm(row)
        assert 1e-5 < dev < 5e-3  # rel / sqrt(d) per coordinate, in units of the row's norm
    P = np.array([[1.0, 2.0], [1.0, 2.0], [0.5, 0.5]])
    a = _data.logits(P, np.array([[0.1, 0.7]]))
    assert a[0, 0] == a[0, 1] and a.shape == (1, 3)
    uniq, inv = _data.distinct_rows(P)
    assert uniq.shape == (2, 2) and inv.tolist() == [1, 1, 0]


# --- 3l. nystrom: the statistic, the landmark note, malformed output, the kernel specs ---------


def _nystrom_returning(change, which=0):
    sc = [conformance.nystrom_scenarios()[which]]
    ref = conformance.REFERENCE_BACKEND.nystrom

    def nystrom(G0, landmarks, G_L, kernel):
        return change(ref(G0, landmarks, G_L, kernel), landmarks)
    (case,) = conformance.check_nystrom(nystrom, scenarios=sc).cases
    return case, sc[0]


def test_a_wrong_entry_is_located_and_a_landmark_is_called_one():
    assert conformance.NYSTROM_RTOL == 1e-8

    def bump(at_landmark):
        def change(G, L):
            G = G.copy()
            y = int(L[0]) if at_landmark else int(np.setdiff1d(np.arange(G.shape[0]), L)[0])
            G[y, 2] += 1e-7 * np.abs(G).max()
            return G
        return change

    case, sc = _nystrom_returning(bump(True))
    y = int(sc.landmarks[0])
    assert not case.passed and case.value == pytest.approx(1e-7, rel=1e-6)
    assert case.worst.startswith(f"target {y} (a landmark: P10 says Ghat = G_L there), column 2: backend ")
    assert case.headline == f"Ghat off by {case.value:.3g} relative (> 1e-08) at {case.worst}"
    case, sc = _nystrom_returning(bump(False))
    assert not case.passed and "landmark" not in case.worst and re.match(r"target \d+, column 2: backend ", case.worst)
    case, _ = _nystrom_returning(lambda G, L: G + 5e-9 * np.abs(G).max())  # within 1e-8
    assert case.passed


@pytest.mark.parametrize("change, msg", [
    (lambda G, L: G[:-1], "expected Ghat of shape (150, 5), got (149, 5)"),
    (lambda G, L: G.T, "expected Ghat of shape (150, 5), got (5, 150)"),
    (lambda G, L: np.where(np.arange(G.shape[0])[:, None] < 2, np.nan, G), "Ghat: 10 non-finite entries"),
])
def test_a_malformed_nystrom_output_is_a_backend_error(change, msg):
    case, _ = _nystrom_returning(change)
    assert (case.passed, case.kind, case.worst, case.threshold) == (False, "backend error", msg, 1e-8)


def test_the_kernel_specs_build_the_reference_kernels_and_name_a_bad_one():
    from reference.conformance.nystrom import kernel_object

    for sc in conformance.nystrom_scenarios():
        assert type(kernel_object(sc.kernel)).__name__.lower().startswith(sc.kernel["name"][:3])
    with pytest.raises(ValueError, match=r"^kernel\['name'\]"):
        kernel_object({"name": "cosine"})
    report = conformance.check_nystrom(lambda G0, landmarks, G_L, kernel: kernel, scenarios=[])
    assert report.description == ("Ghat = G_L^T K_LL^-1 k(y) for every target (proofs/README.md section 5), to 1e-08 "
                                  "relative")


# --- 3m. every check waits at most its time limit; the dynamic reference states honour tol ------


@pytest.mark.parametrize("check, args", [
    ("check_sampler", 4), ("check_encoder", 7), ("check_bracket", 3), ("check_topk", 3), ("check_nystrom", 4),
    ("check_dynamic", 1),
])
def test_every_check_hands_its_time_limit_to_the_calls(check, args):
    release = threading.Event()

    def hang(*a, **k):
        release.wait(5)

    try:
        report = getattr(conformance, check)(hang, time_limit=0.02)
        first = next(c for c in report.cases if not c.passed)
        assert "did not return within the time limit of 0.02 s (the call was still running" in first.worst
    finally:
        release.set()


@pytest.mark.parametrize("backend", ["TREE_BACKEND", "REBUILD_BACKEND"])
def test_the_dynamic_reference_states_bracket_to_the_tol_asked(backend):
    rng = np.random.default_rng(0)
    P, Q = rng.standard_normal((300, 4)), rng.standard_normal((5, 4))
    state = getattr(conformance, backend).dynamic_build(P)
    widths = {tol: float(np.max(np.subtract(*state.bracket(Q, tol)[::-1]))) for tol in (10.0, 1.0, 0.01)}
    assert widths[10.0] <= 10.0 and widths[1.0] <= 1.0 and widths[0.01] <= 0.01
    assert widths[10.0] > 1.0 and widths[1.0] > 0.01  # a loose tol is not refined to a tight one


@pytest.mark.parametrize("as_object", [False, True])
@pytest.mark.parametrize("declared", [None, "float32", "float64"])
def test_from_static_takes_the_dtype_of_a_mapping_or_an_object_declared_or_not(as_object, declared):
    """A backend is a mapping or an object, with or without a declared ``dtype``: from_static keeps the
    declared precision and falls back to float64 for both forms (an object without the attribute
    included), and its states answer through the backend's own method."""
    from reference.conformance.dynamic_backends import from_static

    def topk(points, queries, k):
        return np.argsort(-(queries @ points.T), axis=1, kind="stable")[:, :k]

    if as_object:
        backend = type("Backend", (), {"topk": staticmethod(topk)})()
        if declared is not None:
            backend.dtype = declared
    else:
        backend = {"topk": topk} if declared is None else {"topk": topk, "dtype": declared}
    rebuilt = from_static(backend)
    assert rebuilt.dtype == (declared or "float64")
    state = rebuilt.dynamic_build(np.eye(3))
    np.testing.assert_array_equal(state.topk(np.array([[0.0, 2.0, 1.0]]), 2), [[1, 2]])
