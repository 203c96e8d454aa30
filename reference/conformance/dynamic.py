"""The dynamic protocol: ``dynamic_build(points) -> state``, then updates and queries on the state.

The other protocols hand the backend fresh points at every call, so they only
ever check an index built from scratch. This one checks an index that stays
right while its targets change, as they do in training (proofs/README.md
section 5): every row moves a little at each Nystrom update, a few rows move
far, targets are added and removed, and part of the tree is rebuilt now and
then.

Protocol
--------
``dynamic_build(points) -> state``
    points (N, d) float64; the state's ids of these targets are ``0 .. N-1``
    (row y is id y).

The state provides (attributes or mapping keys):

``move(ids, vectors)``
    target ``ids[i]`` now has the vector ``vectors[i]`` (ids (P,) int64 of
    live targets, vectors (P, d) float64). A Nystrom update moves every live
    target in one call.
``insert(vectors) -> ids``
    new targets (P, d); returns their P ids: distinct non-negative integers,
    none of them live (a deleted id may be reused, as a C++ slot allocator
    does; the reference never reuses one). Keep ids dense: the kit holds one
    row per id up to the largest, and refuses an id above
    ``16 * (rows ever built or inserted) + 1024``.
``delete(ids)``
    remove live targets; their ids must never be returned again (until reused).
``rebuild(depth)``, optional
    re-cluster the subtrees rooted at ``depth`` (0: the whole index; an index
    without a tree may do nothing). The kit calls ``rebuild(1)`` once.
``topk(queries, k) -> ids`` (B, k), ``sample(queries, n, seed) -> ids`` (B, n), ``bracket(queries, tol) -> (lo, hi)``
    the static protocols of :mod:`~reference.conformance.topk`,
    :mod:`~reference.conformance.sampler` and
    :mod:`~reference.conformance.bracket`, answered on the state's current
    live targets with the state's ids; a state provides at least one of them.

P may be 0 (a user's script may move, insert or delete no rows): the state
must take such a step as a no-op (``insert`` returning no ids). Return
values of ``move``, ``delete`` and ``rebuild`` are ignored. The kit looks the
state's methods up once, as soon as ``dynamic_build`` returns (a lookup that
raises fails the build step). Arrays in are C-contiguous NumPy float64 /
int64 copies (a call that writes into them fails, as in every protocol);
outputs may be anything ``numpy.asarray`` accepts. The backend's ``dtype``
(or ``--dtype``) declares the precision of its logits, as for the static
checks.

A PyTorch index maps onto this with a class whose ``move`` writes
``torch.from_numpy(vectors)`` into its embedding table at ``ids`` and
repairs its index; a C++ index (pybind11 or ctypes) with the methods of its
own class: ``insert`` returning the ids its allocator gave, ``delete`` its
erase. :func:`reference.conformance.dynamic_backends.from_static` turns any
backend of the static protocols into one that rebuilds from scratch at every
step (always right, a baseline); :data:`reference.conformance.dynamic_backends.TREE_BACKEND`
is the reference's own :class:`reference.tree.Tree`, repaired in place
(``Tree.update``, ``insert``, ``delete``, ``rebuild``): read its
``TreeState`` as an example of an adapter.

The script and what is checked
------------------------------
:func:`dynamic_script` is a fixed, seeded sequence of operations shaped like
training (:data:`SCRIPT_SEED`; 300 targets in R^8 by default): a build, Nystrom
updates (every live row z -> z (I + E), the linear map a Nystrom update makes,
||E||_2 = 0.05), a few large moves, inserts (near the data and in a new
region), deletes (of the targets the probe queries point at), a partial
rebuild. After every step the kit checks the state's answers against brute
force on the current live points with the static checks themselves, called
on one scenario of the step's points and probe queries:
:func:`~reference.conformance.topk.check_topk` (the classified comparison, the
declared precision), :func:`~reference.conformance.bracket.check_bracket`
and, at the steps marked so, :func:`~reference.conformance.sampler.check_sampler`
(the repository's G-test). The probe queries point at what the step changed
(the moved rows' new vectors, the inserted region, the deleted rows' last
vectors), so a backend that forgot the change answers them wrongly.

Ids and deleted targets: top-k and the sampler are checked on an array with
one row per id up to the largest; a deleted (or never issued) id's row is a
target whose logit is ``-T`` for every query (an extra coordinate: the
queries get a last column of ones, live rows a last coordinate 0, dead rows
``-T``, with ``T = 1000 + 2 max |logit|``), so it is never a true neighbour
and its probability is below 1e-300: returning or drawing it fails, and the
message names the id as the backend gave it. The extra zero coordinate adds
one rounding to the top-k tolerance (its d is d + 1). The bracket is checked
on the live rows alone.

The replay stops at the first step whose checks fail (or whose update the
backend could not take): the report's first line names that step and what it
did; the later steps are listed as not replayed. False alarms: only the
sampler steps are random; they share ``alpha`` (Bonferroni over the sampler
steps, then over their queries), so a correct backend fails the dynamic
check with probability at most ``alpha`` (up to the chi-square approximation
of :func:`reference.stats.g_test`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reference._validation import as_float_array, as_index_array, check_choice, check_int, check_positive
from reference.conformance._calls import (
    DEFAULT_TIME_LIMIT, call_backend, check_callable, check_false_alarm_rate, check_time_limit,
)
from reference.conformance._data import clustered, directions, scenario_label
from reference.conformance.bracket import BracketScenario, check_bracket
from reference.conformance.precision import check_dtype
from reference.conformance.report import Case, CheckReport, error_case
from reference.conformance.sampler import SamplerScenario, check_sampler
from reference.conformance.statistics import DEFAULT_ALPHA, DEFAULT_POWER, DEFAULT_TV
from reference.conformance.topk import TopkScenario, check_topk

__all__ = ["SCRIPT_SEED", "UPDATES", "QUERIES", "DynamicStep", "dynamic_script", "check_dynamic"]

#: Seed of the script (fixed, so reports are reproducible; ``seed`` only changes the sampler seeds).
SCRIPT_SEED = 20230426
#: The state's update methods (``rebuild`` is optional).
UPDATES = ("move", "insert", "delete")
#: The state's query methods (at least one is required).
QUERIES = ("topk", "bracket", "sample")
#: The ops of a script step.
OPS = ("build", "nystrom", "move", "insert", "delete", "rebuild")
#: Largest id the kit accepts, relative to the rows ever built or inserted (ids must be dense).
_ID_SPARSITY, _ID_SLACK = 16, 1024


@dataclass(frozen=True)
class DynamicStep:
    """One operation of the script and the probes checked after it.

    Attributes
    ----------
    op : str
        "build", "nystrom", "move", "insert", "delete" or "rebuild".
    about : str
        What the step does, in words (the report names it).
    keys : ndarray of int
        The kit's row keys the step moves or deletes (keys count the rows in
        the order they were built or inserted; the kit maps them to the
        backend's ids). Empty for build, insert and rebuild.
    vectors : ndarray (P, d)
        The new vectors (build: all points; nystrom and move: one per key;
        insert: the new rows; delete: the deleted rows' last vectors, for the
        probes only).
    depth : int
        The rebuild depth (rebuild only).
    queries : ndarray (B, d)
        Probe queries checked after the step.
    k : int
        k of the top-k probe.
    tol : float
        tol of the bracket probe.
    sample : bool
        Whether the sampler is checked after this step.
    """

    op: str
    about: str
    keys: np.ndarray
    vectors: np.ndarray
    depth: int
    queries: np.ndarray
    k: int
    tol: float
    sample: bool


def _checked_script(script: Sequence[Any]) -> list[DynamicStep]:
    """A caller-given script, validated before the backend is called (replaying the kit's keys).

    Every step: a :class:`DynamicStep` with ``op`` one of :data:`OPS` ("build" at step 0
    and only there), ``about`` a str, ``keys`` a 1-D array of distinct integer keys that
    are live at that step (nystrom, move, delete; empty for the others), ``vectors`` a
    finite 2-D array with the build's d columns (build: N >= 1 rows; nystrom and move: one
    per key; insert: any number; delete: its rows are not used; rebuild: none), ``depth`` an
    integer >= 0, ``queries`` a finite non-empty (B, d) array, ``k`` an integer >= 1, ``tol``
    a finite number > 0, ``sample`` a bool; at least one target is live after every step.
    Messages name ``script[s] ('op')`` and the field.
    """
    script = list(script)
    if not script:
        raise ValueError("script: expected a list of DynamicStep starting with a build step, got an empty one")
    out: list[DynamicStep] = []
    live: set[int] = set()
    next_key = d = 0
    for s, step in enumerate(script):
        label = scenario_label(step, s, DynamicStep, seq="script", name="op")
        op = check_choice(step.op, f"{label}.op", OPS)
        if s == 0 and op != "build":
            raise ValueError(f"script: expected a list of DynamicStep starting with a build step, got {label} first")
        if s > 0 and op == "build":
            raise ValueError(f"{label}.op: expected 'build' at step 0 only (the index is built once), got it at "
                             f"step {s}")
        keys = as_index_array(step.keys, f"{label}.keys", allow_empty=True, unique=True)
        if op in ("build", "insert", "rebuild") and keys.size:
            raise ValueError(f"{label}.keys: expected no keys for a {op} step, got {keys.size}")
        dead = [int(y) for y in keys if int(y) not in live]
        if dead:
            raise ValueError(f"{label}.keys: expected keys of live rows (rows count from 0 in the order they were "
                             f"built or inserted), got {dead[0]}, which is not live at step {s}")
        if op == "build":
            vectors = as_float_array(step.vectors, f"{label}.vectors", ndim=2, dtype=np.float64)
            d = vectors.shape[1]
        else:
            rows = {"nystrom": keys.size, "move": keys.size, "rebuild": 0}.get(op)
            vectors = as_float_array(step.vectors, f"{label}.vectors", shape=(rows, d), dtype=np.float64,
                                     allow_empty=True)
        depth = check_int(step.depth, f"{label}.depth", low=0)
        queries = as_float_array(step.queries, f"{label}.queries", shape=(None, d), dtype=np.float64)
        k = check_int(step.k, f"{label}.k", low=1)
        tol = check_positive(step.tol, f"{label}.tol")
        if not isinstance(step.sample, (bool, np.bool_)):
            raise ValueError(f"{label}.sample: expected a bool, got {step.sample!r}")
        if op in ("build", "insert"):
            live |= set(range(next_key, next_key + vectors.shape[0]))
            next_key += vectors.shape[0]
        elif op == "delete":
            live -= set(keys.tolist())
            if not live:
                raise ValueError(f"{label}.keys: expected at least one live row after the step, got every live "
                                 f"row deleted")
        out.append(dataclasses.replace(step, op=op, keys=keys, vectors=vectors, depth=depth, queries=queries, k=k,
                                       tol=tol, sample=bool(step.sample)))
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def dynamic_script(n: int = 300, d: int = 8, *, seed: int = SCRIPT_SEED) -> list[DynamicStep]:
    """The fixed script of :func:`check_dynamic`: 11 steps shaped like training.

    0 build (n clustered targets); 1, 2 Nystrom updates; 3 large moves (6
    rows jump to norm 4 in new directions); 4 insert (n/10 rows near the data
    and 12 in a new far region); 5 Nystrom; 6 delete (the top-1 of every probe,
    some inserted rows, some moved ones: n/6 in all); 7 Nystrom; 8 partial
    rebuild (depth 1); 9 Nystrom; 10 insert (near the data). The sampler is
    checked after steps 0, 3, 6 and 8. Probe queries at every step: 4 random
    directions of norm 2.5 and one of norm 0.01 (a nearly flat softmax, where
    the coarsest bracket is ~ log of the number of live targets: a count that
    does not follow the inserts and deletes shows there), plus queries of norm
    3 along what the step changed.

    Parameters
    ----------
    n : int, default 300
        Targets built at step 0 (>= 60).
    d : int, default 8
        Dimension (>= 2).
    seed : int
        Seed of the script's data.

    Returns
    -------
    list of DynamicStep
    """
    n = check_int(n, "n", low=60)
    d = check_int(d, "d", low=2)
    rng = np.random.default_rng(seed)
    current: dict[int, np.ndarray] = {}  # key -> current vector (the kit's own view, replayed here)
    steps: list[DynamicStep] = []
    k, tol = 10, 1.0
    none = np.zeros(0, dtype=np.int64)
    next_key = n  # keys count the rows in the order they were built or inserted, as the replay does

    def live() -> tuple[np.ndarray, np.ndarray]:
        keys = np.array(sorted(current), dtype=np.int64)
        return keys, np.array([current[int(y)] for y in keys])

    def probes(extra: np.ndarray) -> np.ndarray:
        base = directions(rng, 5, d, [2.5, 2.5, 2.5, 2.5, 0.01])  # the last nearly flat: log Z ~ log(live count)
        return base if extra.size == 0 else np.vstack([base, 3.0 * _unit(extra)])

    def add(op: str, about: str, keys: np.ndarray, vectors: np.ndarray, extra: np.ndarray,
            depth: int = 0, sample: bool = False) -> None:
        steps.append(DynamicStep(op, about, keys, vectors, depth, probes(extra), k, tol, sample))

    def nystrom(s: int) -> None:
        keys, Z = live()
        E = rng.standard_normal((d, d))
        E *= 0.05 / np.linalg.norm(E, 2)
        new = Z @ (np.eye(d) + E)
        for y, v in zip(keys, new):
            current[int(y)] = v
        moved = float(np.linalg.norm(new - Z, axis=1).max())
        add("nystrom", f"Nystrom update {s}: every one of the {keys.size} live rows moved, z -> z (I + E), "
            f"||E||_2 = 0.05, largest move {moved:.3g}", keys, new, new[rng.choice(keys.size, 2, replace=False)])

    Z0 = clustered(rng, n, d, 8, 0.4)
    for y in range(n):
        current[y] = Z0[y]
    add("build", f"build: {n} clustered targets in R^{d}", none, Z0, Z0[rng.choice(n, 2, replace=False)], sample=True)
    nystrom(1)
    nystrom(2)
    keys, _ = live()
    jump = rng.choice(keys, 6, replace=False)
    far = 4.0 * _unit(rng.standard_normal((6, d)))
    for y, v in zip(jump, far):
        current[int(y)] = v
    add("move", f"large move: 6 rows (ids {sorted(jump.tolist())}, as built) jumped to norm 4 in new directions",
        np.sort(jump), far[np.argsort(jump)], far[:3], sample=True)
    _, Z = live()
    near = Z[rng.choice(Z.shape[0], n // 10)] + 0.2 * rng.standard_normal((n // 10, d))
    centre = 3.5 * _unit(rng.standard_normal(d))
    region = centre + 0.3 * rng.standard_normal((12, d))
    new = np.vstack([near, region])
    first, next_key = next_key, next_key + new.shape[0]
    for i, v in enumerate(new):
        current[first + i] = v
    add("insert", f"insert {new.shape[0]} rows: {near.shape[0]} near the data, 12 in a new region at norm 3.5",
        none, new, np.vstack([centre, region[:2]]))
    nystrom(5)
    keys, Z = live()
    aim = probes(np.zeros(0))  # the rows these would rank first are deleted
    top = np.unique(np.argmax(aim @ Z.T, axis=1))
    inserted = rng.choice(np.arange(first, first + new.shape[0]), 8, replace=False)
    pos = {int(y): i for i, y in enumerate(keys)}
    gone = set(keys[top].tolist()) | set(inserted.tolist()) | set(jump[:3].tolist())
    rest = [int(y) for y in keys if int(y) not in gone]
    gone |= set(rng.choice(rest, max(0, n // 6 - len(gone)), replace=False).tolist())
    gone_keys = np.array(sorted(gone), dtype=np.int64)
    last = np.array([current[int(y)] for y in gone_keys])
    for y in gone_keys:
        del current[int(y)]
    steps.append(DynamicStep(
        "delete", f"delete {gone_keys.size} rows: the top-1 of the probe queries, 8 inserted rows, 3 moved ones",
        gone_keys, last, 0, np.vstack([aim, 3.0 * _unit(Z[[pos[int(y)] for y in keys[top]]])]), k, tol, True))
    nystrom(7)
    add("rebuild", "partial rebuild: the subtrees at depth 1 re-clustered", none, np.zeros((0, d)),
        live()[1][rng.choice(len(current), 2, replace=False)], depth=1, sample=True)
    nystrom(9)
    _, Z = live()
    new = Z[rng.choice(Z.shape[0], 20)] + 0.3 * rng.standard_normal((20, d))
    first, next_key = next_key, next_key + new.shape[0]
    for i, v in enumerate(new):
        current[first + i] = v
    add("insert", "insert 20 rows near the data", none, new, new[:2])
    return steps


class _Replay:
    """The kit's view of the backend's state: key <-> backend id, the current vectors, the dead ids."""

    def __init__(self, d: int) -> None:
        self.d = d
        self.key_to_id: dict[int, int] = {}
        self.vector: dict[int, np.ndarray] = {}  # backend id -> current vector (live ids only)
        self.dead: dict[int, int] = {}  # backend id -> the step that deleted it
        self.next_key = 0
        self.rows = 0  # rows ever built or inserted

    def live(self) -> tuple[np.ndarray, np.ndarray]:
        ids = np.array(sorted(self.vector), dtype=np.int64)
        return ids, np.array([self.vector[int(y)] for y in ids]).reshape(ids.size, self.d)

    def issue(self, ids: Any, count: int) -> tuple[np.ndarray | None, str | None]:
        """Record ``count`` new ids returned by the backend; an error when they are not usable."""
        ids = np.asarray(ids)
        if count == 0 and ids.shape == (0,):  # an empty insert: no id to check ([] is float64 to NumPy)
            return np.zeros(0, dtype=np.int64), None
        if ids.dtype.kind not in "iu" or ids.shape != (count,):
            return None, f"insert returned {ids.dtype} ids of shape {ids.shape}, expected {count} integer ids"
        ids = ids.astype(np.int64)
        limit = _ID_SPARSITY * (self.rows + count) + _ID_SLACK
        if ids.min() < 0 or ids.max() > limit:
            return None, (f"insert returned id {int(ids.min() if ids.min() < 0 else ids.max())}: ids must be in "
                          f"[0, {limit}] (dense: the kit holds a row per id)")
        if np.unique(ids).size != count:
            return None, f"insert returned a repeated id ({ids.tolist()[:10]}...)"
        clash = [int(y) for y in ids if int(y) in self.vector]
        if clash:
            return None, f"insert returned id {clash[0]}, which is live already"
        self.rows += count
        return ids, None

    def arrays(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(live vectors, one row per id with dead rows at logit -T, queries with a column of ones)."""
        ids, Z = self.live()
        cap = max(int(ids.max()), max(self.dead, default=-1)) + 1
        T = 1000.0 + 2.0 * float(np.abs(queries @ Z.T).max())
        full = np.zeros((cap, self.d + 1))
        full[:, self.d] = -T
        full[ids, : self.d] = Z
        full[ids, self.d] = 0.0
        return Z, full, np.hstack([queries, np.ones((queries.shape[0], 1))])


def _method(state: Any, name: str) -> Callable[..., Any] | None:
    fn = state.get(name) if isinstance(state, Mapping) else getattr(state, name, None)
    return fn if callable(fn) else None


def _methods(state: Any) -> tuple[Any, dict[str, Callable[..., Any] | None]]:
    """The state and its protocol methods, looked up once.

    Called inside the guarded build call: a lookup runs the backend's code (a
    property, ``__getattr__``, a mapping's ``get``), so one that raises is the
    build's failure, not an exception out of :func:`check_dynamic`.
    """
    return state, {name: _method(state, name) for name in (*UPDATES, "rebuild", *QUERIES)}


def _dead_note(view: _Replay, case: Case) -> str:
    """Name the deleted ids that appear in a failure message (what the static check cannot know)."""
    text = f"{case.headline} {case.worst}"
    named = {int(m) for m in re.findall(r"(?:id|target) (\d+)", text)}
    dead = sorted(y for y in named if y in view.dead)
    if not dead:
        return ""
    return "a deleted id came back: " + ", ".join(f"id {y} (deleted at step {view.dead[y]})" for y in dead[:3]) + "; "


def check_dynamic(
    dynamic_build: Callable[..., Any],
    *,
    script: Sequence[DynamicStep] | None = None,
    alpha: float = DEFAULT_ALPHA,
    tv: float = DEFAULT_TV,
    power: float = DEFAULT_POWER,
    seed: int = 0,
    dtype: str = "float64",
    time_limit: float | None = DEFAULT_TIME_LIMIT,
) -> CheckReport:
    """Replay the script on ``dynamic_build(points)``'s state; check its answers after every step.

    See the module docstring for the protocol, the script and the rule.

    Parameters
    ----------
    dynamic_build : callable
        ``dynamic_build(points) -> state``.
    script : sequence of DynamicStep, optional
        Default :func:`dynamic_script`. A caller-given one is validated first
        (every field of every step, replaying its keys): a malformed step raises
        ``ValueError`` naming ``script[s]``, its op and the field, before the
        backend is called.
    alpha : float, default 1e-6
        False-alarm rate of the check, in (0, 1) (shared by its sampler steps).
    tv, power, seed
        As in :func:`~reference.conformance.sampler.check_sampler` (the
        sampler after step s gets seed ``seed + 1000 s``).
    dtype : {"float64", "float32"}, default "float64"
        The precision the backend declares for its logits.
    time_limit : float or None, default 600
        Seconds each call of the backend may take (None: no limit).

    Returns
    -------
    CheckReport
        One case per step and probe (scenario ``"step s topk"``, ...), up to
        the first failing step; its failures' headlines name the step and what it did.
    """
    check_callable(dynamic_build, "dynamic_build")
    alpha = check_false_alarm_rate(alpha)  # as check_sampler does; a script may have no sampler step
    seed = check_int(seed, "seed", low=0)
    dtype = check_dtype(dtype)
    time_limit = check_time_limit(time_limit)
    script = dynamic_script() if script is None else _checked_script(script)
    n_sampler = sum(bool(st.sample) for st in script)  # the run's alpha is shared among these steps
    steps = f"{len(script)} step{'' if len(script) == 1 else 's'}"
    at = f"{n_sampler} step{'' if n_sampler == 1 else 's'}"
    report = CheckReport(
        "dynamic",
        f"{steps} of updates shaped like training; after each, top-k, bracket and "
        f"(at {at}) the sampler against brute force on the current points, {dtype} declared; "
        f"false-alarm rate {alpha:g}",
    )
    view = _Replay(script[0].vectors.shape[1])
    methods: dict[str, Callable[..., Any] | None] = {}

    def guarded(fn: Callable[..., Any], name: str, args: list[tuple[str, Any]], convert: Any = None) -> Any:
        return call_backend(fn, name, args, convert=convert, time_limit=time_limit)

    for s, step in enumerate(script):
        where = f"step {s} ({step.about})"
        err: str | None = None
        if step.op == "build":
            built, err = guarded(dynamic_build, "dynamic_build", [("points", step.vectors)], _methods)
            if err is None:
                state, methods = built
                missing = [m for m in UPDATES if methods[m] is None]
                if missing or all(methods[m] is None for m in QUERIES):
                    err = (f"the state dynamic_build returned ({type(state).__name__}) lacks "
                           f"{', '.join(missing) or 'every one of ' + ', '.join(QUERIES)}")
            if err is None:
                for i, v in enumerate(step.vectors):
                    view.key_to_id[i], view.vector[i] = i, v
                view.next_key = view.rows = step.vectors.shape[0]
        elif step.op in ("nystrom", "move", "delete"):
            ids = np.array([view.key_to_id[int(y)] for y in step.keys], dtype=np.int64)
            if step.op == "delete":
                _, err = guarded(methods["delete"], "delete", [("ids", ids)])
                if err is None:
                    for y in ids:
                        del view.vector[int(y)]
                        view.dead[int(y)] = s
            else:
                _, err = guarded(methods["move"], "move", [("ids", ids), ("vectors", step.vectors)])
                if err is None:
                    for y, v in zip(ids, step.vectors):
                        view.vector[int(y)] = v
        elif step.op == "insert":
            got, err = guarded(methods["insert"], "insert", [("vectors", step.vectors)], np.asarray)
            if err is None:
                ids, err = view.issue(got, step.vectors.shape[0])
            if err is None:
                for i, (y, v) in enumerate(zip(ids, step.vectors)):
                    view.key_to_id[view.next_key + i] = int(y)
                    view.vector[int(y)] = v
                    view.dead.pop(int(y), None)
                view.next_key += step.vectors.shape[0]
        else:  # rebuild: _checked_script admits only OPS, and the default script is ours
            fn = methods["rebuild"]
            if fn is not None:
                _, err = guarded(fn, "rebuild", [("depth", step.depth)])
            else:
                where = f"step {s} ({step.about}; the state has no rebuild: nothing done)"
        if err is not None:
            message = f"first wrong at {where}: {err}"
            report.cases.append(error_case(f"step {s} {step.op}", "the update", 0.0, "<=", message))
            _not_replayed(report, script, s)
            return report

        cases = _probe(methods, dynamic_build, view, step, s, dtype=dtype, time_limit=time_limit,
                       alpha=alpha / max(n_sampler, 1), tv=tv, power=power, seed=seed + 1000 * s)
        failed = False
        for protocol, case in cases:
            scenario = f"step {s} {protocol}" + ("" if case.scenario == "step" else f" {case.scenario}")
            if not (case.passed or case.skipped):
                failed = True
                case = dataclasses.replace(
                    case, headline=f"first wrong at {where}: {protocol}: {_dead_note(view, case)}"
                    f"{case.headline or case.worst}")
            report.cases.append(dataclasses.replace(case, scenario=scenario))
        if failed:
            _not_replayed(report, script, s)
            return report
    return report


def _not_replayed(report: CheckReport, script: Sequence[DynamicStep], s: int) -> None:
    if s + 1 < len(script):
        report.cases.append(Case(f"steps {s + 1}-{len(script) - 1}", "", 0.0, 0.0, "<=", True,
                                 f"not replayed: the backend went wrong at step {s}", skipped=True))


def _first_columns(queries: np.ndarray, d: int) -> tuple[np.ndarray, Callable[[], None]]:
    """A C-contiguous copy of ``queries[:, :d]``, and a function writing it back after the call.

    Written back, a backend's write into its queries reaches the array the guarded
    call handed over, which reports it as a modified input.
    """
    q = np.ascontiguousarray(queries[:, :d])

    def back() -> None:
        queries[:, :d] = q

    return q, back


def _probe(methods: Mapping[str, Callable[..., Any] | None], dynamic_build: Callable[..., Any], view: _Replay,
           step: DynamicStep, s: int, *, dtype: str, time_limit: float | None, alpha: float, tv: float, power: float,
           seed: int) -> list[tuple[str, Case]]:
    """The static checks on the current points, through views of the state as static backends."""
    live_Z, full, aug_q = view.arrays(step.queries)
    d = view.d
    out: list[tuple[str, Case]] = []
    topk = methods["topk"]
    if topk is not None:
        k = min(step.k, live_Z.shape[0])
        def static_topk(points: np.ndarray, queries: np.ndarray, k: int) -> Any:
            q, back = _first_columns(queries, d)
            try:
                return topk(q, k)
            finally:
                back()

        rep = check_topk(static_topk, dtype=dtype, time_limit=time_limit,
                         scenarios=[TopkScenario("step", full, aug_q, k, f"{live_Z.shape[0]} live targets")])
        out += [("topk", c) for c in rep.cases]
    bracket = methods["bracket"]
    if bracket is not None:
        rep = check_bracket(lambda points, queries, tol: bracket(queries, tol), dtype=dtype, time_limit=time_limit,
                            scenarios=[BracketScenario("step", live_Z, step.queries, step.tol,
                                                       f"{live_Z.shape[0]} live targets")])
        out += [("bracket", c) for c in rep.cases]
    sample = methods["sample"]
    if sample is not None and step.sample:
        def static_sample(points: np.ndarray, queries: np.ndarray, n: int, seed: int) -> Any:
            if points.shape == full.shape and np.array_equal(points, full):
                q, back = _first_columns(queries, d)
                try:
                    return sample(q, n, seed)
                finally:
                    back()
            fresh = dynamic_build(points)  # the format probes: a state built from their points
            return _method(fresh, "sample")(queries, n, seed)

        rep = check_sampler(static_sample, alpha=alpha, tv=tv, power=power, seed=seed, time_limit=time_limit,
                            scenarios=[SamplerScenario("step", full, aug_q, f"{live_Z.shape[0]} live targets")])
        out += [("sample", c) for c in rep.cases]
    return out
