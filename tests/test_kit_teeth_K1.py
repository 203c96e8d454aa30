"""Teeth for three modules of the conformance kit: precision, report and _calls.

A mutation run of the kit (tests/mutation/survivors.md lists the survivors and their
verdicts) found behaviour of these modules that no test pinned. Each test below pins one
kind of behaviour as a whole, at its boundaries, rather than one assertion per mutant:

1. precision.gamma and precision.logit_error_factor: the domain n u < 1 at its edge (n u
   exactly 1 is refused with the documented message, just below it is accepted).
2. precision.normal_range_problem: every branch at its boundary and every message word for
   word. Inputs with no nonzero entry (all zero, or no rows) have no problem; an entry or a
   product exactly equal to the smallest normal number is not an underflow and one below it
   is; d max|q_i| max|z_i| exactly half the largest number is not an overflow and the next
   float up is. The data are powers of two, so each boundary is hit exactly.
3. precision.exact_logits: the documented condition, sum_i |q_i z_i| 2^(a+b) < 2^t, at its
   edge (2^t - 1 exact, 2^t not) in both precisions and with a + b > 0, a query or a row
   with no dyadic exponent <= 64 (never exact), and no floating-point exception escapes for
   products that overflow or are inf * 0 (the function promises a boolean per row, not a
   warning).
4. report: the number format of a case (whole numbers below 1e15 as integers, the rest to 4
   significant digits), every field of error_case, and the skip line of a formatted run
   (equal reasons said once, distinct reasons joined by "; ").
5. _calls: a call that exceeds the time limit is left running in a daemon thread, so it
   cannot keep the process alive (the module docstring says so): checked on the thread and
   on a subprocess that must exit while its backend call still blocks.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from reference.conformance import _calls, precision
from reference.conformance.report import Case, CheckReport, ConformanceReport, error_case

REPO = Path(__file__).resolve().parents[1]
TINY = {dt: float(np.finfo(dt).tiny) for dt in ("float32", "float64")}
BIG = {dt: float(np.finfo(dt).max) for dt in ("float32", "float64")}


# --- 1. gamma's domain ---------------------------------------------------------------------------


def test_gamma_accepts_n_u_below_one_and_refuses_it_at_one_and_above():
    """Break tried: `n * u < 1` -> `n * u < 2` returns 1 / 0 or a negative gamma instead of the message."""
    u = 2.0**-24
    assert precision.gamma(0, u) == 0.0
    assert precision.gamma(2**23, u) == 1.0  # n u = 1/2: (1/2) / (1/2), exact
    assert precision.gamma(2**24 - 1, u) == 2.0**24 - 1  # n u = 1 - u, the largest accepted
    for n, text in ((2**24, "16777216, u = 5.96046e-08"), (3 * 2**23, "25165824, u = 5.96046e-08")):
        with pytest.raises(ValueError, match=rf"^n: expected n \* u < 1, got n = {text}$"):
            precision.gamma(n, u)
    # the kit's tolerance for d dimensions uses gamma_{d+2}(u_p): float32 allows d up to 2^24 - 3
    assert precision.logit_error_factor("float32", 2**24 - 3) > 2.0**24
    with pytest.raises(ValueError, match=r"^n: expected n \* u < 1, got n = 16777216, u = 5\.96046e-08$"):
        precision.logit_error_factor("float32", 2**24 - 2)


# --- 2. normal_range_problem: every branch at its boundary, every message ------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_inputs_with_no_nonzero_entry_have_no_range_problem(dtype):
    """Breaks tried: `nz.min() if nz.size or True` and `a.max() if a.size or True` raise NumPy's
    zero-size error; an empty max of 1.0 instead of 0.0 reports an overflow for an empty point set."""
    huge = np.full((2, 4), BIG[dtype] / 4)  # d max|q| max|z| would be d BIG / 4 > BIG / 2 with any |z| >= 1/2
    normal = np.ones((3, 4))
    assert precision.normal_range_problem(np.zeros((3, 4)), normal, dtype) is None
    assert precision.normal_range_problem(normal, np.zeros((2, 4)), dtype) is None
    assert precision.normal_range_problem(np.zeros((0, 4)), huge, dtype) is None  # no target: no logit at all
    assert precision.normal_range_problem(normal, np.zeros((0, 4)), dtype) is None  # no query either
    assert precision.normal_range_problem(np.zeros((0, 4)), np.zeros((0, 4)), dtype) is None


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_underflow_is_flagged_exactly_below_the_smallest_normal_number(dtype):
    """An entry, or the product of the smallest entries, equal to the smallest normal number is
    fine; half of it is an underflow, with the documented message and its numbers.
    Breaks tried: `<` -> `<=` in either comparison flags the exact boundary; printing q_min / z_min
    as the product changes the message."""
    tiny = TINY[dtype]
    one = np.array([[1.0, 0.0]])
    assert precision.normal_range_problem(one, np.array([[tiny, 1.0]]), dtype) is None  # entry = tiny
    assert precision.normal_range_problem(np.array([[2 * tiny, 3.0]]), np.array([[0.5, 1.0]]), dtype) is None
    expected = (f"nonzero entries as small as {tiny:.3g} (products {tiny / 2:.3g}) underflow in {dtype} "
                f"(smallest normal {tiny:.3g})")
    assert precision.normal_range_problem(np.array([[tiny, 3.0]]), np.array([[0.5, 1.0]]), dtype) == expected
    expected = (f"nonzero entries as small as {tiny / 2:.3g} (products {tiny / 2:.3g}) underflow in {dtype} "
                f"(smallest normal {tiny:.3g})")
    assert precision.normal_range_problem(np.array([[tiny / 2]]), np.array([[1.0]]), dtype) == expected
    # no nonzero query entry: the product is inf and only the targets' entries count
    expected = (f"nonzero entries as small as {tiny / 2:.3g} (products inf) underflow in {dtype} "
                f"(smallest normal {tiny:.3g})")
    assert precision.normal_range_problem(np.array([[tiny / 2]]), np.zeros((1, 1)), dtype) == expected


def test_the_underflow_message_names_the_smallest_entry_and_product():
    """Written out once in full, so that the format itself (not only the numbers) is pinned."""
    assert precision.normal_range_problem(np.array([[1e-30, 1.0]]), np.array([[1e-20, -2.0]]), "float32") == (
        "nonzero entries as small as 1e-30 (products 1e-50) underflow in float32 (smallest normal 1.18e-38)")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_overflow_is_flagged_exactly_above_half_the_largest_number(dtype):
    """d = 4, max|q_i| = 2, max|z_i| = BIG / 16: d max|q| max|z| = BIG / 2 exactly (powers of two)
    is fine; the next float64 up is an overflow, with the documented message.
    Breaks tried: `d * q_max / z_max` and `d / q_max * z_max` in the test miss the overflow; `big / 3`
    flags the boundary; `/` for `*` in the printed logit and `big * 2` change the message."""
    big = BIG[dtype]
    q = np.array([[2.0, -2.0, 0.0, 1.0]])
    at = np.array([[big / 16, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    assert 4 * 2.0 * (big / 16) == big / 2
    assert precision.normal_range_problem(at, q, dtype) is None
    above = at.copy()
    above[0, 0] = -np.nextafter(big / 16, np.inf)  # the sign does not matter: |z_i| counts
    expected = (f"logits up to {4 * 2.0 * np.nextafter(big / 16, np.inf):.3g} may overflow in {dtype} "
                f"(half its largest number: {big / 2:.3g})")
    assert precision.normal_range_problem(above, q, dtype) == expected
    if dtype == "float32":
        assert expected == "logits up to 1.7e+38 may overflow in float32 (half its largest number: 1.7e+38)"


# --- 3. exact_logits: the documented condition at its edge ---------------------------------------


@pytest.mark.parametrize("dtype, t", [("float32", 24), ("float64", 53)])
def test_exact_logits_holds_up_to_two_to_the_t_minus_one_and_not_at_two_to_the_t(dtype, t):
    """q * 2^2 and z * 2^3 are integer vectors (a + b = 5 > 0): sum |q_i z_i| 2^5 = 2^t - 1 is exact,
    2^t is not (the documented sufficient condition is strict). Rows without a dyadic exponent
    <= 64, or with a non-finite entry, are never exact.
    Breaks tried: t = nmant - 1 and t = nmant + 2 move the edge; 3.0 ** (a + b) for 2.0 ** (a + b)
    makes the first row inexact; range(64) for range(65) in _dyadic_exponent refuses a = b = 64."""
    q = np.array([0.25, -0.25])  # a = 2
    m = 2.0**t - 1  # odd, exact in dtype's own precision and in float64
    rows = np.array([
        [m / 8, 0.0],  # b = 3: 2^5 (m / 32) = 2^t - 1
        [-m / 8, 1 / 8],  # b = 3: 2^5 (m + 1) / 32 = 2^t
        [(m - 2) / 8, -1 / 8],  # b = 3: 2^t - 2
        [2.0**-62, 0.0],  # b = 62: |q_1 z_1| = 2^-64, times 2^(2 + 62) = 1
        [2.0**-65, 0.0],  # no exponent <= 64
        [np.inf, 0.0],
        [np.nan, 1.0],
    ])
    assert precision.exact_logits(q, rows, dtype).tolist() == [True, False, True, True, False, False, False]
    assert precision.exact_logits(np.array([2.0**-64]), np.array([[2.0**-64], [2.0**-65]]), dtype).tolist() == [
        True, False]  # a = b = 64 is the largest exponent the condition allows


def test_a_query_with_no_dyadic_exponent_makes_no_logit_exact():
    """Break tried: returning np.zeros(dtype=bool) without the number of rows raises TypeError."""
    points = np.array([[1.0, 2.0], [0.0, 0.0], [0.5, 0.25]])
    for q in (np.array([2.0**-65, 1.0]), np.array([np.nan, 1.0]), np.array([np.inf, 0.0])):
        out = precision.exact_logits(q, points, "float64")
        assert out.dtype == bool and out.tolist() == [False, False, False]
    assert precision.exact_logits(np.zeros(2), points, "float32").tolist() == [True, True, True]


def test_exact_logits_raises_no_floating_point_exception_for_overflowing_or_inf_times_zero_products():
    """Row 0's integer products overflow (1e200 * 1e200), row 2 has inf against a zero query
    entry (inf * 0 in the product): neither is exact and neither may raise. Run under
    errstate(over="raise", invalid="raise"), so a flag the function does not silence is a
    FloatingPointError (it would otherwise be a RuntimeWarning; the matmul sets these flags on
    this machine's BLAS with NumPy 1.25.2 and 2.4.6).
    Breaks tried: errstate(over=None, ...) and errstate without invalid= raise here."""
    q = np.array([1e200, 0.0])
    points = np.array([[1e200, 1.0], [np.inf, 1.0], [1.0, np.inf], [3.0, 0.0]])
    with np.errstate(over="raise", invalid="raise"):
        out = precision.exact_logits(q, points, "float64")
    assert out.tolist() == [False, False, False, False]  # row 3: 3e200 is an integer far above 2^53


# --- 4. report: number format, error cases, the skip line ----------------------------------------


@pytest.mark.parametrize("value, shown", [
    (20000, "20000"), (np.int64(123456), "123456"), (20000.0, "20000"), (-7.0, "-7"), (0.0, "0"),
    (999999999999999.0, "999999999999999"), (1e15, "1e+15"), (2.5, "2.5"), (0.000123456, "0.0001235"),
    (123456.7, "1.235e+05"), (math.inf, "inf"),
])
def test_a_case_shows_whole_numbers_below_1e15_as_integers_and_the_rest_to_4_digits(value, shown):
    """Value and threshold go through the same format. Breaks tried: `or` -> `and` between the
    integer and the whole-float clauses prints 20000 as 2e+04; `< 1e15` -> `<= 1e15` prints 1e15
    as 1000000000000000."""
    case = Case("s", "stat", value, value, "<=", True, "")
    assert case.format() == f"  PASS  s: stat = {shown} (pass if <= {shown})"


def test_error_case_keeps_every_field_it_is_given():
    """The headline is the message (the report's first line names it), the relation and the
    threshold are the check's, the value is NaN. Breaks tried: relation=None and headline=None."""
    case = error_case("sc", "number of queries with a wrong answer", 0.25, ">=", "topk() raised X")
    assert (case.scenario, case.statistic, case.threshold, case.relation) == (
        "sc", "number of queries with a wrong answer", 0.25, ">=")
    assert math.isnan(case.value) and case.passed is False and case.skipped is False
    assert (case.worst, case.headline, case.kind, case.note) == (
        "topk() raised X", "topk() raised X", "backend error", "")
    assert case.format() == "  FAIL  sc: topk() raised X"


def test_the_skip_line_names_every_skipped_check_and_each_distinct_reason_once():
    """Break tried: joining the reasons with another separator changes the line."""
    ran = CheckReport("sampler", "ids ~ softmax", [Case("s", "p", 0.5, 0.01, ">=", True, "query 0")])
    skipped = [CheckReport("encoder", "", skipped="not provided by the backend"),
               CheckReport("nystrom", "", skipped="not provided by the backend"),
               CheckReport("topk", "", skipped="not run on the given data")]
    report = ConformanceReport("B", [ran, *skipped], alpha=1e-6)
    assert report.format() == "\n".join([
        "PASS: all 1 checks passed (sampler)",
        "",
        "Conformance of B against the reference (proofs/README.md section 9)",
        "Declared precision of the backend's logits: float64.",
        "False-alarm rate of this run: 1e-06 (the sampler G-tests); every other check is deterministic.",
        "",
        "PASS  sampler: ids ~ softmax",
        "  PASS  s: p = 0.5 (pass if >= 0.01)",
        "        worst: query 0",
        "",
        "SKIP  encoder, nystrom, topk: not provided by the backend; not run on the given data",
        "",
        "RESULT: PASS: all 1 checks passed (sampler)",
    ])
    one_reason = ConformanceReport("B", [ran, *skipped[:2]], alpha=1e-6).format().splitlines()
    assert "SKIP  encoder, nystrom: not provided by the backend" in one_reason


# --- 5. _calls: a call past its time limit cannot keep the process alive -------------------------


def test_a_call_past_its_time_limit_is_left_in_a_daemon_thread():
    """The module docstring: the call "is left running in the background (a daemon thread: it
    dies with the process)". Checked on the thread, and on a subprocess whose backend blocks
    for ever: it must exit by itself (the timeout only guards against a hang and is no speed
    check). Breaks tried: daemon=False and no daemon argument (a thread started from the main
    thread is not a daemon) fail both parts."""
    started, release, workers = threading.Event(), threading.Event(), []

    def blocks():
        workers.append(threading.current_thread())
        started.set()
        release.wait(60)

    try:
        _, finding = _calls.call_backend(blocks, "bracket", [], time_limit=0.01)
        assert finding.startswith("bracket() did not return within the time limit of 0.01 s")
        assert started.wait(60)  # the worker may start after the limit on a loaded machine
        (worker,) = workers
        assert worker.is_alive() and worker.daemon and worker.name == "conformance bracket"
    finally:
        release.set()
    script = ("import threading\n"
              "from reference.conformance._calls import call_backend\n"
              "never = threading.Event()\n"
              "print(call_backend(lambda: never.wait(), 'topk', [], time_limit=0.01)[1])\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("topk() did not return within the time limit of 0.01 s (the call was still running")


def test_exact_logits_of_huge_finite_entries_warns_nothing():
    """Entries near the top of float64 are whole numbers already (k = 0); scaling a row further
    (for its other entries) overflows them, which must neither warn (RuntimeWarning is an error
    here) nor change the verdict."""
    big = np.array([[1.7e308, 0.5], [1.7e308, 2.0**-60], [2.0**1000, -3.0]])
    q = np.array([0.0, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = precision.exact_logits(q, big, "float64")
    # Row 0: b = 1 (0.5), a = 0: sum |q_i z_i| 2^(a+b) = 0.5 * 2 = 1 < 2^53: exact. Row 1: b = 60,
    # 2^-60 * 2^60 = 1: exact. Row 2: b = 0, 3 < 2^53: exact. The huge entries meet a zero query
    # coordinate.
    assert got.tolist() == [True, True, True]
    got = precision.exact_logits(np.array([1.0, 1.0]), big, "float64")
    assert got.tolist() == [False, False, False]   # 1.7e308 and 2^1000 are far above 2^53
