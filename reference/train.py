"""Train the dual encoder with each negative miner under one budget, and compare them.

``python -m reference compare`` (proofs/README.md section 8). For every seed and every
miner of :data:`reference.miners.MINERS` it trains the NumPy dual encoder
(:class:`reference.encoder.DualEncoder`, Adam) for the same number of steps,
batch size, negatives per query and seed (the same dataset, initialisation
and sequence of training batches), and reports for each:

- test recall@1/10/100 and the full-softmax test loss (``metrics.evaluate``);
- the relative error ||g - g*|| / ||g*|| of the training gradient g (the one
  the optimiser used, over all parameters) against the exact full-softmax
  gradient g* on the same batch and parameters, at every ``grad_every``-th
  step (default every step; ``grad_every`` must be coprime with R, so the
  measured steps cover every phase t mod R of the refresh period and a
  stale cache is seen as often just refreshed as R - 1 steps old). Reported
  as the mean over training and as a curve against t mod R, the steps since
  the last refresh. Measuring only at refresh steps would see only fresh
  caches and flatter the stale miners. The measurement draws from no
  generator and leaves the encoder untouched, so it cannot change the run;
- which loss the miner trains (``loss_kind``, :data:`LOSSES`): the full
  softmax, the logQ-corrected sampled softmax, or the uncorrected softmax
  over {positive} + mined ids (brute_topk, stale_topk), which is biased
  for the full-softmax test loss;
- counters: target-encoder forward passes (rows through the target tower,
  training only) and logits evaluated (by the miner and by the loss);
- host and accelerator memory by the explicit accounting of
  :mod:`reference.miners` (at the run's N and extrapolated to N = 1e6):
  accelerator bytes per step and at the peak (a refresh step) under the
  materialised and the streamed rule, and host bytes.

Outputs: a Markdown table on stdout, a JSON file with the configuration and
every number (``--out``), per-run JSON files and checkpoints next to it, and
progress lines on stderr (miner, seed, step, loss, elapsed, expected
remaining). ``python -m reference figures`` plots the training curves from
that JSON (``figures/fig_training_curves.py``).

The paper's two headline claims are evaluated from the runs:

(1) error gap: for each metric, gap(miner) = metric(full) - metric(miner)
    (recall) or loss(miner) - loss(full) (test loss), paired by seed; the
    claim is gap(tree_nystrom) ~ 0.5 gap(brute_topk), tested as "at most
    half". Every gap is reported with the 95% Student-t interval of its
    per-seed values (:func:`reference.stats.paired_t_interval`), and every
    ratio gap(miner) / gap(brute_topk) of mean gaps with Fieller's 95%
    interval from the paired per-seed gaps
    (:func:`reference.stats.fieller_interval`). The verdict per metric:

    - *supported*: brute force's gap interval lies above 0 and the ratio's
      interval at or below 0.5;
    - *contradicted*: brute force's gap interval lies above 0 and the
      ratio's interval above 0.5;
    - *undecided*: otherwise (the ratio's interval contains 0.5; brute
      force's gap is not distinguishable from 0, or is negative, so there is
      no gap to halve; fewer than two seeds).

    Each verdict is a one-sided test at level 2.5%; the four metrics are not
    corrected for multiplicity. The test loss also carries the caveat that
    brute force trains a biased objective, so the table prints the same ratio
    for every logQ-corrected miner beside the method's.
(2) memory: accelerator(brute_topk) / accelerator(tree_nystrom) at N = 1e6
    by the accounting; the claim is >= 100. Reported per step and at the
    peak under each rule of the accounting (materialised, streamed) and
    judged at the peak (:func:`_claim2`). An accounting, not a sample: no
    interval.

The miners' hyper-parameters are fixed by rules stated before any comparison
is run, never tuned on its results: m = min(2 d, N) landmarks
(:func:`rule_landmarks`), the adaptive cut's width cut_tol = max(1, log(N /
n)) (:func:`rule_cut_tol`), the linear kernel, no ridge, k-means++
landmarks, branching 8 and leaf size 16 (the defaults of
:class:`reference.miners.MinerConfig`). The ``decide`` preset's budget was
written down before it was run (:data:`PRESETS`).

Determinism and resuming
------------------------
All randomness comes from two explicit generators per run, derived from the
seed: one draws the training batches (so every miner of a seed sees the same
batches), one is handed to the miner. Every ``checkpoint_every`` steps the run
writes, atomically with :func:`reference.persist.save_checkpoint` (the format
``demo`` writes too), the parameters, the Adam state, both generator states,
the step, the miner's ``state_dict`` and the history so far; ``--resume``
continues from there, and a run killed (even by SIGKILL) and resumed ends
bitwise identical to an uninterrupted one (only the wall-clock fields differ).

Nothing is reused unchecked: a checkpoint is resumed only if its step agrees
with its history, its Adam step count and the configuration (:class:`_History`
``.check``); a finished run's JSON carries a SHA-256
(:func:`reference.persist.seal_record`) and is reused only if the checksum,
its miner, seed and configuration (which includes the SHA-256 of a user's data
files) match. A user's data files are read once per load and checked against
the digest recorded when the run started (:class:`reference.data.DataFiles`),
so a file changed during a run stops it (exit status 2 naming the file)
instead of mixing datasets. On the command line every input and output path
and the budget against N (``--negatives``, ``--cache-size``, ``--landmarks``)
are checked before any training.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reference import metrics, persist
from reference._validation import (
    check_choice,
    check_int,
    check_nonnegative,
    check_output_dir,
    check_output_file,
    check_positive,
)
from reference.data import DataFiles, RetrievalData, make_dataset
from reference.encoder import DualEncoder, EncoderConfig, params_sha256
from reference.jsonio import write_json
from reference.miners import MEMORY_RULES, MINERS, MinerConfig, Sizes, make_miner, memory_accounting
from reference.optim import Adam
from reference.stats import CONFIDENCE, Interval, fieller_interval, paired_t_interval, verdict_at_most

__all__ = [
    "TrainConfig",
    "rule_landmarks",
    "rule_cut_tol",
    "PRESETS",
    "preset_line",
    "make_data",
    "train",
    "gradient_error",
    "compare",
    "summarize",
    "markdown_table",
    "add_arguments",
    "run",
]

#: N at which the memory claim is evaluated.
CLAIM_N = 1_000_000
#: Claim 2: accelerator(brute_topk) >= CLAIM2_RATIO * accelerator(tree_nystrom) at N = CLAIM_N.
CLAIM2_RATIO = 100.0
#: Claim 1: gap(tree_nystrom) <= CLAIM1_RATIO * gap(brute_topk).
CLAIM1_RATIO = 0.5
#: Metrics reported for every run (keys of ``metrics.evaluate``).
METRICS = ("recall@1", "recall@10", "recall@100", "loss")
#: What a miner's training loss is, recorded per run from the miner's own output at every step:
#: the full softmax (``ids`` None), the sampled softmax with the logQ correction (``log_q``
#: given, P13: consistent for the full softmax as n grows), or without it (``log_q`` None: the
#: softmax over {positive} + the mined ids, a different, biased objective for the full-softmax
#: test loss).
LOSSES = {"full": "full softmax", "logq": "sampled softmax, logQ-corrected",
          "uncorrected": "sampled softmax over the mined ids, no logQ correction (biased)"}


def rule_landmarks(out_dim: int, n_targets: int) -> int:
    """The a-priori number of Nystrom landmarks: m = min(2 d, N).

    With the linear kernel the Nystrom features have rank at most d + 1, and
    d + 1 landmarks whose augmented cached embeddings span reproduce every
    affine encoder update exactly (P11, proofs/README.md section 6.11); twice
    d leaves a margin for the conditioning of K_LL. Fixed before any
    comparison was run; it depends on d and N only.
    """
    return min(2 * check_int(out_dim, "out_dim", low=1), check_int(n_targets, "n_targets", low=1))


def rule_cut_tol(n_targets: int, negatives: int) -> float:
    """The a-priori bracket width of the tree miners' adaptive cut: max(1, log(N / n)).

    The width of the rejection sampler's safety net (proofs/README.md section
    4.5): at hi - lo <= log(N / n) a proposal from the cut's envelope is
    accepted with probability at least n / N (P6, P7), so n exact draws
    would take at most N proposals in expectation, the cost of scoring every
    target once. The tree miners sample from the cut itself (with the logQ
    correction), not by rejection; the rule only borrows the repository's
    one stated trade-off between a cut's width and N / n. A stated choice,
    not an optimum: it depends on N and n only, and was fixed before any
    comparison was run with it.
    """
    N = check_int(n_targets, "n_targets", low=1)
    n = check_int(negatives, "negatives", low=1)
    return max(1.0, math.log(N / n))


@dataclass(frozen=True)
class TrainConfig:
    """One training budget, shared by every miner of a comparison.

    Parameters
    ----------
    n_targets : int
        N, number of targets of the synthetic dataset (``data.make_dataset``).
    dim : int
        Target (and query) feature dimension.
    queries_per_target : int
        Queries generated per target before the train/test split.
    noise : float
        Query noise of the dataset.
    hidden : tuple of int
        Hidden widths of each tower.
    out_dim : int
        Embedding dimension d.
    beta : float
        Softmax inverse temperature.
    steps : int
        Training steps (Adam updates).
    batch_size : int
        B, queries per step.
    negatives : int
        n, negatives per query (>= 1; :func:`compare` also requires n <= N - 1
        for the top-k miners and n <= B - 1 for ``in_batch``).
    lr : float
        Adam step size.
    refresh_every : int
        R, steps between full re-encodes of stale caches.
    cache_size : int
        C, negative-cache slots.
    landmarks : int, optional
        m, Nystrom landmarks; default (None) the a-priori rule
        :func:`rule_landmarks`, m = min(2 d, N).
    eval_every : int
        Steps between test evaluations (the test metrics measure the model,
        not a miner's cache, so their schedule cannot favour a miner).
    seed : int
        Seed of the dataset, the initialisation, the batches and the miner.
    grad_every : int, default 1
        Steps between gradient-error measurements (1: every step). Must be
        coprime with ``refresh_every``, so that the measured steps fall on
        every phase t mod R of the refresh period (evenly when ``steps`` is
        a multiple of R * grad_every).
    cut_tol : float, optional
        Bracket width of the adaptive cut of ``tree_stale`` and
        ``tree_nystrom``; default (None) the a-priori rule
        :func:`rule_cut_tol`, max(1, log(N / n)).
    data_files : reference.data.DataFiles, optional
        A user's dataset (``.npy`` files, :func:`reference.data.load_dataset`)
        instead of the synthetic one; ``n_targets`` must then be its number of
        targets, and ``dim``, ``queries_per_target`` and ``noise`` are unused.

    The two rules are fixed before any comparison is run and never look at
    its results; the resolved values are stored in the config (and so in
    every JSON and checkpoint).
    """

    n_targets: int = 2000
    dim: int = 16
    queries_per_target: int = 5
    noise: float = 0.1
    hidden: tuple[int, ...] = (64,)
    out_dim: int = 32
    beta: float = 10.0
    steps: int = 300
    batch_size: int = 64
    negatives: int = 32
    lr: float = 3e-3
    refresh_every: int = 50
    cache_size: int = 512
    landmarks: int | None = None
    eval_every: int = 50
    seed: int = 0
    grad_every: int = 1
    cut_tol: float | None = None
    data_files: DataFiles | None = None

    def __post_init__(self) -> None:
        check_int(self.n_targets, "n_targets", low=2)
        check_int(self.dim, "dim", low=1)
        check_int(self.queries_per_target, "queries_per_target", low=1)
        object.__setattr__(self, "noise", check_nonnegative(self.noise, "noise"))
        object.__setattr__(self, "hidden", tuple(check_int(h, "hidden[]", low=1) for h in self.hidden))
        check_int(self.out_dim, "out_dim", low=1)
        object.__setattr__(self, "beta", check_positive(self.beta, "beta"))
        check_int(self.steps, "steps", low=1)
        check_int(self.batch_size, "batch_size", low=2)
        check_int(self.negatives, "negatives", low=1)  # per miner: _check_miners
        object.__setattr__(self, "lr", check_positive(self.lr, "lr"))
        check_int(self.refresh_every, "refresh_every", low=1)
        check_int(self.cache_size, "cache_size", low=1, high=self.n_targets)
        if self.landmarks is None:
            object.__setattr__(self, "landmarks", rule_landmarks(self.out_dim, self.n_targets))
        check_int(self.landmarks, "landmarks", low=1, high=self.n_targets)
        check_int(self.eval_every, "eval_every", low=1)
        check_int(self.seed, "seed", low=0)
        check_int(self.grad_every, "grad_every", low=1)
        if math.gcd(self.grad_every, self.refresh_every) != 1:
            raise ValueError(
                f"grad_every: expected a period coprime with refresh_every = {self.refresh_every} (so that every "
                f"phase of the refresh period is measured), got {self.grad_every}")
        if self.cut_tol is None:
            object.__setattr__(self, "cut_tol", rule_cut_tol(self.n_targets, self.negatives))
        object.__setattr__(self, "cut_tol", check_positive(self.cut_tol, "cut_tol"))
        if self.data_files is not None and not isinstance(self.data_files, DataFiles):
            raise ValueError(f"data_files: expected a DataFiles or None, got {type(self.data_files).__name__}")

    def miner_config(self) -> MinerConfig:
        """The miners' hyper-parameters implied by this budget."""
        return MinerConfig(
            negatives=self.negatives, refresh_every=self.refresh_every, cache_size=self.cache_size,
            landmarks=self.landmarks, cut_tol=self.cut_tol, seed=self.seed,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d


#: Named budgets for ``compare --preset``; explicit options override them.
PRESETS: dict[str, dict[str, Any]] = {
    # a smoke run: seconds
    "quick": dict(n_targets=300, steps=40, eval_every=20, batch_size=32, negatives=8,
                  refresh_every=20, cache_size=128, seeds=(0, 1, 2)),
    # the README's comparison: a few minutes on 2 cores
    "default": dict(seeds=(0, 1, 2)),
    # the run that can decide the claims (proofs/README.md section 8.1), fixed and written down
    # before it was ever run: N as large as fits about an hour on 2 cores for 8 miners x 5
    # seeds (estimated from 60-step pilots on seed 99, not one of these: README), B, n, R, d as
    # the default, C = N / 4 as the default's 512 of 2000, m and cut_tol by the rules; the
    # gradient error every 3rd step (coprime with R = 50; 600 steps = 4 x 150, so every phase
    # is measured 4 times); the test metrics at steps 0, 300 and 600.
    "decide": dict(n_targets=24000, queries_per_target=3, steps=600, eval_every=300, grad_every=3,
                   cache_size=6000, seeds=(0, 1, 2, 3, 4)),
}


def preset_line(name: str) -> str:
    """One preset as one line of text, ``name: field=value, ...`` (the README quotes it verbatim)."""
    check_choice(name, "name", PRESETS)
    return f"{name}: " + ", ".join(f"{k}={v!r}" for k, v in PRESETS[name].items())


# --------------------------------------------------------------------------- one run


def make_data(config: TrainConfig) -> RetrievalData:
    """The dataset of a budget: the user's files (``config.data_files``; the same for every seed, split by
    its own ``split_seed``), else the synthetic dataset (deterministic in ``config.seed``)."""
    if config.data_files is not None:
        return config.data_files.load()
    return make_dataset(
        config.n_targets, dim=config.dim, queries_per_target=config.queries_per_target,
        noise=config.noise, seed=config.seed,
    )


def _encoder_config(config: TrainConfig, data: RetrievalData) -> EncoderConfig:
    return EncoderConfig(
        query_dim=data.train_x.shape[1], target_dim=data.targets.shape[1], hidden=config.hidden,
        out_dim=config.out_dim, beta=config.beta,
    )


def _flat(grads: dict[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    return np.concatenate([np.ravel(grads[n]) for n in names])


def gradient_error(model: DualEncoder, grads: dict[str, np.ndarray], x: np.ndarray, pos: np.ndarray,
                   targets: np.ndarray) -> float:
    """Relative error ||g - g*|| / ||g*|| of a training gradient against the full-softmax one.

    g* is :meth:`DualEncoder.full_softmax_loss`'s gradient on the same batch
    at the current parameters; both are flattened over every parameter.
    The measurement is not charged to ``model.target_rows_encoded``, and it
    changes nothing else: the encoder is stateless apart from that counter and
    no generator is drawn from, so a run's trajectory is the same whether and
    when it is measured.
    """
    rows = model.target_rows_encoded
    _, exact = model.full_softmax_loss(x, pos, targets)
    model.target_rows_encoded = rows
    names = list(model.params)
    g, g_star = _flat(grads, names), _flat(exact, names)
    return float(np.linalg.norm(g - g_star) / np.linalg.norm(g_star))


def sizes_for(config: TrainConfig, data: RetrievalData, model: DualEncoder) -> Sizes:
    """The :class:`Sizes` of a run, for the memory accounting (tree nodes estimated, default block size)."""
    mc = config.miner_config()
    return Sizes(
        n_targets=config.n_targets, out_dim=config.out_dim,
        query_dim=data.train_x.shape[1], target_dim=data.targets.shape[1], batch_size=config.batch_size,
        negatives=config.negatives, n_params=model.n_params, cache_size=config.cache_size,
        landmarks=config.landmarks, hidden=model.config.hidden, branching=mc.branching, leaf_size=mc.leaf_size,
        itemsize=model.dtype.itemsize,
    )


class _History:
    """Everything a run records, as growing lists (checkpointed as arrays)."""

    FIELDS = ("train_loss", "eval_step", "eval_rows", "eval_logits", *(f"eval_{m}" for m in METRICS),
              "grad_step", "grad_error")

    def __init__(self) -> None:
        self.lists: dict[str, list] = {f: [] for f in self.FIELDS}
        self.rows = 0  # target-encoder passes charged to training
        self.logits_mining = 0
        self.logits_loss = 0
        self.losses: set[str] = set()  # the training losses seen: "full", "logq", "uncorrected"
        self.grad_seconds = 0.0  # wall clock of the gradient-error measurements (not of training)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every list as an array (one entry per field) and the three counters (plain arrays)."""
        out = {}
        for f, v in self.lists.items():
            dtype = np.int64 if f in ("eval_step", "eval_rows", "eval_logits", "grad_step") else np.float64
            out[f] = np.asarray(v, dtype=dtype)
        out["counters"] = np.array([self.rows, self.logits_mining, self.logits_loss], dtype=np.int64)
        out["losses"] = np.array([k in self.losses for k in LOSSES], dtype=np.int64)  # flags in LOSSES order
        out["grad_seconds"] = np.array(self.grad_seconds, dtype=np.float64)
        return out

    def check(self, step: int, config: TrainConfig) -> None:
        """Refuse (``ValueError``) a history that is not the one ``train`` records in ``step`` steps of ``config``.

        One training loss per step, finite; evaluations at steps
        0, E, 2E, ... below ``step``; gradient errors at steps 0, g, 2g, ...
        below ``step`` (E = ``eval_every``, g = ``grad_every``); every
        recorded number finite and every counter a non-negative integer,
        non-decreasing along the evaluations.
        """
        L = self.lists
        want = {"train_loss": step, "eval_step": list(range(0, step, config.eval_every)),
                "grad_step": list(range(0, step, config.grad_every))}
        if len(L["train_loss"]) != step:
            raise ValueError(f"history: expected {step} training losses (one per completed step), "
                             f"got {len(L['train_loss'])}")
        for f in ("eval_step", "grad_step"):
            if L[f] != want[f]:
                raise ValueError(f"history: expected {f} = {want[f][:8]}{'...' if len(want[f]) > 8 else ''} at "
                                 f"step {step}, got {L[f][:8]}{'...' if len(L[f]) > 8 else ''} ({len(L[f])} entries)")
        for f in self.FIELDS:
            n = len(L["grad_step"] if f.startswith("grad") else L[f] if f == "train_loss" else L["eval_step"])
            if len(L[f]) != n or not all(math.isfinite(v) for v in L[f]):
                raise ValueError(f"history: expected {n} finite values of {f}, got {len(L[f])}")
        counts = [self.rows, self.logits_mining, self.logits_loss, *L["eval_rows"], *L["eval_logits"]]
        if min(counts, default=0) < 0 or any(np.diff(L["eval_rows"]) < 0) or any(np.diff(L["eval_logits"]) < 0):
            raise ValueError("history: expected non-negative, non-decreasing counters")
        if not (math.isfinite(self.grad_seconds) and self.grad_seconds >= 0):
            raise ValueError(f"history: expected grad_seconds >= 0, got {self.grad_seconds}")

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore from :meth:`state_dict` (float64 and int64 round-trip exactly through ``tolist``)."""
        lists = {f: np.asarray(state[f]).tolist() for f in self.FIELDS}
        rows, logits_mining, logits_loss = (int(v) for v in state["counters"])
        flags = np.asarray(state["losses"])
        if flags.shape != (len(LOSSES),):
            raise ValueError(f"losses: expected {len(LOSSES)} flags, got shape {flags.shape}")
        losses = {k for k, f in zip(LOSSES, flags.tolist()) if f}
        grad_seconds = float(state["grad_seconds"])
        self.lists, self.rows, self.logits_mining, self.logits_loss = lists, rows, logits_mining, logits_loss
        self.losses, self.grad_seconds = losses, grad_seconds


def _save_checkpoint(path: Path, config: TrainConfig, miner_name: str, step: int, model: DualEncoder,
                     opt: Adam, batch_rng: np.random.Generator, miner_rng: np.random.Generator,
                     miner: Any, hist: _History) -> None:
    """The package's one checkpoint format (:func:`reference.persist.save_checkpoint`, as ``demo``)."""
    persist.save_checkpoint(
        path, step=step, params=model.params, optimizer=opt.state_dict(),
        rngs={"batch": batch_rng, "miner": miner_rng}, miner=miner.state_dict(), extra={"history": hist.state_dict()},
        meta={"command": "compare", "config": config.to_dict(), "miner": miner_name},
    )  # fmt: skip


def _load_checkpoint(path: Path, config: TrainConfig, miner_name: str, model: DualEncoder, opt: Adam,
                     miner: Any, hist: _History) -> tuple[int, np.random.Generator, np.random.Generator]:
    """Restore a run from :func:`_save_checkpoint`; return (completed steps, batch generator, miner generator)."""
    ckpt = persist.load_checkpoint(path)  # PersistError (a ValueError) names the file
    meta = ckpt["meta"]
    if meta.get("config") != config.to_dict() or meta.get("miner") != miner_name:
        raise ValueError(
            f"{path}: checkpoint of miner {meta.get('miner')!r} with config {meta.get('config')}, "
            f"expected miner {miner_name!r} with config {config.to_dict()} (delete it or drop --resume)"
        )
    step = ckpt["step"]
    try:  # validated by each setter before it changes anything
        if not 0 <= step < config.steps:
            raise ValueError(f"step: expected a completed step in [0, {config.steps}) (steps = {config.steps}), "
                             f"got {step}")
        model.set_params(ckpt["params"])
        opt.load_state_dict(ckpt["optimizer"])
        if opt.t != step:
            raise ValueError(f"optimizer: expected {step} Adam steps (the checkpoint's step), got {opt.t}")
        miner.load_state_dict(ckpt["miner"])
        persist.check_objects(list(vars(miner).values()))  # a restored tree or index means what it should
        hist.load_state_dict(ckpt["extra"]["history"])
        hist.check(step, config)
        batch_rng, miner_rng = ckpt["rngs"]["batch"], ckpt["rngs"]["miner"]
        if not all(isinstance(g, np.random.Generator) for g in (batch_rng, miner_rng)):
            raise ValueError("rngs: expected the batch and miner generators")
    except (KeyError, TypeError, ValueError, AssertionError) as exc:  # AssertionError: an InvariantError
        raise ValueError(f"{path}: checkpoint does not fit this run ({type(exc).__name__}: {exc})") from None
    return step, batch_rng, miner_rng


def train(
    config: TrainConfig,
    miner_name: str,
    *,
    data: RetrievalData | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train one dual encoder with one miner; return every number it produced.

    Parameters
    ----------
    config : TrainConfig
        The budget.
    miner_name : str
        A key of :data:`reference.miners.MINERS`.
    data : RetrievalData, optional
        The dataset (default ``make_data(config)``); pass it to share one
        dataset between miners.
    checkpoint : path-like, optional
        Checkpoint file (written every ``checkpoint_every`` steps; with
        ``resume`` it is read first if it exists).
    checkpoint_every : int, default 0
        C, steps between checkpoints (0: never).
    resume : bool, default False
        Continue from ``checkpoint`` if it exists.
    progress : callable, optional
        Called after every step with ``{"miner", "seed", "step", "steps", "loss"}``.

    Returns
    -------
    dict
        ``miner``, ``seed``, ``final`` (test metrics after the last step),
        ``curve`` (test metrics and cumulative counters at the evaluation
        steps; ``grad_step``, ``grad_error`` and ``grad_phase`` = step mod R
        at every ``grad_every``-th step), ``loss_kind`` (a key of
        :data:`LOSSES`, or several joined by "+"), ``train_loss`` (per step),
        ``counters``, ``memory`` (accounting at N and at N = 1e6),
        ``params_sha256``, ``seconds`` and ``grad_error_cost`` (``seconds``
        of the gradient-error measurements, included in ``seconds``).
    """
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config: expected a TrainConfig, got {type(config).__name__}")
    check_choice(miner_name, "miner", MINERS)
    checkpoint_every = check_int(checkpoint_every, "checkpoint_every", low=0)
    if (checkpoint_every or resume) and checkpoint is None:
        raise ValueError("checkpoint: expected a path when checkpoint_every > 0 or resume is set, got None")
    t0 = time.perf_counter()
    data = make_data(config) if data is None else data
    if data.n_targets != config.n_targets:
        raise ValueError(f"data: expected {config.n_targets} targets (config.n_targets), got {data.n_targets}")
    Y = data.targets
    model = DualEncoder(_encoder_config(config, data), seed=config.seed)
    opt = Adam(model.params, lr=config.lr)
    miner = make_miner(miner_name, config.miner_config(), data)
    # Two independent streams: batches (shared by all miners of a seed) and the miner's draws.
    batch_rng, miner_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(2))
    hist = _History()
    start = 0
    path = None if checkpoint is None else Path(checkpoint)
    if resume and path is not None and path.exists():
        start, batch_rng, miner_rng = _load_checkpoint(path, config, miner_name, model, opt, miner, hist)
    B, N, E, R = config.batch_size, config.n_targets, config.eval_every, config.refresh_every
    n_train = data.train_x.shape[0]

    def evaluate(step: int) -> None:
        ev = metrics.evaluate(model, data.test_x, data.test_pos, Y)
        hist.lists["eval_step"].append(step)
        hist.lists["eval_rows"].append(hist.rows)
        hist.lists["eval_logits"].append(hist.logits_mining + hist.logits_loss)
        for m in METRICS:
            hist.lists[f"eval_{m}"].append(ev[m])

    for t in range(start, config.steps):
        if t % E == 0:
            evaluate(t)
        idx = batch_rng.integers(0, n_train, size=B)
        x, pos = data.train_x[idx], data.train_pos[idx]
        rows = model.target_rows_encoded
        neg = miner.mine(model, Y, x, pos, t, miner_rng)
        if neg.ids is None:
            loss, grads = model.full_softmax_loss(x, pos, Y)
            hist.logits_loss += B * N
            hist.losses.add("full")
        else:
            loss, grads = model.sampled_softmax_loss(x, pos, Y, neg.ids, neg.log_q)
            hist.logits_loss += B + neg.ids.size
            hist.losses.add("uncorrected" if neg.log_q is None else "logq")
        hist.rows += model.target_rows_encoded - rows
        hist.logits_mining += int(neg.logits)
        if not math.isfinite(loss):
            raise FloatingPointError(f"miner {miner_name}, step {t}: the training loss is {loss}")
        if t % config.grad_every == 0:  # the batch and parameters of this very update
            t_grad = time.perf_counter()
            hist.lists["grad_step"].append(t)
            hist.lists["grad_error"].append(gradient_error(model, grads, x, pos, Y))
            hist.grad_seconds += time.perf_counter() - t_grad
        opt.step(grads)
        hist.lists["train_loss"].append(loss)
        if progress is not None:
            progress({"miner": miner_name, "seed": config.seed, "step": t + 1, "steps": config.steps, "loss": loss})
        if checkpoint_every and (t + 1) % checkpoint_every == 0 and t + 1 < config.steps:
            _save_checkpoint(path, config, miner_name, t + 1, model, opt, batch_rng, miner_rng, miner, hist)
    evaluate(config.steps)

    L = hist.lists
    sizes = sizes_for(config, data, model)
    return {
        "miner": miner_name,
        "seed": config.seed,
        "final": {m: L[f"eval_{m}"][-1] for m in METRICS},
        "curve": {
            "step": L["eval_step"], "target_rows": L["eval_rows"], "logits": L["eval_logits"],
            **{m: L[f"eval_{m}"] for m in METRICS},
            "grad_step": L["grad_step"], "grad_error": L["grad_error"],
            "grad_phase": [s % R for s in L["grad_step"]],
        },
        "loss_kind": "+".join(sorted(hist.losses)),
        "train_loss": L["train_loss"],
        "counters": {"target_rows": hist.rows, "logits_mining": hist.logits_mining,
                     "logits_loss": hist.logits_loss},
        "memory": {
            "at_n": memory_accounting(miner_name, sizes),
            "at_1e6": memory_accounting(miner_name, dataclasses.replace(sizes, n_targets=CLAIM_N)),
        },
        "params_sha256": params_sha256(model.params),
        "seconds": time.perf_counter() - t0,
        "grad_error_cost": {"seconds": hist.grad_seconds},
    }


# --------------------------------------------------------------------------- the comparison


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0}


def _gap(metric: str, full: float, other: float) -> float:
    """gap = how much worse ``other`` is than full softmax (recall: lower; loss: higher)."""
    return other - full if metric == "loss" else full - other


def _by_phase(runs: Sequence[dict[str, Any]]) -> dict[str, list]:
    """Gradient error against the phase t mod R (steps since the last refresh), over runs.

    Per run, the mean over its measured steps of each phase; then the mean and
    standard deviation of those over the runs (seeds). ``None`` for a phase
    no step of some run measured (only when ``steps`` < R).
    """
    R = 1 + max(max(r["curve"]["grad_phase"]) for r in runs)
    per_run = np.full((len(runs), R), np.nan)
    for i, r in enumerate(runs):
        ph = np.asarray(r["curve"]["grad_phase"], dtype=np.int64)
        err = np.asarray(r["curve"]["grad_error"], dtype=np.float64)
        counts = np.bincount(ph, minlength=R)
        sums = np.bincount(ph, weights=err, minlength=R)
        per_run[i, counts > 0] = sums[counts > 0] / counts[counts > 0]
    ok = ~np.isnan(per_run).any(axis=0)
    mean = [float(per_run[:, j].mean()) if ok[j] else None for j in range(R)]
    std = [float(per_run[:, j].std(ddof=1)) if ok[j] and len(runs) > 1 else (0.0 if ok[j] else None)
           for j in range(R)]
    return {"phase": list(range(R)), "mean": mean, "std": std}


def _claim1_verdict(gap_brute_ci: dict[str, Any], ratio_ci: dict[str, Any]) -> tuple[str, str]:
    """Claim 1 for one metric: "gap(tree_nystrom) <= 0.5 gap(brute_topk)" (module docstring, the rule).

    Supported when brute force's gap is positive at the confidence level
    (its t-interval lies above 0) and the Fieller interval of the ratio of
    mean gaps lies at or below :data:`CLAIM1_RATIO`; contradicted when brute
    force's gap is positive and the ratio's interval lies above it;
    undecided otherwise. Returns the verdict and the reason in words.
    """
    lo, hi = gap_brute_ci["lo"], gap_brute_ci["hi"]
    if lo is None:
        return "undecided", "fewer than two seeds: no interval"
    if not lo > 0.0:
        where = "below 0: brute force beats full softmax" if hi < 0.0 else "includes 0"
        return "undecided", f"no brute-force gap to halve: its {CONFIDENCE:.0%} interval {where}"
    verdict = verdict_at_most(Interval(**ratio_ci), CLAIM1_RATIO)
    side = {"supported": "at or below", "contradicted": "above", "undecided": "not on one side of"}[verdict]
    return verdict, f"ratio interval {_ci(ratio_ci, 2)} {side} {CLAIM1_RATIO}"


def _claim2(brute: dict[str, Any], method: dict[str, Any]) -> dict[str, Any]:
    """Claim 2: accelerator(brute_topk) / accelerator(tree_nystrom) >= 100 at N = 1e6, under each memory rule.

    ``brute`` and ``method`` are :func:`reference.miners.memory_accounting`
    results at N = 1e6. For each rule (``materialised``, ``streamed``) the
    ratio of the per-step bytes (a step without a refresh) and of the peak
    bytes (a refresh step included). The claim is about the accelerator a
    run must have, so each rule's ``verdict`` is taken at the peak; the
    overall ``verdict`` is "supported" when it holds at the peak under both
    rules, "contradicted" under neither, "undecided" otherwise.
    """
    out: dict[str, Any] = {"n_targets": CLAIM_N, "target_ratio": CLAIM2_RATIO, "block_rows": brute["block_rows"]}
    for rule in MEMORY_RULES:
        b, t = brute[rule], method[rule]
        ratio_step, ratio_peak = b["step_bytes"] / t["step_bytes"], b["peak_bytes"] / t["peak_bytes"]
        out[rule] = {
            "brute_topk_step_bytes": b["step_bytes"], "brute_topk_peak_bytes": b["peak_bytes"],
            "tree_nystrom_step_bytes": t["step_bytes"], "tree_nystrom_peak_bytes": t["peak_bytes"],
            "ratio_step": ratio_step, "ratio_peak": ratio_peak,
            "holds_step": bool(ratio_step >= CLAIM2_RATIO), "holds_peak": bool(ratio_peak >= CLAIM2_RATIO),
            "verdict": "supported" if ratio_peak >= CLAIM2_RATIO else "contradicted",
        }
    held = [out[rule]["holds_peak"] for rule in MEMORY_RULES]
    out["verdict"] = "supported" if all(held) else "contradicted" if not any(held) else "undecided"
    return out


def summarize(runs: Sequence[dict[str, Any]], miners: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """Aggregate runs over seeds: per-miner mean/std, gaps to full softmax, and the two claims.

    Returns
    -------
    dict
        ``per_miner[m]``: for each metric and for ``grad_error`` (mean over a
        run's measured steps) ``{"mean", "std"}`` over seeds;
        ``grad_error_by_phase`` (:func:`_by_phase`: mean and std over seeds
        of the gradient error at each phase t mod R); ``loss_kind``;
        ``target_rows_per_step``, ``logits_per_step`` (means), ``memory``
        (accounting at N and at 1e6, identical for every seed), ``seconds``
        and ``grad_error_cost`` (wall clock).
        ``gaps[m][metric]``: per-seed gaps to ``full``, their mean/std and
        ``ci``, the paired Student-t interval
        (:func:`reference.stats.paired_t_interval`).
        ``ratio_to_brute_topk[m][metric]``: gap(m) / gap(brute_topk), the
        ratio of mean gaps with Fieller's interval
        (:func:`reference.stats.fieller_interval`), for every miner but
        ``full`` and ``brute_topk``.
        ``claims``: ``error_gap`` (per metric: the method's and brute force's
        mean gaps with their intervals, their ratio with its interval, the
        per-seed ratios, ``verdict`` and ``reason``, by the rule of the
        module docstring) and ``memory`` (accelerator bytes of brute force
        over the method's at N = 1e6 under each rule, per step and at the
        peak, with the verdicts of :func:`_claim2`).
        ``confidence``: the level of every interval (0.95).
    """
    by = {(r["miner"], r["seed"]): r for r in runs}
    per_miner: dict[str, Any] = {}
    for m in miners:
        rs = [by[(m, s)] for s in seeds]
        steps = len(rs[0]["train_loss"])
        entry: dict[str, Any] = {k: _mean_std([r["final"][k] for r in rs]) for k in METRICS}
        entry["grad_error"] = _mean_std([float(np.mean(r["curve"]["grad_error"])) for r in rs])
        entry["grad_error_by_phase"] = _by_phase(rs)
        entry["loss_kind"] = "/".join(sorted({r["loss_kind"] for r in rs}))
        entry["target_rows_per_step"] = float(np.mean([r["counters"]["target_rows"] for r in rs])) / steps
        entry["logits_per_step"] = float(
            np.mean([r["counters"]["logits_mining"] + r["counters"]["logits_loss"] for r in rs])) / steps
        entry["memory"] = rs[0]["memory"]
        entry["seconds"] = _mean_std([r["seconds"] for r in rs])
        entry["grad_error_cost"] = {"seconds": _mean_std([r["grad_error_cost"]["seconds"] for r in rs])}
        per_miner[m] = entry
    out: dict[str, Any] = {"per_miner": per_miner, "gaps": {}, "ratio_to_brute_topk": {}, "claims": {},
                           "confidence": CONFIDENCE}
    if "full" not in miners:
        return out
    for m in miners:
        out["gaps"][m] = {}
        for k in METRICS:
            g = [_gap(k, by[("full", s)]["final"][k], by[(m, s)]["final"][k]) for s in seeds]
            out["gaps"][m][k] = {"per_seed": g, **_mean_std(g), "ci": paired_t_interval(g, CONFIDENCE).to_dict()}
    if "brute_topk" in miners:
        gb = out["gaps"]["brute_topk"]
        for m in miners:
            if m not in ("full", "brute_topk"):
                out["ratio_to_brute_topk"][m] = {
                    k: fieller_interval(out["gaps"][m][k]["per_seed"], gb[k]["per_seed"], CONFIDENCE).to_dict()
                    for k in METRICS}
    if "brute_topk" in miners and "tree_nystrom" in miners:
        err = {}
        for k in METRICS:
            gm, gb = out["gaps"]["tree_nystrom"][k], out["gaps"]["brute_topk"][k]
            per_seed = [a / b if b != 0 else None for a, b in zip(gm["per_seed"], gb["per_seed"])]
            ratio = out["ratio_to_brute_topk"]["tree_nystrom"][k]
            verdict, reason = _claim1_verdict(gb["ci"], ratio)
            err[k] = {
                "gap_method": {"mean": gm["mean"], "std": gm["std"], "ci": gm["ci"]},
                "gap_brute_topk": {"mean": gb["mean"], "std": gb["std"], "ci": gb["ci"]},
                "ratio_of_mean_gaps": gm["mean"] / gb["mean"] if gb["mean"] != 0 else None,
                "ratio_ci": ratio,
                "per_seed_ratio": per_seed,
                "verdict": verdict,
                "reason": reason,
            }
        out["claims"]["error_gap"] = {"target_ratio": CLAIM1_RATIO, "confidence": CONFIDENCE, "per_metric": err}
        out["claims"]["memory"] = _claim2(per_miner["brute_topk"]["memory"]["at_1e6"],
                                          per_miner["tree_nystrom"]["memory"]["at_1e6"])
    return out


def _pm(e: dict[str, float], digits: int = 3) -> str:
    return f"{e['mean']:.{digits}f} ± {e['std']:.{digits}f}"


def _sig3(v: float) -> str:
    """Three significant digits, without an exponent (1340, 857, 2.2, 0.531)."""
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _mib(n_bytes: float) -> str:
    return _sig3(n_bytes / 2**20)


def _ci(ci: dict[str, Any], digits: int = 3) -> str:
    """An interval as ``[lo, hi]``; ``unbounded`` or ``n/a`` when an end is missing."""
    if ci["lo"] is None or ci["hi"] is None:
        return "n/a" if ci["n"] < 2 else "unbounded"
    return f"[{ci['lo']:.{digits}f}, {ci['hi']:.{digits}f}]"


def _est_ci(ci: dict[str, Any], digits: int = 3) -> str:
    """Estimate and interval, e.g. ``0.150 [0.103, 0.197]``; ``n/a`` for an undefined estimate (a ratio over 0)."""
    if ci["estimate"] is None:
        return "n/a"
    return f"{ci['estimate']:.{digits}f} {_ci(ci, digits)}"


#: How the tables name each kind of training loss (:data:`LOSSES`).
_LOSS_LABELS = {"full": "full softmax", "logq": "logQ-corrected", "uncorrected": "no logQ (biased)"}


def _loss_label(kind: str) -> str:
    return " / ".join(_LOSS_LABELS.get(k, k) for k in kind.replace("/", "+").split("+"))


def _and(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _phase_bins(R: int) -> list[tuple[int, int]]:
    """Columns of the phase table: t mod R = 0 (just refreshed), then four equal bins of 1 .. R-1."""
    if R == 1:
        return [(0, 0)]
    return [(0, 0)] + [(int(b[0]), int(b[-1])) for b in np.array_split(np.arange(1, R), min(4, R - 1))]


def _loss_caveat(s: dict[str, Any]) -> list[str]:
    """The loss-gap caveat: which miners train a biased objective, and what the corrected ones give."""
    kinds = {m: e["loss_kind"] for m, e in s["per_miner"].items()}
    biased = [m for m, k in kinds.items() if "uncorrected" in k]
    corrected = [m for m, k in kinds.items() if k == "logq"]
    if not biased:
        return []
    verb, its = ("trains", "its loss gap is") if len(biased) == 1 else ("train", "their loss gaps are")
    lines = ["", f"Caveat on the test loss: {_and(biased)} {verb} the softmax over {{positive}} + the mined ids "
                 "without the logQ correction, a different objective from the full softmax that the test loss "
                 f"measures, so {its} largely that bias; every logQ-corrected miner estimates the full "
                 "softmax's gradient (P13, proofs/README.md section 6.13) and is expected to do better on this "
                 "metric whatever its negatives."]
    ratios = s.get("ratio_to_brute_topk", {})
    shown = [m for m in corrected if m in ratios]
    if "brute_topk" in biased and shown:
        lines.append("Loss gap relative to brute force's, gap(miner) / gap(brute_topk) with its "
                     f"{s['confidence']:.0%} Fieller interval, for every logQ-corrected miner: "
                     + "; ".join(f"{m} {_est_ci(ratios[m]['loss'], 2)}" for m in shown)
                     + ". A loss ratio below 0.5 singles out the method only if it is below the other corrected "
                       "miners' too.")
    return lines


def markdown_table(result: dict[str, Any]) -> str:
    """The comparison as Markdown: per-miner table, gap table and the claims (from ``result``)."""
    s = result["summary"]
    cfg = result["config"]
    seeds = result["seeds"]
    lines = [
        f"Comparison: N = {cfg['n_targets']}, {cfg['steps']} steps, B = {cfg['batch_size']}, "
        f"n = {cfg['negatives']}, R = {cfg['refresh_every']}, C = {cfg['cache_size']}, "
        f"m = {cfg['landmarks']}, cut_tol = {cfg['cut_tol']:.3g}, seeds {list(seeds)} (mean ± std over seeds; "
        f"gradient error measured every {cfg['grad_every']} step(s), on the batch and parameters of the update).",
        "",
        "| miner | recall@1 | recall@10 | recall@100 | test loss | grad rel. error | target enc./step "
        "| logits/step | accel. MiB N=1e6 materialised: step / peak | accel. MiB N=1e6 streamed: step / peak "
        "| host MiB (N=1e6) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, e in s["per_miner"].items():
        mem = e["memory"]
        lines.append(
            f"| {m} | {_pm(e['recall@1'])} | {_pm(e['recall@10'])} | {_pm(e['recall@100'])} | {_pm(e['loss'])} "
            f"| {_pm(e['grad_error'])} | {e['target_rows_per_step']:.1f} | {e['logits_per_step']:.0f} "
            + "".join(f"| {_mib(mem['at_1e6'][r]['step_bytes'])} / {_mib(mem['at_1e6'][r]['peak_bytes'])} "
                      for r in MEMORY_RULES)
            + f"| {_mib(mem['at_1e6']['host_bytes'])} |"
        )
    bins = _phase_bins(len(next(iter(s["per_miner"].values()))["grad_error_by_phase"]["mean"]))
    lines += ["", f"Gradient error ||g - g*|| / ||g*|| against t mod R = {cfg['refresh_every']} (steps since the last "
                  "refresh of stale_topk, tree_stale and tree_nystrom; a control for the others), mean over the "
                  "measured steps of each phase and over seeds:", "",
              "| miner | " + " | ".join(f"t mod R = {a}" if a == b else f"{a}-{b}" for a, b in bins)
              + " | mean over training |", "|---" * (len(bins) + 2) + "|"]
    for m, e in s["per_miner"].items():
        ph = e["grad_error_by_phase"]["mean"]
        cells = []
        for a, b in bins:
            vals = [v for v in ph[a:b + 1] if v is not None]
            cells.append(f"{np.mean(vals):.3f}" if vals else "n/a")
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {e['grad_error']['mean']:.3f} |")
    conf = f"{s['confidence']:.0%}"
    if s["gaps"]:
        lines += ["", "Gap to full softmax (recall: full - miner; loss: miner - full), paired by seed: mean and "
                      f"{conf} Student-t interval over the {len(seeds)} seed(s):", "",
                  "| miner | trains | gap recall@1 | gap recall@10 | gap recall@100 | gap test loss |",
                  "|---|---|---|---|---|---|"]
        for m, g in s["gaps"].items():
            lines.append(f"| {m} | {_loss_label(s['per_miner'][m]['loss_kind'])} | "
                         + " | ".join(_est_ci(g[k]["ci"]) for k in METRICS) + " |")
        if s["ratio_to_brute_topk"]:
            lines += ["", f"Ratio of mean gaps gap(miner) / gap(brute_topk), with Fieller's {conf} interval "
                          "(unbounded: brute force's gap is not distinguishable from 0):", "",
                      "| miner | trains | recall@1 | recall@10 | recall@100 | test loss |", "|---|---|---|---|---|---|"]
            for m, rr in s["ratio_to_brute_topk"].items():
                lines.append(f"| {m} | {_loss_label(s['per_miner'][m]['loss_kind'])} | "
                             + " | ".join(_est_ci(rr[k], 2) for k in METRICS) + " |")
        lines += _loss_caveat(s)
    c = s["claims"]
    if c:
        lines += ["", f"Claim 1 (the method's gap is about half of brute-force top-k's), tested as "
                      f"gap(tree_nystrom) <= {CLAIM1_RATIO} gap(brute_topk) at {conf} confidence: supported if brute "
                      f"force's gap interval lies above 0 and the ratio's interval at or below {CLAIM1_RATIO}, "
                      f"contradicted if brute force's gap interval lies above 0 and the ratio's above "
                      f"{CLAIM1_RATIO}, undecided otherwise.", ""]
        for k, e in c["error_gap"]["per_metric"].items():
            ps = ", ".join("n/a" if v is None else f"{v:.2f}" for v in e["per_seed_ratio"])
            lines.append(f"- {k}: {e['verdict'].upper()} ({e['reason']}); method gap {_est_ci(e['gap_method']['ci'])}, "
                         f"brute gap {_est_ci(e['gap_brute_topk']['ci'])}, ratio {_est_ci(e['ratio_ci'], 2)} "
                         f"(per seed: {ps})")
        mc = c["memory"]
        what = {"materialised": "every pass over targets held whole",
                "streamed": f"passes over targets in blocks of {mc['block_rows']} rows"}
        lines += ["", f"Claim 2 (>= {mc['target_ratio']:.0f}x less accelerator memory than brute force at N = 1e6), "
                      "accelerator(brute_topk) / accelerator(tree_nystrom) by the accounting of reference/miners.py "
                      "(no sampling error), per step (no refresh) and at the peak (a refresh step): "
                      f"{mc['verdict'].upper()} (judged at the peak under each rule)", ""]
        for r in MEMORY_RULES:
            e = mc[r]
            lines.append(f"- {r} ({what[r]}): per step {_mib(e['brute_topk_step_bytes'])} / "
                         f"{_mib(e['tree_nystrom_step_bytes'])} MiB = {_sig3(e['ratio_step'])}x, peak "
                         f"{_mib(e['brute_topk_peak_bytes'])} / {_mib(e['tree_nystrom_peak_bytes'])} MiB = "
                         f"{_sig3(e['ratio_peak'])}x -> {e['verdict'].upper()}")
    return "\n".join(lines)


class _Progress:
    """Progress lines on stderr: miner, seed, step, loss, elapsed and expected remaining time.

    The remaining time is the current run's remaining steps at its own rate
    plus, for each queued run, its steps at the rate measured for that miner
    on an earlier seed (the mean rate so far for a miner not yet seen).
    """

    def __init__(self, plan: Sequence[tuple[str, int]], steps: int, *, stream: Any = None,
                 every: float = 2.0) -> None:
        self.queue, self.steps, self.every = list(plan), steps, every
        self.stream = sys.stderr if stream is None else stream
        self.t0 = self.last = time.perf_counter()
        self.rate: dict[str, float] = {}  # miner -> seconds per step
        self.current: tuple[str, int] | None = None
        self.run_t0, self.run_first = self.t0, 0

    def skip(self, miner: str, seed: int) -> None:
        """A run that is not executed (found finished on --resume)."""
        self.queue.remove((miner, seed))

    def __call__(self, info: dict[str, Any]) -> None:
        now = time.perf_counter()
        key = (info["miner"], info["seed"])
        if key != self.current:  # a new run (a resumed one starts past step 1)
            self.current = key
            self.queue.remove(key)
            self.run_t0, self.run_first = now, info["step"]
        done = info["step"] - self.run_first + 1
        rate = (now - self.run_t0) / done
        if info["step"] == info["steps"]:
            self.rate[info["miner"]] = rate
        if now - self.last < self.every and info["step"] != info["steps"]:
            return
        self.last = now
        known = list(self.rate.values()) or [rate]
        remaining = (info["steps"] - info["step"]) * rate + sum(
            self.steps * self.rate.get(m, float(np.mean(known))) for m, _ in self.queue)
        print(f"[compare] {info['miner']:>12s} seed {info['seed']} step {info['step']:>5d}/{info['steps']} "
              f"loss {info['loss']:8.4f} elapsed {now - self.t0:6.1f}s remaining ~{remaining:6.0f}s",
              file=self.stream, flush=True)


def compare(
    config: TrainConfig,
    miners: Sequence[str] = tuple(MINERS),
    seeds: Sequence[int] = (0, 1, 2),
    *,
    run_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    progress: bool | Callable[[dict[str, Any]], None] = False,
) -> dict[str, Any]:
    """Train every miner for every seed under ``config``'s budget and summarise.

    Parameters
    ----------
    config : TrainConfig
        The budget (its ``seed`` is replaced by each of ``seeds``).
    miners : sequence of str
        Keys of :data:`reference.miners.MINERS` (default: all eight).
    seeds : sequence of int
        One dataset, initialisation and batch sequence per seed, shared by the miners.
    run_dir : path-like, optional
        Where each finished run's JSON and the checkpoints go (needed for
        ``checkpoint_every`` and ``resume``).
    checkpoint_every : int, default 0
        Steps between checkpoints of the run in progress.
    resume : bool, default False
        Reuse finished runs found in ``run_dir`` (checksum, miner, seed and
        configuration verified: :func:`reference.persist.load_record`; a
        damaged or edited one raises ``PersistError`` naming it) and continue
        checkpointed ones.
    progress : bool or callable, default False
        True: progress lines on stderr; a callable receives every step's info.

    Returns
    -------
    dict
        ``config``, ``miners``, ``seeds``, ``runs`` (every :func:`train` result,
        plus its ``config``) and ``summary`` (:func:`summarize`).
    """
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config: expected a TrainConfig, got {type(config).__name__}")
    miners = [check_choice(m, "miners[]", MINERS) for m in miners]
    seeds = [check_int(s, "seeds[]", low=0) for s in seeds]
    if not miners or not seeds:
        raise ValueError(f"miners, seeds: expected at least one of each, got {miners} and {seeds}")
    if len(set(miners)) != len(miners) or len(set(seeds)) != len(seeds):
        raise ValueError(f"miners, seeds: expected no repeats, got {miners} and {seeds}")
    _check_miners(config, miners)
    if (checkpoint_every or resume) and run_dir is None:
        raise ValueError("run_dir: expected a directory when checkpoint_every > 0 or resume is set, got None")
    rdir = None if run_dir is None else Path(run_dir)
    if rdir is not None:
        rdir.mkdir(parents=True, exist_ok=True)
    plan = [(m, s) for s in seeds for m in miners]
    report = progress if callable(progress) else (_Progress(plan, config.steps) if progress else None)
    runs = []
    for seed in seeds:
        cfg = dataclasses.replace(config, seed=seed)
        data = None
        for m in miners:
            done_path = None if rdir is None else rdir / f"{m}-seed{seed}.json"
            if resume and os.path.lexists(done_path):
                prev = _load_run(done_path, m, seed)
                if prev.get("config") == cfg.to_dict():
                    runs.append(prev)
                    if isinstance(report, _Progress):
                        report.skip(m, seed)
                    continue
            data = make_data(cfg) if data is None else data
            ckpt = None if rdir is None else rdir / f"{m}-seed{seed}.ckpt.npz"
            res = train(cfg, m, data=data, checkpoint=ckpt, checkpoint_every=checkpoint_every,
                        resume=resume, progress=report)
            res["config"] = cfg.to_dict()
            if done_path is not None:
                write_json(done_path, persist.seal_record(_RUN_KIND, res))
                if ckpt.exists():
                    ckpt.unlink()
            runs.append(res)
    shared = config.to_dict()
    del shared["seed"]
    return {"config": shared, "miners": miners, "seeds": seeds, "runs": runs,
            "summary": summarize(runs, miners, seeds)}


def _check_miners(config: TrainConfig, miners: Sequence[str]) -> None:
    """Refuse, before any training, a budget one of ``miners`` cannot train (``ValueError`` naming the field).

    The exact top-k miners return the n best of the N - 1 targets other than
    the positive (n <= N - 1); in-batch negatives are the other B - 1
    queries' positives (n <= B - 1). Every other miner samples with
    replacement and takes any n >= 1.
    """
    miners = [check_choice(m, "miners[]", MINERS) for m in miners]
    top = [m for m in miners if m in ("brute_topk", "stale_topk")]
    if top and config.negatives > config.n_targets - 1:
        raise ValueError(f"negatives: expected an integer <= N - 1 = {config.n_targets - 1} for {', '.join(top)} "
                         f"(the n best of the targets other than the positive), got {config.negatives}")
    if "in_batch" in miners and config.negatives > config.batch_size - 1:
        raise ValueError(f"negatives: expected an integer <= batch_size - 1 = {config.batch_size - 1} for in_batch "
                         f"(the other queries' positives), got {config.negatives}")


_RUN_KIND = "compare_run"  # the checksum kind of a finished run's JSON (persist.seal_record)


def _load_run(path: Path, miner: str, seed: int) -> dict[str, Any]:
    """A finished run's record for ``--resume``: checksum verified (``persist.load_record``), its miner and seed."""
    prev = persist.load_record(path, _RUN_KIND)  # PersistError (a ValueError) names the file
    if prev.get("miner") != miner or prev.get("seed") != seed:
        raise persist.CorruptFileError(path, f"the record of miner {prev.get('miner')!r}, seed {prev.get('seed')!r}, "
                                             f"expected miner {miner!r}, seed {seed} (delete it to recompute it)")
    return prev


# --------------------------------------------------------------------------- command line

_OPTIONS = {  # option -> (TrainConfig field, type)
    "--n-targets": ("n_targets", int), "--dim": ("dim", int), "--steps": ("steps", int),
    "--batch-size": ("batch_size", int), "--negatives": ("negatives", int), "--lr": ("lr", float),
    "--beta": ("beta", float), "--refresh-every": ("refresh_every", int), "--cache-size": ("cache_size", int),
    "--landmarks": ("landmarks", int), "--eval-every": ("eval_every", int),
    "--grad-every": ("grad_every", int), "--cut-tol": ("cut_tol", float),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m reference compare``."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="named budget: quick (seconds), default (a few minutes on 2 cores), "
                             "decide (the run that can decide the claims: about an hour); options below override it")
    parser.add_argument("--miners", nargs="+", metavar="MINER", default=None,
                        help=f"miners to train (default: all of {', '.join(MINERS)})")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED", default=None,
                        help="seeds (default: the preset's)")
    defaults = TrainConfig()
    rules = {"landmarks": "the rule min(2 d, N)", "cut_tol": "the rule max(1, log(N / n))"}
    for opt, (name, typ) in _OPTIONS.items():
        parser.add_argument(opt, type=typ, default=None, metavar=name.upper(),
                            help=f"{name} (TrainConfig; default {rules.get(name, getattr(defaults, name))} "
                                 "or the preset's)")
    own = parser.add_argument_group(
        "your own data", "train on .npy files instead of the synthetic dataset (reference.data.load_dataset): "
        "N is the targets' row count; without --test-queries the queries are split by a seeded permutation")
    own.add_argument("--queries", metavar="X.npy", help="query features, shape (n, d_x), float or int")
    own.add_argument("--targets", metavar="Y.npy", help="target features, shape (N, d_y), float or int")
    own.add_argument("--positives", metavar="POS.npy", help="positive target id of each query, int, shape (n,)")
    own.add_argument("--test-queries", metavar="XT.npy", help="held-out query features (default: split --queries)")
    own.add_argument("--test-positives", metavar="POST.npy", help="their positive ids (with --test-queries)")
    own.add_argument("--test-fraction", type=float, default=None, metavar="F",
                     help="fraction of --queries held out for test when no --test-queries (default 0.2)")
    own.add_argument("--split-seed", type=int, default=None, metavar="S",
                     help="seed of that split (default 0; the same split for every --seeds)")
    parser.add_argument("--out", type=Path, default=Path("figures/out/compare.json"),
                        help="JSON file with the configuration and every number "
                             "(default figures/out/compare.json, where `figures` looks for it); "
                             "runs and checkpoints go to <out stem>_runs/")
    parser.add_argument("--checkpoint-every", type=int, default=100, metavar="C",
                        help="steps between checkpoints of the run in progress (0: never; default 100)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse finished runs and continue from the last checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, list[str], list[int]]:
    """The budget, miners and seeds chosen by the command-line options."""
    preset = dict(PRESETS[args.preset])
    seeds = list(args.seeds if args.seeds is not None else preset.pop("seeds", (0, 1, 2)))
    preset.pop("seeds", None)
    for opt, (name, _) in _OPTIONS.items():
        value = getattr(args, opt[2:].replace("-", "_"))
        if value is not None:
            preset[name] = value
    miners = list(args.miners) if args.miners is not None else list(MINERS)
    try:
        files = _data_files_from_args(args)
        n_targets = None if files is None else files.load().n_targets  # the files are read, and validated, here
    except ValueError as exc:
        raise ValueError(_as_option(str(exc), args, preset)) from None
    if files is not None:  # N is the targets' row count
        if args.n_targets is not None and args.n_targets != n_targets:
            raise ValueError(f"--n-targets: expected the number of rows of --targets ({n_targets}) or nothing, "
                             f"got {args.n_targets}")
        preset.update(n_targets=n_targets, data_files=files)
    try:
        config = TrainConfig(**preset)
        _check_miners(config, miners)
    except ValueError as exc:  # name the option (and where the value came from), not the field
        raise ValueError(_as_option(str(exc), args, preset)) from None
    return config, miners, seeds


_DATA_OPTIONS = ("queries", "targets", "positives", "test_queries", "test_positives", "test_fraction", "split_seed")


def _as_option(message: str, args: argparse.Namespace, preset: dict[str, Any] | None) -> str:
    """An error ``"field: ..."`` or ``"field (path): ..."`` of ``TrainConfig`` / ``load_dataset`` naming the option.

    ``"--option: ..."``, and for a budget field whose value came from the
    preset, where it came from (``--preset P``; ``N = ... rows of --targets``).
    With ``preset`` None only the data files' errors are renamed.
    """
    head, sep, rest = message.partition(": ")
    field_name, paren, path = head.partition(" (")
    options = {name: opt for opt, (name, _) in _OPTIONS.items()}
    options.update({name: "--" + name.replace("_", "-") for name in _DATA_OPTIONS})
    if not sep or field_name not in options:
        return message
    opt = options[field_name]
    if field_name in _DATA_OPTIONS:
        return f"{opt}{paren}{path}: {rest}"
    if preset is None:
        return message
    given = getattr(args, opt[2:].replace("-", "_")) is not None
    source = [] if given else [f"the value of --preset {args.preset}; set {opt} to override it"]
    if preset.get("data_files") is not None:
        source.append(f"N = {preset['n_targets']} rows of --targets")
    return f"{opt}: {rest}" + (f" ({'; '.join(source)})" if source else "")


def _data_files_from_args(args: argparse.Namespace) -> DataFiles | None:
    """The ``DataFiles`` of ``--queries/--targets/--positives`` (and the split options), or None."""
    names = ("queries", "targets", "positives", "test_queries", "test_positives", "test_fraction", "split_seed")
    given = {n: getattr(args, n, None) for n in names}
    if all(v is None for v in given.values()):
        return None
    missing = [f"--{n}" for n in ("queries", "targets", "positives") if given[n] is None]
    if missing:
        got = ", ".join(f"--{n.replace('_', '-')}" for n, v in given.items() if v is not None)
        raise ValueError(f"{', '.join(missing)}: expected --queries, --targets and --positives together "
                         f"(your own data), got only {got}")
    if given["test_queries"] is not None and (given["test_fraction"], given["split_seed"]) != (None, None):
        raise ValueError("--test-fraction, --split-seed: expected nothing with --test-queries (the split is "
                         "given), got a value")
    return DataFiles(**{n: v for n, v in given.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    """``python -m reference compare``: train, print the Markdown table, write the JSON."""
    out = Path(check_output_file(args.out, "--out"))  # every path is checked before any work
    run_dir = out.with_name(out.stem + "_runs")
    check_output_dir(run_dir, "--out (its directory of runs and checkpoints)")
    config, miners, seeds = config_from_args(args)
    t0 = time.perf_counter()
    try:
        result = compare(config, miners, seeds, run_dir=run_dir, checkpoint_every=args.checkpoint_every,
                         resume=args.resume, progress=not args.quiet)
    except ValueError as exc:  # e.g. a data file changed mid-run: name its option
        raise ValueError(_as_option(str(exc), args, preset=None)) from None
    result["preset"] = args.preset
    result["environment"] = {"python": sys.version.split()[0], "numpy": np.__version__}
    write_json(out, result)
    print(markdown_table(result))
    print(f"\nJSON: {out} ({time.perf_counter() - t0:.1f}s)")
    return 0
