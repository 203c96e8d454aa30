"""The bracket protocol: ``bracket(points, queries, tol) -> (lo, hi)``.

Two arrays of shape (B,) with ``lo <= log Z_b <= hi`` and ``hi - lo <= tol``
for every query (P2, P7); the backend builds whatever index it likes from
``points``. Checked by :func:`check_bracket` to 1e-9 relative to
``max(1, |log Z|)`` (float64 rounding), with containment granted the
rounding bound of the backend's declared precision
(:mod:`reference.conformance.precision`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from reference.conformance._calls import DEFAULT_TIME_LIMIT, call_backend, check_callable, check_time_limit
from reference.conformance._data import SCENARIO_SEED, clustered, directions, logits, scenario_arrays, with_duplicates
from reference.conformance.precision import check_dtype, logit_error_bounds, normal_range_problem
from reference._validation import check_positive
from reference.conformance.report import Case, CheckReport, error_case

__all__ = ["BRACKET_RTOL", "BracketScenario", "bracket_scenarios", "check_bracket"]

#: Bracket containment / width slack, relative to max(1, |log Z|) (float64 rounding).
BRACKET_RTOL = 1e-9



@dataclass(frozen=True)
class BracketScenario:
    name: str
    points: np.ndarray
    queries: np.ndarray
    tol: float
    about: str


def bracket_scenarios() -> list[BracketScenario]:
    """The fixed scenarios of :func:`check_bracket`.

    Loose, tight and large-logit brackets, duplicates, a single target (where
    lo = hi = log Z is forced), one-sided clusters (tight for indexes whose
    representatives are data points), and three where a *coarse* bracket must
    be tight: few points, queries aligned with the extreme points and a tol so
    large that no refinement is needed (two-points, cross, extreme-point).
    There the upper bound of the coarsest cut is within log N + ||q|| (rho -
    rho') of log Z for radii rho' < rho, so radii 1% too small (||q|| rho = 100
    and 1000) or half as large break containment, whatever tree holds the points.
    """
    rng = np.random.default_rng(SCENARIO_SEED + 3)
    pts = clustered(rng, 400, 6, 10, 0.4)
    qs = directions(rng, 6, 6, np.linspace(0.5, 4.0, 6))
    huge = np.hstack([np.full((100, 1), 100.0), rng.standard_normal((100, 3))])
    # One-sided clusters: a centre point and 39 points all displaced by 0.5 along u.
    # An index whose representative is a data point (cover-tree style) is nearly
    # tight here for queries along u, so radii 1% too small break containment.
    u = np.eye(5)[0]
    centres = 3.0 * rng.standard_normal((10, 5))
    offsets = np.vstack([np.zeros(5), 0.5 * u + 1e-4 * rng.standard_normal((39, 5))])
    one_sided = (centres[:, None, :] + offsets[None, :, :]).reshape(-1, 5)
    # Coarse brackets that must be tight (tol so large that no refinement is needed):
    # every point at the same distance from the mean and queries along the extreme points,
    # so log Z is within log N of the largest logit and the radius term is what reaches it.
    e1 = np.eye(3)[0]
    two = np.vstack([-e1, e1])
    two_q = np.vstack([100.0 * e1, -100.0 * e1, 60.0 * e1, -60.0 * e1])
    cross = np.vstack([np.eye(4), -np.eye(4)])
    cross_q = 1000.0 * np.vstack([np.eye(4), -np.eye(4)])
    ext = clustered(rng, 200, 4, 5, 0.5)
    far = ext[np.argsort(-np.linalg.norm(ext - ext.mean(axis=0), axis=1))[:3]] - ext.mean(axis=0)
    ext_q = 1000.0 * far / np.linalg.norm(far, axis=1, keepdims=True)
    return [
        BracketScenario("loose", pts, qs, 2.0, "400 clustered targets, tol 2"),
        BracketScenario("medium", pts, qs, 0.3, "same targets, tol 0.3"),
        BracketScenario("tight", pts, qs, 1e-3, "same targets, tol 1e-3"),
        BracketScenario("duplicates", with_duplicates(rng, rng.standard_normal((40, 5)), 5),
                        directions(rng, 4, 5, 2.0), 0.5, "40 distinct rows repeated up to 5 times, tol 0.5"),
        BracketScenario("huge-logits", huge,
                        np.hstack([np.array([[100.0], [-100.0], [60.0]]), rng.standard_normal((3, 3))]),
                        0.5, "log Z near +1e4, -1e4 and 6e3, tol 0.5"),
        BracketScenario("single-target", rng.standard_normal((1, 4)), rng.standard_normal((3, 4)), 1.0,
                        "N = 1: log Z is the one logit"),
        BracketScenario("one-sided", one_sided, 8.0 * u + 0.01 * rng.standard_normal((3, 5)), 10.0,
                        "10 clusters of a centre and 39 points displaced along u, queries along u, tol 10"),
        BracketScenario("two-points", two, two_q, 300.0,
                        "points -e1 and +e1, queries +-100 e1 and +-60 e1, tol 300: no refinement needed, "
                        "so the coarsest bracket must contain log Z (radii 1% too small: hi = 99.7 < log Z = 100)"),
        BracketScenario("cross", cross, cross_q, 3000.0,
                        "the 8 points +-e_i of R^4, queries 1000 (+-e_i), tol 3000: a root centred at 0 "
                        "with radius 1 is tight along every axis"),
        BracketScenario("extreme-point", ext, ext_q, 1e4,
                        "200 clustered points and queries of norm 1000 along the point farthest from their "
                        "mean, tol 1e4: log Z ~ the extreme logit"),
    ]


def _checked_bracket_scenarios(scenarios: Sequence[Any]) -> list[BracketScenario]:
    """Caller-given bracket scenarios, validated (:func:`~reference.conformance._data.scenario_arrays`, tol > 0)."""
    out = []
    for i, sc in enumerate(scenarios):
        label, points, queries = scenario_arrays(sc, i, BracketScenario)
        tol = check_positive(sc.tol, f"{label}.tol")
        out.append(replace(sc, points=points, queries=queries, tol=tol))
    return out


def _pair(result: Any) -> Any:
    """The bracket's output as two float64 arrays (inside the guarded call), or an error string."""
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        return f"expected (lo, hi), got {type(result).__name__}" + (
            f" of length {len(result)}" if isinstance(result, (tuple, list)) else "")
    return np.asarray(result[0], dtype=np.float64), np.asarray(result[1], dtype=np.float64)


def check_bracket(
    bracket: Callable[..., Any],
    *,
    scenarios: Sequence[BracketScenario] | None = None,
    dtype: str = "float64",
    time_limit: float | None = DEFAULT_TIME_LIMIT,
) -> CheckReport:
    """Check ``bracket(points, queries, tol) -> (lo, hi)``: lo <= log Z <= hi, hi - lo <= tol.

    P2 and P7 (proofs/README.md section 6). log Z is the exact
    :func:`reference.softmax.log_partition` of the float64 oracle logits.
    Containment is granted the declared precision's rounding bound e_b =
    max_y e[b, y] of :func:`reference.conformance.precision.logit_error_bounds`
    (log-sum-exp moves by at most the largest change of a logit): the
    statistic is the largest violation max(lo - log Z - e_b, log Z + e_b - hi,
    hi - lo - tol, 0) relative to max(1, |log Z|); threshold
    :data:`BRACKET_RTOL` (float64 rounding). Everything the backend computes
    after its logits (exp, sums, log) is its own to certify.

    Parameters
    ----------
    bracket : callable
        The backend's bracket (see the module docstring).
    scenarios : sequence of BracketScenario, optional
        Default :func:`bracket_scenarios`.
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
        not finite non-empty 2-D arrays of one d, tol not a finite number > 0),
        or one outside the declared precision's normal range.
    """
    from reference.softmax import log_partition

    check_callable(bracket, "bracket")
    dtype = check_dtype(dtype)
    time_limit = check_time_limit(time_limit)
    scenarios = bracket_scenarios() if scenarios is None else _checked_bracket_scenarios(scenarios)
    report = CheckReport(
        "bracket",
        f"lo <= log Z <= hi and hi - lo <= tol for every query (P2, P7), to {BRACKET_RTOL:g} relative; "
        f"containment up to the {dtype} rounding bound of the logits",
    )
    statistic = "largest violation / max(1, |log Z|)"
    for sc in scenarios:
        B = sc.queries.shape[0]
        problem = normal_range_problem(sc.points, sc.queries, dtype)
        if problem is not None:
            raise ValueError(f"scenario {sc.name}: the {dtype} rounding bound does not apply: {problem}")
        log_Z = log_partition(logits(sc.points, sc.queries))
        slack = logit_error_bounds(sc.queries, sc.points, dtype).max(axis=1)
        result, err = call_backend(bracket, "bracket", [("points", sc.points), ("queries", sc.queries),
                                                        ("tol", sc.tol)], convert=_pair, time_limit=time_limit)
        if err is None and isinstance(result, str):
            err = result
        if err is None:
            lo, hi = result
            if lo.shape != (B,) or hi.shape != (B,):
                err = f"expected lo and hi of shape ({B},), got {lo.shape} and {hi.shape}"
            elif not (np.isfinite(lo).all() and np.isfinite(hi).all()):
                err = f"lo/hi: {int((~np.isfinite(lo)).sum() + (~np.isfinite(hi)).sum())} non-finite values"
        if err is not None:
            report.cases.append(error_case(sc.name, statistic, BRACKET_RTOL, "<=", err))
            continue
        scale = np.maximum(1.0, np.abs(log_Z))
        parts = np.stack([lo - log_Z - slack, log_Z - slack - hi, hi - lo - sc.tol]) / scale  # (3, B)
        kind, b = np.unravel_index(int(np.argmax(parts)), parts.shape)
        value = max(float(parts[kind, b]), 0.0)
        what = ("lower bound above log Z", "upper bound below log Z", f"wider than tol = {sc.tol:g}")[kind]
        where = (
            f"query {b}: lo = {lo[b]:.12g}, log Z = {log_Z[b]:.12g}, hi = {hi[b]:.12g} "
            f"(hi - lo = {hi[b] - lo[b]:.3g}; {dtype} rounding allowance {slack[b]:.3g})"
            + ("" if value <= BRACKET_RTOL else f": {what}")
        )
        report.cases.append(
            Case(sc.name, statistic, value, BRACKET_RTOL, "<=", value <= BRACKET_RTOL, where, sc.about,
                 headline=f"{what} (query {b}: lo = {lo[b]:.6g}, log Z = {log_Z[b]:.6g}, hi = {hi[b]:.6g})")
        )
    return report
