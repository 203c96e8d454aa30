"""The command line: ``python -m reference conformance BACKEND [options]``.

Exits 0 when every check that ran passed, 1 otherwise (a failing check, a
backend that cannot be loaded or whose callable fits no protocol), 2 on bad
options. The first line printed is the verdict and, for a failure, the most
serious thing wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any

import numpy as np

from reference._validation import check_int, check_output_dir, check_positive
from reference.conformance._calls import DEFAULT_TIME_LIMIT, check_false_alarm_rate, check_time_limit
from reference.conformance.precision import PRECISIONS, declared_dtype
from reference.conformance.runner import (
    CHECKS,
    call_text,
    fitting_checks,
    load_backend,
    protocol_signature,
    provides_any,
    run_conformance,
)
from reference.conformance.sampler import SamplerScenario
from reference.conformance.statistics import DEFAULT_ALPHA, DEFAULT_POWER, DEFAULT_TV
from reference.conformance.topk import TopkScenario

__all__ = ["USER_SAMPLER_QUERIES", "load_user_data", "user_scenarios", "add_arguments", "run"]

#: On the user's data the sampler check uses the first this many queries (its exact
#: softmax and the draw counts are (queries, N) arrays: 128 MiB each at N = 1e6).
USER_SAMPLER_QUERIES = 16


def load_user_data(targets: Any, queries: Any) -> tuple[np.ndarray, np.ndarray]:
    """The user's targets Z (N, d) and queries Q (B, d) from ``.npy`` files (or arrays), as float64.

    Read and validated by :func:`reference.data.load_dataset`, exactly as
    ``compare --targets/--queries`` reads them (a readable ``.npy`` of one
    real numeric array, no pickles, 2-D, non-empty, finite, N >= 2; or a
    NumPy array, which ``load_dataset`` takes too); the queries must have the
    targets' d columns. ``load_dataset`` also wants positives and a split: the
    queries are given as their own test set with placeholder positives
    (target 0), and only the arrays are kept.

    Parameters
    ----------
    targets : path-like or ndarray, shape (N, d)
    queries : path-like or ndarray, shape (B, d)
        Anything else (a list, None, an int: not a file descriptor) is refused naming ``queries``.

    Returns
    -------
    Z : ndarray (N, d) float64
    Q : ndarray (B, d) float64

    Raises
    ------
    ValueError
        Naming ``targets`` or ``queries`` (and the file, for a path), what was expected and what came.
    """
    from reference.data import load_dataset

    # The number of queries, only to size the placeholder positives. Anything but a path or an array
    # is refused here, naming `queries` (load_dataset would blame the placeholder for a None, which it
    # takes for "no test set"; os.path.isfile raises TypeError on a list and takes an int for a file
    # descriptor). A path is opened only when it is a regular file (np.load would block on a FIFO,
    # which load_dataset refuses without reading it); whatever else is wrong with it, load_dataset
    # says, before it reads the placeholder: the default rows = 1 never reaches a message.
    rows = 1
    if isinstance(queries, np.ndarray):
        rows = queries.shape[0] if queries.ndim else 1
    elif not isinstance(queries, (str, os.PathLike)):
        raise ValueError(f"queries: expected a path to a .npy file or a numpy array, got {type(queries).__name__}")
    elif os.path.isfile(queries):
        with contextlib.suppress(Exception):  # unreadable or not an array: rows stays 1
            rows = int(np.load(queries, mmap_mode="r", allow_pickle=False).shape[0])
    placeholder = np.zeros(max(rows, 1), dtype=np.int64)
    data = load_dataset(queries, targets, placeholder, test_queries=queries, test_positives=placeholder)
    Z, Q = data.targets.astype(np.float64), data.test_x.astype(np.float64)
    if Q.shape[1] != Z.shape[1]:
        name = f"queries ({os.fspath(queries)})" if isinstance(queries, (str, os.PathLike)) else "queries"
        raise ValueError(f"{name}: expected {Z.shape[1]} columns (the targets' dimension), got shape {Q.shape}")
    return Z, Q


def user_scenarios(Z: np.ndarray, Q: np.ndarray, k: int, about: str) -> dict[str, list[Any]]:
    """The top-k and sampler scenarios of the user's data (``run_conformance(scenarios=...)``)."""
    k = check_int(k, "--k", low=1, high=Z.shape[0])
    S = min(Q.shape[0], USER_SAMPLER_QUERIES)
    return {
        "topk": [TopkScenario("your-data", Z, Q, k, f"{about}: {Z.shape[0]} targets, {Q.shape[0]} queries, k = {k}")],
        "sampler": [SamplerScenario("your-data", Z, Q[:S], f"{about}: {Z.shape[0]} targets, the first {S} queries")],
    }


#: The attribute :class:`_StoreGiven` sets on the namespace when ``--k`` is given (its default 10 is not).
_K_GIVEN = "k_given"


class _StoreGiven(argparse.Action):
    """Store the value, and note on the namespace that the option was given (``--k`` without data is refused)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, _K_GIVEN, True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m reference conformance``."""
    parser.add_argument(
        "backend",
        nargs="?",
        metavar="BACKEND",
        help="'module:object' providing some of sample / encoder / bracket / topk / nystrom / dynamic_build "
        "(e.g. reference.conformance:REFERENCE_BACKEND or reference.contrib.torch_backend:BACKEND), "
        "or a bare function of one protocol",
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
        help="treat BACKEND itself as the single callable of this check (a bare function whose signature "
        "fits exactly one protocol is recognised without it)",
    )
    parser.add_argument(
        "--dtype",
        choices=PRECISIONS,
        default=None,
        help="precision of the backend's logits (default: its `dtype` attribute, else float64); top-k and "
        "bracket accept the rounding of that precision (proofs/README.md, 'The rounding bound of a declared precision')",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=DEFAULT_TIME_LIMIT,
        metavar="SECONDS",
        help=f"time limit of each backend call; exceeding it is a FAIL (default {DEFAULT_TIME_LIMIT:g}; 0: none)",
    )
    parser.add_argument("--targets", default=None, metavar="Z.npy",
                        help="run the top-k and sampler checks on your own targets (N, d) ... ")
    parser.add_argument("--queries", default=None, metavar="Q.npy", help="... and queries (B, d), .npy files")
    parser.add_argument("--k", type=int, default=10, action=_StoreGiven,
                        help="k of the top-k check on your data (default 10)")
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


def _bare_callable_role(obj: Any, spec: str) -> tuple[str | None, str]:
    """(the check a bare callable is checked as, or None; the note or error to print)."""
    fit = fitting_checks(obj)
    expected = "; ".join(protocol_signature(c) for c in CHECKS)
    if len(fit) == 1:
        return fit[0], (f"note: {spec} is a bare callable whose signature fits {protocol_signature(fit[0])}: "
                        f"checking it as {fit[0]} (use --as to choose)")
    if not fit:
        return None, (f"FAIL: {spec} (`{call_text(obj)}`) is a callable whose signature fits no protocol; "
                      f"expected one of: {expected}; or an object providing them")
    return None, (f"FAIL: {spec} (`{call_text(obj)}`) fits several protocols "
                  f"({', '.join(protocol_signature(c) for c in fit)}): choose one with --as")


def run(args: argparse.Namespace) -> int:
    """Run the checks; print the report; 0 when every check passes, 1 otherwise."""
    if args.golden is not None:
        from reference import golden

        if args.golden == "regenerate" and args.golden_dir is not None:
            check_output_dir(args.golden_dir, "--golden-dir")  # before any vector is computed
        return golden.cli(args.golden, args.golden_dir)
    if args.backend is None:
        raise ValueError("BACKEND: expected 'module:object' (or --golden check|regenerate)")
    # Every option value is checked here, before any work, naming the option as typed: the checks
    # would refuse the same values only once a sampler runs, naming their own arguments (`seed`).
    alpha = check_false_alarm_rate(args.alpha, "--alpha")
    if not check_positive(args.tv, "--tv") < 1:
        raise ValueError(f"--tv: expected a TV distance in (0, 1), got {args.tv!r}")
    if not alpha < check_positive(args.power, "--power") < 1:  # the sampler's rule, at its largest alpha
        raise ValueError(f"--power: expected a detection probability in (--alpha = {alpha:g}, 1), got {args.power!r}")
    check_int(args.seed, "--seed", low=0)
    time_limit = check_time_limit(args.time_limit, "--time-limit")
    if (args.targets is None) != (args.queries is None):
        raise ValueError("--targets, --queries: expected both or neither")
    if args.targets is None and getattr(args, _K_GIVEN, False):
        raise ValueError(f"--k: the k of the top-k check on your data: expected --targets and --queries with it, "
                         f"got --k {args.k} alone (the kit's own top-k scenarios fix their k)")
    scenarios = None
    if args.targets is not None:
        Z, Q = load_user_data(args.targets, args.queries)
        scenarios = user_scenarios(Z, Q, args.k, f"{os.path.basename(args.targets)}, {os.path.basename(args.queries)}")
    checks = None if args.checks is None else [c.strip() for c in args.checks.split(",") if c.strip()]
    try:
        obj = load_backend(args.backend)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        dtype = args.dtype or declared_dtype(obj)
    except ValueError as exc:
        print(f"FAIL: {args.backend}: {exc} (or override it with --dtype)")
        return 1
    backend: Any = obj
    if args.role is not None:
        backend = {CHECKS[args.role][0]: obj}
        checks = checks or [args.role]
    elif callable(obj) and not provides_any(obj):
        role, message = _bare_callable_role(obj, args.backend)
        if role is None:
            print(message)
            return 1
        print(message, file=sys.stderr)  # stdout's first line stays the verdict
        backend = {CHECKS[role][0]: obj}
        checks = checks or [role]
    if scenarios is not None and checks is not None:
        other = sorted(set(checks) - set(scenarios))
        if other:
            raise ValueError(f"--checks: on --targets/--queries data only {' and '.join(scenarios)} run, got {other}")
        scenarios = {c: s for c, s in scenarios.items() if c in checks}
    try:
        report = run_conformance(
            backend, checks, alpha=args.alpha, tv=args.tv, power=args.power, seed=args.seed, name=args.backend,
            dtype=dtype, time_limit=time_limit, scenarios=scenarios,
        )
    except ValueError as exc:  # a --tv too small for the data: only the sampler's probabilities can tell
        text = str(exc)
        if text.startswith("tv: "):
            raise ValueError("--tv: " + text[len("tv: "):]) from None
        raise
    print(report.format())
    return 0 if report.passed else 1
