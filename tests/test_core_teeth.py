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
  rebuild;
- the search and the sampler: ``softmax.inverse_cdf`` against brute force on its edge cases
  (thresholds at 0, at every cumulative value, at and above the row total, ties, zero-weight
  columns, one column), and every proposal of ``plain.rejection_sample`` against the acceptance
  rule (8) recomputed from the trace, on one target, identical targets and a general tree.
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
from tests.test_public_contracts import FLOAT64_ENTRIES, Env, _arrays

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
    y = int(t.order[b])  # after the swap: the first live target, in order, outside its leaf
    y = int(min(t.order[a], t.order[b]))
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
