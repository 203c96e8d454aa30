"""The precision a backend declares, and the rounding bound the kit grants it.

A backend may declare the precision in which it computes logits with an
attribute (or mapping key) ``dtype``: ``"float32"`` or ``"float64"``
(absent means ``"float64"``); ``python -m reference conformance --dtype``
overrides it. The kit hands every backend float64 arrays; a backend that
rounds them to float32 and computes a logit ``<q, z>`` as a d-term dot
product in float32 gets a different number from the kit's float64 oracle,
and the checks that compare computed logits (top-k and bracket) accept the
difference up to the bound derived in proofs/README.md ("The rounding bound
of a declared precision"):

    |a_hat(y) - a_oracle(y)| <= (gamma_{d+2}(u_p) + gamma_d(u_64)) |q|.|z_y|,

where ``|q|.|z_y| = sum_i |q_i| |z_yi|`` (at most ``||q|| ||z_y||``),
``gamma_n(u) = n u / (1 - n u)``, ``u_p`` the unit roundoff of the declared
precision (2^-24 for float32, 2^-53 for float64) and ``u_64 = 2^-53`` (the
oracle's own rounding). The kit uses :data:`SAFETY` times this bound, so its
own float64 rounding in forming the bound and the comparisons cannot reject
a backend that meets it. The bound holds whatever order the backend sums
in (blocked, pairwise, with FMA), provided no rounding underflows or
overflows in the declared precision; :func:`normal_range_problem` checks
the sufficient condition on the data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["PRECISIONS", "SAFETY", "unit_roundoff", "gamma", "logit_error_factor", "logit_error_bounds",
           "normal_range_problem", "exact_logits", "declared_dtype", "check_dtype"]

#: The precisions a backend may declare.
PRECISIONS = ("float64", "float32")
#: The kit's tolerance is SAFETY times the derived bound (see the module docstring).
SAFETY = 2.0


def check_dtype(value: Any, name: str = "dtype") -> str:
    """``"float32"`` or ``"float64"`` (NumPy dtypes and their names accepted), else ``ValueError``."""
    try:
        dt = np.dtype(value).name if value is not None else None
    except TypeError:
        dt = None
    if dt not in PRECISIONS:
        raise ValueError(f"{name}: expected one of {', '.join(PRECISIONS)}, got {value!r}")
    return dt


def declared_dtype(backend: Any) -> str:
    """The precision a backend declares (its ``dtype`` attribute or key), default ``"float64"``."""
    value = backend.get("dtype") if isinstance(backend, Mapping) else getattr(backend, "dtype", None)
    return "float64" if value is None else check_dtype(value, "backend dtype")


def unit_roundoff(dtype: str) -> float:
    """u = 2^-p for a p-bit significand: 2^-24 (float32), 2^-53 (float64)."""
    return float(np.finfo(check_dtype(dtype)).eps) / 2.0


def gamma(n: int, u: float) -> float:
    """gamma_n(u) = n u / (1 - n u): the relative error of n roundings (requires n u < 1)."""
    if not n * u < 1:
        raise ValueError(f"n: expected n * u < 1, got n = {n}, u = {u:g}")
    return n * u / (1.0 - n * u)


def logit_error_factor(dtype: str, d: int) -> float:
    """SAFETY * (gamma_{d+2}(u_p) + gamma_d(u_64)): the kit's tolerance per unit of |q|.|z|."""
    return SAFETY * (gamma(d + 2, unit_roundoff(dtype)) + gamma(d, unit_roundoff("float64")))


def logit_error_bounds(queries: np.ndarray, points: np.ndarray, dtype: str) -> np.ndarray:
    """e[b, y] = :func:`logit_error_factor` * |q_b|.|z_y|: how far a backend's logit may be from the oracle's."""
    return logit_error_factor(dtype, queries.shape[1]) * (np.abs(queries) @ np.abs(points).T)


def normal_range_problem(points: np.ndarray, queries: np.ndarray, dtype: str) -> str | None:
    """Why the rounding bound may not hold for these inputs in ``dtype`` (None when it holds).

    Sufficient condition: every nonzero |q_i| and |z_i|, and the smallest
    nonzero |q_i| times the smallest nonzero |z_i|, are at least the smallest
    normal number of ``dtype`` (no input or product rounding underflows; an
    addition whose result is subnormal is exact), and d max|q_i| max|z_i| is at
    most half its largest number (no partial sum overflows, rounding included).
    """
    info = np.finfo(check_dtype(dtype))
    tiny, big = float(info.tiny), float(info.max)
    d = queries.shape[1]

    def extremes(x: np.ndarray) -> tuple[float, float]:
        a = np.abs(x)
        nz = a[a > 0]
        return (float(nz.min()) if nz.size else np.inf), (float(a.max()) if a.size else 0.0)

    (q_min, q_max), (z_min, z_max) = extremes(queries), extremes(points)
    if min(q_min, z_min) < tiny or (np.isfinite(q_min * z_min) and q_min * z_min < tiny):
        return (f"nonzero entries as small as {min(q_min, z_min):.3g} (products {q_min * z_min:.3g}) underflow "
                f"in {dtype} (smallest normal {tiny:.3g})")
    if d * q_max * z_max > big / 2:
        return f"logits up to {d * q_max * z_max:.3g} may overflow in {dtype} (half its largest number: {big / 2:.3g})"
    return None


def _dyadic_exponent(x: np.ndarray) -> np.ndarray:
    """Per row of ``x``, the smallest k in 0..64 with x * 2^k all integers (inf when there is none)."""
    out = np.full(x.shape[0], np.inf)
    finite = np.isfinite(x).all(axis=1)
    with np.errstate(over="ignore"):  # |x| >= 2^53 is already whole at k = 0; its overflow to inf later is moot
        for k in range(65):
            y = x * 2.0**k  # exact: a power of two
            whole = finite & np.isinf(out) & np.all(y == np.floor(y), axis=1)
            out[whole] = k
    return out


def exact_logits(query: np.ndarray, points: np.ndarray, dtype: str) -> np.ndarray:
    """Whether <query, z> is computed exactly in ``dtype`` whatever the order of summation, per row z.

    True when the query is zero, or when query * 2^a and z * 2^b are integer
    vectors (a, b <= 64) with sum_i |q_i z_i| 2^(a+b) < 2^t, t = 24 (float32)
    or 53 (float64): then every input, product and partial sum is an integer
    times 2^-(a+b) of fewer than t bits, so no rounding happens
    (proofs/README.md section 9.1). Equal logits of such targets are equal in
    any correct backend's arithmetic too, so the smaller-id rule can be required.
    """
    if not query.any():
        return np.ones(points.shape[0], dtype=bool)
    bits = np.finfo(check_dtype(dtype)).nmant + 1
    a = _dyadic_exponent(query[None, :])[0]
    b = _dyadic_exponent(points)
    if not np.isfinite(a):
        return np.zeros(points.shape[0], dtype=bool)
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = (np.abs(points) @ np.abs(query)) * 2.0 ** np.where(np.isfinite(b), a + b, 0.0)
    return np.isfinite(b) & (scaled < 2.0**bits)

