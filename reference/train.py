"""Train the dual encoder with each negative miner under one budget, and compare them.

``python -m reference compare`` (proofs/README.md section 8). For every seed and every
miner of :data:`reference.miners.MINERS` it trains the NumPy dual encoder
(:class:`reference.encoder.DualEncoder`, Adam) for the same number of steps,
batch size, negatives per query and seed (the same dataset, initialisation
and sequence of training batches), and reports for each:

- test recall@1/10/100 and the full-softmax test loss (``metrics.evaluate``);
- the relative error ||g - g*|| / ||g*|| of the training gradient g (the one
  the optimiser used, over all parameters) against the exact full-softmax
  gradient g* on the same batch and parameters, every ``eval_every`` steps;
- counters: target-encoder forward passes (rows through the target tower,
  training only) and logits evaluated (by the miner and by the loss);
- host and accelerator memory by the explicit accounting of
  :mod:`reference.miners` (at the run's N and extrapolated to N = 1e6).

Outputs: a Markdown table on stdout, a JSON file with the configuration and
every number (``--out``), per-run JSON files and checkpoints next to it, and
progress lines on stderr (miner, seed, step, loss, elapsed, expected
remaining). ``python -m reference figures`` plots the training curves from
that JSON (``figures/fig_training_curves.py``).

The paper's two headline claims are evaluated from the runs:

(1) error gap: for each metric, gap(miner) = metric(full) - metric(miner)
    (recall) or loss(miner) - loss(full) (test loss), paired by seed; the
    claim is gap(tree_nystrom) ~ 0.5 gap(brute_topk). Reported as mean and
    standard deviation over seeds and the ratio of the mean gaps.
(2) memory: accelerator(brute_topk) / accelerator(tree_nystrom) at N = 1e6
    by the accounting; the claim is >= 100.

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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
from reference._validation import check_choice, check_int, check_nonnegative, check_positive
from reference.data import RetrievalData, make_dataset
from reference.encoder import DualEncoder, EncoderConfig, params_sha256
from reference.jsonio import write_json
from reference.miners import MINERS, MinerConfig, Sizes, make_miner, memory_accounting
from reference.optim import Adam

__all__ = [
    "TrainConfig",
    "PRESETS",
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
#: Metrics reported for every run (keys of ``metrics.evaluate``).
METRICS = ("recall@1", "recall@10", "recall@100", "loss")


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
        n, negatives per query.
    lr : float
        Adam step size.
    refresh_every : int
        R, steps between full re-encodes of stale caches.
    cache_size : int
        C, negative-cache slots.
    landmarks : int
        m, Nystrom landmarks.
    eval_every : int
        Steps between test evaluations and gradient-error measurements.
    seed : int
        Seed of the dataset, the initialisation, the batches and the miner.
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
    landmarks: int = 64
    eval_every: int = 50
    seed: int = 0

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
        check_int(self.negatives, "negatives", low=1)  # top-k miners also need n <= N - 1
        object.__setattr__(self, "lr", check_positive(self.lr, "lr"))
        check_int(self.refresh_every, "refresh_every", low=1)
        check_int(self.cache_size, "cache_size", low=1, high=self.n_targets)
        check_int(self.landmarks, "landmarks", low=1, high=self.n_targets)
        check_int(self.eval_every, "eval_every", low=1)
        check_int(self.seed, "seed", low=0)

    def miner_config(self) -> MinerConfig:
        """The miners' hyper-parameters implied by this budget."""
        return MinerConfig(
            negatives=self.negatives, refresh_every=self.refresh_every, cache_size=self.cache_size,
            landmarks=self.landmarks, seed=self.seed,
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
                  refresh_every=20, cache_size=128, landmarks=24, seeds=(0,)),
    # the README's comparison: a few minutes on 2 cores
    "default": dict(seeds=(0, 1, 2)),
    # the fuller reproduction: 5x the targets, twice the steps, five seeds (the
    # negative cache keeps ~20% of N; R, m, B and n are unchanged). About an
    # hour on 2 cores.
    "large": dict(n_targets=10000, queries_per_target=3, steps=600, eval_every=100, cache_size=2048,
                  seeds=(0, 1, 2, 3, 4)),
}


# --------------------------------------------------------------------------- one run


def make_data(config: TrainConfig) -> RetrievalData:
    """The dataset of a budget (deterministic in ``config.seed``)."""
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
    The measurement is not charged to ``model.target_rows_encoded``.
    """
    rows = model.target_rows_encoded
    _, exact = model.full_softmax_loss(x, pos, targets)
    model.target_rows_encoded = rows
    names = list(model.params)
    g, g_star = _flat(grads, names), _flat(exact, names)
    return float(np.linalg.norm(g - g_star) / np.linalg.norm(g_star))


def sizes_for(config: TrainConfig, data: RetrievalData, model: DualEncoder) -> Sizes:
    """The :class:`Sizes` of a run, for the memory accounting (tree nodes estimated)."""
    mc = config.miner_config()
    return Sizes(
        n_targets=config.n_targets, out_dim=config.out_dim,
        query_dim=data.train_x.shape[1], target_dim=data.targets.shape[1], batch_size=config.batch_size,
        negatives=config.negatives, n_params=model.n_params, cache_size=config.cache_size,
        landmarks=config.landmarks, branching=mc.branching, leaf_size=mc.leaf_size,
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

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every list as an array (one entry per field) and the three counters (plain arrays)."""
        out = {}
        for f, v in self.lists.items():
            dtype = np.int64 if f in ("eval_step", "eval_rows", "eval_logits", "grad_step") else np.float64
            out[f] = np.asarray(v, dtype=dtype)
        out["counters"] = np.array([self.rows, self.logits_mining, self.logits_loss], dtype=np.int64)
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore from :meth:`state_dict` (float64 and int64 round-trip exactly through ``tolist``)."""
        lists = {f: np.asarray(state[f]).tolist() for f in self.FIELDS}
        rows, logits_mining, logits_loss = (int(v) for v in state["counters"])
        self.lists, self.rows, self.logits_mining, self.logits_loss = lists, rows, logits_mining, logits_loss


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
    try:  # validated by each setter before it changes anything
        model.set_params(ckpt["params"])
        opt.load_state_dict(ckpt["optimizer"])
        miner.load_state_dict(ckpt["miner"])
        hist.load_state_dict(ckpt["extra"]["history"])
        batch_rng, miner_rng = ckpt["rngs"]["batch"], ckpt["rngs"]["miner"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: checkpoint does not fit this run ({type(exc).__name__}: {exc})") from None
    return ckpt["step"], batch_rng, miner_rng


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
        ``curve`` (test metrics, cumulative counters and gradient errors at the
        evaluation steps), ``train_loss`` (per step), ``counters``,
        ``memory`` (accounting at N and at N = 1e6), ``params_sha256`` and
        ``seconds``.
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
    B, N, E = config.batch_size, config.n_targets, config.eval_every
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
        else:
            loss, grads = model.sampled_softmax_loss(x, pos, Y, neg.ids, neg.log_q)
            hist.logits_loss += B + neg.ids.size
        hist.rows += model.target_rows_encoded - rows
        hist.logits_mining += int(neg.logits)
        if not math.isfinite(loss):
            raise FloatingPointError(f"miner {miner_name}, step {t}: the training loss is {loss}")
        if t % E == 0:
            hist.lists["grad_step"].append(t)
            hist.lists["grad_error"].append(gradient_error(model, grads, x, pos, Y))
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
        },
        "train_loss": L["train_loss"],
        "counters": {"target_rows": hist.rows, "logits_mining": hist.logits_mining,
                     "logits_loss": hist.logits_loss},
        "memory": {
            "at_n": memory_accounting(miner_name, sizes),
            "at_1e6": memory_accounting(miner_name, dataclasses.replace(sizes, n_targets=CLAIM_N)),
        },
        "params_sha256": params_sha256(model.params),
        "seconds": time.perf_counter() - t0,
    }


# --------------------------------------------------------------------------- the comparison


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0}


def _gap(metric: str, full: float, other: float) -> float:
    """gap = how much worse ``other`` is than full softmax (recall: lower; loss: higher)."""
    return other - full if metric == "loss" else full - other


def summarize(runs: Sequence[dict[str, Any]], miners: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """Aggregate runs over seeds: per-miner mean/std, gaps to full softmax, and the two claims.

    Returns
    -------
    dict
        ``per_miner[m]``: for each metric and for ``grad_error`` (mean over a
        run's checkpoints) ``{"mean", "std"}`` over seeds;
        ``target_rows_per_step``, ``logits_per_step`` (means), ``memory``
        (accounting at N and at 1e6, identical for every seed), ``seconds``.
        ``gaps[m][metric]``: per-seed gaps to ``full`` and their mean/std.
        ``claims``: ``error_gap`` (per metric: the method's and brute force's
        mean gaps, their ratio and the per-seed ratios) and ``memory``
        (accelerator bytes of brute force over the method's at N = 1e6).
    """
    by = {(r["miner"], r["seed"]): r for r in runs}
    per_miner: dict[str, Any] = {}
    for m in miners:
        rs = [by[(m, s)] for s in seeds]
        steps = len(rs[0]["train_loss"])
        entry: dict[str, Any] = {k: _mean_std([r["final"][k] for r in rs]) for k in METRICS}
        entry["grad_error"] = _mean_std([float(np.mean(r["curve"]["grad_error"])) for r in rs])
        entry["target_rows_per_step"] = float(np.mean([r["counters"]["target_rows"] for r in rs])) / steps
        entry["logits_per_step"] = float(
            np.mean([r["counters"]["logits_mining"] + r["counters"]["logits_loss"] for r in rs])) / steps
        entry["memory"] = rs[0]["memory"]
        entry["seconds"] = _mean_std([r["seconds"] for r in rs])
        per_miner[m] = entry
    out: dict[str, Any] = {"per_miner": per_miner, "gaps": {}, "claims": {}}
    if "full" not in miners:
        return out
    for m in miners:
        out["gaps"][m] = {}
        for k in METRICS:
            g = [_gap(k, by[("full", s)]["final"][k], by[(m, s)]["final"][k]) for s in seeds]
            out["gaps"][m][k] = {"per_seed": g, **_mean_std(g)}
    if "brute_topk" in miners and "tree_nystrom" in miners:
        err = {}
        for k in METRICS:
            gm, gb = out["gaps"]["tree_nystrom"][k], out["gaps"]["brute_topk"][k]
            per_seed = [a / b if b != 0 else None for a, b in zip(gm["per_seed"], gb["per_seed"])]
            err[k] = {
                "gap_method": {"mean": gm["mean"], "std": gm["std"]},
                "gap_brute_topk": {"mean": gb["mean"], "std": gb["std"]},
                "ratio_of_mean_gaps": gm["mean"] / gb["mean"] if gb["mean"] != 0 else None,
                "per_seed_ratio": per_seed,
            }
        out["claims"]["error_gap"] = {"target_ratio": 0.5, "per_metric": err}
        mb = per_miner["brute_topk"]["memory"]["at_1e6"]
        mt = per_miner["tree_nystrom"]["memory"]["at_1e6"]
        ratio = mb["accelerator"] / mt["accelerator"]
        out["claims"]["memory"] = {
            "n_targets": CLAIM_N, "target_ratio": 100.0,
            "brute_topk_accelerator_bytes": mb["accelerator_bytes"],
            "tree_nystrom_accelerator_bytes": mt["accelerator_bytes"],
            "ratio": ratio,
            "ratio_state_only": mb["accelerator_state"] / max(mt["accelerator_state"], 1),
            "holds": bool(ratio >= 100.0),
        }
    return out


def _pm(e: dict[str, float], digits: int = 3) -> str:
    return f"{e['mean']:.{digits}f} ± {e['std']:.{digits}f}"


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.3g}"


def markdown_table(result: dict[str, Any]) -> str:
    """The comparison as Markdown: per-miner table, gap table and the claims (from ``result``)."""
    s = result["summary"]
    cfg = result["config"]
    seeds = result["seeds"]
    lines = [
        f"Comparison: N = {cfg['n_targets']}, {cfg['steps']} steps, B = {cfg['batch_size']}, "
        f"n = {cfg['negatives']}, R = {cfg['refresh_every']}, C = {cfg['cache_size']}, "
        f"m = {cfg['landmarks']}, seeds {list(seeds)} (mean ± std over seeds).",
        "",
        "| miner | recall@1 | recall@10 | recall@100 | test loss | grad rel. error | target enc./step "
        "| logits/step | accel. MiB (N) | accel. MiB (N=1e6) | host MiB (N=1e6) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, e in s["per_miner"].items():
        mem = e["memory"]
        lines.append(
            f"| {m} | {_pm(e['recall@1'])} | {_pm(e['recall@10'])} | {_pm(e['recall@100'])} | {_pm(e['loss'])} "
            f"| {_pm(e['grad_error'])} | {e['target_rows_per_step']:.1f} | {e['logits_per_step']:.0f} "
            f"| {_mib(mem['at_n']['accelerator_bytes'])} | {_mib(mem['at_1e6']['accelerator_bytes'])} "
            f"| {_mib(mem['at_1e6']['host_bytes'])} |"
        )
    if s["gaps"]:
        lines += ["", "Gap to full softmax (recall: full - miner; loss: miner - full), paired by seed:", "",
                  "| miner | gap recall@1 | gap recall@10 | gap recall@100 | gap test loss |", "|---|---|---|---|---|"]
        for m, g in s["gaps"].items():
            lines.append(f"| {m} | " + " | ".join(_pm(g[k]) for k in METRICS) + " |")
    c = s["claims"]
    if c:
        lines += ["", "Claim 1 (the method's gap is about half of brute-force top-k's): "
                      "ratio gap(tree_nystrom) / gap(brute_topk)", ""]
        for k, e in c["error_gap"]["per_metric"].items():
            r = e["ratio_of_mean_gaps"]
            ps = ", ".join("n/a" if v is None else f"{v:.2f}" for v in e["per_seed_ratio"])
            note = "; brute force is not worse than full softmax here, so there is no gap to halve" \
                if e["gap_brute_topk"]["mean"] <= 0 else ""
            lines.append(f"- {k}: method gap {_pm(e['gap_method'])}, brute gap {_pm(e['gap_brute_topk'])}, "
                         f"ratio {'n/a' if r is None else f'{r:.2f}'} (per seed: {ps}){note}")
        mc = c["memory"]
        lines += ["", f"Claim 2 (>= 100x less accelerator memory than brute force at N = 1e6): "
                      f"brute_topk {_mib(mc['brute_topk_accelerator_bytes'])} MiB / tree_nystrom "
                      f"{_mib(mc['tree_nystrom_accelerator_bytes'])} MiB = {mc['ratio']:.0f}x "
                      f"({'holds' if mc['holds'] else 'does not hold'}; miner state alone: "
                      f"{mc['ratio_state_only']:.0f}x)"]
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
        Reuse finished runs found in ``run_dir`` and continue checkpointed ones.
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
            if resume and done_path.exists():
                prev = json.loads(done_path.read_text())
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
                write_json(done_path, res)
                if ckpt.exists():
                    ckpt.unlink()
            runs.append(res)
    shared = config.to_dict()
    del shared["seed"]
    return {"config": shared, "miners": miners, "seeds": seeds, "runs": runs,
            "summary": summarize(runs, miners, seeds)}


# --------------------------------------------------------------------------- command line

_OPTIONS = {  # option -> (TrainConfig field, type)
    "--n-targets": ("n_targets", int), "--dim": ("dim", int), "--steps": ("steps", int),
    "--batch-size": ("batch_size", int), "--negatives": ("negatives", int), "--lr": ("lr", float),
    "--beta": ("beta", float), "--refresh-every": ("refresh_every", int), "--cache-size": ("cache_size", int),
    "--landmarks": ("landmarks", int), "--eval-every": ("eval_every", int),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m reference compare``."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="named budget: quick (seconds), default (a few minutes on 2 cores), "
                             "large (the fuller reproduction); options below override it")
    parser.add_argument("--miners", nargs="+", metavar="MINER", default=None,
                        help=f"miners to train (default: all of {', '.join(MINERS)})")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED", default=None,
                        help="seeds (default: the preset's)")
    defaults = TrainConfig()
    for opt, (name, typ) in _OPTIONS.items():
        parser.add_argument(opt, type=typ, default=None, metavar=name.upper(),
                            help=f"{name} (TrainConfig; default {getattr(defaults, name)} or the preset's)")
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
    return TrainConfig(**preset), miners, seeds


def run(args: argparse.Namespace) -> int:
    """``python -m reference compare``: train, print the Markdown table, write the JSON."""
    config, miners, seeds = config_from_args(args)
    out = Path(args.out)
    run_dir = out.with_name(out.stem + "_runs")
    t0 = time.perf_counter()
    result = compare(config, miners, seeds, run_dir=run_dir, checkpoint_every=args.checkpoint_every,
                     resume=args.resume, progress=not args.quiet)
    result["preset"] = args.preset
    result["environment"] = {"python": sys.version.split()[0], "numpy": np.__version__}
    write_json(out, result)
    print(markdown_table(result))
    print(f"\nJSON: {out} ({time.perf_counter() - t0:.1f}s)")
    return 0
