"""The Nystrom protocol: ``nystrom(G0, landmarks, G_L, kernel) -> Ghat``.

G0 (N, d) cached embeddings, landmarks (m,) int64 distinct ids, G_L (m, d_out)
the landmarks' current encodings, kernel a dict ``{"name": "linear",
"const": c}`` (kappa(a, b) = <a, b> + c^2), ``{"name": "rbf", "gamma": g}``
(exp(-g ||a - b||^2)) or ``{"name": "polynomial", "degree": p, "c": c}``
((<a, b> + c)^p). Must return Ghat (N, d_out) with
``Ghat[y] = G_L^T K_LL^{-1} k(y)``, i.e. ``W^T phi(y)`` with
``phi = K_LL^{-1/2} k(y)``, ``W = K_LL^{-1/2} G_L`` (proofs/README.md section
5; any square root gives the same Ghat). Checked by :func:`check_nystrom` on
well-conditioned K_LL to 1e-8 relative.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from reference._validation import (
    MAX_ABS_COORD,
    as_float_array,
    as_index_array,
    check_choice,
    check_int,
    check_nonnegative,
    check_positive,
)
from reference.conformance._calls import DEFAULT_TIME_LIMIT, call_backend, check_callable, check_time_limit
from reference.conformance._data import SCENARIO_SEED, clustered, scenario_label
from reference.conformance.report import Case, CheckReport, error_case

__all__ = ["NYSTROM_RTOL", "NYSTROM_MAX_COND", "NystromScenario", "nystrom_scenarios", "check_nystrom", "kernel_object"]

#: Nystrom agreement, relative to max |Ghat|: the scenarios keep cond(K_LL) <= 1e6,
#: so float64 solves agree to ~1e-10.
NYSTROM_RTOL = 1e-8
#: Largest condition number of K_LL a caller-given scenario may have: beyond it the
#: solve K_LL^{-1} k(y) loses more than ~1e-10 and :data:`NYSTROM_RTOL` means nothing.
NYSTROM_MAX_COND = 1e6
#: The kernel dicts of the protocol: name -> (parameter -> its validator), every parameter required.
_KERNEL_PARAMS: dict[str, dict[str, Callable[[Any, str], Any]]] = {
    "linear": {"const": check_nonnegative},
    "rbf": {"gamma": check_positive},
    "polynomial": {"degree": lambda v, name: check_int(v, name, low=1), "c": check_nonnegative},
}


@dataclass(frozen=True)
class NystromScenario:
    name: str
    G0: np.ndarray
    landmarks: np.ndarray
    G_L: np.ndarray
    kernel: dict[str, Any]
    about: str


def kernel_object(spec: Mapping[str, Any]) -> Any:
    """The reference kernel (:mod:`reference.nystrom`) for a protocol kernel dict."""
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
        G0 = clustered(rng, N, d, 6, 0.5) / np.sqrt(d)
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


def _checked_kernel(kernel: Any, name: str) -> dict[str, Any]:
    """A protocol kernel dict, validated: a mapping with a known ``name`` and exactly its parameters, in range."""
    if not isinstance(kernel, Mapping):
        raise ValueError(f"{name}: expected a dict with a 'name' and its parameters, got {type(kernel).__name__}")
    kind = check_choice(kernel.get("name"), f"{name}['name']", tuple(_KERNEL_PARAMS))
    params = _KERNEL_PARAMS[kind]
    keys = set(kernel) - {"name"}
    if keys != set(params):
        raise ValueError(f"{name}: expected the parameters {sorted(params)} of a {kind} kernel, "
                         f"got {sorted(map(str, keys))}")
    return {"name": kind, **{key: check(kernel[key], f"{name}[{key!r}]") for key, check in params.items()}}


def _checked_nystrom_scenarios(scenarios: Sequence[Any]) -> list[NystromScenario]:
    """Caller-given Nystrom scenarios, validated before the backend is called.

    Per scenario: class, name, about (:func:`~reference.conformance._data.scenario_label`);
    G0 a finite non-empty (N, d) array with |entries| <= MAX_ABS_COORD; landmarks m >= 1
    distinct integer ids in [0, N); G_L a finite (m, d_out) array, d_out >= 1, within
    MAX_ABS_COORD; kernel a protocol kernel dict; cond(K_LL) <= :data:`NYSTROM_MAX_COND`.
    """
    out = []
    for i, sc in enumerate(scenarios):
        label = scenario_label(sc, i, NystromScenario)
        G0 = as_float_array(sc.G0, f"{label}.G0", ndim=2, dtype=np.float64, max_abs=MAX_ABS_COORD)
        L = as_index_array(sc.landmarks, f"{label}.landmarks", upper=G0.shape[0], unique=True)
        G_L = as_float_array(sc.G_L, f"{label}.G_L", shape=(L.size, None), dtype=np.float64, max_abs=MAX_ABS_COORD)
        kernel = _checked_kernel(sc.kernel, f"{label}.kernel")
        K = kernel_object(kernel)(G0[L], G0[L])
        eig = np.linalg.eigvalsh(K)
        cond = float(eig[-1] / eig[0]) if eig[0] > 0 else np.inf
        if not cond <= NYSTROM_MAX_COND:
            raise ValueError(f"{label}.landmarks: expected landmarks whose kernel matrix K_LL has condition number "
                             f"<= {NYSTROM_MAX_COND:g} (the check's {NYSTROM_RTOL:g} needs an accurate solve), "
                             f"got {cond:.3g}")
        out.append(dataclasses.replace(sc, G0=G0, landmarks=L, G_L=G_L, kernel=kernel))
    return out


def _nystrom_oracle(sc: NystromScenario) -> np.ndarray:
    """Ghat from :class:`reference.nystrom.NystromMap` (no ridge, default cutoff)."""
    from reference.nystrom import NystromMap

    nm = NystromMap(kernel_object(sc.kernel)).fit(sc.G0, sc.landmarks)
    return nm.approximate(nm.features(sc.G0), nm.project(sc.G_L))


def _floats(result: Any) -> np.ndarray:
    return np.asarray(result, dtype=np.float64)


def check_nystrom(
    nystrom: Callable[..., Any],
    *,
    scenarios: Sequence[NystromScenario] | None = None,
    time_limit: float | None = DEFAULT_TIME_LIMIT,
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
        Default :func:`nystrom_scenarios`. Caller-given ones are validated first
        (every field; cond(K_LL) <= :data:`NYSTROM_MAX_COND`): a malformed one
        raises ``ValueError`` naming ``scenarios[i]``, its name and the field,
        before the backend is called.
    time_limit : float or None, default 600
        Seconds each call of the backend may take (None: no limit).

    Returns
    -------
    CheckReport
    """
    check_callable(nystrom, "nystrom")
    time_limit = check_time_limit(time_limit)
    scenarios = nystrom_scenarios() if scenarios is None else _checked_nystrom_scenarios(scenarios)
    report = CheckReport(
        "nystrom", f"Ghat = G_L^T K_LL^-1 k(y) for every target (proofs/README.md section 5), to {NYSTROM_RTOL:g} relative"
    )
    statistic = "max |Ghat - oracle| / max |oracle|"
    for sc in scenarios:
        want = _nystrom_oracle(sc)
        result, err = call_backend(
            nystrom, "nystrom",
            [("G0", sc.G0), ("landmarks", sc.landmarks), ("G_L", sc.G_L), ("kernel", dict(sc.kernel))],
            convert=_floats, time_limit=time_limit,
        )
        if err is None:
            got = result
            if got.shape != want.shape:
                err = f"expected Ghat of shape {want.shape}, got {got.shape}"
            elif not np.isfinite(got).all():
                err = f"Ghat: {int((~np.isfinite(got)).sum())} non-finite entries"
        if err is not None:
            report.cases.append(error_case(sc.name, statistic, NYSTROM_RTOL, "<=", err))
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
            Case(sc.name, statistic, value, NYSTROM_RTOL, "<=", value <= NYSTROM_RTOL, where, sc.about,
                 headline=f"Ghat off by {value:.3g} relative (> {NYSTROM_RTOL:g}) at {where}")
        )
    return report
