"""Internal: calling a backend so that nothing it does can crash, hang or fool the kit.

Not public API. :func:`call_backend` is the one place where the checks of
:mod:`reference.conformance` call a backend. It

- hands the backend fresh copies of its array arguments and afterwards
  compares them with the originals (a backend that writes into its inputs
  fails, whatever the protocol);
- runs the call, and the conversion of its output to NumPy (a tensor's
  ``__array__`` is backend code too), in a worker thread and waits at most
  ``time_limit`` seconds for it;
- catches every exception of the backend, ``SystemExit`` and
  ``KeyboardInterrupt`` included, and turns it into a one-line finding that
  names the call.

What the time limit cannot do: Python cannot stop a thread, so a call that
exceeds the limit is reported as a failure and left running in the
background (a daemon thread: it dies with the process, and until then it
keeps its CPU and memory). A backend that never releases the GIL (a C
extension looping without releasing it) blocks the kit's own thread as well,
and a backend that ends the process itself (``os._exit``, a segmentation
fault) ends the kit with it; nothing inside one process can prevent that.
"""

from __future__ import annotations

import math
import os
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from reference._validation import check_positive

#: Default time limit of one backend call, in seconds (``--time-limit``).
DEFAULT_TIME_LIMIT = 600.0

_KIT_DIR = os.path.dirname(os.path.abspath(__file__))


class Declined(Exception):
    """The backend raised NotImplementedError where declining is allowed."""


def check_callable(fn: Any, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``fn`` is callable (the first check of every ``check_*``)."""
    if not callable(fn):
        raise ValueError(f"{name}: expected a callable, got {type(fn).__name__}")


def check_false_alarm_rate(value: Any, name: str = "alpha") -> float:
    """A check's total false-alarm rate, a number in (0, 1), as a float (else ``ValueError`` naming ``name``)."""
    alpha = check_positive(value, name)
    if alpha >= 1:
        raise ValueError(f"{name}: expected a false-alarm rate in (0, 1), got {alpha}")
    return alpha


def check_time_limit(value: Any, name: str = "time_limit") -> float | None:
    """``None`` or a positive number of seconds (0 and ``None`` mean no limit)."""
    if value is None:
        return None
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number of seconds (0 for no limit), got {value!r}") from None
    if not (t >= 0 and math.isfinite(t)):
        raise ValueError(f"{name}: expected a finite number of seconds >= 0 (0 for no limit), got {value!r}")
    return None if t == 0 else t


def _fresh(x: Any) -> Any:
    """A copy of an array argument (or of a dict of them); other arguments as they are."""
    if isinstance(x, np.ndarray):
        return x.copy()
    if isinstance(x, dict):
        return {k: _fresh(v) for k, v in x.items()}
    return x


def _same(original: Any, passed: Any) -> bool:
    """Whether the backend left an argument as it was given (arrays bit for bit, dicts key by key)."""
    if isinstance(original, np.ndarray):
        return (
            isinstance(passed, np.ndarray)
            and passed.shape == original.shape
            and passed.dtype == original.dtype
            and np.array_equal(passed, original, equal_nan=original.dtype.kind in "fc")
        )
    if isinstance(original, dict):
        return (
            isinstance(passed, dict)
            and passed.keys() == original.keys()
            and all(_same(original[k], passed[k]) for k in original)
        )
    return True


def describe(name: str, value: Any) -> str:
    """One argument of a call, as the report shows it: arrays by shape, scalars by value."""
    if isinstance(value, np.ndarray):
        return f"{name} {tuple(value.shape)}"
    if isinstance(value, dict):
        return f"{name}={{...}}"
    return f"{name}={value!r}"


def _location(exc: BaseException) -> str:
    """Where the exception was raised: the innermost frame outside the kit."""
    frames = traceback.extract_tb(exc.__traceback__)
    outside = [f for f in frames if not os.path.abspath(f.filename).startswith(_KIT_DIR)]
    if not outside:
        return "raised when the kit called it: do its parameters fit the protocol?"
    f = outside[-1]
    return f"at {os.path.basename(f.filename)}:{f.lineno}"


def call_backend(
    fn: Callable[..., Any],
    protocol: str,
    args: Sequence[tuple[str, Any]],
    kwargs: Sequence[tuple[str, Any]] = (),
    *,
    convert: Callable[[Any], Any] | None = None,
    time_limit: float | None = DEFAULT_TIME_LIMIT,
    may_decline: bool = False,
) -> tuple[Any, str | None]:
    """Call ``fn`` with copies of ``args``; return (its converted output, None) or (None, a finding).

    Parameters
    ----------
    fn : callable
        The backend's callable.
    protocol : str
        Its protocol name ("topk", ...), used in the messages.
    args, kwargs : sequence of (name, value)
        Positional and keyword arguments, named as in the protocol. Arrays
        (and dicts of arrays) are copied before the call and compared with
        the originals after it.
    convert : callable, optional
        Applied to the output inside the same guarded, time-limited call
        (e.g. ``numpy.asarray``): whatever the output's own methods do is the
        backend's doing.
    time_limit : float or None, default DEFAULT_TIME_LIMIT
        Seconds to wait for the call and the conversion together; None waits forever.
    may_decline : bool, default False
        Re-raise ``NotImplementedError`` as :class:`Declined` (the scenario is
        skipped) instead of reporting it as a failure.

    Returns
    -------
    (value, None) or (None, str)
        The finding names the call, e.g. ``"topk(points (500, 8), queries
        (6, 8), k=10) raised SystemExit: 0 (at mybackend.py:12)"``.
    """
    label = f"{protocol}({', '.join(describe(n, v) for n, v in [*args, *kwargs])})"
    passed_args = [_fresh(v) for _, v in args]
    passed_kwargs = {n: _fresh(v) for n, v in kwargs}
    box: dict[str, Any] = {"stage": "call"}

    def work() -> None:
        try:
            out = fn(*passed_args, **passed_kwargs)
            box["stage"] = "convert"
            box["value"] = convert(out) if convert is not None else out
        except BaseException as exc:  # noqa: B036 - SystemExit and KeyboardInterrupt too: a finding, never an exit
            box["error"] = exc

    worker = threading.Thread(target=work, name=f"conformance {protocol}", daemon=True)
    worker.start()
    worker.join(time_limit)
    if worker.is_alive():
        doing = "converting its output" if box["stage"] == "convert" else "the call"
        return None, (
            f"{label} did not return within the time limit of {time_limit:g} s ({doing} was still running; "
            "it is left running in a background thread; set the limit with --time-limit)"
        )
    if "error" in box:
        exc = box["error"]
        if isinstance(exc, NotImplementedError) and may_decline:
            raise Declined(str(exc))
        what = "converting the output of " if box["stage"] == "convert" else ""
        return None, f"{what}{label} raised {type(exc).__name__}: {str(exc)[:300]} ({_location(exc)})"
    changed = [n for (n, v), p in zip(args, passed_args) if not _same(v, p)]
    changed += [n for n, v in kwargs if not _same(v, passed_kwargs[n])]
    if changed:
        return None, (
            f"{label} modified its input{'s' if len(changed) > 1 else ''} {', '.join(changed)} "
            "(no protocol allows it: a caller's arrays would change under it)"
        )
    if "value" not in box:  # cannot happen unless the thread was ended from outside
        return None, f"{label} ended without a result"
    return box["value"], None
