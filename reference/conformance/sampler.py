"""The sampler protocol: ``sample(points, queries, n, seed) -> ids``.

points (N, d) float64 (the index vectors z_y), queries (B, d) float64 (the
query vectors q, temperature already folded in), n >= 1 draws per query,
seed an int. Must return integer ids of shape (B, n) with
``ids[b, i] ~ P_b(y) = exp(<q_b, z_y>) / Z_b`` i.i.d. (with replacement).
Each row is treated as a multiset: the order of the n draws is not checked.

:func:`check_sampler` checks shape / integer dtype / range (the "format"
case), then runs a G-test per query on several scenarios (flat and peaked
softmaxes, duplicate points, logits of magnitude 1e4, queries of very
different norms in one batch). The total false-alarm rate is ``alpha``
(default 1e-6), split over all queries (Bonferroni). The sample size of each
scenario is chosen so that a TV error of ``tv`` (default 0.05) is detected
with probability ``power`` (default 0.9) per query, and the report states the
TV error the test actually detects at that size. Only this check is random:
a correct exact sampler fails it with probability at most ``alpha``, up to
the chi-square approximation of the G statistic's tail (see
:mod:`reference.conformance`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from reference._validation import check_int
from reference.conformance._calls import (
    DEFAULT_TIME_LIMIT, call_backend, check_callable, check_false_alarm_rate, check_time_limit,
)
from reference.conformance._data import SCENARIO_SEED, clustered, directions, logits, scenario_arrays, with_duplicates
from reference.conformance.report import Case, CheckReport, error_case
from reference.conformance.statistics import (
    DEFAULT_ALPHA,
    DEFAULT_POWER,
    DEFAULT_TV,
    IMPOSSIBLE_PROBABILITY,
    detectable_tv,
    point_mass_tv,
    power_against,
    sample_size_for_tv,
)
from reference.stats import GTestResult, g_test

__all__ = ["SamplerScenario", "sampler_scenarios", "check_sampler", "sampler_failure_probabilities"]



@dataclass(frozen=True)
class SamplerScenario:
    """Points, queries and what the scenario probes."""

    name: str
    points: np.ndarray
    queries: np.ndarray
    about: str


def sampler_scenarios() -> list[SamplerScenario]:
    """The fixed (points, queries) pairs of :func:`check_sampler`.

    flat (softmax within ~15% of uniform), moderate (clustered targets),
    peaked (most mass on a few targets), duplicates (exact duplicate
    points must each get their share), mixed-norms (query norms from 0.01 to
    30 in one batch: a per-batch temperature or normalisation is wrong),
    huge-logits (logits near +1e4 and -1e4: overflow / underflow of a
    non-log-space implementation).
    """
    rng = np.random.default_rng(SCENARIO_SEED)
    out = []
    pts = rng.standard_normal((64, 8))
    out.append(SamplerScenario("flat", pts, directions(rng, 4, 8, 0.05), "64 targets, ||q|| = 0.05: nearly uniform"))
    pts = clustered(rng, 200, 16, 8, 0.3)
    out.append(SamplerScenario("moderate", pts, directions(rng, 6, 16, np.linspace(1.0, 3.0, 6)),
                               "200 clustered targets, ||q|| in [1, 3]"))
    pts = clustered(rng, 120, 8, 6, 0.3)
    qs = 3.0 * pts[rng.choice(120, 6, replace=False)] + 0.5 * rng.standard_normal((6, 8))
    out.append(SamplerScenario("peaked", pts, qs, "120 clustered targets, queries aligned with targets: top probability 0.2 to 0.98"))
    pts = with_duplicates(rng, rng.standard_normal((25, 6)), 4)
    out.append(SamplerScenario("duplicates", pts, directions(rng, 4, 6, 2.0),
                               f"{pts.shape[0]} targets, 25 distinct rows repeated up to 4 times"))
    pts = rng.standard_normal((80, 6))
    out.append(SamplerScenario("mixed-norms", pts, directions(rng, 8, 6, np.geomspace(0.01, 30.0, 8)),
                               "80 targets, one batch with ||q|| from 0.01 to 30"))
    pts = np.hstack([np.full((50, 1), 100.0), rng.standard_normal((50, 3))])
    qs = np.hstack([np.array([[100.0], [99.5], [-100.0], [-99.5]]), 0.8 * rng.standard_normal((4, 3))])
    out.append(SamplerScenario("huge-logits", pts, qs, "50 targets, logits near +1e4 and -1e4 (log space needed)"))
    return out


def _checked_sampler_scenarios(scenarios: Sequence[Any]) -> list[SamplerScenario]:
    """Caller-given sampler scenarios, validated (:func:`~reference.conformance._data.scenario_arrays`)."""
    out = []
    for i, sc in enumerate(scenarios):
        _, points, queries = scenario_arrays(sc, i, SamplerScenario)
        out.append(replace(sc, points=points, queries=queries))
    return out


def _as_ids(result: Any, shape: tuple[int, int], upper: int, what: str) -> tuple[np.ndarray | None, str | None]:
    """Check a sampler's id array (already converted by NumPy): shape, integer dtype, range [0, upper)."""
    ids = np.asarray(result)
    if ids.dtype.kind not in "iu":
        return None, f"{what}: expected integer ids, got dtype {ids.dtype}"
    if ids.shape != shape:
        return None, f"{what}: expected shape {shape}, got {ids.shape}"
    if ids.size and (ids.min() < 0 or ids.max() >= upper):
        bad = np.argwhere((ids < 0) | (ids >= upper))[0]
        return None, (f"{what}: expected ids in [0, {upper}), got {int(((ids < 0) | (ids >= upper)).sum())} out of range "
                      f"(e.g. query {int(bad[0])}, draw {int(bad[1])}: id {int(ids[tuple(bad)])})")
    return ids.astype(np.int64), None


def _call_sample(sample: Callable[..., Any], points: np.ndarray, queries: np.ndarray, n: int, seed: int,
                 time_limit: float | None) -> tuple[Any, str | None]:
    return call_backend(sample, "sample", [("points", points), ("queries", queries), ("n", n), ("seed", seed)],
                        convert=np.asarray, time_limit=time_limit)


def _format_case_sampler(sample: Callable[..., Any], seed: int, time_limit: float | None) -> Case:
    """Shape, dtype and range on small inputs, single query/draw, N = 1."""
    rng = np.random.default_rng(SCENARIO_SEED + 1)
    probes = [
        ("B=3, N=7, n=5", rng.standard_normal((7, 3)), rng.standard_normal((3, 3)), 5),
        ("B=1, N=7, n=1", rng.standard_normal((7, 3)), rng.standard_normal((1, 3)), 1),
        ("N=1 (every draw must be id 0)", rng.standard_normal((1, 4)), rng.standard_normal((2, 4)), 6),
    ]
    problems: list[str] = []
    for label, points, queries, n in probes:
        result, err = _call_sample(sample, points, queries, n, seed, time_limit)
        if err is None:
            _, err = _as_ids(result, (queries.shape[0], n), points.shape[0], label)
        if err is not None:
            problems.append(err if err.startswith(label) else f"{label}: {err}")
    message = "; ".join(problems)
    return Case("format", "number of format violations", float(len(problems)), 0.0, "<=", not problems, message,
                kind="backend error", headline=message)


def _describe_query(res: GTestResult, p: np.ndarray, b: int, q_norm: float) -> str:
    """The worst merged groups of one query's G-test (largest excess and deficit), in words."""
    n = res.observed.sum()
    resid = (res.observed - res.expected) / np.sqrt(np.maximum(res.expected, 1e-300))

    def group(j: int) -> str:
        members = np.flatnonzero(res.labels == j)
        if members.size == 1:
            what = f"target {int(members[0])} (P = {p[members[0]]:.4g})"
        else:
            shown = ", ".join(str(int(i)) for i in members[:5]) + (", ..." if members.size > 5 else "")
            what = f"{members.size} merged targets (ids {shown}; P = {p[members].sum():.4g} together)"
        return f"{what} expected {res.expected[j]:.1f}, observed {int(res.observed[j])}"

    tv = 0.5 * float(np.abs(res.observed / n - res.expected / n).sum())
    text = (
        f"query {b} (||q|| = {q_norm:.3g}): G = {res.statistic:.1f} with {res.df} df, p = {res.p_value:.3g}; "
        f"empirical TV on the tested bins {tv:.3f}"
    )
    if res.df == 0:
        return text
    return (
        f"{text}; largest excess: {group(int(np.argmax(resid)))}; "
        f"largest deficit: {group(int(np.argmin(resid)))}"
    )


def _per_query_level(alpha: float, scenarios: Sequence[SamplerScenario]) -> tuple[float, int]:
    """(alpha per query, number of queries): ``alpha`` split over the queries of all scenarios (Bonferroni)."""
    n_queries = sum(sc.queries.shape[0] for sc in scenarios)
    return alpha / max(1, n_queries), n_queries  # no scenario (only the format case): no G-test to share alpha


def check_sampler(
    sample: Callable[..., Any],
    *,
    alpha: float = DEFAULT_ALPHA,
    tv: float = DEFAULT_TV,
    power: float = DEFAULT_POWER,
    seed: int = 0,
    scenarios: Sequence[SamplerScenario] | None = None,
    time_limit: float | None = DEFAULT_TIME_LIMIT,
) -> CheckReport:
    """Check ``sample(points, queries, n, seed) -> ids (B, n)`` against the exact softmax.

    For every scenario the exact P_b = softmax(<q_b, z>) is computed in log
    space (:func:`reference.softmax.softmax`), n is chosen by
    :func:`sample_size_for_tv` so that a TV error of ``tv`` is detected with
    probability ``power`` per query, the backend draws n ids per query with
    ``seed + 1 + scenario index``, and each query's counts get a G-test
    (:func:`g_test`) at level ``alpha / (number of queries of all
    scenarios)`` (Bonferroni), so the whole check has false-alarm rate at
    most ``alpha``. A draw of a target with P < 1e-30 fails on its own.

    Parameters
    ----------
    sample : callable
        The backend's sampler (see the module docstring).
    alpha : float, default 1e-6
        Total false-alarm rate.
    tv : float, default 0.05
        TV error to detect (sets the sample size; smaller is slower: n ~ 1/tv^2).
    power : float, default 0.9
        Detection probability per query at TV = ``tv``.
    seed : int, default 0
        Base seed handed to the backend.
    scenarios : sequence of SamplerScenario, optional
        Default :func:`sampler_scenarios`.
    time_limit : float or None, default 600
        Seconds each call of the backend may take (None: no limit).

    Returns
    -------
    CheckReport
        One "format" case, then one case per scenario whose statistic is the
        smallest p-value over its queries.

    Raises
    ------
    ValueError
        Naming the argument; for a malformed caller-given scenario, before the
        backend is called, naming ``scenarios[i]``, its name and the field
        (points or queries not finite non-empty 2-D arrays of one d).
    """
    from reference.softmax import log_partition, softmax

    check_callable(sample, "sample")
    alpha = check_false_alarm_rate(alpha)
    seed = check_int(seed, "seed", low=0)
    time_limit = check_time_limit(time_limit)
    scenarios = sampler_scenarios() if scenarios is None else _checked_sampler_scenarios(scenarios)
    alpha_q, n_queries = _per_query_level(alpha, scenarios)
    report = CheckReport(
        "sampler",
        f"ids ~ softmax(<q, z>) i.i.d.; G-test per query at {alpha_q:.3g} "
        f"(Bonferroni: total false-alarm rate {alpha:g} over {n_queries} queries)",
    )
    report.cases.append(_format_case_sampler(sample, seed, time_limit))
    for i, sc in enumerate(scenarios):
        B, N = sc.queries.shape[0], sc.points.shape[0]
        A = logits(sc.points, sc.queries)
        P, log_Z = softmax(A), log_partition(A)
        n = sample_size_for_tv(P, tv, alpha_q, power=power)
        statistic = f"smallest G-test p-value over {B} queries"
        result, err = _call_sample(sample, sc.points, sc.queries, n, seed + 1 + i, time_limit)
        if err is None:
            ids, err = _as_ids(result, (B, n), N, "output")
        if err is not None:
            report.cases.append(error_case(sc.name, statistic, alpha_q, ">=", err))
            continue
        counts = np.bincount((np.arange(B)[:, None] * N + ids).ravel(), minlength=B * N).reshape(B, N)
        results = [g_test(counts[b], P[b]) for b in range(B)]  # a loop over queries: a test harness, not a hot path
        pvals = np.array([r.p_value for r in results])
        worst = int(np.argmin(pvals))
        q_norms = np.linalg.norm(sc.queries, axis=1)
        impossible = P[np.arange(B)[:, None], ids] < IMPOSSIBLE_PROBABILITY
        # a point mass (one live target) is checked by its impossible draws, every other row by its G-test
        point = (P >= IMPOSSIBLE_PROBABILITY).sum(axis=1) == 1
        det = max(point_mass_tv(n, power) if point[b] else detectable_tv(P[b], n, alpha_q, power=power)
                  for b in range(B))
        note = (
            f"{sc.about}; n = {n} draws per query; the test detects any TV error >= {det:.3f} "
            f"(on its merged bins) with probability >= {power:g} per query"
        )
        if impossible.any():
            b, j = map(int, np.argwhere(impossible)[0])
            y = int(ids[b, j])
            msg = (
                f"query {b} drew target {y} whose probability is {P[b, y]:.3g} "
                f"(logit {A[b, y]:.6g}, log Z {log_Z[b]:.6g}); {int(impossible.sum())} such draws in total"
            )
            report.cases.append(Case(sc.name, statistic, 0.0, alpha_q, ">=", False, msg, note,
                                     headline=f"an impossible draw: {msg}"))
            continue
        report.cases.append(
            Case(
                sc.name,
                statistic,
                float(pvals[worst]),
                alpha_q,
                ">=",
                bool(pvals.min() >= alpha_q),
                _describe_query(results[worst], P[worst], worst, float(q_norms[worst])),
                note,
                headline=(f"the draws do not follow the softmax: {int((pvals < alpha_q).sum())} of {B} queries "
                          f"rejected by the G-test (smallest p = {pvals.min():.3g} < {alpha_q:.3g})"),
            )
        )
    return report


def sampler_failure_probabilities(
    distribution: Callable[[np.ndarray, np.ndarray], Any],
    *,
    alpha: float = DEFAULT_ALPHA,
    tv: float = DEFAULT_TV,
    power: float = DEFAULT_POWER,
    scenarios: Sequence[SamplerScenario] | None = None,
) -> dict[str, float]:
    """What :func:`check_sampler` will say about a sampler whose per-draw distribution is known.

    ``distribution(points, queries) -> Q`` of shape (B, N) gives, for every
    query, the distribution the backend's i.i.d. draws actually follow (a
    known rounding, an old copy of the vectors, ...). For each scenario this
    returns the probability that the check fails it, from
    :func:`power_against` at the same n and per-query level as
    :func:`check_sampler` with these arguments. For an exact sampler the
    values add up to about ``alpha``; a defect the kit catches gives ~1 in
    the scenarios that expose it. (The format case is not modelled.)

    Parameters
    ----------
    distribution : callable
        ``(points, queries) -> Q`` (B, N), non-negative rows.
    alpha, tv, power, scenarios
        As in :func:`check_sampler`.

    Returns
    -------
    dict
        Scenario name -> probability that it fails.

    Raises
    ------
    ValueError
        Naming the argument: a malformed scenario (as in :func:`check_sampler`,
        before ``distribution`` is called), or ``distribution``'s output not of
        shape (B, N).
    """
    from reference.softmax import softmax

    check_callable(distribution, "distribution")
    alpha = check_false_alarm_rate(alpha)
    scenarios = sampler_scenarios() if scenarios is None else _checked_sampler_scenarios(scenarios)
    alpha_q, _ = _per_query_level(alpha, scenarios)
    out = {}
    for sc in scenarios:
        P = softmax(logits(sc.points, sc.queries))
        n = sample_size_for_tv(P, tv, alpha_q, power=power)
        Q = np.asarray(distribution(sc.points.copy(), sc.queries.copy()), dtype=np.float64)
        if Q.shape != P.shape:
            raise ValueError(f"distribution: expected shape {P.shape} in scenario {sc.name!r}, got {Q.shape}")
        passes = np.prod([1.0 - power_against(P[b], Q[b], n, alpha_q) for b in range(P.shape[0])])
        out[sc.name] = float(1.0 - passes)
    return out
