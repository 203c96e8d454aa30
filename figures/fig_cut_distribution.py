"""Figure: the cut distribution Phat_C against the softmax P, measured vs the P4 and P4b bounds.

Clustered targets, many queries (softmax temperatures from flat to peaked) and
many cuts per query: ``adaptive_cut`` at several tolerances and random
refinements of the root cut. For each (query, cut) the figure measures
``sup_y |log Phat_C(y) - log P(y)|``, ``TV(Phat_C, P)`` and both KL
divergences, and their P4 bounds (proofs/README.md section 6): ``2 eps_C``,
``1 - exp(-2 eps_C)`` and ``2 eps_C``; and the P4b bound on TV by the width of
the cut's certified bracket, ``1 - exp(-(hi - lo))``, the one the adaptive
cut's ``tol`` controls.

Panels, one point per (query, cut), colour and marker by kind of cut, on
log-log axes; the first two against ``2 eps_C`` (how coarse the cut is), the
third against ``hi - lo``:

1. the measured pointwise log-ratio, with its bound, the line ``y = 2 eps_C``,
   and a ``bound / 10`` guide: the vertical distance of a point below the
   line is how loose the bound is for it (a factor, on log axes);
2. the measured TV, with its bound drawn as the curve ``1 - exp(-2 eps_C)``,
   a ``bound / 10`` guide and the line ``TV = 1``. The shaded region is where
   the bound is at least ``TRIVIAL_TV`` = 0.9, i.e. says almost nothing
   (``TV <= 1`` always); left of it the bound is about ``2 eps_C`` and the
   reader sees its tightness as the distance below the curve;
3. the measured TV against the width ``hi - lo`` of the cut's bracket
   (``log_partition_bracket``), with the P4b bound ``1 - exp(-(hi - lo))``
   and a ``bound / 10`` guide: adaptive cuts sit at ``hi - lo <= tol``,
   where this bound is informative while P4's is mostly trivial.

Log axes cannot show zeros: a point with ``eps_C = 0`` (an exact cut) or a
measured value of exactly 0 is not drawn, and each panel's title states how
many such points there are (or that all are drawn). The KL divergences are
checked and written to the CSV but not plotted. The CSV holds every
(query, cut) row, plotted or not.

Checked on the plotted data (AssertionError otherwise): every point lies
below its bounds (log-space quantities to 1e-9 of the term magnitude, TV to
1e-9 absolute; proofs/README.md section 6), the P4b bound included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.collections import PathCollection
from scipy.special import logsumexp

from figures.common import plt, save, write_csv
from reference.bounds import (
    Cut,
    adaptive_cut,
    cut_distribution,
    cut_eps,
    kl_bound,
    log_partition_bracket,
    log_prob_bound,
    tv_bound,
)
from reference.data import make_targets
from reference.plain import expand
from reference.tree import Tree

TITLE = ("Cut distribution vs softmax: sup |log Phat - log P| and TV against 2 eps_C (P4), TV against hi - lo "
         "(P4b), log-log, with their bounds")

FP_RTOL = 1e-9


def _random_cut(tree: Tree, rng: np.random.Generator, rounds: int) -> Cut:
    """Expand a random half of the node entries, ``rounds`` times (single query).

    Each marked node is replaced by :func:`reference.plain.expand`: its
    children with ``n_c > 0``, or a leaf's targets as single-target entries.
    """
    node, target = np.zeros(1, np.int64), np.zeros(0, np.int64)
    for _ in range(rounds):
        if node.size == 0:
            break
        marked = rng.random(node.size) < 0.5
        children, targets = [], []
        for v in node[marked]:
            c, y = expand(tree, int(v))
            children += c
            targets += y
        node = np.concatenate([node[~marked], np.array(children, np.int64)])
        target = np.concatenate([target, np.array(targets, np.int64)])
    return Cut.from_entries(node, target)


#: The TV bound is called trivial where it is at least this (TV <= 1 always).
TRIVIAL_TV = 0.9


def _legend_name(label: str) -> str:
    """Plain-words legend entry for a CSV ``cut`` label."""
    kind, _, arg = label.partition(" ")
    if kind == "adaptive":
        return f"adaptive cut, tolerance {arg.split('=')[1]}"
    r = int(arg.split()[0])
    return f"random cut, {r} round{'s' if r > 1 else ''} of splitting"


def _plot(rows: dict[str, list], labels: list[str], n: int, n_queries: int) -> "plt.Figure":
    """Three panels on log-log axes (module docstring); points with a zero coordinate are counted, not drawn."""
    eps2 = 2.0 * np.asarray(rows["eps_c"], float)
    width = np.asarray(rows["width"], float)
    tv = np.asarray(rows["tv"], float)
    xs_ = (eps2, eps2, width)
    ys = (np.asarray(rows["sup_log_ratio"], float), tv, tv)
    lab_arr = np.array(rows["cut"])
    fig, axes = plt.subplots(1, 3, figsize=(19, 6.6))
    shown = [(x > 0) & (y > 0) for x, y in zip(xs_, ys)]
    for lab_i, lab in enumerate(dict.fromkeys(labels)):
        style = dict(s=10, alpha=0.75, color=f"C{lab_i}", marker="o" if lab.startswith("adaptive") else "^",
                     linewidths=0, label=_legend_name(lab))
        for ax, x, y, ok in zip(axes, xs_, ys, shown):
            m = (lab_arr == lab) & ok
            ax.scatter(x[m], y[m], **style)
    grids = []
    for x in xs_:
        pos = x[x > 0]
        grids.append(np.geomspace(pos.min() / 2, pos.max() * 2, 400) if pos.size else np.geomspace(1e-3, 1e3, 400))
    x_triv = -np.log1p(-TRIVIAL_TV)  # 1 - exp(-x) = TRIVIAL_TV
    # left: the pointwise log-ratio, bound y = x
    axes[0].plot(grids[0], grids[0], "k-", lw=1.2, label="bound (y = 2 eps_C)")
    axes[0].plot(grids[0], grids[0] / 10, color="0.5", ls=":", lw=1, label="bound / 10 (guide)")
    axes[0].set_ylabel("measured max over targets y of |log Phat_C(y) - log P(y)|")
    # middle and right: the total variation, bounds y = 1 - exp(-x) (~x for small x, ~1 for large x)
    for ax, xs, what in ((axes[1], grids[1], "2 eps_C"), (axes[2], grids[2], "(hi - lo)")):
        tvb = -np.expm1(-xs)
        ax.axvspan(x_triv, max(xs.max(), x_triv), color="0.88", zorder=0,
                   label=f"shaded: bound >= {TRIVIAL_TV:g}, trivial (TV <= 1 always)")
        ax.axhline(1.0, color="0.3", ls="--", lw=0.8, label="TV = 1 (largest possible)")
        ax.plot(xs, tvb, "k-", lw=1.2, label=f"bound (y = 1 - exp(-{what}))")
        ax.plot(xs, tvb / 10, color="0.5", ls=":", lw=1, label="bound / 10 (guide)")
        ax.set_ylabel("measured total variation TV(Phat_C, P)")
    titles = ("P4: pointwise log-probability error vs its bound 2 eps_C",
              "P4: total variation vs its bound 1 - exp(-2 eps_C)",
              "P4b: total variation vs its bound 1 - exp(-(hi - lo))")
    xlabels = ("2 eps_C   (eps_C = max over the cut's nodes v of ||q|| rho_v; larger = coarser cut)",) * 2 + (
        "hi - lo   (width of the cut's certified bracket on log Z; the adaptive cut stops at <= tol)",)
    for ax, x, ok, xs, what, title, xlabel in zip(axes, xs_, shown, grids, ("the error", "TV", "TV"), titles,
                                                   xlabels):
        ax.set(xscale="log", yscale="log", xlim=(xs.min(), xs.max()), xlabel=xlabel)
        ax.grid(True, which="major", lw=0.3)
        hidden = int((~ok).sum())
        zero = "2 eps_C = 0 (exact cut)" if x is eps2 else "hi - lo = 0"
        note = (f"{hidden} of {ok.size} points not drawn: {zero} or {what} = 0 (log axes)"
                if hidden else f"all {ok.size} points drawn")
        ax.set_title(f"{title}\n({note})", fontsize=10)
    # legends below the panels, where they cannot hide a point: the point markers (the same in all
    # panels) under the left panel, each TV panel's lines under it
    below = dict(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    axes[0].legend(markerscale=2, title="points: one per (query, cut), by kind of cut", title_fontsize=8, **below)
    for ax in axes[1:]:
        lines = [h for h in ax.get_legend_handles_labels()[0] if not isinstance(h, PathCollection)]
        ax.legend(handles=lines, title="points: as under the left panel", title_fontsize=8, **below)
    fig.suptitle(f"Cut distribution Phat_C vs softmax P (P4, P4b): every point lies on or below its bound (black); "
                 f"distance below it = looseness.  N={n}, {n_queries} queries, {len(tv)} cuts", fontsize=10)
    return fig


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
                            "tv", "tv_bound", "kl_p_phat", "kl_phat_p", "kl_bound", "width",
                            "tv_width_bound")}
    for b, cut, lab in zip(qi, cuts, labels):
        q = Q[b]
        lph = cut_distribution(tree, q, cut)
        lp = log_p[b]
        sup = float(np.abs(lph - lp).max())
        ph, p = np.exp(lph), np.exp(lp)
        tv = 0.5 * float(np.abs(ph - p).sum())
        kl1, kl2 = float(p @ (lp - lph)), float(ph @ (lph - lp))
        lo, hi, _ = log_partition_bracket(tree, q, cut)  # certified (widened): P4b holds literally for it
        width = float(hi - lo)
        vals = (int(b), float(betas[b]), lab, len(cut), float(cut_eps(tree, q, cut)), sup,
                float(log_prob_bound(tree, q, cut)), tv, float(tv_bound(tree, q, cut)), kl1, kl2,
                float(kl_bound(tree, q, cut)), width, float(-np.expm1(-width)))
        for k, v in zip(rows, vals):
            rows[k].append(v)
        tol = FP_RTOL * scale[b]
        assert sup <= rows["log_bound"][-1] + tol, f"P4 pointwise bound violated ({lab}, query {b})"
        assert tv <= rows["tv_bound"][-1] + 1e-9, f"P4 TV bound violated ({lab}, query {b})"
        assert max(kl1, kl2) <= rows["kl_bound"][-1] + tol, f"P4 KL bound violated ({lab}, query {b})"
        assert tv <= rows["tv_width_bound"][-1] + 1e-9, f"P4b TV bound violated ({lab}, query {b})"
    stem = Path(out_dir) / "fig_cut_distribution"
    return [save(_plot(rows, labels, n, n_queries), stem.with_suffix(".png")),
            write_csv(stem.with_suffix(".csv"), rows)]
