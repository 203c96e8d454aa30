"""The top-k protocol: ``topk(points, queries, k) -> ids``.

Integer ids of shape (B, k): the k targets with the largest logits
``<q_b, z_y>``, in decreasing order of logit, exact ties broken by the
smaller id (P8). The oracle is :func:`reference.softmax.topk_ids` on the
float64 logits.

A backend computes its logits in the precision it declares
(:mod:`reference.conformance.precision`): each of its logits may differ from
the oracle's by e_y = c |q|.|z_y| (c from the declared precision and d). A
returned row is *admissible* when some logits a'_y within [a_y - e_y,
a_y + e_y] make it the exact top-k of a', i.e.

- every returned id's interval reaches every non-returned id's interval:
  ``min over returned x of (a_x + e_x) >= max over others y of (a_y - e_y)``;
- the order fits: for ranks i < j, ``a_(j) - e_(j) <= a_(i) + e_(i)``;
- and targets with exactly equal logits still follow the smaller-id rule, in
  the order and at the k-th place, where those logits are exact in the
  declared precision whatever the order of summation
  (:func:`reference.conformance.precision.exact_logits`: a zero query, or
  coordinates that are small integers times powers of two). Other exactly
  equal float64 logits, such as those of duplicate rows with arbitrary
  coordinates, count as near ties: BLAS may compute identical rows to
  different last bits, so a correct backend can see them as unequal.

A row that is not admissible fails in one class, the first of these that
applies (a row holding an invalid id cannot be judged further; the others
are looked for in this order). The report counts the classes per scenario,
and its first line names the most serious class found
(:data:`reference.conformance.report.SEVERITY`: missing neighbour first):

``invalid id``
    an id outside [0, N) (``-1`` is how FAISS pads a row it could not fill),
    or an id returned twice;
``missing neighbour``
    the set: a true neighbour is missing beyond the declared precision
    (the message gives recall@k per failing query and over the scenario);
``unsorted``
    the right set in the wrong order, two logits swapped that differ by more
    than :data:`NEAR_TIE` |q|.|z|;
``near-tie swap``
    two logits closer than that swapped, beyond the declared tolerance (the
    message gives the gap and the tolerance, both relative to |q|.|z|);
``tie rule``
    exactly equal logits, exact in the declared precision, not ordered by the smaller id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from reference._validation import as_float_array, check_int
from reference.conformance._calls import DEFAULT_TIME_LIMIT, call_backend, check_callable, check_time_limit
from reference.conformance._data import (
    SCENARIO_SEED,
    clustered,
    directions,
    distinct_rows,
    logits,
    near_duplicates,
    scenario_arrays,
    with_duplicates,
)
from reference.conformance.precision import check_dtype, exact_logits, logit_error_factor, normal_range_problem
from reference.conformance.report import SEVERITY, Case, CheckReport, error_case
from reference.softmax import topk_ids

__all__ = ["NEAR_TIE", "TopkScenario", "topk_scenarios", "check_topk", "classify_topk"]

#: A swap of two returned ids whose logits differ by at most NEAR_TIE |q|.|z| is
#: reported as a near-tie swap (a precision problem), a wider one as unsorted
#: output (an ordering bug). Only the class in the report depends on it, never the verdict.
NEAR_TIE = 1e-2
#: Rows of queries classified at once: bounds the float64 (rows, N) temporaries to ~32 MiB each.
_BLOCK_ENTRIES = 1 << 22
#: Ranks shown on each side of the first wrong rank.
_WINDOW = 3


@dataclass(frozen=True)
class TopkScenario:
    name: str
    points: np.ndarray
    queries: np.ndarray
    k: int
    about: str


def topk_scenarios() -> list[TopkScenario]:
    """The fixed scenarios of :func:`check_topk`.

    integer-ties (small integer coordinates: logits are exact in float32 and
    float64 and tie massively; one query is zero, so every logit ties and the
    answer is ids 0..k-1), duplicates (exact duplicate rows straddling the k-th
    place, with coordinates and queries on a grid of 1/8 and 1/4, so that their
    ties are exact in any precision and summation order),
    random (generic floats), k = N (a full sort), k = 1, huge-logits, and
    near-duplicates (rows repeated with copies 1e-9 apart: distinct and
    ordered in float64, equal in float32, so a float32 backend passes only
    when it declares float32).
    """
    rng = np.random.default_rng(SCENARIO_SEED + 4)
    ints = rng.integers(-2, 3, (300, 3)).astype(np.float64)
    int_q = rng.integers(-2, 3, (5, 3)).astype(np.float64)
    int_q[0] = 0.0
    dup = with_duplicates(rng, rng.integers(-16, 17, (30, 4)) / 8.0, 4)  # multiples of 1/8: exact logits
    dup_q = rng.integers(-8, 9, (4, 4)) / 4.0
    small = rng.standard_normal((20, 5))
    huge = np.hstack([np.full((200, 1), 100.0), rng.standard_normal((200, 3))])
    near = near_duplicates(rng, clustered(rng, 40, 8, 4, 0.5), 3, 1e-9)
    return [
        TopkScenario("integer-ties", ints, int_q, 15, "300 targets with coordinates in {-2..2}; query 0 is zero"),
        TopkScenario("duplicates", dup, dup_q, 12,
                     f"{dup.shape[0]} targets, 30 distinct rows of multiples of 1/8 (exact logits), queries of 1/4"),
        TopkScenario("random", clustered(rng, 500, 8, 10, 0.5), directions(rng, 6, 8, 3.0), 10,
                     "500 clustered targets, queries of norm 3"),
        TopkScenario("k-equals-N", small, directions(rng, 3, 5, 1.0), 20, "k = N = 20: a full sort"),
        TopkScenario("k-is-1", small, directions(rng, 3, 5, 1.0), 1, "k = 1"),
        TopkScenario("huge-logits", huge,
                     np.hstack([np.array([[100.0], [-100.0]]), rng.standard_normal((2, 3))]), 8,
                     "first coordinate 100 for every target and +-100 for the queries: logits near +1e4 and -1e4"),
        TopkScenario("near-duplicates", near, directions(rng, 5, 8, 2.0), 30,
                     "40 clustered rows, each 3 times with copies 1e-9 |z| apart (ties in float32, not in float64)"),
    ]


def _checked_topk_scenarios(scenarios: Sequence[Any]) -> list[TopkScenario]:
    """Caller-given top-k scenarios, validated (:func:`~reference.conformance._data.scenario_arrays`, k in [1, N])."""
    out = []
    for i, sc in enumerate(scenarios):
        label, points, queries = scenario_arrays(sc, i, TopkScenario)
        k = check_int(sc.k, f"{label}.k", low=1, high=points.shape[0])
        out.append(replace(sc, points=points, queries=queries, k=k))
    return out


@dataclass(frozen=True)
class _Row:
    """The verdict on one returned row (kind None: admissible)."""

    kind: str | None
    recall: float
    detail: str  # ends with the ranks around the first wrong one


def _window(got: np.ndarray, want: np.ndarray, j: int) -> str:
    lo, hi = max(0, j - _WINDOW), min(got.size, j + _WINDOW + 1)
    return (f"ranks {lo}..{hi - 1}: returned {got[lo:hi].tolist()}, expected {want[lo:hi].tolist()}")


def _true_rank(a: np.ndarray, y: int) -> int:
    """Rank of id y in the oracle's full order (decreasing logit, ties by smaller id)."""
    return int(np.count_nonzero(a > a[y]) + np.count_nonzero(a[:y] == a[y]))


def _classify_row(g: np.ndarray, want: np.ndarray, a: np.ndarray, S: np.ndarray, c: float, b: int,
                  exact: Callable[[np.ndarray], np.ndarray]) -> _Row:
    """Admissibility of one returned row ``g`` (k ids) against the oracle logits ``a`` (N,).

    ``S`` = |q|.|z_y| for every y, ``c`` the tolerance factor (e = c S),
    ``exact(ids)`` whether those targets' logits are exact in the declared
    precision whatever the order of summation (only their exact ties are held
    to the smaller-id rule).
    """
    k, N = want.size, a.size
    valid = (g >= 0) & (g < N)
    in_want = np.zeros(N, dtype=bool)
    in_want[want] = True
    recall = float(np.count_nonzero(in_want[np.unique(g[valid])])) / k

    bad = np.flatnonzero(~valid)
    if bad.size:
        j = int(bad[0])
        why = "padding: fewer than k results" if g[j] == -1 else f"outside [0, {N})"
        return _Row("invalid id", recall,
                    f"query {b}, rank {j}: id {int(g[j])} ({why}); {bad.size} invalid ids in the row; "
                    f"recall@{k} of the valid ids {recall:.3f}; {_window(g, want, j)}")
    uniq, counts = np.unique(g, return_counts=True)
    if (counts > 1).any():
        x = int(uniq[np.argmax(counts > 1)])
        ranks = np.flatnonzero(g == x).tolist()
        return _Row("invalid id", recall,
                    f"query {b}: id {x} returned {len(ranks)} times (ranks {ranks}); {_window(g, want, ranks[1])}")

    e = c * S
    in_g = np.zeros(N, dtype=bool)
    in_g[g] = True
    upper_g = a[g] + e[g]
    out = np.flatnonzero(~in_g)
    if out.size:
        lower_out = a[out] - e[out]
        if lower_out.max() > upper_g.min():
            y = int(out[np.argmax(a[out])])  # the best true neighbour not returned
            x = int(g[np.argmin(a[g])])  # the worst id returned
            j = int(np.argmax(~np.isin(want, g)))  # the first rank holding a missed neighbour
            s = max(S[x], S[y], np.finfo(float).tiny)
            return _Row("missing neighbour", recall,
                        f"query {b}: recall@{k} {recall:.3f}: id {y} (logit {a[y]:.10g}, true rank {_true_rank(a, y)}) "
                        f"not returned, yet id {x} (logit {a[x]:.10g}, true rank {_true_rank(a, x)}) was: "
                        f"gap {(a[y] - a[x]) / s:.3g} |q|.|z| > tolerance {(e[x] + e[y]) / s:.3g}; "
                        f"{_window(g, want, j)}")

    a_g, e_g = a[g], e[g]
    # Order: rank j is consistent iff a_(j) - e_(j) <= min_{i<j} (a_(i) + e_(i)).
    prefix = np.minimum.accumulate(a_g + e_g)
    late = np.flatnonzero(a_g[1:] - e_g[1:] > prefix[:-1]) + 1
    if late.size:
        lowest = np.minimum.accumulate(a_g)
        gaps = (a_g[late] - lowest[late - 1]) / np.maximum(S[g[late]], np.finfo(float).tiny)
        j = int(late[0])
        i = int(np.argmin(a_g[:j] + e_g[:j]))
        s = max(S[g[i]], S[g[j]], np.finfo(float).tiny)
        kind = "unsorted" if gaps.max() > NEAR_TIE else "near-tie swap"
        return _Row(kind, recall,
                    f"query {b}: rank {i} holds id {int(g[i])} (logit {a_g[i]:.10g}) above rank {j} id {int(g[j])} "
                    f"(logit {a_g[j]:.10g}), whose logit is larger by {(a_g[j] - a_g[i]) / s:.3g} |q|.|z| > tolerance "
                    f"{(e_g[i] + e_g[j]) / s:.3g}; {late.size} rank(s) out of order; {_window(g, want, i)}")

    # Exact ties in the order: positions sorted by (logit, position); equal logits need increasing ids.
    # Only targets whose logits are exact in the declared precision: for the others, equal float64
    # logits may differ in the backend's last bits (BLAS computes identical rows in different ways).
    order = np.lexsort((np.arange(k), a_g))
    same = a_g[order][1:] == a_g[order][:-1]
    if same.any():
        order = order[exact(g[order])]
        same = a_g[order][1:] == a_g[order][:-1]
    wrong = np.flatnonzero(same & (g[order][1:] < g[order][:-1]))
    if wrong.size:
        i, j = sorted((int(order[wrong[0]]), int(order[wrong[0] + 1])))
        return _Row("tie rule", recall,
                    f"query {b}: id {int(g[i])} at rank {i} before id {int(g[j])} at rank {j}, both with logit "
                    f"{a_g[i]:.10g} exactly: an exact tie must go to the smaller id; {_window(g, want, i)}")
    # Exact ties at the k-th place: a smaller id with exactly the logit of a returned one, not returned.
    tied_out = out[np.isin(a[out], a_g)] if out.size else out
    if tied_out.size:
        tied_out = tied_out[exact(tied_out)]
        kept = exact(g)
        by_value = np.lexsort((g[kept], a_g[kept]))  # exact returned ids sorted by (logit, id)
        sv, si = a_g[kept][by_value], g[kept][by_value]
        tied_out = tied_out[np.isin(a[tied_out], sv)]
    if tied_out.size:
        last = np.searchsorted(sv, a[tied_out], side="right") - 1  # the largest returned id of that logit
        beaten = np.flatnonzero(si[last] > tied_out)
        if beaten.size:
            y, x = int(tied_out[beaten[0]]), int(si[last[beaten[0]]])
            j = int(np.flatnonzero(g == x)[0])
            return _Row("tie rule", recall,
                        f"query {b}: id {x} returned at rank {j} but id {y}, with exactly the same logit "
                        f"{a[y]:.10g}, was not: an exact tie at the k-th place must go to the smaller id; "
                        f"{_window(g, want, j)}")
    return _Row(None, recall, "")


def classify_topk(
    points: np.ndarray, queries: np.ndarray, got: np.ndarray, k: int, dtype: str = "float64"
) -> list[tuple[str | None, float, str]]:
    """Classify each returned row of a top-k against the oracle: (kind or None, recall@k, detail).

    See the module docstring for the rule and the classes. Queries are
    processed in blocks, so N = 1e6 targets need a few (rows, N) float64
    temporaries of ~32 MiB each.

    Parameters
    ----------
    points : ndarray, shape (N, d)
    queries : ndarray, shape (B, d)
    got : ndarray of int, shape (B, k)
        The backend's ids.
    k : int
    dtype : {"float64", "float32"}
        The declared precision of the backend's logits.

    Returns
    -------
    list of (str or None, float, str)

    Raises
    ------
    ValueError
        Naming the argument: non-finite ``points`` or ``queries``, ``queries``
        of another d, ``got`` not integer or not of shape (B, k), ``k`` outside
        [1, N], an unknown ``dtype``, or ``points, queries`` whose |q|.|z|
        overflows float64 (the first such query and target are named).
    """
    dtype = check_dtype(dtype)
    points = as_float_array(points, "points", ndim=2, dtype=np.float64)
    N, d = points.shape
    queries = as_float_array(queries, "queries", shape=(None, d), dtype=np.float64)
    B = queries.shape[0]
    k = check_int(k, "k", low=1, high=N)
    got = np.asarray(got)
    if got.dtype.kind not in "iu":
        raise ValueError(f"got: expected integer ids, got dtype {got.dtype}")
    if got.shape != (B, k):
        raise ValueError(f"got: expected shape {(B, k)} (queries, k), got {got.shape}")
    c = logit_error_factor(dtype, d)
    distinct = distinct_rows(points)
    abs_points = np.abs(points)
    rows = max(1, _BLOCK_ENTRIES // max(N, 1))
    out: list[tuple[str | None, float, str]] = []
    for start in range(0, B, rows):
        q = queries[start:start + rows]
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused just below
            a = logits(points, q, distinct)
            S = np.abs(q) @ abs_points.T
        bad = np.argwhere(~np.isfinite(S))  # |a| <= S: where a overflows, so does S
        if bad.size:  # blocks go in order, so this is the first query (and its first target) that overflows
            b, y = int(bad[0, 0]), int(bad[0, 1])
            raise ValueError(f"points, queries: expected |q_b|.|z_y| within float64 range, got {S[b, y]} "
                             f"(logit {a[b, y]}) at query {start + b}, target {y}")
        want = topk_ids(a, k)
        for r in range(q.shape[0]):
            def exact(ids: np.ndarray, query: np.ndarray = q[r]) -> np.ndarray:
                return exact_logits(query, points[ids], dtype)

            row = _classify_row(got[start + r].astype(np.int64), want[r], a[r], S[r], c, start + r, exact)
            out.append((row.kind, row.recall, row.detail))
    return out


def _headline(kind: str, n: int, B: int, k: int, recall: float, detail: str, dtype: str) -> str:
    first = detail.split("; ranks ")[0]
    if kind == "missing neighbour":
        return (f"missing neighbours in {n} of {B} queries, recall@{k} {recall:.3f} over the scenario "
                f"(first: {first})")
    if kind == "invalid id":
        return f"invalid ids in {n} of {B} queries (first: {first})"
    if kind == "unsorted":
        return f"output not sorted by logit in {n} of {B} queries (first: {first})"
    if kind == "near-tie swap":
        return f"near-tie swaps beyond the declared {dtype} precision in {n} of {B} queries (first: {first})"
    return f"exact ties not broken by the smaller id in {n} of {B} queries (first: {first})"


def check_topk(
    topk: Callable[..., Any],
    *,
    scenarios: Sequence[TopkScenario] | None = None,
    dtype: str = "float64",
    time_limit: float | None = DEFAULT_TIME_LIMIT,
) -> CheckReport:
    """Check ``topk(points, queries, k) -> ids (B, k)`` against the brute-force top-k (P8).

    The oracle is :func:`reference.softmax.topk_ids` (the repository's one
    brute-force top-k) on float64 logits computed once per distinct point, so
    that duplicate points tie exactly. Each row is judged by
    :func:`classify_topk` with the declared precision's tolerance; the
    statistic is the number of queries with an inadmissible row, and the
    report counts the failures of each class.

    Parameters
    ----------
    topk : callable
        The backend's top-k (see the module docstring).
    scenarios : sequence of TopkScenario, optional
        Default :func:`topk_scenarios`.
    dtype : {"float64", "float32"}, default "float64"
        The precision the backend declares for its logits.
    time_limit : float or None, default 600
        Seconds each call of the backend may take (None: no limit).

    Returns
    -------
    CheckReport

    Raises
    ------
    ValueError
        For a malformed caller-given scenario, before the backend is called
        (naming ``scenarios[i]``, its name and the field: points or queries
        not finite non-empty 2-D arrays of one d, k outside [1, N]), or one
        outside the declared precision's normal range.
    """
    check_callable(topk, "topk")
    dtype = check_dtype(dtype)
    time_limit = check_time_limit(time_limit)
    scenarios = topk_scenarios() if scenarios is None else _checked_topk_scenarios(scenarios)
    report = CheckReport(
        "topk",
        "exact top-k in decreasing logit, exact ties by smaller id (P8); logits within the declared "
        f"{dtype} rounding bound may be ordered either way",
    )
    statistic = "number of queries with a wrong answer"
    for sc in scenarios:
        B = sc.queries.shape[0]
        problem = normal_range_problem(sc.points, sc.queries, dtype)
        if problem is not None:
            raise ValueError(f"scenario {sc.name}: the {dtype} rounding bound does not apply: {problem}")
        c = logit_error_factor(dtype, sc.points.shape[1])
        note = f"{sc.about}; tolerance {c:.3g} |q|.|z| per logit ({dtype} declared)"
        result, err = call_backend(topk, "topk", [("points", sc.points), ("queries", sc.queries), ("k", sc.k)],
                                   convert=np.asarray, time_limit=time_limit)
        if err is None:
            if result.dtype.kind not in "iu":
                err = f"expected integer ids, got dtype {result.dtype}"
            elif result.shape != (B, sc.k):
                err = f"expected shape {(B, sc.k)}, got {result.shape}"
        if err is not None:
            report.cases.append(error_case(sc.name, statistic, 0.0, "<=", err))
            continue
        rows = classify_topk(sc.points, sc.queries, result, sc.k, dtype)
        failing = [(b, r) for b, r in enumerate(rows) if r[0] is not None]
        recall = float(np.mean([r[1] for r in rows]))
        if not failing:
            report.cases.append(Case(sc.name, statistic, 0.0, 0.0, "<=", True, "", note))
            continue
        counts: dict[str, int] = {}
        for _, (kind, _, _) in failing:
            counts[kind] = counts.get(kind, 0) + 1
        kind = max(counts, key=lambda kd: SEVERITY[kd])
        b, (_, _, detail) = next((b, r) for b, r in failing if r[0] == kind)
        lines = [detail, "classes: " + ", ".join(f"{kd} {n}" for kd, n in
                                                  sorted(counts.items(), key=lambda t: -SEVERITY[t[0]]))]
        if "missing neighbour" in counts:
            missing = [f"query {b} {r[1]:.3f}" for b, r in failing if r[0] == "missing neighbour"]
            shown = ", ".join(missing[:10]) + (f", ... ({len(missing)} queries)" if len(missing) > 10 else "")
            lines.append(f"recall@{sc.k} of the queries missing neighbours: {shown}; over the scenario {recall:.3f}")
        report.cases.append(
            Case(sc.name, statistic, float(len(failing)), 0.0, "<=", False, "\n        ".join(lines), note,
                 kind=kind, headline=_headline(kind, counts[kind], B, sc.k, recall, detail, dtype))
        )
    return report
