"""Running a backend through the kit: which checks apply, whether its callables fit, the report.

:func:`run_conformance` finds the backend's callables, checks each one's
signature against its protocol before calling it (so that a function written
for another protocol gets a message naming it and the expected signature, not
a ``TypeError`` from inside the kit), runs the checks and collects one
:class:`~reference.conformance.report.ConformanceReport`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from reference._validation import check_choice
from reference.conformance._calls import DEFAULT_TIME_LIMIT, check_false_alarm_rate, check_time_limit
from reference.conformance.bracket import check_bracket
from reference.conformance.dynamic import check_dynamic
from reference.conformance.encoder import check_encoder
from reference.conformance.nystrom import check_nystrom
from reference.conformance.precision import check_dtype, declared_dtype
from reference.conformance.report import CheckReport, ConformanceReport
from reference.conformance.sampler import check_sampler
from reference.conformance.statistics import DEFAULT_ALPHA, DEFAULT_POWER, DEFAULT_TV
from reference.conformance.topk import check_topk

__all__ = ["CHECKS", "SIGNATURES", "protocol_signature", "fits", "fitting_checks", "run_conformance", "load_backend"]

#: check name -> (the backend attribute it needs, the check function).
CHECKS: dict[str, tuple[str, Callable[..., CheckReport]]] = {
    "sampler": ("sample", check_sampler),
    "encoder": ("encoder", check_encoder),
    "bracket": ("bracket", check_bracket),
    "topk": ("topk", check_topk),
    "nystrom": ("nystrom", check_nystrom),
    "dynamic": ("dynamic_build", check_dynamic),
}

#: check name -> (positional parameters, keyword parameters) of its protocol.
SIGNATURES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "sampler": (("points", "queries", "n", "seed"), ()),
    "encoder": (("params", "config", "X", "pos", "Y"), ("neg", "log_q")),
    "bracket": (("points", "queries", "tol"), ()),
    "topk": (("points", "queries", "k"), ()),
    "nystrom": (("G0", "landmarks", "G_L", "kernel"), ()),
    "dynamic": (("points",), ()),
}


def protocol_signature(check: str) -> str:
    """The protocol's call as text, e.g. ``"topk(points, queries, k)"``."""
    positional, keywords = SIGNATURES[check]
    return f"{CHECKS[check][0]}({', '.join([*positional, *(f'{k}=None' for k in keywords)])})"


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins and C extensions have none
        return None


def fits(fn: Callable[..., Any], check: str) -> bool | None:
    """Whether ``fn`` can be called as the protocol of ``check`` (None: its signature is unknown)."""
    sig = _signature(fn)
    if sig is None:
        return None
    positional, keywords = SIGNATURES[check]
    try:
        sig.bind(*positional)
        if keywords:
            sig.bind(*positional, **{k: None for k in keywords})
    except TypeError:
        return False
    return True


def fitting_checks(fn: Callable[..., Any]) -> list[str]:
    """The checks whose protocol ``fn``'s signature fits (all but ``dynamic`` when it is unknown).

    A bare ``dynamic_build`` (one required parameter) is recognised only when its
    first parameter is named ``points``, whatever follows it (defaulted,
    keyword-only, ``*args``, ``**kwargs``).

    When several fit (``bracket`` and ``topk`` both take three arguments), the one
    whose parameter names ``fn`` uses, if exactly one, is the answer.
    """
    fit = [c for c in CHECKS if fits(fn, c) is not False]
    # One parameter is too common a signature: a bare dynamic_build is recognised by its name ``points``.
    fit = [c for c in fit if c != "dynamic" or _parameter_names(fn)[:1] == ("points",)]
    if len(fit) > 1:
        names = _parameter_names(fn)
        named = [c for c in fit if names[: len(SIGNATURES[c][0])] == SIGNATURES[c][0]]
        fit = named if len(named) == 1 else fit
    return fit


def _parameter_names(fn: Callable[..., Any]) -> tuple[str, ...]:
    sig = _signature(fn)
    return () if sig is None else tuple(sig.parameters)


def call_text(fn: Callable[..., Any]) -> str:
    """``module.name(its, parameters)``, without annotations."""
    return f"{adapter_name(fn)}({', '.join(_parameter_names(fn))})"


def adapter_name(fn: Any) -> str:
    """How messages name a backend's callable: ``module.qualname`` where known."""
    module = getattr(fn, "__module__", None)
    qual = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return f"{module}.{qual}" if module else str(qual)


def mismatch(fn: Callable[..., Any], check: str) -> str | None:
    """A message when ``fn`` does not fit the protocol of ``check`` (None when it fits or cannot be told)."""
    if fits(fn, check) is not False:
        return None
    others = [c for c in fitting_checks(fn) if c != check]
    hint = ""
    if len(others) == 1:
        hint = f"; it fits {protocol_signature(others[0])}: check it with --as {others[0]}"
    elif others:
        hint = f"; it fits {' and '.join(protocol_signature(c) for c in others)}: choose one with --as"
    return (f"`{call_text(fn)}` does not fit the protocol: expected "
            f"{protocol_signature(check)}{hint}")


def _provided(backend: Any, attribute: str) -> Callable[..., Any] | None:
    """The backend's callable ``attribute`` (attribute or mapping key), or None."""
    fn = backend.get(attribute) if isinstance(backend, Mapping) else getattr(backend, attribute, None)
    return fn if callable(fn) else None


def provides_any(backend: Any) -> bool:
    """Whether the backend has at least one of the protocols' callables."""
    return any(_provided(backend, attr) is not None for attr, _ in CHECKS.values())


def run_conformance(
    backend: Any,
    checks: Sequence[str] | None = None,
    *,
    alpha: float = DEFAULT_ALPHA,
    tv: float = DEFAULT_TV,
    power: float = DEFAULT_POWER,
    seed: int = 0,
    name: str | None = None,
    dtype: str | None = None,
    time_limit: float | None = DEFAULT_TIME_LIMIT,
    scenarios: Mapping[str, Sequence[Any]] | None = None,
) -> ConformanceReport:
    """Run every check whose callable the backend provides.

    Parameters
    ----------
    backend : object or mapping
        Provides some of ``sample``, ``encoder``, ``bracket``, ``topk``,
        ``nystrom``, ``dynamic_build`` (attributes or keys; see :mod:`reference.conformance`),
        and optionally ``dtype`` (the precision of its logits).
    checks : sequence of str, optional
        Names from :data:`CHECKS` to run. Default: all the backend provides
        (the others are reported as skipped). A check named here that the
        backend does not provide fails.
    alpha, tv, power, seed
        Passed to :func:`check_sampler` and :func:`check_dynamic` (``alpha``
        is the run's false-alarm rate, in (0, 1), checked here whatever runs:
        split evenly between them when both run).
    name : str, optional
        How the report names the backend.
    dtype : {"float64", "float32"}, optional
        The precision of the backend's logits; default its ``dtype``
        attribute, else "float64". Sets the tolerance of the top-k and
        bracket checks (:mod:`reference.conformance.precision`).
    time_limit : float or None, default 600
        Seconds each backend call may take (None or 0: no limit).
    scenarios : mapping, optional
        Check name -> its scenarios, replacing the defaults (for "dynamic":
        its script, a sequence of :class:`~reference.conformance.dynamic.DynamicStep`);
        only these checks run (e.g. the user's data: ``python -m reference
        conformance --targets``).

    Returns
    -------
    ConformanceReport
    """
    only = None if scenarios is None else [check_choice(c, "scenarios", CHECKS) for c in scenarios]
    if checks is None:
        selected, required = [c for c in CHECKS if only is None or c in only], False
    else:
        selected = [check_choice(c, "checks", CHECKS) for c in checks]
        required = True
    dtype = declared_dtype(backend) if dtype is None else check_dtype(dtype)
    time_limit = check_time_limit(time_limit)
    alpha = check_false_alarm_rate(alpha)  # the run's rate, before it is split (each share is checked again)
    # The random checks (the sampler and the dynamic check's sampler steps) share the run's alpha.
    random = [c for c in ("sampler", "dynamic") if c in selected and (only is None or c in only)
              and _provided(backend, CHECKS[c][0]) is not None]
    share = alpha / max(1, len(random))
    report = ConformanceReport(name or repr(backend)[:80], alpha=alpha, dtype=dtype,
                               protocols=tuple(a for a, _ in CHECKS.values()))
    for check_name in selected:
        attribute, check = CHECKS[check_name]
        fn = _provided(backend, attribute)
        if only is not None and check_name not in only:
            report.checks.append(CheckReport(check_name, "", skipped="not run on the given data"))
            continue
        if fn is None:
            if required:
                report.checks.append(CheckReport(
                    check_name, "", error=f"requested, but the backend has no callable `{attribute}`"))
            else:
                report.checks.append(CheckReport(check_name, "", skipped="not provided by the backend"))
            continue
        wrong = mismatch(fn, check_name)
        if wrong is not None:
            report.checks.append(CheckReport(check_name, "", error=wrong))
            continue
        kwargs: dict[str, Any] = {"time_limit": time_limit}
        if scenarios is not None:  # check_dynamic calls its scenarios a script
            kwargs["script" if check_name == "dynamic" else "scenarios"] = scenarios[check_name]
        if check_name in ("sampler", "dynamic"):
            kwargs.update(alpha=share, tv=tv, power=power, seed=seed)
        if check_name in ("topk", "bracket", "dynamic"):
            kwargs["dtype"] = dtype
        report.checks.append(check(fn, **kwargs))
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
    except BaseException as exc:  # noqa: B036 - importing runs the backend's code: even sys.exit is a finding
        raise ValueError(f"BACKEND: importing module {module_name!r} raised {type(exc).__name__}: {exc}") from None
    for part in obj_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"BACKEND: {module_name!r} has no attribute {obj_path!r} (missing {part!r})") from None
    return obj
