"""Teeth for the kit's user data, the reference's dynamic backends and the kit's command line.

1. What ``load_user_data`` accepts as queries: a path or an ndarray (one query or several, the
   same arrays either way); anything else (None, a list, an int, a float, bytes, a bool) is the
   documented ``ValueError`` naming ``queries`` (not a ``TypeError`` of ``os.path.isfile``, not an
   int taken for a file descriptor, not a message about ``test_positives``); a path that is not a
   regular file is refused naming it, without ``np.load`` ever opening it.
2. An empty step (move, insert or delete of no rows) is a no-op for ``TREE_BACKEND`` and
   ``REBUILD_BACKEND``, called directly and replayed by ``check_dynamic``.
3. The command line refuses every invalid option value up front (before the backend is even
   loaded), naming the option as typed (``--seed``, ``--tv``, ``--power``), exit status 2; ``--k``
   without ``--targets``/``--queries`` is refused; valid values at the boundary pass.

Deterministic (fixed seeds, tiny data); no sampler runs except the ``--tv`` too-small case, which
stops before drawing.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from reference import cli
from reference.conformance import command
from reference.conformance.dynamic import DynamicStep, check_dynamic
from reference.conformance.dynamic_backends import REBUILD_BACKEND, TREE_BACKEND

# ------------------------------------------------------------ 1. what load_user_data takes as queries

Z = np.random.default_rng(0).standard_normal((6, 3))
Q2 = np.random.default_rng(1).standard_normal((2, 3))


def test_load_user_data_takes_a_path_or_an_array_and_names_queries_for_anything_else(tmp_path):
    """Pins the accepted kinds (array and path, 1 and 2 queries, equal results) and that every other
    kind is the ValueError naming ``queries``: before the fix None gave a message about
    ``test_positives``; with ``or os.path.isfile`` (mutant 8) a list or None gave a TypeError."""
    for Q in (Q2, Q2[:1]):
        path = tmp_path / f"Q{Q.shape[0]}.npy"
        np.save(path, Q)
        for queries in (Q, str(path), path):
            z, q = command.load_user_data(Z, queries)
            assert np.array_equal(z, Z) and np.array_equal(q, Q) and q.dtype == np.float64
    fd = os.open(tmp_path / "Q2.npy", os.O_RDONLY)  # an int that is an open regular file: still not a path
    try:
        for bad in (None, [[1.0, 2.0, 3.0]], (1.0, 2.0, 3.0), 0, fd, 2.5, b"Q2.npy", True):
            want = f"queries: expected a path to a .npy file or a numpy array, got {type(bad).__name__}"
            with pytest.raises(ValueError) as info:
                command.load_user_data(Z, bad)
            assert str(info.value) == want, bad
    finally:
        os.close(fd)
    for bad in (None, [[1.0, 2.0, 3.0]]):  # the other argument, the other side: named as itself
        with pytest.raises(ValueError, match=r"^targets: expected a path to a \.npy file or a numpy array, got "):
            command.load_user_data(bad, Q2)


def test_a_path_that_is_not_a_regular_file_is_named_and_never_given_to_np_load(tmp_path, monkeypatch):
    """Pins the ``os.path.isfile`` guard: a directory, a character device or a FIFO of queries is
    refused naming ``queries (path)`` and np.load never sees it (it would block on the FIFO; the
    spy refuses instead, so a break fails here rather than hangs)."""
    opened = []
    real_load = np.load

    def spy(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)):
            opened.append(os.fspath(file))
            raise OSError("the spy does not open paths")
        return real_load(file, *args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    specials = [str(tmp_path), os.devnull]
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo")
        specials.append(str(tmp_path / "fifo"))
    for path in specials:
        with pytest.raises(ValueError, match=r"^queries \(" + re.escape(path) + r"\): expected a "):
            command.load_user_data(Z, path)
    assert opened == []


# ------------------------------------------------------------ 2. empty dynamic steps are no-ops

N0, D = 24, 3
POINTS = np.random.default_rng(2).standard_normal((N0, D))
PROBES = np.random.default_rng(3).standard_normal((3, D))
NONE = np.zeros(0, dtype=np.int64)
EMPTY = {"move": (NONE, np.zeros((0, D))), "insert": (np.zeros((0, D)),), "delete": (NONE,)}


@pytest.mark.parametrize("backend", [TREE_BACKEND, REBUILD_BACKEND], ids=["tree", "rebuild"])
@pytest.mark.parametrize("op", sorted(EMPTY))
def test_an_empty_step_is_a_no_op_of_each_dynamic_backend(backend, op):
    """Pins the adapter's empty move/insert/delete: accepted (TREE_BACKEND raised Tree's "expected
    at least one" before), nothing changes (the same top-k), an empty insert returns int64 ids of
    shape (0,), and the next insert's ids follow on as if the empty step had not happened."""
    state = backend.dynamic_build(POINTS)
    before = np.asarray(state.topk(PROBES, 5))
    got = getattr(state, op)(*EMPTY[op])
    if op == "insert":
        got = np.asarray(got)
        assert got.dtype == np.int64 and got.shape == (0,)
    assert np.array_equal(np.asarray(state.topk(PROBES, 5)), before)
    new = np.asarray(state.insert(np.random.default_rng(4).standard_normal((2, D))))
    assert new.tolist() == [N0, N0 + 1]


def _step(op: str, keys=NONE, vectors=None) -> DynamicStep:
    vectors = np.zeros((0, D)) if vectors is None else vectors
    return DynamicStep(op, f"{op} step", np.asarray(keys, dtype=np.int64), vectors, 1, PROBES, 3, 1.0, False)


@pytest.mark.parametrize("backend", [TREE_BACKEND, REBUILD_BACKEND], ids=["tree", "rebuild"])
def test_check_dynamic_replays_empty_steps_of_every_kind(backend):
    """Pins the end to end run: a script with an empty move, insert and delete among real ones
    passes on both reference backends, every step probed (TREE_BACKEND failed at the first empty one)."""
    rng = np.random.default_rng(5)
    inserted = rng.standard_normal((3, D))
    script = [
        _step("build", vectors=POINTS),
        _step("move"),
        _step("insert"),
        _step("delete"),
        _step("move", [0, 5], rng.standard_normal((2, D))),
        _step("insert", vectors=inserted),
        _step("delete", [1, N0 + 1], np.vstack([POINTS[1], inserted[1]])),  # the deleted rows' last vectors
        _step("delete"),
    ]
    report = check_dynamic(backend.dynamic_build, script=script, time_limit=None)
    assert report.passed, [c.headline for c in report.cases if not c.passed]
    probed = {c.scenario.split()[1] for c in report.cases}
    assert probed == {str(s) for s in range(len(script))}


# ------------------------------------------------------------ 3. the command line's option values

NO_BACKEND = "no_such_module_m2:BACKEND"  # never loaded when an option is refused up front


def _main(capsys, *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        code = cli.main(["conformance", *argv])
        raise SystemExit(code)
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("option, value, message", [
    ("--seed", "-1", "--seed: expected an integer >= 0, got -1"),
    ("--tv", "1", "--tv: expected a TV distance in (0, 1), got 1.0"),
    ("--tv", "2", "--tv: expected a TV distance in (0, 1), got 2.0"),
    ("--tv", "0", "--tv: expected a finite number > 0, got 0.0"),
    ("--power", "0", "--power: expected a finite number > 0, got 0.0"),
    ("--power", "1e-06", "--power: expected a detection probability in (--alpha = 1e-06, 1), got 1e-06"),
    ("--power", "1", "--power: expected a detection probability in (--alpha = 1e-06, 1), got 1.0"),
    ("--power", "1.5", "--power: expected a detection probability in (--alpha = 1e-06, 1), got 1.5"),
    ("--power", "0.5", "--power: expected a detection probability in (--alpha = 0.5, 1), got 0.5"),
])
def test_invalid_option_values_are_refused_up_front_naming_the_option(capsys, option, value, message):
    """Pins each sampler option's refusal: exit 2 and ``error: --option: ...`` before the backend is
    loaded (before: `seed:`/`tv:`/`power:` only once a sampler ran, or a PASS without one). The
    power's lower bound is the run's ``--alpha`` (0.5 in the last case)."""
    code, err = _main(capsys, NO_BACKEND, "--alpha", "0.5" if value == "0.5" else "1e-6", option, value)
    assert (code, err) == (2, f"error: {message}\n")


@pytest.mark.parametrize("argv", [
    ["--seed", "0"], ["--tv", "0.999"], ["--power", "2e-06"], ["--power", "0.999"],
    ["--alpha", "0.5", "--power", "0.6"],
])
def test_valid_option_values_at_the_boundary_reach_the_backend(capsys, argv):
    """The other side: the smallest and largest valid values pass the option checks (the run then
    stops at loading the missing backend: exit 1, not 2)."""
    code, err = _main(capsys, NO_BACKEND, *argv)
    assert code == 1 and err.startswith("error: ") and "no_such_module_m2" in err


def test_k_needs_the_users_data(capsys, tmp_path):
    """Pins ``--k`` without ``--targets``/``--queries`` refused (it was silently ignored), its default
    value given explicitly included; with the data it is used (``--k 99`` > N is refused by it)."""
    for k in ("5", "10"):
        code, err = _main(capsys, NO_BACKEND, "--k", k)
        assert code == 2 and err.startswith("error: --k: ") and f"got --k {k} alone" in err
        assert "--targets and --queries" in err
    code, err = _main(capsys, NO_BACKEND)  # no --k: nothing to refuse
    assert code == 1
    np.save(tmp_path / "Z.npy", Z)
    np.save(tmp_path / "Q.npy", Q2)
    data = ["--targets", str(tmp_path / "Z.npy"), "--queries", str(tmp_path / "Q.npy")]
    assert _main(capsys, NO_BACKEND, *data, "--k", "3")[0] == 1
    code, err = _main(capsys, NO_BACKEND, *data, "--k", "99")
    assert code == 2 and err.startswith("error: --k: expected an integer <= 6, got 99")


def test_a_tv_too_small_for_the_sampler_names_the_option(capsys):
    """Pins the one refusal that needs the data (the draws a TV needs depend on the softmax): named
    ``--tv`` as typed, not ``tv``."""
    code, err = _main(capsys, "reference.conformance:REFERENCE_BACKEND", "--checks", "sampler", "--tv", "0.001")
    assert code == 2 and err.startswith("error: --tv: detecting a TV error of 0.001 needs more than max_n=")


def test_help_still_explains_the_options(capsys):
    """``--help`` shows ``--k`` with the data it needs and each sampler option with its help."""
    with pytest.raises(SystemExit) as info:
        cli.main(["conformance", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--targets Z.npy --queries Q.npy [--k K]" in text
    for opt, words in (("--k K", "k of the top-k check on your data"), ("--seed SEED", "base seed"),
                       ("--tv TV", "TV error the sampler test must detect"),
                       ("--power POWER", "detection probability")):
        assert f"{opt} {words}" in text, opt
