"""Tests of the checked ``.npz`` container (``reference/persist.py``).

What is proved here:

- round trip: any plain array dict and JSON meta comes back bitwise equal;
- loading never unpickles (a file carrying a pickle payload is refused and the
  payload's code does not run);
- every kind of damage raises a :class:`PersistError` naming the file and the
  problem: missing file, truncation at any offset, flipped bytes, a foreign
  ``.npz``, a wrong kind, an unsupported version, consistent tampering;
- writes are atomic: a failure before the rename, an ``os._exit`` in the middle
  of a write and a ``SIGKILL`` at a random moment all leave the previous file
  intact and loadable;
- a ``numpy.random.Generator`` is restored exactly (the next draws and the
  ``spawn`` children agree bitwise);
- a Tree, NystromMap, DynamicIndex and a training checkpoint come back with
  every attribute bitwise equal, and then *behave* identically: the same
  queries, samples (same generator), mutations, rebuilds and training steps
  give bitwise equal results on the original and on the loaded copy;
- loading an object graph instantiates only whitelisted classes;
- every saved class declares its saved fields (pinned per format version) and
  its derived caches (recomputed on load, bitwise); an undeclared attribute is
  refused on save, a file whose fields differ from the declaration on load,
  and a file of any other format version with a message naming the file, its
  version and the expected one.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from reference import persist
from reference.persist import (
    CorruptFileError,
    ForeignFileError,
    MissingFileError,
    PersistError,
    UnsupportedVersionError,
    WrongKindError,
    load_arrays,
    save_arrays,
)

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- helpers


def _sample_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "points": rng.standard_normal((50, 4)),
        "ids": np.arange(50, dtype=np.int64),
        "alive": rng.random(50) < 0.5,
        "f32": rng.standard_normal(7).astype(np.float32),
        "empty": np.zeros((0, 3)),
        "scalar": np.array(2.5),
        "names": np.array(["query.W0", "target.b1"]),
    }


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """Bitwise equality: same names, dtypes (incl. byte order), shapes and bytes."""
    assert sorted(a) == sorted(b)
    for name in a:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        assert x.dtype == y.dtype and x.dtype.str == y.dtype.str, name
        assert x.shape == y.shape, name
        assert np.ascontiguousarray(x).tobytes() == np.ascontiguousarray(y).tobytes(), name


def assert_same_state(a, b, path: str = "obj") -> None:
    """Recursive bitwise equality of two object graphs (every instance attribute).

    Arrays: same dtype (with byte order), shape, bytes and writeable flag.
    Generators: same bit-generator state. Floats: same bits (NaN equal to NaN).
    Objects: same class, then the same attributes (in any order) compared recursively.
    """
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), path
        assert a.dtype.str == b.dtype.str and a.shape == b.shape, f"{path}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes(), f"{path}: values differ"
        assert a.flags.writeable == b.flags.writeable, f"{path}: writeable flag differs"
        return
    assert type(a) is type(b), f"{path}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, np.random.Generator):
        assert json.dumps(a.bit_generator.state, default=lambda x: x.tolist(), sort_keys=True) == \
            json.dumps(b.bit_generator.state, default=lambda x: x.tolist(), sort_keys=True), f"{path}: generator state"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} vs {list(b)}"
        for k in a:
            assert_same_state(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: length"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert np.float64(a).tobytes() == np.float64(b).tobytes(), f"{path}: {a!r} vs {b!r}"
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), f"{path}: {a!r} vs {b!r}"
    elif hasattr(a, "__dict__") and not isinstance(a, type):  # the attributes, whatever order they were set in
        assert_same_state(dict(sorted(vars(a).items())), dict(sorted(vars(b).items())), path)
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _write_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _npy_bytes(a: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, allow_pickle=allow_pickle)
    return buf.getvalue()


def _rewrite_header(path: Path, edit) -> None:
    """Rewrite the JSON header of a valid file through ``edit(header) -> header``."""
    members = _members(path)
    header = json.loads(np.load(io.BytesIO(members["__header__.npy"])).tobytes())
    header = edit(header)
    members["__header__.npy"] = _npy_bytes(np.frombuffer(json.dumps(header).encode(), np.uint8))
    _write_zip(path, members)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray], dict]:
    path = tmp_path / "obj.npz"
    arrays, meta = _sample_arrays(), {"step": 3, "big": 2**127 + 5, "name": "x", "ratio": 0.1}
    save_arrays(path, "tree", arrays, meta)
    return path, arrays, meta


# --------------------------------------------------------------------------- round trip

_dtypes = st.sampled_from(
    ["<f8", "<f4", ">f8", "<i8", "<i4", "<u8", "|u1", "|b1", "<c16", "<U7", "|S5"]
)


@st.composite
def _array_dicts(draw) -> dict[str, np.ndarray]:
    names = draw(st.lists(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,12}", fullmatch=True),
                          min_size=0, max_size=4, unique=True))
    out = {}
    for name in names:
        dtype = np.dtype(draw(_dtypes))
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
        a = draw(hnp.arrays(dtype, shape))  # includes NaN, inf, -0.0, subnormals
        if draw(st.booleans()) and a.ndim >= 1:
            a = a[::-1]  # non-contiguous / negative strides
        out[name] = a
    return out


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**130), 2**130)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrays=_array_dicts(), meta=st.dictionaries(st.text(max_size=6), _json, max_size=4))
def test_round_trip_is_bitwise(tmp_path: Path, arrays, meta) -> None:
    path = tmp_path / "rt.npz"
    save_arrays(path, "checkpoint", arrays, meta)
    loaded, meta2 = load_arrays(path, "checkpoint")
    _assert_same(arrays, loaded)
    assert meta2 == meta  # JSON: ints of any size and floats (repr) are exact
    # and it is an ordinary .npz readable by numpy without pickle
    with np.load(path, allow_pickle=False) as npz:
        assert set(npz.files) == set(arrays) | {"__header__"}
    for a in loaded.values():
        assert a.flags.writeable and a.flags.c_contiguous


def test_round_trip_compressed_and_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    save_arrays(path, "tree", {"a": np.zeros(10_000)}, {"v": 1})
    size_plain = path.stat().st_size
    save_arrays(path, "tree", {"a": np.zeros(10_000)}, {"v": 2}, compress=True)
    assert path.stat().st_size < size_plain / 10  # zeros deflate well: compression was applied
    arrays, meta = load_arrays(path, "tree")
    assert meta == {"v": 2} and np.array_equal(arrays["a"], np.zeros(10_000))
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temporary files left


def test_read_header_is_cheap_and_informative(saved) -> None:
    path, arrays, meta = saved
    h = persist.read_header(path)
    assert h["format"] == persist.FORMAT and h["version"] == persist.FORMAT_VERSION
    assert h["kind"] == "tree" and h["meta"] == meta
    assert h["arrays"]["points"] == ["<f8", [50, 4]]
    assert h["sha256"] == persist.checksum("tree", arrays, meta)


# --------------------------------------------------------------------------- checksum


def test_checksum_distinguishes_what_matters() -> None:
    a = np.arange(6, dtype=np.int64)
    base = persist.checksum("k", {"a": a}, {})
    assert persist.checksum("k", {"a": a.reshape(2, 3)}, {}) != base  # shape
    assert persist.checksum("k", {"a": a.view(np.float64)}, {}) != base  # dtype, same bytes
    assert persist.checksum("k", {"b": a}, {}) != base  # name
    assert persist.checksum("j", {"a": a}, {}) != base  # kind
    assert persist.checksum("k", {"a": a}, {"x": 1}) != base  # meta
    b = a.copy()
    b[3] += 1
    assert persist.checksum("k", {"a": b}, {}) != base  # one value
    # framing: moving a boundary between two names does not collide
    assert persist.checksum("k", {"ab": a, "c": a}, {}) != persist.checksum("k", {"a": a, "bc": a}, {})
    # layout does not matter, only values
    m = np.arange(12.0).reshape(3, 4)
    assert persist.checksum("k", {"m": np.asfortranarray(m)}, {}) == persist.checksum("k", {"m": m}, {})


# --------------------------------------------------------------------------- rejected saves


@pytest.mark.parametrize(
    "kind, arrays, meta, match",
    [
        ("Tree", {"a": np.zeros(1)}, {}, "kind"),
        ("", {"a": np.zeros(1)}, {}, "kind"),
        ("tree", {"_a": np.zeros(1)}, {}, "names"),
        ("tree", {"__header__": np.zeros(1)}, {}, "names"),
        ("tree", {"a/b": np.zeros(1)}, {}, "names"),
        ("tree", {"a": np.array([object()], dtype=object)}, {}, "object"),
        ("tree", {"a": np.zeros(2, dtype=[("x", "<f8")])}, {}, "structured"),
        ("tree", {"a": [1.0, 2.0]}, {}, "numpy array"),
        ("tree", [np.zeros(1)], {}, "dict"),
        ("tree", {"a": np.zeros(1)}, {"x": float("nan")}, "JSON"),
        ("tree", {"a": np.zeros(1)}, {"x": object()}, "JSON"),
        ("tree", {"a": np.zeros(1)}, {1: 2}, "str keys"),
    ],
)
def test_bad_save_raises_before_touching_the_file(saved, kind, arrays, meta, match) -> None:
    path, good, good_meta = saved
    before = path.read_bytes()
    with pytest.raises(ValueError, match=match):
        save_arrays(path, kind, arrays, meta)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


# --------------------------------------------------------------------------- damaged files


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match=r"nope\.npz: no such file") as info:
        load_arrays(tmp_path / "nope.npz", "tree")
    assert isinstance(info.value, ValueError) and isinstance(info.value, FileNotFoundError)
    assert info.value.path == str(tmp_path / "nope.npz")
    with pytest.raises(MissingFileError, match="not a regular file"):
        load_arrays(tmp_path, "tree")


# Each example costs a few ms, so these two run more examples than the profile's default.
_MANY = settings(max_examples=max(150, settings.default.max_examples),
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


@_MANY
@given(fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_truncation_at_any_offset_is_reported(saved, fraction: float) -> None:
    path, _, _ = saved
    data = path.read_bytes()
    bad = path.parent / "truncated.npz"
    bad.write_bytes(data[: int(fraction * len(data))])
    with pytest.raises(CorruptFileError) as info:
        load_arrays(bad, "tree")
    assert str(info.value).startswith(str(bad) + ": ")


@_MANY
@given(data=st.data())
def test_flipped_byte_is_reported_or_harmless(saved, data) -> None:
    """Any single flipped byte either raises PersistError or leaves the content bitwise intact.

    (Some zip fields, e.g. timestamps or the 'version made by' byte, are not
    content; flipping them is harmless. What must never happen is silently
    returning different arrays or meta.)
    """
    path, arrays, meta = saved
    raw = bytearray(path.read_bytes())
    i = data.draw(st.integers(0, len(raw) - 1), label="offset")
    raw[i] ^= data.draw(st.integers(1, 255), label="xor")
    bad = path.parent / "flipped.npz"
    bad.write_bytes(bytes(raw))
    try:
        got, got_meta = load_arrays(bad, "tree")
    except PersistError as exc:
        assert str(exc).startswith(str(bad) + ": ")
    else:
        _assert_same(arrays, got)
        assert got_meta == meta


@pytest.mark.slow
def test_every_flipped_byte_is_reported_or_harmless(saved) -> None:
    """Exhaustive version of the property above: every offset, three xor masks (~50 s).

    Measured once: of 3 x 4458 flips, 11837 raise CorruptFileError and 1537
    are harmless (zip local-header fields that readers take from the central
    directory); none returns altered content.
    """
    path, arrays, meta = saved
    raw = path.read_bytes()
    bad = path.parent / "flipped.npz"
    for i in range(len(raw)):
        for mask in (0x01, 0x80, 0xFF):
            flipped = bytearray(raw)
            flipped[i] ^= mask
            bad.write_bytes(bytes(flipped))
            try:
                got, got_meta = load_arrays(bad, "tree")
            except PersistError as exc:
                assert str(exc).startswith(str(bad) + ": ")
            else:
                _assert_same(arrays, got)
                assert got_meta == meta


def test_flipped_byte_in_array_data_fails_the_crc(saved) -> None:
    path, arrays, _ = saved
    raw = bytearray(path.read_bytes())
    i = bytes(raw).find(arrays["points"].tobytes()[:64])  # stored (uncompressed) data
    assert i > 0
    raw[i + 17] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="CRC-32"):
        load_arrays(path, "tree")


def test_consistent_tampering_fails_the_checksum(saved) -> None:
    """Change a value and fix up the zip CRC (a valid zip): only the SHA-256 can notice."""
    path, arrays, _ = saved
    members = _members(path)
    points = arrays["points"].copy()
    points[3, 1] = np.nextafter(points[3, 1], np.inf)  # one ulp
    members["points.npy"] = _npy_bytes(points)
    _write_zip(path, members)
    with pytest.raises(CorruptFileError, match="SHA-256 checksum mismatch"):
        load_arrays(path, "tree")


@pytest.mark.parametrize("content", [b"", b"hello world\n", b"PK\x03\x04" + b"\0" * 40])
def test_not_a_zip(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.npz"
    path.write_bytes(content)
    with pytest.raises(CorruptFileError, match=r"junk\.npz: not a readable \.npz/zip archive"):
        load_arrays(path, "tree")


def test_foreign_npz(tmp_path: Path) -> None:
    path = tmp_path / "foreign.npz"
    np.savez(path, points=np.zeros((3, 2)))
    with pytest.raises(ForeignFileError, match=r"foreign\.npz: no '__header__' member.*'points\.npy'"):
        load_arrays(path, "tree")
    # a header member that is not ours
    _write_zip(path, {"__header__.npy": _npy_bytes(np.frombuffer(b'{"format": "other"}', np.uint8))})
    with pytest.raises(ForeignFileError, match="header format is 'other'"):
        load_arrays(path, "tree")
    _write_zip(path, {"__header__.npy": _npy_bytes(np.zeros(3))})
    with pytest.raises(ForeignFileError, match="expected 1-D uint8 JSON"):
        load_arrays(path, "tree")


def test_wrong_kind(saved) -> None:
    path, _, _ = saved
    with pytest.raises(WrongKindError, match=r"obj\.npz: holds a 'tree', expected a 'checkpoint'"):
        load_arrays(path, "checkpoint")


def test_unsupported_version(saved) -> None:
    path, _, _ = saved
    for version in (99, 0, "2", 2.0, True, None):
        _rewrite_header(path, lambda h: {**h, "version": version})
        want = f"{path}: format version {version!r}, expected version {persist.FORMAT_VERSION} "
        with pytest.raises(UnsupportedVersionError) as info:
            load_arrays(path, "tree")
        assert str(info.value).startswith(want)
        with pytest.raises(UnsupportedVersionError):
            persist.read_header(path)


def _save_as_version(monkeypatch, version: int, save) -> None:
    """Run ``save()`` as a persist of format ``version`` would: header version and checksum both say it."""
    with monkeypatch.context() as m:
        m.setattr(persist, "FORMAT_VERSION", version)
        save()


@pytest.mark.parametrize("version", [1, 3])
def test_a_file_of_another_version_is_refused_naming_file_and_versions(tmp_path: Path, monkeypatch, version) -> None:
    """A valid file of format 1 (the old attribute-scraping layout) or of a future 3 is refused, not misread.

    The files are complete and self-consistent for their version (the
    checksum covers the version), so only the version check can refuse them.
    """
    assert persist.FORMAT_VERSION == 2
    tree = Tree.build(np.random.default_rng(0).standard_normal((40, 3)), leaf_size=4)
    cases = [
        ("tree.npz", lambda p: persist.save_tree(p, tree), persist.load_tree),
        ("ckpt.npz", lambda p: persist.save_checkpoint(p, step=1, params={"w": np.ones(2)}), persist.load_checkpoint),
        ("arrays.npz", lambda p: save_arrays(p, "tree", {"a": np.ones(2)}), lambda p: load_arrays(p, "tree")),
    ]
    for name, save, load in cases:
        path = tmp_path / name
        _save_as_version(monkeypatch, version, lambda: save(path))
        header = json.loads(np.load(path)["__header__"].tobytes())
        assert header["version"] == version
        with monkeypatch.context() as m:  # the file is valid for its own version
            m.setattr(persist, "FORMAT_VERSION", version)
            load(path)
        want = f"{path}: format version {version}, expected version 2 "
        for read in (load, persist.read_header):
            with pytest.raises(UnsupportedVersionError) as info:
                read(path)
            assert str(info.value).startswith(want), str(info.value)


def test_header_and_members_must_agree(saved) -> None:
    path, arrays, _ = saved
    good = path.read_bytes()
    # a member the header does not list
    members = _members(path)
    members["extra.npy"] = _npy_bytes(np.zeros(2))
    _write_zip(path, members)
    with pytest.raises(CorruptFileError, match=r"not listed: \['extra'\]"):
        load_arrays(path, "tree")
    # a listed member that is missing
    path.write_bytes(good)
    members = _members(path)
    del members["ids.npy"]
    _write_zip(path, members)
    with pytest.raises(CorruptFileError, match=r"missing: \['ids'\]"):
        load_arrays(path, "tree")
    # a .npy header claiming a huge shape: refused before anything is allocated
    path.write_bytes(good)
    _rewrite_header(path, lambda h: {**h, "arrays": {**h["arrays"], "ids": ["<i8", [10**15]]}})
    with pytest.raises(CorruptFileError, match=r"member 'ids' is <i8 \(50,\), the header says <i8 \(1000000000000000,\)"):
        load_arrays(path, "tree")
    path.write_bytes(good)
    members = _members(path)
    members["ids.npy"] = members["ids.npy"].replace(b"(50,)", b"(99,)")
    _write_zip(path, members)
    _rewrite_header(path, lambda h: {**h, "arrays": {**h["arrays"], "ids": ["<i8", [99]]}})
    with pytest.raises(CorruptFileError, match=r"member 'ids' holds 400 data bytes.*need 792"):
        load_arrays(path, "tree")


class _Payload:
    """Unpickling this would create a marker file: proof that code ran."""

    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_payload_is_never_executed(saved) -> None:
    path, _, _ = saved
    marker = path.parent / "pwned"
    payload = _Payload()
    payload.marker = str(marker)
    evil = np.empty(1, dtype=object)
    evil[0] = payload
    members = _members(path)
    members["ids.npy"] = _npy_bytes(evil, allow_pickle=True)
    _write_zip(path, members)
    with pytest.raises(CorruptFileError, match="member 'ids' has dtype object"):
        load_arrays(path, "tree")
    assert not marker.exists()
    # and the same payload smuggled in as the header itself
    _write_zip(path, {"__header__.npy": _npy_bytes(evil, allow_pickle=True)})
    with pytest.raises(CorruptFileError, match="dtype object"):
        load_arrays(path, "tree")
    assert not marker.exists()


def test_errors_are_value_errors_that_pickle() -> None:
    import pickle

    for cls in (MissingFileError, CorruptFileError, ForeignFileError, WrongKindError, UnsupportedVersionError):
        err = cls("/some/file.npz", "the problem")
        assert isinstance(err, ValueError) and str(err) == "/some/file.npz: the problem"
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is cls and str(back) == str(err)


# --------------------------------------------------------------------------- atomic writes


def test_failed_rename_leaves_previous_file(saved, monkeypatch) -> None:
    path, arrays, meta = saved

    def boom(*args, **kwargs):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(persist.os, "replace", boom)
    with pytest.raises(OSError, match="simulated crash"):
        save_arrays(path, "tree", {"a": np.ones(3)}, {})
    monkeypatch.undo()
    got, got_meta = load_arrays(path, "tree")
    _assert_same(arrays, got)
    assert got_meta == meta
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # temp file removed


def test_failure_inside_write_leaves_previous_file(saved) -> None:
    path, arrays, _ = saved

    def half_then_fail(f) -> None:
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt  # BaseException: cleanup must still happen

    with pytest.raises(KeyboardInterrupt):
        persist.atomic_write(path, half_then_fail)
    _assert_same(arrays, load_arrays(path, "tree")[0])
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


_CHILD = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from reference import persist

    path, mode = sys.argv[1], sys.argv[2]
    n = 1 << 21  # 16 MiB of float64 per save: the write takes long enough to be hit
    persist.save_arrays(path, "checkpoint", {"x": np.full(n, 0.0)}, {"i": 0})
    print("first", flush=True)
    if mode == "exit":
        # die half-way through writing the archive, without any cleanup
        def write(f):
            f.write(b"PK\\x03\\x04" + b"x" * 100_000)
            f.flush()
            os._exit(3)
        persist.atomic_write(path, write)
    i = 1
    while True:  # mode == "loop": keep replacing the file until killed
        persist.save_arrays(path, "checkpoint", {"x": np.full(n, float(i))}, {"i": i})
        i += 1
    """
)


def _consistent(path: Path) -> int:
    arrays, meta = load_arrays(path, "checkpoint")
    i = meta["i"]
    assert arrays["x"].shape == (1 << 21,)
    assert (arrays["x"] == float(i)).all()  # array and meta from the same save
    return i


def test_process_exiting_mid_write_leaves_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.npz"
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path), "exit"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.strip() == "first"
    assert _consistent(path) == 0
    # the abandoned temporary file is the only trace, and it is ignored
    assert {p.name for p in tmp_path.iterdir()} - {"ckpt.npz"} != set()


def test_sigkill_at_random_moments_leaves_a_loadable_file(tmp_path: Path) -> None:
    """SIGKILL a process that rewrites the file in a loop, at 3 random moments (seeded)."""
    rng = np.random.default_rng(12345)
    seen = []
    for trial in range(3):
        path = tmp_path / f"ckpt{trial}.npz"
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), "loop"], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "first"
            time.sleep(float(rng.uniform(0.05, 0.6)))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        seen.append(_consistent(path))
    assert max(seen) >= 1  # at least one trial was killed after replacing the file at least once


# --------------------------------------------------------------------------- random generators

_bit_generators = st.sampled_from([np.random.PCG64, np.random.PCG64DXSM, np.random.MT19937,
                                   np.random.Philox, np.random.SFC64])


@given(bg=_bit_generators, seed=st.integers(0, 2**128) | st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4),
       n_before=st.integers(0, 5), odd=st.booleans(), spawned=st.integers(0, 2))
def test_rng_round_trip_continues_the_stream_bitwise(bg, seed, n_before, odd, spawned) -> None:
    rng = np.random.Generator(bg(np.random.SeedSequence(seed)))
    rng.standard_normal(n_before)
    if odd:  # leaves a buffered 32-bit half-word (has_uint32 = 1)
        rng.integers(0, 2**32, dtype=np.uint32)
    rng.spawn(spawned)
    arr = persist.rng_to_array(rng)
    with tempfile.TemporaryDirectory() as d:  # through a file, as a checkpoint would
        save_arrays(Path(d) / "r.npz", "checkpoint", {"rng": arr})
        arr = load_arrays(Path(d) / "r.npz", "checkpoint")[0]["rng"]
    clone = persist.rng_from_array(arr)
    assert type(clone.bit_generator) is bg
    assert clone.integers(0, 2**32, size=3, dtype=np.uint32).tobytes() == \
        rng.integers(0, 2**32, size=3, dtype=np.uint32).tobytes()
    assert clone.standard_normal(4).tobytes() == rng.standard_normal(4).tobytes()
    assert clone.spawn(1)[0].random(3).tobytes() == rng.spawn(1)[0].random(3).tobytes()
    # in place
    other = np.random.Generator(bg(0))
    persist.restore_rng(other, persist.rng_to_array(rng))
    assert other.random(5).tobytes() == rng.random(5).tobytes()


def test_rng_state_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="numpy.random.Generator"):
        persist.rng_to_array(np.random.RandomState(0))
    with pytest.raises(ValueError, match="0-d str array"):
        persist.rng_from_array(np.zeros(3))
    with pytest.raises(ValueError, match="not produced by rng_to_array"):
        persist.rng_from_array(np.array("{}"))
    with pytest.raises(ValueError, match="not supported"):
        persist.rng_from_array(np.array('{"bit_generator": "os.system", "state": {}, "seed_seq": null}'))
    with pytest.raises(ValueError, match="saved state is for PCG64"):
        persist.restore_rng(np.random.Generator(np.random.MT19937(0)), persist.rng_to_array(np.random.default_rng(0)))


# --------------------------------------------------------------------------- objects

from reference.nystrom import NystromMap, linear, polynomial, rbf  # noqa: E402
from reference.tree import Tree  # noqa: E402


def _tree_after_mutations(seed: int = 0) -> Tree:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((300, 4))
    z[10:20] = z[0]  # duplicates
    t = Tree.build(z, branching=4, leaf_size=8, seed=seed)
    t.insert(rng.standard_normal((7, 4)))
    t.delete(np.array([3, 5, 200]))
    t.update(np.array([0, 1]), rng.standard_normal((2, 4)) * 3)
    return t


def test_tree_round_trip_and_identical_behaviour(tmp_path: Path) -> None:
    sampling = pytest.importorskip("reference.sampling")
    tree = _tree_after_mutations()
    path = tmp_path / "tree.npz"
    persist.save_tree(path, tree)
    loaded = persist.load_tree(path, check=True)
    assert_same_state(tree, loaded, "tree")
    assert persist.read_header(path)["kind"] == "tree"
    # identical behaviour: queries, samples with the same generator ...
    q = np.random.default_rng(1).standard_normal((3, 4)) * 5
    a = sampling.topk(tree, q, 5)
    b = sampling.topk(loaded, q, 5)
    assert_same_state(a, b, "topk")
    a = sampling.cut_sample(tree, q, 20, np.random.default_rng(2))
    b = sampling.cut_sample(loaded, q, 20, np.random.default_rng(2))
    assert_same_state(a, b, "cut_sample")
    # ... and further mutations, including a rebuild that draws from the tree's own generator
    for t in (tree, loaded):
        t.rebuild(1)
        t.insert(np.ones((2, 4)))
        t.refresh()
    assert_same_state(tree, loaded, "tree after rebuild")


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(points=hnp.arrays(np.float64, st.tuples(st.integers(1, 60), st.integers(1, 4)),
                         elements=st.floats(-1e3, 1e3, allow_subnormal=False) | st.just(0.0)),
       branching=st.integers(2, 5), leaf_size=st.integers(1, 10), seed=st.integers(0, 2**32))
def test_tree_round_trip_any_points(tmp_path: Path, points, branching, leaf_size, seed) -> None:
    tree = Tree.build(points, branching=branching, leaf_size=leaf_size, seed=seed)
    persist.save_tree(tmp_path / "t.npz", tree)
    assert_same_state(tree, persist.load_tree(tmp_path / "t.npz", check=True))


@pytest.mark.parametrize("kernel", [linear(), linear(0.5), rbf(0.7), polynomial(3, 1.0)], ids=repr)
def test_nystrom_round_trip(tmp_path: Path, kernel) -> None:
    rng = np.random.default_rng(3)
    G0 = rng.standard_normal((60, 5))
    nmap = NystromMap(kernel, cutoff=1e-8, ridge=1e-6).fit(G0, rng.choice(60, 12, replace=False))
    path = tmp_path / "nmap.npz"
    persist.save_nystrom(path, nmap)
    loaded = persist.load_nystrom(path)
    assert_same_state(nmap, loaded, "nmap")
    G_L = rng.standard_normal((12, 3))
    assert loaded.features(G0).tobytes() == nmap.features(G0).tobytes()
    assert loaded.project(G_L).tobytes() == nmap.project(G_L).tobytes()
    # an unfitted map too
    persist.save_nystrom(path, NystromMap("rbf"))
    assert_same_state(NystromMap("rbf"), persist.load_nystrom(path))


def test_dynamic_index_round_trip_and_identical_behaviour(tmp_path: Path) -> None:
    dynamic = pytest.importorskip("reference.dynamic")
    rng = np.random.default_rng(4)
    G = rng.standard_normal((300, 6))
    G /= np.linalg.norm(G, axis=1, keepdims=True)
    index = dynamic.DynamicIndex(G, np.arange(0, 300, 20), beta=4.0, leaf_size=8)
    index.step(G[index.landmarks] * 1.2)
    index.add(rng.standard_normal((4, 6)))
    index.remove([1, 2])
    index.refresh(G[index.landmarks], ids=index.landmarks)
    index.step(G[index.landmarks] + 0.01)
    path = tmp_path / "index.npz"
    persist.save_dynamic_index(path, index)
    loaded = persist.load_dynamic_index(path)
    assert_same_state(index, loaded, "index")
    F = rng.standard_normal((4, 6))
    for method in ("topk",):
        assert_same_state(getattr(index, method)(F, 3), getattr(loaded, method)(F, 3), method)
    a = index.rejection_sample(F, 6, np.random.default_rng(5))
    b = loaded.rejection_sample(F, 6, np.random.default_rng(5))
    assert_same_state(a, b, "rejection_sample")
    G2 = G + 0.05 * rng.standard_normal(G.shape)
    for idx in (index, loaded):
        idx.step(G2[idx.landmarks])
        idx.refresh(G2[idx.ids[: 50]], ids=idx.ids[:50])
    assert_same_state(index, loaded, "index after refresh")


# --------------------------------------------------------------------------- declarations

#: The saved fields of every object class in format version 2. A change of a
#: class's SAVED_FIELDS changes the files it writes: bump persist.FORMAT_VERSION
#: and pin the new layout here under the new number.
PINNED_LAYOUTS = {
    2: {
        "Tree": ("points", "alive", "n_live", "dim", "rep", "radius", "count", "parent", "child_ptr", "child_idx",
                 "depth", "is_leaf", "order", "start", "stop", "leaf_of", "nested", "branching", "leaf_size",
                 "kmeans_iters", "kmeans_rng"),
        "NystromMap": ("kernel", "cutoff", "ridge", "landmarks", "anchor", "eigenvalues", "inv_sqrt", "rank",
                       "record"),
        "DynamicIndex": ("cache", "nmap", "tree", "W0", "W", "beta", "rebuild_depth", "steps_since_refresh",
                         "n_refreshes", "last_refresh"),
        "LinearKernel": ("const",),
        "RBFKernel": ("gamma",),
        "PolynomialKernel": ("degree", "c"),
    },
}


def _object_class(name: str) -> type:
    module, attr = persist.OBJECT_CLASSES[name]
    return getattr(importlib.import_module(module), attr)


def _layout() -> dict[str, tuple[str, ...]]:
    """Each object class's saved fields as persist sees them (dataclass fields for the kernels)."""
    out = {}
    for name in persist.OBJECT_CLASSES:
        cls = _object_class(name)
        if dataclasses.is_dataclass(cls):
            out[name] = tuple(f.name for f in dataclasses.fields(cls) if f.init)
        else:
            out[name] = persist.declared_fields(cls)[0]
    return out


def _used_instances() -> list:
    """An instance of every non-dataclass object class, after the operations that set every attribute."""
    dynamic = pytest.importorskip("reference.dynamic")
    tree = _tree_after_mutations()
    tree.rebuild(1)
    rng = np.random.default_rng(4)
    G = rng.standard_normal((120, 5))
    index = dynamic.DynamicIndex(G, np.arange(0, 120, 12), leaf_size=8)
    index.step(G[index.landmarks] * 1.1)
    index.add(rng.standard_normal((3, 5)))
    index.refresh(G[index.landmarks], ids=index.landmarks)
    return [tree, NystromMap("rbf"), index.nmap, index]


def test_saved_fields_are_pinned_to_the_format_version() -> None:
    """Fails when a class's SAVED_FIELDS change while FORMAT_VERSION stays (the file format changed)."""
    assert persist.FORMAT_VERSION in PINNED_LAYOUTS, (
        f"FORMAT_VERSION {persist.FORMAT_VERSION} has no pinned layout: add it to PINNED_LAYOUTS")
    assert _layout() == PINNED_LAYOUTS[persist.FORMAT_VERSION], (
        "the saved fields of an object class changed: that changes the file format, so bump "
        "persist.FORMAT_VERSION and pin the new layout in PINNED_LAYOUTS")


def test_declarations_cover_every_attribute() -> None:
    """Every attribute of every saved class is declared saved or derived, once, and no private one is saved.

    A new attribute (an ndarray cache, a counter) fails here until it is
    declared: saved (a format change) or derived (recomputed on load).
    """
    instances = _used_instances()
    covered = {type(obj).__name__ for obj in instances}
    for name in persist.OBJECT_CLASSES:
        assert dataclasses.is_dataclass(_object_class(name)) or name in covered, (
            f"{name} is saved as an object but has no instance in _used_instances()")
    for obj in instances:
        saved, derived = persist.declared_fields(type(obj))
        assert not set(saved) & set(derived)
        assert set(vars(obj)) == set(saved) | set(derived), (
            f"{type(obj).__name__}: attributes {sorted(set(vars(obj)) - set(saved) - set(derived))} undeclared, "
            f"declared {sorted(set(saved) | set(derived) - set(vars(obj)))} absent")


def test_derived_fields_are_recomputed_on_load_bitwise(tmp_path: Path) -> None:
    """Derived caches are not in the file, and come back bitwise equal (with every saved field)."""
    for obj in _used_instances():
        path = tmp_path / "obj.npz"
        persist.save_object(path, "bag", {"obj": obj})
        saved, derived = persist.declared_fields(type(obj))
        members = persist.read_header(path)["arrays"]
        for field in derived:
            assert not any(m.split(".")[-1].startswith(field) for m in members), (field, sorted(members))
        loaded = persist.load_object(path, "bag", dict)["obj"]
        assert_same_state(obj, loaded, type(obj).__name__)  # every attribute, the derived ones included


def test_saving_refuses_an_undeclared_attribute(tmp_path: Path) -> None:
    tree, _, _, index = _used_instances()
    tree.points_by_leaf = np.zeros(3)  # a new cache nobody declared
    with pytest.raises(ValueError, match=re.escape(
            "tree: Tree has attributes ['points_by_leaf'] in neither SAVED_FIELDS nor DERIVED_FIELDS")):
        persist.save_tree(tmp_path / "t.npz", tree)
    index.tree.extra = 1
    with pytest.raises(ValueError, match=re.escape("dynamic_index.tree: Tree has attributes ['extra']")):
        persist.save_dynamic_index(tmp_path / "i.npz", index)
    assert list(tmp_path.iterdir()) == []


def test_loading_refuses_fields_that_differ_from_the_declaration(tmp_path: Path) -> None:
    """A self-consistent file whose Tree lacks a declared field (or has an extra one) is refused by name."""
    path = tmp_path / "t.npz"
    persist.save_tree(path, Tree.build(np.eye(4), leaf_size=1))
    arrays, meta = load_arrays(path, "tree")
    fields = meta["graph"]["v"]
    for edited in ([f for f in fields if f[0] != "nested"], [*fields, ["_rng", {"t": "json", "v": None}]]):
        save_arrays(path, "tree", arrays, {**meta, "graph": {**meta["graph"], "v": edited}})
        with pytest.raises(CorruptFileError) as info:
            persist.load_tree(path)
        assert str(info.value).startswith(f"{path}: the object graph does not decode")
        assert "Tree was saved with the fields" in str(info.value) and "this code saves" in str(info.value)


def test_checkpoint_resumes_training_bitwise(tmp_path: Path) -> None:
    """Train 3 steps, checkpoint, train 4 more; a model restored from the checkpoint ends bitwise equal."""
    from reference.encoder import DualEncoder, EncoderConfig
    from reference.optim import Adam

    cfg = EncoderConfig(query_dim=5, target_dim=4, hidden=(8,), out_dim=6, beta=5.0)
    data_rng = np.random.default_rng(7)
    Y = data_rng.standard_normal((40, 4))
    X = data_rng.standard_normal((200, 5))
    pos = data_rng.integers(0, 40, 200)

    def run(model, opt, rng, steps):
        for _ in range(steps):
            idx = rng.integers(0, 200, 8)
            neg = rng.integers(0, 40, (8, 5))
            _, grads = model.sampled_softmax_loss(X[idx], pos[idx], Y, neg, np.full((8, 5), -np.log(40.0)))
            opt.step(grads)

    model = DualEncoder(cfg, seed=1)
    opt = Adam(model.params, lr=1e-2)
    rng = np.random.default_rng(11)
    run(model, opt, rng, 3)
    path = tmp_path / "ckpt.npz"
    persist.save_checkpoint(path, step=3, params=model.params, optimizer=opt.state_dict(), rngs={"batch": rng},
                            miner={"cache": Y[:5].copy()}, extra={"losses": [1.5, float("inf")]},
                            meta={"config": {"lr": 1e-2}})
    run(model, opt, rng, 4)

    ck = persist.load_checkpoint(path)
    assert ck["step"] == 3 and ck["meta"] == {"config": {"lr": 0.01}}
    assert ck["extra"] == {"losses": [1.5, float("inf")]}
    assert_same_state(ck["miner"], {"cache": Y[:5].copy()})
    model2 = DualEncoder(cfg, seed=99)  # different init: everything must come from the checkpoint
    model2.set_params(ck["params"])
    opt2 = Adam(model2.params, lr=1e-2)
    opt2.load_state_dict(ck["optimizer"])
    run(model2, opt2, ck["rngs"]["batch"], 4)
    assert_same_state(model.params, model2.params, "params")
    assert_same_state(opt.state_dict(), opt2.state_dict(), "adam")


def test_object_graph_features(tmp_path: Path) -> None:
    shared = np.arange(5.0)
    ro = np.arange(3)
    ro.flags.writeable = False
    g = np.random.default_rng(0)
    obj = {
        "a": shared, "again": shared, "ro": ro, "f": -0.0, "nan": float("nan"), "inf": float("-inf"),
        "np": np.float32(1.5), "npi": np.int64(7), "t": (1, "x", None, True), "l": [2**100],
        "gen": g, "gen2": g, "odd key!": np.zeros(2), "kernel": rbf(2.0),
        "big": np.zeros(3, dtype=">i4"), "F": np.asfortranarray(np.ones((2, 3))),
    }
    path = tmp_path / "g.npz"
    persist.save_object(path, "bag", obj)
    back = persist.load_object(path, "bag", dict)
    assert_same_state(obj, back)
    assert back["a"] is back["again"] and back["gen"] is back["gen2"]  # shared references stay shared
    assert not back["ro"].flags.writeable and back["a"].flags.writeable


@pytest.mark.parametrize("bad, where", [
    ({"fn": len}, "bag.fn"),
    ({"deep": {"x": [1, object()]}}, "bag.deep.x.1"),
    ({"obj": np.array([None], dtype=object)}, "bag.obj"),
    ({1: 2}, "non-str keys"),
])
def test_unsavable_graph_is_refused_before_writing(tmp_path: Path, bad, where) -> None:
    path = tmp_path / "g.npz"
    with pytest.raises(ValueError, match=re.escape(where)):
        persist.save_object(path, "bag", bad)
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_loading_instantiates_only_whitelisted_classes(tmp_path: Path) -> None:
    """A (validly checksummed) graph naming any other class is refused, nothing imported."""
    path = tmp_path / "evil.npz"
    for cls in ("subprocess.Popen", "Popen", "os.system"):
        graph = {"t": "object", "c": cls, "id": 0, "v": [["args", {"t": "json", "v": "touch pwned"}]]}
        save_arrays(path, "tree", {}, {"graph": graph, "user": {}})
        with pytest.raises(CorruptFileError, match="object graph does not decode"):
            persist.load_tree(path)
    assert not (tmp_path / "pwned").exists()
    graph = {"t": "mystery"}
    save_arrays(path, "tree", {}, {"graph": graph, "user": {}})
    with pytest.raises(CorruptFileError, match="unknown entry type 'mystery'"):
        persist.load_tree(path)


def test_object_loaders_check_kind_and_type(tmp_path: Path) -> None:
    path = tmp_path / "t.npz"
    persist.save_tree(path, Tree.build(np.eye(3)))
    with pytest.raises(WrongKindError, match="holds a 'tree', expected a 'nystrom'"):
        persist.load_nystrom(path)
    with pytest.raises(ValueError, match="tree: expected a reference.tree.Tree, got NystromMap"):
        persist.save_tree(path, NystromMap())
    persist.save_object(path, "tree", {"not": "a tree"})
    with pytest.raises(CorruptFileError, match="holds a dict"):
        persist.load_tree(path)
    save_arrays(path, "checkpoint", {"x": np.zeros(1)})
    with pytest.raises(CorruptFileError, match="without an object graph"):
        persist.load_checkpoint(path)
    with pytest.raises(ValueError, match="step: expected an integer >= 0"):
        persist.save_checkpoint(path, step=-1, params={})
    with pytest.raises(ValueError, match="rngs"):
        persist.save_checkpoint(path, step=0, params={}, rngs={"a": 1})


# --------------------------------------------------------------------------- meaning: invariants on load and save
#
# Each attack below edits a valid object so that it breaks one invariant, then writes it with
# ``check=False`` (the skip option): the file is intact (valid CRCs and SHA-256) but its content is
# not an object the package could have made. Loading it by default must refuse it naming the file
# and the violation; saving it by default must refuse it and write nothing; ``check=False`` loads
# it (that is exactly what the option skips).


def _bad_tree(how: str) -> Tree:
    t = Tree.build(np.random.default_rng(0).standard_normal((200, 5)), leaf_size=8)
    if how == "order not a permutation":
        t.order = t.order.copy()
        t.order[0] = t.order[1]
        t.restore_derived()  # the caches consistent with the bad order: only I1 can catch it
    elif how == "negative radius":
        t.radius = t.radius.copy()
        t.radius[3] = -1.0
    elif how == "NaN point":
        t.points = t.points.copy()
        t.points[7, 2] = np.nan
        t.restore_derived()
    elif how == "leaf_size 0":
        t.leaf_size = 0
    return t


def _bad_nmap(how: str) -> NystromMap:
    rng = np.random.default_rng(1)
    kernel = rbf(0.5) if how == "rbf gamma < 0" else linear()
    m = NystromMap(kernel).fit(rng.standard_normal((100, 6)), np.arange(10))
    if how == "negative eigenvalues":
        m.eigenvalues = -m.eigenvalues
    elif how == "scaled inv_sqrt":
        m.inv_sqrt = m.inv_sqrt * 5.66  # reconstruction error |5.66^2 - 1| = 31 instead of ~1e-15
    elif how == "inv_sqrt off by 1e-6":
        m.inv_sqrt = m.inv_sqrt * (1 + 1e-6)  # error 2e-6: still far above the tolerance (2e-10 here)
    elif how == "repeated landmark":
        m.landmarks = m.landmarks.copy()
        m.landmarks[1] = m.landmarks[0]
    elif how == "rank not the count above the cutoff":
        m.rank = m.rank + 1
    elif how == "record edited":
        m.record = {**m.record, "condition": 1.0}
    elif how == "rbf gamma < 0":
        m.kernel = type(kernel)(gamma=-0.5)
    return m


def _bad_index(how: str):
    from reference.dynamic import DynamicIndex

    G = np.random.default_rng(2).standard_normal((200, 6))
    index = DynamicIndex(G, np.arange(0, 200, 20), leaf_size=8)
    if how == "NaN cache":
        index.cache = index.cache.copy()
        index.cache[5, 1] = np.nan
    elif how == "landmark out of range":
        index.nmap.landmarks = index.nmap.landmarks.copy()
        index.nmap.landmarks[0] = 250
    elif how == "anchor not the cache rows":
        index.cache = index.cache.copy()
        index.cache[index.landmarks[2]] += 1.0
    elif how == "W0 scaled":
        index.W0 = index.W0 * 1.001
    elif how == "order not a permutation":
        index.tree.order = index.tree.order.copy()
        index.tree.order[0] = index.tree.order[1]
        index.tree.restore_derived()
    return index


_ATTACKS = [
    ("tree", _bad_tree, "order not a permutation", "I1: order is not a permutation of the live targets"),
    ("tree", _bad_tree, "negative radius", "negative/non-finite radius -1.0"),
    ("tree", _bad_tree, "NaN point", "layout: point 7 has a non-finite coordinate"),
    ("tree", _bad_tree, "leaf_size 0", "parameters: leaf_size: expected an integer >= 1, got 0"),
    ("nystrom", _bad_nmap, "negative eigenvalues", "eigenvalues: expected them in descending order"),
    ("nystrom", _bad_nmap, "scaled inv_sqrt", "inv_sqrt: expected K_LL^(+1/2)"),
    ("nystrom", _bad_nmap, "inv_sqrt off by 1e-6", "got an error of 2e-06"),
    ("nystrom", _bad_nmap, "repeated landmark", "landmarks: expected distinct ids"),
    ("nystrom", _bad_nmap, "rank not the count above the cutoff", "rank: expected the number of positive eigenvalues"),
    ("nystrom", _bad_nmap, "record edited", "record: expected"),
    ("nystrom", _bad_nmap, "rbf gamma < 0", "gamma: expected a finite number > 0"),
    ("dynamic_index", _bad_index, "NaN cache", "cache: expected finite values"),
    ("dynamic_index", _bad_index, "landmark out of range", "landmarks: expected live target ids < 200"),
    ("dynamic_index", _bad_index, "anchor not the cache rows", "nmap.anchor: expected the landmarks' cache rows"),
    ("dynamic_index", _bad_index, "W0 scaled", "W0: expected K_LL^{-1/2} g_0(L)"),
    ("dynamic_index", _bad_index, "order not a permutation", "I1: order is not a permutation"),
]


@pytest.mark.parametrize("kind, make, how, problem", _ATTACKS, ids=[f"{a[0]}: {a[2]}" for a in _ATTACKS])
def test_an_intact_file_of_an_invalid_object_is_refused_on_load_and_save(tmp_path: Path, kind, make, how,
                                                                          problem) -> None:
    save = {"tree": persist.save_tree, "nystrom": persist.save_nystrom, "dynamic_index": persist.save_dynamic_index}
    load = {"tree": persist.load_tree, "nystrom": persist.load_nystrom, "dynamic_index": persist.load_dynamic_index}
    bad, path = make(how), tmp_path / "x.npz"
    with pytest.raises(ValueError, match=rf"^{kind}: refusing to save an object that violates its invariants") as info:
        save[kind](path, bad)
    assert problem in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing written
    save[kind](path, bad, check=False)
    assert persist.load_arrays(path, kind)  # the container is intact: CRCs and SHA-256 pass
    with pytest.raises(CorruptFileError) as info:
        load[kind](path)
    assert str(info.value).startswith(f"{path}: the content is intact but invalid: ") and problem in str(info.value)
    assert type(load[kind](path, check=False)).__name__ == type(bad).__name__  # what check=False skips


def test_the_valid_objects_pass_their_checks(tmp_path: Path) -> None:
    """No false alarm: every object the package builds (mutated trees, every kernel, a refreshed index) passes."""
    for obj in _used_instances():
        persist.save_object(tmp_path / "o.npz", "bag", {"obj": obj})
        persist.load_object(tmp_path / "o.npz", "bag", dict)
    _bad_tree("none").check_invariants()
    _bad_index("none").check_invariants()


@pytest.mark.parametrize("seed", range(24))
def test_the_nystrom_reconstruction_tolerance_has_no_false_alarms(seed: int) -> None:
    """Random fits (every kernel, rank-deficient and near-duplicate landmarks, scales 1e-3..1e3, ridge and
    cutoff 0) pass check_invariants; the measured error stays below half the tolerance (max 0.21 of it over
    200 such fits when the tolerance was set)."""
    rng = np.random.default_rng(seed)
    d, m = int(rng.integers(1, 30)), int(rng.integers(1, 200))
    G = rng.standard_normal((m + 20, d)) * 10.0 ** rng.uniform(-3, 3)
    if seed % 3 == 0:
        G[: m // 2] = G[0] + 1e-6 * rng.standard_normal((m // 2, d))
    kernel = [linear(), linear(1.0), rbf(10.0 ** rng.uniform(-2, 1)), polynomial(2, 1.0)][seed % 4]
    try:
        nmap = NystromMap(kernel, cutoff=[1e-10, 0.0, 1e-6][seed % 3], ridge=[0.0, 0.0, 1e-3][seed % 3])
        nmap.fit(G, rng.choice(G.shape[0], m, replace=False))
    except ValueError:  # a polynomial kernel overflowing at scale 1e3: refused by fit, nothing to check
        return
    nmap.check_invariants()
    assert nmap.reconstruction_error() <= 0.5 * nmap.reconstruction_tolerance()


def test_a_checkpoint_holding_an_invalid_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    bad = _bad_tree("order not a permutation")
    with pytest.raises(ValueError, match=r"^checkpoint: refusing to save .*I1: order is not a permutation"):
        persist.save_checkpoint(path, step=3, params={}, miner={"tree": bad})
    assert not path.exists()
    state = {"step": 3, "params": {}, "optimizer": None, "rngs": None, "miner": {"tree": bad}, "extra": None}
    graph, arrays = persist.object_to_arrays(state, "checkpoint")
    save_arrays(path, "checkpoint", arrays, {"graph": graph, "user": {}, "step": 3})
    with pytest.raises(CorruptFileError, match=r"content is intact but invalid: Tree: I1: order is not a perm"):
        persist.load_checkpoint(path)
    for step in (-1, "3", 2.5):
        state["step"], state["miner"] = step, None
        graph, arrays = persist.object_to_arrays(state, "checkpoint")
        save_arrays(path, "checkpoint", arrays, {"graph": graph, "user": {}, "step": step})
        with pytest.raises(CorruptFileError, match=r"the step must be an integer >= 0"):
            persist.load_checkpoint(path)


# --------------------------------------------------------------------------- sealed JSON records


def test_a_sealed_record_round_trips_and_refuses_any_edit(tmp_path: Path) -> None:
    from reference.jsonio import write_json

    record = {"final": {"recall@1": 0.0, "loss": 4.123456789012345}, "curve": [1e-300, -0.0, 2**70], "x": None}
    path = tmp_path / "r.json"
    write_json(path, persist.seal_record("compare_run", record))
    assert persist.load_record(path, "compare_run") == record
    with pytest.raises(CorruptFileError, match="checksum mismatch"):
        persist.load_record(path, "other_kind")  # the kind is part of the checksum
    doc = json.loads(path.read_text())
    doc["final"]["recall@1"] = 0.9  # the attack: 0.0 -> 0.9 went into the table
    path.write_text(json.dumps(doc))
    with pytest.raises(CorruptFileError) as info:
        persist.load_record(path, "compare_run")
    assert str(info.value) == (f"{path}: SHA-256 checksum mismatch: the record was altered after it was written "
                               "(delete it to recompute it)")
    path.write_text('{"final": ')
    with pytest.raises(CorruptFileError, match=rf"^{re.escape(str(path))}: not valid UTF-8 JSON"):
        persist.load_record(path, "compare_run")
    path.write_text(json.dumps(record))  # no checksum (an older writer)
    with pytest.raises(CorruptFileError, match="expected a JSON object with a 'sha256' checksum"):
        persist.load_record(path, "compare_run")
    with pytest.raises(ValueError, match="expected no 'sha256' key"):
        persist.seal_record("compare_run", {"sha256": "x"})


_READ_SPECIAL = """
import os, sys
from reference import persist
try:
    persist.load_record(sys.argv[1], "compare_run")
except persist.MissingFileError as e:
    print(e)
"""


@pytest.mark.parametrize("special", ["fifo", "/dev/zero symlink", "directory"])
def test_a_record_path_that_is_not_a_regular_file_is_refused_without_reading(tmp_path: Path, special: str) -> None:
    """In a subprocess with a timeout: a FIFO with no writer or /dev/zero would block or read forever."""
    path = tmp_path / "r.json"
    if special == "fifo":
        os.mkfifo(path)
    elif special == "directory":
        path.mkdir()
    else:
        path.symlink_to("/dev/zero")
    proc = subprocess.run([sys.executable, "-c", _READ_SPECIAL, str(path)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    kind = {"fifo": "FIFO (named pipe)", "directory": "directory", "/dev/zero symlink": "character device"}[special]
    assert proc.stdout.strip() == f"{path}: expected a readable regular file (a regular file), got a {kind}", proc
