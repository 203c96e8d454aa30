"""Input validation shared by every public entry point.

Every public function of the package validates its inputs here, at the
boundary, and raises :class:`ValueError` naming what was expected and what
came. Nothing downstream has to defend against NaN, ``inf``, object arrays or
wrong shapes.

The magnitude limits are set here and only here (proofs/README.md section 2,
"Limits"): :data:`MAX_ABS_COORD` on coordinates of points, queries and
embeddings, :data:`MAX_LOGIT` on a query's logit scale on a tree
(:func:`check_logit_scale`), :data:`MAX_PARAM` on scalars that scale a
returned bound. Input beyond them is refused with a ``ValueError`` naming the
argument and the limit, so no overflow reaches a result.

Files handed to the package by path are read through :func:`read_regular_file`
(regular files only: a FIFO, a device or a directory is refused before a byte
is read, so nothing blocks or reads forever); ``.npy`` headers are parsed by
:func:`read_npy_header`, and a header is checked against the bytes that follow
it before anything is allocated. Output paths given on the command line are
checked by :func:`check_output_file` / :func:`check_output_dir` before any work.
Objects that check their own invariants (``check_invariants``) raise
:class:`InvariantError`.
"""

from __future__ import annotations

import math
import os
import stat
import tempfile
from collections.abc import Iterable
from typing import IO, Any

import numpy as np

__all__ = [
    "MAX_ABS_COORD",
    "MAX_LOGIT",
    "MAX_PARAM",
    "as_float_array",
    "as_index_array",
    "check_positive",
    "check_nonnegative",
    "check_int",
    "check_choice",
    "check_rng",
    "check_logit_scale",
    "InvariantError",
    "read_regular_file",
    "read_npy_header",
    "npy_data_bytes",
    "check_output_file",
    "check_output_dir",
]


class InvariantError(AssertionError):
    """An object's invariants are violated (``Tree``, ``NystromMap``, ``DynamicIndex.check_invariants``).

    An ``AssertionError``: for an object built by this package's own methods
    a violation is a bug, not bad input. :mod:`reference.persist` reports one
    found in a loaded file as a damaged file.
    """

# --------------------------------------------------------------------------
# Magnitude limits (proofs/README.md section 2, "Numerics"). The only place they are set.
# --------------------------------------------------------------------------

#: Largest accepted absolute coordinate of a vector handed to the package: target
#: points (``Tree.build`` / ``insert`` / ``update``), queries, embeddings and Nystrom
#: coordinates. Squares of such entries stay finite (1e300 * k < 1.8e308 for
#: k < 1e8), so every norm, squared distance and radius is a finite number.
MAX_ABS_COORD = 1e150

#: Largest accepted logit scale ``||q|| * max_v (||r_v|| + rho_v)`` of a query on a
#: tree (every logit, every ``<q, r_v>`` and every ``eps_v`` is at most this, up to
#: rounding). The spec requires correct results up to 1e4; the bracket terms and
#: their differences stay below ``4 MAX_LOGIT + 2 log N``, the bracket's rounding bound
#: is about ``4 (k + H) 2^-53 MAX_LOGIT``, and even a product of two such numbers stays finite,
#: so nothing overflows float64 (max 1.8e308) with 158 orders of magnitude to spare.
#: Beyond it a query is refused rather than answered with NaN or wrong ids.
MAX_LOGIT = 1e150

#: Largest accepted scalar parameter that scales a returned bound (``H`` of
#: ``bounds.grad_bias_bound``, which returns up to ``2 H``): finite with margin.
MAX_PARAM = 1e300

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"array of shape {x.shape} and dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"[:200]


def as_float_array(
    x: Any,
    name: str,
    *,
    ndim: int | None = None,
    shape: tuple[int | None, ...] | None = None,
    dtype: np.dtype | type | None = None,
    allow_empty: bool = False,
    finite: bool = True,
    max_abs: float | None = None,
) -> np.ndarray:
    """Convert ``x`` to a real floating array, or raise ``ValueError``.

    Parameters
    ----------
    x : array_like
        The input. Real integer and boolean arrays are converted to float64;
        float32 and float64 are kept as they are unless ``dtype`` is given.
        Object, complex, string and other dtypes are rejected.
    name : str
        The name used in error messages (the caller's parameter name).
    ndim : int, optional
        Required number of dimensions.
    shape : tuple of (int or None), optional
        Required shape; ``None`` entries are free. Implies ``ndim``.
    dtype : numpy dtype, optional
        Cast to this floating dtype (float32 or float64).
    allow_empty : bool, default False
        Whether an array with zero elements is acceptable.
    finite : bool, default True
        Whether to reject NaN and infinite entries.
    max_abs : float, optional
        Reject entries with ``|x| > max_abs`` (e.g. :data:`MAX_ABS_COORD`).

    Returns
    -------
    numpy.ndarray
        A floating array. It may share memory with ``x`` (memory-mapped input
        stays memory-mapped); callers that store it must copy it.
    """
    if isinstance(x, np.ndarray):
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as exc:  # ragged nested sequences
            raise ValueError(f"{name}: expected a numeric array, got {_describe(x)} ({exc})") from None
    kind = arr.dtype.kind
    if kind in "biu":
        arr = arr.astype(np.float64)
    elif kind == "f":
        if arr.dtype not in _FLOAT_DTYPES:
            arr = arr.astype(np.float64)
    else:
        raise ValueError(
            f"{name}: expected a real numeric array (float32, float64, int or bool), "
            f"got dtype {arr.dtype}"
        )
    if dtype is not None:
        dt = np.dtype(dtype)
        if dt not in _FLOAT_DTYPES:
            raise ValueError(f"dtype: expected float32 or float64, got {dt}")
        if arr.dtype != dt:
            with np.errstate(over="ignore"):  # a finite value beyond dt's range is refused below, by name
                cast = arr.astype(dt)
            lost = np.isinf(cast) & np.isfinite(arr)
            if lost.any():
                raise ValueError(
                    f"{name}: expected values within {dt}'s range (|x| <= {float(np.finfo(dt).max):.4g}), "
                    f"got {int(lost.sum())} beyond it (largest |x| = {float(np.abs(arr[lost]).max()):g})"
                )
            arr = cast
    if shape is not None:
        ndim = len(shape)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got {_describe(arr)}")
    if shape is not None:
        for axis, (want, got) in enumerate(zip(shape, arr.shape)):
            if want is not None and want != got:
                raise ValueError(
                    f"{name}: expected shape {tuple('*' if s is None else s for s in shape)}, "
                    f"got {arr.shape} (axis {axis} should be {want})"
                )
    if not allow_empty and arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty array, got {_describe(arr)}")
    if finite and arr.size and not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name}: expected finite values, got {bad} NaN or infinite entries")
    if max_abs is not None and arr.size:
        big = float(np.max(np.abs(arr)))
        if not big <= max_abs:
            raise ValueError(f"{name}: expected |entries| <= {_limit_name(max_abs)}{max_abs:g} (norms and inner "
                             f"products must stay far from float64 overflow), got {big:g}")
    return arr


def _limit_name(value: float) -> str:
    """``"MAX_ABS_COORD = "`` when ``value`` is that limit, for error messages."""
    return "MAX_ABS_COORD = " if value == MAX_ABS_COORD else ""


def check_logit_scale(Q: np.ndarray, scale: float, name: str, what: str = "max_v(||r_v|| + rho_v)") -> np.ndarray:
    """Refuse queries whose logits could overflow; return ``||q||`` per query.

    ``Q`` is one query ``(k,)`` or a batch ``(B, k)``, already finite
    (``as_float_array``). Checks ``|q_i| <=`` :data:`MAX_ABS_COORD` (so that
    ``||q||`` is finite) and ``||q|| * scale <=`` :data:`MAX_LOGIT`, where
    ``scale`` bounds the norm of every vector the queries meet (for a tree,
    ``max_v (||r_v|| + rho_v)``). Raises ``ValueError`` naming ``name`` and the limit.
    """
    Q2 = np.atleast_2d(Q)
    where = (lambda b: "") if Q.ndim == 1 else (lambda b: f" for query {b}")
    if Q2.size:
        row_max = np.max(np.abs(Q2), axis=1)
        if not float(np.max(row_max)) <= MAX_ABS_COORD:
            b = int(np.argmax(row_max))
            raise ValueError(f"{name}: expected |entries| <= MAX_ABS_COORD = {MAX_ABS_COORD:g} (so that ||q|| is "
                             f"finite), got {float(row_max[b]):g}{where(b)}")
    if not np.isfinite(scale) or scale < 0:
        raise ValueError(f"tree: expected finite representatives and radii, got {what} = {scale!r} (corrupt tree?)")
    qnorm = np.linalg.norm(Q2, axis=1) if Q2.size else np.zeros(Q2.shape[0])
    logit = qnorm * scale
    if logit.size and not float(np.max(logit)) <= MAX_LOGIT:
        b = int(np.argmax(logit))
        raise ValueError(
            f"{name}: expected ||q|| * {what} <= MAX_LOGIT = {MAX_LOGIT:g} (logits far from float64 overflow), "
            f"got {float(logit[b]):.3g}{where(b)} (||q|| = {float(qnorm[b]):.3g}, {what} = {scale:.3g})"
        )
    return qnorm if Q.ndim > 1 else qnorm[0]


def as_index_array(
    x: Any,
    name: str,
    *,
    upper: int | None = None,
    ndim: int = 1,
    allow_empty: bool = False,
    unique: bool = False,
) -> np.ndarray:
    """Convert ``x`` to an int64 index array in ``[0, upper)``, or raise ``ValueError``.

    Floats are accepted only when every entry is integral; booleans are
    rejected (a boolean mask is not a list of ids).
    """
    arr = np.asarray(x)
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
        raise ValueError(f"{name}: expected an integer array of ids, got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{name}: expected integer ids, got non-integral floats")
    arr = arr.astype(np.int64)
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array of ids, got {_describe(arr)}")
    if not allow_empty and arr.size == 0:
        raise ValueError(f"{name}: expected at least one id, got an empty array")
    if arr.size:
        if arr.min() < 0:
            raise ValueError(f"{name}: expected ids >= 0, got {int(arr.min())}")
        if upper is not None and arr.max() >= upper:
            raise ValueError(f"{name}: expected ids < {upper}, got {int(arr.max())}")
        if unique and np.unique(arr).size != arr.size:
            raise ValueError(f"{name}: expected distinct ids, got repeated ones")
    return arr


def _real(value: Any, name: str, what: str) -> float:
    """``float(value)`` for a real number; strings, bytes and booleans are refused (``ValueError``)."""
    if isinstance(value, (str, bytes, bool, np.bool_)):
        raise ValueError(f"{name}: expected {what}, got {_describe(value)}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {what}, got {_describe(value)}") from None


def check_positive(value: Any, name: str, *, high: float | None = None) -> float:
    """Return ``value`` as a float if it is finite and > 0 (and ``<= high``), else raise ``ValueError``.

    Strings (even numeric ones such as ``"1"``) and booleans are refused.
    """
    v = _real(value, name, "a positive number")
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    if high is not None and v > high:
        raise ValueError(f"{name}: expected a number <= {high:g} (far from float64 overflow), got {value!r}")
    return v


def check_nonnegative(value: Any, name: str, *, high: float | None = None) -> float:
    """Return ``value`` as a float if it is finite and >= 0 (and ``<= high``), else raise ``ValueError``.

    Strings and booleans are refused.
    """
    v = _real(value, name, "a non-negative number")
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    if high is not None and v > high:
        raise ValueError(f"{name}: expected a number <= {high:g} (far from float64 overflow), got {value!r}")
    return v


def check_int(value: Any, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as an int in ``[low, high]``, else raise ``ValueError``.

    Booleans and non-integral floats are rejected.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}: expected an integer, got {_describe(value)}")
    v = int(value)
    if low is not None and v < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {v}")
    if high is not None and v > high:
        raise ValueError(f"{name}: expected an integer <= {high}, got {v}")
    return v


def check_choice(value: Any, name: str, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError``."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_rng(rng: Any) -> np.random.Generator:
    """Require an explicit ``numpy.random.Generator`` (no global random state)."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"rng: expected a numpy.random.Generator (e.g. np.random.default_rng(0)), got {_describe(rng)}"
        )
    return rng


# --------------------------------------------------------------------------
# Files read by path, .npy headers, output paths
# --------------------------------------------------------------------------

_FILE_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISCHR, "character device"),
               (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


def _file_kind(mode: int) -> str:
    for test, kind in _FILE_KINDS:
        if test(mode):
            return kind
    return "special file"


def read_regular_file(path: Any, name: str, what: str = "a readable regular file") -> bytearray:
    """The whole content of the regular file ``path``, read once; anything else is a ``ValueError``.

    The file is opened non-blocking and checked with ``fstat`` on the open
    descriptor (so a path swapped between a check and the open cannot slip
    through): a FIFO, a character or block device (``/dev/zero``, also through
    a symlink), a socket or a directory is refused before a byte is read, so
    the call never blocks and never reads forever. The size is taken from the
    same ``fstat``; a file that grows or shrinks while it is read is refused.

    Parameters
    ----------
    path : path-like
    name : str
        Prefix of error messages (e.g. ``"queries (X.npy)"``).
    what : str, default "a readable regular file"
        What was expected, for the messages.

    Returns
    -------
    bytearray
        The bytes (writable, so arrays viewing them are writable).
    """
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except (OSError, TypeError, ValueError) as err:
        raise ValueError(f"{name}: expected {what}, got {getattr(err, 'strerror', None) or err}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{name}: expected {what} (a regular file), got a {_file_kind(st.st_mode)}")
        buf = bytearray(st.st_size)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            got = fh.readinto(buf) if st.st_size else 0
            extra = fh.read(1)
    except OSError as err:
        raise ValueError(f"{name}: expected {what}, got {err.strerror or err}") from None
    finally:
        os.close(fd)
    if got != st.st_size or extra:
        raise ValueError(f"{name}: expected {what} that stays the same while it is read, got one whose size "
                         f"changed from {st.st_size} bytes during the read")
    return buf


def read_npy_header(fp: IO[bytes]) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """Parse a ``.npy`` header from ``fp`` without reading the data: (dtype, shape, fortran, header bytes).

    Raises ``ValueError`` (numpy's message) for a missing magic string, an
    unsupported format version or a malformed header. Versions 1.0 and 2.0.
    """
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        raise ValueError(f".npy format version {version} is not supported")
    return dtype, tuple(shape), bool(fortran), fp.tell()


def npy_data_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Bytes of data an array of ``shape`` and ``dtype`` needs (exact Python integer: no overflow)."""
    return math.prod(int(s) for s in shape) * int(dtype.itemsize)


def _nearest_existing(path: str) -> str:
    p = os.path.abspath(path)
    while not os.path.lexists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


def _probe_directory(directory: str, option: str, target: str) -> None:
    """Create and remove a file in ``directory``: the only check that holds for root and read-only mounts."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=directory)
    except OSError as err:
        raise ValueError(f"{option}: expected a writable location, got {target!r}: cannot create files in "
                         f"{directory!r} ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(path: Any, option: str) -> str:
    """Check, before any work, that a file can be written at ``path``; return it as a string.

    ``path`` must be a regular file or not exist yet; its nearest existing
    ancestor must be a directory in which a file can be created (tried: a
    file is created there and removed). Missing parent directories are
    allowed (the writers create them). ``ValueError`` names ``option``.
    """
    target = os.fspath(path)
    if os.path.lexists(target):
        st = os.stat(target) if os.path.exists(target) else None
        if st is None or not stat.S_ISREG(st.st_mode):
            kind = "broken symlink" if st is None else _file_kind(st.st_mode)
            raise ValueError(f"{option}: expected a path for a regular file (it is replaced), got {target!r}, a {kind}")
    anc = _nearest_existing(os.path.dirname(os.path.abspath(target)))
    if not os.path.isdir(anc):
        raise ValueError(f"{option}: expected a path whose parent is a directory, got {target!r} ({anc!r} is a file)")
    _probe_directory(anc, option, target)
    return target


def check_output_dir(path: Any, option: str) -> str:
    """Check, before any work, that ``path`` is (or can be created as) a directory one can write in.

    ``ValueError`` names ``option``. Nothing is created except a probe file,
    removed at once.
    """
    target = os.fspath(path)
    anc = _nearest_existing(target)
    if not os.path.isdir(anc):
        what = "it" if anc == os.path.abspath(target) else repr(anc)
        raise ValueError(f"{option}: expected a directory (or a path where one can be created), got {target!r} "
                         f"({what} is a file)")
    _probe_directory(anc, option, target)
    return target
