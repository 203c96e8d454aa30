"""Figure: the cut distribution Phat_C against the softmax P, measured vs the P4 bounds.

Clustered targets, many queries (softmax temperatures from flat to peaked) and
many cuts per query: ``adaptive_cut`` at several tolerances and random
refinements of the root cut. For each (query, cut): the measured
``sup_y |log Phat_C(y) - log P(y)|`` against ``2 eps_C``, and the measured
``TV(Phat_C, P)`` against ``1 - exp(-2 eps_C)`` (P4, SPEC section 6); also
both KL divergences against ``2 eps_C``.

Checked on the plotted data (AssertionError otherwise): every point lies
below its bound (log-space quantities to 1e-9 of the term magnitude, TV to
1e-9 absolute; SPEC section 6).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import logsumexp

from figures.common import plt, save, write_csv
from reference.bounds import (
    Cut,
    _expand,
    adaptive_cut,
    cut_distribution,
    cut_eps,
    kl_bound,
    log_prob_bound,
    tv_bound,
)
from reference.data import make_targets
from reference.tree import Tree

TITLE = "Cut distribution vs softmax: sup |log Phat - log P| vs 2 eps_C and TV vs 1 - exp(-2 eps_C) (P4)"

FP_RTOL = 1e-9


def _random_cut(tree: Tree, rng: np.random.Generator, rounds: int) -> Cut:
    """Expand a random half of the entries, ``rounds`` times (single query)."""
    node, target = np.zeros(1, np.int64), np.zeros(0, np.int64)
    for _ in range(rounds):
        if node.size == 0:
            break
        marked = rng.random(node.size) < 0.5
        _, nv, ny = _expand(tree, np.zeros(int(marked.sum()), np.int64), node[marked])
        node = np.concatenate([node[~marked], nv[nv >= 0]])
        target = np.concatenate([target, ny[ny >= 0]])
    return Cut.from_entries(node, target)


def make(out_dir: Path, *, quick: bool = False) -> list[Path]:
    n, dim, n_queries = (3000, 8, 24) if quick else (20000, 16, 120)
    z = make_targets(n, dim, seed=2)
    tree = Tree.build(z, seed=2)
    rng = np.random.default_rng(3)
    pos = rng.integers(0, n, n_queries)
    betas = np.geomspace(0.02, 60.0, n_queries)
    Q = betas[:, None] * (z[pos] + 0.2 * rng.normal(size=(n_queries, dim)) / np.sqrt(dim))
    log_p = Q @ z.T
    log_p -= logsumexp(log_p, axis=1, keepdims=True)
    scale = 1.0 + np.linalg.norm(Q, axis=1) * (2 * np.linalg.norm(z, axis=1).max() + tree.radius[0]) + np.log(n)
    cuts, labels = [], []
    for tol in (0.1, 1.0, 4.0):
        c = adaptive_cut(tree, Q, tol)
        cuts += [c.of_query(b) for b in range(n_queries)]
        labels += [f"adaptive tol={tol:g}"] * n_queries
    for r in (1, 3, 6):
        cuts += [_random_cut(tree, rng, r) for _ in range(n_queries)]
        labels += [f"random {r} rounds"] * n_queries
    qi = np.tile(np.arange(n_queries), len(cuts) // n_queries)
    rows = {k: [] for k in ("query", "beta", "cut", "cut_size", "eps_c", "sup_log_ratio", "log_bound",
                            "tv", "tv_bound", "kl_p_phat", "kl_phat_p", "kl_bound")}
    for b, cut, lab in zip(qi, cuts, labels):
        q = Q[b]
        lph = cut_distribution(tree, q, cut)
        lp = log_p[b]
        sup = float(np.abs(lph - lp).max())
        ph, p = np.exp(lph), np.exp(lp)
        tv = 0.5 * float(np.abs(ph - p).sum())
        kl1, kl2 = float(p @ (lp - lph)), float(ph @ (lph - lp))
        vals = (int(b), float(betas[b]), lab, len(cut), float(cut_eps(tree, q, cut)), sup,
                float(log_prob_bound(tree, q, cut)), tv, float(tv_bound(tree, q, cut)), kl1, kl2,
                float(kl_bound(tree, q, cut)))
        for k, v in zip(rows, vals):
            rows[k].append(v)
        tol = FP_RTOL * scale[b]
        assert sup <= rows["log_bound"][-1] + tol, f"P4 pointwise bound violated ({lab}, query {b})"
        assert tv <= rows["tv_bound"][-1] + 1e-9, f"P4 TV bound violated ({lab}, query {b})"
        assert max(kl1, kl2) <= rows["kl_bound"][-1] + tol, f"P4 KL bound violated ({lab}, query {b})"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    lab_arr = np.array(rows["cut"])
    for lab in dict.fromkeys(labels):
        m = lab_arr == lab
        axes[0].scatter(np.array(rows["log_bound"])[m], np.array(rows["sup_log_ratio"])[m], s=8, label=lab)
        axes[1].scatter(np.array(rows["tv_bound"])[m], np.array(rows["tv"])[m], s=8, label=lab)
    positive = [x for x in rows["log_bound"] if x > 0]
    lo_lim, hi_lim = min(positive) / 2, max(positive) * 1.2
    axes[0].plot([lo_lim, hi_lim], [lo_lim, hi_lim], "k-", lw=0.8, label="bound (y = x)")
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("2 eps_C")
    axes[0].set_ylabel("measured sup_y |log Phat_C(y) - log P(y)|")
    axes[0].set_title("pointwise log-ratio (P4)")
    axes[0].legend(fontsize=7)
    axes[1].plot([0, 1], [0, 1], "k-", lw=0.8, label="bound (y = x)")
    axes[1].set_xlabel("1 - exp(-2 eps_C)")
    axes[1].set_ylabel("measured TV(Phat_C, P)")
    axes[1].set_title(f"total variation (P4); N={n}, {n_queries} queries, {len(cuts)} cuts")
    axes[1].legend(fontsize=7)
    stem = Path(out_dir) / "fig_cut_distribution"
    return [save(fig, stem.with_suffix(".png")), write_csv(stem.with_suffix(".csv"), rows)]
