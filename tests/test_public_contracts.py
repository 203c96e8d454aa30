"""The public entry points' contracts, theme by theme, as tables (issue "teeth that hold on mutants nobody has seen").

Each table lists every public entry point of the core modules with a case per theme, so a
test pins a behaviour for the whole theme rather than for one mutant:

- messages: a bad value of each argument raises ``ValueError`` whose message *starts* with
  the argument's name and a colon (``"n: expected ..."``), the convention of
  :mod:`reference._validation`. The match is anchored (``^n: ``): an unanchored ``"n"``
  would also accept a message naming ``"XXnXX"`` or any other argument containing an n;
- dimensions: an array argument with the wrong number of dimensions (a scalar, one too few,
  one too many) raises that ``ValueError``, never ``IndexError`` or ``TypeError``; a corrupt
  ``leaf_of`` raises :class:`reference.tree.InvariantError`;
- diagnostics: the I3 errors of ``check_invariants`` and ``topk`` name the target that was
  moved out of its node, and that node;
- dtypes: what each entry point documents for float32 input, compared bitwise with the
  float64 computation it must equal;
- empty and degenerate input: ``approximate`` on a ``(0, m)`` phi; the bracket of an
  all-zero tree and a zero query, exactly;
- formulas: ``containment_tolerance`` and the bracket widening ``W`` (proofs/p02_bracket.md,
  "Floating point") against their formulas, evaluated here independently;
- blocks: the paths that split queries into blocks of ``sampling._QUERY_BLOCK`` give, for
  more queries than one block, what the same calls give block by block with the same
  generator;
- the RLS pilot samples without replacement.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np
import pytest
import scipy.linalg

from reference import bounds, sampling
from reference import softmax as sm
from reference._fastpath import bracket_rounding, terms
from reference.bounds import Cut
from reference.dynamic import DynamicIndex
from reference.encoder import DualEncoder, EncoderConfig, TowerCache, param_shapes, params_sha256
from reference.nystrom import (NystromMap, linear, make_kernel, polynomial, rbf, ridge_leverage_scores,
                               select_landmarks)
from reference.tree import InvariantError, Tree

# --------------------------------------------------------------------------- objects


class Env:
    """Fresh small objects for one test: a tree, a Nystrom map, a dynamic index, a model."""

    def __init__(self) -> None:
        rng = np.random.default_rng(26)
        self.points = rng.standard_normal((60, 3))
        self.tree = Tree.build(self.points, branching=3, leaf_size=4, seed=0)
        self.q = rng.standard_normal(3)
        self.Q = rng.standard_normal((2, 3))
        self.G = rng.standard_normal((30, 4))
        self.nmap = NystromMap("linear").fit(self.G, np.arange(5))
        self.index = DynamicIndex(self.G, np.arange(0, 30, 6), leaf_size=4)
        self.config = EncoderConfig(query_dim=3, target_dim=2, hidden=(4,), out_dim=3, beta=2.0)
        self.model = DualEncoder(self.config, seed=0)
        self.X = rng.standard_normal((4, 3))
        self.Y = rng.standard_normal((6, 2))
        self.rng = np.random.default_rng(0)


Z = np.zeros
S = np.float64(1.0)    # a 0-D array argument


def _q_cache(e: Env) -> TowerCache:
    return e.model.forward_queries(e.X)[1]


def _t_cache(e: Env) -> TowerCache:
    return e.model.forward_targets(e.Y)[1]


# (entry point, bad argument, call). The message must start with "<argument>: ".
MESSAGES: list[tuple[str, str, Callable[[Env], Any]]] = [
    # softmax
    ("log_partition", "logits", lambda e: sm.log_partition("a")),
    ("log_partition", "axis", lambda e: sm.log_partition(Z(3), axis=1.5)),
    ("softmax", "logits", lambda e: sm.softmax(np.array([np.nan]))),
    ("softmax", "axis", lambda e: sm.softmax(Z((2, 3)), axis=2)),
    ("sample_softmax", "logits", lambda e: sm.sample_softmax(Z((1, 2, 3)), 1, e.rng)),
    ("sample_softmax", "n", lambda e: sm.sample_softmax(Z(3), 0, e.rng)),
    ("sample_softmax", "rng", lambda e: sm.sample_softmax(Z(3), 1, 0)),
    ("inverse_cdf", "cdf", lambda e: sm.inverse_cdf(Z(3), Z((1, 1)))),
    ("inverse_cdf", "t", lambda e: sm.inverse_cdf(np.ones((2, 3)), Z((3, 1)))),
    ("topk_ids", "scores", lambda e: sm.topk_ids(Z(5), 2)),
    ("topk_ids", "k", lambda e: sm.topk_ids(Z((1, 5)), 6)),
    ("topk_ids", "exclude", lambda e: sm.topk_ids(Z((2, 5)), 2, exclude=[0])),
    ("sampled_log_partition", "a", lambda e: sm.sampled_log_partition(Z((1, 1, 2)), Z((1, 1, 2)))),
    ("sampled_log_partition", "log_q", lambda e: sm.sampled_log_partition(Z((1, 2)), Z((1, 3)))),
    ("full_softmax_loss", "logits", lambda e: sm.full_softmax_loss(Z(3), [0])),
    ("full_softmax_loss", "pos", lambda e: sm.full_softmax_loss(Z((2, 3)), [0, 3])),
    ("sampled_softmax_loss", "a_pos", lambda e: sm.sampled_softmax_loss(Z((2, 1)), Z((2, 3)))),
    ("sampled_softmax_loss", "a_neg", lambda e: sm.sampled_softmax_loss(Z(2), Z((3, 3)))),
    ("sampled_softmax_loss", "log_q", lambda e: sm.sampled_softmax_loss(Z(2), Z((2, 3)), Z((2, 2)))),
    # bounds
    ("Cut", "Cut.query", lambda e: Cut(Z((1, 1), int), Z(1, int), -np.ones(1, int), 1)),
    ("Cut", "Cut.n_queries", lambda e: Cut(Z(1, int), Z(1, int), -np.ones(1, int), True)),
    ("Cut.root", "n_queries", lambda e: Cut.root(0)),
    ("Cut.root", "n_queries", lambda e: Cut.root(1.0)),
    ("Cut.from_entries", "nodes", lambda e: Cut.from_entries([[0]])),
    ("Cut.from_entries", "targets", lambda e: Cut.from_entries([], [-1])),
    ("Cut.stack", "cuts", lambda e: Cut.stack([])),
    ("Cut.of_query", "b", lambda e: Cut.root(2).of_query(2)),
    ("Cut.of_query", "b", lambda e: Cut.root(2).of_query(-1)),
    ("validate_cut", "cut", lambda e: bounds.validate_cut(e.tree, "root")),
    ("log_partition_bracket", "tree", lambda e: bounds.log_partition_bracket(None, e.q, Cut.root())),
    ("log_partition_bracket", "q", lambda e: bounds.log_partition_bracket(e.tree, Z(4), Cut.root())),
    ("log_partition_bracket", "cut", lambda e: bounds.log_partition_bracket(e.tree, e.Q, Cut.root())),
    ("adaptive_cut", "q", lambda e: bounds.adaptive_cut(e.tree, [np.inf, 0, 0])),
    ("adaptive_cut", "tol", lambda e: bounds.adaptive_cut(e.tree, e.q, tol=0.0)),
    ("cut_eps", "cut", lambda e: bounds.cut_eps(e.tree, e.q, Cut.from_entries([10**6]))),
    ("cut_distribution", "q", lambda e: bounds.cut_distribution(e.tree, "q", Cut.root())),
    ("log_prob_bound", "cut", lambda e: bounds.log_prob_bound(e.tree, e.q, Cut.from_entries([], [10**6]))),
    ("tv_bound", "q", lambda e: bounds.tv_bound(e.tree, Z((1, 2, 3)), Cut.root())),
    ("kl_bound", "cut", lambda e: bounds.kl_bound(e.tree, e.q, None)),
    ("grad_bias_bound", "H", lambda e: bounds.grad_bias_bound(e.tree, e.q, Cut.root(), H=-1.0)),
    # sampling
    ("cut_sample", "queries", lambda e: sampling.cut_sample(e.tree, Z(2), 1, e.rng)),
    ("cut_sample", "n", lambda e: sampling.cut_sample(e.tree, e.q, 0, e.rng)),
    ("cut_sample", "rng", lambda e: sampling.cut_sample(e.tree, e.q, 1, None)),
    ("cut_sample", "cut", lambda e: sampling.cut_sample(e.tree, e.Q, 1, e.rng, cut=Cut.root(3))),
    ("cut_sample", "tol", lambda e: sampling.cut_sample(e.tree, e.q, 1, e.rng, tol=-1.0)),
    ("rejection_sample", "queries", lambda e: sampling.rejection_sample(e.tree, Z((1, 1, 3)), 1, e.rng)),
    ("rejection_sample", "n", lambda e: sampling.rejection_sample(e.tree, e.q, 1.0, e.rng)),
    ("rejection_sample", "rng", lambda e: sampling.rejection_sample(e.tree, e.q, 1, 0)),
    ("rejection_sample", "tol", lambda e: sampling.rejection_sample(e.tree, e.q, 1, e.rng, tol=0.0)),
    ("rejection_envelope", "queries", lambda e: sampling.rejection_envelope(e.tree, "q", 1)),
    ("rejection_envelope", "n", lambda e: sampling.rejection_envelope(e.tree, e.q, 0)),
    ("rejection_envelope", "tol", lambda e: sampling.rejection_envelope(e.tree, e.q, 1, tol=np.nan)),
    ("topk", "queries", lambda e: sampling.topk(e.tree, Z(4), 1)),
    ("topk", "k", lambda e: sampling.topk(e.tree, e.q, 0)),
    ("topk", "k", lambda e: sampling.topk(e.tree, e.q, 61)),
    # tree
    ("Tree.build", "points", lambda e: Tree.build(Z(3))),
    ("Tree.build", "branching", lambda e: Tree.build(e.points, branching=1)),
    ("Tree.build", "leaf_size", lambda e: Tree.build(e.points, leaf_size=0)),
    ("Tree.build", "kmeans_iters", lambda e: Tree.build(e.points, kmeans_iters=-1)),
    ("Tree.build", "seed", lambda e: Tree.build(e.points, seed=-1)),
    ("Tree.insert", "points", lambda e: e.tree.insert(Z((1, 4)))),
    ("Tree.delete", "ids", lambda e: e.tree.delete([60])),
    ("Tree.update", "ids", lambda e: e.tree.update([0.5], Z((1, 3)))),
    ("Tree.update", "points", lambda e: e.tree.update([0], Z((2, 3)))),
    ("Tree.rebuild", "depth", lambda e: e.tree.rebuild(-1)),
    # nystrom
    ("linear", "const", lambda e: linear(-1.0)),
    ("rbf", "gamma", lambda e: rbf(0.0)),
    ("polynomial", "degree", lambda e: polynomial(0)),
    ("polynomial", "c", lambda e: polynomial(2, c=-1.0)),
    ("make_kernel", "kernel", lambda e: make_kernel("cosine")),
    ("ridge_leverage_scores", "G0", lambda e: ridge_leverage_scores(Z(3), rng=e.rng)),
    ("ridge_leverage_scores", "kernel", lambda e: ridge_leverage_scores(e.G, 3, rng=e.rng)),
    ("ridge_leverage_scores", "ridge", lambda e: ridge_leverage_scores(e.G, ridge=0.0, rng=e.rng)),
    ("ridge_leverage_scores", "pilot", lambda e: ridge_leverage_scores(e.G, "rbf", pilot=31, rng=e.rng)),
    ("ridge_leverage_scores", "rng", lambda e: ridge_leverage_scores(e.G, rng=1)),
    ("select_landmarks", "G0", lambda e: select_landmarks([[np.nan]], 1, rng=e.rng)),
    ("select_landmarks", "m", lambda e: select_landmarks(e.G, 31, rng=e.rng)),
    ("select_landmarks", "method", lambda e: select_landmarks(e.G, 2, method="kmeans", rng=e.rng)),
    ("select_landmarks", "rng", lambda e: select_landmarks(e.G, 2, rng=None)),
    ("NystromMap", "cutoff", lambda e: NystromMap(cutoff=1.0)),
    ("NystromMap", "cutoff", lambda e: NystromMap(cutoff=-1e-3)),   # each side of the range
    ("NystromMap", "ridge", lambda e: NystromMap(ridge=-1.0)),
    ("NystromMap.fit", "G0", lambda e: NystromMap().fit(Z(3), [0])),
    ("NystromMap.fit", "landmarks", lambda e: NystromMap().fit(e.G, [0, 0])),
    ("NystromMap.fit_anchor", "anchor", lambda e: NystromMap().fit_anchor(Z(3))),
    ("NystromMap.fit_anchor", "landmarks", lambda e: NystromMap().fit_anchor(e.G[:3], [0, 1])),
    ("NystromMap.features", "G", lambda e: e.nmap.features(Z(4))),
    ("NystromMap.project", "G_L", lambda e: e.nmap.project(Z((4, 2)))),
    ("NystromMap.approximate", "phi", lambda e: e.nmap.approximate(Z((2, 4)), Z((5, 2)))),
    ("NystromMap.approximate", "W", lambda e: e.nmap.approximate(Z((2, 5)), Z((4, 2)))),
    # dynamic
    ("DynamicIndex", "cache", lambda e: DynamicIndex(Z(4), [0])),
    ("DynamicIndex", "landmarks", lambda e: DynamicIndex(e.G, [[0, 1]])),
    ("DynamicIndex", "beta", lambda e: DynamicIndex(e.G, [0, 1], beta=0.0)),
    ("DynamicIndex", "rebuild_depth", lambda e: DynamicIndex(e.G, [0, 1], rebuild_depth=-1)),
    ("DynamicIndex.step", "G_L", lambda e: e.index.step(Z((4, 4)))),
    ("DynamicIndex.queries", "F", lambda e: e.index.queries(Z(3))),
    ("DynamicIndex.approximate", "ids", lambda e: e.index.approximate([30])),
    ("DynamicIndex.logits", "F", lambda e: e.index.logits(Z((1, 1, 4)))),
    ("DynamicIndex.logits", "ids", lambda e: e.index.logits(Z(4), [-1])),
    ("DynamicIndex.bracket", "tol", lambda e: e.index.bracket(Z(4), tol=0.0)),
    ("DynamicIndex.cut_sample", "n", lambda e: e.index.cut_sample(Z(4), 0, e.rng)),
    ("DynamicIndex.rejection_sample", "rng", lambda e: e.index.rejection_sample(Z(4), 1, "rng")),
    ("DynamicIndex.topk", "k", lambda e: e.index.topk(Z(4), 0)),
    ("DynamicIndex.refresh", "G", lambda e: e.index.refresh(Z((30, 3)))),
    ("DynamicIndex.refresh", "ids", lambda e: e.index.refresh(Z((1, 4)), [1, 1])),
    ("DynamicIndex.refresh", "depth", lambda e: e.index.refresh(e.G, depth=-1)),
    ("DynamicIndex.add", "G", lambda e: e.index.add(Z(4))),
    ("DynamicIndex.add", "current", lambda e: e.index.add(Z((1, 4)), current="yes")),
    ("DynamicIndex.remove", "ids", lambda e: e.index.remove([0.5])),
    # encoder
    ("EncoderConfig", "query_dim", lambda e: EncoderConfig(query_dim=0, target_dim=2)),
    ("EncoderConfig", "target_dim", lambda e: EncoderConfig(query_dim=2, target_dim=1.0)),
    ("EncoderConfig", "out_dim", lambda e: EncoderConfig(query_dim=2, target_dim=2, out_dim=0)),
    ("EncoderConfig", "hidden", lambda e: EncoderConfig(query_dim=2, target_dim=2, hidden=5)),
    ("EncoderConfig", "hidden[1]", lambda e: EncoderConfig(query_dim=2, target_dim=2, hidden=(2, 0))),
    ("EncoderConfig", "activation", lambda e: EncoderConfig(query_dim=2, target_dim=2, activation="elu")),
    ("EncoderConfig", "normalize", lambda e: EncoderConfig(query_dim=2, target_dim=2, normalize=1)),
    ("EncoderConfig", "beta", lambda e: EncoderConfig(query_dim=2, target_dim=2, beta=0.0)),
    ("EncoderConfig", "dtype", lambda e: EncoderConfig(query_dim=2, target_dim=2, dtype="float16")),
    ("EncoderConfig.widths", "tower", lambda e: e.config.widths("both")),
    ("param_shapes", "config", lambda e: param_shapes({"query_dim": 3, "target_dim": 2})),
    ("params_sha256", "params", lambda e: params_sha256([Z(2)])),
    ("params_sha256", "params['w']", lambda e: params_sha256({"w": np.array([None])})),
    ("DualEncoder", "config", lambda e: DualEncoder({"query_dim": 3})),
    ("DualEncoder", "seed", lambda e: DualEncoder(e.config, seed=-1)),
    ("DualEncoder.set_params", "params", lambda e: e.model.set_params({})),
    ("DualEncoder.set_params", "params['query.W0']",
     lambda e: e.model.set_params({**e.model.get_params(), "query.W0": Z((3, 5))})),
    ("DualEncoder.forward_queries", "X", lambda e: e.model.forward_queries(Z(3))),
    ("DualEncoder.forward_targets", "Y", lambda e: e.model.forward_targets(Z((2, 3)))),
    ("DualEncoder.backward_queries", "cache", lambda e: e.model.backward_queries(_t_cache(e), Z((6, 3)))),
    ("DualEncoder.backward_queries", "dF", lambda e: e.model.backward_queries(_q_cache(e), Z((4, 2)))),
    ("DualEncoder.backward_targets", "dG", lambda e: e.model.backward_targets(_t_cache(e), Z((4, 3)))),
    ("DualEncoder.encode_queries", "X", lambda e: e.model.encode_queries(Z((1, 1, 3)))),
    ("DualEncoder.encode_targets", "Y", lambda e: e.model.encode_targets("Y")),
    ("DualEncoder.logits", "F", lambda e: e.model.logits(Z((2, 2)), Z((2, 3)))),
    ("DualEncoder.logits", "G", lambda e: e.model.logits(Z((2, 3)), Z(3))),
    ("DualEncoder.full_softmax_loss", "X", lambda e: e.model.full_softmax_loss(Z((4, 2)), [0] * 4, e.Y)),
    ("DualEncoder.full_softmax_loss", "pos", lambda e: e.model.full_softmax_loss(e.X, [0] * 3, e.Y)),
    ("DualEncoder.full_softmax_loss", "Y_all", lambda e: e.model.full_softmax_loss(e.X, [0] * 4, Z((6, 3)))),
    ("DualEncoder.sampled_softmax_loss", "neg",
     lambda e: e.model.sampled_softmax_loss(e.X, [0] * 4, e.Y, [1, 2, 3, 4])),
    ("DualEncoder.sampled_softmax_loss", "log_q",
     lambda e: e.model.sampled_softmax_loss(e.X, [0] * 4, e.Y, Z((4, 2), int), Z((4, 3)))),
]


def _anchored(name: str) -> str:
    return "^" + re.escape(name) + ": "


@pytest.mark.parametrize("entry, arg, call", MESSAGES, ids=[f"{e}-{a}" for e, a, _ in MESSAGES])
def test_a_bad_argument_is_a_value_error_that_starts_with_its_name(entry: str, arg: str, call) -> None:
    with pytest.raises(ValueError, match=_anchored(arg)):
        call(Env())


def test_the_message_table_covers_every_public_entry_point() -> None:
    """Every public function, class and method of the core modules that takes an argument has a
    row (draw_in_place and row_distances are documented as unchecked internals of other entry
    points; the kernel objects' __call__ and diag take validated arrays from the map)."""
    import inspect

    from reference import dynamic, encoder, nystrom, tree

    covered = {e for e, _, _ in MESSAGES}
    unchecked = {"draw_in_place", "row_distances", "Kernel", "InvariantError", "TowerCache", "LinearKernel.diag",
                 "RBFKernel.diag", "PolynomialKernel.diag", "LinearKernel", "RBFKernel", "PolynomialKernel"}
    missing = []
    for mod in (sm, bounds, sampling, tree, nystrom, dynamic, encoder):
        for name in mod.__all__:
            obj = getattr(mod, name)
            if not callable(obj) or name in unchecked:
                continue
            if name not in covered and (not inspect.isclass(obj) or len(inspect.signature(obj).parameters)):
                missing.append(name)
            if inspect.isclass(obj):
                for m, f in vars(obj).items():
                    f = getattr(f, "__func__", f)
                    if m.startswith("_") or not inspect.isfunction(f) or f"{name}.{m}" in unchecked:
                        continue
                    if "__mutmut_" in m:  # the mutation runner's copies of each method, not entry points
                        continue
                    takes_args = len(inspect.signature(f).parameters) > (0 if isinstance(vars(obj)[m], staticmethod)
                                                                         else 1)
                    if takes_args and f"{name}.{m}" not in covered:
                        missing.append(f"{name}.{m}")
    assert not missing, f"public entry points without a row in MESSAGES: {missing}"


# --------------------------------------------------------------------------- dimensions

# (entry point, argument, call with the array argument x, the wrong numbers of dimensions).
DIMENSIONS: list[tuple[str, str, Callable[[Env, np.ndarray], Any], tuple[int, ...]]] = [
    ("log_partition", "logits", lambda e, x: sm.log_partition(x), (0,)),
    ("softmax", "logits", lambda e, x: sm.softmax(x), (0,)),
    ("sample_softmax", "logits", lambda e, x: sm.sample_softmax(x, 1, e.rng), (0, 3)),
    ("inverse_cdf", "cdf", lambda e, x: sm.inverse_cdf(x, Z((2, 1))), (0, 1, 3)),
    ("inverse_cdf", "t", lambda e, x: sm.inverse_cdf(np.ones((2, 2)), x), (0, 1, 3)),
    ("topk_ids", "scores", lambda e, x: sm.topk_ids(x, 1), (0, 1, 3)),
    ("sampled_log_partition", "a", lambda e, x: sm.sampled_log_partition(x, x), (0, 3)),
    ("full_softmax_loss", "logits", lambda e, x: sm.full_softmax_loss(x, [0]), (0, 1, 3)),
    ("sampled_softmax_loss", "a_pos", lambda e, x: sm.sampled_softmax_loss(x, Z((2, 2))), (0, 2)),
    ("sampled_softmax_loss", "a_neg", lambda e, x: sm.sampled_softmax_loss(Z(2), x), (0, 1, 3)),
    ("sampled_softmax_loss", "a_neg", lambda e, x: sm.sampled_softmax_loss(Z(2), x, Z((2, 2)) - 1), (0, 1, 3)),
    ("log_partition_bracket", "q", lambda e, x: bounds.log_partition_bracket(e.tree, x, Cut.root()), (0, 3)),
    ("adaptive_cut", "q", lambda e, x: bounds.adaptive_cut(e.tree, x), (0, 3)),
    ("cut_eps", "q", lambda e, x: bounds.cut_eps(e.tree, x, Cut.root()), (0, 3)),
    ("cut_distribution", "q", lambda e, x: bounds.cut_distribution(e.tree, x, Cut.root()), (0, 3)),
    ("log_prob_bound", "q", lambda e, x: bounds.log_prob_bound(e.tree, x, Cut.root()), (0, 3)),
    ("tv_bound", "q", lambda e, x: bounds.tv_bound(e.tree, x, Cut.root()), (0, 3)),
    ("kl_bound", "q", lambda e, x: bounds.kl_bound(e.tree, x, Cut.root()), (0, 3)),
    ("grad_bias_bound", "q", lambda e, x: bounds.grad_bias_bound(e.tree, x, Cut.root()), (0, 3)),
    ("Cut.from_entries", "nodes", lambda e, x: Cut.from_entries(x.astype(int)), (0, 2)),
    ("Cut.from_entries", "targets", lambda e, x: Cut.from_entries([], x.astype(int)), (0, 2)),
    ("rejection_envelope", "queries", lambda e, x: sampling.rejection_envelope(e.tree, x, 1), (0, 3)),
    ("cut_sample", "queries", lambda e, x: sampling.cut_sample(e.tree, x, 1, e.rng), (0, 3)),
    ("rejection_sample", "queries", lambda e, x: sampling.rejection_sample(e.tree, x, 1, e.rng), (0, 3)),
    ("topk", "queries", lambda e, x: sampling.topk(e.tree, x, 1), (0, 3)),
    ("Tree.build", "points", lambda e, x: Tree.build(x), (0, 1, 3)),
    ("Tree.insert", "points", lambda e, x: e.tree.insert(x), (0, 1, 3)),
    ("Tree.update", "points", lambda e, x: e.tree.update([0], x), (0, 1, 3)),
    ("ridge_leverage_scores", "G0", lambda e, x: ridge_leverage_scores(x, rng=e.rng), (0, 1, 3)),
    ("select_landmarks", "G0", lambda e, x: select_landmarks(x, 1, rng=e.rng), (0, 1, 3)),
    ("NystromMap.fit", "G0", lambda e, x: NystromMap().fit(x, [0]), (0, 1, 3)),
    ("NystromMap.fit_anchor", "anchor", lambda e, x: NystromMap().fit_anchor(x), (0, 1, 3)),
    ("NystromMap.features", "G", lambda e, x: e.nmap.features(x), (0, 1, 3)),
    ("NystromMap.project", "G_L", lambda e, x: e.nmap.project(x), (0, 1, 3)),
    ("NystromMap.approximate", "phi", lambda e, x: e.nmap.approximate(x, Z((5, 2))), (0, 1, 3)),
    ("NystromMap.approximate", "W", lambda e, x: e.nmap.approximate(Z((2, 5)), x), (0, 1, 3)),
    ("DynamicIndex", "cache", lambda e, x: DynamicIndex(x, [0]), (0, 1, 3)),
    ("DynamicIndex.step", "G_L", lambda e, x: e.index.step(x), (0, 1, 3)),
    ("DynamicIndex.queries", "F", lambda e, x: e.index.queries(x), (0, 3)),
    ("DynamicIndex.logits", "F", lambda e, x: e.index.logits(x), (0, 3)),
    ("DynamicIndex.topk", "F", lambda e, x: e.index.topk(x, 1), (0, 3)),
    ("DynamicIndex.bracket", "F", lambda e, x: e.index.bracket(x), (0, 3)),
    ("DynamicIndex.cut_sample", "F", lambda e, x: e.index.cut_sample(x, 1, e.rng), (0, 3)),
    ("DynamicIndex.rejection_sample", "F", lambda e, x: e.index.rejection_sample(x, 1, e.rng), (0, 3)),
    ("DynamicIndex.approximate", "ids", lambda e, x: e.index.approximate(x.astype(int)), (0, 2)),
    ("DynamicIndex.remove", "ids", lambda e, x: e.index.remove(x.astype(int)), (0, 2)),
    ("Tree.delete", "ids", lambda e, x: e.tree.delete(x.astype(int)), (0, 2)),
    ("topk_ids", "exclude", lambda e, x: sm.topk_ids(Z((2, 5)), 1, exclude=x.astype(int)), (0, 2)),
    ("full_softmax_loss", "pos", lambda e, x: sm.full_softmax_loss(Z((2, 3)), x.astype(int)), (0, 2)),
    ("DynamicIndex.add", "G", lambda e, x: e.index.add(x), (0, 1, 3)),
    ("DynamicIndex.refresh", "G", lambda e, x: e.index.refresh(x), (0, 1, 3)),
    ("DualEncoder.forward_queries", "X", lambda e, x: e.model.forward_queries(x), (0, 1, 3)),
    ("DualEncoder.encode_targets", "Y", lambda e, x: e.model.encode_targets(x), (0, 1, 3)),
    ("DualEncoder.backward_queries", "dF", lambda e, x: e.model.backward_queries(_q_cache(e), x), (0, 1, 3)),
    ("DualEncoder.logits", "F", lambda e, x: e.model.logits(x, Z((2, 3))), (0, 1, 3)),
    ("DualEncoder.full_softmax_loss", "Y_all", lambda e, x: e.model.full_softmax_loss(e.X, [0] * 4, x), (0, 1, 3)),
]

#: The last axis has the length the argument needs (3 for tree queries, 4 for the index's
#: embeddings, ...), so only the number of dimensions is wrong.
_LAST = {"queries": 3, "q": 3, "points": 3, "G0": 4, "anchor": 4, "G": 4, "cache": 4, "G_L": 4, "F": 4,
         "W": 2, "phi": 5, "X": 3, "Y": 2, "dF": 3, "Y_all": 2}


def _with_ndim(ndim: int, last: int) -> np.ndarray:
    if ndim == 0:
        return np.float64(0.5)
    return np.full((2,) * (ndim - 1) + (last,), 0.5)


@pytest.mark.parametrize("entry, arg, call, ndims", DIMENSIONS, ids=[f"{e}-{a}" for e, a, _, _ in DIMENSIONS])
def test_a_wrong_number_of_dimensions_is_a_value_error_naming_the_argument(entry, arg, call, ndims) -> None:
    for ndim in ndims:
        x = _with_ndim(ndim, _LAST.get(arg, 2))
        with pytest.raises(ValueError, match=_anchored(arg)):
            call(Env(), x)


@pytest.mark.parametrize("bad", ["-1", "m", "m+1", "huge", "-m-1"])
def test_check_invariants_reports_an_out_of_range_leaf_of(bad: str) -> None:
    e = Env()
    m = e.tree.parent.shape[0]
    value = {"-1": -1, "m": m, "m+1": m + 1, "huge": 10**12, "-m-1": -m - 1}[bad]
    e.tree.leaf_of[7] = value
    with pytest.raises(InvariantError, match=rf"^I1: live target 7 has leaf_of = {value}$"):
        e.tree.check_invariants()


def test_check_invariants_reports_a_leaf_of_that_is_not_a_leaf() -> None:
    e = Env()
    e.tree.leaf_of[7] = 0
    with pytest.raises(InvariantError, match=r"^I1: live target 7 is assigned to node 0, which is not a leaf$"):
        e.tree.check_invariants()


@pytest.mark.parametrize("params", [{1: Z(2)}, {"w": Z(2), 1: Z(2)}, {("w",): Z(2)}, {b"w": Z(2)}])
def test_params_sha256_refuses_names_that_are_not_str(params) -> None:
    with pytest.raises(ValueError, match=r"^params: expected a mapping of parameter names \(str\) to arrays"):
        params_sha256(params)


# --------------------------------------------------------------------------- diagnostics


def _move_out(tree: Tree, y: int, to: np.ndarray) -> None:
    """Move target y to ``to`` without updating any radius (I3 broken at its leaf), caches kept consistent."""
    tree.points[y] = to
    pos = int(np.flatnonzero(tree.order == y)[0])
    tree.points_dfs[pos] = to


@pytest.mark.parametrize("y", [0, 17, 59])
def test_check_invariants_names_the_target_outside_its_leaf_and_the_leaf(y: int) -> None:
    e = Env()
    leaf = int(e.tree.leaf_of[y])
    _move_out(e.tree, y, np.array([40.0, -40.0, 40.0]))
    with pytest.raises(InvariantError, match=rf"^I3: target {y} is at distance [0-9.e+]+ from node {leaf}'s "):
        e.tree.check_invariants()


@pytest.mark.parametrize("y", [0, 17, 59])
def test_topk_i3_error_names_the_target_and_its_leaf(y: int) -> None:
    """k = n_live: every leaf is evaluated, so the corrupted one is (a smaller k may prune it)."""
    e = Env()
    leaf = int(e.tree.leaf_of[y])
    far = np.array([40.0, -40.0, 40.0])
    _move_out(e.tree, y, far)
    for k in (e.tree.n_live, e.tree.n_live - 1):
        with pytest.raises(ValueError, match=rf"^tree: invariant I3 violated \(topk\): target {y} has "
                                             rf"a_y - <q, r_v> - eps_v = \S+ > 0 for node {leaf}, "):
            sampling.topk(e.tree, far / 40.0, k)


def test_rejection_sample_i3_error_names_a_node_that_holds_the_target() -> None:
    e = Env()
    y = 17
    _move_out(e.tree, y, np.array([400.0, -400.0, 400.0]))
    with pytest.raises(ValueError, match=r"^tree: invariant I3 violated \(rejection_sample\)") as info:
        sampling.rejection_sample(e.tree, np.array([1.0, -1.0, 1.0]), 5, np.random.default_rng(0))
    v = int(re.search(r"node (\d+)'s targets", str(info.value)).group(1))
    pos = int(np.flatnonzero(e.tree.order == y)[0])
    assert e.tree.start[v] <= pos < e.tree.stop[v], (v, pos)


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("with_q", [False, True])
def test_sampled_softmax_loss_dtypes(with_q: bool) -> None:
    """Documented: the gradients have the dtype ``np.result_type(a_pos, a_neg)`` (float32 only when
    both are float32); float32 input promoted to float64 gives bitwise what its float64 copy gives."""
    rng = np.random.default_rng(3)
    ap, an = rng.standard_normal(4), rng.standard_normal((4, 3))
    lq = np.log(rng.uniform(0.1, 1.0, (4, 3))) if with_q else None
    ap32, an32 = ap.astype(np.float32), an.astype(np.float32)
    ref = sm.sampled_softmax_loss(ap32.astype(np.float64), an, lq)
    got = sm.sampled_softmax_loss(ap32, an, lq)            # float32 a_pos, float64 a_neg
    assert got[1].dtype == got[2].dtype == np.float64
    assert got[0] == ref[0] and np.array_equal(got[1], ref[1]) and np.array_equal(got[2], ref[2])
    ref = sm.sampled_softmax_loss(ap, an32.astype(np.float64), lq)
    got = sm.sampled_softmax_loss(ap, an32, lq)            # float64 a_pos, float32 a_neg
    assert got[1].dtype == got[2].dtype == np.float64
    assert got[0] == ref[0] and np.array_equal(got[1], ref[1]) and np.array_equal(got[2], ref[2])
    ref = sm.sampled_softmax_loss(ap32.astype(np.float64), an32.astype(np.float64), lq)
    for lq_dtype in (np.float32, np.float64):             # float32 a_pos and a_neg: float32, whatever log_q
        both = sm.sampled_softmax_loss(ap32, an32, None if lq is None else lq.astype(lq_dtype))
        assert both[1].dtype == both[2].dtype == np.float32
        np.testing.assert_allclose(both[1], ref[1], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(both[2], ref[2], rtol=1e-5, atol=1e-7)
    got = sm.sampled_softmax_loss(np.arange(4), an, lq)    # integers count as float64
    ref = sm.sampled_softmax_loss(np.arange(4.0), an, lq)
    assert got[1].dtype == np.float64 and got[0] == ref[0] and np.array_equal(got[2], ref[2])


@pytest.mark.parametrize("kernel", ["linear", "rbf", "polynomial"])
def test_ridge_leverage_scores_compute_in_float64(kernel: str) -> None:
    """Documented (as_float_array(..., dtype=float64)): float32 G0 is converted to float64 first,
    so the scores are bitwise those of its float64 copy, and float64."""
    G = np.random.default_rng(4).standard_normal((40, 3)).astype(np.float32)
    got = ridge_leverage_scores(G, kernel, pilot=20, rng=np.random.default_rng(1))
    ref = ridge_leverage_scores(G.astype(np.float64), kernel, pilot=20, rng=np.random.default_rng(1))
    assert got.dtype == np.float64 and np.array_equal(got, ref)


def test_nystrom_maps_compute_in_float64() -> None:
    """fit, fit_anchor, features, project and approximate convert float32 to float64 first."""
    G = np.random.default_rng(5).standard_normal((20, 4)).astype(np.float32)
    G64 = G.astype(np.float64)
    for kernel in ("linear", "rbf"):
        a = NystromMap(kernel).fit_anchor(G[:5])
        b = NystromMap(kernel).fit_anchor(G64[:5])
        assert a.inv_sqrt.dtype == a.anchor.dtype == np.float64
        assert np.array_equal(a.inv_sqrt, b.inv_sqrt) and np.array_equal(a.anchor, b.anchor)
        c = NystromMap(kernel).fit(G, np.arange(5))
        assert np.array_equal(c.inv_sqrt, b.inv_sqrt)
        for got, ref in [(a.features(G), b.features(G64)), (a.project(G[:5]), b.project(G64[:5])),
                         (a.approximate(a.features(G).astype(np.float32), G[:5]),
                          b.approximate(a.features(G).astype(np.float32).astype(np.float64), G64[:5]))]:
            assert got.dtype == np.float64 and np.array_equal(got, ref)


def _arrays(x: Any) -> list[np.ndarray]:
    """Every array in a result (tuples, dicts, cuts, trees' stored arrays)."""
    if isinstance(x, (tuple, list)):
        return [a for y in x for a in _arrays(y)]
    if isinstance(x, dict):
        return [a for y in x.values() for a in _arrays(y)]
    if isinstance(x, Cut):
        return [x.query, x.node, x.target]
    if isinstance(x, Tree):
        return [x.points, x.points_dfs, x.rep, x.radius, x.order]
    if isinstance(x, DynamicIndex):
        return [x.cache, x.W, x.W0, *_arrays(x.tree)]
    return [np.asarray(x)]


# Entry points that compute in float64: a float32 argument is converted first, so the result is
# bitwise that of its float64 copy and every floating result is float64. ``call(e, cast)`` applies
# ``cast`` to the float arrays it passes.
FLOAT64_ENTRIES: list[tuple[str, Callable[[Env, Callable], Any]]] = [
    ("Tree.build", lambda e, c: Tree.build(c(e.points), leaf_size=4)),
    ("Tree.insert", lambda e, c: (e.tree.insert(c(e.points[:3] + 0.25)), e.tree)[1]),
    ("Tree.update", lambda e, c: (e.tree.update([1, 2], c(e.points[:2] * 3)), e.tree)[1]),
    ("log_partition_bracket", lambda e, c: bounds.log_partition_bracket(e.tree, c(e.Q), Cut.root(2))),
    ("adaptive_cut", lambda e, c: bounds.adaptive_cut(e.tree, c(e.Q), tol=0.3)),
    ("cut_distribution", lambda e, c: bounds.cut_distribution(e.tree, c(e.Q), Cut.root(2))),
    ("grad_bias_bound", lambda e, c: bounds.grad_bias_bound(e.tree, c(e.Q), Cut.root(2))),
    ("cut_sample", lambda e, c: sampling.cut_sample(e.tree, c(e.Q), 4, e.rng)),
    ("rejection_sample", lambda e, c: sampling.rejection_sample(e.tree, c(e.Q), 4, e.rng)[0]),
    ("rejection_envelope", lambda e, c: sampling.rejection_envelope(e.tree, c(e.Q), 4)),
    ("topk", lambda e, c: sampling.topk(e.tree, c(e.Q), 4)),
    ("select_landmarks", lambda e, c: select_landmarks(c(e.G), 5, method="rls", rng=e.rng)),
    ("DynamicIndex", lambda e, c: DynamicIndex(c(e.G), np.arange(5), leaf_size=4)),
    ("DynamicIndex.step", lambda e, c: e.index.step(c(e.G[:5] * 0.5))),
    ("DynamicIndex.queries", lambda e, c: e.index.queries(c(e.G[:3]))),
    ("DynamicIndex.logits", lambda e, c: e.index.logits(c(e.G[:3]))),
    ("DynamicIndex.bracket", lambda e, c: e.index.bracket(c(e.G[:3]))),
    ("DynamicIndex.topk", lambda e, c: e.index.topk(c(e.G[:3]), 4)),
    ("DynamicIndex.add", lambda e, c: (e.index.add(c(e.G[:2] * 0.5)), e.index)),
    ("DynamicIndex.refresh", lambda e, c: (e.index.refresh(c(e.G * 0.5)), e.index)[1]),
    ("DualEncoder.encode_queries", lambda e, c: e.model.encode_queries(c(e.X))),
    ("DualEncoder.forward_targets", lambda e, c: e.model.forward_targets(c(e.Y))[0]),
    ("DualEncoder.full_softmax_loss", lambda e, c: e.model.full_softmax_loss(c(e.X), [0, 1, 2, 3], c(e.Y))),
]


def _f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x).astype(np.float32)


def _f32_as_f64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x).astype(np.float32).astype(np.float64)


@pytest.mark.parametrize("entry, call", FLOAT64_ENTRIES, ids=[e for e, _ in FLOAT64_ENTRIES])
def test_float32_input_is_computed_in_float64(entry: str, call) -> None:
    got, want = _arrays(call(Env(), _f32)), _arrays(call(Env(), _f32_as_f64))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and (g.dtype.kind != "f" or g.dtype == np.float64), (g.dtype, w.dtype)
        assert np.array_equal(g, w), entry


# Entry points that keep float32 (documented "in the dtype of logits"): float32 in, float32 out,
# within float32 rounding of the float64 computation.
FLOAT32_KEPT: list[tuple[str, Callable[[np.ndarray], Any]]] = [
    ("log_partition", lambda a: sm.log_partition(a)),
    ("softmax", lambda a: sm.softmax(a)),
    ("sampled_log_partition", lambda a: sm.sampled_log_partition(a, np.full(a.shape, -1.5))),
    ("full_softmax_loss", lambda a: sm.full_softmax_loss(a, [0, 1, 2])[1]),
    ("DualEncoder.logits", lambda a: DualEncoder(EncoderConfig(query_dim=1, target_dim=1, out_dim=5), seed=0)
     .logits(a, a[:2])),
]


@pytest.mark.parametrize("entry, call", FLOAT32_KEPT, ids=[e for e, _ in FLOAT32_KEPT])
def test_float32_input_keeps_float32_where_documented(entry: str, call) -> None:
    a = np.random.default_rng(15).standard_normal((3, 5))
    got, want = call(a.astype(np.float32)), call(a.astype(np.float32).astype(np.float64))
    assert got.dtype == np.float32 and want.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- empty and degenerate


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64])
def test_approximate_of_no_targets_is_an_empty_float64_array(dtype) -> None:
    e = Env()
    out = e.nmap.approximate(np.zeros((0, 5), dtype), np.ones((5, 2)))
    assert out.shape == (0, 2) and out.dtype == np.float64
    out = e.nmap.features(np.zeros((0, 4), dtype))
    assert out.shape == (0, 5) and out.dtype == np.float64


def _w_formula(k: int, H: int, N: int, M: int, qnorm: float, S: float, n: int, c: float) -> float:
    """W of proofs/p02_bracket.md ("Floating point"), evaluated here from the formula."""
    u = 2.0**-53

    def g(j: float) -> float:
        return j * u / (1 - j * u)

    return 2 * (g(2 * k + H + 12) * qnorm * S + g(2 * n + 16) + u * (16 * np.log(N + M + 1) + 2 * abs(c))
                + np.sqrt(k) * 2.0**-537 * ((H + 2) * qnorm + 2 * S) + k * (H + 3) * 2.0**-1074)


def test_bracket_of_all_zero_targets_and_a_zero_query_is_log_n_widened_by_w() -> None:
    """Every logit is 0, so log Z = log N. The root cut's terms are exact (eps = 0, <q, r> = 0):
    lo~ = hi~ = hat = fl(log N), and the bracket is that, widened by W and one step outward."""
    N, k = 50, 3
    tree = Tree.build(np.zeros((N, k)), leaf_size=4)
    assert float(tree.radius.max()) == 0.0
    H = int(tree.depth.max())
    M = tree.parent.shape[0]
    c = float(np.log(N))
    w = _w_formula(k, H, N, M, 0.0, 0.0, 1, c)
    for cut in (Cut.root(), bounds.adaptive_cut(tree, np.zeros(k), tol=1e-3)):
        lo, hi, hat = bounds.log_partition_bracket(tree, np.zeros(k), cut)
        if len(cut) == 1:
            assert hat == c
            assert lo == np.nextafter(c - w, -np.inf) and hi == np.nextafter(c + w, np.inf)
        assert lo < np.log(N) < hi and abs(hat - np.log(N)) <= 4e-16 * np.log(N)
    ids, log_q = sampling.cut_sample(tree, np.zeros(k), 5, np.random.default_rng(0))
    np.testing.assert_allclose(log_q, -np.log(N), rtol=1e-15)
    assert sampling.topk(tree, np.zeros(k), 3)[0].tolist() == [0, 1, 2]   # all tied: smallest ids


# --------------------------------------------------------------------------- formulas


def test_containment_tolerance_is_its_formula() -> None:
    for pts, leaf in [(np.random.default_rng(6).standard_normal((80, 5)), 4), (np.eye(3), 1)]:
        tree = Tree.build(pts, branching=3, leaf_size=leaf)
        h, k = int(tree.depth.max()), tree.dim
        want = 4 * (h + 2) * (k + 4) * np.finfo(np.float64).eps * tree.radius
        np.testing.assert_allclose(tree.containment_tolerance(), want, rtol=1e-15, atol=0)


def test_bracket_rounding_is_the_formula_of_p02() -> None:
    e = Env()
    tree = e.tree
    k, H, N, M = tree.dim, int(tree.depth.max()), tree.n_live, tree.parent.shape[0]
    S = float(np.max(tree.rep_norm + tree.radius))
    for qnorm, n, c in [(0.0, 1, 0.0), (1.0, 7, 3.5), (1e3, 60, 1e3), (1e-300, 2, 1e-3)]:
        got = float(bracket_rounding(tree, np.array([qnorm]), np.array([n]), np.array([c]))[0])
        want = _w_formula(k, H, N, M, qnorm, S, n, c)
        assert abs(got - want) <= 1e-14 * want, (qnorm, n, c, got, want)


@pytest.mark.parametrize("which", ["bounds", "dynamic"])
def test_reported_bracket_is_the_computed_one_widened_by_w(which: str) -> None:
    """lo = nextafter(lo~ - W, -inf), hi = nextafter(hi~ + W, +inf) with W from its formula:
    a W too small (or too large) by more than rounding fails."""
    e = Env()
    if which == "bounds":
        tree, Q = e.tree, 3.0 * e.Q
        cut = bounds.adaptive_cut(tree, Q, tol=0.5)
        lo, hi, _ = bounds.log_partition_bracket(tree, Q, cut)
    else:
        tree, F = e.index.tree, np.random.default_rng(7).standard_normal((2, 4))
        Q = e.index.queries(F)
        cut = bounds.adaptive_cut(tree, Q, tol=0.5)
        lo, hi, _ = e.index.bracket(F, tol=0.5)
    raw_lo, raw_hi, _ = terms(tree, Q, cut.query, cut.node, cut.target).bracket(cut.ptr)
    k, H, N, M = tree.dim, int(tree.depth.max()), tree.n_live, tree.parent.shape[0]
    S = float(np.max(tree.rep_norm + tree.radius))
    for b in range(Q.shape[0]):
        n = int(cut.sizes[b])
        w = _w_formula(k, H, N, M, float(np.linalg.norm(Q[b])), S, n, max(abs(raw_lo[b]), abs(raw_hi[b])))
        assert w > 20 * np.spacing(abs(raw_hi[b]))      # W is not lost in the rounding of lo~ - W
        for got, want in [(lo[b], raw_lo[b] - w), (hi[b], raw_hi[b] + w)]:
            assert abs(got - want) <= 2 * np.spacing(abs(want)), (b, got, want, w)
        assert lo[b] < raw_lo[b] - w * (1 - 1e-6) and hi[b] > raw_hi[b] + w * (1 - 1e-6)


# --------------------------------------------------------------------------- beyond one block


def _many_queries(tree: Tree, B: int, seed: int = 8) -> np.ndarray:
    return 0.5 * np.random.default_rng(seed).standard_normal((B, tree.dim))


def test_query_block_is_what_the_block_tests_assume() -> None:
    assert sampling._QUERY_BLOCK == 512


def test_cut_sample_with_a_cut_over_more_than_one_block_equals_the_calls_per_block() -> None:
    e = Env()
    B = sampling._QUERY_BLOCK + 100
    Q = _many_queries(e.tree, B)
    cut = bounds.adaptive_cut(e.tree, Q, tol=2.0)
    one = sampling.cut_sample(e.tree, Q, 3, np.random.default_rng(11), cut)
    rng = np.random.default_rng(11)
    parts = [sampling.cut_sample(e.tree, Q[b0:b1], 3, rng, Cut.stack([cut.of_query(b) for b in range(b0, b1)]))
             for b0, b1 in [(0, sampling._QUERY_BLOCK), (sampling._QUERY_BLOCK, B)]]
    assert np.array_equal(one[0], np.concatenate([p[0] for p in parts]))
    assert np.array_equal(one[1], np.concatenate([p[1] for p in parts]))
    # the default cut is adaptive_cut's with the same tol: the same draws
    default = sampling.cut_sample(e.tree, Q, 3, np.random.default_rng(11), tol=2.0)
    assert np.array_equal(one[0], default[0]) and np.array_equal(one[1], default[1])
    # and log_q is the log-probability of each draw under each query's own cut
    for b in (0, sampling._QUERY_BLOCK - 1, sampling._QUERY_BLOCK, B - 1):
        log_p = bounds.cut_distribution(e.tree, Q[b], cut.of_query(b))
        np.testing.assert_allclose(one[1][b], log_p[one[0][b]], rtol=1e-12, atol=1e-12)


def test_rejection_sample_over_more_than_one_block_equals_the_calls_per_block() -> None:
    e = Env()
    B = sampling._QUERY_BLOCK + 40
    Q = _many_queries(e.tree, B, seed=9)
    for tol in (None, 1.0):
        one, c1 = sampling.rejection_sample(e.tree, Q, 2, np.random.default_rng(12), tol)
        rng = np.random.default_rng(12)
        parts = [sampling.rejection_sample(e.tree, Q[b0:b1], 2, rng, tol)
                 for b0, b1 in [(0, sampling._QUERY_BLOCK), (sampling._QUERY_BLOCK, B)]]
        assert np.array_equal(one, np.concatenate([p[0] for p in parts]))
        for key in c1:
            assert c1[key] == sum(p[1][key] for p in parts), key
        env = sampling.rejection_envelope(e.tree, Q, 2, tol)
        per = [sampling.rejection_envelope(e.tree, Q[b0:b1], 2, tol)
               for b0, b1 in [(0, sampling._QUERY_BLOCK), (sampling._QUERY_BLOCK, B)]]
        stacked = Cut.stack(per)
        assert all(np.array_equal(getattr(env, f), getattr(stacked, f)) for f in ("query", "node", "target"))


def test_topk_over_more_than_one_block_equals_the_calls_per_block() -> None:
    e = Env()
    B = sampling._QUERY_BLOCK + 30
    Q = _many_queries(e.tree, B, seed=10)
    ids, logits = sampling.topk(e.tree, Q, 4)
    brute = Q @ e.points.T
    want = np.array([sorted(range(60), key=lambda y: (-brute[b, y], y))[:4] for b in range(B)])
    assert np.array_equal(ids, want)
    parts = [sampling.topk(e.tree, Q[b0:b1], 4) for b0, b1 in [(0, sampling._QUERY_BLOCK), (sampling._QUERY_BLOCK, B)]]
    assert np.array_equal(logits, np.concatenate([p[1] for p in parts]))


# --------------------------------------------------------------------------- RLS pilot


def test_rls_pilot_of_every_target_gives_the_exact_ridge_leverage_scores() -> None:
    """With pilot = N, a pilot drawn without replacement is every target: the Nystrom features
    are exact (K = Phi Phi^T for a positive definite K) and the scores are
    diag(K (K + ridge I)^-1). A pilot drawn with replacement repeats targets and misses others
    (all N distinct has probability N!/N^N), and its scores differ."""
    G = np.random.default_rng(13).standard_normal((25, 3))
    for kernel, ridge in [("rbf", 0.3), ("polynomial", 2.0)]:
        kern = make_kernel(kernel)
        K = kern(G, G)
        want = np.diag(K @ np.linalg.inv(K + ridge * np.eye(25)))
        for seed in range(3):
            got = ridge_leverage_scores(G, kernel, ridge=ridge, pilot=25, rng=np.random.default_rng(seed))
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    assert np.linalg.eigvalsh(make_kernel("rbf")(G, G)).min() > 1e-8   # K positive definite: exact features


def test_rls_pilot_draws_distinct_targets() -> None:
    """pilot = N - 1 without replacement leaves out exactly one target: its scores equal the exact
    scores of the kernel restricted to that pilot for some left-out target."""
    G = np.random.default_rng(14).standard_normal((12, 2))
    kern = make_kernel("rbf")
    got = ridge_leverage_scores(G, "rbf", ridge=0.5, pilot=11, rng=np.random.default_rng(2))
    matches = []
    for out in range(12):
        Sx = np.delete(np.arange(12), out)
        Ks = kern(G[Sx], G[Sx])
        s, U = scipy.linalg.eigh(Ks)
        Phi = kern(G, G[Sx]) @ (U / np.sqrt(s)) @ U.T
        want = np.einsum("ij,ij->i", Phi, np.linalg.solve(Phi.T @ Phi + 0.5 * np.eye(11), Phi.T).T)
        matches.append(np.allclose(got, np.clip(want, 0, 1), rtol=1e-6, atol=1e-9))
    assert sum(matches) == 1
