"""Saving and loading: a checked, versioned container on top of ``.npz``.

Every object this package saves (a :class:`~reference.tree.Tree`, a
:class:`~reference.nystrom.NystromMap`, a :class:`~reference.dynamic.DynamicIndex`,
a training checkpoint) is written through :func:`save_arrays` and read back
through :func:`load_arrays`. The file is an ordinary ``.npz`` archive (a zip of
``.npy`` members, readable by ``numpy.load(path, allow_pickle=False)``) plus one
extra member, ``__header__.npy``: a ``uint8`` array holding UTF-8 JSON ::

    {"format": "reference.persist", "version": 1, "kind": "tree",
     "meta": {...}, "arrays": {"points": ["<f8", [1000, 32]], ...},
     "sha256": "..."}

Guarantees
----------
Loading never executes code
    Members are read with ``allow_pickle=False``; object arrays are refused on
    save and reported as corruption on load. Only plain numeric, boolean and
    fixed-width string dtypes are stored.
Writes are atomic
    The archive is written to a temporary file in the destination directory,
    flushed, ``fsync``-ed, moved over the destination with :func:`os.replace`
    (atomic on POSIX and Windows), and the directory is ``fsync``-ed. A crash
    or ``SIGKILL`` at any point leaves either the previous file or the new
    one, never a mixture (at worst a stray ``.<name>.*.tmp`` file next to it).
Damage is detected and named
    A missing, truncated, bit-flipped, foreign (no header), wrong-kind or
    wrong-version file raises a :class:`PersistError` (a ``ValueError``) whose
    message starts with the path and says what is wrong. Detection layers:
    the zip central directory (truncation), the CRC-32 of every member (any
    flipped byte in member data), the ``.npy`` headers checked against the
    shapes and dtypes recorded in our header (before anything is allocated),
    and a SHA-256 over a canonical serialisation of kind, meta and arrays
    (:func:`checksum`), which also catches consistent tampering.
Meaning is checked too
    The checksum proves a file holds what was written, not that what was
    written is valid. By default every load also runs ``check_invariants()``
    of each :class:`~reference.tree.Tree`, :class:`~reference.nystrom.NystromMap`
    and :class:`~reference.dynamic.DynamicIndex` it creates
    (:func:`check_objects`: the checks of their constructors and methods,
    e.g. ``order`` a permutation, finite non-negative radii, the map's
    eigenvalues and its reconstruction of K_LL, landmarks live and in
    range), and reports a violation as :class:`CorruptFileError`; every save
    refuses (``ValueError``, nothing written) an object that would fail
    them. ``check=False`` skips exactly these checks; the tree's is the costly
    one, O(N depth). :func:`load_checkpoint` also checks its step; whether the
    step agrees with a run's history is checked by the commands that resume.
JSON records
    :func:`seal_record` / :func:`load_record` put the same SHA-256 on a
    result written as JSON (``compare``'s finished runs, which ``--resume``
    reuses), so an edited or damaged record is refused naming the file.

Objects
-------
:func:`save_tree` / :func:`load_tree`, :func:`save_nystrom` / :func:`load_nystrom`,
:func:`save_dynamic_index` / :func:`load_dynamic_index` and
:func:`save_checkpoint` / :func:`load_checkpoint` store a whole object graph,
so that the loaded object behaves identically (same arrays bitwise, same
query results, same future random draws). The graph is described in the
header's ``meta`` as JSON and its arrays are members named by their attribute
path (``tree.points``, ``index.nmap.inv_sqrt``, ...). Only the classes listed
in :data:`OBJECT_CLASSES` can be created on load; everything else is plain
data: arrays, Python scalars (floats stored exactly as ``float.hex``), numpy
scalars, generators, and dicts / lists / tuples of those. Shared references
(one array or object reachable twice) are stored once and come back shared.

What an object saves is declared by its class, never read off its private
attributes (:func:`declared_fields`):

``SAVED_FIELDS``
    The public attributes written to the file, in order. They *are* the file
    format of that class: changing them changes :data:`FORMAT_VERSION`.
``DERIVED_FIELDS``
    Attributes computed from the saved ones (caches such as a tree's
    ``points_dfs = points[order]`` and ``rep_norm = ||rep||``). They are not
    written; on load the class's ``restore_derived()`` recomputes them,
    bitwise equal to the saved object's.

Saving refuses an object holding an attribute listed in neither (a new
attribute must be declared, so nothing is silently dropped); loading refuses
a file whose fields for a class differ from ``SAVED_FIELDS``. Loading creates
the object without calling ``__init__``, sets the saved fields, then calls
``restore_derived()``. Frozen dataclasses (the kernels) declare themselves
through their dataclass fields and are rebuilt by their dataclass
constructor; ``NystromMap.check_invariants`` checks their parameters with the
validating ``linear`` / ``rbf`` / ``polynomial``.

Random generators
-----------------
:func:`rng_to_array` / :func:`rng_from_array` serialise a
``numpy.random.Generator`` exactly (bit-generator state, including PCG64's
128-bit integers, and its ``SeedSequence`` so that ``spawn`` also continues
identically), so a run resumed from a checkpoint draws the same stream bitwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from reference._validation import InvariantError, check_int, npy_data_bytes, read_npy_header, read_regular_file

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "PersistError",
    "MissingFileError",
    "CorruptFileError",
    "ForeignFileError",
    "WrongKindError",
    "UnsupportedVersionError",
    "save_arrays",
    "load_arrays",
    "read_header",
    "checksum",
    "atomic_write",
    "rng_to_array",
    "rng_from_array",
    "restore_rng",
    "OBJECT_CLASSES",
    "declared_fields",
    "object_to_arrays",
    "object_from_arrays",
    "save_object",
    "load_object",
    "save_tree",
    "load_tree",
    "save_nystrom",
    "load_nystrom",
    "save_dynamic_index",
    "load_dynamic_index",
    "save_checkpoint",
    "load_checkpoint",
    "check_objects",
    "seal_record",
    "load_record",
]

FORMAT = "reference.persist"
"""The ``format`` field of every header: identifies files written by this module."""

FORMAT_VERSION = 2
"""Version of the container layout and of the per-kind layouts built on it.

A file of any other version is refused (:class:`UnsupportedVersionError`).
History: 1, objects saved as every instance attribute, private ones
included, and ``compare`` checkpoints in a layout of their own; 2, objects
saved as the ``SAVED_FIELDS`` their class declares (derived caches
recomputed on load), every checkpoint written by :func:`save_checkpoint`.
"""

_HEADER = "__header__"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")
_KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# Plain data only: bool, signed/unsigned int, float, complex, fixed-width bytes and str.
_ALLOWED_DTYPE_KINDS = "biufcSU"
_MAX_HEADER_BYTES = 64 * 1024 * 1024


# --------------------------------------------------------------------------- errors


class PersistError(ValueError):
    """A file could not be loaded. ``str(err)`` is ``"<path>: <problem>"``.

    Attributes
    ----------
    path : str
        The file that was being read.
    problem : str
        What is wrong with it, in words.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __str__(self) -> str:  # OSError subclasses would otherwise reformat the message
        return f"{self.path}: {self.problem}"

    def __reduce__(self):  # picklable across processes despite the two-argument __init__
        return (type(self), (self.path, self.problem))


class MissingFileError(PersistError, FileNotFoundError):
    """The path does not exist or is not a regular file."""


class CorruptFileError(PersistError):
    """Truncated, not a zip archive, failed CRC / checksum, malformed or object members."""


class ForeignFileError(PersistError):
    """A readable archive that was not written by :mod:`reference.persist` (no header)."""


class WrongKindError(PersistError):
    """A valid file holding another kind of object (e.g. a tree where a checkpoint was expected)."""


class UnsupportedVersionError(PersistError):
    """A valid file written with a format version this code does not read."""


# --------------------------------------------------------------------------- checksum


def _canonical_meta(meta: Mapping[str, Any]) -> str:
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=True)


def _frame(h: Any, data: bytes | memoryview) -> None:
    """Feed ``len(data)`` (8 bytes, little-endian) then ``data``: framing makes the stream unambiguous."""
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def checksum(kind: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> str:
    """SHA-256 (hex) over a canonical serialisation of ``kind``, ``meta`` and ``arrays``.

    The stream is, each field length-prefixed: the format name and version,
    ``kind``, the canonical JSON of ``meta`` (sorted keys, no whitespace), then
    for every array in sorted name order its name, ``dtype.str`` (which includes
    the byte order), its shape and its bytes in C order. Two calls agree iff
    kind, meta and every array agree bitwise (up to SHA-256 collisions).

    Parameters
    ----------
    kind : str
        The object kind stored in the header.
    arrays : mapping of str to numpy.ndarray
        The arrays (not copied unless non-contiguous).
    meta : mapping
        JSON-serialisable metadata.

    Returns
    -------
    str
        64 hexadecimal characters.
    """
    h = hashlib.sha256()
    _frame(h, f"{FORMAT}/{FORMAT_VERSION}".encode())
    _frame(h, kind.encode())
    _frame(h, _canonical_meta(meta).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        _frame(h, name.encode())
        _frame(h, a.dtype.str.encode())
        _frame(h, json.dumps(list(a.shape)).encode())
        _frame(h, memoryview(a).cast("B") if a.size else b"")
    return h.hexdigest()


# --------------------------------------------------------------------------- checked JSON records

_RECORD_KEY = "sha256"


def seal_record(kind: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` plus a ``"sha256"`` entry: :func:`checksum` of ``kind`` and the record (no arrays).

    For results written as JSON and read back later (``compare``'s finished
    runs, reused by ``--resume``): write the sealed dict with
    :func:`reference.jsonio.write_json`, read it with :func:`load_record`.
    The checksum is the one the ``.npz`` files carry, over the canonical JSON
    of the record, so it survives the round trip through JSON text exactly
    (floats are written as their shortest repr and read back bitwise).

    Raises ``ValueError`` if ``record`` already has a ``"sha256"`` key or is
    not JSON-serialisable (no NaN / inf).
    """
    kind = _check_kind(kind)
    record = _check_meta(record)
    if _RECORD_KEY in record:
        raise ValueError(f"record: expected no {_RECORD_KEY!r} key (it holds the checksum), got one")
    return {**record, _RECORD_KEY: checksum(kind, {}, record)}


def load_record(path: str | os.PathLike[str], kind: str) -> dict[str, Any]:
    """Read a JSON record written from :func:`seal_record` and verify its checksum.

    Returns the record without its ``"sha256"`` entry, equal to the one
    sealed. The checksum detects damage and edits made without recomputing
    it (it is not a signature: whoever can write the file can recompute it).

    Raises
    ------
    PersistError
        ``"<path>: <problem>"``: :class:`MissingFileError` (missing, or not a
        regular file: a FIFO or device is refused without being read),
        :class:`CorruptFileError` (not UTF-8 JSON, not an object, no checksum,
        or a checksum mismatch).
    """
    kind = _check_kind(kind)
    path = os.fspath(path)
    try:
        raw = read_regular_file(path, path, "a readable regular file")
    except ValueError as exc:
        raise MissingFileError(path, str(exc)[len(path) + 2:]) from None
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(path, f"not valid UTF-8 JSON ({exc}); delete it to recompute it") from None
    if not isinstance(record, dict) or not isinstance(record.get(_RECORD_KEY), str):
        raise CorruptFileError(path, f"expected a JSON object with a {_RECORD_KEY!r} checksum (written by "
                                     "seal_record), got none; delete it to recompute it")
    stored = record.pop(_RECORD_KEY)
    try:
        actual = checksum(kind, {}, record)
    except ValueError as exc:  # e.g. NaN tokens, which the writer never produces
        raise CorruptFileError(path, f"not a canonical JSON record ({exc})") from None
    if actual != stored:
        raise CorruptFileError(path, "SHA-256 checksum mismatch: the record was altered after it was written "
                                     "(delete it to recompute it)")
    return record


# --------------------------------------------------------------------------- atomic write


def _fsync_directory(directory: str) -> None:
    """Make the rename durable. Not every platform/filesystem allows it; then it is skipped."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Write a file so that readers see either the old content or the new one, never a mix.

    ``write(f)`` writes to a temporary file ``.<name>.<random>.tmp`` in the
    destination directory; the file is flushed and ``fsync``-ed, then renamed
    over ``path`` with :func:`os.replace`, and the directory is ``fsync``-ed.
    If ``write`` (or anything before the rename) raises, the temporary file is
    removed and ``path`` is untouched. If the process is killed, ``path`` is
    untouched or already complete; a stray temporary file may remain.

    Parameters
    ----------
    path : path-like
        The destination. Its directory must exist.
    write : callable
        Called once with a binary file object open for writing.
    """
    path = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(path)
    mode = os.stat(path).st_mode & 0o777 if os.path.isfile(path) else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


# --------------------------------------------------------------------------- save


def _check_kind(kind: Any) -> str:
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise ValueError(f"kind: expected a lower-case identifier such as 'tree', got {kind!r}")
    return kind


def _check_arrays(arrays: Any) -> dict[str, np.ndarray]:
    if not isinstance(arrays, Mapping):
        raise ValueError(f"arrays: expected a dict of name -> numpy array, got {type(arrays).__name__}")
    out: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(
                f"arrays: names must match {_NAME_RE.pattern} (letters, digits, '_', '.', '-'; "
                f"not starting with '_'), got {name!r}"
            )
        if not isinstance(value, (np.ndarray, np.generic)):
            raise ValueError(f"arrays[{name!r}]: expected a numpy array, got {type(value).__name__}")
        a = np.asarray(value)
        if a.dtype.kind not in _ALLOWED_DTYPE_KINDS or a.dtype.fields is not None:
            raise ValueError(
                f"arrays[{name!r}]: expected a plain numeric, boolean or fixed-width string dtype, "
                f"got {a.dtype} (object and structured arrays would need pickle)"
            )
        out[name] = a
    return out


def _check_meta(meta: Any) -> dict[str, Any]:
    if meta is None:
        return {}
    if not isinstance(meta, Mapping) or not all(isinstance(k, str) for k in meta):
        raise ValueError(f"meta: expected a dict with str keys, got {type(meta).__name__}")
    try:
        text = _canonical_meta(meta)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"meta: expected JSON-serialisable values (no NaN/inf), got an error: {exc}") from None
    return json.loads(text)


def save_arrays(
    path: str | os.PathLike[str],
    kind: str,
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any] | None = None,
    *,
    compress: bool = False,
) -> None:
    """Atomically write ``arrays`` and ``meta`` as a checked ``.npz`` file.

    Parameters
    ----------
    path : path-like
        Destination, written exactly as given (no ``.npz`` is appended). Its
        directory must exist. An existing file is replaced atomically.
    kind : str
        What the file holds, a lower-case identifier ("tree", "nystrom",
        "dynamic_index", "checkpoint", ...). :func:`load_arrays` checks it.
    arrays : dict of str to numpy.ndarray
        Names match ``[A-Za-z0-9][A-Za-z0-9_.-]*``. Dtypes: bool, integers,
        floats, complex, fixed-width bytes/str. Object arrays are rejected.
    meta : dict, optional
        JSON-serialisable metadata (str keys; no NaN/inf). It comes back as
        ``json.loads`` returns it: tuples become lists. Python ints of any
        size (e.g. 128-bit generator states) round-trip exactly.
    compress : bool, default False
        Deflate the members (smaller, slower).

    Raises
    ------
    ValueError
        Before anything is written, for a bad ``kind``, name, dtype or ``meta``.
    OSError
        If the file system refuses the write; ``path`` is then untouched.
    """
    kind = _check_kind(kind)
    arrays = _check_arrays(arrays)
    meta = _check_meta(meta)
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "kind": kind,
        "meta": meta,
        "arrays": {name: [a.dtype.str, list(a.shape)] for name, a in sorted(arrays.items())},
        "sha256": checksum(kind, arrays, meta),
    }
    header_bytes = np.frombuffer(json.dumps(header, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED

    def write(f: IO[bytes]) -> None:
        with zipfile.ZipFile(f, mode="w", compression=compression, allowZip64=True) as zf:
            for name, a in [(_HEADER, header_bytes), *sorted(arrays.items())]:
                with zf.open(name + ".npy", mode="w", force_zip64=True) as member:
                    np.lib.format.write_array(member, a, allow_pickle=False)

    atomic_write(path, write)


# --------------------------------------------------------------------------- load


def _open_archive(path: str) -> zipfile.ZipFile:
    if not os.path.exists(path):
        raise MissingFileError(path, "no such file")
    if not os.path.isfile(path):
        raise MissingFileError(path, "not a regular file")
    try:
        zf = zipfile.ZipFile(path, mode="r")
    except zipfile.BadZipFile as exc:
        size = os.path.getsize(path)
        raise CorruptFileError(
            path, f"not a readable .npz/zip archive ({exc}; {size} bytes): truncated or not written by reference.persist"
        ) from None
    except Exception as exc:  # zipfile raises many types on damaged input; all mean the same here
        raise CorruptFileError(path, f"not a readable .npz/zip archive ({type(exc).__name__}: {exc})") from None
    return zf


def _read_member_header(zf: zipfile.ZipFile, path: str, member: str) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """Parse one ``.npy`` header without reading the data; return (dtype, shape, fortran, data bytes)."""
    with zf.open(member) as fp:
        dtype, shape, fortran, header_len = read_npy_header(fp)
    return dtype, shape, fortran, zf.getinfo(member).file_size - header_len


def _read_member(zf: zipfile.ZipFile, path: str, member: str, want: tuple[str, list[int]] | None) -> np.ndarray:
    """Read one member, checking its ``.npy`` header (and ``want``) before allocating anything."""
    label = member[: -len(".npy")]
    try:
        dtype, shape, _, data_bytes = _read_member_header(zf, path, member)
    except Exception as exc:  # damaged zip entries raise BadZipFile, zlib.error, NotImplementedError, ...
        raise CorruptFileError(path, f"member {label!r} has a malformed .npy header ({type(exc).__name__}: {exc})") from None
    if dtype.hasobject or dtype.kind not in _ALLOWED_DTYPE_KINDS or dtype.fields is not None:
        raise CorruptFileError(
            path, f"member {label!r} has dtype {dtype}: object/structured arrays are refused (loading them would unpickle)"
        )
    if want is not None and (dtype.str != want[0] or list(shape) != list(want[1])):
        raise CorruptFileError(
            path, f"member {label!r} is {dtype.str} {tuple(shape)}, the header says {want[0]} {tuple(want[1])}"
        )
    expected = npy_data_bytes(shape, dtype)
    if data_bytes != expected:
        raise CorruptFileError(
            path, f"member {label!r} holds {data_bytes} data bytes, its shape {tuple(shape)} and dtype {dtype} need {expected}"
        )
    try:
        with zf.open(member) as fp:
            return np.lib.format.read_array(fp, allow_pickle=False)
    except Exception as exc:
        raise CorruptFileError(path, f"member {label!r} could not be read ({type(exc).__name__}: {exc})") from None


def _read_header_from(zf: zipfile.ZipFile, path: str) -> dict[str, Any]:
    names = zf.namelist()
    if _HEADER + ".npy" not in names:
        shown = ", ".join(repr(n) for n in names[:5]) + (", ..." if len(names) > 5 else "")
        raise ForeignFileError(
            path, f"no {_HEADER!r} member, so not written by reference.persist (members: {shown or 'none'})"
        )
    raw = _read_member(zf, path, _HEADER + ".npy", None)
    if raw.dtype != np.uint8 or raw.ndim != 1 or raw.size > _MAX_HEADER_BYTES:
        raise ForeignFileError(path, f"the {_HEADER!r} member is {raw.dtype} {raw.shape}, expected 1-D uint8 JSON")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(path, f"the header is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        got = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise ForeignFileError(path, f"header format is {got!r}, expected {FORMAT!r}")
    version = header.get("version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise UnsupportedVersionError(
            path, f"format version {version!r}, expected version {FORMAT_VERSION} (the only one this code reads; "
            "re-create the file with this code)"
        )
    ok = (
        isinstance(header.get("kind"), str)
        and isinstance(header.get("meta"), dict)
        and isinstance(header.get("sha256"), str)
        and isinstance(header.get("arrays"), dict)
        and all(
            isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], list)
            and all(isinstance(s, int) and s >= 0 for s in v[1])
            for v in header["arrays"].values()
        )
    )
    if not ok:
        raise CorruptFileError(path, "the header lacks or mistypes one of 'kind', 'meta', 'arrays', 'sha256'")
    return header


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the JSON header of a file (format, version, kind, meta, arrays, sha256).

    Cheap: reads only the header member; does not verify the arrays. Raises the
    same :class:`PersistError` subclasses as :func:`load_arrays` for missing,
    unreadable, foreign or wrong-version files.
    """
    path = os.fspath(path)
    with _open_archive(path) as zf:
        try:
            return _read_header_from(zf, path)
        except PersistError:
            raise
        except Exception as exc:
            raise CorruptFileError(path, f"the archive is damaged ({type(exc).__name__}: {exc})") from None


def load_arrays(path: str | os.PathLike[str], kind: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read and verify a file written by :func:`save_arrays`; never executes code.

    Checks, in order: the file exists; it is a zip archive (truncation destroys
    the central directory at its end); every member passes its CRC-32; it has
    our header with the right format and version; it holds ``kind``; its members
    are exactly the arrays the header lists, with the listed dtypes and shapes
    (checked on the ``.npy`` headers, before any allocation); the SHA-256 of
    kind, meta and arrays matches. Members are read with ``allow_pickle=False``.

    Parameters
    ----------
    path : path-like
        The file.
    kind : str
        The kind the caller expects ("tree", "checkpoint", ...).

    Returns
    -------
    arrays : dict of str to numpy.ndarray
        Fresh, writeable arrays, bitwise equal to those saved.
    meta : dict
        The metadata, as ``json.loads`` returns it.

    Raises
    ------
    MissingFileError, CorruptFileError, ForeignFileError, WrongKindError, UnsupportedVersionError
        All subclasses of :class:`PersistError` (a ``ValueError``); the message
        is ``"<path>: <problem>"``.
    """
    kind = _check_kind(kind)
    path = os.fspath(path)
    with _open_archive(path) as zf:
        try:
            bad = zf.testzip()
        except Exception as exc:  # BadZipFile, zlib.error, NotImplementedError (flag bits), RuntimeError (encrypted)
            raise CorruptFileError(path, f"the archive is damaged ({type(exc).__name__}: {exc})") from None
        if bad is not None:
            raise CorruptFileError(path, f"member {bad!r} fails its CRC-32 check (the file is corrupted)")
        try:
            header = _read_header_from(zf, path)
            if header["kind"] != kind:
                raise WrongKindError(path, f"holds a {header['kind']!r}, expected a {kind!r}")
            listed = header["arrays"]
            present = {n[: -len(".npy")] for n in zf.namelist() if n.endswith(".npy")} - {_HEADER}
            extra = sorted(set(zf.namelist()) - {n + ".npy" for n in present} - {_HEADER + ".npy"})
            if present != set(listed) or extra:
                missing = sorted(set(listed) - present)
                unlisted = sorted(present - set(listed)) + extra
                raise CorruptFileError(
                    path, f"members do not match the header (missing: {missing}, not listed: {unlisted})"
                )
            arrays = {name: _read_member(zf, path, name + ".npy", listed[name]) for name in sorted(listed)}
        except PersistError:
            raise
        except Exception as exc:
            raise CorruptFileError(path, f"the archive is damaged ({type(exc).__name__}: {exc})") from None
    meta = header["meta"]
    if checksum(kind, arrays, meta) != header["sha256"]:
        raise CorruptFileError(path, "SHA-256 checksum mismatch: the content was altered after it was written")
    return arrays, meta


# --------------------------------------------------------------------------- random generators

_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


def _to_json(value: Any) -> Any:
    """Encode a bit-generator state (nested dicts of str / int / uint arrays) as exact JSON."""
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.dtype.str, "shape": list(value.shape), "data": value.ravel().tolist()}
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)  # JSON integers are unbounded: 128-bit PCG64 words stay exact
    if isinstance(value, str):
        return value
    if isinstance(value, (tuple, list)):
        return [_to_json(v) for v in value]
    raise ValueError(f"rng: cannot serialise a state entry of type {type(value).__name__}")


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return np.asarray(value["data"], dtype=np.dtype(value["__ndarray__"])).reshape(value["shape"])
        return {k: _from_json(v) for k, v in value.items()}
    return value


def rng_to_array(rng: np.random.Generator) -> np.ndarray:
    """Serialise a generator's complete state into a 0-d unicode array (JSON text).

    Stores the bit generator's name and ``state`` (PCG64: two 128-bit integers
    plus the buffered 32-bit half-word) and its ``SeedSequence`` (entropy,
    spawn key, pool size, number of children spawned), all exactly.

    Parameters
    ----------
    rng : numpy.random.Generator
        Backed by PCG64, PCG64DXSM, MT19937, Philox or SFC64.

    Returns
    -------
    numpy.ndarray
        0-d ``<U`` array; store it with :func:`save_arrays`.
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    bg = rng.bit_generator
    name = type(bg).__name__
    if name not in _BIT_GENERATORS:
        raise ValueError(f"rng: bit generator {name} is not supported (expected one of {_BIT_GENERATORS})")
    doc: dict[str, Any] = {"bit_generator": name, "state": _to_json(bg.state), "seed_seq": None}
    ss = getattr(bg, "seed_seq", None)
    if isinstance(ss, np.random.SeedSequence):
        doc["seed_seq"] = {
            "entropy": _to_json(ss.entropy),
            "spawn_key": [int(k) for k in ss.spawn_key],
            "pool_size": int(ss.pool_size),
            "n_children_spawned": int(ss.n_children_spawned),
        }
    return np.array(json.dumps(doc, sort_keys=True))


def _decode_rng(array: Any) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    a = np.asarray(array)
    if a.dtype.kind != "U" or a.ndim != 0:
        raise ValueError(f"rng state: expected the 0-d str array from rng_to_array, got {a.dtype} {a.shape}")
    try:
        doc = json.loads(str(a[()]))
        name, state, ss = doc["bit_generator"], doc["state"], doc["seed_seq"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"rng state: not produced by rng_to_array ({exc})") from None
    if name not in _BIT_GENERATORS:
        raise ValueError(f"rng state: bit generator {name!r} is not supported (expected one of {_BIT_GENERATORS})")
    return name, _from_json(state), ss


def rng_from_array(array: np.ndarray) -> np.random.Generator:
    """Rebuild a generator from :func:`rng_to_array`: it continues the saved stream bitwise.

    Parameters
    ----------
    array : numpy.ndarray
        The 0-d str array returned by :func:`rng_to_array`.

    Returns
    -------
    numpy.random.Generator
        A new generator whose next draws, and whose ``spawn`` children, equal
        those the saved generator would have produced.
    """
    name, state, ss = _decode_rng(array)
    cls = getattr(np.random, name)  # name is from the whitelist above
    if ss is not None:
        entropy = ss["entropy"]
        entropy = _from_json(entropy) if isinstance(entropy, dict) else entropy
        seed = np.random.SeedSequence(
            entropy,
            spawn_key=tuple(ss["spawn_key"]),
            pool_size=ss["pool_size"],
            n_children_spawned=ss["n_children_spawned"],
        )
        bg = cls(seed)
    else:
        bg = cls()
    try:
        bg.state = state
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"rng state: the saved {name} state is malformed ({exc})") from None
    return np.random.Generator(bg)


def restore_rng(rng: np.random.Generator, array: np.ndarray) -> None:
    """Set ``rng``'s bit-generator state in place from :func:`rng_to_array`.

    Use this when other objects hold a reference to ``rng``. The bit generator
    types must match; the ``SeedSequence`` of ``rng`` is not changed (use
    :func:`rng_from_array` when ``spawn`` must continue identically too).
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    name, state, _ = _decode_rng(array)
    if type(rng.bit_generator).__name__ != name:
        raise ValueError(f"rng: saved state is for {name}, the generator uses {type(rng.bit_generator).__name__}")
    rng.bit_generator.state = state


# --------------------------------------------------------------------------- object graphs

#: The only classes :func:`load_object` may instantiate: name -> (module, attribute).
#: Modules are imported lazily, from this fixed list only.
OBJECT_CLASSES: dict[str, tuple[str, str]] = {
    "Tree": ("reference.tree", "Tree"),
    "NystromMap": ("reference.nystrom", "NystromMap"),
    "LinearKernel": ("reference.nystrom", "LinearKernel"),
    "RBFKernel": ("reference.nystrom", "RBFKernel"),
    "PolynomialKernel": ("reference.nystrom", "PolynomialKernel"),
    "DynamicIndex": ("reference.dynamic", "DynamicIndex"),
}

_GRAPH = "graph"  # meta key holding the encoded object graph
_PART_RE = re.compile(r"^[A-Za-z0-9_\-]{1,40}$")


def _class(name: str) -> type:
    module, attr = OBJECT_CLASSES[name]
    return getattr(importlib.import_module(module), attr)


def _class_name(obj: Any) -> str | None:
    """The :data:`OBJECT_CLASSES` name of ``obj``'s exact class, or None."""
    for name, (module, attr) in OBJECT_CLASSES.items():
        if type(obj).__name__ == attr and type(obj).__module__ == module:
            return name
    return None


def declared_fields(cls: type) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(SAVED_FIELDS, DERIVED_FIELDS)`` of a class saved as an object (module docstring, "Objects").

    Raises ``ValueError`` if the class does not declare both as tuples of
    attribute names, if a name is private (starts with ``_``) or listed
    twice, or if it has derived fields but no ``restore_derived`` method.
    """
    saved, derived = getattr(cls, "SAVED_FIELDS", None), getattr(cls, "DERIVED_FIELDS", None)
    ok = all(
        isinstance(names, tuple) and all(isinstance(n, str) and n and not n.startswith("_") for n in names)
        for names in (saved, derived)
    )
    if not ok:
        raise ValueError(
            f"{cls.__name__}: expected class attributes SAVED_FIELDS and DERIVED_FIELDS, tuples of public "
            f"attribute names, got {saved!r} and {derived!r}"
        )
    if len(set(saved) | set(derived)) != len(saved) + len(derived):
        raise ValueError(f"{cls.__name__}: a field is listed twice in SAVED_FIELDS {saved} / DERIVED_FIELDS {derived}")
    if derived and not callable(getattr(cls, "restore_derived", None)):
        raise ValueError(f"{cls.__name__}: DERIVED_FIELDS {derived} need a restore_derived() method")
    return saved, derived


class _Encoder:
    """Object graph -> (JSON spec, arrays). Arrays are named by their attribute path."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.seen: dict[int, Any] = {}  # id(value) -> spec of its first occurrence (arrays, rngs, objects)
        self.keep: list[Any] = []  # keeps encoded values alive so ids stay unique
        self.n_objects = 0
        self.objects: list[Any] = []  # every class instance encoded, in encounter order

    def _name(self, path: str) -> str:
        name, i = path, 1
        while name in self.arrays:
            i += 1
            name = f"{path}-{i}"
        return name

    def encode(self, value: Any, path: str) -> Any:
        if isinstance(value, np.generic):  # first: np.float64 is also a Python float
            a = np.asarray(value)
            if a.dtype.kind not in _ALLOWED_DTYPE_KINDS:
                raise ValueError(f"{path}: cannot save a numpy scalar of dtype {a.dtype}")
            name = self._name(path)
            self.arrays[name] = a
            return {"t": "scalar", "a": name}
        if value is None or type(value) in (bool, str, int):
            return {"t": "json", "v": value}
        if type(value) is float:
            return {"t": "float", "v": value.hex()}  # exact, and allows inf / nan
        if id(value) in self.seen:
            return self.seen[id(value)]
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in _ALLOWED_DTYPE_KINDS or value.dtype.fields is not None:
                raise ValueError(f"{path}: cannot save an array of dtype {value.dtype} (object/structured)")
            name = self._name(path)
            self.arrays[name] = np.asarray(value)
            spec = {"t": "ref_array", "a": name}
            self._remember(value, spec)
            return {"t": "array", "a": name, "ro": not value.flags.writeable}
        if isinstance(value, np.random.Generator):
            name = self._name(path)
            self.arrays[name] = rng_to_array(value)
            spec = {"t": "ref_rng", "a": name}
            self._remember(value, spec)
            return {"t": "rng", "a": name}
        if isinstance(value, Mapping):
            if not all(isinstance(k, str) for k in value):
                raise ValueError(f"{path}: cannot save a dict with non-str keys")
            return {"t": "dict", "v": [[k, self.encode(v, self._child(path, k, i))] for i, (k, v) in enumerate(value.items())]}
        if isinstance(value, (list, tuple)):
            t = "list" if isinstance(value, list) else "tuple"
            return {"t": t, "v": [self.encode(v, f"{path}.{i}") for i, v in enumerate(value)]}
        cname = _class_name(value)
        if cname is None:
            raise ValueError(
                f"{path}: cannot save a {type(value).__module__}.{type(value).__name__} "
                f"(only arrays, scalars, generators, dicts/lists/tuples and {sorted(OBJECT_CLASSES)})"
            )
        oid = self.n_objects
        self.n_objects += 1
        self.objects.append(value)
        self._remember(value, {"t": "ref_object", "id": oid})
        if dataclasses.is_dataclass(value):
            fields = [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value) if f.init]
            kind = "dataclass"
        else:
            saved, derived = declared_fields(type(value))
            undeclared = sorted(set(vars(value)) - set(saved) - set(derived))
            if undeclared:
                raise ValueError(
                    f"{path}: {cname} has attributes {undeclared} in neither SAVED_FIELDS nor DERIVED_FIELDS "
                    f"(declare them; a change of SAVED_FIELDS is a new persist.FORMAT_VERSION)"
                )
            fields = [(k, getattr(value, k)) for k in saved]
            kind = "object"
        return {
            "t": kind, "c": cname, "id": oid,
            "v": [[k, self.encode(v, self._child(path, k, i))] for i, (k, v) in enumerate(fields)],
        }

    def _remember(self, value: Any, spec: dict[str, Any]) -> None:
        self.seen[id(value)] = spec
        self.keep.append(value)

    @staticmethod
    def _child(path: str, key: str, i: int) -> str:
        part = key.lstrip("_")
        return f"{path}.{part if _PART_RE.match(part) else f'k{i}'}"


class _Decoder:
    """(JSON spec, arrays) -> object graph; only :data:`OBJECT_CLASSES` are instantiated."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays
        self.shared: dict[Any, Any] = {}
        self.objects: list[Any] = []  # every class instance created, in creation order

    def decode(self, spec: Any) -> Any:
        t = spec["t"]
        if t == "json":
            return spec["v"]
        if t == "float":
            return float.fromhex(spec["v"])
        if t == "scalar":
            return self.arrays[spec["a"]][()]
        if t == "array":
            a = self.arrays[spec["a"]]
            if spec.get("ro"):
                a.flags.writeable = False
            self.shared[("a", spec["a"])] = a
            return a
        if t == "ref_array":
            return self.shared[("a", spec["a"])]
        if t == "rng":
            g = rng_from_array(self.arrays[spec["a"]])
            self.shared[("g", spec["a"])] = g
            return g
        if t == "ref_rng":
            return self.shared[("g", spec["a"])]
        if t == "dict":
            return {k: self.decode(v) for k, v in spec["v"]}
        if t == "list":
            return [self.decode(v) for v in spec["v"]]
        if t == "tuple":
            return tuple(self.decode(v) for v in spec["v"])
        if t == "ref_object":
            return self.shared[("o", spec["id"])]
        if t in ("object", "dataclass"):
            cls = _class(spec["c"])  # KeyError for a class outside the whitelist
            if t == "dataclass":
                obj = cls(**{k: self.decode(v) for k, v in spec["v"]})
                self.shared[("o", spec["id"])] = obj
                self.objects.append(obj)
                return obj
            saved, derived = declared_fields(cls)
            names = [k for k, _ in spec["v"]]
            if sorted(names) != sorted(saved):
                raise ValueError(f"{spec['c']} was saved with the fields {names}, this code saves {list(saved)}")
            obj = cls.__new__(cls)
            self.shared[("o", spec["id"])] = obj  # before the attributes: cycles resolve
            self.objects.append(obj)
            for k, v in spec["v"]:
                setattr(obj, k, self.decode(v))
            if derived:
                obj.restore_derived()
            return obj
        raise ValueError(f"unknown entry type {t!r}")


def object_to_arrays(obj: Any, root: str) -> tuple[Any, dict[str, np.ndarray]]:
    """Encode an object graph as (JSON-serialisable graph, dict of arrays).

    The in-memory half of :func:`save_object`, for callers that embed an
    object in a larger array container (e.g. a miner's ``state_dict``).
    ``root`` names the top of the graph in error messages. Raises
    ``ValueError`` naming the attribute path of a value that cannot be saved.
    """
    enc = _Encoder()
    graph = enc.encode(obj, root)
    return graph, enc.arrays


def _decode(graph: Any, arrays: Mapping[str, np.ndarray]) -> tuple[Any, list[Any]]:
    dec = _Decoder(dict(arrays))
    try:
        return dec.decode(graph), dec.objects
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ValueError(f"the object graph does not decode ({type(exc).__name__}: {exc})") from None


def object_from_arrays(graph: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """Rebuild an object graph from :func:`object_to_arrays` output.

    Only classes in :data:`OBJECT_CLASSES` are created; no code is executed
    from the data. Raises ``ValueError`` if the graph does not decode. The
    objects' invariants are not checked here (:func:`check_objects`).
    """
    return _decode(graph, arrays)[0]


#: Exceptions an invariant check may raise on arbitrary (hostile) content: all mean "invalid".
_CHECK_ERRORS = (AssertionError, ValueError, TypeError, IndexError, KeyError, AttributeError)


def check_objects(objects: list[Any]) -> None:
    """Run ``check_invariants()`` of every object that has one (Tree, NystromMap, DynamicIndex).

    What loading and saving check by default (module docstring, "Meaning").
    An object whose check covers others (a ``DynamicIndex`` checks its
    ``tree`` and ``nmap``) is checked first and they are not checked twice.

    Raises
    ------
    InvariantError
        Naming the class and the first violation; also for content so
        malformed that the check itself fails (``TypeError``, ``IndexError``, ...).
    """
    done: set[int] = set()
    ranked = sorted(objects, key=lambda o: not (hasattr(o, "tree") and hasattr(o, "nmap")))
    for obj in ranked:
        check = getattr(obj, "check_invariants", None)
        if check is None or id(obj) in done:
            continue
        try:
            with np.errstate(all="ignore"):  # NaN / overflow in hostile content is reported as a violation
                check()
        except _CHECK_ERRORS as exc:
            msg = str(exc)
            prefix = f"{type(obj).__name__}: "
            raise InvariantError(msg if msg.startswith(prefix) else prefix + msg) from None
        done.update({id(obj), id(getattr(obj, "tree", None)), id(getattr(obj, "nmap", None))})


def save_object(path: str | os.PathLike[str], kind: str, obj: Any, meta: Mapping[str, Any] | None = None, *,
                check: bool = True) -> None:
    """Atomically save an object graph (see "Objects" in the module docstring).

    Parameters
    ----------
    path : path-like
        Destination (written atomically by :func:`save_arrays`).
    kind : str
        Recorded in the header and checked by :func:`load_object`.
    obj : object
        An instance of a class in :data:`OBJECT_CLASSES`, or a dict / list /
        tuple of plain data and such instances.
    meta : dict, optional
        Extra JSON metadata stored next to the graph (returned by
        :func:`read_header` under ``meta["user"]``).
    check : bool, default True
        Refuse to save an object graph in which an object fails its
        invariants (:func:`check_objects`). False skips those checks (for a
        tree, ``Tree.check_invariants``: O(N depth)).

    Raises
    ------
    ValueError
        Before anything is written, naming the attribute path of the first
        value that cannot be saved (e.g. ``tree.cache: cannot save a ...``),
        or the first invariant an object violates.
    """
    kind = _check_kind(kind)
    enc = _Encoder()
    graph = enc.encode(obj, kind)
    if check:
        _check_before_save(enc.objects, kind)
    save_arrays(path, kind, enc.arrays, {_GRAPH: graph, "user": _check_meta(meta)})


def _check_before_save(objects: list[Any], what: str) -> None:
    try:
        check_objects(objects)
    except InvariantError as exc:
        raise ValueError(f"{what}: refusing to save an object that violates its invariants ({exc}); "
                         "nothing was written") from None


def _load_graph(path: str | os.PathLike[str], kind: str, expected: type | tuple[type, ...] | None,
                check: bool = True) -> tuple[Any, dict[str, Any]]:
    arrays, meta = load_arrays(path, kind)
    if _GRAPH not in meta:
        raise CorruptFileError(
            os.fspath(path), f"a {kind!r} file without an object graph (written by save_arrays, not save_object?)"
        )
    try:
        obj, objects = _decode(meta[_GRAPH], arrays)
    except ValueError as exc:
        raise CorruptFileError(os.fspath(path), str(exc)) from None
    if expected is not None and not isinstance(obj, expected):
        raise CorruptFileError(os.fspath(path), f"holds a {type(obj).__name__}, expected {expected}")
    if check:
        try:
            check_objects(objects)
        except InvariantError as exc:
            raise CorruptFileError(os.fspath(path), f"the content is intact but invalid: {exc}") from None
    return obj, meta


def load_object(path: str | os.PathLike[str], kind: str, expected: type | tuple[type, ...] | None = None, *,
                check: bool = True) -> Any:
    """Load an object graph written by :func:`save_object`; never executes code from the file.

    Parameters
    ----------
    path : path-like
        The file.
    kind : str
        The kind it must hold.
    expected : type or tuple of types, optional
        The type the top-level object must have.
    check : bool, default True
        Run the invariant checks of every object loaded (:func:`check_objects`):
        the checksum proves the file holds what was written, these that what
        was written is a valid object. False skips them (for a tree,
        ``Tree.check_invariants``: O(N depth); module docstring, "Meaning").

    Returns
    -------
    object
        A new object graph equal to the saved one (arrays bitwise; shared
        references shared; read-only arrays read-only).

    Raises
    ------
    PersistError
        As :func:`load_arrays`, and :class:`CorruptFileError` when the graph
        does not decode (e.g. written by an incompatible version of a class,
        or naming a class outside :data:`OBJECT_CLASSES`), when the
        top-level object is not ``expected``, or (``check``) when an object
        violates its invariants.
    """
    return _load_graph(path, kind, expected, check)[0]


def _require(obj: Any, name: str, what: str) -> None:
    cls = _class(name)
    if not isinstance(obj, cls):
        raise ValueError(f"{what}: expected a {cls.__module__}.{cls.__name__}, got {type(obj).__name__}")


def save_tree(path: str | os.PathLike[str], tree: Any, *, check: bool = True) -> None:
    """Save a :class:`reference.tree.Tree` (all arrays, build parameters, its generator).

    Parameters
    ----------
    path : path-like
        Destination, written atomically.
    tree : reference.tree.Tree
    check : bool, default True
        Refuse (``ValueError``, nothing written) a tree failing
        ``Tree.check_invariants()``; False skips that O(N depth) check.
    """
    _require(tree, "Tree", "tree")
    save_object(path, "tree", tree, check=check)


def load_tree(path: str | os.PathLike[str], *, check: bool = True) -> Any:
    """Load a tree saved by :func:`save_tree`.

    Parameters
    ----------
    path : path-like
    check : bool, default True
        Run ``Tree.check_invariants()`` (layout, build parameters, finite
        points, ``order`` a permutation of the live targets, counts, finite
        non-negative radii covering their targets, I1-I4); a violation raises
        :class:`CorruptFileError`. O(N depth): at N = 1e6, k = 16 about 1-2 s,
        a load of 2.3 s instead of 0.5 s (measured in
        reference/PERSISTENCE.md). False skips exactly this check: the checksum then
        proves only that the arrays are the ones saved, not that they form a
        valid tree.

    Returns
    -------
    reference.tree.Tree
        Same arrays bitwise, so the same bounds, samples (for the same
        generator) and top-k; later ``rebuild`` calls draw the same random
        numbers as the saved tree would have.
    """
    return load_object(path, "tree", _class("Tree"), check=check)


def save_nystrom(path: str | os.PathLike[str], nmap: Any, *, check: bool = True) -> None:
    """Save a :class:`reference.nystrom.NystromMap` (kernel, landmarks, anchor, K_LL^{-1/2}, record).

    Refuses (``ValueError``, nothing written) a map failing
    ``NystromMap.check_invariants()`` unless ``check`` is False.
    """
    _require(nmap, "NystromMap", "nmap")
    save_object(path, "nystrom", nmap, check=check)


def load_nystrom(path: str | os.PathLike[str], *, check: bool = True) -> Any:
    """Load a map saved by :func:`save_nystrom`; ``features``/``project`` agree bitwise with the saved one.

    ``check`` (default True) runs ``NystromMap.check_invariants()``: kernel
    and parameters valid, distinct landmark ids, finite anchor, the
    eigenvalues those of K_LL (the kept ones positive), ``inv_sqrt``
    reconstructing K_LL within ``reconstruction_tolerance()``; O(m^2 d + m^3),
    independent of N. A violation raises :class:`CorruptFileError`.
    """
    return load_object(path, "nystrom", _class("NystromMap"), check=check)


def save_dynamic_index(path: str | os.PathLike[str], index: Any, *, check: bool = True) -> None:
    """Save a :class:`reference.dynamic.DynamicIndex`: cache, map, tree over phi, W_t, W_0 and counters.

    Refuses (``ValueError``, nothing written) an index failing
    ``DynamicIndex.check_invariants()`` unless ``check`` is False.
    """
    _require(index, "DynamicIndex", "index")
    save_object(path, "dynamic_index", index, check=check)


def load_dynamic_index(path: str | os.PathLike[str], *, check: bool = True) -> Any:
    """Load an index saved by :func:`save_dynamic_index`; queries, samples and refreshes continue identically.

    ``check`` (default True) runs ``DynamicIndex.check_invariants()`` (its
    map's and its tree's checks, finite cache, landmarks live and in range,
    W_0 = K_LL^{-1/2} g_0(L)); the tree's part is O(N depth). False skips
    it. A violation raises :class:`CorruptFileError`.
    """
    return load_object(path, "dynamic_index", _class("DynamicIndex"), check=check)


_CHECKPOINT_KEYS = ("step", "params", "optimizer", "rngs", "miner", "extra")


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    step: int,
    params: Mapping[str, np.ndarray],
    optimizer: Mapping[str, Any] | None = None,
    rngs: Mapping[str, np.random.Generator] | None = None,
    miner: Mapping[str, Any] | None = None,
    extra: Any = None,
    meta: Mapping[str, Any] | None = None,
) -> None:
    """Atomically save a training checkpoint.

    Parameters
    ----------
    path : path-like
        Destination; a crash while writing leaves the previous checkpoint.
    step : int
        Number of completed training steps (>= 0).
    params : dict of str to numpy.ndarray
        Model parameters (e.g. ``model.params``), in their iteration order.
    optimizer : dict, optional
        Optimiser state, e.g. ``Adam.state_dict()`` (arrays and ints).
    rngs : dict of str to numpy.random.Generator, optional
        Every generator the run draws from, restored exactly.
    miner : dict, optional
        Miner state, e.g. ``Miner.state_dict()``; may also hold a Tree,
        NystromMap or DynamicIndex.
    extra : optional
        Anything else made of plain data (history lists, counters).
    meta : dict, optional
        JSON metadata (e.g. the run's configuration), returned as ``"meta"``.

    Notes
    -----
    The one checkpoint format of the package: ``python -m reference demo``
    and ``python -m reference compare`` both write it. The header's meta also
    records ``step``, so ``read_header(path)["meta"]["step"]`` tells how far
    a run got without loading the checkpoint.
    """
    step = check_int(step, "step", low=0)
    if not isinstance(params, Mapping) or not all(isinstance(v, np.ndarray) for v in params.values()):
        raise ValueError(f"params: expected a dict name -> numpy array, got {type(params).__name__}")
    if rngs is not None and (
        not isinstance(rngs, Mapping) or not all(isinstance(g, np.random.Generator) for g in rngs.values())
    ):
        raise ValueError("rngs: expected a dict name -> numpy.random.Generator")
    state = {"step": step, "params": dict(params), "optimizer": optimizer, "rngs": rngs, "miner": miner, "extra": extra}
    enc = _Encoder()
    graph = enc.encode(state, "checkpoint")
    _check_before_save(enc.objects, "checkpoint")
    save_arrays(path, "checkpoint", enc.arrays, {_GRAPH: graph, "user": _check_meta(meta), "step": step})


def load_checkpoint(path: str | os.PathLike[str], *, check: bool = True) -> dict[str, Any]:
    """Load a checkpoint saved by :func:`save_checkpoint`.

    ``step`` must be an integer >= 0 equal to the header's; ``check`` (default
    True) runs the invariant checks of any Tree, NystromMap or DynamicIndex
    in it (:func:`check_objects`). Whether the step agrees with the run's
    history and configuration is for the caller, who knows them
    (``compare`` and ``demo`` check it before resuming).

    Returns
    -------
    dict
        ``step``, ``params``, ``optimizer``, ``rngs``, ``miner``, ``extra``
        (as saved; absent parts are None) and ``meta``. Arrays are fresh
        copies: restore them with ``model.set_params``,
        ``Adam.load_state_dict`` and ``Miner.load_state_dict``; the generators
        continue their streams bitwise.
    """
    state, meta = _load_graph(path, "checkpoint", dict, check)
    if sorted(state) != sorted(_CHECKPOINT_KEYS):
        raise CorruptFileError(os.fspath(path), f"a checkpoint must hold {list(_CHECKPOINT_KEYS)}, got {sorted(state)}")
    if type(state["step"]) is not int or state["step"] < 0:
        raise CorruptFileError(os.fspath(path), f"the step must be an integer >= 0, got {state['step']!r}")
    if meta.get("step") != state["step"]:
        raise CorruptFileError(
            os.fspath(path), f"the header says step {meta.get('step')!r}, the checkpoint {state['step']!r}"
        )
    state["meta"] = meta.get("user", {})
    return state
