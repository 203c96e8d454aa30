"""The statistics of the sampler check: the G-test's power and the sample size.

The test itself is :func:`reference.stats.g_test`, the one G-test of the
repository (re-exported by :mod:`reference.conformance`). This module says
what it can detect: :func:`detectable_tv` (the smallest TV error detected with
a given power), :func:`power_against` (the probability of failing a sampler
whose per-draw distribution is known) and :func:`sample_size_for_tv`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import optimize, stats

from reference._validation import as_float_array, check_int, check_positive
from reference.stats import MIN_EXPECTED, merge_small_bins, williams_factor

__all__ = ["DEFAULT_ALPHA", "DEFAULT_TV", "DEFAULT_POWER", "IMPOSSIBLE_PROBABILITY",
           "detectable_tv", "point_mass_tv", "power_against", "sample_size_for_tv"]

#: Default total false-alarm rate of a conformance run (the sampler G-tests).
DEFAULT_ALPHA = 1e-6
#: Default TV error the sampler check must detect with probability DEFAULT_POWER.
DEFAULT_TV = 0.05
DEFAULT_POWER = 0.9
#: A draw of a target whose probability is below this is an error on its own
#: (the chance that a correct sampler makes one is below 1e-20 in any run).
IMPOSSIBLE_PROBABILITY = 1e-30


def point_mass_tv(n: int, power: float) -> float:
    """Smallest TV error that n draws detect with probability ``power`` when P is a point mass.

    When one target has P >= :data:`IMPOSSIBLE_PROBABILITY`, a Q at TV
    distance delta puts delta on the others, one draw of which fails the
    check on its own: it is caught with probability 1 - (1 - delta)^n, at
    least ``power`` for delta >= 1 - (1 - power)^(1/n). (The G-test has no
    degree of freedom there: :func:`detectable_tv` is ``inf``.)

    Parameters
    ----------
    n : int
        Number of draws, >= 1.
    power : float
        Required detection probability, in (0, 1).

    Returns
    -------
    float
        1 - (1 - power)^(1/n), in (0, 1).
    """
    n = check_int(n, "n", low=1)
    power = _in_range(power, "power", "a probability")
    return -math.expm1(math.log1p(-power) / n)


def _in_range(value: Any, name: str, what: str, low: float = 0.0) -> float:
    """``value`` as a float in (low, 1), else a ``ValueError`` naming ``name``, the range and the value."""
    try:
        v = check_positive(value, name)
    except ValueError:  # a string, a bool, NaN, <= 0: the message below says what is expected
        v = math.nan
    if not low < v < 1:
        interval = "(0, 1)" if low == 0 else f"(alpha={low}, 1)"
        raise ValueError(f"{name}: expected {what} in {interval}, got {value!r}")
    return v


def _distribution(probabilities: Any) -> np.ndarray:
    """One exact distribution: a finite non-negative vector, else a ``ValueError`` naming ``probabilities``."""
    p = as_float_array(probabilities, "probabilities", ndim=1)
    if (p < 0).any():
        raise ValueError(f"probabilities: expected non-negative values, got minimum {float(p.min())!r}")
    return p


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
        collapse to one (df = 0), as for a point mass (see
        :func:`point_mass_tv` for what the check detects then).
    """
    p = _distribution(probabilities)
    n = check_int(n, "n", low=1)
    alpha = _in_range(alpha, "alpha", "a level")
    power = _in_range(power, "power", "a probability", low=alpha)
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
    p = _distribution(probabilities)
    q = as_float_array(alternative, "alternative", ndim=1)
    expected = f"alternative: expected {p.shape[0]} non-negative weights with a positive sum"
    if q.shape != p.shape:
        raise ValueError(f"{expected} (one per entry of probabilities), got {q.shape[0]}")
    if (q < 0).any():
        raise ValueError(f"{expected}, got minimum {float(q.min())!r}")
    if not q.sum() > 0:
        raise ValueError(f"{expected}, got sum {float(q.sum())!r}")
    n = check_int(n, "n", low=1)
    alpha = _in_range(alpha, "alpha", "a level")
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
    delta* ~ 1 / sqrt(n)). A row with one target of P >=
    :data:`IMPOSSIBLE_PROBABILITY` (a point mass, checked by its impossible
    draws: :func:`point_mass_tv`) needs n >= log(1 - power) / log(1 - tv).

    Parameters
    ----------
    probabilities : array_like, shape (B, bins) or (bins,)
        One exact distribution per query.
    tv : float
        Target TV error, in (0, 1).
    alpha, power, min_expected
        As in :func:`detectable_tv`.
    max_n : int, default 2_000_000
        Give up (``ValueError``) beyond this many draws per query (the first n
        tried is max(4 min_expected, 64)).

    Returns
    -------
    int
        n.
    """
    P = np.atleast_2d(as_float_array(probabilities, "probabilities"))
    if P.ndim != 2:
        raise ValueError(f"probabilities: expected shape (B, bins) or (bins,), got {P.shape}")
    tv = _in_range(tv, "tv", "a TV distance")
    alpha = _in_range(alpha, "alpha", "a level")
    power = _in_range(power, "power", "a probability", low=alpha)
    max_n = check_int(max_n, "max_n", low=1)
    n = max(int(math.ceil(4 * min_expected)), 64)
    # Point masses (one target of P >= IMPOSSIBLE_PROBABILITY): point_mass_tv = 1 - (1 - power)^(1/n) <= tv
    # exactly when n >= log(1 - power) / log(1 - tv); the other rows need the G-test's iteration.
    point = np.count_nonzero(P >= IMPOSSIBLE_PROBABILITY, axis=1) == 1
    if point.any():
        n = max(n, int(math.ceil(math.log1p(-power) / math.log1p(-tv))))
    rows = np.flatnonzero(~point)
    why = f"the first n tried is {n}"
    while n <= max_n:
        if rows.size == 0:
            return n
        det = [detectable_tv(P[b], n, alpha, power=power, min_expected=min_expected) for b in rows]
        worst = max(det)
        if worst <= tv:
            return n
        b = int(rows[int(np.argmax(det))])
        why = (f"row {b} of probabilities detects only {worst:.3g} at n = {n}" if math.isfinite(worst) else
               f"row {b} of probabilities leaves the G-test one merged group at n = {n}")
        ratio = 4.0 if not math.isfinite(worst) else max((worst / tv) ** 2, 1.05)
        n = int(math.ceil(n * ratio))
    raise ValueError(
        f"tv: detecting a TV error of {tv} needs more than max_n={max_n} draws per query "
        f"({why})"
    )


