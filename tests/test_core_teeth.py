"""Teeth of the core modules, by theme (issue "teeth that hold on mutants nobody has seen").

Each theme pins a behaviour for every place it occurs, not for one mutant:

- invariants: for every clause of ``check_invariants`` (:class:`reference.tree.Tree`,
  :class:`reference.nystrom.NystromMap`, :class:`reference.dynamic.DynamicIndex`), a
  corruption of exactly that clause raises :class:`reference.tree.InvariantError` whose message
  *starts* with that clause's text (anchored, so a message changed or dropped is seen), and the
  valid object passes. Clauses already pinned this way elsewhere (tests/test_tree.py,
  tests/test_documented_details.py, tests/test_public_contracts.py) are not repeated;
- dtypes: every entry point of the float64 table of tests/test_public_contracts.py gives, for
  integer input, bitwise the result of its float64 copy, all floats float64; the Nystrom maps
  and the softmax search the same, for float32 and integer input;
- leaf statistics: the representatives and radii stored by the tree against their definition
  (proofs/README.md section 3), on every node, after build, delete, insert, update, refresh and
  rebuild, and the memory bound of the blocked leaf statistics (tracemalloc, not timing);
  ``rebuild`` keeps the nodes above its depth;
- the search and the samplers: ``softmax.inverse_cdf`` against brute force on its edge cases
  (thresholds at 0, at every cumulative value, at and above the row total, ties, zero-weight
  columns, one column); ``sample_softmax`` as inversion of its own uniform stream; every proposal
  of ``plain.rejection_sample`` against the acceptance rule (8) recomputed from the trace, on one
  target, identical targets and a general tree;
- documented formulas: the Nystrom fit (eigenvalues, rank, inv_sqrt, record), its
  reconstruction error and tolerance; the maps, ``add`` and ``refresh`` of ``DynamicIndex``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import pytest

from reference import plain
from reference import softmax as sm
from reference.dynamic import DynamicIndex
from reference.nystrom import NystromMap, polynomial, ridge_leverage_scores
from reference.tree import InvariantError, Tree, row_distances
from tests.test_public_contracts import FLOAT32_KEPT, FLOAT64_ENTRIES, Env, _arrays

# =========================================================================== invariants


def _tree() -> Tree:
    """A small tree with dead targets, nested (build, then delete)."""
    z = np.random.default_rng(261).standard_normal((80, 3))
    t = Tree.build(z, branching=3, leaf_size=4, seed=2)
    t.delete([3, 40, 41])
    return t


def _leaf_pair_under_two_parents(t: Tree) -> tuple[int, int]:
    """Two leaves v < w with equal counts >= 1 and different parents."""
    leaves = np.flatnonzero(t.is_leaf & (t.count > 0))
    for i, v in enumerate(leaves):
        for w in leaves[i + 1:]:
            if t.count[v] == t.count[w] and t.parent[v] != t.parent[w]:
                return int(v), int(w)
    raise AssertionError("the test tree has no two such leaves")


def _swap_leaf_ranges(t: Tree) -> str:
    """Exchange the ranges and targets of two equal leaves of different parents: every count,
    leaf assignment and position is consistent; only the nesting of ranges breaks."""
    v, w = _leaf_pair_under_two_parents(t)
    tv, tw = np.flatnonzero(t.leaf_of == v), np.flatnonzero(t.leaf_of == w)
    t.leaf_of[tv], t.leaf_of[tw] = w, v
    t.start[[v, w]] = t.start[[w, v]]
    t.stop[[v, w]] = t.stop[[w, v]]
    return rf"^I2: node {v}'s range \[{t.start[v]}, {t.stop[v]}\) is outside its parent {t.parent[v]}'s range"


def _reparent_within_level(t: Tree) -> str:
    """Give the last node another parent of the same depth: depths and child_ptr still agree."""
    v = t.parent.shape[0] - 1
    p = int(t.parent[v])
    w = int(np.flatnonzero((t.depth == t.depth[p]) & (np.arange(t.parent.shape[0]) != p))[0])
    t.parent[v] = w
    return rf"^structure: child_idx lists node {v} under {p}, but its parent is {w}$"


def _swap_order_across_leaves(t: Tree) -> str:
    a, b = 0, int(t.count[t.leaf_of[t.order[0]]])  # first target of the first two leaves
    t.order[[a, b]] = t.order[[b, a]]
    y = int(min(t.order[a], t.order[b]))  # both are now outside their leaves; the smaller id is reported
    return rf"^I2: target {y} is at position \d+ of order, outside its leaf {t.leaf_of[y]}'s range"


def _set(name: str, value: Any) -> Callable[[Any], None]:
    return lambda o: setattr(o, name, value)


def _extra_axis(name: str) -> Callable[[Tree], None]:
    """One more axis: the shape is wrong, the sizes the other checks derive (m, capacity) are not."""
    return lambda t: setattr(t, name, getattr(t, name)[..., None])


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _leaf(t: Tree) -> int:
    return _first(t.is_leaf & (t.count > 0))


def _at(name: str, index: Callable[[Tree], Any], value: Any) -> Callable[[Tree], None]:
    def corrupt(t: Tree) -> None:
        getattr(t, name)[index(t)] = value
    return corrupt


def _add(name: str, index: Callable[[Tree], Any], value: Any) -> Callable[[Tree], None]:
    def corrupt(t: Tree) -> None:
        getattr(t, name)[index(t)] += value
    return corrupt


_LAYOUT = ["points", "alive", "rep", "radius", "count", "parent", "child_ptr", "child_idx", "depth", "is_leaf",
           "order", "start", "stop", "leaf_of", "points_dfs", "rep_norm"]

# (what, corruption, message pattern; a callable pattern is evaluated on the corrupted tree)
TREE_CLAUSES: list[tuple[str, Callable[[Tree], Any], Any]] = [
    ("branching", _set("branching", 1), r"^parameters: branching: "),
    ("leaf_size", _set("leaf_size", 0), r"^parameters: leaf_size: "),
    ("kmeans_iters", _set("kmeans_iters", -1), r"^parameters: kmeans_iters: "),
    ("n_live", _set("n_live", 0), r"^parameters: n_live: "),
    ("dim", _set("dim", 0), r"^parameters: dim: "),
    ("nested not a bool", _set("nested", 1), r"^parameters: nested must be a bool and kmeans_rng a Generator, "
                                                r"got int and Generator$"),
    ("kmeans_rng", _set("kmeans_rng", 0), r"^parameters: nested must be a bool and kmeans_rng a Generator, "
                                          r"got bool and int$"),
    *[(f"{name} shape", _extra_axis(name), rf"^layout: {name} has shape \(\d+, (\d+, )?1\) ") for name in _LAYOUT],
    ("alive kind", lambda t: setattr(t, "alive", t.alive.astype(np.int8)),
     r"^layout: alive has shape \(\d+,\) dtype int8, expected \(\d+,\) kind 'b'$"),
    ("radius kind", lambda t: setattr(t, "radius", t.radius.astype(np.int64)),
     r"^layout: radius has shape \(\d+,\) dtype int64, expected \(\d+,\) kind 'f'$"),
    ("root parent", _at("parent", lambda t: 0, 0), r"^layout: node 0 must be the root \(parent -1, depth 0\)$"),
    ("root depth", _at("depth", lambda t: 0, 1), r"^layout: node 0 must be the root \(parent -1, depth 0\)$"),
    ("n_live", _at("alive", lambda t: 3, True), r"^layout: n_live = 77 but 78 targets are alive$"),
    ("negative radius", _at("radius", _leaf, -1.0),
     lambda t: rf"^layout: node {_leaf(t)} has a non-finite representative or a negative/non-finite radius -1.0$"),
    ("NaN point", _at("points", lambda t: (40, 1), np.nan),
     r"^layout: point 40 has a non-finite coordinate or one beyond MAX_ABS_COORD = 1e\+150$"),
    ("huge point", _at("points", lambda t: (41, 0), 2e150),
     r"^layout: point 41 has a non-finite coordinate or one beyond MAX_ABS_COORD = 1e\+150$"),
    ("parent not earlier", lambda t: t.parent.__setitem__(-1, t.parent.shape[0] - 1),
     lambda t: rf"^structure: node {t.parent.shape[0] - 1} has parent {t.parent.shape[0] - 1} "
               r"\(must be an earlier node\)$"),
    ("depth", _add("depth", lambda t: -1, 1),
     lambda t: rf"^structure: node {t.parent.shape[0] - 1} has depth {t.depth[-1]} but its parent "
               rf"{t.parent[-1]} has depth {t.depth[t.parent[-1]]}$"),
    ("child_ptr start", _at("child_ptr", lambda t: 0, 1),
     lambda t: rf"^structure: child_ptr must rise from 0 to {t.parent.shape[0] - 1}, got 1\.\.{t.parent.shape[0] - 1}$"),
    ("child_idx parent", _reparent_within_level, None),
    ("is_leaf of the root", _at("is_leaf", lambda t: 0, True),
     lambda t: rf"^structure: node 0 has is_leaf=True but {t.child_ptr[1]} children$"),
    ("is_leaf of a leaf", _at("is_leaf", _leaf, False),
     lambda t: rf"^structure: node {_first(t.is_leaf ^ (np.diff(t.child_ptr) == 0))} has is_leaf=False but 0 children$"),
    ("leaf count", _add("count", _leaf, 1),
     lambda t: rf"^I2: leaf {_first(t.is_leaf & (t.count > 0))} has count {t.count[_first(t.is_leaf & (t.count > 0))]} "
               rf"but holds {t.count[_first(t.is_leaf & (t.count > 0))] - 1} live targets$"),
    ("stop - start", _add("stop", _leaf, 1),
     lambda t: rf"^I2: node {_leaf(t)} has stop - start = {t.count[_leaf(t)] + 1} but count {t.count[_leaf(t)]}$"),
    ("root start", lambda t: (_add("start", lambda t: 0, 1)(t), _add("stop", lambda t: 0, 1)(t)),
     r"^I2: root count 77 / start 1 != n_live 77 / 0$"),
    ("order across leaves", _swap_order_across_leaves, None),
    ("child range", _swap_leaf_ranges, None),
    ("rep_norm", _add("rep_norm", lambda t: 2, 1.0), r"^cache: rep_norm\[2\] = [0-9.e+-]+ but \|\|rep\[2\]\|\| = "),
]


@pytest.mark.parametrize("what, corrupt, pattern", TREE_CLAUSES, ids=[w for w, _, _ in TREE_CLAUSES])
def test_tree_check_invariants_names_each_clause(what: str, corrupt, pattern) -> None:
    t = _tree()
    t.check_invariants()
    made = corrupt(t)
    pattern = made if pattern is None else pattern(t) if callable(pattern) else pattern
    with pytest.raises(InvariantError, match=pattern):
        t.check_invariants()


def _nmap(kernel: str = "linear") -> NystromMap:
    G = np.random.default_rng(262).standard_normal((30, 4))
    return NystromMap(kernel).fit(G, np.arange(6))


def _nudged_eigenvalue(n: NystromMap) -> None:
    s = n.eigenvalues.copy()
    s[1] = np.nextafter(s[0], np.inf)  # ascending by one ulp: the order clause, before the values clause
    n.eigenvalues = s


# (what, kernel, corruption, message after "NystromMap: ")
NYSTROM_CLAUSES: list[tuple[str, str, Callable[[NystromMap], Any], str]] = [
    ("kernel type", "linear", _set("kernel", object()), r"kernel: expected a LinearKernel, RBFKernel or "
                                                          r"PolynomialKernel, got object$"),
    ("kernel parameter", "linear", lambda n: setattr(n, "kernel", type(n.kernel)(const=-1.0)), r"const: "),
    ("cutoff negative", "linear", _set("cutoff", -0.5), r"cutoff: "),
    ("cutoff 1", "linear", _set("cutoff", 1.0), r"cutoff: expected a relative eigenvalue cutoff in \[0, 1\), got 1\.0$"),
    ("ridge", "linear", _set("ridge", -1.0), r"ridge: "),
    ("unfitted with landmarks", "linear",
     lambda n: (setattr(n, "inv_sqrt", None), setattr(n, "record", {}), setattr(n, "rank", 0),
                setattr(n, "eigenvalues", None), setattr(n, "anchor", None)),
     r"an unfitted map \(inv_sqrt None\) must have no landmarks, anchor, eigenvalues, rank or record$"),
    *[(f"{name} not an array", "linear", (lambda nm: lambda n: setattr(n, nm, getattr(n, nm).tolist()))(name),
       rf"{name}: expected an array, got list$") for name in ("landmarks", "anchor", "eigenvalues", "inv_sqrt")],
    ("landmarks int32", "linear", lambda n: setattr(n, "landmarks", n.landmarks.astype(np.int32)),
     r"landmarks: expected int64 ids, got int32$"),
    ("landmarks repeated", "linear", _at("landmarks", lambda n: 1, 0), r"landmarks: "),
    *[(f"{name} float32", "linear", (lambda nm: lambda n: setattr(n, nm, getattr(n, nm).astype(np.float32)))(name),
       rf"{name}: expected float64, got float32$") for name in ("anchor", "eigenvalues", "inv_sqrt")],
    ("anchor rows", "linear", lambda n: setattr(n, "anchor", n.anchor[:-1]), r"anchor: expected shape \(6, '\*'\), got \(5, 4\) \(axis 0 should be 6\)$"),
    ("eigenvalues shape", "linear", lambda n: setattr(n, "eigenvalues", n.eigenvalues[:-1]),
     r"eigenvalues: expected shape \(6,\)"),
    ("inv_sqrt shape", "linear", lambda n: setattr(n, "inv_sqrt", n.inv_sqrt[:, :-1]), r"inv_sqrt: expected shape \(6, 6\)"),
    ("anchor beyond the limit", "linear", _at("anchor", lambda n: (0, 0), 2e150), r"anchor: expected \|entries\| <= "
                                                                                   r"MAX_ABS_COORD = 1e\+150"),
    ("rank 0", "linear", _set("rank", 0), r"rank: "),
    ("eigenvalue order", "linear", _nudged_eigenvalue, r"eigenvalues: expected them in descending order$"),
    ("K_LL overflow", "poly3", lambda n: setattr(n, "anchor", n.anchor * 1e120),
     r"anchor: the kernel matrix K_LL overflows$"),
    ("eigenvalue values", "linear", lambda n: setattr(n, "eigenvalues", n.eigenvalues * 1.01),
     r"eigenvalues: expected those of K_LL \+ ridge I of the anchor \(within "),
    ("rank value", "linear", lambda n: setattr(n, "rank", n.rank - 1),
     r"rank: expected the number of positive eigenvalues above the cutoff \(4\), got 3$"),
    ("record", "linear", lambda n: n.record.__setitem__("rank", 3), r"record: expected \{"),
    ("inv_sqrt values", "linear", lambda n: setattr(n, "inv_sqrt", n.inv_sqrt * 1.01),
     r"inv_sqrt: expected K_LL\^\(\+1/2\), reconstructing K_LL within "),
]


@pytest.mark.parametrize("what, kernel, corrupt, pattern", NYSTROM_CLAUSES, ids=[w for w, *_ in NYSTROM_CLAUSES])
def test_nystrom_check_invariants_names_each_clause(what: str, kernel: str, corrupt, pattern: str) -> None:
    n = _nmap("linear") if kernel == "linear" else NystromMap(polynomial(3, 1.0)).fit(
        np.random.default_rng(263).standard_normal((30, 4)), np.arange(6))
    n.check_invariants()
    corrupt(n)
    with pytest.raises(InvariantError, match="^NystromMap: " + pattern):
        n.check_invariants()


def _index() -> DynamicIndex:
    G = np.random.default_rng(264).standard_normal((40, 4))
    return DynamicIndex(G, np.arange(0, 40, 8), leaf_size=4)


def _other_tree(ix: DynamicIndex) -> None:
    ix.tree = Tree.build(np.random.default_rng(0).standard_normal((ix.cache.shape[0] - 1, ix.m)), leaf_size=4)


# (what, corruption, message)
INDEX_CLAUSES: list[tuple[str, Callable[[DynamicIndex], Any], str]] = [
    *[(f"{name} type", _set(name, "x"), rf"^DynamicIndex: {name}: expected a {cls}, got str$")
      for name, cls in (("cache", "ndarray"), ("nmap", "NystromMap"), ("tree", "Tree"), ("W", "ndarray"),
                        ("W0", "ndarray"), ("last_refresh", "dict"))],
    ("beta", _set("beta", 0.0), r"^DynamicIndex: beta: "),
    *[(name, _set(name, -1), rf"^DynamicIndex: {name}: ")
      for name in ("rebuild_depth", "steps_since_refresh", "n_refreshes")],
    ("cache float32", lambda ix: setattr(ix, "cache", ix.cache.astype(np.float32)),
     r"^DynamicIndex: cache: expected float64, got float32$"),
    ("cache 1-D", lambda ix: setattr(ix, "cache", ix.cache[0]), r"^DynamicIndex: cache: expected a 2-D array"),
    ("cache NaN", _at("cache", lambda ix: (39, 0), np.nan), r"^DynamicIndex: cache: expected finite values"),
    ("nmap invalid", lambda ix: setattr(ix.nmap, "rank", 0), r"^NystromMap: rank: "),
    ("nmap unfitted", _set("nmap", NystromMap()), r"^DynamicIndex: nmap: expected a fitted map$"),
    ("tree invalid", lambda ix: setattr(ix.tree, "leaf_size", 0), r"^parameters: leaf_size: "),
    ("tree shape", _other_tree, r"^DynamicIndex: tree: expected points phi of shape \(40, 5\) \(one row per cache "
                                r"row, m = 5 landmarks\) and a map of d = 4, got \(39, 5\) and d = 4$"),
    ("landmark deleted", lambda ix: ix.tree.delete([8]),
     r"^DynamicIndex: landmarks: expected live target ids < 40, got \[0, 8, 16, 24, 32\]$"),
    ("anchor", _add("cache", lambda ix: (16, 2), 1e-9),
     r"^DynamicIndex: nmap.anchor: expected the landmarks' cache rows \(the map is anchored there\)$"),
    *[(f"{name} float32", (lambda nm: lambda ix: setattr(ix, nm, getattr(ix, nm).astype(np.float32)))(name),
       rf"^DynamicIndex: {name}: expected float64, got float32$") for name in ("W", "W0")],
    *[(f"{name} shape", (lambda nm: lambda ix: setattr(ix, nm, getattr(ix, nm)[:, :-1]))(name),
       rf"^DynamicIndex: {name}: expected shape \(5, 4\)") for name in ("W", "W0")],
    ("W beyond the limit", _at("W", lambda ix: (0, 0), 2e150), r"^DynamicIndex: W: expected \|entries\| <= MAX_ABS"),
    ("W0 values", lambda ix: setattr(ix, "W0", ix.W0 * (1 + 1e-9)),
     r"^DynamicIndex: W0: expected K_LL\^\{-1/2\} g_0\(L\) \(project\(anchor\)\), got values beyond rounding from it$"),
]


@pytest.mark.parametrize("what, corrupt, pattern", INDEX_CLAUSES, ids=[w for w, *_ in INDEX_CLAUSES])
def test_dynamic_index_check_invariants_names_each_clause(what: str, corrupt, pattern: str) -> None:
    ix = _index()
    ix.check_invariants()
    corrupt(ix)
    with pytest.raises(InvariantError, match=pattern):
        ix.check_invariants()


def test_w0_within_the_product_bound_passes() -> None:
    """The W0 clause allows the rounding of another BLAS: a change of one ulp per entry passes."""
    ix = _index()
    ix.W0 = np.nextafter(ix.W0, np.inf)
    ix.check_invariants()


@pytest.mark.parametrize("name", ["landmarks", "anchor", "eigenvalues", "rank", "record"])
def test_an_unfitted_map_with_a_leftover_field_is_refused(name: str) -> None:
    """Each field a fit sets, left on an unfitted map (inv_sqrt None), is an InvariantError (an array
    among them made the tuple comparison raise ValueError before)."""
    n = NystromMap()
    n.check_invariants()
    setattr(n, name, {"rank": 1, "record": {"m": 1}}.get(name, np.zeros(2)))
    with pytest.raises(InvariantError, match=r"^NystromMap: an unfitted map \(inv_sqrt None\) must have no "):
        n.check_invariants()


# =========================================================================== dtypes


def _int(x: Any) -> np.ndarray:
    """Integers near 4 x (distinct enough for k-means, small enough to be exact in float64)."""
    return np.rint(4 * np.asarray(x, dtype=np.float64)).astype(np.int64)


def _int_as_f64(x: Any) -> np.ndarray:
    return _int(x).astype(np.float64)


@pytest.mark.parametrize("entry, call", FLOAT64_ENTRIES, ids=[e for e, _ in FLOAT64_ENTRIES])
def test_integer_input_is_computed_in_float64(entry: str, call) -> None:
    """The float64 table of tests/test_public_contracts.py, for integer arrays: converted to float64
    first (as_float_array), so bitwise the result of the float64 copy, every float float64."""
    got, want = _arrays(call(Env(), _int)), _arrays(call(Env(), _int_as_f64))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and (g.dtype.kind != "f" or g.dtype == np.float64), (entry, g.dtype, w.dtype)
        assert np.array_equal(g, w), entry


@pytest.mark.parametrize("entry, call", FLOAT32_KEPT, ids=[e for e, _ in FLOAT32_KEPT])
def test_integer_input_of_the_dtype_keeping_entries_is_float64(entry: str, call) -> None:
    """The entries that keep float32 (tests/test_public_contracts.py) still count integers as
    float64: integer in, float64 out, bitwise the result of the float64 copy."""
    a = np.random.default_rng(15).integers(-3, 4, (3, 5))
    got, want = call(a), call(a.astype(np.float64))
    assert got.dtype == want.dtype == np.float64 and np.array_equal(got, want)


def test_integers_beyond_float32_precision_stay_exact() -> None:
    """Integers are converted to float64, not float32: 2^24 + 1 (not a float32) survives exactly."""
    big = np.array([[2**24 + 1, 0], [0, 2**24 + 3], [5, 7]], dtype=np.int64)
    t = Tree.build(big, leaf_size=1)
    assert t.points.dtype == np.float64 and np.array_equal(t.points, big.astype(np.float64))
    n = NystromMap("linear").fit_anchor(big)
    assert np.array_equal(n.anchor, big.astype(np.float64))
    assert sm.log_partition(big).tolist() == sm.log_partition(big.astype(np.float64)).tolist()


def _nystrom_calls(G: np.ndarray) -> list[np.ndarray]:
    out = []
    for kernel in ("linear", "rbf", "polynomial"):
        a = NystromMap(kernel).fit(G, np.arange(5))
        b = NystromMap(kernel).fit_anchor(G[:5])
        out += [a.inv_sqrt, a.anchor, a.eigenvalues, b.inv_sqrt, b.anchor, a.features(G), a.project(G[:5]),
                a.approximate(G[:, :5], G[:5]),
                ridge_leverage_scores(G, kernel, pilot=12, rng=np.random.default_rng(1))]
    return out


@pytest.mark.parametrize("cast", [_int, lambda x: np.asarray(x).astype(np.float32)], ids=["int", "float32"])
def test_nystrom_entry_points_compute_in_float64(cast) -> None:
    """fit, fit_anchor, features, project, approximate and ridge_leverage_scores, every kernel:
    integer and float32 arrays give bitwise what their float64 copies give, in float64."""
    G = np.random.default_rng(265).standard_normal((20, 6))
    got, want = _nystrom_calls(cast(G)), _nystrom_calls(cast(G).astype(np.float64))
    for g, w in zip(got, want):
        assert g.dtype == np.float64 and np.array_equal(g, w)


@pytest.mark.parametrize("cast", [_int, lambda x: np.asarray(x).astype(np.float32)], ids=["int", "float32"])
def test_inverse_cdf_of_int_and_float32_is_that_of_float64(cast) -> None:
    """inverse_cdf compares cdf and t as given; int64 / float32 values give the ids of their float64
    copies (every int and float32 value is exact in float64), as int64."""
    rng = np.random.default_rng(266)
    cdf = np.cumsum(rng.integers(0, 3, (4, 9)), axis=1) + 1
    t = rng.uniform(-1, cdf[:, -1:] + 1, (4, 7))
    got = sm.inverse_cdf(cast(cdf), cast(t))
    want = sm.inverse_cdf(cast(cdf).astype(np.float64), cast(t).astype(np.float64))
    assert got.dtype == np.int64 and np.array_equal(got, want)


# =========================================================================== leaf statistics


def _subtree(t: Tree, v: int) -> np.ndarray:
    return t.order[t.start[v]:t.stop[v]]


def _assert_statistics_are_their_definition(t: Tree) -> None:
    """Every node of a nested tree against proofs/README.md section 3: a non-empty leaf's rep is
    the centroid of its live targets (within the rounding of two sums of count terms) and its
    radius the largest distance to that rep (bitwise: row_distances is the one distance of the
    tree); an internal node's rep the count-weighted mean of its non-empty children, its radius
    max_c ||r_c - r_v|| + radius[c] (bitwise); an empty node's radius 0; rep_norm = ||rep||."""
    eps = np.finfo(np.float64).eps
    scale = float(np.max(np.abs(t.points[t.alive])))
    assert t.nested
    for v in range(t.parent.shape[0]):
        n = int(t.count[v])
        ch = t.child_idx[t.child_ptr[v]:t.child_ptr[v + 1]]
        if n == 0:
            assert t.radius[v] == 0.0, v
            continue
        if t.is_leaf[v]:
            z = t.points[_subtree(t, v)]
            assert np.abs(t.rep[v] - z.mean(axis=0)).max() <= 2 * n * eps * scale, v
            assert t.radius[v] == row_distances(z, np.broadcast_to(t.rep[v], z.shape)).max(), v
        else:
            ch = ch[t.count[ch] > 0]
            w = t.count[ch].astype(np.float64)
            mean = (t.rep[ch] * w[:, None]).sum(axis=0) / n
            assert np.abs(t.rep[v] - mean).max() <= 2 * (ch.size + 1) * eps * scale, v
            reach = row_distances(t.rep[ch], np.broadcast_to(t.rep[v], (ch.size, t.dim))) + t.radius[ch]
            assert t.radius[v] == reach.max(), v
    assert np.array_equal(t.rep_norm, np.linalg.norm(t.rep, axis=1))


def _grown_radii(t: Tree, before: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """radius[v] = max(radius before, ||z_y - r_v||) over the moved / inserted y below v."""
    want = before.copy()
    for y in ids:
        v = int(t.leaf_of[y])
        while v >= 0:
            want[v] = max(want[v], float(row_distances(t.points[y][None], t.rep[v][None])[0]))
            v = int(t.parent[v])
    return want


def test_leaf_statistics_after_build_delete_insert_update_refresh_rebuild() -> None:
    rng = np.random.default_rng(267)
    z = rng.standard_normal((300, 4)) * rng.uniform(0.1, 3.0, 4)
    t = Tree.build(z, branching=3, leaf_size=5, seed=3)
    _assert_statistics_are_their_definition(t)                      # build
    rep, radius = t.rep.copy(), t.radius.copy()
    t.delete(rng.choice(300, 40, replace=False))                     # delete: nothing moves
    assert np.array_equal(t.rep, rep) and np.array_equal(t.radius, radius) and t.nested
    t.check_invariants()
    new = t.insert(rng.standard_normal((25, 4)) * 4)                # insert: path radii grow to cover
    assert not t.nested and np.array_equal(t.rep, rep)
    assert np.array_equal(t.radius, _grown_radii(t, radius, new))
    radius = t.radius.copy()
    moved = np.flatnonzero(t.alive)[::17]
    t.update(moved, rng.standard_normal((moved.size, 4)) * 5)        # update: the same rule
    assert np.array_equal(t.rep, rep) and np.array_equal(t.radius, _grown_radii(t, radius, moved))
    t.check_invariants()
    leaf = _first(t.is_leaf & (t.count > 0) & (t.radius > 0))
    t.delete(_subtree(t, leaf))                                      # an empty leaf: radius 0 after refresh
    assert t.count[leaf] == 0 and t.radius[leaf] > 0
    t.refresh()                                                      # refresh: the definition again
    _assert_statistics_are_their_definition(t)
    t.check_invariants()
    for depth in (2, 0):                                            # partial and full rebuild
        t.delete(np.flatnonzero(t.alive)[::9])
        t.rebuild(depth)
        _assert_statistics_are_their_definition(t)
        t.check_invariants()


def test_leaf_statistics_over_more_than_one_block() -> None:
    """More live targets than one block of _leaf_stats (2^15): the blocked statistics are the
    definition on every node, as for a small tree."""
    from reference.tree import _BLOCK
    z = np.random.default_rng(268).standard_normal((_BLOCK + 5000, 2))
    t = Tree.build(z, branching=4, leaf_size=64, seed=0, kmeans_iters=1)
    _assert_statistics_are_their_definition(t)


def test_refresh_computes_leaf_statistics_in_blocks() -> None:
    """The module's memory statement (reference/tree.py: "O(M k) node arrays and O(_BLOCK b k)
    temporaries"): the leaf statistics go through blocks of whole leaves of about _BLOCK targets,
    so the peak memory traced during refresh (NumPy reports its arrays to tracemalloc) stays
    below 3 blocks of (_BLOCK + the largest leaf) x k float64 plus 3 copies of the M x k node
    representatives. At N = 4 _BLOCK, k = 8 this bound is about 9.3 MiB; measured 5.3 MiB on
    2026-12-06, and about 19 MiB when all leaves go in one block. A memory bound, not a timing."""
    import tracemalloc

    from reference.tree import _BLOCK
    k = 8
    t = Tree.build(np.random.default_rng(270).standard_normal((4 * _BLOCK, k)), leaf_size=32, kmeans_iters=1)
    rep = t.rep.copy()
    bound = 8 * k * (3 * (_BLOCK + int(t.count[t.is_leaf].max())) + 3 * t.parent.shape[0])
    tracemalloc.start()
    try:
        t.refresh()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(t.rep, rep)   # a refresh of a fresh build changes nothing
    assert peak <= bound, (peak, bound)


# =========================================================================== search and sampler


def _first_above(cdf: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Brute force: the first j with cdf[r, j] > t[r, i], else N - 1."""
    above = cdf[:, None, :] > t[:, :, None]
    return np.where(above.any(axis=2), above.argmax(axis=2), cdf.shape[1] - 1)


@pytest.mark.parametrize("N", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 100])
def test_inverse_cdf_is_the_first_column_above_the_threshold(N: int) -> None:
    """Thresholds below 0, at 0 (u = 0), at every cumulative value (ties: W_j = W_{j+1} for a zero
    weight), strictly between, at the row total (u W_{N-1} rounded up to it) and above it, on rows
    with zero-weight columns first, inside and last: the brute-force answer, as int64 (R, n)."""
    rng = np.random.default_rng(N)
    w = rng.integers(0, 4, (6, N)).astype(np.float64)
    w[0] = 1.0                       # no zero weight
    w[1, 0] = 0.0                    # zero weight first
    w[2, -1] = 0.0                   # zero weight last
    w[:, -1] = np.where(w.sum(axis=1) == 0, 1.0, w[:, -1])  # every row some mass
    cdf = np.cumsum(w, axis=1)
    total = cdf[:, -1:]
    t = np.concatenate([np.full((6, 1), -1.0), np.zeros((6, 1)), cdf, cdf - 0.5, total,
                        np.nextafter(total, np.inf), total + 3, rng.random((6, 5)) * total], axis=1)
    got = sm.inverse_cdf(cdf, t)
    assert got.dtype == np.int64 and got.shape == t.shape
    assert np.array_equal(got, _first_above(cdf, t))


def test_inverse_cdf_never_returns_a_zero_weight_column_below_the_total() -> None:
    """u in [0, 1): t = u W_{N-1} < W_{N-1} never lands on a column of weight 0."""
    w = np.array([[0.0, 2.0, 0.0, 0.0, 1.0, 0.0]])
    cdf = np.cumsum(w, axis=1)
    u = np.array([[0.0, 0.5, 2 / 3 - 1e-12, 2 / 3, 1 - 2 ** -53]])
    got = sm.inverse_cdf(cdf, u * cdf[:, -1:])
    assert got.tolist() == [[1, 1, 1, 4, 4]]


def _check_trace(tree: Tree, q: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Every proposal of plain.rejection_sample against rule (8) recomputed from the trace."""
    trace: list[plain.Proposal] = []
    ids = plain.rejection_sample(tree, q, n, np.random.default_rng(seed), trace=trace)
    assert ids.dtype == np.int64 and ids.shape == (n,)
    assert [p.target for p in trace if p.accepted] == ids.tolist()
    for p in trace:
        assert p.logit == float(q @ tree.points[p.target])
        assert p.log_accept == p.logit - p.bound
        assert p.accepted == (p.uniform < math.exp(min(p.log_accept, 0.0)))
        assert 0.0 <= p.uniform < 1.0
        if p.node >= 0:   # a node entry: a target below it, bound <q, r_v> + ||q|| rho_v
            assert p.target in _subtree(tree, p.node)
            want = float(q @ tree.rep[p.node]) + float(np.linalg.norm(q)) * float(tree.radius[p.node])
            assert abs(p.bound - want) <= 1e-12 * (1 + abs(want))
        else:             # a single-target entry: its own logit, always accepted
            assert p.bound == p.logit and p.log_accept == 0.0 and p.accepted
    return ids


def test_rejection_sample_of_one_target_returns_it_n_times() -> None:
    t = Tree.build(np.array([[1.0, -2.0]]), leaf_size=1)
    ids = _check_trace(t, np.array([0.3, 0.7]), 5, 0)
    assert ids.tolist() == [0] * 5


def test_rejection_sample_of_identical_targets_accepts_every_proposal() -> None:
    """Integer points, all equal: centroids are exact, radii 0, so every bound equals the logit and
    every proposal is accepted (probability exp(0) = 1 > u): n proposals for n draws."""
    t = Tree.build(np.tile([[3.0, -1.0, 2.0]], (40, 1)), branching=2, leaf_size=3)
    trace: list[plain.Proposal] = []
    plain.rejection_sample(t, np.array([0.5, 0.25, -1.0]), 30, np.random.default_rng(1), trace=trace)
    assert len(trace) == 30 and all(p.accepted and p.log_accept == 0.0 for p in trace)
    _check_trace(t, np.array([0.5, 0.25, -1.0]), 30, 1)


@pytest.mark.parametrize("scale", [0.1, 3.0])
def test_rejection_sample_follows_rule_8_on_every_proposal(scale: float) -> None:
    """A general tree, a short and a long query; both see rejections and acceptances."""
    t = _tree()
    q = np.random.default_rng(269).standard_normal(3) * scale
    trace: list[plain.Proposal] = []
    _check_trace(t, q, 200, 2)
    plain.rejection_sample(t, q, 200, np.random.default_rng(2), trace=trace)
    rejected = sum(not p.accepted for p in trace)
    assert 0 < rejected < len(trace), rejected   # both outcomes are exercised


# =========================================================================== Nystrom formulas

# (kernel, cutoff, ridge, m, d): full rank; rank d < m (linear, zero eigenvalues dropped); a cutoff
# that drops positive eigenvalues (so max(cutoff, 16 m eps) is the cutoff); a ridge.
NYSTROM_FITS = [("linear", 1e-10, 0.0, 6, 8), ("linear", 1e-10, 0.0, 9, 4), ("rbf", 0.05, 0.0, 12, 3),
                ("polynomial", 0.0, 0.5, 7, 5)]


def _fit(kernel: str, cutoff: float, ridge: float, m: int, d: int) -> tuple[NystromMap, np.ndarray]:
    G = np.random.default_rng(271 + m).standard_normal((m + 5, d))
    nmap = NystromMap(kernel, cutoff=cutoff, ridge=ridge).fit(G, np.arange(m))
    K = nmap.kernel(G[:m], G[:m]) + ridge * np.eye(m)
    return nmap, 0.5 * (K + K.T)


@pytest.mark.parametrize("fit", NYSTROM_FITS, ids=[f"{k}-m{m}-d{d}" for k, _, _, m, d in NYSTROM_FITS])
def test_nystrom_fit_is_its_definition(fit) -> None:
    """eigenvalues: those of K_LL + ridge I, descending; rank: how many exceed cutoff * the largest
    (and 0); inv_sqrt = U_r diag(s_r^-1/2) U_r^T, symmetric up to rounding, so that inv_sqrt K inv_sqrt is the
    projector on the kept eigenvectors; record: its eight fields from s and r; all within the
    rounding of eigh (m eps times the largest eigenvalue)."""
    nmap, K = _fit(*fit)
    kernel, cutoff, ridge, m, d = fit
    eps = np.finfo(np.float64).eps
    s, r = nmap.eigenvalues, nmap.rank
    want = np.linalg.eigvalsh(K)[::-1]
    assert np.all(np.diff(s) <= 0) and np.abs(s - want).max() <= 16 * m * eps * want[0]
    assert r == np.count_nonzero(s > max(cutoff * s[0], 0.0)) and s[r - 1] > 0
    if kernel == "linear" and d < m:
        assert r == d                                   # the zero eigenvalues are dropped
    if cutoff == 0.05:
        assert r < np.count_nonzero(s > 1e-12 * s[0])   # positive eigenvalues dropped by the cutoff
    np.testing.assert_allclose(nmap.inv_sqrt, nmap.inv_sqrt.T, rtol=0, atol=16 * m * eps * np.abs(nmap.inv_sqrt).max())
    w, U = np.linalg.eigh(K)
    Ur = U[:, ::-1][:, :r]
    scale = 1.0 / s[r - 1]
    np.testing.assert_allclose(nmap.inv_sqrt @ K @ nmap.inv_sqrt, Ur @ Ur.T, rtol=0, atol=1e3 * m * eps * s[0] * scale)
    assert nmap.record == {"m": m, "rank": r, "dropped": m - r, "cutoff": cutoff, "ridge": ridge,
                           "eig_max": float(s[0]), "eig_min_kept": float(s[r - 1]),
                           "condition": float(s[0] / s[r - 1])}
    assert all(type(nmap.record[f]) is int for f in ("m", "rank", "dropped"))
    assert all(type(nmap.record[f]) is float for f in ("cutoff", "ridge", "eig_max", "eig_min_kept", "condition"))


@pytest.mark.parametrize("fit", NYSTROM_FITS, ids=[f"{k}-m{m}-d{d}" for k, _, _, m, d in NYSTROM_FITS])
def test_reconstruction_error_and_tolerance_are_their_formulas(fit) -> None:
    """reconstruction_error = ||phi(L) phi(L)^T - K||_F / ||K||_F with phi(L) = K inv_sqrt, and
    reconstruction_tolerance = sqrt(m - r) max(cutoff, 16 m eps) + 16 m^1.5 eps sqrt(condition),
    both evaluated here from their docstrings; an inv_sqrt scaled by c has error about |c^2 - 1|."""
    nmap, K = _fit(*fit)
    kernel, cutoff, ridge, m, d = fit
    eps = float(np.finfo(np.float64).eps)
    B = K @ nmap.inv_sqrt
    err = float(np.linalg.norm(B @ B.T - K)) / float(np.linalg.norm(K))
    assert nmap.reconstruction_error() == err
    r, s = nmap.rank, nmap.eigenvalues
    tol = math.sqrt(m - r) * max(cutoff, 16 * m * eps) + 16 * m ** 1.5 * eps * math.sqrt(s[0] / s[r - 1])
    assert nmap.reconstruction_tolerance() == pytest.approx(tol, rel=1e-14)
    assert err <= tol
    nmap.inv_sqrt = nmap.inv_sqrt * 1.001
    assert nmap.reconstruction_error() == pytest.approx(1.001 ** 2 - 1, abs=2 * tol + 1e-9)


# =========================================================================== DynamicIndex formulas


def _product_bound(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Entrywise rounding bound of a float64 product A @ B: 2 n eps |A| |B| (n inner terms)."""
    return 2 * A.shape[-1] * np.finfo(np.float64).eps * (np.abs(A) @ np.abs(B))


def test_dynamic_index_maps_are_their_formulas() -> None:
    """psi = beta W_t f (queries), ghat = W_t^T phi (approximate), logits <psi, phi(y)> (logits),
    W_t = project(G_L) (step, which counts the step): each against its product, within the
    rounding of float64 products; the default ids are the live ids ascending."""
    ix = DynamicIndex(np.random.default_rng(272).standard_normal((50, 5)), np.arange(0, 50, 7), beta=2.5,
                      leaf_size=4)
    ix.remove([3, 4, 5])
    G_L = np.random.default_rng(273).standard_normal((ix.m, 5))
    W = ix.step(G_L)
    assert W is ix.W and np.array_equal(W, ix.nmap.project(G_L)) and ix.steps_since_refresh == 1
    F = np.random.default_rng(274).standard_normal((3, 5))
    psi = ix.queries(F)
    assert np.all(np.abs(psi - 2.5 * (F @ W.T)) <= 2.5 * _product_bound(F, np.abs(W.T)) + 1e-300)
    assert np.all(np.abs(ix.queries(F[1]) - psi[1]) <= 2 * 2.5 * _product_bound(F[1], np.abs(W.T)))  # one query
    live = np.setdiff1d(np.arange(50), [3, 4, 5])
    assert np.array_equal(ix.ids, live)
    phi = ix.phi[live]
    assert np.all(np.abs(ix.approximate() - phi @ W) <= _product_bound(phi, W))
    assert np.all(np.abs(ix.approximate([9, 1]) - phi[[6, 1]] @ W) <= _product_bound(phi[[6, 1]], W))  # ids 9, 1
    logits = ix.logits(F)
    assert np.all(np.abs(logits - psi @ phi.T) <= _product_bound(psi, phi.T))
    assert np.all(np.abs(ix.logits(F, [9, 1]) - psi @ phi[[6, 1]].T) <= _product_bound(psi, phi[[6, 1]].T))


@pytest.mark.parametrize("current", [True, False])
def test_dynamic_index_add_is_its_definition(current: bool) -> None:
    """add(current=True): phi the least-squares solution of W_t^T phi = g (exact when g is in the
    span), cache row W_0^T phi; add(current=False): phi = features(g), cache row g itself. New ids
    continue the capacity; the tree holds phi; nothing else moves."""
    ix = DynamicIndex(np.random.default_rng(275).standard_normal((30, 4)), np.arange(0, 30, 5), leaf_size=4)
    ix.step(np.random.default_rng(276).standard_normal((ix.m, 4)))
    g = np.random.default_rng(277).standard_normal((3, 4))
    old_cache, W, W0 = ix.cache.copy(), ix.W.copy(), ix.W0.copy()
    new = ix.add(g, current=current)
    assert new.tolist() == [30, 31, 32] and ix.cache.shape == (33, 4)
    assert np.array_equal(ix.cache[:30], old_cache) and np.array_equal(ix.W, W) and np.array_equal(ix.W0, W0)
    phi = ix.phi[new]
    if current:
        assert np.array_equal(phi, np.linalg.lstsq(W.T, g.T, rcond=None)[0].T)
        assert np.array_equal(ix.cache[new], phi @ W0)
        np.testing.assert_allclose(phi @ W, g, rtol=0, atol=1e-12)   # m = 6 >= d = 4: g is in the span
    else:
        assert np.array_equal(phi, ix.nmap.features(g)) and np.array_equal(ix.cache[new], g)
    ix.check_invariants()


def test_dynamic_index_refresh_is_its_definition() -> None:
    """refresh(G, ids): the new cache holds G for ids and the carried approximation phi_old W_t for
    every other live id; the map is refitted on the landmarks' new rows, W = W_0 = project(anchor);
    the tree holds the new phi; counters and the record as documented (depth capped at the height)."""
    ix = DynamicIndex(np.random.default_rng(278).standard_normal((40, 4)), np.arange(0, 40, 8), leaf_size=4)
    ix.step(np.random.default_rng(279).standard_normal((ix.m, 4)))
    ix.remove([1])
    live = ix.ids
    y = np.array([0, 5, 9, 16])
    G = np.random.default_rng(280).standard_normal((4, 4))
    carried = ix.phi[live] @ ix.W
    phi_old = ix.phi[live].copy()
    rec = ix.refresh(G, y, depth=50)
    want = ix.cache.copy()
    assert np.array_equal(ix.cache[y], G)
    rest = np.setdiff1d(live, y)
    assert np.array_equal(ix.cache[rest], carried[np.searchsorted(live, rest)])
    assert np.array_equal(ix.nmap.anchor, want[ix.landmarks])
    assert np.array_equal(ix.W0, ix.nmap.project(ix.nmap.anchor)) and np.array_equal(ix.W, ix.W0)
    assert np.array_equal(ix.phi[live], ix.nmap.features(ix.cache[live]))
    height = int(ix.tree.depth.max())
    assert (ix.steps_since_refresh, ix.n_refreshes) == (0, 1)
    max_move = float(np.sqrt(np.max(np.sum((ix.phi[live] - phi_old) ** 2, axis=1))))
    assert rec == {"refreshed": 4, "carried": live.size - 4, "rank": ix.nmap.rank,
                   "dropped": ix.nmap.record["dropped"], "depth": rec["depth"], "max_move": max_move}
    assert rec["depth"] <= 50 and rec["depth"] >= min(height, 1) and ix.last_refresh is rec
    ix.check_invariants()


# =========================================================================== sample_softmax


def test_sample_softmax_is_inversion_of_its_stream() -> None:
    """The documented method, from the same generator: u = rng.random((B, n)) row by row,
    W = cumsum(exp(a - max)), id = first j with W_j > u W_{N-1} (brute force). Rows with ties,
    a single column, and entries of weight 0 (logits 800 below the maximum, never returned);
    the input is kept, 1-D logits give (n,), ids are int64; draw_in_place's log Z is
    max + log W_{N-1}, within rounding of scipy's logsumexp."""
    from scipy.special import logsumexp
    a = np.array([[0.0, 0.0, 1.0, 1.0, -800.0], [3.0, -800.0, -800.0, 3.0, 2.0], [5.0, 5.0, 5.0, 5.0, 5.0]])
    keep = a.copy()
    ids = sm.sample_softmax(a, 400, np.random.default_rng(281))
    assert np.array_equal(a, keep) and ids.dtype == np.int64 and ids.shape == (3, 400)
    u = np.random.default_rng(281).random((3, 400))
    W = np.cumsum(np.exp(a - a.max(axis=1, keepdims=True)), axis=1)
    assert np.array_equal(ids, _first_above(W, u * W[:, -1:]))
    assert not np.isin(ids[0], [4]).any() and not np.isin(ids[1], [1, 2]).any()
    assert set(np.unique(ids[2])) == {0, 1, 2, 3, 4}
    one = sm.sample_softmax(a[1], 7, np.random.default_rng(282))
    assert one.shape == (7,) and np.array_equal(one, sm.sample_softmax(a[1:2], 7, np.random.default_rng(282))[0])
    assert sm.sample_softmax(np.array([[2.5]]), 3, np.random.default_rng(0)).tolist() == [[0, 0, 0]]
    _, log_z = sm.draw_in_place(a.copy(), 1, np.random.default_rng(0))
    assert np.array_equal(log_z, a.max(axis=1) + np.log(W[:, -1]))
    np.testing.assert_allclose(log_z, logsumexp(a, axis=1), rtol=8 * np.finfo(float).eps)


# =========================================================================== rebuild


def _families(t: Tree, depth: int) -> list[tuple[int, ...]]:
    """The live descendant sets D(v) of the non-empty nodes at depth <= ``depth``, sorted."""
    v = np.flatnonzero((t.depth <= depth) & (t.count > 0))
    return sorted(tuple(sorted(_subtree(t, int(u)).tolist())) for u in v)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_rebuild_keeps_the_nodes_above_its_depth(depth: int) -> None:
    """rebuild(depth) regrows the subtree of every non-empty node at ``depth`` (and of every
    non-empty leaf above it) and keeps the internal nodes above: the descendant sets of the
    non-empty nodes at depth <= ``depth`` are the same before and after, every node is non-empty,
    leaves hold at most leaf_size targets, and the statistics are their definition."""
    rng = np.random.default_rng(283)
    t = Tree.build(rng.standard_normal((400, 3)), branching=3, leaf_size=4, seed=5)
    t.delete(np.arange(0, 400, 3))
    t.insert(rng.standard_normal((60, 3)) * 2)   # overfull leaves, for the rebuild to split
    assert int(t.count[t.is_leaf].max()) > 4
    before = _families(t, depth)
    t.rebuild(depth)
    assert _families(t, depth) == before
    assert (t.count > 0).all() and int(t.count[t.is_leaf].max()) <= 4
    _assert_statistics_are_their_definition(t)
    t.check_invariants()
