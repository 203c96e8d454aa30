"""Negative miners: one interface, ten ways to choose the negatives of a batch.

proofs/README.md section 8. A miner is asked, at every training step t, for negatives of a
batch of B queries x_1..x_B (with positives pos_1..pos_B) given the *current*
dual encoder. It answers with a :class:`Negatives`:

``ids``    (B, n) target ids, or ``None`` for "every target" (full softmax);
``log_q``  (B, n) log Q(ids | x) when the miner *samples* the ids i.i.d. from
           a known proposal Q, else ``None``;
``logits`` the number of logits (inner products) the miner evaluated.

The training loss (:meth:`reference.encoder.DualEncoder.sampled_softmax_loss`)
then uses the logQ correction exactly when ``log_q`` is given (P13):

    loss_i = log((1/n) sum_j exp(a_{i,s_ij} - log Q(s_ij | x_i))) - a_{i,pos_i}

and otherwise the softmax over the candidate set {pos_i} u {s_i1..s_in}.
Either way the logits a = beta <f_t(x), g_t(y)> of the loss use the *current*
embeddings of the chosen ids; a miner only decides which ids (and how likely
it was to pick them).

The miners (``MINERS``, in the order of the comparison table)
-------------------------------------------------------------
``full``          every target (the gold standard; ids = None).
``uniform``       s ~ Uniform{0..N-1} i.i.d.; log Q = -log N.
``in_batch``      the other queries' positives, s_ij = pos_{(i+j) mod B},
                  j = 1..n. Batches are drawn i.i.d. from the training pairs,
                  so each is a draw from the positives' frequency
                  Q(y) = #{train queries of y} / n_train (the logQ-corrected
                  in-batch softmax of Yi et al. 2019).
``brute_topk``    the n largest a_y over all N targets, *current* encodings
                  (all N targets re-encoded every step), positive excluded,
                  ties by smaller id: exact hard-negative mining. No log Q:
                  the loss is the softmax over {positive} + top-n, a
                  different objective from the full softmax (a fair
                  baseline for recall, not for the test loss).
``exact_softmax`` n i.i.d. draws from the exact softmax over all N targets
                  under the *current* encodings (all N re-encoded every
                  step), log Q = log P: the oracle of the method's own
                  estimator (sample from the softmax, correct by log Q) with
                  nothing approximated. Its corrected loss equals the full
                  softmax loss up to rounding.
``stale_topk``    the top-n of ``brute_topk``, but scored against a table
                  G_s of target embeddings re-encoded every R steps. No log
                  Q. Kept as the *collapsed* variant: at the decide preset's
                  former N = 24000 its recall fell below uniform's (reference/COMPARISON.md).
``stale_softmax`` the stale index as practitioners run it: the same table
                  G_s (resident on the accelerator, re-encoded every R
                  steps), scored every step, n i.i.d. draws from its
                  softmax, log Q = log of that softmax (P13).
``neg_cache``     the negative cache of Lindgren et al. (2021): a FIFO cache of
                  C (id, embedding) pairs; every step the batch positives'
                  fresh embeddings replace the oldest entries; negatives are
                  drawn i.i.d. from the softmax of beta <f_t(x), cache> over
                  the C slots by the Gumbel-max trick; log Q(y) sums the slot
                  probabilities of all slots holding y.
``tree_stale``    the tree sampler (``reference.sampling.cut_sample``) on a tree
                  over a stale cache G_s re-encoded every R steps, query
                  q = beta f_t(x); log Q = log Phat_C(y) of the cut (P4).
``tree_nystrom``  the method: a :class:`reference.dynamic.DynamicIndex` whose
                  tree is over the Nystrom coordinates phi(y) of the cache;
                  every step only the m landmarks are re-encoded, W_t is
                  formed and queries are mapped to psi_t(x) = beta W_t f_t(x)
                  (proofs/README.md section 5); every R steps the cache is re-encoded
                  and the same index is repaired (DynamicIndex.refresh).

Every miner takes its randomness from the ``rng`` passed to :meth:`Miner.mine`
and keeps no other hidden state: :meth:`Miner.state_dict` returns plain arrays
from which :meth:`Miner.load_state_dict` restores it exactly (``tree_stale``
rebuilds its tree deterministically from its cache; ``tree_nystrom``, whose
index is repaired in place at every refresh, saves the whole index), which is
what makes a resumed training run bitwise identical to an uninterrupted one.

Memory accounting (one rule for every miner)
--------------------------------------------
:func:`memory_accounting` applies one rule to the arrays every miner lists in
its ``memory(s, streamed)`` (records of :mod:`reference._memory`: shape,
item size, place, lifetime). Sizes (:class:`Sizes`): N targets, embedding
dimension d, feature dimensions d_x (queries) and d_y (targets), H the sum of
a tower's hidden widths, batch B, n negatives, P model parameters, C cache
slots, m landmarks, M tree nodes and the block size B_s (``block_rows``).
A row encoded for the backward pass holds its input, its hidden activations
and its output: r_x = d_x + H + d numbers for a query, r_y = d_y + H + d for
a target; a row encoded forward only holds r_f = max_l (w_l + w_{l+1}).

Accelerator (numbers; bytes = numbers x ``itemsize``, the encoder's, except
ids, int64, and the index's float64 K_LL^{-1/2} and W_t). Every miner holds the model,
4 P (parameters, gradients, Adam m and v), and in every step the query
batch, B r_x. A *pass* of the target tower over R rows holds

    materialised  pass(R) = R r_f  [+ B R logits when scored against the batch]
    streamed      pass(R) = min(R, B_s) r_f  [+ B min(R, B_s) logits]: blocks
                  of B_s rows, each encoded, scored and folded into a running
                  result (top-n: B n scores + B n ids; logsumexp: 2 B) or
                  copied to the host before the next block

and nothing else differs between the two rules. Per miner (``loss`` =
B (n + 1) (r_y + 1), the sampled loss's target rows and their logits):

    miner         every step, besides 4 P + B r_x        refresh step adds
    full          pass*(N) scored + 2 B (logsumexp)      -
    uniform       loss                                   -
    in_batch      loss                                   -
    brute_topk    loss + pass(N) scored + 2 B n (top-n)  -
    exact_softmax loss + pass(N) scored + draws          -
    stale_topk    loss + table + 2 B n (top-n)           pass(N) into the table
    stale_softmax loss + table + draws                   pass(N) into the table
    neg_cache     loss + C (d + 1) + pass(B) + B C g     pass(C) (the fill)
    tree_stale    loss                                   pass(N) to the host
    tree_nystrom  loss + pass(m) + B m + m^2 + m d       pass(N) to the host

``pass`` is forward only (nothing is differentiated through it): it holds
two consecutive layers of its rows at a time, r_f = max_l (w_l + w_{l+1})
numbers a row over the widths (d_y, hidden..., d), instead of every layer.
``pass*`` (the full softmax's, differentiated through) holds every layer,
r_y a row; so do the loss rows and the query batch. ``table`` (the stale
index as practitioners run it): the N x d table, resident on the
accelerator (kept), and the batch's logits against it every step, B N
materialised or B min(N, B_s) streamed. ``draws`` (sampling from a softmax
over all rows, block by block by the Gumbel-max trick): 3 B n (best
perturbed score, id and logit per draw) + 2 B (logsumexp). Every refresh,
to the host or into the table, is the same forward-only pass(N).

``neg_cache``: the slots' embeddings and ids C (d + 1), the batch positives'
fresh encodings pass(B), and g = 3 + n materialised (scores, log-probabilities,
the n Gumbel draws of (B, C) each, log Q per cached id) or 4 streamed (one
draw at a time). ``tree_nystrom``: the landmarks' features and encodings
pass(m), psi_t (B x m), K_LL^{-1/2} and W_t; its index and the samplers run
on the host (as the tree and cache of ``tree_stale`` do). Reported for each rule:

    step  = 4 P + B r_x + every step column
    peak  = step + refresh column  (the refresh pass is charged on top of
            everything the step holds: an upper bound on the refresh step)

The gradient buffers of the backward pass (one layer's width per row at a
time) and framework workspace are not counted, for any miner. The charge of
a pass is an upper bound on its arrays at any one time (its logits and
running result are charged on top of its layers).

Host (bytes, every array the miner keeps between steps; the dataset's
features are everyone's and are not counted):

    full, uniform, brute_topk, exact_softmax, neg_cache   0
    stale_topk, stale_softmax                             0 (the table is on the accelerator)
    in_batch       8 N                 (the float64 log Q table)
    tree_stale     N d itemsize + tree(N, k = d)
    tree_nystrom   index(N, d, m) = 8 N d + tree(N, k = m) + 8 (2 m + 2 m d)
                   (cache, tree over phi, landmark ids, g_0(L), eigenvalues
                   of K_LL, W_0; K_LL^{-1/2} and W_t are on the accelerator)
    tree(N, k)     = 8 (2 N k + M (k + 2)) + 8 (2 N + 7 M) + (N + M)
                   (float64 points, points_dfs, rep, radius, rep_norm; int64
                   leaf_of, order, count, parent, depth, start, stop,
                   child_ptr, child_idx; bool alive, is_leaf)

``DynamicIndex.memory()`` reports the same inventory
(:func:`reference._memory.index_arrays`) for a live index; the tests hold
both against the ``.nbytes`` of the arrays the real objects keep.

Streaming changes the picture for the miners that encode all N targets:
materialised, brute force's per-step pass(N) grows with N while the
method's per-step arrays do not, but the method's refresh pass(N) does too;
streamed, no miner but the stale indexes holds an N-sized array on the
accelerator (brute force keeps only a running top-n; ``stale_topk`` and
``stale_softmax`` keep their N x d table resident, as the prior art runs
it), and otherwise N enters only the encoder's compute (N target rows per
step for brute force, N per R steps for the method). The claim-2 ratios are
reported for both rules, per step and at the peak, over N up to 2.1e7
(``reference.train.claim2_table``).

References
----------
Monath, Zaheer, Allen, McCallum, "Improving Dual-Encoder Training through
Dynamic Indexes for Negative Mining", AISTATS 2023.
Lindgren, Reddi, Guo, Kumar, "Efficient Training of Retrieval Models using
Negative Cache", NeurIPS 2021.
Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
Recommendations", RecSys 2019.
Bengio, Senecal, "Adaptive importance sampling to accelerate training of a
neural probabilistic language model", IEEE TNN 2008 (the logQ correction).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy.special import logsumexp

from reference import _memory, bounds, persist, sampling
from reference._memory import Array
from reference._validation import (
    as_float_array,
    as_index_array,
    check_choice,
    check_int,
    check_positive,
    check_rng,
)
from reference.dynamic import DynamicIndex
from reference.nystrom import LANDMARK_METHODS, make_kernel, select_landmarks
from reference.softmax import draw_in_place
from reference.softmax import topk_ids  # the one exact top-k (P8's tie rule); re-exported
from reference.tree import Tree

__all__ = [
    "MINERS",
    "MinerConfig",
    "Negatives",
    "Sizes",
    "Miner",
    "FullSoftmax",
    "Uniform",
    "InBatch",
    "BruteTopK",
    "ExactSoftmax",
    "StaleTopK",
    "StaleSoftmax",
    "NegativeCache",
    "TreeStale",
    "TreeNystrom",
    "make_miner",
    "topk_ids",
    "MEMORY_RULES",
    "memory_arrays",
    "memory_accounting",
]


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class Negatives:
    """What a miner returns for a batch of B queries.

    Attributes
    ----------
    ids : ndarray of int64, shape (B, n), or None
        Negative target ids per query; ``None`` means every target (full softmax).
    log_q : ndarray, shape (B, n), or None
        log Q(ids | x) of the proposal that drew ``ids`` i.i.d.; ``None`` when the
        miner does not sample (top-k): the loss then uses no logQ correction.
    logits : int
        Logits (inner products of a query with an embedding, node
        representative or cached vector) the miner evaluated to choose them.
    """

    ids: np.ndarray | None
    log_q: np.ndarray | None
    logits: int = 0


@dataclass(frozen=True)
class MinerConfig:
    """Hyper-parameters of all miners (each miner reads the ones it needs).

    Parameters
    ----------
    negatives : int, default 32
        n, negatives per query (ignored by ``full``).
    refresh_every : int, default 50
        R: steps between full re-encodes of the cache (``stale_topk``,
        ``tree_stale``, ``tree_nystrom``); the cache is built at step 0.
    cache_size : int, default 512
        C, slots of the negative cache (``neg_cache``); at most N.
    landmarks : int, default 64
        m, Nystrom landmarks (``tree_nystrom``).
    kernel : str, default "linear"
        Kernel of the Nystrom map (see :mod:`reference.nystrom`).
    landmark_method : str, default "kmeans++"
        How landmarks are chosen at each refresh.
    branching : int, default 8
        Children per tree node (``tree_stale``, ``tree_nystrom``).
    leaf_size : int, default 16
        Targets per tree leaf.
    cut_tol : float, default 8.0
        Width hi - lo of the adaptive cut's log-partition bracket per query
        before sampling from Phat_C (P7; smaller = closer to the softmax of
        the index's vectors, more logits). The cut is only the proposal: the
        logQ correction accounts for it whatever its width. ``compare`` does
        not use this default: it sets cut_tol = max(1, log(N / n)) by the
        stated rule :func:`reference.train.rule_cut_tol`, which looks at no
        result of the comparison.
    seed : int, default 0
        Seed of the deterministic tree / landmark construction.
    """

    negatives: int = 32
    refresh_every: int = 50
    cache_size: int = 512
    landmarks: int = 64
    kernel: str = "linear"
    landmark_method: str = "kmeans++"
    branching: int = 8
    leaf_size: int = 16
    cut_tol: float = 8.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self.negatives, "negatives", low=1)
        check_int(self.refresh_every, "refresh_every", low=1)
        check_int(self.cache_size, "cache_size", low=1)
        check_int(self.landmarks, "landmarks", low=1)
        check_int(self.branching, "branching", low=2)
        check_int(self.leaf_size, "leaf_size", low=1)
        object.__setattr__(self, "cut_tol", check_positive(self.cut_tol, "cut_tol"))
        check_int(self.seed, "seed", low=0)
        if not isinstance(self.kernel, str):
            raise ValueError(f"kernel: expected a kernel name, got {self.kernel!r}")
        if not isinstance(self.landmark_method, str):
            raise ValueError(f"landmark_method: expected a method name, got {self.landmark_method!r}")


@dataclass(frozen=True)
class Sizes:
    """The sizes the memory accounting depends on (module docstring, "Memory accounting").

    Parameters
    ----------
    n_targets, out_dim, query_dim, target_dim : int
        N, d, d_x, d_y.
    batch_size, negatives : int
        B, n.
    n_params : int
        P, parameters of both towers.
    cache_size, landmarks : int
        C (``neg_cache``), m (``tree_nystrom``).
    hidden : tuple of int, default ()
        Hidden widths of a tower (both towers share them); H = sum(hidden).
    branching, leaf_size : int, default 8, 16
        Tree parameters (for the estimate of M).
    tree_nodes : int, default 0
        M, the tree's node count; 0 estimates it as
        ceil(N / leaf_size) * branching / (branching - 1).
    block_rows : int, default 4096
        B_s, target rows per block under the streamed rule.
    itemsize : int, default 8
        Bytes of one of the encoder's floats (8 for float64, 4 for float32).
    """

    n_targets: int
    out_dim: int
    query_dim: int
    target_dim: int
    batch_size: int
    negatives: int
    n_params: int
    cache_size: int
    landmarks: int
    hidden: tuple[int, ...] = ()
    branching: int = 8
    leaf_size: int = 16
    tree_nodes: int = 0
    block_rows: int = 4096
    itemsize: int = 8

    def __post_init__(self) -> None:
        for name in ("n_targets", "out_dim", "query_dim", "target_dim", "batch_size", "negatives", "n_params",
                     "cache_size", "landmarks", "leaf_size", "block_rows", "itemsize"):
            check_int(getattr(self, name), name, low=1)
        check_int(self.branching, "branching", low=2)
        check_int(self.tree_nodes, "tree_nodes", low=0)
        try:
            hidden = tuple(check_int(w, "hidden[]", low=1) for w in self.hidden)
        except TypeError:
            raise ValueError(f"hidden: expected a sequence of positive ints, got {self.hidden!r}") from None
        object.__setattr__(self, "hidden", hidden)

    def forward_row(self) -> int:
        """r_f = max_l (w_l + w_{l+1}) over the widths (d_y, hidden..., d): numbers a forward-only pass holds per row."""
        w = (self.target_dim, *self.hidden, self.out_dim)
        return max(a + b for a, b in zip(w[:-1], w[1:]))

    def estimated_tree_nodes(self) -> int:
        """M: the given node count, else ceil(N / leaf_size) leaves times b / (b - 1)."""
        if self.tree_nodes:
            return int(self.tree_nodes)
        leaves = -(-self.n_targets // self.leaf_size)
        return int(np.ceil(leaves * self.branching / (self.branching - 1)))


# --------------------------------------------------------------------------- helpers


def _check_batch(model: Any, targets: Any, x: Any, pos: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate the arguments of :meth:`Miner.mine` (shapes, ids in range)."""
    cfg = model.config
    Y = as_float_array(targets, "targets", shape=(None, cfg.target_dim), finite=False)
    X = as_float_array(x, "x", shape=(None, cfg.query_dim))
    p = as_index_array(pos, "pos", upper=Y.shape[0])
    if p.shape[0] != X.shape[0]:
        raise ValueError(f"pos: expected one id per query ({X.shape[0]}), got {p.shape[0]}")
    return Y, X, p


def _check_state(state: Any, expected: Mapping[str, tuple[tuple[int | None, ...], str]]) -> dict[str, np.ndarray]:
    """Validate a state dict: exactly the expected names, shapes (None = any) and dtype kinds."""
    if not isinstance(state, Mapping):
        raise ValueError(f"state: expected a dict name -> array, got {type(state).__name__}")
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(f"state: expected exactly the names {sorted(expected)}; missing {missing}, unexpected {extra}")
    out = {}
    for name, (shape, kind) in expected.items():
        a = np.asarray(state[name])
        if a.ndim != len(shape) or any(w is not None and w != g for w, g in zip(shape, a.shape)):
            raise ValueError(f"state[{name!r}]: expected shape {shape}, got {a.shape}")
        if a.dtype.kind not in kind:
            raise ValueError(f"state[{name!r}]: expected dtype kind {kind!r}, got {a.dtype}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ValueError(f"state[{name!r}]: expected finite values")
        out[name] = a.copy()
    return out


def _pass(s: Sizes, what: str, rows: int, when: str, streamed: bool, *, scored: bool = False,
          reduce: str | None = None, trained: bool = False) -> list[Array]:
    """pass(R): the accelerator arrays of one pass of the target tower over R = ``rows`` rows.

    The only place the two rules differ (module docstring): materialised,
    all R rows at once; streamed, blocks of min(R, B_s) rows. A ``trained``
    pass (one the loss is differentiated through: the full softmax's) holds
    every layer of its rows for the backward pass, r_y = d_y + H + d numbers
    a row; a forward-only pass (scoring, sampling, a refresh, landmarks)
    holds two consecutive layers at a time, r_f = max_l (w_l + w_{l+1}) over
    the widths (d_y, hidden..., d) (:meth:`Sizes.forward_row`). A ``scored``
    pass adds the logits of the batch against its rows; ``reduce`` ("topk",
    "logsumexp", "sample") adds the running result the blocks are folded into.
    """
    r = min(rows, s.block_rows) if streamed else rows
    f, acc = s.itemsize, "accelerator"
    if trained:
        out = [Array(f"{what}: features", (r, s.target_dim), f, acc, when),
               Array(f"{what}: hidden activations", (r, sum(s.hidden)), f, acc, when),
               Array(f"{what}: encodings", (r, s.out_dim), f, acc, when)]
    else:
        out = [Array(f"{what}: two consecutive layers (forward only)", (r, s.forward_row()), f, acc, when)]
    if scored:
        out.append(Array(f"{what}: logits", (s.batch_size, r), f, acc, when))
    out += _reduce(s, what, when, reduce)
    return out


def _reduce(s: Sizes, what: str, when: str, reduce: str | None) -> list[Array]:
    """The running result a pass's blocks are folded into: ``topk``, ``logsumexp``, ``sample`` or nothing.

    ``sample`` (n i.i.d. draws from the softmax over every row, block by
    block by the Gumbel-max trick): per (query, draw) the best perturbed
    score, its id and its logit, and per query the running max and sum of
    the logsumexp (for log Q).
    """
    f, acc, B, n = s.itemsize, "accelerator", s.batch_size, s.negatives
    if reduce == "topk":
        return [Array(f"{what}: top-n scores", (B, n), f, acc, when),
                Array(f"{what}: top-n ids", (B, n), _memory.ID, acc, when)]
    if reduce == "logsumexp":
        return [Array(f"{what}: running max and sum", (B, 2), f, acc, when)]
    if reduce == "sample":
        return [Array(f"{what}: best perturbed scores", (B, n), f, acc, when),
                Array(f"{what}: drawn ids", (B, n), _memory.ID, acc, when),
                Array(f"{what}: logits of the drawn ids", (B, n), f, acc, when),
                Array(f"{what}: running max and sum", (B, 2), f, acc, when)]
    return []


def _table(s: Sizes, streamed: bool, reduce: str) -> list[Array]:
    """A stale index held as practitioners run it: its N x d table resident on the accelerator, scored every step.

    The table g_s (kept), the batch's logits against it every step (B x N
    materialised, B x min(N, B_s) streamed) with the running result
    ``reduce``, and the refresh pass over all N targets that re-encodes it
    (forward only, charged as every refresh is).
    """
    N, f = s.n_targets, s.itemsize
    r = min(N, s.block_rows) if streamed else N
    return [Array("index table g_s (resident)", (N, s.out_dim), f, "accelerator", "kept"),
            Array("table: logits", (s.batch_size, r), f, "accelerator", "step"),
            *_reduce(s, "table", "step", reduce),
            *_pass(s, "refresh", N, "refresh", streamed)]


def _loss_rows(s: Sizes) -> list[Array]:
    """loss: the B (n + 1) target rows of a sampled softmax loss and their logits (held whole by both rules)."""
    rows = s.batch_size * (s.negatives + 1)
    f = s.itemsize
    return [Array("loss rows: features", (rows, s.target_dim), f, "accelerator", "step"),
            Array("loss rows: hidden activations", (rows, sum(s.hidden)), f, "accelerator", "step"),
            Array("loss rows: encodings", (rows, s.out_dim), f, "accelerator", "step"),
            Array("loss rows: logits", (s.batch_size, s.negatives + 1), f, "accelerator", "step")]


# --------------------------------------------------------------------------- the interface


class Miner:
    """The interface every miner implements (the base serves the stateless ones).

    Attributes
    ----------
    name : str
        Key in :data:`MINERS`.
    samples : bool
        True when :meth:`mine` returns ``log_q`` (ids drawn i.i.d. from Q):
        the training loss then applies the logQ correction (P13).
    full_support : bool
        True when that Q is positive on every target, so the corrected loss
        estimates the full softmax (P13); a sampler whose Q is 0 on some
        targets estimates the softmax over the others only.
    """

    name: ClassVar[str] = ""
    samples: ClassVar[bool] = False
    #: True when the proposal Q is positive on every target (up to exp underflow), so that the
    #: logQ-corrected loss estimates the full softmax; False for ``neg_cache`` (Q = 0 outside the
    #: C cached ids) and ``in_batch`` (Q = 0 on targets that are no training query's positive).
    full_support: ClassVar[bool] = False

    def mine(self, model: Any, targets: Any, x: Any, pos: Any, step: int, rng: np.random.Generator) -> Negatives:
        """Negatives for a batch, given the current model.

        Parameters
        ----------
        model : reference.encoder.DualEncoder
            The current model (its target-tower passes are counted by the model).
        targets : array_like, shape (N, d_y)
            Features of every target.
        x : array_like, shape (B, d_x)
            The batch's query features.
        pos : array_like of int, shape (B,)
            The batch's positive ids.
        step : int
            Training step t >= 0 (miners with a cache refresh when t % R == 0).
        rng : numpy.random.Generator
            The only source of randomness.

        Returns
        -------
        Negatives
        """
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything :meth:`load_state_dict` needs to restore the miner exactly (plain arrays)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict` (validated before anything changes)."""
        _check_state(state, {})

    @staticmethod
    def memory(s: Sizes, streamed: bool) -> list[Array]:
        """The arrays the miner adds to the model and the query batch, under one rule.

        Parameters
        ----------
        s : Sizes
        streamed : bool
            The streamed rule (passes over targets in blocks of ``s.block_rows``)
            or the materialised one (module docstring, "Memory accounting").

        Returns
        -------
        list of reference._memory.Array
            The base class (``uniform``): the sampled loss's rows only.
        """
        return _loss_rows(s)


class FullSoftmax(Miner):
    """Every target: the loss is the exact full softmax (ids = None)."""

    name = "full"

    def mine(self, model, targets, x, pos, step, rng) -> Negatives:
        _check_batch(model, targets, x, pos)
        return Negatives(ids=None, log_q=None, logits=0)

    @staticmethod
    def memory(s: Sizes, streamed: bool) -> list[Array]:
        return _pass(s, "all targets", s.n_targets, "step", streamed, scored=True, reduce="logsumexp", trained=True)


class Uniform(Miner):
    """n ids i.i.d. uniform over the N targets; log Q = -log N (P13 with Q uniform)."""

    name = "uniform"
    samples = True
    full_support = True

    def __init__(self, config: MinerConfig) -> None:
        self.n = config.negatives

    def mine(self, model, targets, x, pos, step, rng) -> Negatives:
        Y, X, _ = _check_batch(model, targets, x, pos)
        rng = check_rng(rng)
        N, B = Y.shape[0], X.shape[0]
        ids = rng.integers(0, N, size=(B, self.n), dtype=np.int64)
        return Negatives(ids=ids, log_q=np.full((B, self.n), -np.log(N)), logits=0)


class InBatch(Miner):
    """The other queries' positives, with the logQ correction of their frequency.

    s_ij = pos_{(i + j) mod B}, j = 1..n (n <= B - 1). When batches are drawn
    i.i.d. from the training pairs, each s_ij is a draw from
    Q(y) = #{training queries with positive y} / n_train, independent of
    query i; log Q = log Q(s_ij) (Yi et al. 2019).

    Parameters
    ----------
    config : MinerConfig
    train_pos : array_like of int, shape (n_train,)
        Positive ids of all training queries (defines Q).
    n_targets : int
        N.
    """

    name = "in_batch"
    samples = True

    def __init__(self, config: MinerConfig, train_pos: Any, n_targets: int) -> None:
        N = check_int(n_targets, "n_targets", low=1)
        p = as_index_array(train_pos, "train_pos", upper=N)
        self.n = config.negatives
        counts = np.bincount(p, minlength=N)
        with np.errstate(divide="ignore"):
            self.log_freq = np.log(counts) - np.log(p.size)  # -inf for targets never a positive

    def mine(self, model, targets, x, pos, step, rng) -> Negatives:
        Y, X, p = _check_batch(model, targets, x, pos)
        B = X.shape[0]
        if Y.shape[0] != self.log_freq.shape[0]:
            raise ValueError(f"targets: expected {self.log_freq.shape[0]} rows (as train_pos), got {Y.shape[0]}")
        if self.n > B - 1:
            raise ValueError(f"batch: in-batch negatives need B - 1 >= n = {self.n}, got B = {B}")
        ids = p[(np.arange(B)[:, None] + np.arange(1, self.n + 1)[None, :]) % B]
        log_q = self.log_freq[ids]
        if not np.isfinite(log_q).all():
            raise ValueError("pos: expected positives that occur in train_pos (Q > 0), got an unseen id")
        return Negatives(ids=ids, log_q=log_q, logits=0)

    @staticmethod
    def memory(s: Sizes, streamed: bool) -> list[Array]:
        return [*_loss_rows(s), Array("log Q per target", (s.n_targets,), _memory.FLOAT64, "host", "kept")]


class BruteTopK(Miner):
    """Exact hard-negative mining: the top-n of the current logits over all N targets.

    Re-encodes all N targets with the current target tower every step (N
    target-encoder passes, B N logits); the positive is excluded; ties by
    smaller id. No log Q: the loss is the softmax over {pos} u top-n, a
    different objective from the full softmax. A fair baseline for recall,
    not the oracle of a logQ-corrected sampler (that is :class:`ExactSoftmax`).
    """

    name = "brute_topk"

    def __init__(self, config: MinerConfig) -> None:
        self.n = config.negatives

    def mine(self, model, targets, x, pos, step, rng) -> Negatives:
        Y, X, p = _check_batch(model, targets, x, pos)
        a = model.beta * (model.encode_queries(X) @ model.encode_targets(Y).T)
        return Negatives(ids=topk_ids(a, self.n, exclude=p), log_q=None, logits=a.size)

    @staticmethod
    def memory(s: Sizes, streamed: bool) -> list[Array]:
        return [*_loss_rows(s), *_pass(s, "all targets", s.n_targets, "step", streamed, scored=True, reduce="topk")]


def _softmax_draws(a: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n i.i.d. ids per row from the softmax of the (B, N) logits ``a``, and their log-probabilities.

    The package's one exact softmax sampler (:func:`reference.softmax.draw_in_place`,
    inverse CDF, B n uniforms from ``rng``) on a float64 copy of ``a``;
    log Q(s_ij) = a_{i, s_ij} - log Z_i with log Z_i = max_i + log W_{i,N-1}
    as that sampler forms it. ``a`` is left unchanged.
    """
    a64 = np.asarray(a, dtype=np.float64)
    ids, log_z = draw_in_place(a64.copy(), n, rng)
    log_q = np.minimum(np.take_along_axis(a64, ids, axis=1) - log_z[:, None], 0.0)  # Q <= 1 up to rounding
    return ids, log_q


class ExactSoftmax(Miner):
    """The oracle of the method's own estimator: n i.i.d. draws from the exact softmax, logQ-corrected.

    Every step all N targets are re-encoded with the current target tower
    (N target-encoder passes, B N logits, as ``brute_topk``), and the n
    negatives of query i are drawn i.i.d. from P(y | x_i) = softmax_y(a_iy)
    over all N targets (the positive included, as for every sampling miner),
    with log Q = log P (P13 with Q = P). Nothing is approximated: the
    method's estimator (sample from the softmax, correct by log Q) with its
    approximations (tree cut, Nystrom logits, stale cache) removed. With
    Q = P every importance weight exp(a - log Q) equals Z, so the corrected
    loss equals the full softmax loss up to rounding and the gradient is an
    unbiased n-sample estimate of the full softmax gradient.
    """

    name = "exact_softmax"
    samples = True
    full_support = True

    def __init__(self, config: MinerConfig) -> None:
        self.n = config.negatives

    def mine(self, model, targets, x, pos, step, rng) -> Negatives:
        Y, X, _ = _check_batch(model, targets, x, pos)
        rng = check_rng(rng)
        a = model.beta * (model.encode_queries(X) @ model.encode_targets(Y).T)
        ids, log_q = _softmax_draws(a, self.n, rng)
        return Negatives(ids=ids, log_q=log_q, logits=a.size)

    @staticmethod
    def memory(s: Sizes, streamed: bool) -> list[Array]:
        return [*_loss_rows(s), *_pass(s, "all targets", s.n_targets, "step", streamed, scored=True, reduce="sample")]


class _StaleCache(Miner):
    """Shared by the miners that re-encode all targets every R steps into a cache G_s."""

    def __init__(self, config: MinerConfig) -> None:
        self.n = config.negatives
        self.R = config.refresh_every
        self.cache: np.ndarray | None = None  # (N, d) embeddings g_s(y), s = last refresh step

    def _refresh_if_due(self, model: Any, Y: np.ndarray, step: int) -> bool:
        step = check_int(step, "step", low=0)
        if self.cache is not None and self.cache.shape[0] != Y.shape[0]:
            raise ValueError(f"targets: expected {self.cache.shape[0]} rows (as the cache), got {Y.shape[0]}")
        if step % self.R == 0 or self.cache is None:
            self.cache = model.encode_targets(Y)
            return True
        return False

    def state_dict(self) -> dict[str, np.ndarray]:
        return {} if self.cache is None else {"cache": self.cache.copy()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if len(state) == 0:
            self.cache = None
            return
        self.cache = _check_state(state, {"cache": ((None, None), "f")})["cache"]
        self._rebuild()

    def _rebuild(self) -> None:
        """Rebuild derived objects (an index) from :attr:`cache`; nothing for plain top-k."""


class StaleTopK(_StaleCache):
    """Exact top-n against a stale cache G_s re-encoded every R steps (a static index).

    logits beta <f_t(x), g_s(y)> (current queries, stale targets), positive
    excluded, ties by smaller id. N target-encoder passes every R steps.
    """

    name = "stale_topk"

    def mine(self, model, targets, x, pos, step, rng) -> Negatives:
        Y, X, p = _check_batch(model, targets, x, pos)
        self._refresh_if_due(model, Y, step)
        a = model.beta * (model.encode_queries(X) @ self.cache.T)
        return Negatives(ids=topk_ids(a, self.n, exclude=p), log_q=None, logits=a.size)

    @staticmethod
    def memory(s: Sizes, streamed: bool) -> list[Array]:
        return [*_loss_rows(s), *_table(s, streamed, "topk")]


class StaleSoftmax(_StaleCache):
    """The prior-art stale index as practitioners run it: sampled from its softmax, logQ-corrected.

    A table G_s of all N target embeddings, re-encoded every R steps (N
    target-encoder passes per refresh) and held resident on the accelerator,
    is scored against the current queries every step, a_iy = beta <f_t(x_i),
    g_s(y)>, and the n negatives of query i are drawn i.i.d. from
    softmax_y(a_iy) over all N targets with log Q = log of that probability
    (P13). The loss then uses the current embeddings of the drawn ids, so
    the only approximation is the staleness of the proposal, and the
    correction keeps the estimator consistent for the full softmax whatever
    the staleness. It is ``exact_softmax`` with a stale table, and
    ``tree_stale`` without the tree.
    """

    name = "stale_softmax"
    samples = True
    full_support = True

    def mine(self, model, targets, x, pos, step, rng) -> Negatives:
        Y, X, _ = _check_batch(model, targets, x, pos)
        rng = check_rng(rng)
        self._refresh_if_due(model, Y, step)
        a = model.beta * (model.encode_queries(X) @ self.cache.T)
        ids, log_q = _softmax_draws(a, self.n, rng)
        return Negatives(ids=ids, log_q=log_q, logits=a.size)

    @staticmethod
    def memory(s: Sizes, streamed: bool) -> list[Array]:
        return [*_loss_rows(s), *_table(s, streamed, "sample")]


class NegativeCache(Miner):
    """The negative cache of Lindgren et al. (2021): FIFO cache + Gumbel-max sampling.

    State: C slots of (id, embedding) and the next slot to overwrite. At step 0
    the cache is filled with C distinct targets drawn uniformly (encoded with
    the initial model). At every step, with scores s_ic = beta <f_t(x_i), e_c>
    over the slots c = 1..C:

    1. n slots per query are drawn i.i.d. from softmax_c(s_ic) by the
       Gumbel-max trick, c* = argmax_c (s_ic + G_c), G_c ~ Gumbel(0, 1);
       the negatives are the slots' ids and
       log Q(y | x_i) = logsumexp over the slots c holding y of
       (s_ic - logsumexp_c' s_ic') (an id may sit in several slots);
    2. the batch positives are encoded with the current model (B
       target-encoder passes) and written FIFO over the oldest slots.

    Targets not in the cache have Q = 0, so the corrected loss estimates the
    partition function over the cached ids only (the method's known bias).
    """

    name = "neg_cache"
    samples = True

    def __init__(self, config: MinerConfig) -> None:
        self.n = config.negatives
        self.C = config.cache_size
        self.ids: np.ndarray | None = None  # (C,) target id per slot
        self.emb: np.ndarray | None = None  # (C, d) cached embedding per slot
        self.head = 0  # next slot to overwrite

    def mine(self, model, targets, x, pos, step, rng) -> Negatives:
        Y, X, p = _check_batch(model, targets, x, pos)
        rng = check_rng(rng)
        N, B = Y.shape[0], X.shape[0]
        if self.C > N:
            raise ValueError(f"cache_size: expected at most N = {N} slots, got {self.C}")
        if self.ids is None:
            self.ids = np.sort(rng.choice(N, size=self.C, replace=False)).astype(np.int64)
            self.emb = model.encode_targets(Y[self.ids])
            self.head = 0
        elif self.ids.max() >= N:
            raise ValueError(f"targets: the cache holds id {int(self.ids.max())}, expected N > it, got N = {N}")
        s = model.beta * (model.encode_queries(X) @ self.emb.T)  # (B, C)
        log_p = s - logsumexp(s, axis=1, keepdims=True)
        # Gumbel-max: G = -log E with E ~ Exp(1) is a standard Gumbel variate (drawn this
        # way because it is several times faster than Generator.gumbel).
        perturbed = np.log(rng.standard_exponential(size=(B, self.n, self.C)))
        np.subtract(log_p[:, None, :], perturbed, out=perturbed)
        slot = np.argmax(perturbed, axis=2)  # (B, n): n i.i.d. Gumbel-max draws per query
        # log Q(y) = logsumexp of log_p over the slots holding y: group the slots by id.
        uniq, slot_id = np.unique(self.ids, return_inverse=True)
        by_id = np.argsort(slot_id, kind="stable")
        starts = np.searchsorted(slot_id[by_id], np.arange(uniq.size))
        log_q_id = np.logaddexp.reduceat(log_p[:, by_id], starts, axis=1)  # (B, distinct ids)
        ids = self.ids[slot]
        log_q = np.take_along_axis(log_q_id, slot_id[slot], axis=1)
        # FIFO: the batch positives' fresh embeddings replace the oldest slots
        # (if B > C only the last C of them survive, as in a ring buffer).
        where = (self.head + np.arange(B)) % self.C
        fresh = model.encode_targets(Y[p])
        keep = np.arange(B) >= B - self.C
        self.ids[where[keep]] = p[keep]
        self.emb[where[keep]] = fresh[keep]
        self.head = int((self.head + B) % self.C)
        return Negatives(ids=ids, log_q=log_q, logits=s.size)

    def state_dict(self) -> dict[str, np.ndarray]:
        if self.ids is None:
            return {}
        return {"ids": self.ids.copy(), "emb": self.emb.copy(), "head": np.array(self.head, dtype=np.int64)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if len(state) == 0:
            self.ids = self.emb = None
            self.head = 0
            return
        st = _check_state(state, {"ids": ((self.C,), "iu"), "emb": ((self.C, None), "f"), "head": ((), "iu")})
        head = int(st["head"])
        if not 0 <= head < self.C or st["ids"].min() < 0:
            raise ValueError(f"state: expected 0 <= head < {self.C} and ids >= 0, got head {head}")
        self.ids, self.emb, self.head = st["ids"].astype(np.int64), st["emb"], head

    @staticmethod
    def memory(s: Sizes, streamed: bool) -> list[Array]:
        B, C, f, acc = s.batch_size, s.cache_size, s.itemsize, "accelerator"
        draws = (B, C) if streamed else (B, s.negatives, C)  # one Gumbel draw at a time, or all n
        return [
            *_loss_rows(s),
            Array("slot embeddings", (C, s.out_dim), f, acc, "kept"), Array("slot ids", (C,), _memory.ID, acc, "kept"),
            *_pass(s, "batch positives", B, "step", streamed),
            Array("slot scores", (B, C), f, acc, "step"), Array("slot log-probabilities", (B, C), f, acc, "step"),
            Array("Gumbel draws", draws, f, acc, "step"), Array("log Q per cached id", (B, C), f, acc, "step"),
            *_pass(s, "cache fill (step 0)", C, "refresh", streamed),
        ]  # fmt: skip


def _cut_logits(tree: Any, cut: Any) -> int:
    """Logits <q, r_v> evaluated to refine ``cut`` from the root: its entries plus every expanded node.

    The adaptive refinement scores each entry once when it enters the cut; the
    entries it expanded are exactly the proper ancestors (per query) of the
    final entries, counted here level by level.
    """
    M = tree.parent.shape[0]
    up = np.where(cut.is_target, tree.leaf_of[np.maximum(cut.target, 0)], tree.parent[np.maximum(cut.node, 0)])
    keys = np.unique(cut.query[up >= 0] * M + up[up >= 0])  # (query, expanded node) pairs
    seen = keys
    while keys.size:
        qq, vv = np.divmod(keys, M)
        par = tree.parent[vv]
        keys = np.setdiff1d(np.unique(qq[par >= 0] * M + par[par >= 0]), seen, assume_unique=True)
        seen = np.union1d(seen, keys)
    return int(len(cut) + seen.size)


class TreeStale(_StaleCache):
    """Tree sampling on a stale cache (no Nystrom): the ablation of the method.

    Every R steps all N targets are re-encoded into the cache G_s and a tree
    (:meth:`reference.tree.Tree.build`, fixed seed) is built over z_y = g_s(y).
    Each step the query q = beta f_t(x) gets an adaptive cut with
    hi - lo <= ``cut_tol`` (P7) and n i.i.d. draws from its cut distribution
    Phat_C (``reference.sampling.cut_sample``) with log Q = log Phat_C(y)
    (P4, P13). The tree is rebuilt from the cache on ``load_state_dict``.
    """

    name = "tree_stale"
    samples = True
    full_support = True

    def __init__(self, config: MinerConfig) -> None:
        super().__init__(config)
        self.branching, self.leaf_size, self.tol, self.seed = (
            config.branching, config.leaf_size, config.cut_tol, config.seed)
        self.tree: Any = None

    def _rebuild(self) -> None:
        self.tree = Tree.build(self.cache, branching=self.branching, leaf_size=self.leaf_size, seed=self.seed)

    def mine(self, model, targets, x, pos, step, rng) -> Negatives:
        Y, X, _ = _check_batch(model, targets, x, pos)
        rng = check_rng(rng)
        if self._refresh_if_due(model, Y, step):
            self._rebuild()
        q = model.beta * model.encode_queries(X).astype(np.float64)
        cut = bounds.adaptive_cut(self.tree, q, self.tol)
        ids, log_q = sampling.cut_sample(self.tree, q, self.n, rng, cut=cut)
        return Negatives(ids=ids, log_q=log_q, logits=_cut_logits(self.tree, cut))

    @staticmethod
    def memory(s: Sizes, streamed: bool) -> list[Array]:
        N = s.n_targets
        return [*_loss_rows(s), *_pass(s, "refresh", N, "refresh", streamed),
                Array("cache g_s", (N, s.out_dim), s.itemsize, "host", "kept"),
                *_memory.tree_arrays(N, N, s.out_dim, s.estimated_tree_nodes())]



class TreeNystrom(Miner):
    """The method: tree sampling over Nystrom coordinates, updated by m landmarks per step.

    proofs/README.md section 5. At step 0 all N targets are encoded into the cache g_s,
    m landmarks are chosen on it (:func:`reference.nystrom.select_landmarks`,
    ``landmark_method``, drawing from ``rng``) and ONE
    :class:`reference.dynamic.DynamicIndex` is built for the whole run: the
    tree over phi(y) = K_LL^{-1/2} k(y). Every R steps all N targets are
    re-encoded, landmarks are re-chosen on the new cache and the index is
    *repaired* by :meth:`reference.dynamic.DynamicIndex.refresh` (the map is
    re-fitted, every phi(y) moves, ``Tree.update`` + ``Tree.rebuild`` of the
    subtrees below depth 1; ``Tree.build`` is never called again). At every
    step only the landmarks are re-encoded, G_t(L) (m target-encoder passes;
    none at a refresh step, where G_t(L) = g_s(L)), ``DynamicIndex.step``
    forms W_t = K_LL^{-1/2} G_t(L), the query becomes
    psi_t(x) = beta W_t f_t(x) and n i.i.d. draws are taken from the
    adaptive cut's distribution (``cut_tol``) with log Q = log Phat_C(y) for
    the approximate logits <psi_t(x), phi(y)> = beta <f_t(x), ghat_t(y)>
    (P4, P12, P13).

    State: the whole index (cache, map, tree with its k-means generator, W_t,
    counters), flattened by :mod:`reference.persist`'s object-graph encoder
    into plain arrays (``index.graph``: the graph as UTF-8 JSON bytes;
    ``index.*``: its arrays). A repaired tree depends on its whole history,
    so it is saved, not rebuilt: a resumed run continues bitwise.
    """

    name = "tree_nystrom"
    samples = True
    full_support = True
    _GRAPH_KEY = "index.graph"

    def __init__(self, config: MinerConfig) -> None:
        self.n, self.R, self.m = config.negatives, config.refresh_every, config.landmarks
        self.kernel = make_kernel(config.kernel)  # validates the name
        self.method = check_choice(config.landmark_method, "landmark_method", LANDMARK_METHODS)
        self.branching, self.leaf_size, self.tol, self.seed = (
            config.branching, config.leaf_size, config.cut_tol, config.seed)
        self.index: DynamicIndex | None = None

    @property
    def cache(self) -> np.ndarray | None:
        """(N, d) the index's cache g_s (None before the first step)."""
        return None if self.index is None else self.index.cache

    @property
    def landmarks(self) -> np.ndarray | None:
        """(m,) the index's landmark ids (None before the first step)."""
        return None if self.index is None else self.index.landmarks

    def mine(self, model, targets, x, pos, step, rng) -> Negatives:
        Y, X, _ = _check_batch(model, targets, x, pos)
        rng = check_rng(rng)
        step = check_int(step, "step", low=0)
        if self.m > Y.shape[0]:
            raise ValueError(f"landmarks: expected m <= N = {Y.shape[0]}, got {self.m}")
        if self.index is not None and self.index.cache.shape[0] != Y.shape[0]:
            raise ValueError(f"targets: expected {self.index.cache.shape[0]} rows (as the cache), got {Y.shape[0]}")
        if step % self.R == 0 or self.index is None:
            G = model.encode_targets(Y)
            L = select_landmarks(G, self.m, method=self.method, rng=rng, kernel=self.kernel)
            if self.index is None:  # the only Tree.build of the run
                self.index = DynamicIndex(G, L, kernel=self.kernel, beta=1.0,
                                          branching=self.branching, leaf_size=self.leaf_size, seed=self.seed)
            else:  # repair: Tree.update + Tree.rebuild(depth), no build
                self.index.refresh(G, landmarks=L)
            G_L = self.index.cache[self.index.landmarks]
        else:
            G_L = model.encode_targets(Y[self.index.landmarks])
        self.index.step(G_L)
        psi = self.index.queries(model.beta * model.encode_queries(X))  # psi_t(x) = beta W_t f_t(x)
        cut = bounds.adaptive_cut(self.index.tree, psi, self.tol)
        ids, log_q = sampling.cut_sample(self.index.tree, psi, self.n, rng, cut=cut)
        return Negatives(ids=ids, log_q=log_q, logits=_cut_logits(self.index.tree, cut))

    def state_dict(self) -> dict[str, np.ndarray]:
        if self.index is None:
            return {}
        graph, arrays = persist.object_to_arrays(self.index, "index")
        raw = np.frombuffer(json.dumps(graph, sort_keys=True).encode("utf-8"), dtype=np.uint8).copy()
        return {self._GRAPH_KEY: raw, **{k: np.array(v, copy=True) for k, v in arrays.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping):
            raise ValueError(f"state: expected a dict name -> array, got {type(state).__name__}")
        if len(state) == 0:
            self.index = None
            return
        raw = np.asarray(state.get(self._GRAPH_KEY, np.zeros((0, 0))))
        if raw.ndim != 1 or raw.dtype != np.uint8:
            raise ValueError(
                f"state[{self._GRAPH_KEY!r}]: expected 1-d uint8 (JSON bytes), got {raw.dtype} {raw.shape}")
        arrays = {k: np.array(v, copy=True) for k, v in state.items() if k != self._GRAPH_KEY}
        try:
            graph = json.loads(raw.tobytes().decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"state: the index graph is not JSON ({type(exc).__name__}: {exc})") from None
        try:
            index = persist.object_from_arrays(graph, arrays)
        except ValueError as exc:
            raise ValueError(f"state: {exc}") from None
        if not isinstance(index, DynamicIndex):
            raise ValueError(f"state: expected a DynamicIndex, got {type(index).__name__}")
        _, used = persist.object_to_arrays(index, "index")
        if sorted(used) != sorted(arrays):  # every array used, none left over
            extra, missing = sorted(set(arrays) - set(used)), sorted(set(used) - set(arrays))
            raise ValueError(
                f"state: expected exactly the arrays of the index graph; unexpected {extra}, missing {missing}")
        N, d = index.cache.shape if index.cache.ndim == 2 else (-1, -1)
        L = index.landmarks
        ok = (index.cache.ndim == 2 and L.shape == (self.m,) and index.W.shape == (self.m, d)
              and index.W0.shape == (self.m, d) and index.tree.points.shape == (N, self.m)
              and np.unique(L).size == self.m and L.min() >= 0 and L.max() < N
              and all(np.isfinite(a).all() for a in (index.cache, index.W, index.W0, index.tree.points)))
        if not ok:
            raise ValueError(f"state: expected an index with cache (N, d), {self.m} distinct landmarks in [0, N), "
                             f"W and W0 ({self.m}, d), phi (N, {self.m}), all finite")
        try:
            index.tree.check_invariants()
        except AssertionError as exc:
            raise ValueError(f"state: the index's tree violates its invariants: {exc}") from None
        self.index = index

    @staticmethod
    def memory(s: Sizes, streamed: bool) -> list[Array]:
        N, m = s.n_targets, s.landmarks
        return [*_loss_rows(s), *_pass(s, "landmarks", m, "step", streamed),
                Array("psi_t", (s.batch_size, m), s.itemsize, "accelerator", "step"),
                *_pass(s, "refresh", N, "refresh", streamed),
                *_memory.index_arrays(N, N, s.out_dim, m, s.estimated_tree_nodes())]


#: name -> miner class, in the order of the comparison table.
MINERS: dict[str, type[Miner]] = {
    "full": FullSoftmax,
    "uniform": Uniform,
    "in_batch": InBatch,
    "brute_topk": BruteTopK,
    "exact_softmax": ExactSoftmax,
    "stale_topk": StaleTopK,
    "stale_softmax": StaleSoftmax,
    "neg_cache": NegativeCache,
    "tree_stale": TreeStale,
    "tree_nystrom": TreeNystrom,
}


def make_miner(name: str, config: MinerConfig, data: Any = None) -> Miner:
    """Construct the miner ``name`` of :data:`MINERS`.

    Parameters
    ----------
    name : str
        A key of :data:`MINERS`.
    config : MinerConfig
        Hyper-parameters.
    data : reference.data.RetrievalData, optional
        Needed by ``in_batch`` (the training positives define Q).

    Returns
    -------
    Miner
    """
    check_choice(name, "miner", MINERS)
    if not isinstance(config, MinerConfig):
        raise ValueError(f"config: expected a MinerConfig, got {type(config).__name__}")
    if name == "full":
        return FullSoftmax()
    if name == "in_batch":
        if data is None:
            raise ValueError("data: the in_batch miner needs the dataset (its training positives), got None")
        return InBatch(config, data.train_pos, data.n_targets)
    return MINERS[name](config)


#: The two rules of the accounting (module docstring, "Memory accounting").
MEMORY_RULES = ("materialised", "streamed")


def memory_arrays(name: str, s: Sizes, rule: str) -> list[Array]:
    """Every array of the accounting for one miner under one rule, the model and query batch included.

    Parameters
    ----------
    name : str
        A key of :data:`MINERS`.
    s : Sizes
    rule : {"materialised", "streamed"}

    Returns
    -------
    list of reference._memory.Array
        The model (4 P: parameters, gradients, Adam m and v; kept), the query
        batch (B r_x; every step), then ``MINERS[name].memory(s, streamed)``.
    """
    check_choice(name, "miner", MINERS)
    check_choice(rule, "rule", MEMORY_RULES)
    if not isinstance(s, Sizes):
        raise ValueError(f"s: expected a Sizes, got {type(s).__name__}")
    f, acc, B = s.itemsize, "accelerator", s.batch_size
    common = [Array("model: parameters, gradients, Adam m and v", (4, s.n_params), f, acc, "kept"),
              Array("queries: features", (B, s.query_dim), f, acc, "step"),
              Array("queries: hidden activations", (B, sum(s.hidden)), f, acc, "step"),
              Array("queries: encodings", (B, s.out_dim), f, acc, "step")]
    return common + MINERS[name].memory(s, rule == "streamed")


def memory_accounting(name: str, s: Sizes) -> dict[str, Any]:
    """Accelerator bytes per step and at the peak under both rules, and host bytes, of one miner.

    The one memory rule of the package (module docstring, "Memory accounting").

    Parameters
    ----------
    name : str
        A key of :data:`MINERS`.
    s : Sizes

    Returns
    -------
    dict
        ``host_bytes`` (every array kept on the host; the same under both
        rules), ``block_rows`` (B_s), and per rule (``"materialised"``,
        ``"streamed"``) a dict with ``step_bytes`` (accelerator, a step
        without a refresh), ``refresh_bytes`` (what a refresh step adds),
        ``peak_bytes`` (their sum). :func:`memory_arrays` lists the arrays
        behind each figure.
    """
    by_rule = {rule: memory_arrays(name, s, rule) for rule in MEMORY_RULES}  # validates name and s
    out: dict[str, Any] = {"block_rows": s.block_rows}
    for rule, arrays in by_rule.items():
        step = _memory.total(arrays, "accelerator", ("kept", "step"))
        refresh = _memory.total(arrays, "accelerator", ("refresh",))
        out["host_bytes"] = _memory.total(arrays, "host")
        out[rule] = {"step_bytes": step, "refresh_bytes": refresh, "peak_bytes": step + refresh}
    return out
