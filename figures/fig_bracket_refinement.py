"""Figure: the certified bracket [lo, hi] on log Z closing in as the cut is refined (P2, P3, P7).

Clustered targets (``reference.data.make_targets``), a tree right after
``Tree.build`` (so I4 holds), a few queries. Starting from the root cut, the
cut is refined by the rule of the adaptive cut without its stop: the entry
of largest slack ``n_v exp(<q,r_v>) (exp(eps_v) - exp(-eps_v))`` first, a
node into its non-empty children, a leaf into its targets
(``reference.plain.refinement_order`` and ``reference.plain.expand``), until
every entry has eps_v = 0. The bracket is drawn after about ``N_STEPS``
geometrically spaced numbers of expansions (the CSV's ``step``), from the
root cut to the last one. Each drawn cut refines the one before, so by P3 lo
never decreases and hi never increases; by P2 the bracket always contains
the brute-force log Z and hi - lo <= 2 eps_C.

Checked on the plotted data (AssertionError otherwise): lo <= log Z <= hi,
hi - lo <= 2 eps_C, lo non-decreasing and hi non-increasing along the
refinement, and lo = hi = log Z once only single targets remain. Tolerance:
1e-9 of the term magnitude (proofs/README.md section 6).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import logsumexp

from figures.common import plt, save, write_csv
from reference import plain
from reference.bounds import Cut, cut_eps, log_partition_bracket
from reference.data import make_targets
from reference.tree import Tree

TITLE = "Certified bracket [lo, hi] on log Z vs cut size, as the cut is refined by slack (P2, P3)"

FP_RTOL = 1e-9

#: About this many cuts are drawn per query, at geometrically spaced numbers of expansions.
N_STEPS = 40


def _refinement(tree: Tree, q: np.ndarray) -> list[tuple[int, Cut]]:
    """``(m, the cut after m expansions)`` along ``plain.refinement_order``, for the drawn m.

    The m are about ``N_STEPS`` geometrically spaced numbers from 0 (the root
    cut) to the number of expansions (every entry has eps_v = 0).
    """
    order = plain.refinement_order(tree, q)
    drawn = set(np.unique(np.geomspace(1, order.size + 1, N_STEPS).round().astype(int) - 1).tolist())
    nodes, targets = {tree.root}, []  # the root cut: node entries and single targets
    cuts = []
    for m in range(order.size + 1):
        if m in drawn:
            cuts.append((m, Cut.from_entries(sorted(nodes), targets)))
        if m < order.size:  # expansion m: node order[m] is replaced by its children or its targets
            children, leaf_targets = plain.expand(tree, int(order[m]))
            nodes.remove(int(order[m]))
            nodes.update(children)
            targets += leaf_targets
    return cuts


def make(out_dir: Path, *, quick: bool = False) -> list[Path]:
    n, dim, n_queries = (4000, 16, 3) if quick else (30000, 32, 4)
    z = make_targets(n, dim, seed=0)
    tree = Tree.build(z, seed=0)
    assert tree.nested, "P3 needs I4: the tree right after build"
    rng = np.random.default_rng(1)
    pos = rng.integers(0, n, n_queries)
    beta = 30.0
    Q = beta * (z[pos] + 0.1 * rng.normal(size=(n_queries, dim)) / np.sqrt(dim))
    rows = {k: [] for k in ("query", "step", "cut_size", "lo", "hi", "log_z_hat", "log_z", "eps_c", "n_targets",
                            "fp_tol")}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for b, q in enumerate(Q):
        log_z = float(logsumexp(z @ q))
        scale = 1.0 + np.linalg.norm(q) * (np.linalg.norm(z, axis=1).max() + np.linalg.norm(tree.rep, axis=1).max()
                                           + tree.radius[0]) + np.log(n)
        tol = FP_RTOL * scale
        prev_lo, prev_hi = -np.inf, np.inf
        for step, cut in _refinement(tree, q):
            lo, hi, hat = log_partition_bracket(tree, q, cut)
            eps_c = float(cut_eps(tree, q, cut))
            assert lo <= log_z + tol and log_z <= hi + tol, f"P2 violated at step {step}: {lo} {log_z} {hi}"
            assert hi - lo <= 2 * eps_c + tol, f"P2 width violated at step {step}"
            assert lo >= prev_lo - tol and hi <= prev_hi + tol, f"P3 violated at step {step}"
            for k, v in zip(rows, (b, step, len(cut), lo, hi, hat, log_z, eps_c, int(cut.is_target.sum()), tol)):
                rows[k].append(v)
            prev_lo, prev_hi = lo, hi
        assert eps_c == 0, "the refinement ends when every entry has eps_v = 0"
        assert abs(hi - lo) <= tol and abs(lo - log_z) <= tol, "fully refined cut must give log Z"
        sel = np.array(rows["query"]) == b
        size = np.array(rows["cut_size"])[sel]
        lo_b, hi_b = np.array(rows["lo"])[sel] - log_z, np.array(rows["hi"])[sel] - log_z
        hat_b = np.array(rows["log_z_hat"])[sel] - log_z
        line, = axes[0].plot(size, hi_b, label=f"query {b}: hi - log Z")
        axes[0].plot(size, lo_b, color=line.get_color(), ls="--")
        axes[0].plot(size, hat_b, color=line.get_color(), ls=":", lw=1)
        axes[1].plot(size, np.maximum(hi_b - lo_b, 1e-16), color=line.get_color(), label=f"query {b}: hi - lo")
        axes[1].plot(size, 2 * np.array(rows["eps_c"])[sel], color=line.get_color(), ls=":", lw=1)
    axes[0].axhline(0.0, color="k", lw=0.8)
    axes[0].set_xscale("log")
    axes[0].set_yscale("symlog", linthresh=1e-2)
    axes[0].set_xlabel("cut size |C| (entries)")
    axes[0].set_ylabel("bound - log Z  (solid hi, dashed lo, dotted log_z_hat)")
    axes[0].set_title(f"bracket vs exact log Z (N={n}, k={dim}, beta={beta:g})")
    axes[0].legend(fontsize=7)
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("cut size |C| (entries)")
    axes[1].set_ylabel("hi - lo (solid), 2 eps_C (dotted)")
    axes[1].set_title("width <= 2 eps_C (P2); monotone under refinement (P3)")
    axes[1].legend(fontsize=7)
    stem = Path(out_dir) / "fig_bracket_refinement"
    return [save(fig, stem.with_suffix(".png")), write_csv(stem.with_suffix(".csv"), rows)]
