"""Conformance kit: check another implementation against the reference (proofs/README.md section 9).

A *backend* is any Python object (a module, a class instance, a
``types.SimpleNamespace`` or a ``dict``) that provides some of the five
callables below. The kit runs one check per callable it finds, compares the
backend with the reference's own oracle on fixed scenarios, and returns a
report: for every scenario the statistic, the threshold, pass/fail, and the
worst case found, written so that a failure says *what* is wrong. From the
shell::

    python -m reference conformance mypackage.mymodule:BACKEND

exits with status 0 when every check passes and 1 otherwise. The reference
itself passes: ``python -m reference conformance reference.conformance:REFERENCE_BACKEND``.

Nothing here requires the backend to use the reference's classes: inputs are
plain C-contiguous NumPy arrays (float64 unless stated), ints, and dicts of
arrays; outputs may be anything ``numpy.asarray`` accepts (NumPy arrays, CPU
tensors, lists). Every array handed to a backend is a fresh copy. If a
backend raises, the scenario fails with the exception in the report.

Protocols
---------
``sample(points, queries, n, seed) -> ids``
    points (N, k) float64 (the index vectors z_y), queries (B, k) float64 (the
    query vectors q, temperature already folded in), n >= 1 draws per query,
    seed an int. Must return integer ids of shape (B, n) with
    ``ids[b, i] ~ P_b(y) = exp(<q_b, z_y>) / Z_b`` i.i.d. (with replacement).
    Each row is treated as a multiset: the order of the n draws is not checked.
    Checked by :func:`check_sampler`: shape / integer dtype / range / inputs
    left unchanged, then a G-test per query on several scenarios (flat and
    peaked softmaxes, duplicate points, logits of magnitude 1e4, queries of
    very different norms in one batch). The total false-alarm rate is
    ``alpha`` (default 1e-6), split over all queries (Bonferroni). The sample
    size of each scenario is chosen so that a TV error of ``tv`` (default
    0.05) is detected with probability ``power`` (default 0.9) per query, and
    the report states the TV error the test actually detects at that size.

``encoder(params, config, X, pos, Y, neg=None, log_q=None) -> (loss, grads)``
    The dual encoder of :mod:`reference.encoder` (read its module docstring
    for the layer equations). ``params`` is a dict ``name -> array`` with
    the names and shapes of :func:`reference.encoder.param_shapes`
    (``"query.W0"`` of shape (in, out) used as ``h @ W + b``, ``"query.b0"``,
    ..., ``"target.W0"``, ...); ``config`` is a plain dict with the fields of
    :class:`reference.encoder.EncoderConfig` (query_dim, target_dim, hidden,
    out_dim, activation, normalize, beta, dtype). X (B, query_dim) are query
    features, pos (B,) int64 the positive target of each query, Y
    (N, target_dim) the features of every target. Called as
    ``encoder(params, config, X, pos, Y)`` it must return the full-softmax
    loss ``mean_i [log sum_y exp(a_iy) - a_i,pos_i]`` with
    ``a = beta f(X) g(Y)^T``; called with ``neg=`` (B, n) int64 and ``log_q=``
    (B, n) float or None it must return the sampled-softmax loss of
    :func:`reference.softmax.sampled_softmax_loss`. ``loss`` is a float,
    ``grads`` a dict with exactly the names of ``params``, each of its shape
    (returning ``{"loss": loss, "grads": grads}`` is accepted too).
    Parameters and inputs are float32 when ``config["dtype"] == "float32"``.
    A backend without the sampled loss may raise ``NotImplementedError``
    for those calls (reported as skipped). Checked by :func:`check_encoder`
    against the NumPy oracle in float64: relative error <= 1e-9 for float64
    scenarios, <= 1e-4 for float32 ones.

``bracket(points, queries, tol) -> (lo, hi)``
    Two arrays of shape (B,) with ``lo <= log Z_b <= hi`` and
    ``hi - lo <= tol`` for every query (P2, P7); the backend builds whatever
    index it likes from ``points``. Checked by :func:`check_bracket` to
    1e-9 relative to ``max(1, |log Z|)`` (float64 rounding).

``topk(points, queries, k) -> ids``
    Integer ids of shape (B, k): the k targets with the largest logits
    ``<q_b, z_y>``, in decreasing order of logit, exact ties broken by the
    smaller id (P8). Checked by :func:`check_topk` on scenarios with exact
    ties (integer coordinates, duplicate points, a zero query). Where two
    *different* logits agree to float64 rounding (1e-12 of ``|q|.|z|``) either
    order is accepted; exact ties must follow the rule.

``nystrom(G0, landmarks, G_L, kernel) -> Ghat``
    G0 (N, d) cached embeddings, landmarks (m,) int64 distinct ids,
    G_L (m, d_out) the landmarks' current encodings, kernel a dict
    ``{"name": "linear", "const": c}`` (kappa(a, b) = <a, b> + c^2),
    ``{"name": "rbf", "gamma": g}`` (exp(-g ||a - b||^2)) or
    ``{"name": "polynomial", "degree": p, "c": c}`` ((<a, b> + c)^p). Must
    return Ghat (N, d_out) with ``Ghat[y] = G_L^T K_LL^{-1} k(y)``, i.e.
    ``W^T phi(y)`` with ``phi = K_LL^{-1/2} k(y)``, ``W = K_LL^{-1/2} G_L``
    (proofs/README.md section 5; any square root gives the same Ghat). Checked by
    :func:`check_nystrom` on well-conditioned K_LL to 1e-8 relative.

False alarms
------------
Only the sampler check is random; its false-alarm rate is ``alpha`` for the
whole run: a correct exact sampler fails with probability at most ``alpha``,
up to the chi-square approximation of the G statistic's tail. The test is
:func:`reference.stats.g_test` (re-exported here), the one G-test of the
repository: it keeps that approximation honest by merging bins until every
group expects at least 20 draws and by Williams' correction: simulating 10^6
exact count vectors for each of three scenario queries (moderate, peaked,
duplicates), the rates of p < 1e-3, 1e-4, 1e-5 were within 0.8x-1.3x of
nominal (with the textbook minimum of 5 expected per group they reached 2.1x
at 1e-5, growing into the tail); ``tests/test_conformance.py`` repeats this
(marked slow).
Every other check compares deterministic numbers with a stated rounding
tolerance.

What the sampler check catches
------------------------------
:func:`power_against` (one query) and :func:`sampler_failure_probabilities`
(every scenario) turn a known defect, given as the exact distribution the
backend draws from, into the probability that the kit fails it. At the
defaults, random logit errors of standard deviation 0.03 nats pass (the run
fails with probability < 1e-3) and 0.1 nats fail every scenario (> 0.95
each). The huge-logits scenario (logits near 1e4) makes that a relative
precision of ~1e-6 for the logits: float32 logits pass, float16 and bfloat16
logits fail; the arithmetic after the max-shift may be float16. The gallery
of ``tests/wrong_backends.py`` (``GALLERY``) plants such defects with the
verdicts the kit must give; README.md lists them and what the defaults miss.

Golden vectors
--------------
``python -m reference conformance --golden check`` compares the reference with
the ``.npz`` files of ``reference/golden/`` and ``--golden regenerate``
rewrites them (see :mod:`reference.golden`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize, stats

from reference._validation import (
    as_float_array,
    check_choice,
    check_int,
    check_positive,
)
from reference.softmax import topk_ids
from reference.stats import MIN_EXPECTED, GTestResult, g_test, merge_small_bins, williams_factor

__all__ = [
    "CHECKS",
    "Case",
    "CheckReport",
    "ConformanceReport",
    "GTestResult",
    "merge_small_bins",
    "g_test",
    "detectable_tv",
    "sample_size_for_tv",
    "power_against",
    "SamplerScenario",
    "sampler_scenarios",
    "check_sampler",
    "sampler_failure_probabilities",
    "EncoderScenario",
    "encoder_scenarios",
    "check_encoder",
    "BracketScenario",
    "bracket_scenarios",
    "check_bracket",
    "TopkScenario",
    "topk_scenarios",
    "check_topk",
    "NystromScenario",
    "nystrom_scenarios",
    "check_nystrom",
    "run_conformance",
    "load_backend",
    "ReferenceBackend",
    "REFERENCE_BACKEND",
    "add_arguments",
    "run",
]

#: Default total false-alarm rate of a conformance run (the sampler G-tests).
DEFAULT_ALPHA = 1e-6
#: Default TV error the sampler check must detect with probability DEFAULT_POWER.
DEFAULT_TV = 0.05
DEFAULT_POWER = 0.9
#: A draw of a target whose probability is below this is an error on its own
#: (the chance that a correct sampler makes one is below 1e-20 in any run).
IMPOSSIBLE_PROBABILITY = 1e-30

#: Tolerances of the deterministic checks, and why.
ENCODER_RTOL = {
    # proofs/README.md section 6: deterministic identities to 1e-9 relative in float64.
    "float64": 1e-9,
    # About 1000 float32 machine epsilons (1.2e-7): forward and backward passes
    # of depth <= 3 with sums over <= 20 terms, compared with a float64 oracle.
    "float32": 1e-4,
}
#: Each gradient tensor's error is measured relative to max(its largest |entry|,
#: GRADIENT_FLOOR * the largest |entry| of all gradients): a gradient that is zero
#: in exact arithmetic (the last target bias without normalisation shifts every
#: logit of a query equally) is then judged on the scale of the others, not on
#: its own rounding noise.
GRADIENT_FLOOR = 1e-2
#: Bracket containment / width slack, relative to max(1, |log Z|) (float64 rounding).
BRACKET_RTOL = 1e-9
#: Logits that differ by less than this fraction of |q|.|z| may be ordered either way
#: by a backend that sums in another order (float64 rounding is ~k * 1e-16).
TOPK_ROUNDING = 1e-12
#: Nystrom agreement, relative to max |Ghat|: the scenarios keep cond(K_LL) <= 1e6,
#: so float64 solves agree to ~1e-10.
NYSTROM_RTOL = 1e-8


# ============================================================================
# Statistics: the G-test's power and the sample size (the test itself: reference.stats)
# ============================================================================


def detectable_tv(
    probabilities: Any,
    n: int,
    alpha: float,
    *,
    power: float = DEFAULT_POWER,
    min_expected: float = MIN_EXPECTED,
) -> float:
    """Smallest TV error that the G-test at level ``alpha`` detects with probability ``power``.

    With n draws, merged groups of probabilities p_j (J groups) and critical
    value c = q * chi2.isf(alpha, J - 1) (q the Williams factor), G under an
    alternative Q is approximately non-central chi-square with J - 1 degrees of
    freedom and non-centrality lambda = n sum_j (Q_j - p_j)^2 / p_j. For
    every Q at TV distance delta from p (on the groups),
    sum_j (Q_j - p_j)^2 / p_j >= delta^2 (1/p(S+) + 1/p(S-)) >= 4 delta^2
    (S+/S- the groups where Q gains/loses mass; Cauchy-Schwarz). So every
    alternative with TV >= delta* = sqrt(lambda* / (4 n)) is detected with
    probability >= ``power``, where ncx2.sf(c, J - 1, lambda*) = power.

    Parameters
    ----------
    probabilities : array_like, shape (bins,)
        The exact distribution P.
    n : int
        Number of draws.
    alpha : float
        Level of the test (per query, after any Bonferroni split).
    power : float, default 0.9
        Required detection probability, in (alpha, 1).
    min_expected : float, default 20.0
        As in :func:`g_test` (the TV is measured on the merged groups, which
        is all the test can see).

    Returns
    -------
    float
        delta* (may exceed 1: no useful power); ``inf`` when the groups
        collapse to one (df = 0).
    """
    p = as_float_array(probabilities, "probabilities", ndim=1)
    n = check_int(n, "n", low=1)
    alpha = check_positive(alpha, "alpha")
    power = check_positive(power, "power")
    if not alpha < power < 1:
        raise ValueError(f"power: expected a probability in (alpha={alpha}, 1), got {power}")
    labels = merge_small_bins(n * p, min_expected)
    J = int(labels.max()) + 1
    if J < 2:
        return math.inf
    df = J - 1
    c = stats.chi2.isf(alpha, df) * williams_factor(J, n)

    def shortfall(lam: float) -> float:
        return float(stats.ncx2.sf(c, df, lam)) - power

    hi = max(1.0, c)
    while shortfall(hi) < 0:
        hi *= 2.0
    lam = optimize.brentq(shortfall, 0.0, hi, xtol=1e-6 * hi)
    return math.sqrt(lam / (4.0 * n))


def power_against(
    probabilities: Any,
    alternative: Any,
    n: int,
    alpha: float,
    *,
    min_expected: float = MIN_EXPECTED,
) -> float:
    """Probability that one query of the sampler check fails when the backend draws from ``alternative``.

    The per-query test of :func:`check_sampler` sees n i.i.d. draws from Q =
    ``alternative`` and fails when one of them hits a target with P <
    :data:`IMPOSSIBLE_PROBABILITY` or when :func:`g_test` against P =
    ``probabilities`` rejects at level ``alpha``. With Q0 the mass Q puts on
    those targets and Q' the rest renormalised, the result is
    ``1 - (1 - Q0)^n (1 - ncx2.sf(c, J - 1, lambda))`` with
    lambda = n sum_j (Q'_j - P_j)^2 / P_j on the merged groups and c as in
    :func:`detectable_tv`: the non-central chi-square approximation of G
    (good for lambda up to a few times J, and ~1 beyond, where only the order
    of magnitude matters). For Q = P it is a little below ``alpha`` (Williams'
    correction raises c), when the groups leave df >= 1.

    This says in advance what the kit does with a known defect: compute the
    exact per-draw distribution of a backend (a rounding, a truncation, an
    old copy of the vectors) and the power of each query at the kit's n.

    Parameters
    ----------
    probabilities : array_like, shape (bins,)
        The exact distribution P.
    alternative : array_like, shape (bins,)
        The distribution Q the backend draws from (non-negative, any positive sum).
    n : int
        Number of draws.
    alpha : float
        Level of the test (per query, after any Bonferroni split).
    min_expected : float, default 20.0
        As in :func:`g_test`.

    Returns
    -------
    float
        The probability, in [0, 1].
    """
    p = as_float_array(probabilities, "probabilities", ndim=1)
    q = as_float_array(alternative, "alternative", ndim=1)
    if q.shape != p.shape or (q < 0).any() or not q.sum() > 0:
        raise ValueError(f"alternative: expected {p.shape[0]} non-negative weights with a positive sum")
    n = check_int(n, "n", low=1)
    alpha = check_positive(alpha, "alpha")
    q = q / q.sum()
    impossible = p < IMPOSSIBLE_PROBABILITY
    q0 = float(q[impossible].sum())
    no_impossible_draw = (1.0 - q0) ** n
    if q0 >= 1.0:
        return 1.0
    q = np.where(impossible, 0.0, q) / (1.0 - q0)
    labels = merge_small_bins(n * p, min_expected)
    J = int(labels.max()) + 1
    if J < 2:
        return 1.0 - no_impossible_draw
    pg = np.bincount(labels, weights=p, minlength=J)
    qg = np.bincount(labels, weights=q, minlength=J)
    lam = n * float(np.sum((qg - pg) ** 2 / pg))
    c = stats.chi2.isf(alpha, J - 1) * williams_factor(J, n)
    rejects = float(stats.ncx2.sf(c, J - 1, lam)) if lam > 0 else float(stats.chi2.sf(c, J - 1))
    return 1.0 - no_impossible_draw * (1.0 - rejects)


def sample_size_for_tv(
    probabilities: Any,
    tv: float,
    alpha: float,
    *,
    power: float = DEFAULT_POWER,
    min_expected: float = MIN_EXPECTED,
    max_n: int = 2_000_000,
) -> int:
    """Draws per query so that every query's test detects a TV error of ``tv``.

    Iterates n until :func:`detectable_tv` <= ``tv`` for every row of
    ``probabilities`` (the merged groups, hence the degrees of freedom, grow
    with n, so the fixed point is found by a few multiplicative updates using
    delta* ~ 1 / sqrt(n)).

    Parameters
    ----------
    probabilities : array_like, shape (B, bins) or (bins,)
        One exact distribution per query.
    tv : float
        Target TV error, in (0, 1).
    alpha, power, min_expected
        As in :func:`detectable_tv`.
    max_n : int, default 2_000_000
        Give up (``ValueError``) beyond this many draws per query.

    Returns
    -------
    int
        n.
    """
    P = np.atleast_2d(as_float_array(probabilities, "probabilities"))
    if P.ndim != 2:
        raise ValueError(f"probabilities: expected shape (B, bins) or (bins,), got {P.shape}")
    tv = check_positive(tv, "tv")
    if tv >= 1:
        raise ValueError(f"tv: expected a TV distance in (0, 1), got {tv}")
    n = max(int(math.ceil(4 * min_expected)), 64)
    while n <= max_n:
        worst = max(detectable_tv(p, n, alpha, power=power, min_expected=min_expected) for p in P)
        if worst <= tv:
            return n
        ratio = 4.0 if not math.isfinite(worst) else max((worst / tv) ** 2, 1.05)
        n = int(math.ceil(n * ratio))
    raise ValueError(
        f"tv: detecting a TV error of {tv} needs more than max_n={max_n} draws per query "
        "(is every probability mass on one target?)"
    )


# ============================================================================
# Reports
# ============================================================================


@dataclass(frozen=True)
class Case:
    """One scenario of one check: a statistic compared with a threshold.

    Attributes
    ----------
    scenario : str
        Name of the scenario (see the ``*_scenarios`` functions).
    statistic : str
        What was measured, e.g. "smallest G-test p-value over 6 queries".
    value : float
        The measured value (NaN when the backend raised or returned garbage).
    threshold : float
        The threshold it is compared with.
    relation : str
        "<=" or ">=": the case passes iff ``value relation threshold``.
    passed : bool
        Whether the case passed (also False when the backend failed).
    worst : str
        The worst instance found (where the statistic is attained), in words.
    note : str
        Extra context, e.g. the sampler test's power.
    skipped : bool
        The backend declined this scenario (``NotImplementedError``).
    """

    scenario: str
    statistic: str
    value: float
    threshold: float
    relation: str
    passed: bool
    worst: str
    note: str = ""
    skipped: bool = False

    def format(self) -> str:
        """One or two lines for the text report."""
        tag = "SKIP" if self.skipped else ("PASS" if self.passed else "FAIL")
        if self.skipped:
            return f"  {tag}  {self.scenario}: {self.worst}"
        lines = [
            f"  {tag}  {self.scenario}: {self.statistic} = {_fmt(self.value)} "
            f"(pass if {self.relation} {_fmt(self.threshold)})"
        ]
        if self.worst:
            lines.append(f"        {'worst' if self.passed else 'WRONG'}: {self.worst}")
        if self.note:
            lines.append(f"        {self.note}")
        return "\n".join(lines)


def _fmt(x: float) -> str:
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if x != x:  # NaN: the backend failed before a statistic could be computed
        return "n/a"
    return f"{x:.4g}"


@dataclass
class CheckReport:
    """Result of one check (one protocol) over all its scenarios.

    Attributes
    ----------
    name : str
        "sampler", "encoder", "bracket", "topk" or "nystrom".
    description : str
        The rule that was checked, in one line.
    cases : list of Case
    skipped : str or None
        Why the check did not run at all (the backend lacks the callable).
    """

    name: str
    description: str
    cases: list[Case] = field(default_factory=list)
    skipped: str | None = None

    @property
    def passed(self) -> bool:
        """True iff the check ran and every case that ran passed."""
        return self.skipped is None and all(c.passed or c.skipped for c in self.cases)

    @property
    def failures(self) -> list[Case]:
        return [c for c in self.cases if not c.passed and not c.skipped]

    @property
    def verdict(self) -> str:
        """One of "PASS", "FAIL" and "SKIP" (the check did not run)."""
        return "SKIP" if self.skipped is not None else ("PASS" if self.passed else "FAIL")

    def format(self) -> str:
        if self.skipped is not None:
            return f"SKIP  {self.name}: {self.skipped}"
        tag = "PASS" if self.passed else "FAIL"
        lines = [f"{tag}  {self.name}: {self.description}"]
        lines += [c.format() for c in self.cases]
        return "\n".join(lines)


@dataclass
class ConformanceReport:
    """All checks of one run. ``passed`` is the exit criterion of the CLI."""

    backend: str
    checks: list[CheckReport] = field(default_factory=list)
    alpha: float = DEFAULT_ALPHA

    @property
    def ran(self) -> list[CheckReport]:
        return [c for c in self.checks if c.skipped is None]

    @property
    def passed(self) -> bool:
        """True iff at least one check ran and every check that ran passed."""
        return bool(self.ran) and all(c.passed for c in self.ran)

    @property
    def verdicts(self) -> dict[str, str]:
        """Check name -> "PASS", "FAIL" or "SKIP", in the order the checks ran."""
        return {c.name: c.verdict for c in self.checks}

    def format(self) -> str:
        lines = [f"Conformance of {self.backend} against the reference (proofs/README.md section 9)"]
        if any(c.name == "sampler" for c in self.ran):
            lines.append(
                f"False-alarm rate of this run: {self.alpha:g} (the sampler G-tests); "
                "every other check is deterministic."
            )
        lines.append("")
        for check in self.checks:
            lines.append(check.format())
            lines.append("")
        failed = [c.name for c in self.ran if not c.passed]
        if not self.ran:
            lines.append(f"RESULT: FAIL: the backend provides none of {', '.join(p for p, _ in CHECKS.values())}")
        elif failed:
            lines.append(f"RESULT: FAIL: {len(failed)} of {len(self.ran)} checks failed ({', '.join(failed)})")
        else:
            lines.append(f"RESULT: PASS: all {len(self.ran)} checks passed ({', '.join(c.name for c in self.ran)})")
        return "\n".join(lines)


class _Declined(Exception):
    """The backend raised NotImplementedError where declining is allowed."""


def _call(fn: Callable[..., Any], *args: Any, may_decline: bool = False, **kwargs: Any) -> tuple[Any, str | None]:
    """Call a backend; return (result, None) or (None, a one-line description of the exception).

    With ``may_decline``, ``NotImplementedError`` is re-raised as :class:`_Declined`
    (the scenario is skipped); otherwise it is a failure like any other exception.
    """
    try:
        return fn(*args, **kwargs), None
    except NotImplementedError as exc:
        if may_decline:
            raise _Declined(str(exc)) from None
        return None, f"backend raised NotImplementedError: {str(exc)[:300]}"
    except Exception as exc:  # a backend bug is a finding, not a crash of the kit
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return None, (
            f"backend raised {type(exc).__name__}: {str(exc)[:300]} "
            f"(at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})"
        )


def _error_case(scenario: str, statistic: str, threshold: float, relation: str, message: str) -> Case:
    return Case(scenario, statistic, math.nan, threshold, relation, False, message)


def _as_ids(result: Any, shape: tuple[int, int], upper: int, what: str) -> tuple[np.ndarray | None, str | None]:
    """Check a backend's id array: shape, integer dtype, range [0, upper)."""
    try:
        ids = np.asarray(result)
    except Exception as exc:
        return None, f"{what}: could not convert the output to an array ({type(exc).__name__}: {exc})"
    if ids.dtype.kind not in "iu":
        return None, f"{what}: expected integer ids, got dtype {ids.dtype}"
    if ids.shape != shape:
        return None, f"{what}: expected shape {shape}, got {ids.shape}"
    if ids.size and (ids.min() < 0 or ids.max() >= upper):
        bad = ids[(ids < 0) | (ids >= upper)]
        return None, f"{what}: expected ids in [0, {upper}), got {bad.size} out of range (e.g. {int(bad[0])})"
    return ids.astype(np.int64), None


# ============================================================================
# Scenario helpers
# ============================================================================

#: Seed of the scenario data (fixed, so reports are reproducible; --seed only
#: changes the seeds handed to the backend).
SCENARIO_SEED = 20230425


def _clustered(rng: np.random.Generator, n: int, k: int, n_clusters: int, spread: float) -> np.ndarray:
    """n points in R^k around n_clusters unit-normal centres (the shape of real embeddings)."""
    centres = rng.standard_normal((n_clusters, k))
    return centres[rng.integers(0, n_clusters, n)] + spread * rng.standard_normal((n, k))


def _directions(rng: np.random.Generator, B: int, k: int, norms: Any) -> np.ndarray:
    """B random directions in R^k scaled to the given norms."""
    u = rng.standard_normal((B, k))
    return u / np.linalg.norm(u, axis=1, keepdims=True) * np.asarray(norms, dtype=np.float64).reshape(-1, 1)


def _with_duplicates(rng: np.random.Generator, unique: np.ndarray, max_copies: int) -> np.ndarray:
    """Repeat every row 1..max_copies times and shuffle (exact duplicate points)."""
    copies = rng.integers(1, max_copies + 1, unique.shape[0])
    copies[: min(3, copies.size)] = max_copies  # make sure there are duplicates
    rows = np.repeat(np.arange(unique.shape[0]), copies)
    return unique[rng.permutation(rows)].copy()


def _logits(points: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Oracle logits a = Q Z^T, with exactly equal values for duplicate points.

    Computed on the distinct rows of ``points`` and broadcast back, so exact
    duplicates share one bit-identical logit whatever BLAS does with row order.
    """
    uniq, inv = np.unique(points, axis=0, return_inverse=True)
    return (queries @ uniq.T)[:, inv.reshape(-1)]


# ============================================================================
# Sampler check
# ============================================================================


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
    out.append(SamplerScenario("flat", pts, _directions(rng, 4, 8, 0.05), "64 targets, ||q|| = 0.05: nearly uniform"))
    pts = _clustered(rng, 200, 16, 8, 0.3)
    out.append(SamplerScenario("moderate", pts, _directions(rng, 6, 16, np.linspace(1.0, 3.0, 6)),
                               "200 clustered targets, ||q|| in [1, 3]"))
    pts = _clustered(rng, 120, 8, 6, 0.3)
    qs = 3.0 * pts[rng.choice(120, 6, replace=False)] + 0.5 * rng.standard_normal((6, 8))
    out.append(SamplerScenario("peaked", pts, qs, "120 clustered targets, queries aligned with targets: top probability 0.2 to 0.98"))
    pts = _with_duplicates(rng, rng.standard_normal((25, 6)), 4)
    out.append(SamplerScenario("duplicates", pts, _directions(rng, 4, 6, 2.0),
                               f"{pts.shape[0]} targets, 25 distinct rows repeated up to 4 times"))
    pts = rng.standard_normal((80, 6))
    out.append(SamplerScenario("mixed-norms", pts, _directions(rng, 8, 6, np.geomspace(0.01, 30.0, 8)),
                               "80 targets, one batch with ||q|| from 0.01 to 30"))
    pts = np.hstack([np.full((50, 1), 100.0), rng.standard_normal((50, 3))])
    qs = np.hstack([np.array([[100.0], [99.5], [-100.0], [-99.5]]), 0.8 * rng.standard_normal((4, 3))])
    out.append(SamplerScenario("huge-logits", pts, qs, "50 targets, logits near +1e4 and -1e4 (log space needed)"))
    return out


def _format_case_sampler(sample: Callable[..., Any], seed: int) -> Case:
    """Shape, dtype and range on small inputs, single query/draw, N = 1; inputs unchanged."""
    rng = np.random.default_rng(SCENARIO_SEED + 1)
    probes = [
        ("B=3, N=7, n=5", rng.standard_normal((7, 3)), rng.standard_normal((3, 3)), 5),
        ("B=1, N=7, n=1", rng.standard_normal((7, 3)), rng.standard_normal((1, 3)), 1),
        ("N=1 (every draw must be id 0)", rng.standard_normal((1, 4)), rng.standard_normal((2, 4)), 6),
    ]
    problems: list[str] = []
    for label, points, queries, n in probes:
        p_in, q_in = points.copy(), queries.copy()
        result, err = _call(sample, p_in, q_in, n, seed)
        if err is not None:
            problems.append(f"{label}: {err}")
            continue
        ids, err = _as_ids(result, (queries.shape[0], n), points.shape[0], label)
        if err is not None:
            problems.append(err)
        if not (np.array_equal(p_in, points) and np.array_equal(q_in, queries)):
            problems.append(f"{label}: the backend modified its input arrays")
    return Case(
        "format",
        "number of format violations",
        float(len(problems)),
        0.0,
        "<=",
        not problems,
        "; ".join(problems) if problems else "",
    )


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


def check_sampler(
    sample: Callable[..., Any],
    *,
    alpha: float = DEFAULT_ALPHA,
    tv: float = DEFAULT_TV,
    power: float = DEFAULT_POWER,
    seed: int = 0,
    scenarios: Sequence[SamplerScenario] | None = None,
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

    Returns
    -------
    CheckReport
        One "format" case, then one case per scenario whose statistic is the
        smallest p-value over its queries.
    """
    from reference.softmax import log_partition, softmax

    if not callable(sample):
        raise ValueError(f"sample: expected a callable, got {type(sample).__name__}")
    alpha = check_positive(alpha, "alpha")
    if alpha >= 1:
        raise ValueError(f"alpha: expected a false-alarm rate in (0, 1), got {alpha}")
    seed = check_int(seed, "seed", low=0)
    scenarios = sampler_scenarios() if scenarios is None else list(scenarios)
    n_queries = sum(sc.queries.shape[0] for sc in scenarios)
    alpha_q = alpha / n_queries
    report = CheckReport(
        "sampler",
        f"ids ~ softmax(<q, z>) i.i.d.; G-test per query at {alpha_q:.3g} "
        f"(Bonferroni: total false-alarm rate {alpha:g} over {n_queries} queries)",
    )
    report.cases.append(_format_case_sampler(sample, seed))
    for i, sc in enumerate(scenarios):
        B, N = sc.queries.shape[0], sc.points.shape[0]
        A = _logits(sc.points, sc.queries)
        P, log_Z = softmax(A), log_partition(A)
        n = sample_size_for_tv(P, tv, alpha_q, power=power)
        statistic = f"smallest G-test p-value over {B} queries"
        result, err = _call(sample, sc.points.copy(), sc.queries.copy(), n, seed + 1 + i)
        if err is None:
            ids, err = _as_ids(result, (B, n), N, "output")
        if err is not None:
            report.cases.append(_error_case(sc.name, statistic, alpha_q, ">=", err))
            continue
        counts = np.bincount((np.arange(B)[:, None] * N + ids).ravel(), minlength=B * N).reshape(B, N)
        results = [g_test(counts[b], P[b]) for b in range(B)]  # a loop over queries: a test harness, not a hot path
        pvals = np.array([r.p_value for r in results])
        worst = int(np.argmin(pvals))
        q_norms = np.linalg.norm(sc.queries, axis=1)
        impossible = P[np.arange(B)[:, None], ids] < IMPOSSIBLE_PROBABILITY
        det = max(detectable_tv(P[b], n, alpha_q, power=power) for b in range(B))
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
            report.cases.append(Case(sc.name, statistic, 0.0, alpha_q, ">=", False, msg, note))
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
    """
    from reference.softmax import softmax

    scenarios = sampler_scenarios() if scenarios is None else list(scenarios)
    alpha_q = check_positive(alpha, "alpha") / sum(sc.queries.shape[0] for sc in scenarios)
    out = {}
    for sc in scenarios:
        P = softmax(_logits(sc.points, sc.queries))
        n = sample_size_for_tv(P, tv, alpha_q, power=power)
        Q = np.asarray(distribution(sc.points.copy(), sc.queries.copy()), dtype=np.float64)
        if Q.shape != P.shape:
            raise ValueError(f"distribution: expected shape {P.shape} in scenario {sc.name!r}, got {Q.shape}")
        passes = np.prod([1.0 - power_against(P[b], Q[b], n, alpha_q) for b in range(P.shape[0])])
        out[sc.name] = float(1.0 - passes)
    return out


# ============================================================================
# Encoder check
# ============================================================================


@dataclass(frozen=True)
class EncoderScenario:
    """A configuration, parameters and a batch; ``neg is None`` means the full softmax."""

    name: str
    config: Any  # reference.encoder.EncoderConfig
    params: dict[str, np.ndarray]
    X: np.ndarray
    pos: np.ndarray
    Y: np.ndarray
    neg: np.ndarray | None
    log_q: np.ndarray | None
    about: str


def encoder_scenarios() -> list[EncoderScenario]:
    """The fixed scenarios of :func:`check_encoder`.

    Every activation appears once; biases are random (a backend that drops a
    bias fails); "square" has square weight matrices (a transposed weight
    still runs, and fails); the sampled scenarios repeat negatives and
    include the positive among them; two scenarios run in float32.
    """
    from reference.encoder import EncoderConfig, param_shapes

    rng = np.random.default_rng(SCENARIO_SEED + 2)

    def make(name: str, about: str, *, B: int = 4, N: int = 9, n_neg: int | None = None,
             with_log_q: bool = True, **cfg: Any) -> EncoderScenario:
        config = EncoderConfig(**cfg)
        dt = np.dtype(config.dtype)
        params = {}
        for pname, shape in param_shapes(config).items():
            scale = 1.0 / np.sqrt(shape[0]) if ".W" in pname else 0.3
            params[pname] = (scale * rng.standard_normal(shape)).astype(dt)
        X = rng.standard_normal((B, config.query_dim)).astype(dt)
        Y = rng.standard_normal((N, config.target_dim)).astype(dt)
        pos = rng.integers(0, N, B).astype(np.int64)
        neg = log_q = None
        if n_neg is not None:
            neg = rng.integers(0, N, (B, n_neg)).astype(np.int64)
            neg[:, 0] = pos  # the positive drawn as a negative (it happens with sampling)
            neg[:, 1] = neg[:, 2]  # a repeated negative
            if with_log_q:
                q_logits = rng.standard_normal((B, N))
                log_Q = q_logits - np.log(np.exp(q_logits).sum(axis=1, keepdims=True))
                log_q = np.take_along_axis(log_Q, neg, axis=1).astype(dt)
        return EncoderScenario(name, config, params, X, pos, Y, neg, log_q, about)

    return [
        make("tanh-normalized", "full softmax, tanh, L2-normalised outputs, beta 5",
             query_dim=6, target_dim=5, hidden=(7,), out_dim=4, activation="tanh", normalize=True, beta=5.0),
        make("square-gelu", "full softmax, gelu (tanh approximation), two square hidden layers, no normalisation",
             query_dim=5, target_dim=5, hidden=(5, 5), out_dim=5, activation="gelu", normalize=False, beta=2.0),
        make("identity-linear", "full softmax, one affine layer per tower, normalised, beta 8",
             query_dim=4, target_dim=3, hidden=(), out_dim=3, activation="identity", normalize=True, beta=8.0),
        make("relu-sampled-logq", "sampled softmax with the logQ correction (P13), relu",
             n_neg=6, query_dim=6, target_dim=5, hidden=(6,), out_dim=4, activation="relu", normalize=True, beta=4.0),
        make("softplus-sampled-no-logq", "sampled softmax without logQ (top-k style), softplus",
             n_neg=5, with_log_q=False, query_dim=5, target_dim=6, hidden=(4,), out_dim=3,
             activation="softplus", normalize=False, beta=1.5),
        make("float32-full", "full softmax in float32, tanh, normalised",
             query_dim=6, target_dim=5, hidden=(7,), out_dim=4, activation="tanh", normalize=True, beta=5.0,
             dtype="float32"),
        make("float32-sampled-logq", "sampled softmax with logQ in float32, gelu",
             n_neg=6, query_dim=5, target_dim=5, hidden=(5,), out_dim=5, activation="gelu", normalize=True,
             beta=4.0, dtype="float32"),
    ]


def _encoder_oracle(sc: EncoderScenario) -> tuple[float, dict[str, np.ndarray]]:
    """The NumPy oracle in float64 on the scenario's (possibly float32) parameters."""
    from reference.encoder import DualEncoder

    config64 = dataclasses.replace(sc.config, dtype="float64")
    enc = DualEncoder(config64)
    enc.set_params({k: v.astype(np.float64) for k, v in sc.params.items()})
    X, Y = sc.X.astype(np.float64), sc.Y.astype(np.float64)
    if sc.neg is None:
        return enc.full_softmax_loss(X, sc.pos, Y)
    log_q = None if sc.log_q is None else sc.log_q.astype(np.float64)
    return enc.sampled_softmax_loss(X, sc.pos, Y, sc.neg, log_q)


def _compare_encoder(
    sc: EncoderScenario, result: Any, ref_loss: float, ref_grads: dict[str, np.ndarray]
) -> tuple[float, str]:
    """Largest relative error over the loss and every gradient tensor, and where it is."""
    if isinstance(result, Mapping) and "loss" in result and "grads" in result:
        loss, grads = result["loss"], result["grads"]
    elif isinstance(result, (tuple, list)) and len(result) == 2:
        loss, grads = result
    else:
        return math.nan, f'expected (loss, grads) or {{"loss": ..., "grads": ...}}, got {type(result).__name__}'

    try:
        loss = float(np.asarray(loss))
    except Exception:
        return math.nan, f"loss: expected a float, got {type(loss).__name__}"
    if not math.isfinite(loss):
        return math.nan, f"loss: expected a finite value, got {loss}"
    if not isinstance(grads, Mapping):
        return math.nan, f"grads: expected a dict name -> array, got {type(grads).__name__}"
    missing = sorted(set(ref_grads) - set(grads))
    extra = sorted(set(grads) - set(ref_grads))
    if missing or extra:
        return math.nan, f"grads: missing {missing}, unexpected {extra} (names as in reference.encoder.param_shapes)"
    errors = {"loss": (abs(loss - ref_loss) / max(1.0, abs(ref_loss)), f"loss {loss!r} vs oracle {ref_loss!r}")}
    scale = max(float(np.abs(g).max()) for g in ref_grads.values())
    for name, ref in ref_grads.items():
        try:
            g = np.asarray(grads[name], dtype=np.float64)
        except Exception as exc:
            return math.nan, f"grads[{name!r}]: not convertible to an array ({type(exc).__name__})"
        if g.shape != ref.shape:
            return math.nan, f"grads[{name!r}]: expected shape {ref.shape}, got {g.shape}"
        if not np.isfinite(g).all():
            return math.nan, f"grads[{name!r}]: {int((~np.isfinite(g)).sum())} non-finite entries"
        diff = np.abs(g - ref)
        idx = np.unravel_index(int(np.argmax(diff)), diff.shape)
        denom = max(float(np.abs(ref).max()), GRADIENT_FLOOR * scale, 1e-300)
        errors[name] = (
            float(diff[idx]) / denom,
            f"grads[{name!r}] at index {tuple(int(i) for i in idx)}: backend {g[idx]:.6g}, oracle {ref[idx]:.6g} "
            f"(largest |oracle| in the tensor {float(np.abs(ref).max()):.3g})",
        )
    worst = max(errors, key=lambda k: errors[k][0])
    bad = [k for k, (e, _) in errors.items() if e > ENCODER_RTOL[sc.config.dtype]]
    msg = errors[worst][1]
    if bad:
        msg += f"; wrong: {', '.join(bad)}"
    return errors[worst][0], msg


def check_encoder(
    encoder: Callable[..., Any], *, scenarios: Sequence[EncoderScenario] | None = None
) -> CheckReport:
    """Check ``encoder(params, config, X, pos, Y[, neg=, log_q=]) -> (loss, grads)``.

    The oracle is :class:`reference.encoder.DualEncoder` in float64 (its
    backward pass is checked against finite differences in
    ``tests/test_encoder.py``). Per scenario the statistic is the largest
    relative error over the loss (relative to max(1, |loss|)) and every
    gradient tensor (max abs error relative to that tensor's largest entry,
    floored at :data:`GRADIENT_FLOOR` times the largest entry of all
    gradients), with thresholds :data:`ENCODER_RTOL` per dtype.

    Parameters
    ----------
    encoder : callable
        The backend's encoder (see the module docstring).
    scenarios : sequence of EncoderScenario, optional
        Default :func:`encoder_scenarios`.

    Returns
    -------
    CheckReport
    """
    if not callable(encoder):
        raise ValueError(f"encoder: expected a callable, got {type(encoder).__name__}")
    scenarios = encoder_scenarios() if scenarios is None else list(scenarios)
    report = CheckReport(
        "encoder",
        "loss and gradients of every parameter against the NumPy oracle (float64); "
        f"relative error <= {ENCODER_RTOL['float64']:g} (float64), <= {ENCODER_RTOL['float32']:g} (float32)",
    )
    for sc in scenarios:
        tol = ENCODER_RTOL[sc.config.dtype]
        statistic = "largest relative error (loss, gradients)"
        ref_loss, ref_grads = _encoder_oracle(sc)
        params = {k: v.copy() for k, v in sc.params.items()}
        config = dataclasses.asdict(sc.config)
        args = (params, config, sc.X.copy(), sc.pos.copy(), sc.Y.copy())
        try:
            if sc.neg is None:
                result, err = _call(encoder, *args)
            else:
                log_q = None if sc.log_q is None else sc.log_q.copy()
                result, err = _call(encoder, *args, may_decline=True, neg=sc.neg.copy(), log_q=log_q)
        except _Declined as exc:
            report.cases.append(
                Case(sc.name, statistic, math.nan, tol, "<=", True,
                     f"skipped: the backend raised NotImplementedError ({exc})", skipped=True)
            )
            continue
        if err is not None:
            report.cases.append(_error_case(sc.name, statistic, tol, "<=", err))
            continue
        value, where = _compare_encoder(sc, result, ref_loss, ref_grads)
        passed = bool(value <= tol)  # False for NaN
        report.cases.append(Case(sc.name, statistic, value, tol, "<=", passed, where, sc.about))
    return report


# ============================================================================
# Bracket check
# ============================================================================


@dataclass(frozen=True)
class BracketScenario:
    name: str
    points: np.ndarray
    queries: np.ndarray
    tol: float
    about: str


def bracket_scenarios() -> list[BracketScenario]:
    """The fixed scenarios of :func:`check_bracket`: loose, tight and large-logit brackets,
    duplicates, a single target (where lo = hi = log Z is forced) and one-sided
    clusters (tight for indexes whose representatives are data points)."""
    rng = np.random.default_rng(SCENARIO_SEED + 3)
    pts = _clustered(rng, 400, 6, 10, 0.4)
    qs = _directions(rng, 6, 6, np.linspace(0.5, 4.0, 6))
    huge = np.hstack([np.full((100, 1), 100.0), rng.standard_normal((100, 3))])
    # One-sided clusters: a centre point and 39 points all displaced by 0.5 along u.
    # An index whose representative is a data point (cover-tree style) is nearly
    # tight here for queries along u, so radii 1% too small break containment.
    u = np.eye(5)[0]
    centres = 3.0 * rng.standard_normal((10, 5))
    offsets = np.vstack([np.zeros(5), 0.5 * u + 1e-4 * rng.standard_normal((39, 5))])
    one_sided = (centres[:, None, :] + offsets[None, :, :]).reshape(-1, 5)
    return [
        BracketScenario("loose", pts, qs, 2.0, "400 clustered targets, tol 2"),
        BracketScenario("medium", pts, qs, 0.3, "same targets, tol 0.3"),
        BracketScenario("tight", pts, qs, 1e-3, "same targets, tol 1e-3"),
        BracketScenario("duplicates", _with_duplicates(rng, rng.standard_normal((40, 5)), 5),
                        _directions(rng, 4, 5, 2.0), 0.5, "40 distinct rows repeated up to 5 times, tol 0.5"),
        BracketScenario("huge-logits", huge,
                        np.hstack([np.array([[100.0], [-100.0], [60.0]]), rng.standard_normal((3, 3))]),
                        0.5, "log Z near +1e4, -1e4 and 6e3, tol 0.5"),
        BracketScenario("single-target", rng.standard_normal((1, 4)), rng.standard_normal((3, 4)), 1.0,
                        "N = 1: log Z is the one logit"),
        BracketScenario("one-sided", one_sided, 8.0 * u + 0.01 * rng.standard_normal((3, 5)), 10.0,
                        "10 clusters of a centre and 39 points displaced along u, queries along u, tol 10"),
    ]


def check_bracket(
    bracket: Callable[..., Any], *, scenarios: Sequence[BracketScenario] | None = None
) -> CheckReport:
    """Check ``bracket(points, queries, tol) -> (lo, hi)``: lo <= log Z <= hi, hi - lo <= tol.

    P2 and P7 (proofs/README.md section 6). log Z is the exact
    :func:`reference.softmax.log_partition`. The statistic is the largest
    violation max(lo - log Z, log Z - hi, hi - lo - tol, 0) relative to
    max(1, |log Z|); threshold :data:`BRACKET_RTOL` (float64 rounding).

    Parameters
    ----------
    bracket : callable
        The backend's bracket (see the module docstring).
    scenarios : sequence of BracketScenario, optional
        Default :func:`bracket_scenarios`.

    Returns
    -------
    CheckReport
    """
    from reference.softmax import log_partition

    if not callable(bracket):
        raise ValueError(f"bracket: expected a callable, got {type(bracket).__name__}")
    scenarios = bracket_scenarios() if scenarios is None else list(scenarios)
    report = CheckReport(
        "bracket",
        f"lo <= log Z <= hi and hi - lo <= tol for every query (P2, P7), to {BRACKET_RTOL:g} relative",
    )
    statistic = "largest violation / max(1, |log Z|)"
    for sc in scenarios:
        B = sc.queries.shape[0]
        log_Z = log_partition(_logits(sc.points, sc.queries))
        result, err = _call(bracket, sc.points.copy(), sc.queries.copy(), sc.tol)
        if err is None:
            try:
                lo, hi = (np.asarray(x, dtype=np.float64) for x in result)
            except Exception:
                err = f"expected (lo, hi), got {type(result).__name__}"
            else:
                if lo.shape != (B,) or hi.shape != (B,):
                    err = f"expected lo and hi of shape ({B},), got {lo.shape} and {hi.shape}"
                elif not (np.isfinite(lo).all() and np.isfinite(hi).all()):
                    err = f"lo/hi: {int((~np.isfinite(lo)).sum() + (~np.isfinite(hi)).sum())} non-finite values"
        if err is not None:
            report.cases.append(_error_case(sc.name, statistic, BRACKET_RTOL, "<=", err))
            continue
        scale = np.maximum(1.0, np.abs(log_Z))
        parts = np.stack([lo - log_Z, log_Z - hi, hi - lo - sc.tol]) / scale  # (3, B)
        kind, b = np.unravel_index(int(np.argmax(parts)), parts.shape)
        value = max(float(parts[kind, b]), 0.0)
        what = ("lower bound above log Z", "upper bound below log Z", f"wider than tol = {sc.tol:g}")[kind]
        where = (
            f"query {b}: lo = {lo[b]:.12g}, log Z = {log_Z[b]:.12g}, hi = {hi[b]:.12g} "
            f"(hi - lo = {hi[b] - lo[b]:.3g})" + ("" if value <= BRACKET_RTOL else f": {what}")
        )
        report.cases.append(
            Case(sc.name, statistic, value, BRACKET_RTOL, "<=", value <= BRACKET_RTOL, where, sc.about)
        )
    return report


# ============================================================================
# Top-k check
# ============================================================================


@dataclass(frozen=True)
class TopkScenario:
    name: str
    points: np.ndarray
    queries: np.ndarray
    k: int
    about: str


def topk_scenarios() -> list[TopkScenario]:
    """The fixed scenarios of :func:`check_topk`.

    integer-ties (small integer coordinates: logits are exact in float64 and
    tie massively; one query is zero, so every logit ties and the answer is
    ids 0..k-1), duplicates (exact duplicate rows straddling the k-th place),
    random (generic floats), k = N (a full sort), k = 1, huge-logits.
    """
    rng = np.random.default_rng(SCENARIO_SEED + 4)
    ints = rng.integers(-2, 3, (300, 3)).astype(np.float64)
    int_q = rng.integers(-2, 3, (5, 3)).astype(np.float64)
    int_q[0] = 0.0
    dup = _with_duplicates(rng, rng.standard_normal((30, 4)), 4)
    small = rng.standard_normal((20, 5))
    huge = np.hstack([np.full((200, 1), 100.0), rng.standard_normal((200, 3))])
    return [
        TopkScenario("integer-ties", ints, int_q, 15, "300 targets with coordinates in {-2..2}; query 0 is zero"),
        TopkScenario("duplicates", dup, _directions(rng, 4, 4, 2.0), 12, f"{dup.shape[0]} targets, 30 distinct rows"),
        TopkScenario("random", _clustered(rng, 500, 8, 10, 0.5), _directions(rng, 6, 8, 3.0), 10,
                     "500 clustered targets"),
        TopkScenario("k-equals-N", small, _directions(rng, 3, 5, 1.0), 20, "k = N = 20: a full sort"),
        TopkScenario("k-is-1", small, _directions(rng, 3, 5, 1.0), 1, "k = 1"),
        TopkScenario("huge-logits", huge,
                     np.hstack([np.array([[100.0], [-100.0]]), rng.standard_normal((2, 3))]), 8,
                     "logits near +1e4 and -1e4"),
    ]


def check_topk(topk: Callable[..., Any], *, scenarios: Sequence[TopkScenario] | None = None) -> CheckReport:
    """Check ``topk(points, queries, k) -> ids (B, k)`` against the brute-force top-k (P8).

    The oracle is :func:`reference.softmax.topk_ids` (the repository's one
    brute-force top-k, also behind :func:`reference.bench.brute_force_topk`)
    on the logits of :func:`_logits`, computed once per distinct point so that
    duplicate points tie exactly.

    Position j of a row is right when it holds the oracle's id, or when the
    two ids' logits differ (not an exact tie) by at most
    :data:`TOPK_ROUNDING` |q|.|z| (the backend summed in another order).
    The statistic is the number of wrong queries.

    Parameters
    ----------
    topk : callable
        The backend's top-k (see the module docstring).
    scenarios : sequence of TopkScenario, optional
        Default :func:`topk_scenarios`.

    Returns
    -------
    CheckReport
    """
    if not callable(topk):
        raise ValueError(f"topk: expected a callable, got {type(topk).__name__}")
    scenarios = topk_scenarios() if scenarios is None else list(scenarios)
    report = CheckReport(
        "topk", "exact top-k in decreasing logit, exact ties by smaller id (P8), float64 rounding tolerated"
    )
    statistic = "number of queries with a wrong answer"
    for sc in scenarios:
        B, N = sc.queries.shape[0], sc.points.shape[0]
        a = _logits(sc.points, sc.queries)
        want = topk_ids(a, sc.k)
        result, err = _call(topk, sc.points.copy(), sc.queries.copy(), sc.k)
        if err is None:
            got, err = _as_ids(result, (B, sc.k), N, "output")
        if err is None:
            repeated = np.array([np.unique(r).size < sc.k for r in got])
            if repeated.any():
                err = f"query {int(np.argmax(repeated))}: repeated ids {got[int(np.argmax(repeated))].tolist()}"
        if err is not None:
            report.cases.append(_error_case(sc.name, statistic, 0.0, "<=", err))
            continue
        rows = np.arange(B)[:, None]
        a_got, a_want = a[rows, got], a[rows, want]
        tol = TOPK_ROUNDING * (np.abs(sc.queries) @ np.abs(sc.points).T).max(axis=1, keepdims=True)
        rounding = (a_got != a_want) & (np.abs(a_got - a_want) <= tol)
        wrong = (got != want) & ~rounding  # (B, k)
        bad_rows = np.flatnonzero(wrong.any(axis=1))
        if bad_rows.size:
            b = int(bad_rows[0])
            j = int(np.argmax(wrong[b]))
            tie = a_got[b, j] == a_want[b, j]
            where = (
                f"query {b}, rank {j}: returned id {got[b, j]} (logit {a_got[b, j]:.10g}), expected id "
                f"{want[b, j]} (logit {a_want[b, j]:.10g})"
                + (": an exact tie must go to the smaller id" if tie else "")
                + f"; returned {got[b].tolist()[:12]}, expected {want[b].tolist()[:12]}"
            )
        else:
            where = ""
        report.cases.append(
            Case(sc.name, statistic, float(bad_rows.size), 0.0, "<=", bad_rows.size == 0, where, sc.about)
        )
    return report


# ============================================================================
# Nystrom check
# ============================================================================


@dataclass(frozen=True)
class NystromScenario:
    name: str
    G0: np.ndarray
    landmarks: np.ndarray
    G_L: np.ndarray
    kernel: dict[str, Any]
    about: str


def _kernel_object(spec: Mapping[str, Any]) -> Any:
    """The reference kernel for a protocol kernel dict."""
    from reference import nystrom

    params = {k: v for k, v in spec.items() if k != "name"}
    name = check_choice(spec.get("name"), "kernel['name']", ("linear", "rbf", "polynomial"))
    return {"linear": nystrom.linear, "rbf": nystrom.rbf, "polynomial": nystrom.polynomial}[name](**params)


def nystrom_scenarios() -> list[NystromScenario]:
    """The fixed scenarios of :func:`check_nystrom`: linear (with and without the
    constant feature), RBF and polynomial kernels; G_L is a non-linear change of
    the landmarks' cached embeddings; every K_LL has condition number <= 1e6."""
    rng = np.random.default_rng(SCENARIO_SEED + 5)
    out = []

    def make(name: str, about: str, N: int, d: int, m: int, kernel: dict[str, Any], d_out: int) -> None:
        G0 = _clustered(rng, N, d, 6, 0.5) / np.sqrt(d)
        L = np.sort(rng.choice(N, m, replace=False)).astype(np.int64)
        A = rng.standard_normal((d, d_out)) / np.sqrt(d)
        G_L = np.tanh(G0[L] @ A + 0.1) + 0.05 * rng.standard_normal((m, d_out))
        out.append(NystromScenario(name, G0, L, G_L, kernel, about))

    make("linear", "linear kernel, m = 6 <= d = 8", 150, 8, 6, {"name": "linear", "const": 0.0}, 5)
    make("linear-const", "linear kernel with constant feature c = 1, m = 9 = d + 1", 150, 8, 9,
         {"name": "linear", "const": 1.0}, 4)
    make("rbf", "RBF kernel, gamma 0.5, m = 12", 200, 5, 12, {"name": "rbf", "gamma": 0.5}, 6)
    make("polynomial", "polynomial kernel, degree 2, c 1, m = 10", 120, 4, 10,
         {"name": "polynomial", "degree": 2, "c": 1.0}, 3)
    return out


def _nystrom_oracle(sc: NystromScenario) -> np.ndarray:
    """Ghat from :class:`reference.nystrom.NystromMap` (no ridge, default cutoff)."""
    from reference.nystrom import NystromMap

    nm = NystromMap(_kernel_object(sc.kernel)).fit(sc.G0, sc.landmarks)
    return nm.approximate(nm.features(sc.G0), nm.project(sc.G_L))


def check_nystrom(
    nystrom: Callable[..., Any], *, scenarios: Sequence[NystromScenario] | None = None
) -> CheckReport:
    """Check ``nystrom(G0, landmarks, G_L, kernel) -> Ghat`` against :class:`reference.nystrom.NystromMap`.

    proofs/README.md section 5: Ghat = G_L^T K_LL^{-1} k(y) for every target (and so
    Ghat[landmarks] = G_L, P10). The statistic is max |Ghat - oracle| relative
    to max |oracle|; threshold :data:`NYSTROM_RTOL`.

    Parameters
    ----------
    nystrom : callable
        The backend's Nystrom map (see the module docstring).
    scenarios : sequence of NystromScenario, optional
        Default :func:`nystrom_scenarios`.

    Returns
    -------
    CheckReport
    """
    if not callable(nystrom):
        raise ValueError(f"nystrom: expected a callable, got {type(nystrom).__name__}")
    scenarios = nystrom_scenarios() if scenarios is None else list(scenarios)
    report = CheckReport(
        "nystrom", f"Ghat = G_L^T K_LL^-1 k(y) for every target (proofs/README.md section 5), to {NYSTROM_RTOL:g} relative"
    )
    statistic = "max |Ghat - oracle| / max |oracle|"
    for sc in scenarios:
        want = _nystrom_oracle(sc)
        result, err = _call(nystrom, sc.G0.copy(), sc.landmarks.copy(), sc.G_L.copy(), dict(sc.kernel))
        if err is None:
            try:
                got = np.asarray(result, dtype=np.float64)
            except Exception as exc:
                got, err = None, f"output not convertible to a float array ({type(exc).__name__})"
            else:
                if got.shape != want.shape:
                    err = f"expected Ghat of shape {want.shape}, got {got.shape}"
                elif not np.isfinite(got).all():
                    err = f"Ghat: {int((~np.isfinite(got)).sum())} non-finite entries"
        if err is not None:
            report.cases.append(_error_case(sc.name, statistic, NYSTROM_RTOL, "<=", err))
            continue
        diff = np.abs(got - want)
        y, c = np.unravel_index(int(np.argmax(diff)), diff.shape)
        value = float(diff[y, c]) / max(float(np.abs(want).max()), 1e-300)
        is_landmark = bool(np.isin(y, sc.landmarks))
        where = (
            f"target {y}{' (a landmark: P10 says Ghat = G_L there)' if is_landmark else ''}, column {c}: "
            f"backend {got[y, c]:.10g}, oracle {want[y, c]:.10g}"
        )
        report.cases.append(
            Case(sc.name, statistic, value, NYSTROM_RTOL, "<=", value <= NYSTROM_RTOL, where, sc.about)
        )
    return report


# ============================================================================
# Running a backend through the kit
# ============================================================================

#: check name -> (the backend attribute it needs, the check function).
CHECKS: dict[str, tuple[str, Callable[..., CheckReport]]] = {
    "sampler": ("sample", check_sampler),
    "encoder": ("encoder", check_encoder),
    "bracket": ("bracket", check_bracket),
    "topk": ("topk", check_topk),
    "nystrom": ("nystrom", check_nystrom),
}


def _provided(backend: Any, attribute: str) -> Callable[..., Any] | None:
    """The backend's callable ``attribute`` (attribute or mapping key), or None."""
    fn = backend.get(attribute) if isinstance(backend, Mapping) else getattr(backend, attribute, None)
    return fn if callable(fn) else None


def run_conformance(
    backend: Any,
    checks: Sequence[str] | None = None,
    *,
    alpha: float = DEFAULT_ALPHA,
    tv: float = DEFAULT_TV,
    power: float = DEFAULT_POWER,
    seed: int = 0,
    name: str | None = None,
) -> ConformanceReport:
    """Run every check whose callable the backend provides.

    Parameters
    ----------
    backend : object or mapping
        Provides some of ``sample``, ``encoder``, ``bracket``, ``topk``,
        ``nystrom`` (attributes or keys; see the module docstring).
    checks : sequence of str, optional
        Names from :data:`CHECKS` to run. Default: all the backend provides
        (the others are reported as skipped). A check named here that the
        backend does not provide fails.
    alpha, tv, power, seed
        Passed to :func:`check_sampler` (``alpha`` is the run's false-alarm rate).
    name : str, optional
        How the report names the backend.

    Returns
    -------
    ConformanceReport
    """
    if checks is None:
        selected, required = list(CHECKS), False
    else:
        selected = [check_choice(c, "checks", CHECKS) for c in checks]
        required = True
    report = ConformanceReport(name or repr(backend)[:80], alpha=alpha)
    for check_name in selected:
        attribute, check = CHECKS[check_name]
        fn = _provided(backend, attribute)
        if fn is None:
            reason = f"the backend has no callable `{attribute}`"
            if required:
                cr = CheckReport(check_name, "requested with --checks")
                cr.cases.append(_error_case("-", "-", math.nan, "<=", reason))
                report.checks.append(cr)
            else:
                report.checks.append(CheckReport(check_name, "", skipped=reason))
            continue
        if check_name == "sampler":
            report.checks.append(check(fn, alpha=alpha, tv=tv, power=power, seed=seed))
        else:
            report.checks.append(check(fn))
    return report


def load_backend(spec: str) -> Any:
    """Import ``"module:object"`` (object may be dotted, ``"pkg.mod:Class.attr"``).

    Raises
    ------
    ValueError
        When the spec is malformed, the module cannot be imported or the
        object does not exist (the message says which).
    """
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"BACKEND: expected 'module:object' (e.g. mypkg.backends:TORCH), got {spec!r}")
    module_name, obj_path = spec.split(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"BACKEND: cannot import module {module_name!r}: {exc}") from None
    for part in obj_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"BACKEND: {module_name!r} has no attribute {obj_path!r} (missing {part!r})") from None
    return obj


# ============================================================================
# The reference itself as a backend (it must pass its own kit)
# ============================================================================


class ReferenceBackend:
    """The reference implementation behind the five protocols.

    ``sample`` builds a :class:`reference.tree.Tree` and draws with the
    exact rejection sampler (P6); ``bracket`` uses an adaptive cut (P7);
    ``topk`` the tree's branch and bound (P8); ``encoder`` the NumPy
    oracle; ``nystrom`` :class:`reference.nystrom.NystromMap`. It doubles as
    an example of how to adapt an implementation to the protocols.
    """

    def sample(self, points: np.ndarray, queries: np.ndarray, n: int, seed: int) -> np.ndarray:
        from reference.sampling import rejection_sample
        from reference.tree import Tree

        tree = Tree.build(points, seed=0)
        ids, _ = rejection_sample(tree, queries, n, np.random.default_rng(seed))
        return ids

    def encoder(
        self,
        params: dict[str, np.ndarray],
        config: dict[str, Any],
        X: np.ndarray,
        pos: np.ndarray,
        Y: np.ndarray,
        neg: np.ndarray | None = None,
        log_q: np.ndarray | None = None,
    ) -> tuple[float, dict[str, np.ndarray]]:
        from reference.encoder import DualEncoder, EncoderConfig

        enc = DualEncoder(EncoderConfig(**config))
        enc.set_params(params)
        if neg is None:
            return enc.full_softmax_loss(X, pos, Y)
        return enc.sampled_softmax_loss(X, pos, Y, neg, log_q)

    def bracket(self, points: np.ndarray, queries: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
        from reference.bounds import adaptive_cut, log_partition_bracket
        from reference.tree import Tree

        tree = Tree.build(points, seed=0)
        lo, hi, _ = log_partition_bracket(tree, queries, adaptive_cut(tree, queries, tol))
        return lo, hi

    def topk(self, points: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
        from reference.sampling import topk
        from reference.tree import Tree

        ids, _ = topk(Tree.build(points, seed=0), queries, k)
        return ids

    def nystrom(
        self, G0: np.ndarray, landmarks: np.ndarray, G_L: np.ndarray, kernel: dict[str, Any]
    ) -> np.ndarray:
        from reference.nystrom import NystromMap

        nm = NystromMap(_kernel_object(kernel)).fit(G0, landmarks)
        return nm.approximate(nm.features(G0), nm.project(G_L))

    def __repr__(self) -> str:
        return "ReferenceBackend()"


#: ``python -m reference conformance reference.conformance:REFERENCE_BACKEND``
REFERENCE_BACKEND = ReferenceBackend()


# ============================================================================
# Command line: python -m reference conformance BACKEND
# ============================================================================


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m reference conformance``."""
    parser.add_argument(
        "backend",
        nargs="?",
        metavar="BACKEND",
        help="'module:object' providing some of sample / encoder / bracket / topk / nystrom "
        "(e.g. reference.conformance:REFERENCE_BACKEND or reference.contrib.torch_backend:BACKEND)",
    )
    parser.add_argument(
        "--checks",
        default=None,
        help=f"comma-separated subset of {','.join(CHECKS)} (default: every one the backend provides)",
    )
    parser.add_argument(
        "--as",
        dest="role",
        choices=sorted(CHECKS),
        default=None,
        help="treat BACKEND itself as the single callable of this check (e.g. --as sampler for a bare function)",
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed handed to the sampler (default 0)")
    parser.add_argument(
        "--alpha", type=float, default=DEFAULT_ALPHA, help=f"false-alarm rate of the run (default {DEFAULT_ALPHA:g})"
    )
    parser.add_argument(
        "--tv",
        type=float,
        default=DEFAULT_TV,
        help=f"TV error the sampler test must detect; sets the sample size ~ 1/tv^2 (default {DEFAULT_TV:g})",
    )
    parser.add_argument(
        "--power", type=float, default=DEFAULT_POWER, help=f"detection probability at that TV (default {DEFAULT_POWER:g})"
    )
    parser.add_argument(
        "--golden",
        choices=("check", "regenerate"),
        default=None,
        help="instead of a backend: compare the reference with its golden vectors (reference/golden/*.npz), "
        "or regenerate them",
    )
    parser.add_argument(
        "--golden-dir", default=None, help="directory of the golden vectors (default: the package's reference/golden)"
    )


def run(args: argparse.Namespace) -> int:
    """Run the checks; print the report; 0 when every check passes, 1 otherwise."""
    if args.golden is not None:
        from reference import golden

        return golden.cli(args.golden, args.golden_dir)
    if args.backend is None:
        raise ValueError("BACKEND: expected 'module:object' (or --golden check|regenerate)")
    check_positive(args.alpha, "--alpha")
    if not args.alpha < 1:
        raise ValueError(f"--alpha: expected a false-alarm rate in (0, 1), got {args.alpha}")
    check_positive(args.tv, "--tv")
    checks = None if args.checks is None else [c.strip() for c in args.checks.split(",") if c.strip()]
    try:
        obj = load_backend(args.backend)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    backend: Any = obj
    if args.role is not None:
        backend = {CHECKS[args.role][0]: obj}
        checks = checks or [args.role]
    elif callable(obj) and not any(_provided(obj, attr) for attr, _ in CHECKS.values()):
        print(f"note: {args.backend} is a bare callable; checking it as a sampler (use --as to choose)")
        backend = {"sample": obj}
    report = run_conformance(
        backend, checks, alpha=args.alpha, tv=args.tv, power=args.power, seed=args.seed, name=args.backend
    )
    print(report.format())
    return 0 if report.passed else 1
